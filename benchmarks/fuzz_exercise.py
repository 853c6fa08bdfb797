"""One mutant through everything a user can do: open, info, every device field, registers,
physical and virtual reads, a save with a memory and a register edit, and the saved file reopened.

The project's own errors (VmstateError) are refusals, the expected outcome for most mutants.
Anything else escapes to the caller, which counts it as a failure with its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
from dataclasses import dataclass, field

from vmstate_gdb import cli
from vmstate_gdb.devices.format import to_plain
from vmstate_gdb.errors import AddressError, VmstateError
from vmstate_gdb.mac import apply_mac_change, plan_mac_change
from vmstate_gdb.snapshot import Snapshot
from vmstate_gdb.writer import save

REGISTER = {"x86_64": "rax", "aarch64": "x0"}
EDIT = b"fuzz edit"


@dataclass
class Outcome:
    opened: bool = False
    refused: str | None = None  # the error type and line that refused the mutant at open
    read_refusals: list[str] = field(default_factory=list)  # reads refused after a good open
    saved: bool = False
    save_refused: str | None = None
    bad_save: str | None = None  # a save that succeeded but its output is refused or lacks the edits
    output: str | None = None  # the saved file, kept for a resume check when asked


class _Borrowed:
    """The open session handed to a CLI command, which would otherwise open (and close) its own."""

    def __init__(self, snap: Snapshot):
        self.snap = snap

    def __enter__(self) -> Snapshot:
        return self.snap

    def __exit__(self, *exc) -> None:
        return None


def _refusal(e: VmstateError) -> str:
    return f"{type(e).__name__}: {e}"


def _step(outcome: Outcome, what: str, fn) -> object:
    try:
        return fn()
    except AddressError:  # random guest addresses: most are not mapped
        return None
    except VmstateError as e:
        outcome.read_refusals.append(f"{what}: {_refusal(e)}")
        return None


def _cli_info(snap: Snapshot) -> None:
    args = argparse.Namespace(snap=snap.path, json=False, quiet=True, snapshot=None)
    saved = cli._open
    cli._open = lambda a: _Borrowed(snap)  # type: ignore[assignment]
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            cli.cmd_info(args)
    finally:
        cli._open = saved  # type: ignore[assignment]


def _devices(snap: Snapshot, outcome: Outcome, rng: random.Random) -> None:
    """Every field as `vmstate devices` shows it; one device also as its JSON (all array elements)."""
    devices = snap.devices.devices
    for device in devices:
        _step(outcome, f"device {device.key}", lambda d=device: cli._render(snap, d.root, [], 0, 64))
    if devices:
        d = rng.choice(devices)
        _step(outcome, f"device {d.key} json", lambda: to_plain(d.root, snap.read_stream, depth=64))
    args = argparse.Namespace(json=False, path=None)
    with contextlib.redirect_stdout(io.StringIO()):
        _step(outcome, "devices --explain", lambda: cli._explain(args, snap))


def _reads(snap: Snapshot, outcome: Outcome, rng: random.Random) -> None:
    for r in snap.layout.ranges[:8]:
        for _ in range(2):
            addr = r.start + rng.randrange(max(1, r.size))
            _step(
                outcome, f"physical {addr:#x}", lambda a=addr: snap.physical.read(a, rng.choice((1, 8, 4096)))
            )
    cpus = _step(outcome, "cpus", lambda: snap.cpus) or []
    for cpu in cpus:
        _step(outcome, f"cpu{cpu.index} summary", lambda c=cpu: snap.arch.summary_registers(c))
        space = _step(outcome, f"cpu{cpu.index} address space", lambda c=cpu: snap.virtual(c.index))
        if space is None:
            continue
        targets = (
            [cpu.pc] + [rng.getrandbits(64) for _ in range(2)] + [0xFFFFFFFF80000000 + rng.getrandbits(24)]
        )
        for addr in targets:
            _step(outcome, f"virtual {addr:#x}", lambda a=addr, s=space: s.read(a, 16))
    _step(outcome, "nics", snap.nics)


def _change_mac(snap: Snapshot, rng: random.Random) -> bytes | None:
    """`vmstate patch --mac` of the first NIC (its device state; the RAM scan is left out: slow)."""
    if not snap.nics():
        return None
    new = bytes([0x52, 0x54, 0x00]) + rng.randbytes(3)
    apply_mac_change(snap, plan_mac_change(snap, None, new))
    return new


def exercise(path: str, tag: str | None, out_dir: str, rng: random.Random, keep: bool = False) -> Outcome:
    outcome = Outcome()
    try:
        snap = Snapshot.open(path, snapshot=tag, cache=False)
    except VmstateError as e:
        outcome.refused = _refusal(e)
        return outcome
    outcome.opened = True
    out = os.path.join(out_dir, "saved" + os.path.splitext(path)[1])
    with snap:
        _step(outcome, "info", lambda: _cli_info(snap))
        _devices(snap, outcome, rng)
        _reads(snap, outcome, rng)
        mac = _step(outcome, "mac change", lambda: _change_mac(snap, rng))
        try:
            reg = REGISTER.get(snap.arch.name, "rax")
            value = rng.getrandbits(32)
            snap.set_register(0, reg, value)
            ram = [r for r in snap.layout.ranges if r.kind == "ram"] or snap.layout.ranges
            where = ram[0].start + rng.randrange(max(1, min(ram[0].size, 64 << 20) - 64)) if ram else 0
            snap.physical.write(where, EDIT)
            save(snap, out)
        except VmstateError as e:
            outcome.save_refused = _refusal(e)
            if os.path.exists(out):
                outcome.bad_save = f"the save failed ({e}) but left {out}"
            return outcome
    outcome.saved = True
    try:
        with Snapshot.open(out, snapshot=tag, cache=False) as again:
            if again.cpus[0][reg] != value or again.physical.read(where, len(EDIT)) != EDIT:
                outcome.bad_save = "the saved file opens but lacks the edits"
            elif mac is not None and mac not in [n.mac for n in again.nics()]:
                outcome.bad_save = f"the saved file lacks the new MAC {mac.hex(':')}"
    except VmstateError as e:
        outcome.bad_save = f"the saved file is refused by the reader: {_refusal(e)}"
    if keep:
        outcome.output = out
    else:
        os.unlink(out)
    return outcome
