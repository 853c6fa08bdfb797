"""`vmstate diff` of a snapshot and its edited copy, and `vmstate disas` in each vCPU's mode."""

from __future__ import annotations

import json
import subprocess
import sys

from guestinfo import HIGHER_HALF, SMALL_ELF, small_symbols

from vmstate_gdb.arch.x86_64.disasm import disassemble_at
from vmstate_gdb.export.diff import diff_snapshots
from vmstate_gdb.export.disas import listing
from vmstate_gdb.snapshot import Snapshot
from vmstate_gdb.writer import save


def vmstate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vmstate_gdb", *args], capture_output=True, text=True, timeout=300
    )


def test_diff_names_exactly_the_edits(snapshot, tmp_path):
    meta = snapshot("small-pc-e1000")
    out = str(tmp_path / "edited.vmstate")
    note = small_symbols()["guest_note"]
    with Snapshot.open(meta.path) as snap:
        snap.set_register(0, "r12", 0x5EED)
        snap.set_field("port92/outport", 3)
        snap.virtual(0).write(note + 0x10, b"changed")
        save(snap, out)
    with Snapshot.open(meta.path) as a, Snapshot.open(out) as b:
        same = diff_snapshots(a, a)
        assert same.same and "no differences" in same.text()
        d = diff_snapshots(a, b)
    assert {(r["cpu"], r["register"], r["b"]) for r in d.registers} == {(0, "r12", 0x5EED)}
    assert {f["path"] for f in d.fields} == {"cpu/env.regs[12]", "port92/outport"}
    assert [(m["physical"], m["size"]) for m in d.memory] == [(note - HIGHER_HALF, 4096)]
    run = vmstate("diff", meta.path, out, "--json")
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    assert data["memory_bytes"] == 4096 and data["registers"][0]["register"] == "r12"
    run = vmstate("diff", meta.path, out, "--exit-code")
    assert run.returncode == 1
    assert "cpu0 r12: 0x1 -> 0x5eed" in run.stdout and "field port92/outport: 2 -> 3" in run.stdout


def test_diff_of_two_captures_of_the_same_guest(snapshot):
    """QEMU 7.2 exec: and QEMU 10 file: captures of the same guest: the tick counter page differs."""
    a_meta, b_meta = snapshot("small-pc-e1000"), snapshot("small-pc-e1000-qemu10-file")
    tick = small_symbols()["tick"] - HIGHER_HALF
    with Snapshot.open(a_meta.path) as a, Snapshot.open(b_meta.path) as b:
        d = diff_snapshots(a, b)
    assert not d.same
    pages = [(m["physical"], m["physical"] + m["size"]) for m in d.memory if m["physical"] is not None]
    if a_meta.last_tick.n != b_meta.last_tick.n:
        assert any(lo <= tick < hi for lo, hi in pages), pages


def test_disas_around_rip_in_each_vcpu_mode(snapshot):
    meta = snapshot("small-pc-rtl8139-2cpu")
    with Snapshot.open(meta.path) as snap:
        cpu0, cpu1 = snap.cpu(0), snap.cpu(1)
        assert (cpu0.bits, cpu1.bits) == (64, 32)  # cpu1 parked by SeaBIOS in 32-bit protected mode
        for cpu in (cpu0, cpu1):
            lst = listing(snap, cpu_index=cpu.index, count=4)
            at = [i for i in lst.instructions if i.address == lst.current]
            assert len(at) == 1, lst.lines()
            read = snap.virtual(cpu.index).read if cpu.paging_mode != "none" else snap.physical.read
            assert at[0].text == disassemble_at(read, cpu, count=1)[0].text
            assert lst.instructions.index(at[0]) > 0, "a few instructions before rip"
    run = vmstate("disas", meta.path, "--cpu", "1", "-n", "2")
    assert run.returncode == 0 and "32-bit code" in run.stdout, run.stdout
    assert "=> 0x00000000000fd09a" in run.stdout, run.stdout
    run = vmstate("disas", meta.path, "kmain", "-n", "1", "--symbols", str(SMALL_ELF), "--json")
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    assert data["bits"] == 64 and data["instructions"][0]["address"] == small_symbols()["kmain"]
    run = vmstate("disas", meta.path, "0x100000", "--phys", "-n", "1")
    assert run.returncode == 0 and "physical addresses" in run.stdout and "cli" in run.stdout, run.stdout
    run = vmstate("disas", meta.path, "0x0000700000000000")
    assert run.returncode == 1 and run.stderr.startswith("vmstate: ") and "not readable" in run.stderr
