"""aarch64 `virt` guests: read, debugged with gdb-multiarch, edited, saved, resumed, dumped.

The oracles: QEMU's own `info registers` and gdbstub (`g`/`p` packets) recorded at stop time for each
vCPU of a 2-vCPU guest on QEMU 7.2 and 10; QEMU's `gva2gpa` and `dump-guest-memory` on the same
stopped VM (the snapshot loaded back, paused); the guest's symbols and the TICK lines it prints after
QEMU resumes an edited snapshot; the Linux guest's own `uname -r`.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from vmstate_gdb.arch.aarch64 import gdb as arm_gdb
from vmstate_gdb.arch.aarch64.cpu import Aarch64Cpu
from vmstate_gdb.arch.aarch64.elfnotes import FPREGSET_SIZE, PRSTATUS_SIZE, fpregset_note, prstatus_note
from vmstate_gdb.arch.aarch64.paging import PageWalker
from vmstate_gdb.errors import AddressError
from vmstate_gdb.export.elfcore import read_core_notes, read_core_segments, write_core
from vmstate_gdb.harness import GuestConfig, Nic, restore
from vmstate_gdb.mac import apply_mac_change, plan_mac_change
from vmstate_gdb.snapshot import Snapshot
from vmstate_gdb.symbols import load_symbols
from vmstate_gdb.writer import save

ROOT = Path(__file__).resolve().parent.parent
ARM_ELF = ROOT / "tests/guest-arm64/build/guest.elf"
ARM_LINUX_MAP = ROOT / "tests/linux-arm64/build/System.map"
GDB_MULTIARCH = shutil.which("gdb-multiarch") or "/usr/bin/gdb-multiarch"
KERNEL_VA = 0xFFFF800000000000
SMALL = ["arm64-virt-2cpu", "arm64-virt-2cpu-qemu10"]
NEW_MAC = "52:54:00:a6:4e:d1"


def small(name: str) -> pytest.param:
    marks = [pytest.mark.qemu, pytest.mark.aarch64] + ([pytest.mark.qemu10] if "qemu10" in name else [])
    return pytest.param(name, marks=marks)


def syms() -> dict[str, int]:
    return load_symbols(str(ARM_ELF))


def gdb_multiarch(*commands: str, args: tuple[str, ...] = ()) -> str:
    if not Path(GDB_MULTIARCH).exists():
        pytest.skip("gdb-multiarch is not installed")
    argv = [GDB_MULTIARCH, "-nx", "-batch", "-x", str(ROOT / "vmstate.gdb"), *args]
    for c in commands:
        argv += ["-ex", c]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=180, cwd="/")
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out
    return out


# -- unit: the page walk, notes and register set on synthetic bytes -------------------------------


class _Tables:
    """Page tables in a dict of 4 KiB pages, built entry by entry."""

    def __init__(self):
        self.pages: dict[int, bytearray] = {}

    def set(self, table: int, index: int, entry: int) -> None:
        page = self.pages.setdefault(table, bytearray(4096))
        struct.pack_into("<Q", page, 8 * index, entry)

    def read(self, address: int, size: int) -> bytes:
        base = address & ~0xFFF
        if base not in self.pages:
            raise AddressError(f"physical {address:#x} not backed", address)
        return bytes(self.pages[base][address - base : address - base + size])


def _cpu(**values: int) -> Aarch64Cpu:
    v = {f"x{i}": 0 for i in range(31)} | {"sp": 0, "pc": 0, "pstate": 0x3C5}
    v.update(values)
    return Aarch64Cpu(0, 0, v, {})


TCR_39_48_4K = 25 | 16 << 16 | 2 << 30  # T0SZ=25 (level 1 start), T1SZ=16 (level 0), TG1=4K


@pytest.mark.unit
def test_walk_ttbr0_block_and_ttbr1_pages_and_blocks():
    t = _Tables()
    t.set(0x1000, 1, 0x40000000 | 0x401)  # TTBR0 L1[1]: 1 GiB block
    t.set(0x2000, 256, 0x3003)  # TTBR1 L0[256] -> L1 at 0x3000
    t.set(0x3000, 1, 0x4003)  # L1[1] -> L2
    t.set(0x4000, 0, 0x5003)  # L2[0] -> L3
    t.set(0x4000, 1, 0x40200000 | 0x401)  # L2[1]: 2 MiB block
    t.set(0x5000, 3, 0x40003000 | 0x4C3)  # L3[3]: page, AP[2]=1 (read-only), AP[1]=1 (EL0)
    cpu = _cpu(sctlr_el1=1, tcr_el1=TCR_39_48_4K, ttbr0_el1=0x1000 | 0x1234 << 48, ttbr1_el1=0x2001)
    w = PageWalker(cpu, t.read)
    low = w.translate(0x40123456)
    assert (low.physical, low.page_size, [s.level for s in low.steps]) == (0x40123456, 1 << 30, ["L1"])
    page = w.translate(KERNEL_VA + 0x40003ABC)
    assert (
        page.physical == 0x40003ABC
        and page.page_size == 4096
        and [s.level for s in page.steps]
        == [
            "L0",
            "L1",
            "L2",
            "L3",
        ]
    )
    assert not page.writable and page.user
    block = w.translate(KERNEL_VA + 0x40212345)
    assert block.physical == 0x40212345 and block.page_size == 2 << 20
    with pytest.raises(AddressError, match="outside TTBR0_EL1's 39-bit range"):
        w.translate(0x0000_0080_0000_0000)
    with pytest.raises(AddressError, match="level 3 entry not valid"):
        w.translate(KERNEL_VA + 0x40004000)
    assert sorted((va, pa, size) for va, pa, size, _w, _u in w.mappings()) == [
        (0x40000000, 0x40000000, 1 << 30),
        (KERNEL_VA + 0x40003000, 0x40003000, 4096),
        (KERNEL_VA + 0x40200000, 0x40200000, 2 << 20),
    ]
    # a process's root replaces TTBR0 only; EPD0 turns the lower half off
    other = PageWalker(cpu, t.read, root=0x2000)
    assert other.translate(KERNEL_VA + 0x40003000).physical == 0x40003000
    with pytest.raises(AddressError):
        other.translate(0x40000000)
    off = PageWalker(_cpu(sctlr_el1=1, tcr_el1=TCR_39_48_4K | 1 << 7, ttbr1_el1=0x2000), t.read)
    with pytest.raises(AddressError, match="EPD0"):
        off.translate(0x40000000)
    assert PageWalker(_cpu(sctlr_el1=0), t.read).translate(0x1234).physical == 0x1234


@pytest.mark.unit
def test_walk_64k_granule_and_top_byte_ignore():
    t = _Tables()
    # 64 KiB granule, T1SZ=22 (42 bits): level 2 start (13 index bits), level 3 pages of 64 KiB
    tcr = 22 << 16 | 3 << 30 | 1 << 38  # TG1=64K, TBI1
    t.set(0x10000, 0, 0x20003)  # L2[0] -> L3 at 0x20000
    t.set(0x20000, 5, 0x4005_0000 | 0x403)  # L3[5]: 64 KiB page
    cpu = _cpu(sctlr_el1=1, tcr_el1=tcr, ttbr1_el1=0x10000)
    w = PageWalker(cpu, lambda a, n: t.read(a, n) if (a & ~0xFFF) in t.pages else bytes(n))
    va = 0xFFFF_FC00_0005_1234  # 42-bit upper half: bits 63..42 set
    tr = w.translate(va)
    assert tr.physical == 0x4005_1234 and tr.page_size == 64 << 10 and tr.steps[0].level == "L2"
    assert w.translate(va & ~(0xFF << 56) | 0x5A << 56).physical == 0x4005_1234  # tag ignored
    assert cpu.paging_mode == "4k/64k"


@pytest.mark.unit
def test_core_notes_have_qemus_sizes_and_layout():
    values = {f"x{i}": 0x100 + i for i in range(31)} | {"sp": 0x5000, "pc": 0xFFFF800040102000}
    values |= {"pstate": 0x800003C5, "fpscr": 0x09C00000, "q1.lo": 0x11, "q1.hi": 0x22}
    cpu = Aarch64Cpu(1, 0, values, {})
    note = prstatus_note(cpu)
    namesz, descsz, ntype = struct.unpack_from("<III", note)
    desc = note[12 + 8 : 12 + 8 + descsz]
    assert (namesz, descsz, ntype, note[12:17]) == (5, PRSTATUS_SIZE, 1, b"CORE\0")
    assert struct.unpack_from("<I", desc, 32)[0] == 2
    regs = struct.unpack_from("<34Q", desc, 112)
    assert regs[0] == 0x100 and regs[30] == 0x11E and regs[31:] == (0x5000, 0xFFFF800040102000, 0x800003C5)
    fp = fpregset_note(cpu)
    namesz, descsz, ntype = struct.unpack_from("<III", fp)
    fdesc = fp[20 : 20 + descsz]
    assert (descsz, ntype) == (FPREGSET_SIZE, 2)
    assert struct.unpack_from("<QQ", fdesc, 16) == (0x11, 0x22)
    assert struct.unpack_from("<II", fdesc, 512) == (0x08000000, 0x01C00000)  # fpsr, fpcr


@pytest.mark.unit
def test_gdb_register_numbers_are_qemus():
    names = [r.name for r in arm_gdb.REGISTERS]
    assert names[:34] == [f"x{i}" for i in range(31)] + ["sp", "pc", "cpsr"]
    assert names.index("v0") == 34 and names.index("fpsr") == 66 and names.index("fpcr") == 67
    assert arm_gdb.CORE_G_SIZE == 268
    xml = arm_gdb.target_xml()
    assert "<architecture>aarch64</architecture>" in xml and 'name="org.gnu.gdb.aarch64.fpu"' in xml


# -- read: registers as QEMU showed them ----------------------------------------------------------


@pytest.mark.parametrize("name", [small(n) for n in [*SMALL, "arm64-virt-novmdesc"]])
def test_registers_equal_qemu_info_registers_and_gdbstub(snapshot, name):
    meta = snapshot(name)
    with Snapshot.open(meta.path) as snap:
        assert snap.arch.name == "aarch64" and len(snap.cpus) == 2 == len(meta.state.registers)
        for cpu, qemu, stub in zip(snap.cpus, meta.state.registers, meta.state.gdbstub, strict=True):
            for i in range(31):
                assert cpu[f"x{i}"] == qemu[f"X{i:02d}"], (cpu.index, i)
            assert (cpu.pc, cpu.sp, cpu["pstate"]) == (qemu["PC"], qemu["SP"], qemu["PSTATE"])
            if "FPCR" in qemu:
                assert (cpu.fpcr, cpu.fpsr) == (qemu["FPCR"], qemu["FPSR"])
                assert all(cpu.q(i) == qemu[f"Q{i:02d}"] for i in range(32))
            ours = snap.arch.encode_gdb_registers(cpu)
            assert ours[: arm_gdb.CORE_G_SIZE].hex() == stub["g"]
            for regnum, reply in stub["p"].items():
                reg = snap.arch.gdb_registers[int(regnum, 16)]
                assert snap.arch.encode_gdb_register(cpu, reg).hex() == reply, reg.name
            # our `monitor info registers` is QEMU's text
            text = snap.arch.format_registers(cpu)
            assert text.strip() == meta.state.registers_text[cpu.index].replace("\r", "").strip()
        cpu0, cpu1 = snap.cpus
        assert cpu0["x18"] == 1 and cpu0.fpcr == 0x01C00000 and cpu0.q(3) == 0x3FF0000000000000
        assert all(cpu1[f"x{i}"] == 0xA64C0DE000000000 + i for i in range(31))
        assert cpu1.halted and syms()["secondary_park"] <= cpu1.pc <= syms()["secondary_park"] + 4
        assert cpu0.paging_mode == "4k" and cpu0.cpu_mode == "EL1h"
        if snap.index.vmdesc is not None:  # without it the virtio blob stays raw bytes
            assert [n.mac for n in snap.nics()] == [bytes.fromhex(meta.config.nics[0].mac.replace(":", ""))]
        tick = struct.unpack("<Q", snap.virtual(0).read(syms()["tick"], 8))[0]
        assert tick == meta.last_tick.n


def test_cli_info_translate_disas(snapshot):
    meta = snapshot("arm64-virt-2cpu")

    def vmstate(*args):
        run = subprocess.run([sys.executable, "-m", "vmstate_gdb", *args], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        return run.stdout

    info = vmstate("info", meta.path)
    assert "architecture  aarch64" in info and "virtio-net" in info and meta.config.nics[0].mac in info
    magic = syms()["guest_magic"]
    out = vmstate("translate", meta.path, hex(magic))
    assert f"-> physical {magic - KERNEL_VA:#x} (4.0 KiB page" in out and "L3" in out
    assert vmstate("read", meta.path, hex(magic), "8").split()[1:9] == "53 47 4d 45 4d 53 41 56".split()
    dis = vmstate("disas", meta.path, "--cpu", "1")
    assert re.search(r"=> 0x[0-9a-f]+.*\bb\s+#0x", dis) and "wfi" in dis


# -- QEMU's gva2gpa and dump-guest-memory on the same stopped VM ----------------------------------


@pytest.mark.parametrize("name", [small(n) for n in SMALL])
def test_translation_and_core_agree_with_qemu(snapshot, tmp_path, name):
    meta = snapshot(name)
    s = syms()
    addresses = [s["guest_magic"], s["tick"], s["guest_note"] + 0x1234, 0x40103008, 0x0A003E00]
    qemu_core = tmp_path / "qemu.core"
    with restore(meta, tmp_path, cont=False) as vm:
        gpa = {}
        for va in addresses:
            reply = vm.hmp(f"gva2gpa {va:#x}")
            gpa[va] = int(re.search(r"gpa: (0x[0-9a-f]+)", reply)[1], 16)
        vm.qmp("dump-guest-memory", paging=False, protocol=f"file:{qemu_core}")
    with Snapshot.open(meta.path) as snap:
        for va in addresses:
            assert snap.virtual(0).translate(va).physical == gpa[va], hex(va)
        ours = tmp_path / "ours.core"
        write_core(snap, str(ours))
    assert read_core_notes(str(ours)) == [n for n in read_core_notes(str(qemu_core)) if n[0] == b"CORE"]
    theirs = {seg.paddr: seg for seg in read_core_segments(str(qemu_core))}
    mine = {seg.paddr: seg for seg in read_core_segments(str(ours))}
    ram = theirs[0x40000000]
    assert mine[0x40000000].size == ram.size
    with open(qemu_core, "rb") as a, open(ours, "rb") as b:
        for off in range(0, ram.size, 1 << 20):
            a.seek(ram.offset + off)
            b.seek(mine[0x40000000].offset + off)
            assert a.read(1 << 20) == b.read(1 << 20), hex(0x40000000 + off)


# -- gdb-multiarch --------------------------------------------------------------------------------


def test_gdb_multiarch_reads_symbols_registers_and_threads(snapshot):
    meta = snapshot("arm64-virt-2cpu")
    out = gdb_multiarch(
        f"vmstate-open {meta.path}",
        "info threads",
        "p/x guest_magic",
        "p tick",
        "echo ==regs0==\\n",
        "info registers pc sp cpsr x18 fpcr ttbr1_el1",
        "p/x $v0.q.u[0]",
        "thread 2",
        "echo ==regs1==\\n",
        "info registers x5 x30 pc",
        "x/i $pc",
        "monitor phys on",
        "echo ==phys==\\n",
        "x/2wx 0x40103008",
        args=(str(ARM_ELF),),
    )
    assert re.search(r"0x40103008:\s+0x454d4753\s+0x5641534d", out.split("==phys==")[1]), out
    assert re.search(r"^\* 1\s+Thread 1 \(CPU#0", out, re.M) and re.search(
        r"^  2\s+Thread 2 \(CPU#1", out, re.M
    )
    assert "= 0x5641534d454d4753" in out and f"= {meta.last_tick.n}" in out
    qemu0, qemu1 = meta.state.registers
    regs0 = out.split("==regs0==")[1].split("==regs1==")[0]
    assert re.search(rf"^pc\s+0x{qemu0['PC']:x}\b", regs0, re.M)
    assert re.search(rf"^sp\s+0x{qemu0['SP']:x}\b", regs0, re.M)
    assert re.search(r"^x18\s+0x1\b", regs0, re.M) and re.search(r"^ttbr1_el1\s+0x40105000\b", regs0, re.M)
    assert "0xfedcba98765432100123456789abcdef" in regs0
    regs1 = out.split("==regs1==")[1].split("==phys==")[0]
    assert re.search(r"^x5\s+0xa64c0de000000005\b", regs1, re.M)
    assert re.search(rf"^pc\s+0x{qemu1['PC']:x}\b", regs1, re.M) and "secondary_park" in regs1


# -- edits saved and resumed ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", [small(n) for n in SMALL] + [pytest.param("arm64-virt-savevm", marks=[pytest.mark.qemu])]
)
def test_register_memory_and_mac_edits_resume(snapshot, restored, tmp_path, name):
    meta = snapshot(name)
    s = syms()
    out = str(tmp_path / ("edited.qcow2" if meta.format == "qcow2" else "edited.vmstate"))
    note = b"edited on aarch64\0"
    with Snapshot.open(meta.path) as snap:
        assert snap.set_register(0, "x18", 0xDEADBEEF) == ["x18"]
        snap.virtual(0).write(s["guest_note"], note)
        plan = plan_mac_change(snap, None, bytes.fromhex(NEW_MAC.replace(":", "")), memory=True)
        apply_mac_change(snap, plan)
        save(snap, out)
    nics = tuple(Nic(n.model, NEW_MAC) for n in meta.config.nics)
    edited = dataclasses.replace(meta, path=out, config=dataclasses.replace(meta.config, nics=nics))
    vm = restored(edited)
    ticks = [t for t in vm.wait_for_ticks(2) if t.n > meta.last_tick.n]
    assert ticks and ticks[0].n == meta.last_tick.n + 1  # the counter continues
    t = ticks[-1]
    assert (t.r12, t.note, t.sw_mac, t.hw_mac) == (0xDEADBEEF, "edited on aarch64", NEW_MAC, NEW_MAC)


def test_gdb_multiarch_edit_and_save_resume(snapshot, restored, tmp_path):
    meta = snapshot("arm64-virt-2cpu")
    out = tmp_path / "gdb.vmstate"
    text = gdb_multiarch(
        f"vmstate-open {meta.path}",
        "set $x18 = 0x5a5a",
        "set var guest_note[0] = 'G'",
        "thread 2",
        "set $x7 = 0x77",
        f"vmstate-save {out}",
        args=(str(ARM_ELF),),
    )
    assert out.exists(), text
    with Snapshot.open(str(out)) as snap:
        assert snap.cpu(1)["x7"] == 0x77 and snap.cpu(0)["x18"] == 0x5A5A
    vm = restored(dataclasses.replace(meta, path=str(out)))
    t = [t for t in vm.wait_for_ticks(2) if t.n > meta.last_tick.n][-1]
    assert t.r12 == 0x5A5A and t.note == "G"


def test_core_opens_in_gdb_multiarch(snapshot, tmp_path):
    meta = snapshot("arm64-virt-2cpu")
    core = tmp_path / "vm.core"
    with Snapshot.open(meta.path) as snap:
        result = write_core(snap, str(core), virtual=True)
        pc0, pc1 = snap.cpu(0).pc, snap.cpu(1).pc
    assert "ttbr1_el1=0x40105000" in result.summary()
    out = gdb_multiarch(
        "p/x guest_magic", "info threads", "info registers pc", args=(str(ARM_ELF), str(core))
    )
    assert "= 0x5641534d454d4753" in out and re.search(rf"^pc\s+0x{pc0:x}\b", out, re.M)
    assert re.search(r"LWP 2\s+secondary_park \(\)", out) and syms()["secondary_park"] <= pc1


# -- Debian's arm64 kernel ------------------------------------------------------------------------


@pytest.mark.linux
@pytest.mark.parametrize(
    "name", ["linux-arm64-virt", pytest.param("linux-arm64-virt-qemu10", marks=pytest.mark.qemu10)]
)
def test_linux_banner_by_virtual_address(snapshot, name):
    meta = snapshot(name)
    banner = next(
        int(a, 16) for a, _t, n in (line.split() for line in open(ARM_LINUX_MAP)) if n == "linux_banner"
    )
    kver = (ROOT / "tests/linux-arm64/build/kernel-version").read_text().split()[2]  # the package's
    with Snapshot.open(meta.path) as snap:
        assert snap.arch.name == "aarch64" and snap.cpu(0).paging_mode == "4k"
        for cpu, qemu in zip(snap.cpus, meta.state.registers, strict=True):  # a real kernel's vCPUs
            assert (cpu.pc, cpu.sp, cpu["pstate"], cpu["x0"]) == (
                qemu["PC"],
                qemu["SP"],
                qemu["PSTATE"],
                qemu["X00"],
            )
        text = snap.virtual(snap.ncpus - 1).read(banner, 200).split(b"\0")[0].decode()
        assert snap.arch.page_table_root(snap.cpu(0)) == snap.cpu(0)["ttbr1_el1"]
        assert [n.mac for n in snap.nics()] == [bytes.fromhex(meta.config.nics[0].mac.replace(":", ""))]
    assert text.startswith(f"Linux version {kver} ")
    out = gdb_multiarch(f"vmstate-open {meta.path}", f"x/s {banner:#x}", "info registers pc")
    assert "Linux version " in out and re.search(rf"^pc\s+0x{meta.state.registers[0]['PC']:x}\b", out, re.M)


# -- exports, diff, capture -----------------------------------------------------------------------


def vmstate(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmstate_gdb", *args], capture_output=True, text=True, timeout=timeout
    )


def test_devices_json_edit_of_mac_and_register_resumes(snapshot, restored, tmp_path):
    """export-devices --json, change the NIC's MAC and cpu[0]'s env.xregs[18] there, import, resume."""
    meta = snapshot("arm64-virt-2cpu")
    exported, out = tmp_path / "devices.json", str(tmp_path / "imported.vmstate")
    run = vmstate("export-devices", meta.path, str(exported), "--json", "-q")
    assert run.returncode == 0, run.stderr
    doc = json.loads(exported.read_text())
    doc["nics"][0]["mac"] = NEW_MAC
    cpu0 = next(d for d in doc["devices"] if d["name"] == "cpu[0]")
    xregs = next(f for f in cpu0["fields"] if f["name"] == "env.xregs")
    assert xregs["items"][18]["value"] in ("1", "0x1")
    xregs["items"][18]["value"] = "0x18a64"
    exported.write_text(json.dumps(doc))
    run = vmstate("import-devices", meta.path, str(exported), out)
    assert run.returncode == 0, run.stderr
    assert f"mac={NEW_MAC}" in run.stdout and "env.xregs[18]" in run.stdout, run.stdout
    nics = tuple(Nic(n.model, NEW_MAC) for n in meta.config.nics)
    vm = restored(dataclasses.replace(meta, path=out, config=dataclasses.replace(meta.config, nics=nics)))
    t = [t for t in vm.wait_for_ticks(2) if t.n > meta.last_tick.n][-1]
    assert (t.r12, t.hw_mac, t.sw_mac) == (0x18A64, NEW_MAC, meta.config.nics[0].mac)


def test_inject_core_and_diff(snapshot, restored, tmp_path):
    """A byte of guest_note and x18 changed in a `vmstate core` file go back in with inject-core;
    `vmstate diff` names both; QEMU resumes the result with them."""
    meta = snapshot("arm64-virt-2cpu")
    core, out = tmp_path / "vm.core", str(tmp_path / "injected.vmstate")
    assert vmstate("core", meta.path, str(core), "-q").returncode == 0
    note_pa = syms()["guest_note"] - KERNEL_VA
    data = bytearray(core.read_bytes())
    seg = next(s for s in read_core_segments(str(core)) if s.paddr <= note_pa < s.paddr + s.size)
    data[seg.offset + note_pa - seg.paddr : seg.offset + note_pa - seg.paddr + 4] = b"core"
    desc = next(d for n, t, d in read_core_notes(str(core)) if n == b"CORE" and t == 1)
    at = bytes(data).index(desc)
    struct.pack_into("<Q", data, at + 112 + 18 * 8, 0xC0DE)  # pr_reg.regs[18] of vCPU 0
    core.write_bytes(data)
    run = vmstate("inject-core", meta.path, str(core), out)
    assert run.returncode == 0, run.stderr
    assert "cpu0 x18: 0x1 -> 0xc0de" in run.stdout and f"{note_pa:#x}" in run.stdout, run.stdout
    diff = vmstate("diff", meta.path, out, "--json")
    report = json.loads(diff.stdout)
    assert {"cpu": 0, "register": "x18", "a": 1, "b": 0xC0DE} in report["registers"], report["registers"]
    vm = restored(dataclasses.replace(meta, path=out))
    t = [t for t in vm.wait_for_ticks(2) if t.n > meta.last_tick.n][-1]
    assert t.r12 == 0xC0DE and t.note == "core"


@pytest.mark.qemu10
def test_capture_a_running_aarch64_vm_and_resume(qemu_vm, tmp_path):
    """`vmstate capture` over QMP (QEMU 10, file: migration): the stream opens as aarch64 and the
    command `vmstate resume-cmd` prints brings it back with the counter going on."""
    from test_capture import Resumed

    qmp = Path(tempfile.mkdtemp(prefix="vmcap-")) / "tool.qmp"
    config = GuestConfig(
        "small-arm64",
        "virt",
        2,
        128,
        (Nic("virtio-net-device", "52:54:00:ab:cd:05"),),
        qemu="10",
        extra_args=("-qmp", f"unix:{qmp},server=on,wait=off", "-name", "armvm"),
    )
    vm = qemu_vm(config, name="armvm")
    vm.wait_for_ticks(2)
    run = vmstate("capture", "--qmp", str(qmp), "-o", str(tmp_path / "out"), "--json")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)["vms"][0]
    assert report["ok"] and report["resumed"]
    with Snapshot.open(report["path"]) as snap:
        assert snap.arch.name == "aarch64" and snap.ncpus == 2 and snap.cpu(0)["x18"] == 1
        assert [n.mac.hex(":") for n in snap.nics()] == ["52:54:00:ab:cd:05"]
        captured = struct.unpack("<Q", snap.virtual(0).read(syms()["tick"], 8))[0]
    assert 2 <= captured <= vm.ticks()[-1].n
    vm.close()
    resumed = Resumed(report["path"], tmp_path)
    try:
        resumed.cont()
        ticks = resumed.ticks(2)
        assert ticks and min(ticks) > captured and max(ticks) > min(ticks)
    finally:
        resumed.close()
    shutil.rmtree(qmp.parent, ignore_errors=True)


@pytest.mark.linux
def test_linux_mac_edit_resumes(snapshot, restored, tmp_path):
    """The MAC in virtio-net's state and in the kernel's memory (dev_addr): Linux's TICK shows it."""
    meta = snapshot("linux-arm64-virt")
    out = str(tmp_path / "linux-mac.vmstate")
    run = vmstate("patch", meta.path, out, "--mac", NEW_MAC, "--memory")
    assert run.returncode == 0, run.stderr
    nics = tuple(Nic(n.model, NEW_MAC) for n in meta.config.nics)
    vm = restored(dataclasses.replace(meta, path=out, config=dataclasses.replace(meta.config, nics=nics)))
    ticks = [t for t in vm.wait_for_ticks(2, timeout=60) if t.n > meta.last_tick.n]
    assert ticks and ticks[-1].mac == NEW_MAC and ticks[-1].iface == "eth0"


def test_x86_gdb_refuses_an_aarch64_snapshot_in_one_line(snapshot):
    meta = snapshot("arm64-virt-2cpu")
    proc = subprocess.run(
        [
            "/usr/bin/gdb",
            "-nx",
            "-batch",
            "-x",
            str(ROOT / "vmstate.gdb"),
            "-ex",
            f"vmstate-open {meta.path}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "this snapshot's guest is aarch64, which this gdb cannot debug (use gdb-multiarch)" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_cli_patch_register_and_mac_resume(snapshot, restored, tmp_path):
    meta = snapshot("arm64-virt-2cpu")
    out = str(tmp_path / "patched.vmstate")
    bad = vmstate("patch", meta.path, out, "--reg", "0:rax=1")
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1
    assert "unknown register 'rax'" in bad.stderr and "x0..x30" in bad.stderr and not Path(out).exists()
    run = vmstate("patch", meta.path, out, "--reg", "0:x18=0x99", "--mac", NEW_MAC, "--memory")
    assert run.returncode == 0, run.stderr
    assert "qemu-system-aarch64" in run.stdout and f"mac={NEW_MAC}" in run.stdout, run.stdout
    nics = tuple(Nic(n.model, NEW_MAC) for n in meta.config.nics)
    vm = restored(dataclasses.replace(meta, path=out, config=dataclasses.replace(meta.config, nics=nics)))
    t = [t for t in vm.wait_for_ticks(2) if t.n > meta.last_tick.n][-1]
    assert (t.r12, t.sw_mac, t.hw_mac) == (0x99, NEW_MAC, NEW_MAC)


@pytest.mark.linux
def test_linux_view_of_the_arm64_kernel_says_what_it_lacks(snapshot):
    """The OS layer runs on aarch64 through the architecture's Linux ABI: it finds the kernel's
    VMCOREINFO in RAM and decodes its kallsyms with drgn, and Debian's cloud arm64 kernel, built
    without CONFIG_KALLSYMS_ALL, then gets one line saying so (its kallsyms has no init_task)."""
    from vmstate_gdb.os.linux.vmcoreinfo import find_vmcoreinfo

    meta = snapshot("linux-arm64-virt")
    kver = (ROOT / "tests/linux-arm64/build/kernel-version").read_text().split()[2]
    with Snapshot.open(meta.path) as snap:
        info = find_vmcoreinfo(snap)
        assert info is not None and info.release == kver
        stext = next(int(a, 16) for a, _t, n in (ln.split() for ln in open(ARM_LINUX_MAP)) if n == "_stext")
        assert info.symbol("_stext") == stext  # System.map: /proc/kallsyms of a nokaslr boot
    run = vmstate("linux", meta.path, "ps")
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines() == [
        f"vmstate: {meta.path}: Linux {kver}: kallsyms lists no data symbols (CONFIG_KALLSYMS_ALL is off); "
        "give the kernel's debug vmlinux with --vmlinux"
    ]
