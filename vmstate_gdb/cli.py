"""The `vmstate` command line: the same core as the gdb target, for scripts and pipelines."""

from __future__ import annotations

import argparse
import json
import string
import sys
from typing import TYPE_CHECKING

from .errors import AddressError, VmstateError

if TYPE_CHECKING:
    from .devices.fields import Node
    from .snapshot import Snapshot

# Only what parsing the command line needs is imported at start: `vmstate --help`, `snapshots` and
# `resume-cmd` must not pay for the stream reader, drgn or asyncio.


def _int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (use 0x... for hex)") from None


def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().rstrip("b") or "0"
    if t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return _int(t)


def _open(args) -> Snapshot:
    from .progress import Progress
    from .snapshot import open_snapshot

    progress = Progress(f"opening {args.snap}", enabled=None if not args.quiet else False)
    unpacking = Progress(f"decompressing {args.snap}", enabled=None if not args.quiet else False)
    try:
        snap = open_snapshot(
            args.snap,
            snapshot=args.snapshot,
            offset=args.offset,
            max_ram_below_4g=args.max_ram_below_4g,
            progress=progress,
            decompress_progress=unpacking,
        )
    finally:
        unpacking.done()
        progress.done()
    return snap


def _emit(args, data, text: str) -> None:
    if args.json:
        json.dump(data, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")


# -- info -------------------------------------------------------------------------------------


def cmd_info(args) -> int:
    from .export.disas import instruction_at

    with _open(args) as snap:
        data = snap.describe()
        cpus = []
        for cpu in snap.cpus:
            try:
                insn = instruction_at(snap, cpu.index)
                at_pc = insn.text if insn else "(no instruction decoded)"
            except VmstateError as e:
                at_pc = f"(unreadable: {e.message})"
            cpus.append(
                {
                    "index": cpu.index,
                    "mode": cpu.cpu_mode,
                    "paging": cpu.paging_mode,
                    "pc": cpu.pc,
                    **snap.arch.summary_registers(cpu),
                    "halted": cpu.halted,
                    "instruction": at_pc,
                }
            )
        nics = [n.describe() for n in snap.nics()]
        data.update(cpus=cpus, nics=nics, devices=[d.key for d in snap.devices.devices])
        lines = [
            f"{snap.path}: QEMU snapshot ({data['container']['kind']})",
            f"  machine type  {data['machine_type'] or '(none recorded)'}",
            f"  architecture  {data['architecture']}",
            f"  page size     {data['page_size']}",
            f"  features      {', '.join(data['capabilities']) or 'plain stream'}"
            f"{'; ' + ', '.join(data['commands']) if data['commands'] else ''}"
            f"{'; no VMDESCRIPTION' if not data['vmdesc'] else ''}",
        ]
        container = data["container"]
        if container["kind"] == "libvirt":
            lines.append(
                f"  libvirt image version {container['libvirt_version']}, {container['compression']}"
                + (
                    f"; stream decompressed to {container['decompressed_to']}"
                    if "decompressed_to" in container
                    else ""
                )
            )
        lines.append("  RAM blocks")
        for b in data["ram_blocks"]:
            lines.append(
                f"    {b['name']:<36} {_human(b['size']):>9}  {b['data']} data pages, {b['zero']} zero"
            )
        lines.append("  guest-physical layout")
        for r in data["layout"]:
            lines.append(
                f"    {r['start']:#014x}-{r['start'] + r['size'] - 1:#014x}  "
                f"{r['block']}+{r['block_offset']:#x} ({r['kind']})"
            )
        lines.append(f"  vCPUs         {len(cpus)}")
        for cpu, c in zip(snap.cpus, cpus, strict=True):
            regs = " ".join(f"{k}={v:#x}" for k, v in snap.arch.summary_registers(cpu).items())
            lines.append(
                f"    cpu{c['index']}: {c['mode']:<11} paging {c['paging']:<8} {regs}"
                f"{' halted' if c['halted'] else ''}  {c['instruction']}"
            )
        lines.append(f"  devices       {len(data['devices'])}")
        for n in nics:
            lines.append(f"    NIC {n['name']} ({n['model']}): {n['mac']}")
        for w in data["warnings"]:
            lines.append(f"  warning: {w}")
        _emit(args, data, "\n".join(lines))
    return 0


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


# -- devices ----------------------------------------------------------------------------------


def cmd_devices(args) -> int:
    from .devices.format import to_plain

    with _open(args) as snap:
        if args.explain:
            return _explain(args, snap)
        if not args.path:
            data = [
                {
                    "key": d.key,
                    "idstr": d.idstr,
                    "instance_id": d.section.instance_id,
                    "model": d.model,
                    "version": d.section.version_id,
                    "size": d.section.body_size,
                    "offset": snap.source.file_offset(d.section.body_offset),
                    "described": d.root.vmsd_name is not None,
                }
                for d in snap.devices.devices
            ]
            text = "\n".join(
                f"{d['key']:<40} {d['model']:<20} v{d['version']:<3} {d['size']:>8} bytes"
                f"{'' if d['described'] else '  (raw)'}"
                for d in data
            )
            _emit(args, data, text)
            return 0
        node = snap.devices.resolve(args.path)
        if args.json:
            _emit(args, {node.path: to_plain(node, snap.read_stream, depth=args.depth)}, "")
        else:
            lines: list[str] = []
            _render(snap, node, lines, 0, args.depth)
            _emit(args, None, "\n".join(lines))
    return 0


def _explain(args, snap: Snapshot) -> int:
    from .devices.explain import for_path, render

    found = for_path(snap.devices, args.path or "", snap.physical.read)
    _emit(args, [x.as_dict() for x in found], render(found) or "no device here has an explainer yet")
    return 0


def _render(snap: Snapshot, node: Node, lines: list[str], indent: int, depth: int) -> None:
    from .devices.fields import Array, Leaf
    from .devices.format import format_value

    pad = "  " * indent
    file_off = snap.source.file_offset(node.offset)
    if isinstance(node, Leaf):
        value = format_value(node, node.value(snap.read_stream))
        lines.append(f"{pad}{node.name} = {value}   [{node.type}, {node.size} bytes @ {file_off:#x}]")
        return
    if isinstance(node, Array):
        head = f"{pad}{node.name}: {node.count} x {node.element_size} bytes @ {file_off:#x}"
        if depth <= 0 or node.count > 64:
            lines.append(head + (" (name an element, e.g. [0])" if node.count > 64 else ""))
            return
        lines.append(head)
        for i in range(node.count):
            _render(snap, node.element(i), lines, indent + 1, depth - 1)
        return
    lines.append(
        f"{pad}{node.name}: {node.type}{' ' + node.vmsd_name if getattr(node, 'vmsd_name', None) else ''}"
        f" ({node.size} bytes @ {file_off:#x})"
    )
    if depth <= 0:
        return
    for c in node.children():
        _render(snap, c, lines, indent + 1, depth - 1)


# -- read / translate -------------------------------------------------------------------------


def cmd_read(args) -> int:
    if args.length <= 0:
        raise VmstateError(f"length {args.length} must be positive")
    with _open(args) as snap:
        space = snap.physical if args.phys else snap.virtual(args.cpu)
        data = space.read(args.address, args.length)
        if args.raw:
            sys.stdout.buffer.write(data)
            return 0
        _emit(
            args,
            {"address": args.address, "length": len(data), "physical": args.phys, "hex": data.hex()},
            _hexdump(args.address, data),
        )
    return 0


def _hexdump(address: int, data: bytes) -> str:
    printable = set(string.printable.encode()) - set(b"\t\n\r\x0b\x0c")
    lines = []
    for i in range(0, len(data), 16):
        chunk = data[i : i + 16]
        hexes = " ".join(f"{b:02x}" for b in chunk)
        text = "".join(chr(b) if b in printable else "." for b in chunk)
        lines.append(f"{address + i:016x}  {hexes:<47}  |{text}|")
    return "\n".join(lines)


def cmd_translate(args) -> int:
    with _open(args) as snap:
        cpu = snap.cpu(args.cpu)
        vm = snap.virtual(args.cpu)
        try:
            t = vm.translate(args.address)
        except AddressError as e:
            steps = getattr(e, "steps", [])
            for s in steps:
                print(f"  {s.level:<5} [{s.index:3d}] @ {s.entry_address:#x} = {s.entry:#018x}")
            sys.stdout.flush()
            raise
        data = {
            "virtual": t.virtual,
            "physical": t.physical,
            "page_size": t.page_size,
            "mode": cpu.paging_mode,
            **snap.arch.page_table_roots(cpu),
            "steps": [
                {"level": s.level, "index": s.index, "entry_address": s.entry_address, "entry": s.entry}
                for s in t.steps
            ],
        }
        roots = ", ".join(f"{k}={v:#x}" for k, v in snap.arch.page_table_roots(cpu).items())
        lines = [
            f"{t.virtual:#x} -> physical {t.physical:#x} ({_human(t.page_size)} page, {cpu.paging_mode}, "
            f"{roots})"
        ]
        for s in t.steps:
            lines.append(f"  {s.level:<5} [{s.index:3d}] @ {s.entry_address:#x} = {s.entry:#018x}")
        _emit(args, data, "\n".join(lines))
    return 0


def cmd_snapshots(args) -> int:
    from .containers import list_snapshots

    if args.connect is not None or args.domain:
        return _domain_snapshots(args)
    snaps = list_snapshots(args.snap)
    data = [s.as_dict() for s in snaps]
    _emit(args, data, "\n".join(_snapshot_table(snaps)))
    return 0


def _domain_snapshots(args) -> int:
    """--domain: the snapshots of a libvirt domain, disk by disk (SNAP is the domain's name)."""
    from .containers import list_snapshots
    from .containers.libvirt_domain import domain_snapshot_disks

    disks, known = domain_snapshot_disks(args.connect, args.snap)
    data = {"domain": args.snap, "libvirt_snapshots": known, "disks": []}
    lines = [f"domain {args.snap}: libvirt snapshots {', '.join(known) or '(none)'}"]
    if not disks:
        lines.append("  no qcow2 file disk: internal snapshots need one")
    for disk in disks:
        snaps = list_snapshots(disk.path)
        data["disks"].append(
            {"target": disk.target, "path": disk.path, "snapshots": [s.as_dict() for s in snaps]}
        )
        lines.append(f"{disk.target}: {disk.path}")
        lines += ["  " + line for line in _snapshot_table(snaps)]
    _emit(args, data, "\n".join(lines))
    return 0


def _snapshot_table(snaps) -> list[str]:
    lines = [f"{'ID':<6}{'TAG':<24}{'VM SIZE':>12}  {'DATE':<19}  VM CLOCK"]
    for s in snaps:
        clock = s.vm_clock_nsec // 10**6
        hms = f"{clock // 3600000:02d}:{clock // 60000 % 60:02d}:{clock // 1000 % 60:02d}.{clock % 1000:03d}"
        lines.append(
            f"{s.id:<6}{s.name:<24}{_human(s.vm_state_size) if s.vm_state_size else '0':>12}  "
            f"{s.date.strftime('%Y-%m-%d %H:%M:%S')}  {hms}"
        )
    return lines


def cmd_nics(args) -> int:
    with _open(args) as snap:
        nics = snap.nics()
        _emit(
            args,
            [n.describe() for n in nics],
            "\n".join(f"{n.name} ({n.model}): {n.describe()['mac']}" for n in nics) or "no NICs",
        )
    return 0


def add_snapshot_arguments(sp: argparse.ArgumentParser) -> None:
    """SNAP and the options that say how to open it: the same for every command that reads one."""
    sp.add_argument("snap", metavar="SNAP", help="snapshot file: migration stream, libvirt save, or qcow2")
    sp.add_argument("-s", "--snapshot", help="qcow2: snapshot name or id (default: the newest)")
    sp.add_argument("--offset", type=_int, default=None, help="the stream starts at this byte of the file")
    sp.add_argument(
        "--max-ram-below-4g",
        type=_size,
        default=None,
        help="the machine's max-ram-below-4g option, if it was set",
    )
    sp.add_argument("-q", "--quiet", action="store_true", help="no progress output")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; with ``command`` (the first word of the command line), only what that
    command needs to parse."""
    p = argparse.ArgumentParser(
        prog="vmstate",
        description="Inspect and edit QEMU/KVM snapshots "
        "(migration streams, libvirt save files, qcow2 savevm snapshots).",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def snap_cmd(name: str, helptext: str, func):
        sp = sub.add_parser(name, help=helptext, description=helptext)
        add_snapshot_arguments(sp)
        sp.add_argument("--json", action="store_true", help="machine-readable output")
        sp.set_defaults(func=func)
        return sp

    snap_cmd("info", "machine, RAM, vCPUs, devices and NICs of a snapshot", cmd_info)
    sp = snap_cmd("devices", "the device tree, or one device, subtree or field", cmd_devices)
    sp.add_argument("path", nargs="?", help="e.g. e1000, 0000:00:03.0/e1000/mac_reg[0], cpu[1]/env.eip")
    sp.add_argument("--depth", type=int, default=8, help="levels to show (default 8)")
    sp.add_argument(
        "--explain",
        action="store_true",
        help="registers by their hardware names, flags decoded (PCI, interrupts, timers, NICs, virtio)",
    )
    sp = snap_cmd("read", "hexdump of guest memory", cmd_read)
    sp.add_argument("address", type=_int)
    sp.add_argument("length", type=_int, nargs="?", default=64)
    sp.add_argument("--phys", action="store_true", help="ADDRESS is guest-physical")
    sp.add_argument("--cpu", type=int, default=0, help="translate through this vCPU's page tables")
    sp.add_argument("--raw", action="store_true", help="write the bytes to stdout")
    sp = snap_cmd("translate", "walk the page tables for a virtual address", cmd_translate)
    sp.add_argument("address", type=_int)
    sp.add_argument("--cpu", type=int, default=0, help="walk this vCPU's page tables (default 0)")
    snap_cmd("nics", "the NICs and their MAC addresses", cmd_nics)
    sp = sub.add_parser(
        "snapshots",
        help="list the internal snapshots of a qcow2 image",
        description="The snapshot table of a qcow2 image, as `qemu-img snapshot -l` shows it; "
        "disk-only snapshots have VM SIZE 0 and cannot be opened.",
    )
    sp.add_argument("snap", metavar="IMAGE", help="a qcow2 image (with --domain: a libvirt domain's name)")
    sp.add_argument(
        "--domain",
        action="store_true",
        help="IMAGE names a libvirt domain: list the snapshots in each of its qcow2 disks",
    )
    sp.add_argument("-c", "--connect", metavar="URI", help="libvirt URI for --domain (implies it)")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_snapshots)
    if command not in sub.choices:  # a built-in command needs no other module
        _register_optional(sub, command)
    return p


#: commands that live in their own modules (writer, exports, server...), which register them
COMMAND_MODULES = {
    "vmstate_gdb.writer.cli": ("patch", "resume-cmd"),
    "vmstate_gdb.rsp.cli": ("serve",),
    "vmstate_gdb.export.cli": ("export-devices", "import-devices", "diff", "core", "inject-core", "disas"),
    "vmstate_gdb.capture.cli": ("capture", "watch"),
    "vmstate_gdb.os.linux.cli": ("linux", "drgn", "app-core"),
    "vmstate_gdb.devices.learn": ("learn",),
}


def _register_optional(sub, command: str | None) -> None:
    """Register the module of ``command`` only, when one owns it (importing them all costs every
    call tens of milliseconds); all of them for --help, an unknown command or None."""
    import importlib

    owners = [m for m, commands in COMMAND_MODULES.items() if command in commands]
    for module in owners or COMMAND_MODULES:
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        mod.register(sub)


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Options may come anywhere, also between the positionals (`devices SNAP --json PATH`):
    each subcommand is parsed with argparse's intermixed parsing."""
    argv = list(sys.argv[1:] if argv is None else argv)
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if argv and argv[0] in subparsers.choices:
        sub = subparsers.choices[argv[0]]
        # a command that hands the rest of the line to someone else (a script) parses it in order
        parse = sub.parse_args if getattr(sub, "passes_rest_on", False) else sub.parse_intermixed_args
        args = parse(argv[1:])
        args.command = argv[0]
        return args
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv[0] if argv else None)
    args = parse_args(parser, argv)
    try:
        return args.func(args)
    except VmstateError as e:
        # every line names the file: errors about an address or a path inside the snapshot
        # do not know it, the command does
        where = "" if e.path is not None or not getattr(args, "snap", None) else f"{args.snap}: "
        print(f"vmstate: {where}{e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("vmstate: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
