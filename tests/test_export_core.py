"""`vmstate core`: ELF cores like QEMU's dump-guest-memory, judged by pyelftools and Debian's gdb."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
import time

import pytest
from elftools.elf.elffile import ELFFile
from guestinfo import HIGHER_HALF, LINUX_MAP, ROOT, SMALL_ELF, linux_symbols, small_symbols

from vmstate_gdb.arch.x86_64.cpu import CPU_FIELDS, X86Cpu
from vmstate_gdb.arch.x86_64.elfnotes import (
    PRSTATUS_REGS_OFFSET,
    PRSTATUS_SIZE,
    USER_REGS,
    prstatus_note,
    qemu_cpustate_note,
)
from vmstate_gdb.export.elfcore import make_note, read_core_notes, write_core
from vmstate_gdb.snapshot import Snapshot

GDB = shutil.which("gdb") or "/usr/bin/gdb"
VMLINUX = ROOT / "tests/linux/build/vmlinux"


def gdb_batch(*args: str, commands: list[str]) -> str:
    argv = [GDB, "-batch", "-nx", *args]
    for c in commands:
        argv += ["-ex", c]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    return run.stdout + run.stderr


def fake_cpu(index: int = 0, **values: int) -> X86Cpu:
    regs = dict.fromkeys(CPU_FIELDS, 0)
    regs.update(values)
    return X86Cpu(index, 0, regs)


# -- unit ---------------------------------------------------------------------------------------


@pytest.mark.unit
def test_note_padding_matches_qemu():
    note = make_note(b"CORE", 1, b"abcde")
    assert struct.unpack_from("<III", note) == (5, 5, 1)
    assert note[12:20] == b"CORE\0\0\0\0" and note[20:28] == b"abcde\0\0\0" and len(note) == 28


@pytest.mark.unit
def test_prstatus_layout_is_what_gdb_reads():
    cpu = fake_cpu(
        1,
        rax=0x1111,
        rip=0xFFFFFFFF81000000,
        rsp=0x7000,
        r15=0xF15,
        eflags=0x246,
        **{"cs.selector": 0x10, "fs.base": 0xABC, "gs.base": 0xDEF},
    )
    note = prstatus_note(cpu)
    desc = note[12 + 8 :]
    assert len(desc) == PRSTATUS_SIZE
    assert struct.unpack_from("<I", desc, 32)[0] == 2  # pr_pid = vCPU index + 1
    regs = dict(zip(USER_REGS, struct.unpack_from("<27Q", desc, PRSTATUS_REGS_OFFSET), strict=True))
    assert regs["rax"] == 0x1111 and regs["rip"] == 0xFFFFFFFF81000000 and regs["r15"] == 0xF15
    assert regs["cs"] == 0x10 and regs["fs_base"] == 0xABC and regs["gs_base"] == 0xDEF
    assert regs["orig_rax"] == 0 and regs["eflags"] == 0x246


@pytest.mark.unit
def test_qemu_cpustate_note_layout():
    cpu = fake_cpu(
        0,
        rax=1,
        rbx=2,
        rip=3,
        cr3=0x101000,
        kernel_gs_base=0x55,
        **{"cs.selector": 8, "cs.limit": 0xFFFFF, "cs.flags": 0xA09B00, "cs.base": 0},
    )
    note = qemu_cpustate_note(cpu)
    namesz, descsz, ntype = struct.unpack_from("<III", note)
    assert (namesz, ntype, note[12:16]) == (5, 0, b"QEMU")
    desc = note[20 : 20 + descsz]
    version, size = struct.unpack_from("<II", desc)
    assert version == 1 and size == descsz == 440
    assert struct.unpack_from("<QQ", desc, 8) == (1, 2)  # rax, rbx
    assert struct.unpack_from("<Q", desc, 8 + 16 * 8)[0] == 3  # rip
    cs = struct.unpack_from("<IIIIQ", desc, 8 + 18 * 8)
    assert cs == (8, 0xFFFFF, 0xA09B00, 0, 0)
    cr = struct.unpack_from("<5Q", desc, 8 + 18 * 8 + 10 * 24)
    assert cr[3] == 0x101000
    assert struct.unpack_from("<Q", desc, size - 8)[0] == 0x55


# -- real snapshots -------------------------------------------------------------------------


@pytest.mark.parametrize("virtual", [False, True])
def test_core_parses_with_pyelftools(snapshot, tmp_path, virtual):
    meta = snapshot("small-q35-virtio-2cpu")
    out = str(tmp_path / "guest.core")
    with Snapshot.open(meta.path) as snap:
        write_core(snap, out, virtual=virtual)
        ranges = snap.physical.ranges
        cpus = snap.cpus
        tick_phys = small_symbols()["tick"] - HIGHER_HALF
        tick_bytes = snap.physical.read(tick_phys, 8)
    with open(out, "rb") as f:
        elf = ELFFile(f)
        assert elf["e_type"] == "ET_CORE" and elf["e_machine"] == "EM_X86_64" and elf.elfclass == 64
        segments = list(elf.iter_segments())
        assert segments[0]["p_type"] == "PT_NOTE"
        loads = [s for s in segments[1:] if s["p_type"] == "PT_LOAD"]
        assert len(loads) == len(segments) - 1
        if not virtual:
            assert [(s["p_paddr"], s["p_memsz"]) for s in loads] == [(r.start, r.size) for r in ranges]
            assert all(s["p_vaddr"] == s["p_paddr"] for s in loads)
        else:
            high = [s for s in loads if s["p_vaddr"] == HIGHER_HALF]
            assert high and high[0]["p_paddr"] == 0, "the kernel half maps physical 0 at 0xffffffff80000000"
        notes = list(segments[0].iter_notes())
        prstatus = [n for n in notes if n["n_name"] == "CORE" and n["n_type"] == "NT_PRSTATUS"]
        qemu = [n for n in notes if n["n_name"] == "QEMU"]
        assert len(prstatus) == len(qemu) == len(cpus) == 2
        for cpu, note in zip(cpus, prstatus, strict=True):
            desc = note["n_desc"] if isinstance(note["n_desc"], bytes) else note["n_desc"].encode("latin1")
            assert struct.unpack_from("<I", desc, 32)[0] == cpu.index + 1
            regs = dict(zip(USER_REGS, struct.unpack_from("<27Q", desc, PRSTATUS_REGS_OFFSET), strict=True))
            assert regs["rip"] == cpu["rip"] and regs["rsp"] == cpu["rsp"] and regs["rax"] == cpu["rax"]
        # the byte at tick's physical address, through the segment that holds it
        seg = next(s for s in loads if s["p_paddr"] <= tick_phys < s["p_paddr"] + s["p_filesz"])
        f.seek(seg["p_offset"] + tick_phys - seg["p_paddr"])
        assert f.read(8) == tick_bytes
    st = os.stat(out)
    assert st.st_blocks * 512 < st.st_size // 4, "zero pages must be holes"


def test_gdb_prints_the_snapshots_tick_and_rip(snapshot, tmp_path):
    meta = snapshot("small-pc-e1000")
    syms = small_symbols()
    with Snapshot.open(meta.path) as snap:
        tick = int.from_bytes(snap.virtual(0).read(syms["tick"], 8), "little")
        rip, r12 = snap.cpu(0)["rip"], snap.cpu(0)["r12"]
    assert meta.last_tick is None or tick == meta.last_tick.n
    virtual = str(tmp_path / "virtual.core")
    physical = str(tmp_path / "physical.core")
    run = subprocess.run(
        [sys.executable, "-m", "vmstate_gdb", "core", meta.path, virtual, "--virtual", "-q"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    out = gdb_batch(str(SMALL_ELF), virtual, commands=["p tick", "p/x $rip", "p/x $r12", "info symbol $pc"])
    assert re.search(rf"^\$1 = {tick}$", out, re.M), out
    assert re.search(rf"^\$2 = {rip:#x}$", out, re.M), out
    assert re.search(rf"^\$3 = {r12:#x}$", out, re.M), out
    assert "kmain" in out, out
    # a physical core: gdb sees guest-physical addresses (p_vaddr = p_paddr, as QEMU >= 4.0)
    with Snapshot.open(meta.path) as snap:
        write_core(snap, physical)
    out = gdb_batch(str(SMALL_ELF), physical, commands=[f"x/gx {syms['tick'] - HIGHER_HALF:#x}", "p/x $rip"])
    assert re.search(rf":\s+{tick:#018x}$", out, re.M), out
    assert re.search(rf"^\$1 = {rip:#x}$", out, re.M), out


def test_linux_virtual_core_shows_linux_banner(snapshot, tmp_path):
    meta = snapshot("linux-pc-3nic")
    if not VMLINUX.exists() or not LINUX_MAP.exists():
        pytest.skip("tests/linux/build has no vmlinux/System.map")
    out = str(tmp_path / "linux.core")
    with Snapshot.open(meta.path) as snap:
        result = write_core(snap, out, virtual=True)
    assert result.layout.vmcoreinfo is not None, "Linux keeps its VMCOREINFO note in RAM"
    release = (ROOT / "tests/linux/build/kernel-version").read_text().split()[-1]
    info = {name: desc for name, _t, desc in read_core_notes(out)}
    assert info[b"VMCOREINFO"].startswith(f"OSRELEASE={release}\n".encode())
    banner = linux_symbols()["linux_banner"]
    text = gdb_batch(str(VMLINUX), out, commands=[f"x/s {banner:#x}"])
    assert re.search(rf"^{banner:#x}:\s+\"Linux version {re.escape(release)} ", text, re.M), text
    assert len(result.layout.segments) < 4096


def test_bigmem_core_is_sparse_and_fast(snapshot, tmp_path):
    meta = snapshot("small-pc-bigmem")
    out = str(tmp_path / "big.core")
    with Snapshot.open(meta.path) as snap:
        t0 = time.monotonic()
        result = write_core(snap, out)
        elapsed = time.monotonic() - t0
        ranges = [(r.start, r.size) for r in snap.physical.ranges]
    assert (1 << 32, 3700 * 2**20 - 0xC0000000) in ranges, ranges  # RAM above 4 GiB
    with open(out, "rb") as f:
        loads = [(s["p_paddr"], s["p_memsz"]) for s in ELFFile(f).iter_segments() if s["p_type"] == "PT_LOAD"]
    assert loads == ranges
    st = os.stat(out)
    assert st.st_size > 3700 * 2**20 and st.st_blocks * 512 < 64 << 20
    assert result.zero_pages > 900_000
    assert elapsed < 30, f"{elapsed:.1f} s for 3.7 GiB"


@pytest.mark.qemu
def test_core_pages_read_in_runs_keep_edits_and_holes(snapshot_linux_pc_3nic, tmp_path):
    """The core writer reads consecutive page records in runs and writes runs of pages at once:
    an edited page inside such a run carries the edit, its neighbours the snapshot's bytes, a page
    edited to zeros is a hole, and every byte of RAM equals a read through the snapshot."""
    from vmstate_gdb.export.elfcore import read_core_segments

    out = str(tmp_path / "edited.core")
    with Snapshot.open(snapshot_linux_pc_3nic.path) as snap:
        block = snap.index.ram.blocks["pc.ram"]
        ps = block.page_size
        # three pages whose records follow each other: the middle one is edited, then one zeroed
        run = next(
            i for i in range(1, block.page_count - 3)
            if block.pages[i] > 0 and block.pages[i + 1] == block.pages[i] + ps + 8
            and block.pages[i + 2] == block.pages[i] + 2 * (ps + 8)
        )  # fmt: skip
        snap.physical.write((run + 1) * ps, b"edited in a run" * 16)
        snap.physical.write((run + 2) * ps, bytes(ps))
        result = write_core(snap, out)
        expected = snap.physical.read(0, 64 << 20)
    (seg, *_) = [s for s in read_core_segments(out) if s.paddr == 0]
    with open(out, "rb") as f:
        f.seek(seg.offset)
        got = f.read(64 << 20)
    assert got == expected
    assert got[(run + 1) * ps : (run + 1) * ps + 15] == b"edited in a run"
    blocks = os.stat(out).st_blocks * 512
    assert result.zero_pages > 0 and blocks < os.path.getsize(out), "zero pages are holes"
