"""`vmstate` subcommands for files: export-devices, import-devices, diff, core, inject-core, disas."""

from __future__ import annotations

import sys
import time

from ..errors import EditError
from ..progress import Progress


def _save(snap, args) -> None:
    """Write the edited snapshot the way `vmstate patch` does (same writer, same .meta.json)."""
    from ..writer import save
    from ..writer.meta import describe_resume, write_output_meta

    macs = getattr(args, "_macs", {})
    progress = Progress(f"saving {args.out}", enabled=None if not args.quiet else False)
    result = save(snap, args.out, fmt=args.format, progress=progress)
    progress.done()
    write_output_meta(snap, result, macs)
    print(result.summary())
    if not args.quiet:
        print(describe_resume(result.path, result.format, result.snapshot_name))


def cmd_export_devices(args) -> int:
    from ..cli import _open
    from .devices_xml import export_devices

    with _open(args) as snap:
        tree = export_devices(snap, args.out, as_json=args.json)
    fields = sum(_count_leaves(d) for d in tree["devices"])
    print(
        f"wrote {args.out}: {len(tree['devices'])} devices, {fields} values "
        f"({'JSON' if args.json else 'XML'})"
    )
    return 0


def _count_leaves(entry: dict) -> int:
    if "fields" in entry:
        return sum(_count_leaves(e) for e in entry["fields"])
    if "items" in entry:
        return sum(_count_leaves(e) for e in entry["items"])
    return 1


def cmd_import_devices(args) -> int:
    from ..cli import _open
    from .devices_xml import import_devices

    with _open(args) as snap:
        result = import_devices(snap, args.file)
        for c in result.fields:
            print(f"field {c.describe()}")
        for line in result.mac_lines:
            print(line)
        for line in result.register_lines:
            print(f"register {line}")
        if not result.changed:
            print(f"{args.file}: no field differs from {args.snap}")
            if not args.force:
                print("nothing written (use --force to write an unchanged copy)")
                return 0
        args._macs = result.macs
        _save(snap, args)
    return 0


def cmd_diff(args) -> int:
    from ..cli import _emit
    from ..snapshot import open_snapshot
    from .diff import diff_snapshots

    with (
        open_snapshot(args.a, snapshot=args.snapshot) as a,
        open_snapshot(args.b, snapshot=args.snapshot_b or args.snapshot) as b,
    ):
        d = diff_snapshots(a, b, memory=not args.no_memory)
        _emit(args, d.to_plain(), d.text())
    return 0 if d.same or not args.exit_code else 1


def cmd_core(args) -> int:
    from ..cli import _open
    from .elfcore import write_core

    with _open(args) as snap:
        progress = Progress(f"writing {args.out}", enabled=None if not args.quiet else False)
        t0 = time.monotonic()
        result = write_core(snap, args.out, virtual=args.virtual, cpu_index=args.cpu, progress=progress)
        progress.done()
        elapsed = time.monotonic() - t0
        total = sum(r.size for r, _ in result.layout.range_offsets)
        print(result.summary())
        if not args.virtual and not args.quiet:
            print(
                "note: segments are at guest-physical addresses; for gdb with a kernel's symbols, "
                "write the core with --virtual"
            )
        if not args.quiet:
            print(
                f"{total / 2**20:.0f} MiB of guest RAM in {elapsed:.2f} s "
                f"({total / 2**20 / max(elapsed, 1e-6):.0f} MiB/s)",
                file=sys.stderr,
            )
    return 0


def cmd_inject_core(args) -> int:
    from ..cli import _open
    from .inject import inject_core

    with _open(args) as snap:
        result = inject_core(snap, args.core, registers=not args.no_registers)
        for line in result.describe():
            print(line)
        if not result.pages and not result.registers:
            print(f"{args.core}: its memory and registers match {args.snap}")
            if not args.force:
                print("nothing written (use --force to write an unchanged copy)")
                return 0
        _save(snap, args)
    return 0


def cmd_disas(args) -> int:
    from ..cli import _emit, _open
    from ..symbols import load_symbols, resolve_address
    from .disas import listing

    symbols = load_symbols(args.symbols) if args.symbols else None
    address = resolve_address(args.address, symbols) if args.address is not None else None
    if args.count <= 0:
        raise EditError("-n COUNT must be at least 1")
    with _open(args) as snap:
        result = listing(snap, address, args.cpu, args.count, physical=args.phys)
        by_address = {v: k for k, v in symbols.items()} if symbols else None
        head = f"vCPU {args.cpu}, {result.bits}-bit code, {result.space} addresses"
        _emit(args, result.to_plain(), "\n".join([head] + result.lines(by_address)))
    return 0


def register(sub) -> None:
    from ..cli import add_snapshot_arguments

    def snap_cmd(name: str, helptext: str, func, out: bool = False):
        sp = sub.add_parser(name, help=helptext, description=helptext)
        add_snapshot_arguments(sp)
        sp.set_defaults(func=func, json=False)
        return sp

    def output_options(sp) -> None:
        sp.add_argument("out", metavar="OUT", help="the new snapshot")
        sp.add_argument("--format", choices=("stream", "qcow2"), help="output kind (default: as the input)")
        sp.add_argument("--force", action="store_true", help="write OUT even when nothing changed")

    sp = snap_cmd(
        "export-devices",
        "write the device state as an XML (or JSON) file to read and edit",
        cmd_export_devices,
    )
    sp.add_argument("out", metavar="OUT", help="devices.xml (or .json with --json)")
    sp.add_argument("--json", action="store_true", help="JSON instead of XML")

    sp = snap_cmd(
        "import-devices",
        "apply the changes in an edited export-devices file; write a new snapshot",
        cmd_import_devices,
    )
    sp.add_argument("file", metavar="FILE", help="the edited XML or JSON file")
    output_options(sp)

    sp = sub.add_parser(
        "diff",
        help="device fields, registers and RAM pages that differ between two snapshots",
        description="Compare two snapshots of the same VM (e.g. before and after).",
    )
    sp.add_argument("a", metavar="A", help="snapshot file (stream, libvirt save or qcow2)")
    sp.add_argument("b", metavar="B", help="snapshot file of the same VM")
    sp.add_argument("-s", "--snapshot", help="qcow2: snapshot of A (and of B unless --snapshot-b)")
    sp.add_argument("--snapshot-b", help="qcow2: snapshot of B")
    sp.add_argument("--no-memory", action="store_true", help="skip the RAM comparison")
    sp.add_argument("--exit-code", action="store_true", help="exit 1 when the snapshots differ")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=cmd_diff)

    sp = snap_cmd("core", "write an ELF core of guest RAM and vCPUs, like QEMU's dump-guest-memory", cmd_core)
    sp.add_argument("out", metavar="OUT", help="guest.core")
    sp.add_argument(
        "--virtual",
        action="store_true",
        help="segments at the kernel's virtual addresses (through the page tables), for gdb vmlinux",
    )
    sp.add_argument("--cpu", type=int, default=0, help="--virtual: the vCPU whose page tables to use")

    sp = snap_cmd(
        "inject-core",
        "write the memory (and registers) that differ in an ELF core into a new snapshot",
        cmd_inject_core,
    )
    sp.add_argument("core", metavar="CORE", help="the edited core (from `vmstate core` or dump-guest-memory)")
    output_options(sp)
    sp.add_argument(
        "--no-registers", action="store_true", help="ignore register changes in NT_PRSTATUS notes"
    )

    sp = snap_cmd(
        "disas", "disassemble guest code in the vCPU's mode, by default around its pc (rip)", cmd_disas
    )
    sp.add_argument(
        "address", metavar="ADDR", nargs="?", help="address or symbol[+offset] (default: the vCPU's pc)"
    )
    sp.add_argument("--cpu", type=int, default=0, help="the vCPU whose mode and page tables to use")
    sp.add_argument("-n", "--count", type=int, default=10, help="instructions from ADDR (default 10)")
    sp.add_argument("--phys", action="store_true", help="ADDR is guest-physical")
    sp.add_argument("--symbols", metavar="FILE", help="ELF or System.map for symbol names")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
