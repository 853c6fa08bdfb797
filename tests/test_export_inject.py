"""`vmstate inject-core`: a byte changed in the core shows up in the resumed guest."""

from __future__ import annotations

import dataclasses
import struct
import subprocess
import sys

import pytest
from guestinfo import HIGHER_HALF, small_symbols

from vmstate_gdb.arch.x86_64.elfnotes import PRSTATUS_REGS_OFFSET, USER_REGS
from vmstate_gdb.errors import VmstateError
from vmstate_gdb.export.elfcore import NHDR, NT_PRSTATUS, read_core_segments, write_core
from vmstate_gdb.export.inject import inject_core
from vmstate_gdb.snapshot import Snapshot

NOTE = b"injected from a core\0"


def vmstate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vmstate_gdb", *args], capture_output=True, text=True, timeout=300
    )


def poke(core: str, vaddr: int, data: bytes) -> None:
    """Write ``data`` at a virtual address of a core file, as a hex editor would."""
    for seg in read_core_segments(core):
        if seg.vaddr <= vaddr < seg.vaddr + seg.size:
            with open(core, "r+b") as f:
                f.seek(seg.offset + vaddr - seg.vaddr)
                f.write(data)
            return
    raise AssertionError(f"{vaddr:#x} is in no segment")


def set_core_register(core: str, cpu_pid: int, name: str, value: int) -> None:
    with open(core, "r+b") as f:
        head = f.read(64)
        phoff, phnum = struct.unpack_from("<Q", head, 32)[0], struct.unpack_from("<H", head, 56)[0]
        f.seek(phoff)
        p_type, _fl, offset, _v, _p, filesz = struct.unpack("<IIQQQQ", f.read(40))
        assert p_type == 4 and phnum > 1
        f.seek(offset)
        notes = f.read(filesz)
        pos = 0
        while pos < len(notes):
            namesz, descsz, ntype = NHDR.unpack_from(notes, pos)
            desc = pos + 12 + (namesz + 3) // 4 * 4
            if ntype == NT_PRSTATUS and struct.unpack_from("<I", notes, desc + 32)[0] == cpu_pid:
                f.seek(offset + desc + PRSTATUS_REGS_OFFSET + 8 * USER_REGS.index(name))
                f.write(struct.pack("<Q", value))
                return
            pos = desc + (descsz + 3) // 4 * 4
    raise AssertionError(f"no NT_PRSTATUS for pid {cpu_pid}")


def edited_meta(meta, out: str):
    return dataclasses.replace(meta, path=out)


def test_unchanged_core_injects_nothing(snapshot, tmp_path):
    meta = snapshot("small-pc-e1000")
    core = str(tmp_path / "same.core")
    with Snapshot.open(meta.path) as snap:
        write_core(snap, core, virtual=True)
        result = inject_core(snap, core)
        assert not result.pages and not result.registers and not snap.edits
    run = vmstate("inject-core", meta.path, core, str(tmp_path / "out.vmstate"), "-q")
    assert run.returncode == 0 and "nothing written" in run.stdout, run.stdout + run.stderr


@pytest.mark.parametrize("name, virtual", [("small-pc-e1000", True), ("small-q35-e1000-savevm", False)])
def test_byte_changed_in_the_core_shows_in_the_resumed_guest(snapshot, restored, tmp_path, name, virtual):
    meta = snapshot(name)
    syms = small_symbols()
    core = str(tmp_path / "guest.core")
    out = str(tmp_path / ("injected.qcow2" if meta.format == "qcow2" else "injected.vmstate"))
    args = ["core", meta.path, core, "-q"] + (["--virtual"] if virtual else [])
    if meta.tag:
        args += ["-s", meta.tag]
    run = vmstate(*args)
    assert run.returncode == 0, run.stderr
    note = syms["guest_note"] if virtual else syms["guest_note"] - HIGHER_HALF  # a zero page: a hole
    poke(core, note, NOTE)
    set_core_register(core, 1, "r12", 0xC0DE)
    args = ["inject-core", meta.path, core, out, "-q"] + (["-s", meta.tag] if meta.tag else [])
    run = vmstate(*args)
    assert run.returncode == 0, run.stderr
    assert f"1 page(s) differ: {syms['guest_note'] - HIGHER_HALF:#x}" in run.stdout, run.stdout
    assert "register cpu0 r12: 0x1 -> 0xc0de" in run.stdout, run.stdout
    vm = restored(edited_meta(meta, out))
    tick = vm.wait_for_ticks(2, timeout=30)[-1]
    assert tick.n > meta.last_tick.n
    assert tick.note == NOTE.rstrip(b"\0").decode() and tick.r12 == 0xC0DE, tick


def test_inject_refuses_what_is_not_a_core(snapshot, tmp_path):
    meta = snapshot("small-pc-e1000")
    not_core = tmp_path / "x.core"
    not_core.write_bytes(b"not an elf file at all")
    with Snapshot.open(meta.path) as snap, pytest.raises(VmstateError, match="not an ELF file"):
        inject_core(snap, str(not_core))
    run = vmstate("inject-core", meta.path, str(not_core), str(tmp_path / "o.vmstate"), "-q")
    assert run.returncode == 1 and run.stderr == f"vmstate: {not_core}: not an ELF file\n"
