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
    from vmstate_gdb.capture.monitor import Monitor
    from vmstate_gdb.capture.session import CaptureReport


def _split(values: list[str] | None) -> list[str]:
    return [v for value in values or () for v in value.split(",") if v]


@contextlib.asynccontextmanager
async def _monitors(args: argparse.Namespace) -> AsyncIterator[list[Monitor]]:
    if args.libvirt:
        from vmstate_gdb.capture.libvirt import open_libvirt_all

        async with open_libvirt_all(_split(args.libvirt), args.connect) as monitors:
            yield monitors
        return
    from vmstate_gdb.capture.monitor import open_all

    addresses = _split(args.qmp)
    if not addresses:
        raise QemuError("name at least one VM: --qmp SOCKET[,SOCKET...] or --libvirt DOMAIN[,...]")
    async with open_all(addresses) as monitors:
        yield monitors


def _print_report(args: argparse.Namespace, report: CaptureReport) -> int:
    if args.json:
        json.dump(report.to_json(), sys.stdout, indent=1, default=str)
        sys.stdout.write("\n")
    else:
        print(report.text())
    for r in report.results:
        if not r.ok:
            print(f"vmstate: {r.name}: {r.error}", file=sys.stderr)
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
        action="append",
        metavar="DOMAIN[,DOMAIN...]",
        help="libvirt domains, through libvirt's QMP pass-through",
    )
    who.add_argument("--connect", metavar="URI", help="libvirt connection URI (e.g. qemu+ssh://host/system)")
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
        help="each VM's console, in --qmp order: a log file QEMU writes (-serial file:PATH, "
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
