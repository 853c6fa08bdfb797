"""Guest-side triggers for ``vmstate watch``: a guest panic (QEMU's GUEST_PANICKED event, sent
when the guest writes a pvpanic device) or a line on the guest's serial console.

The serial console is read where QEMU puts it: a log file QEMU writes (``-serial file:PATH``,
``-chardev ...,logfile=PATH``, libvirt's ``<log file=.../>``), followed from its current end, or a
unix socket chardev in server mode (``-serial unix:PATH,server=on``), read as its client.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass

from vmstate_gdb.capture.facts import gather_facts
from vmstate_gdb.capture.monitor import Monitor
from vmstate_gdb.capture.session import CaptureReport, capture_vms
from vmstate_gdb.errors import QemuError

FILE_POLL = 0.02


@dataclass(frozen=True)
class Trigger:
    kind: str  # "guest-panic" | "serial"
    pattern: re.Pattern[str] | None = None

    def __str__(self) -> str:
        return self.kind if self.pattern is None else f"serial:{self.pattern.pattern}"


def parse_triggers(specs: list[str]) -> list[Trigger]:
    triggers = []
    for spec in specs:
        if spec == "guest-panic":
            triggers.append(Trigger("guest-panic"))
        elif spec.startswith("serial:") and len(spec) > len("serial:"):
            try:
                triggers.append(Trigger("serial", re.compile(spec[len("serial:") :])))
            except re.error as exc:
                raise QemuError(f"--on {spec}: bad regular expression: {exc}") from None
        else:
            raise QemuError(f"--on {spec}: expected guest-panic or serial:PATTERN")
    return triggers


def _chardev_options(spec: str) -> tuple[str, dict[str, str]]:
    backend, _, rest = spec.partition(",")
    options = dict(o.partition("=")[::2] for o in rest.split(",") if o)
    return backend, options


def serial_from_argv(argv: list[str] | None) -> str | None:
    """The readable end of the first serial port in a QEMU command line, or None."""
    if not argv:
        return None
    chardevs: dict[str, tuple[str, dict[str, str]]] = {}
    serials: list[str] = []
    for flag, value in zip(argv, argv[1:], strict=False):
        if flag == "-chardev":
            backend, options = _chardev_options(value)
            chardevs[options.get("id", "")] = (backend, options)
        elif flag == "-serial":
            serials.append(value.removeprefix("mon:"))
        elif flag == "-device" and value.startswith("isa-serial"):
            serials.append("chardev:" + _chardev_options(value)[1].get("chardev", ""))
    for serial in serials[:1]:
        if serial.startswith("file:"):
            return serial[len("file:") :]
        if serial.startswith("unix:") and "server" in serial:
            return serial[len("unix:") :].split(",")[0]
        if serial.startswith("chardev:"):
            backend, options = chardevs.get(serial[len("chardev:") :], ("", {}))
            if "logfile" in options:
                return options["logfile"]
            if backend == "file":
                return options.get("path")
            if backend == "socket" and "path" in options and options.get("server", "off") != "off":
                return options["path"]
    return None


async def _lines_from_file(path: str):
    """New lines appended to ``path`` from now on."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        partial = b""
        while True:
            chunk = f.read()
            if not chunk:
                await asyncio.sleep(FILE_POLL)
                continue
            partial += chunk
            *lines, partial = partial.split(b"\n")
            for line in lines:
                yield line.decode(errors="replace").rstrip("\r")


async def _lines_from_socket(path: str):
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        while line := await reader.readline():
            yield line.decode(errors="replace").rstrip("\r\n")
    finally:
        writer.close()


async def _watch_serial(name: str, path: str, pattern: re.Pattern[str]) -> str:
    try:
        is_socket = stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError as exc:
        raise QemuError(f"{name}: cannot read the serial console {path}: {exc.strerror}") from None
    lines = _lines_from_socket(path) if is_socket else _lines_from_file(path)
    async for line in lines:
        if pattern.search(line):
            return f"{name}: serial line matched /{pattern.pattern}/: {line.strip()}"
    raise QemuError(f"{name}: serial console {path} closed")


async def _watch_panic(name: str, queue: asyncio.Queue[dict]) -> str:
    event = await queue.get()
    action = event.get("data", {}).get("action", "?")
    return f"{name}: GUEST_PANICKED (action {action})"


async def watch(
    monitors: list[Monitor],
    triggers: list[Trigger],
    *,
    serial_paths: list[str],
    out_dir: str,
    resume: bool = True,
    progress: Callable[[str, int, int], None] | None = None,
    wait: float | None = None,
    timeout: float = 600.0,
    announce: Callable[[str], None] | None = None,
) -> CaptureReport:
    """Wait for the first trigger on any of ``monitors``, then capture all of them."""
    if serial_paths and len(serial_paths) != len(monitors):
        raise QemuError(f"--serial names {len(serial_paths)} consoles for {len(monitors)} VMs")
    tasks: list[asyncio.Task[str]] = []
    # Everything but the run state is asked now, so that a trigger is one round trip from stop.
    known = list(await asyncio.gather(*(gather_facts(m) for m in monitors)))
    with contextlib.ExitStack() as stack:
        for trigger in triggers:
            if trigger.kind == "guest-panic":
                for monitor in monitors:
                    if not monitor.supports_events:
                        raise QemuError(f"{monitor.label}: no QMP events here; --on guest-panic needs --qmp")
                    queue = stack.enter_context(monitor.events(["GUEST_PANICKED"]))
                    tasks.append(asyncio.create_task(_watch_panic(monitor.label, queue)))
            else:
                assert trigger.pattern is not None
                for index, monitor in enumerate(monitors):
                    path = serial_paths[index] if serial_paths else serial_from_argv(known[index].argv)
                    if path is None:
                        raise QemuError(
                            f"{monitor.label}: its serial console is not a file or unix socket "
                            "found in QEMU's command line; give --serial PATH"
                        )
                    tasks.append(asyncio.create_task(_watch_serial(monitor.label, path, trigger.pattern)))
        if announce:
            announce(f"watching {len(monitors)} VM(s) for {', '.join(map(str, triggers))}")
        try:
            done, _ = await asyncio.wait(tasks, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            fired = time.monotonic_ns()
            if not done:
                raise QemuError(f"nothing triggered within {wait:.0f} s; no snapshot taken")
            first = next(iter(done))
            description = first.result()  # a watcher's error (console gone) ends the watch
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    if announce:
        announce(f"trigger: {description}")
    report = await capture_vms(
        monitors, out_dir, resume=resume, progress=progress, timeout=timeout, trigger=description, known=known
    )
    stops = [r.stop_reply_ns for r in report.results if r.stop_reply_ns is not None]
    if stops:
        report.trigger = f"{description} (VMs stopped {(max(stops) - fired) / 1e6:.1f} ms later)"
    return report
