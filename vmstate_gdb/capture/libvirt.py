"""VMs managed by libvirt, reached through its QMP pass-through (``qemu-monitor-command``).

The libvirt Python binding is used when it is installed, else the ``virsh`` client; either way
remote hosts are reached with libvirt URIs (``qemu+ssh://host/system``). Snapshot paths are on
the host where QEMU runs, and QEMU writes them as its own user (libvirt-qemu), so -o must be a
directory that user may write. libvirt reports no QMP events through this path: ``watch`` needs
``--qmp``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import shutil
from collections.abc import AsyncIterator
from typing import Any

from vmstate_gdb.capture.monitor import COMMAND_TIMEOUT, Monitor
from vmstate_gdb.errors import QemuError

PID_FILE = "/run/libvirt/qemu/{domain}.pid"
ABSENT = (
    "--libvirt: libvirt is not available here (no libvirt Python binding, no virsh); "
    "install python3-libvirt or libvirt-clients, or reach the VMs with --qmp SOCKET"
)


def _is_local(uri: str | None) -> bool:
    """qemu:///system, qemu+unix:///session: no host part, QEMU runs here."""
    return uri is None or uri.partition("://")[2].startswith("/")


class LibvirtMonitor(Monitor):
    supports_events = False

    def __init__(self, domain: str, uri: str | None, handle: Any = None):
        self.label = domain
        self.uri = uri
        self._domain = handle  # a libvirt.virDomain, or None to go through virsh
        self.local = _is_local(uri)
        self.pid = self._local_pid() if self.local else None

    def _local_pid(self) -> int | None:
        try:
            with open(PID_FILE.format(domain=self.label)) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    async def execute(
        self, command: str, arguments: dict[str, Any] | None = None, timeout: float = COMMAND_TIMEOUT
    ) -> Any:
        message = json.dumps({"execute": command, **({"arguments": arguments} if arguments else {})})
        try:
            reply = await asyncio.wait_for(self._send(message), timeout)
        except TimeoutError:
            raise QemuError(
                f"{self.label}: {command}: no answer from libvirt within {timeout:.0f} s"
            ) from None
        data = json.loads(reply)
        if "error" in data:
            raise QemuError(f"{self.label}: {command}: {data['error'].get('desc', data['error'])}")
        return data.get("return")

    async def _send(self, message: str) -> str:
        if self._domain is not None:
            qemu = importlib.import_module("libvirt_qemu")
            return await asyncio.to_thread(qemu.qemuMonitorCommand, self._domain, message, 0)
        argv = ["virsh", *(["-c", self.uri] if self.uri else []), "qemu-monitor-command", self.label, message]
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await proc.communicate()
        if proc.returncode != 0:
            text = err.decode(errors="replace").strip().splitlines()
            raise QemuError(f"{self.label}: virsh: {text[-1] if text else f'exit code {proc.returncode}'}")
        return out.decode()


def _binding() -> Any | None:
    try:
        importlib.import_module("libvirt_qemu")
        return importlib.import_module("libvirt")
    except ImportError:
        return None


@contextlib.asynccontextmanager
async def open_libvirt_all(domains: list[str], uri: str | None) -> AsyncIterator[list[Monitor]]:
    """A monitor per libvirt domain; one clear error when libvirt or a domain is missing."""
    if not domains:
        raise QemuError("--libvirt needs at least one domain name")
    libvirt = _binding()
    if libvirt is None and shutil.which("virsh") is None:
        raise QemuError(ABSENT)
    if libvirt is not None:
        try:
            conn = await asyncio.to_thread(libvirt.open, uri)
            monitors: list[Monitor] = [LibvirtMonitor(d, uri, conn.lookupByName(d)) for d in domains]
        except libvirt.libvirtError as exc:
            raise QemuError(f"--libvirt: {exc}") from None
        try:
            yield monitors
        finally:
            conn.close()
        return
    monitors = [LibvirtMonitor(d, uri) for d in domains]
    await asyncio.gather(*(m.execute("query-status") for m in monitors))  # domain exists, is running
    yield monitors
