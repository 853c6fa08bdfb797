"""Page walks on synthetic page tables: every paging mode and page size, and where walks stop."""

from __future__ import annotations

import struct

import pytest

from vmstate_gdb.arch.x86_64.cpu import CPU_FIELDS, X86Cpu
from vmstate_gdb.arch.x86_64.paging import PageWalker
from vmstate_gdb.errors import AddressError

pytestmark = pytest.mark.unit

P, RW, PS = 1, 2, 0x80


class Memory:
    def __init__(self):
        self.pages: dict[int, bytearray] = {}

    def put(self, address: int, value: int, width: int = 8) -> None:
        page = self.pages.setdefault(address & ~0xFFF, bytearray(4096))
        page[address & 0xFFF : (address & 0xFFF) + width] = value.to_bytes(width, "little")

    def read(self, address: int, size: int) -> bytes:
        if address & ~0xFFF not in self.pages:
            raise AddressError(f"physical {address:#x} not in RAM", address)
        return bytes(self.pages[address & ~0xFFF][address & 0xFFF : (address & 0xFFF) + size])


def cpu(cr0=0x80000011, cr3=0x1000, cr4=0x20, efer=0x500) -> X86Cpu:
    values = dict.fromkeys(CPU_FIELDS, 0)
    values.update(cr0=cr0, cr3=cr3, cr4=cr4, efer=efer, **{"cs.flags": 1 << 21})
    return X86Cpu(0, 0, values)


def entry(address: int, flags: int = P | RW) -> int:
    return address | flags


def test_four_level_4k_2m_1g():
    m = Memory()
    m.put(0x1000 + 8 * 511, entry(0x2000))  # PML4[511]
    m.put(0x2000 + 8 * 510, entry(0x3000))  # PDPT[510]
    m.put(0x3000 + 8 * 0, entry(0x4000))  # PD[0] -> PT
    m.put(0x4000 + 8 * 5, entry(0x123000))  # PT[5]
    m.put(0x3000 + 8 * 1, entry(0x40000000, P | RW | PS))  # PD[1]: 2 MiB
    m.put(0x1000, entry(0x5000))  # PML4[0]
    m.put(0x5000 + 8 * 2, entry(0x80000000, P | PS))  # PDPT[2]: 1 GiB
    w = PageWalker(cpu(), m.read)
    t = w.translate(0xFFFFFFFF80005ABC)
    assert (t.physical, t.page_size, [s.level for s in t.steps]) == (
        0x123ABC,
        4096,
        ["PML4", "PDPT", "PD", "PT"],
    )
    t = w.translate(0xFFFFFFFF80212345)
    assert (t.physical, t.page_size) == (0x40012345, 2 << 20)
    t = w.translate(0x80001234)
    assert (t.physical, t.page_size, t.writable) == (0x80001234, 1 << 30, False)
    with pytest.raises(AddressError, match="not mapped: PT entry"):
        w.translate(0xFFFFFFFF80006000)
    with pytest.raises(AddressError, match="not canonical"):
        w.translate(0x0000800000000000)
    assert sorted((v, p, s) for v, p, s, *_ in w.mappings()) == [
        (0x80000000, 0x80000000, 1 << 30),
        (0xFFFFFFFF80005000, 0x123000, 4096),
        (0xFFFFFFFF80200000, 0x40000000, 2 << 20),
    ]


def test_five_level():
    m = Memory()
    va = 0x00FF_8000_0000_1000  # PML5 index 1
    idx = [(va >> s) & 0x1FF for s in (48, 39, 30, 21, 12)]
    tables = [0x1000, 0x2000, 0x3000, 0x4000, 0x5000]
    for level in range(4):
        m.put(tables[level] + 8 * idx[level], entry(tables[level + 1]))
    m.put(tables[4] + 8 * idx[4], entry(0x777000))
    w = PageWalker(cpu(cr4=0x20 | 1 << 12), m.read)
    assert w.mode == "5-level"
    t = w.translate(va | 0x42)
    assert t.physical == 0x777042 and [s.level for s in t.steps][0] == "PML5"


def test_pae_and_32bit_pse():
    m = Memory()
    m.put(0x1000 + 8 * 3, entry(0x2000, P))  # PDPT[3] (PAE PDPT entries have no RW)
    m.put(0x2000 + 8 * 0x1FF, entry(0x200000, P | RW | PS))
    w = PageWalker(cpu(cr4=0x20, efer=0), m.read)
    assert w.mode == "pae"
    assert w.translate(0xFFE00010).physical == 0x200010
    assert [(v, p, s) for v, p, s, *_ in w.mappings()] == [(0xFFE00000, 0x200000, 2 << 20)]
    m2 = Memory()
    m2.put(0x1000 + 4 * 0x300, 0x00400000 | P | PS | (0x12 << 13), 4)  # 4 MiB page, PSE-36 high bits
    m2.put(0x1000 + 4 * 1, 0x3000 | P, 4)
    m2.put(0x3000 + 4 * 2, 0x9000 | P, 4)
    w = PageWalker(cpu(cr4=1 << 4, efer=0), m2.read)
    assert w.mode == "32-bit"
    assert w.translate(0xC0012345).physical == (0x12 << 32) | 0x412345
    assert w.translate(0x00402ABC).physical == 0x9ABC
    assert [(v, p, s) for v, p, s, *_ in w.mappings()] == [
        (0x402000, 0x9000, 4096),
        (0xC0000000, (0x12 << 32) | 0x400000, 4 << 20),
    ]


def test_no_paging_is_identity_and_table_outside_ram_is_clear():
    m = Memory()
    w = PageWalker(cpu(cr0=0x11, efer=0), m.read)
    assert w.translate(0x7000000000).physical == 0x7000000000
    w = PageWalker(cpu(cr3=0x99000), m.read)
    with pytest.raises(AddressError, match="page-table entry at physical 0x99"):
        w.translate(0x1000)


def test_tables_are_read_little_endian():
    m = Memory()
    m.put(0x1000, struct.unpack("<Q", struct.pack("<Q", entry(0x2000)))[0])
    m.put(0x2000, entry(0, P | PS))
    assert PageWalker(cpu(), m.read).translate(0x12345).physical == 0x12345
