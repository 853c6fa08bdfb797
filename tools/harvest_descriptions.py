#!/usr/bin/env python3
"""Rebuild the shipped device-description library (vmstate_gdb/devices/descriptions/).

For each QEMU the suite runs (7.2 and 10, x86_64 and aarch64): ``vmstate learn`` over a matrix of
machines and common devices, started paused; then the layouts of the given snapshots that carry a
VMDESCRIPTION (a running guest's stream has the runtime subsections a fresh VM does not send).

    .venv/bin/python tools/harvest_descriptions.py [SNAPSHOT ...]

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
    lib = library.Library()
    for generation in ("7.2", "10"):
        for target, runs in (("x86_64", X86_RUNS), ("aarch64", ARM_RUNS)):
            try:
                binary = find_qemu(generation, target).system
            except QemuUnavailable as e:
                print(f"skip: {e}", file=sys.stderr)
                continue
            for args in runs:
                vmdesc, source = learn.vmdesc_from_qemu(binary, args)
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
    target = OUT / "harvest.json.gz"
    import gzip
    import json

    target.write_bytes(gzip.compress(json.dumps(lib.to_json(), separators=(",", ":")).encode(), mtime=0))
    n = sum(len(v) for v in lib.sections.values()) + sum(len(v) for v in lib.subsections.values())
    print(f"{target}: {n} layouts, {target.stat().st_size} bytes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
