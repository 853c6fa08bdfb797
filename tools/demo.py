"""The main job, end to end, on the bundled small guest: boot it, snapshot it, open the snapshot in
gdb, change the VM's MAC in the NIC and in guest memory, save, resume in QEMU, show the new TICKs."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from vmstate_gdb.harness import SCENARIOS, Nic, build_snapshot, restore

ROOT = Path(__file__).resolve().parent.parent
GUEST_ELF = ROOT / "tests/guest/build/guest.elf"


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mac", default="52:54:00:c0:ff:ee", help="the new MAC (default %(default)s)")
    ap.add_argument("--scenario", default="small-pc-e1000", choices=sorted(SCENARIOS))
    ap.add_argument("--dir", help="work directory (default: a new temporary one)")
    args = ap.parse_args()
    work = Path(args.dir or tempfile.mkdtemp(prefix="vmstate-demo-"))
    work.mkdir(parents=True, exist_ok=True)

    say(f"booting the small test guest under QEMU (TCG) and snapshotting it into {work}")
    meta = build_snapshot(SCENARIOS[args.scenario], work, reuse=False)
    old_mac = meta.config.nics[0].mac
    print(f"last line before the stop: {meta.last_tick.line}")
    print(f"snapshot: {meta.path} ({meta.method}, QEMU {meta.qemu_version})")

    out = work / "edited.vmstate"
    gdb_script = [
        f"file {GUEST_ELF}",
        f"vmstate-open {meta.path}",
        "info threads",
        "p tick",
        "p/x guest_mac",
        "vmstate-mac",
        f"vmstate-mac {args.mac} --memory",
        "p/x guest_mac",
        f"vmstate-save {out}",
    ]
    cmd = ["gdb", "-nx", "-q", "-batch", "-x", str(ROOT / "vmstate.gdb")]
    for line in gdb_script:
        cmd += ["-ex", line]
    say("opening it in gdb: " + shlex.join(cmd))
    run = subprocess.run(cmd, text=True, capture_output=True, timeout=300)
    sys.stdout.write(run.stdout)
    if run.returncode != 0 or not out.exists():
        sys.stderr.write(run.stderr)
        print("gdb did not save the snapshot", file=sys.stderr)
        return 1

    say("resuming the edited snapshot in QEMU")
    nics = tuple(Nic(n.model, args.mac if n.mac == old_mac else n.mac) for n in meta.config.nics)
    edited = dataclasses.replace(meta, path=str(out), config=dataclasses.replace(meta.config, nics=nics))
    with restore(edited, work, name="resumed") as vm:
        ticks = vm.wait_for_ticks(3, timeout=30)
    for t in ticks:
        print(t.line)
    ok = ticks[0].n > meta.last_tick.n and all(t.sw_mac == args.mac == t.hw_mac for t in ticks)
    verdict = "OK" if ok else "FAILED"
    say(f"the VM went on from TICK {meta.last_tick.n}, MAC {args.mac} in the NIC and in memory: {verdict}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
