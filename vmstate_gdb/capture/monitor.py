"""One VM's monitor: QMP commands and events over a unix socket or TCP, with QEMU's ``qemu.qmp``.

Every command has a timeout and every failure becomes a one-line :class:`QemuError` naming the
VM, so a hung or dead QEMU cannot hang a capture of many VMs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import socket
import struct
from collections.abc import AsyncIterator, Iterable
from typing import Any

from qemu.qmp import QMPClient
from qemu.qmp.qmp_client import ExecuteError

from vmstate_gdb.errors import QemuError

COMMAND_TIMEOUT = 30.0
CONNECT_TIMEOUT = 10.0


class Monitor:
    """What capture needs from a VM's monitor. ``label`` is how the user named the VM (socket
    path, host:port, libvirt domain); ``pid`` is QEMU's process id when it runs on this host."""

    label: str
    pid: int | None = None
    #: True when QEMU runs on this host: snapshot paths can be checked and removed here.
    local: bool = True
    supports_events: bool = False
    #: where the VM is managed when that is not in ``label`` (a libvirt URI), for error lines
    host: str | None = None

    def capture_blocker(self, file_uri: bool) -> str | None:
        """Why this VM must not be stopped for a capture (checked before any VM is), or None."""
        return None

    async def migration_uri(self, path: str, file_uri: bool) -> tuple[str, str]:
        """(method, QMP migration URI) that writes the stream to ``path``."""
        if file_uri:
            return "file", f"file:{path}"
        # exec: runs a shell on QEMU's host: the path is quoted for it.
        return "exec", f"exec:cat > {shlex.quote(path)}"

    async def execute(
        self, command: str, arguments: dict[str, Any] | None = None, timeout: float = COMMAND_TIMEOUT
    ) -> Any:
        raise NotImplementedError

    def events(self, names: Iterable[str]) -> contextlib.AbstractContextManager[asyncio.Queue[dict]]:
        raise NotImplementedError

    async def close(self) -> None:
        pass


def split_address(address: str) -> str | tuple[str, int]:
    """A unix socket path, or ``(host, port)`` for ``host:port`` (``[v6]:port`` too)."""
    host, sep, port = address.rpartition(":")
    if sep and port.isdigit() and "/" not in address and not os.path.exists(address):
        return host.strip("[]") or "localhost", int(port)
    return address


def peer_pid(sock: socket.socket) -> int | None:
    """The pid of the process that listens on a connected unix socket (SO_PEERCRED)."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    pid = struct.unpack("3i", creds)[0]
    return pid or None


class QmpMonitor(Monitor):
    """QMP through :class:`qemu.qmp.QMPClient`. Use :func:`open_qmp` to make one."""

    supports_events = True

    def __init__(self, label: str, client: QMPClient, pid: int | None, local: bool):
        self.label = label
        self.client = client
        self.pid = pid
        self.local = local

    async def execute(
        self, command: str, arguments: dict[str, Any] | None = None, timeout: float = COMMAND_TIMEOUT
    ) -> Any:
        try:
            return await asyncio.wait_for(self.client.execute(command, arguments or None), timeout)
        except ExecuteError as exc:
            raise QemuError(f"{self.label}: {command}: {exc}") from None
        except TimeoutError:
            raise QemuError(f"{self.label}: {command}: no answer within {timeout:.0f} s") from None
        except Exception as exc:  # disconnected, QEMU gone
            raise QemuError(f"{self.label}: {command}: {type(exc).__name__}: {exc}") from None

    @contextlib.contextmanager
    def events(self, names: Iterable[str]):
        """A queue that receives the named QMP events while the context is open."""
        queue: asyncio.Queue[dict] = asyncio.Queue()
        with self.client.listener(tuple(names)) as listener:

            async def pump() -> None:
                async for event in listener:
                    queue.put_nowait(dict(event))

            task = asyncio.get_running_loop().create_task(pump())
            try:
                yield queue
            finally:
                task.cancel()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.client.disconnect(), 3.0)


async def open_qmp(address: str, timeout: float = CONNECT_TIMEOUT) -> QmpMonitor:
    """Connect to the QMP server at ``address`` (unix socket path or host:port)."""
    where = split_address(address)
    loop = asyncio.get_running_loop()
    if isinstance(where, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        local = True
    else:
        sock = socket.socket(socket.AF_INET6 if ":" in where[0] else socket.AF_INET, socket.SOCK_STREAM)
        local = where[0] in ("localhost", "127.0.0.1", "::1")
    sock.setblocking(False)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, where), timeout)
    except TimeoutError:
        sock.close()
        raise QemuError(f"{address}: no QMP server answered within {timeout:.0f} s") from None
    except OSError as exc:
        sock.close()
        raise QemuError(f"{address}: cannot connect to QMP: {exc.strerror or exc}") from None
    # The listening QEMU's pid: /proc/PID/cmdline is the only place QEMU's argv can be read from.
    pid = peer_pid(sock) if isinstance(where, str) else None
    client = QMPClient(os.path.basename(address) or address)
    try:
        await asyncio.wait_for(client.connect(sock), timeout)
    except TimeoutError:
        sock.close()
        raise QemuError(
            f"{address}: no QMP greeting within {timeout:.0f} s "
            "(is another client connected to this monitor?)"
        ) from None
    except Exception as exc:
        sock.close()
        raise QemuError(f"{address}: QMP handshake failed: {exc}") from None
    return QmpMonitor(address, client, pid, local)


@contextlib.asynccontextmanager
async def open_all(addresses: list[str]) -> AsyncIterator[list[Monitor]]:
    """Connect to every QMP address concurrently; all or none (the others are closed)."""
    results = await asyncio.gather(*(open_qmp(a) for a in addresses), return_exceptions=True)
    monitors = [r for r in results if isinstance(r, Monitor)]
    errors = [r for r in results if isinstance(r, BaseException)]
    try:
        if errors:
            raise errors[0] if isinstance(errors[0], QemuError) else QemuError(str(errors[0]))
        yield monitors
    finally:
        await asyncio.gather(*(m.close() for m in monitors))
