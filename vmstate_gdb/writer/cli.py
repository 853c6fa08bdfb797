"""`vmstate patch` and `vmstate resume-cmd`: edits from the command line, without gdb."""

from __future__ import annotations

import dataclasses
import json
import os
import sys

from ..errors import EditError

# the writer, device tree and MAC logic load with the command that uses them, not with `vmstate --help`


def _parse_value(text: str) -> int | bytes:
    from ..devices.nics import parse_mac

    t = text.strip()
    if t.count(":") == 5:
        return parse_mac(t)
    try:
        return int(t, 0)
    except ValueError:
        pass
    if t.startswith("hex:"):
        t = t[4:]
    try:
        return bytes.fromhex(t)
    except ValueError:
        raise EditError(f"{text!r} is neither a number, a MAC, nor hex bytes") from None


def _split(text: str, sep: str, what: str) -> tuple[str, str]:
    if sep not in text:
        raise EditError(f"{what} {text!r} needs the form NAME{sep}VALUE")
    a, b = text.rsplit(sep, 1) if what == "--set" else text.split(sep, 1)
    return a.strip(), b.strip()


def apply_cli_edits(snap, args, out=sys.stdout) -> dict[str, str]:
    """Apply --set/--reg/--write/--mac to ``snap``; returns {old mac: new mac} for the resume line."""
    from ..devices.explain.edit import set_by_name
    from ..devices.nics import format_mac, parse_mac
    from ..mac import apply_mac_change, plan_mac_change

    for item in args.set or ():
        path, value = _split(item, "=", "--set")
        lines = set_by_name(snap, path, value)  # DEVICE.REGISTER[.PART]: by the register's meaning
        if lines is not None:
            for line in lines:
                print(f"register {line}", file=out)
            continue
        where = snap.set_field(path, _parse_value(value))
        print(f"field {where} = {value}", file=out)
    for item in args.reg or ():
        name, value = _split(item, "=", "--reg")
        cpu = args.cpu
        if ":" in name:
            cpu_text, name = name.split(":", 1)
            cpu = int(cpu_text, 0)
        try:
            number = int(value, 0)
        except ValueError:
            raise EditError(f"--reg {item!r}: {value!r} is not a number") from None
        written = snap.set_register(cpu, name.lower(), number)
        print(f"cpu{cpu} {name} = {number:#x}" + (" (and hflags)" if "hflags" in written else ""), file=out)
    for item in args.write or ():
        addr_text, hexdata = _split(item, "=", "--write")
        try:
            address = int(addr_text, 0)
            data = bytes.fromhex(hexdata)
        except ValueError:
            raise EditError(f"--write {item!r} needs ADDRESS=HEXBYTES") from None
        space = snap.physical if args.phys else snap.virtual(args.cpu)
        space.write(address, data)
        print(f"{'physical' if args.phys else 'virtual'} {address:#x}: {len(data)} bytes", file=out)
    macs: dict[str, str] = {}
    for item in args.mac or ():
        nic_name, new_text = item.rsplit("=", 1) if "=" in item else (None, item)
        change = plan_mac_change(snap, nic_name, parse_mac(new_text), memory=args.memory)
        for line in change.describe():
            print(line, file=out)
        apply_mac_change(snap, change)
        macs[format_mac(change.old)] = format_mac(change.new)
    return macs


def cmd_patch(args) -> int:
    from ..cli import _open
    from ..progress import Progress
    from . import save
    from .meta import describe_resume, write_output_meta

    with _open(args) as snap:
        macs = apply_cli_edits(snap, args, out=open(os.devnull, "w") if args.quiet else sys.stdout)
        progress = Progress(f"saving {args.out}", enabled=None if not args.quiet else False)
        result = save(snap, args.out, fmt=args.format, progress=progress, snapshot_name=args.snapshot_name)
        progress.done()
        write_output_meta(snap, result, macs)
        print(result.summary())
        if not args.quiet:
            print(describe_resume(result.path, result.format, result.snapshot_name))
    return 0


def cmd_resume(args) -> int:
    from ..containers import _sniff, open_source
    from .meta import resume_plan

    f, sniffed = _sniff(args.snap)
    f.close()
    if sniffed == "libvirt":  # only its header is read: a compressed image is not decompressed
        kind, tag = "libvirt", None
    else:
        source = open_source(args.snap, args.snapshot)
        try:
            kind = "qcow2" if source.kind == "qcow2" else "stream"
            tag = getattr(getattr(source, "snapshot", None), "name", None)
        finally:
            source.close()
    plan = resume_plan(args.snap, kind, tag)
    if args.json:
        print(json.dumps(dataclasses.asdict(plan), indent=2))
    else:
        print(plan.text(kind, args.snap))
    return 0


def register(sub) -> None:
    from ..cli import add_snapshot_arguments

    sp = sub.add_parser(
        "patch",
        help="apply edits and write a new snapshot",
        description=(
            "Apply edits to SNAP and write OUT, which QEMU resumes. Repeat options to make several edits."
        ),
    )
    add_snapshot_arguments(sp)
    sp.add_argument("out", metavar="OUT", help="the new snapshot (same kind as SNAP unless --format)")
    sp.add_argument(
        "--set",
        action="append",
        metavar="PATH=VALUE",
        help="a device field by path (vmstate devices), or a register by name (devices --explain): "
        "e1000.RCTL.EN=0, apic.LVTT.masked=1, mc146818rtc.time='2031-01-02 03:04:05'",
    )
    sp.add_argument("--mac", action="append", metavar="[NIC=]MAC", help="change a NIC's MAC in device state")
    sp.add_argument("--memory", action="store_true", help="with --mac: also every copy of the old MAC in RAM")
    sp.add_argument("--write", action="append", metavar="ADDR=HEX", help="write bytes to guest memory")
    sp.add_argument("--phys", action="store_true", help="--write addresses are guest-physical")
    sp.add_argument("--cpu", type=int, default=0, help="vCPU for --write translation and --reg")
    sp.add_argument(
        "--reg",
        action="append",
        metavar="[CPU:]NAME=VALUE",
        help="a vCPU register (rax, rip, cr3...; x0, pc, sp, ttbr1_el1... on aarch64)",
    )
    sp.add_argument(
        "--format",
        choices=("stream", "qcow2", "libvirt"),
        help="output kind (default: as the input; a libvirt image is written uncompressed)",
    )
    sp.add_argument("--snapshot-name", help="qcow2: rename the edited snapshot (same length)")
    sp.set_defaults(func=cmd_patch, json=False)
    sp = sub.add_parser(
        "resume-cmd",
        help="print the QEMU command that resumes a snapshot",
        description="The QEMU command line that resumes SNAP (from its .meta.json, with any new mac=), "
        "and what to type in its monitor. --json gives the argv as a list, for scripts.",
    )
    sp.add_argument("snap", metavar="SNAP")
    sp.add_argument("-s", "--snapshot", help="qcow2: snapshot name or id (default: the newest)")
    sp.add_argument("--json", action="store_true", help="machine-readable: argv, monitor commands, notes")
    sp.set_defaults(func=cmd_resume)
