#!/usr/bin/env python3
"""Rebuild the shipped device-description library (vmstate_gdb/devices/descriptions/).

For each QEMU the suite runs (7.2 and 10, x86_64 and aarch64): ``vmstate learn`` over a matrix of
machines and common devices, started paused, and of disks after the firmware identified them
(an identified IDE/AHCI drive saves its IDENTIFY data, a field a fresh one lacks); then the
layouts of the given snapshots that carry a VMDESCRIPTION (a running guest's stream has the
runtime subsections a fresh VM does not send). What is shipped is kept and added to (``--fresh``:
start from nothing; then name the running-guest snapshots again).

    .venv/bin/python tools/harvest_descriptions.py [--fresh] [SNAPSHOT ...]

The suite's own proof (tests/test_devices_library.py) decodes Linux-guest twins; keep those streams
out of the harvest so that proof stays independent of it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from vmstate_gdb.devices import learn, library
from vmstate_gdb.harness.config import QemuUnavailable, find_qemu

OUT = Path(__file__).resolve().parent.parent / "vmstate_gdb" / "devices" / "descriptions"

_BLK = ["-blockdev", "driver=null-co,node-name=d0", "-blockdev", "driver=null-co,node-name=d1"]
X86_DEVICES = [
    *_BLK,
    "-device", "e1000", "-device", "e1000e", "-device", "rtl8139", "-device", "virtio-net-pci",
    "-device", "virtio-blk-pci,drive=d0", "-device", "virtio-scsi-pci", "-device", "virtio-rng-pci",
    "-device", "virtio-balloon-pci", "-device", "virtio-serial-pci", "-device", "qemu-xhci",
    "-device", "usb-tablet", "-device", "usb-kbd", "-device", "vmcoreinfo",
]  # fmt: skip
X86_RUNS = [
    ["-machine", "pc", "-m", "128", *X86_DEVICES, "-device", "ich9-ahci", "-device", "ide-hd,drive=d1"],
    ["-machine", "q35", "-m", "128", *X86_DEVICES, "-device", "ide-hd,drive=d1,bus=ide.0"],
    ["-machine", "pc", "-m", "128", "-smp", "2", "-nodefaults"],
    ["-machine", "q35", "-m", "128", "-smp", "2", "-nodefaults"],
]
# run until SeaBIOS has identified the disks: one IDE disk on the first channel (pc), one on the
# first AHCI port (q35), as a guest with one disk has them
X86_BOOTED_RUNS = [
    ["-machine", m, "-m", "128", "-nodefaults", "-blockdev", "driver=null-co,node-name=d1", "-device",
     "ide-hd,drive=d1,bus=ide.0"]
    for m in ("pc", "q35")
]  # fmt: skip
FIRMWARE_S = 3.0
ARM_DEVICES = [
    *_BLK,
    "-device", "virtio-net-device", "-device", "virtio-blk-device,drive=d0", "-device", "virtio-net-pci",
    "-device", "virtio-blk-pci,drive=d1", "-device", "virtio-rng-pci",
]  # fmt: skip
ARM_RUNS = [["-machine", "virt", "-cpu", "cortex-a57", "-m", "128", "-smp", "2", *ARM_DEVICES]]


def _stream_source(path: str, snap) -> str:
    """'QEMU 7.2.22 pc (running guest)' for the suite's snapshots, which carry a .meta.json."""
    meta = Path(path + ".meta.json")
    if meta.exists():
        import json

        data = json.loads(meta.read_text())
        machine = snap.index.machine_type or "?"
        return f"QEMU {data['qemu_version']} {machine} (running guest)"
    return f"stream {Path(path).name}"


def main(argv: list[str]) -> int:
    import gzip
    import json

    lib = library.Library()
    fresh = "--fresh" in argv
    argv = [a for a in argv if a != "--fresh"]
    target = OUT / "harvest.json.gz"
    if not fresh and target.exists():
        lib.merge_json(json.loads(gzip.decompress(target.read_bytes())))
    for generation in ("7.2", "10"):
        x86 = [(r, 0.0) for r in X86_RUNS] + [(r, FIRMWARE_S) for r in X86_BOOTED_RUNS]
        for arch, runs in (("x86_64", x86), ("aarch64", [(r, 0.0) for r in ARM_RUNS])):
            try:
                binary = find_qemu(generation, arch).system
            except QemuUnavailable as e:
                print(f"skip: {e}", file=sys.stderr)
                continue
            for args, run_s in runs:
                vmdesc, source = learn.vmdesc_from_qemu(binary, args, run_s)
                if run_s and "identify_data" not in json.dumps(vmdesc):
                    print(f"{source}: the firmware identified no disk in {run_s} s", file=sys.stderr)
                    return 1
                new = lib.add_vmdesc(vmdesc, source)
                print(f"{source}: {new} new layouts", file=sys.stderr)
    for path in argv:
        from vmstate_gdb.snapshot import Snapshot

        snap = Snapshot.open(path, cache=False)
        if snap.index.vmdesc is None:
            print(f"skip {path}: no VMDESCRIPTION", file=sys.stderr)
            continue
        new = lib.add_vmdesc(snap.index.vmdesc, _stream_source(path, snap))
        print(f"{path}: {new} new layouts", file=sys.stderr)
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*.json.gz"):
        old.unlink()
    target.write_bytes(gzip.compress(json.dumps(lib.to_json(), separators=(",", ":")).encode(), mtime=0))
    n = sum(len(v) for v in lib.sections.values()) + sum(len(v) for v in lib.subsections.values())
    print(f"{target}: {n} layouts, {target.stat().st_size} bytes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
