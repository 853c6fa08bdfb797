"""Capture many VMs at one instant: stop all, migrate all to files in parallel, resume all.

The stops are sent to every monitor from one event loop, back to back, and each reply is
timestamped; the skew is the spread of those replies, and also the spread of the timestamps QEMU
puts on its own STOP events (the same host clock when the VMs share a host). A VM that fails at
any step is resumed and reported; it never keeps the others stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from vmstate_gdb.capture.facts import VmFacts, gather_facts, refresh_status, save_meta, snapshot_meta
from vmstate_gdb.capture.monitor import Monitor
from vmstate_gdb.errors import QemuError

MIGRATION_TIMEOUT = 600.0
POLL_INTERVAL = 0.05
#: Stop is all that matters for the instant; the stream of a stopped VM has no reason to be
#: throttled, so max-bandwidth is raised for the capture and put back afterwards (bytes/s).
CAPTURE_BANDWIDTH = 1 << 40
SUFFIX = ".vmstate"
#: Test hook: seconds to keep the VMs stopped before writing, so a fault (a daemon killed) can be
#: injected between the stop and the save.
HOLD_ENV = "VMSTATE_TEST_HOLD_STOPPED"


@dataclass
class VmResult:
    """What happened to one VM."""

    label: str
    name: str
    #: where the VM is managed (a libvirt URI), None for a QMP socket
    host: str | None = None
    path: str | None = None
    meta_path: str | None = None
    method: str | None = None
    ok: bool = False
    error: str | None = None
    status_before: str | None = None
    stopped_by_us: bool = False
    #: a stop was sent (it may have failed half-way: such a VM gets a ``cont`` too)
    stop_sent: bool = False
    #: monotonic ns at which the stop reply arrived (None if this capture did not stop the VM)
    stop_reply_ns: int | None = None
    stop_send_ns: int | None = None
    #: this VM's stop reply after the first VM's (seconds): its share of the stop skew
    stop_offset_s: float | None = None
    #: QEMU's own wall-clock timestamp of its STOP event (seconds)
    stop_event_time: float | None = None
    size: int | None = None
    duration_s: float | None = None
    resumed: bool = False
    facts: VmFacts | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "facts"} | {
            "qemu_version": self.facts.version_string if self.facts else None,
            "machine_type": self.facts.machine_type if self.facts else None,
        }


@dataclass
class CaptureReport:
    results: list[VmResult] = field(default_factory=list)
    #: spread of the stop replies as this process received them (seconds)
    reply_skew_s: float | None = None
    #: spread of QEMU's STOP event timestamps (seconds; microsecond resolution)
    event_skew_s: float | None = None
    started_at: float = 0.0
    total_s: float = 0.0
    trigger: str | None = None

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "reply_skew_s": self.reply_skew_s,
            "event_skew_s": self.event_skew_s,
            "started_at": self.started_at,
            "total_s": self.total_s,
            "trigger": self.trigger,
            "vms": [r.to_json() for r in self.results],
        }

    def text(self) -> str:
        lines = []
        if self.trigger:
            lines.append(f"trigger: {self.trigger}")
        stopped = [r for r in self.results if r.stopped_by_us]
        if len(stopped) > 1:
            skew = f"stop skew {_ms(self.reply_skew_s)} between replies"
            if self.event_skew_s is not None:
                skew += f", {_ms(self.event_skew_s)} between QEMU's STOP events"
            lines.append(f"stopped {len(stopped)} VMs: {skew}")
            offsets = ", ".join(f"{_who(r)} +{_ms(r.stop_offset_s)}" for r in stopped)
            lines.append(f"stop replies after the first: {offsets}")
        for r in self.results:
            if r.ok:
                left = "stopped" if r.stopped_by_us else r.status_before
                after = "resumed" if r.resumed else f"left {left}"
                lines.append(
                    f"{_who(r)}: {r.path}  {_size(r.size)} in {r.duration_s:.2f} s ({r.method}:), {after}"
                )
            else:
                after = "resumed" if r.resumed else ("not stopped" if not r.stopped_by_us else "NOT resumed")
                lines.append(f"{_who(r)}: FAILED: {r.error} ({after})")
        captured = sum(r.ok for r in self.results)
        lines.append(f"{captured} of {len(self.results)} VMs captured in {self.total_s:.2f} s")
        return "\n".join(lines)


def _who(result: VmResult) -> str:
    """A VM as the report names it: ``NAME``, or ``NAME (URI)`` for a libvirt domain."""
    return f"{result.name} ({result.host})" if result.host else result.name


def _hold_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get(HOLD_ENV) or 0))
    except ValueError:
        return 0.0


def _ms(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds * 1000:.2f} ms"


def _size(n: int | None) -> str:
    if n is None:
        return "? bytes"
    return f"{n / 2**20:.1f} MiB" if n >= 1 << 20 else f"{n / 1024:.0f} KiB"


class ProgressBoard:
    """One stderr line for all VMs: ``capturing: a 40% | b 100%``; silent when not a terminal."""

    def __init__(self, stream: TextIO | None = None, enabled: bool | None = None):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._state: dict[str, str] = {}
        self._last = 0.0

    def __call__(self, name: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        self._state[name] = f"{name} {100 * done // max(total, 1):3d}%"
        now = time.monotonic()
        if now - self._last >= 0.2:
            self._last = now
            self.stream.write("\rcapturing: " + " | ".join(self._state.values()))
            self.stream.flush()

    def done(self) -> None:
        if self.enabled and self._state:
            self.stream.write("\rcapturing: " + " | ".join(self._state.values()) + "\n")
            self.stream.flush()


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "vm"


def _names(monitors: list[Monitor], facts: list[VmFacts | None]) -> list[str]:
    """Each VM's file name stem: its -name, else its socket's name; unique within the capture."""
    names: list[str] = []
    for index, (monitor, f) in enumerate(zip(monitors, facts, strict=True)):
        base = f.name if f and f.name else Path(monitor.label).stem
        if base in ("qmp", "monitor", "sock"):  # /run/vm1/qmp.sock -> vm1
            base = Path(monitor.label).parent.name or f"vm{index}"
        base = _safe_name(base)
        name, n = base, 2
        while name in names:
            name, n = f"{base}-{n}", n + 1
        names.append(name)
    return names


def _space_hint(directory: Path) -> str:
    """A disk-full migration fails as a broken pipe or a write error: say what the disk says."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return ""
    free = st.f_bavail * st.f_frsize
    return f" ({directory} is full: {free // 1024} KiB free)" if free < 1 << 20 else ""


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


async def _stop_all(items: list[tuple[Monitor, VmResult]]) -> None:
    """Send ``stop`` to every VM at once and timestamp the replies and QEMU's STOP events."""
    with contextlib.ExitStack() as stack:
        queues = {id(m): stack.enter_context(m.events(["STOP"])) for m, _ in items if m.supports_events}

        async def stop(monitor: Monitor, result: VmResult) -> None:
            result.stop_sent = True
            result.stop_send_ns = time.monotonic_ns()
            await monitor.execute("stop")
            result.stop_reply_ns = time.monotonic_ns()
            result.stopped_by_us = True

        outcomes = await asyncio.gather(*(stop(m, r) for m, r in items), return_exceptions=True)
        for (monitor, result), outcome in zip(items, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                reason = outcome.message if isinstance(outcome, QemuError) else str(outcome)
                result.error = f"cannot stop: {reason.removeprefix(f'{monitor.label}: ')}"
                continue
            queue = queues.get(id(monitor))
            if queue is None:
                continue
            with contextlib.suppress(TimeoutError):
                event = await asyncio.wait_for(queue.get(), 1.0)
                stamp = event.get("timestamp", {})
                result.stop_event_time = stamp.get("seconds", 0) + stamp.get("microseconds", 0) / 1e6


async def _migrate(
    monitor: Monitor,
    facts: VmFacts,
    result: VmResult,
    path: str,
    progress: Callable[[str, int, int], None],
    timeout: float,
) -> None:
    """Write the stopped VM's stream to ``path``; on any failure cancel, remove the file, raise."""
    params = await monitor.execute("query-migrate-parameters")
    old_bandwidth = params.get("max-bandwidth")
    started = time.monotonic()
    migrating = False
    try:
        result.method, uri = await monitor.migration_uri(path, facts.file_uri)
        if old_bandwidth is not None:
            await monitor.execute("migrate-set-parameters", {"max-bandwidth": CAPTURE_BANDWIDTH})
        await monitor.execute("migrate", {"uri": uri})
        migrating = True
        deadline = started + timeout
        while True:
            info = await monitor.execute("query-migrate")
            status = info.get("status")
            ram = info.get("ram", {})
            if ram.get("total"):
                progress(result.name, ram.get("transferred", 0), ram["total"])
            if status == "completed":
                if ram.get("total"):
                    progress(result.name, ram["total"], ram["total"])
                break
            if status in ("failed", "cancelled"):
                raise QemuError(f"migration {status}: {info.get('error-desc', 'no reason given by QEMU')}")
            if time.monotonic() > deadline:
                with contextlib.suppress(QemuError):
                    await monitor.execute("migrate_cancel")
                raise QemuError(f"migration not completed within {timeout:.0f} s (status {status})")
            await asyncio.sleep(POLL_INTERVAL)
    except QemuError as exc:
        if not monitor.local:  # no file access there: say where the rest of the file may be
            raise QemuError(
                exc.message + (f" (a partial {path} may be left on the VM's host)" if migrating else "")
            ) from None
        hint = _space_hint(Path(path).parent)  # before the partial file goes and frees its space
        _remove(path)
        raise QemuError(exc.message + hint) from None
    except BaseException:  # cancelled (Ctrl-C): QEMU must stop writing before the file goes
        with contextlib.suppress(QemuError):
            await monitor.execute("migrate_cancel", timeout=5.0)
        if monitor.local:
            _remove(path)
        raise
    finally:
        if old_bandwidth is not None:
            with contextlib.suppress(QemuError):
                await monitor.execute("migrate-set-parameters", {"max-bandwidth": old_bandwidth})
    result.duration_s = time.monotonic() - started
    if monitor.local:
        result.size = os.path.getsize(path)
    else:
        result.size = info.get("ram", {}).get("transferred")


async def capture_vms(
    monitors: list[Monitor],
    out_dir: str | os.PathLike[str],
    *,
    resume: bool = True,
    progress: Callable[[str, int, int], None] | None = None,
    timeout: float = MIGRATION_TIMEOUT,
    stamp: str | None = None,
    trigger: str | None = None,
    known: list[VmFacts] | None = None,
) -> CaptureReport:
    """Capture every VM of ``monitors`` into ``out_dir`` as ``NAME-STAMP.vmstate`` + ``.meta.json``.

    VMs that are running are stopped together, all streams are written in parallel, and the
    VMs this call stopped are resumed (failed ones always; the others unless ``resume`` is False).
    VMs found paused are captured and left as they were. ``known`` are facts gathered earlier
    (by a watch): only the run state is asked again, to stop sooner."""
    report = CaptureReport(started_at=time.time(), trigger=trigger)
    t0 = time.monotonic()
    progress = progress or (lambda name, done, total: None)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    stamp = stamp or time.strftime("%Y%m%d-%H%M%S")

    if known is None:
        gathered = await asyncio.gather(*(gather_facts(m) for m in monitors), return_exceptions=True)
    else:
        gathered = await asyncio.gather(
            *(refresh_status(m, f) for m, f in zip(monitors, known, strict=True)), return_exceptions=True
        )
    facts = [g if isinstance(g, VmFacts) else None for g in gathered]
    for monitor, name, f, g in zip(monitors, _names(monitors, facts), facts, gathered, strict=True):
        result = VmResult(label=monitor.label, name=name, host=monitor.host, facts=f)
        report.results.append(result)
        if f is None:
            result.error = f"cannot query the VM: {g}"
            continue
        result.status_before = f.status
        if f.blocked_reasons:
            # QEMU >= 6.0 lists blockers in query-migrate: refuse before stopping anything.
            result.error = "migration blocked: " + "; ".join(f.blocked_reasons)
        elif f.migration_status in ("setup", "active", "pre-switchover", "device", "cancelling"):
            result.error = f"a migration is already running (status {f.migration_status})"
        elif f.status in ("inmigrate", "shutdown", "internal-error", "prelaunch"):
            result.error = f"VM is in state {f.status}, nothing to capture"
        else:
            result.error = monitor.capture_blocker(f.file_uri)

    items = [(m, r) for m, r in zip(monitors, report.results, strict=True) if r.error is None]
    await _stop_all([(m, r) for m, r in items if r.status_before == "running"])
    stamps = [r.stop_reply_ns for r in report.results if r.stop_reply_ns is not None]
    if len(stamps) > 1:
        report.reply_skew_s = (max(stamps) - min(stamps)) / 1e9
        for r in report.results:
            if r.stop_reply_ns is not None:
                r.stop_offset_s = (r.stop_reply_ns - min(stamps)) / 1e9
    events = [r.stop_event_time for r in report.results if r.stop_event_time is not None]
    if len(events) > 1 and len(events) == len(stamps):
        report.event_skew_s = max(events) - min(events)

    async def write(monitor: Monitor, result: VmResult) -> None:
        assert result.facts is not None
        path = str(out / f"{result.name}-{stamp}{SUFFIX}")
        if monitor.local and os.path.exists(path):
            raise QemuError(f"{path} exists; not overwriting it")
        await _migrate(monitor, result.facts, result, path, progress, timeout)
        result.path = path
        meta = snapshot_meta(
            result.facts,
            path=path,
            method=result.method or "exec",
            stopped_at=result.stop_event_time,
            result={
                "size": result.size,
                "duration_s": result.duration_s,
                "reply_skew_s": report.reply_skew_s,
                "event_skew_s": report.event_skew_s,
                "vms": len(monitors),
                "trigger": trigger,
            },
        )
        result.meta_path = save_meta(path, meta)
        result.ok = True

    writing = [(m, r) for m, r in items if r.error is None]
    try:
        hold = _hold_seconds()
        if hold:
            await asyncio.sleep(hold)
        outcomes = await asyncio.gather(*(write(m, r) for m, r in writing), return_exceptions=True)
    except BaseException:  # interrupted: no VM stays stopped because of us
        stopped = [m for m, r in zip(monitors, report.results, strict=True) if r.stop_sent]
        await asyncio.gather(*(m.execute("cont", timeout=5.0) for m in stopped), return_exceptions=True)
        raise
    for (_, result), outcome in zip(writing, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            result.error = str(outcome.message if isinstance(outcome, QemuError) else outcome)
            result.error = result.error.removeprefix(f"{result.label}: ")

    async def cont(monitor: Monitor, result: VmResult) -> None:
        try:
            await monitor.execute("cont")
            result.resumed = True
        except QemuError as exc:
            reason = exc.message.removeprefix(f"{result.label}: ")
            result.error = (result.error + "; " if result.error else "") + f"cannot resume: {reason}"
            result.ok = False

    again = [
        (m, r)
        for m, r in zip(monitors, report.results, strict=True)
        if r.stopped_by_us and (resume or not r.ok) or (r.stop_sent and not r.stopped_by_us)
    ]
    await asyncio.gather(*(cont(m, r) for m, r in again))
    report.total_s = time.monotonic() - t0
    return report
