"""Virtual-to-physical translation through an x86 vCPU's own page tables.

32-bit (with 4 MiB PSE pages), PAE, 4-level and 5-level paging; 4 KiB, 2 MiB, 4 MiB and 1 GiB
pages. The walk is returned level by level so `vmstate translate` can show it.
"""

from __future__ import annotations

from collections.abc import Callable

from ...errors import AddressError
from ..paging import Translation, WalkStep
from .cpu import CR4_PSE, X86Cpu

ReadPhysical = Callable[[int, int], bytes]
ADDR_MASK = 0x000FFFFFFFFFF000  # bits 12..51
PRESENT, WRITABLE, USER, PAGE_SIZE_BIT, NX = 1, 2, 4, 0x80, 1 << 63


class PageWalker:
    """Translate for one vCPU; the page-table pages are read through ``read_physical``.

    ``root`` replaces the vCPU's CR3 (same paging mode): the tables of another address space, such
    as a guest process whose page tables the OS layer found."""

    def __init__(self, cpu: X86Cpu, read_physical: ReadPhysical, root: int | None = None):
        self.cpu = cpu
        self.read = read_physical
        self.mode = cpu.paging_mode
        self.cr3 = cpu["cr3"] if root is None else root
        # 4/5-level tables are cheap to enumerate; 32-bit and PAE are translated page by page
        self.enumerable = self.mode in ("4-level", "5-level")

    def _entry(self, address: int, width: int) -> int:
        try:
            return int.from_bytes(self.read(address, width), "little")
        except AddressError as e:
            raise AddressError(
                f"page-table entry at physical {address:#x} is not in guest RAM", e.address
            ) from e

    def translate(self, vaddr: int) -> Translation:
        mode = self.mode
        if mode == "none":
            # As QEMU's debug accessors do: without paging a linear address is the physical one
            # (no 32-bit wrap), so a wild address is "not guest RAM", not a read of page 0.
            return Translation(vaddr, vaddr, 1 << 12, [])
        if mode == "32-bit":
            return self._walk32(vaddr & 0xFFFFFFFF)
        if mode == "pae":
            return self._walk_pae(vaddr & 0xFFFFFFFF)
        return self._walk_long(vaddr, 5 if mode == "5-level" else 4)

    def _fail(self, vaddr: int, level: str, steps: list[WalkStep], why: str = "not present") -> AddressError:
        e = AddressError(
            f"virtual address {vaddr:#x} is not mapped: {level} entry {why} "
            f"(cr3={self.cr3:#x}, {self.mode} paging)",
            vaddr,
        )
        e.steps = steps  # type: ignore[attr-defined]
        return e

    def _walk_long(self, vaddr: int, levels: int) -> Translation:
        bits = 57 if levels == 5 else 48
        top = vaddr >> (bits - 1)
        if top not in (0, (1 << (64 - bits + 1)) - 1):
            raise AddressError(
                f"virtual address {vaddr:#x} is not canonical for {levels}-level paging", vaddr
            )
        names = ["PML5", "PML4", "PDPT", "PD", "PT"][5 - levels :]
        table = self.cr3 & ADDR_MASK
        steps: list[WalkStep] = []
        writable = user = True
        for depth, name in enumerate(names):
            shift = 12 + 9 * (levels - 1 - depth)
            index = (vaddr >> shift) & 0x1FF
            address = table + 8 * index
            entry = self._entry(address, 8)
            steps.append(WalkStep(name, address, entry, index))
            if not entry & PRESENT:
                raise self._fail(vaddr, name, steps)
            writable &= bool(entry & WRITABLE)
            user &= bool(entry & USER)
            if name in ("PDPT", "PD") and entry & PAGE_SIZE_BIT:
                size = 1 << shift
                base = entry & ADDR_MASK & ~(size - 1)
                return Translation(vaddr, base | (vaddr & (size - 1)), size, steps, writable, user)
            table = entry & ADDR_MASK
        return Translation(vaddr, table | (vaddr & 0xFFF), 1 << 12, steps, writable, user)

    def _walk_pae(self, vaddr: int) -> Translation:
        steps: list[WalkStep] = []
        index = vaddr >> 30
        address = (self.cr3 & 0xFFFFFFE0) + 8 * index
        entry = self._entry(address, 8)
        steps.append(WalkStep("PDPT", address, entry, index))
        if not entry & PRESENT:
            raise self._fail(vaddr, "PDPT", steps)
        table = entry & ADDR_MASK
        for name, shift in (("PD", 21), ("PT", 12)):
            index = (vaddr >> shift) & 0x1FF
            address = table + 8 * index
            entry = self._entry(address, 8)
            steps.append(WalkStep(name, address, entry, index))
            if not entry & PRESENT:
                raise self._fail(vaddr, name, steps)
            if name == "PD" and entry & PAGE_SIZE_BIT:
                base = entry & ADDR_MASK & ~((1 << 21) - 1)
                return Translation(vaddr, base | (vaddr & 0x1FFFFF), 1 << 21, steps)
            table = entry & ADDR_MASK
        return Translation(vaddr, table | (vaddr & 0xFFF), 1 << 12, steps)

    def _walk32(self, vaddr: int) -> Translation:
        steps: list[WalkStep] = []
        index = vaddr >> 22
        address = (self.cr3 & 0xFFFFF000) + 4 * index
        entry = self._entry(address, 4)
        steps.append(WalkStep("PD", address, entry, index))
        if not entry & PRESENT:
            raise self._fail(vaddr, "PD", steps)
        if entry & PAGE_SIZE_BIT and self.cpu["cr4"] & CR4_PSE:
            # PSE-36: bits 13..20 of the entry are physical address bits 32..39
            base = (entry & 0xFFC00000) | ((entry >> 13) & 0xFF) << 32
            return Translation(vaddr, base | (vaddr & 0x3FFFFF), 1 << 22, steps)
        table = entry & 0xFFFFF000
        index = (vaddr >> 12) & 0x3FF
        address = table + 4 * index
        entry = self._entry(address, 4)
        steps.append(WalkStep("PT", address, entry, index))
        if not entry & PRESENT:
            raise self._fail(vaddr, "PT", steps)
        return Translation(vaddr, (entry & 0xFFFFF000) | (vaddr & 0xFFF), 1 << 12, steps)

    def mappings(self, limit: int = 1 << 20):
        """Yield (virtual, physical, size, writable, user) for every present leaf, in address order
        (for `monitor info mem`, virtual `find` and ELF cores with virtual segments)."""
        mode = self.mode
        if mode == "none":
            return
        if mode in ("4-level", "5-level"):
            levels = 5 if mode == "5-level" else 4
            shifts = [12 + 9 * k for k in range(levels - 1, -1, -1)]
            layout = [(8, 512, sh) for sh in shifts]
            top = self.cr3 & ADDR_MASK
        elif mode == "pae":
            layout = [(8, 4, 30), (8, 512, 21), (8, 512, 12)]
            top = self.cr3 & 0xFFFFFFE0
        else:  # 32-bit
            layout = [(4, 1024, 22), (4, 1024, 12)]
            top = self.cr3 & 0xFFFFF000
        pse = bool(self.cpu["cr4"] & CR4_PSE)
        count = 0

        def walk(table: int, depth: int, vbase: int, w: bool, u: bool):
            nonlocal count
            width, entries, shift = layout[depth]
            try:
                raw = self.read(table, width * entries)
            except AddressError:
                return
            for i in range(entries):
                entry = int.from_bytes(raw[width * i : width * i + width], "little")
                if not entry & PRESENT:
                    continue
                va = vbase | (i << shift)
                if depth == 0 and shift == 39 and va >> 47:
                    va |= 0xFFFF000000000000
                if depth == 0 and shift == 48 and va >> 56:
                    va |= 0xFE00000000000000
                ww = w and (bool(entry & WRITABLE) or (mode == "pae" and depth == 0))
                uu = u and (bool(entry & USER) or (mode == "pae" and depth == 0))
                size = 1 << shift
                if shift == 12:
                    leaf, base = True, entry & (ADDR_MASK if width == 8 else 0xFFFFF000)
                elif entry & PAGE_SIZE_BIT and width == 8 and (shift == 21 or shift == 30 and mode != "pae"):
                    leaf, base = True, entry & ADDR_MASK & ~(size - 1)
                elif entry & PAGE_SIZE_BIT and width == 4 and pse:
                    leaf, base = True, (entry & 0xFFC00000) | ((entry >> 13) & 0xFF) << 32
                else:
                    leaf = False
                    base = entry & (ADDR_MASK if width == 8 else 0xFFFFF000)
                if leaf:
                    count += 1
                    if count > limit:
                        return
                    yield va, base, size, ww, uu
                else:
                    yield from walk(base, depth + 1, va, ww, uu)

        yield from walk(top, 0, 0, True, True)

    def leaves(self, start: int, end: int):
        """Yield (virtual, size, physical or None, entry) for the leaf entries covering [start, end)
        in 4- or 5-level paging: present pages with their physical address, and non-present
        entries that are not empty (swapped-out or migrating pages, which Linux keeps in the
        entry) with None. Empty entries are skipped, so untouched memory costs nothing. The range
        must lie in one half of the address space."""
        if self.mode not in ("4-level", "5-level"):
            raise AddressError(f"walking a range needs 4- or 5-level paging, not {self.mode}", start)
        bits = 57 if self.mode == "5-level" else 48
        mask = (1 << bits) - 1
        lo, hi = start & mask, ((end - 1) & mask) + 1

        def walk(table: int, shift: int, base: int):
            try:
                raw = self.read(table, 4096)
            except AddressError:
                return
            size = 1 << shift
            for i in range(max(0, (lo - base) >> shift), 512):
                va = base + (i << shift)
                if va >= hi:
                    return
                entry = int.from_bytes(raw[8 * i : 8 * i + 8], "little")
                if not entry:
                    continue
                if not entry & PRESENT:
                    if shift == 12:
                        yield va, size, None, entry
                elif shift == 12 or (shift in (21, 30) and entry & PAGE_SIZE_BIT):
                    yield va, size, entry & ADDR_MASK & ~(size - 1), entry
                else:
                    yield from walk(entry & ADDR_MASK, shift - 9, va)

        top = 1 << (bits - 1)
        for va, size, phys, entry in walk(self.cr3 & ADDR_MASK, bits - 9, 0):
            yield (va | ~mask) & 0xFFFFFFFFFFFFFFFF if va & top else va, size, phys, entry
