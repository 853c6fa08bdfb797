"""What a VM says about itself before it is captured, and the ``.meta.json`` made from it.

The meta keys are the ones :mod:`vmstate_gdb.resume` reads (``source_argv``, ``method``, ``tag``)
so ``vmstate resume-cmd SNAP`` prints a command that resumes a captured VM.
"""

from __future__ import annotations

import dataclasses
import getpass
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from vmstate_gdb.capture.monitor import Monitor
from vmstate_gdb.errors import QemuError
from vmstate_gdb.resume import write_meta

#: ``file:`` migration URIs came with QEMU v8.2 (migration/file.c, "migration: file URI");
#: older QEMU only has ``exec:`` for writing a stream to a file.
FILE_URI_SINCE = (8, 2)


@dataclass
class VmFacts:
    label: str
    name: str | None
    version: tuple[int, int, int]
    package: str
    machine_type: str | None
    arch: str | None
    status: str
    pid: int | None
    argv: list[str] | None
    blocked_reasons: list[str] = field(default_factory=list)
    migration_status: str | None = None

    @property
    def version_string(self) -> str:
        return ".".join(map(str, self.version))

    @property
    def file_uri(self) -> bool:
        return self.version[:2] >= FILE_URI_SINCE


def read_cmdline(pid: int | None) -> list[str] | None:
    """QEMU's argv from /proc: QMP has no command that returns it."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    argv = [a.decode(errors="surrogateescape") for a in raw.split(b"\0")]
    if argv and argv[-1] == "":
        argv.pop()
    return argv or None


async def _optional(monitor: Monitor, command: str, arguments: dict[str, Any] | None = None) -> Any:
    try:
        return await monitor.execute(command, arguments)
    except QemuError:
        return None


async def gather_facts(monitor: Monitor) -> VmFacts:
    version = await monitor.execute("query-version")
    status = await monitor.execute("query-status")
    name = await _optional(monitor, "query-name")
    target = await _optional(monitor, "query-target")
    # The machine object's QOM type is "<machine>-machine", e.g. pc-i440fx-7.2-machine: the
    # versioned name, where query-machines only lists aliases ("pc") beside it.
    qom_type = await _optional(monitor, "qom-get", {"path": "/machine", "property": "type"})
    migrate = await _optional(monitor, "query-migrate") or {}
    machine = qom_type.removesuffix("-machine") if isinstance(qom_type, str) else None
    q = version["qemu"]
    return VmFacts(
        label=monitor.label,
        name=(name or {}).get("name"),
        version=(q["major"], q["minor"], q["micro"]),
        package=version.get("package", "").strip(),
        machine_type=machine,
        arch=(target or {}).get("arch"),
        status=status["status"],
        pid=monitor.pid,
        argv=read_cmdline(monitor.pid) if monitor.local else None,
        blocked_reasons=list(migrate.get("blocked-reasons", [])),
        migration_status=migrate.get("status"),
    )


async def refresh_status(monitor: Monitor, facts: VmFacts) -> VmFacts:
    """``facts`` with the run state asked again (the rest does not change while QEMU runs)."""
    status = await monitor.execute("query-status")
    return dataclasses.replace(facts, status=status["status"])


def snapshot_meta(
    facts: VmFacts, *, path: str, method: str, stopped_at: float | None, result: dict[str, Any]
) -> dict[str, Any]:
    """The ``.meta.json`` of one captured VM."""
    return {
        "path": path,
        "format": "stream",
        "method": method,  # "file" or "exec": both write a plain migration stream
        "tag": None,
        "name": facts.name or facts.label,
        "qemu_version": facts.version_string,
        "qemu_package": facts.package,
        "machine_type": facts.machine_type,
        "arch": facts.arch,
        "source_argv": facts.argv,
        "source": {
            "monitor": facts.label,
            "pid": facts.pid,
            "host": socket.gethostname(),
            "user": getpass.getuser(),
            "status_before": facts.status,
        },
        "captured_at": time.time(),
        "captured_at_iso": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "stopped_at": stopped_at,
        "capture": result,
        "writer": "vmstate capture",
    }


def save_meta(path: str, meta: dict[str, Any]) -> str:
    write_meta(path, meta)
    return path + ".meta.json"
