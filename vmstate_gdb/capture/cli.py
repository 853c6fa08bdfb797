"""``vmstate capture`` and ``vmstate watch``: snapshots of running VMs, now or on a guest trigger."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from vmstate_gdb.errors import QemuError

if TYPE_CHECKING:  # asyncio and QMP load with the command, not with `vmstate --help`
    from vmstate_gdb.capture.libvirt import Target
    from vmstate_gdb.capture.monitor import Monitor
    from vmstate_gdb.capture.session import CaptureReport


def _split(values: list[str] | None) -> list[str]:
    return [v for value in values or () for v in value.split(",") if v]


class _InOrder(argparse.Action):
    """--libvirt, --domain and --all-running keep their order: a --domain belongs to the
    --libvirt URI before it."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        spec = getattr(namespace, "libvirt_spec", None) or []
        spec.append((self.dest, values))
        namespace.libvirt_spec = spec


def libvirt_targets(spec: list[tuple[str, str | None]], connect: str | None) -> list[Target]:
    """Connections and domains from ``--libvirt URI --domain A,B --libvirt URI2 --all-running``.

    A --libvirt value with ``://`` is a URI (libvirt domain names cannot hold a ``/``) and opens a
    group; a --domain or --all-running belongs to the group before it, or to --connect's URI when
    none is open; ``--libvirt A,B`` (no ``://``) names domains at --connect's URI."""
    from vmstate_gdb.capture.libvirt import Target

    default = Target(connect)
    targets: dict[str | None, Target] = {}
    current: Target | None = None
    for kind, value in spec:
        if kind == "libvirt" and value and "://" in value:
            current = targets.setdefault(value, Target(value))
            continue
        target = current if current is not None and kind != "libvirt" else default
        targets.setdefault(target.uri, target)
        if kind == "all_running":
            target.all_running = True
        else:
            target.domains += [d for d in _split([value or ""]) if d not in target.domains]
    for target in targets.values():
        if not (target.domains or target.all_running):
            raise QemuError(
                f"--libvirt {target.where}: name its domains with --domain NAME[,...] or --all-running"
            )
    return list(targets.values())


@contextlib.asynccontextmanager
async def _monitors(args: argparse.Namespace) -> AsyncIterator[list[Monitor]]:
    spec = getattr(args, "libvirt_spec", None) or []
    addresses = _split(args.qmp)
    if not spec and not addresses:
        raise QemuError("name at least one VM: --qmp SOCKET[,SOCKET...] or --libvirt URI --domain NAME[,...]")
    async with contextlib.AsyncExitStack() as stack:
        monitors: list[Monitor] = []
        if addresses:
            from vmstate_gdb.capture.monitor import open_all

            monitors += await stack.enter_async_context(open_all(addresses))
        if spec:
            from vmstate_gdb.capture.libvirt import open_libvirt_all

            targets = libvirt_targets(spec, args.connect)
            monitors += await stack.enter_async_context(open_libvirt_all(targets))
        yield monitors


def _print_report(args: argparse.Namespace, report: CaptureReport) -> int:
    if args.json:
        json.dump(report.to_json(), sys.stdout, indent=1, default=str)
        sys.stdout.write("\n")
    else:
        print(report.text())
    for r in report.results:
        if not r.ok:
            where = f"{r.host}: " if r.host else ""
            print(f"vmstate: {where}{r.name}: {r.error}", file=sys.stderr)
    return 0 if report.ok else 1


def cmd_capture(args: argparse.Namespace) -> int:
    import asyncio

    from vmstate_gdb.capture.session import ProgressBoard, capture_vms

    async def run() -> CaptureReport:
        async with _monitors(args) as monitors:
            board = ProgressBoard(enabled=True if args.progress else None)
            try:
                return await capture_vms(
                    monitors, args.output, resume=not args.keep_stopped, progress=board, timeout=args.timeout
                )
            finally:
                board.done()

    return _print_report(args, asyncio.run(run()))


def cmd_watch(args: argparse.Namespace) -> int:
    import asyncio

    from vmstate_gdb.capture.session import ProgressBoard
    from vmstate_gdb.capture.triggers import parse_triggers, watch

    triggers = parse_triggers(args.on)

    async def run() -> CaptureReport:
        async with _monitors(args) as monitors:
            board = ProgressBoard(enabled=True if args.progress else None)
            try:
                return await watch(
                    monitors,
                    triggers,
                    serial_paths=_split(args.serial),
                    out_dir=args.output,
                    resume=not args.keep_stopped,
                    progress=board,
                    wait=args.wait,
                    timeout=args.timeout,
                    announce=_announce,
                )
            finally:
                board.done()

    return _print_report(args, asyncio.run(run()))


def _announce(text: str) -> None:
    """Watch progress goes to stderr: stdout carries only the report (text or --json)."""
    print(f"vmstate watch: {text}", file=sys.stderr, flush=True)


def _add_common(sp: argparse.ArgumentParser) -> None:
    who = sp.add_argument_group("which VMs")
    who.add_argument(
        "--qmp",
        action="append",
        metavar="SOCKET[,SOCKET...]",
        help="QMP server of each VM: a unix socket path or host:port (repeatable)",
    )
    who.add_argument(
        "--libvirt",
        action=_InOrder,
        metavar="URI|DOMAIN[,...]",
        help="a libvirt connection (qemu+ssh://host/system), its domains named by the --domain or "
        "--all-running after it (repeatable: several hosts at one instant); or domains at --connect's URI",
    )
    who.add_argument(
        "--domain",
        action=_InOrder,
        metavar="NAME[,NAME...]",
        help="libvirt domains of the --libvirt URI before it",
    )
    who.add_argument(
        "--all-running",
        action=_InOrder,
        nargs=0,
        help="every running domain of the --libvirt URI before it",
    )
    who.add_argument("--connect", metavar="URI", help="libvirt URI of domains named without one")
    sp.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="DIR",
        help="directory for NAME-TIME.vmstate and .meta.json (on the QEMU host's file system)",
    )
    after = sp.add_mutually_exclusive_group()
    after.add_argument(
        "--resume", action="store_true", default=True, help="resume the VMs after the capture (default)"
    )
    after.add_argument(
        "--keep-stopped",
        action="store_true",
        help="leave captured VMs stopped (a VM whose capture failed is still resumed)",
    )
    sp.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="give up on a VM's migration after this long (default 600)",
    )
    sp.add_argument(
        "--progress", action="store_true", help="show progress on stderr even when not a terminal"
    )
    sp.add_argument("--json", action="store_true", help="machine-readable report on stdout")


def register(sub) -> None:
    sp = sub.add_parser(
        "capture",
        help="snapshot running VMs now (several at one instant)",
        description="Stop every VM (all at once), write each one's migration stream to DIR in parallel, "
        "then resume them. Reports the stop skew between VMs and each snapshot's size and time.",
    )
    _add_common(sp)
    sp.set_defaults(func=cmd_capture)

    sp = sub.add_parser(
        "watch",
        help="wait for a guest panic or a serial-console line, then capture",
        description="Wait until one of the VMs panics (GUEST_PANICKED from a pvpanic device) or prints a "
        "serial line matching PATTERN, then capture all the VMs at once.",
    )
    _add_common(sp)
    sp.add_argument(
        "--on",
        action="append",
        required=True,
        metavar="guest-panic|serial:PATTERN",
        help="trigger (repeatable): guest-panic, or serial:REGEX for a console line",
    )
    sp.add_argument(
        "--serial",
        action="append",
        metavar="PATH[,PATH...]",
        help="each VM's console, in the order the VMs are named (--qmp, then libvirt): "
        "a log file QEMU writes (-serial file:PATH, "
        "-chardev ...,logfile=PATH) or a unix socket (-serial unix:PATH,server=on); "
        "default: found in QEMU's command line",
    )
    sp.add_argument(
        "--wait",
        type=float,
        default=None,
        metavar="SECONDS",
        help="give up when nothing triggers within this long (default: wait forever)",
    )
    sp.set_defaults(func=cmd_watch)
