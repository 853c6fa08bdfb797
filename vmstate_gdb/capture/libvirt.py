"""VMs managed by libvirt, reached through its QMP pass-through (``qemu-monitor-command``).

The libvirt Python binding is used when it is installed, else the ``virsh`` client; either way
remote hosts are reached with libvirt URIs (``qemu+ssh://host/system``), several at once, each
over libvirt's own remote protocol. How the stream reaches a file, in order of preference:

* ``fd:`` (local connection, binding): this process opens the file and hands QEMU the descriptor
  with ``getfd`` (virDomainQemuMonitorCommandWithFiles), so neither QEMU's user nor its
  AppArmor/SELinux confinement need allow writing -o; any QEMU version;
* ``file:`` (QEMU >= 8.2, remote hosts): QEMU opens the path on its host, as its own user, so -o
  must be a directory QEMU may write there;
* ``exec:`` otherwise. libvirt starts QEMU with ``-sandbox ...,spawn=deny`` (qemu.conf
  ``seccomp_sandbox``, on by default) and QEMU is *killed* when it runs the shell of ``exec:``, so
  such a VM is refused before anything is stopped unless ``VMSTATE_LIBVIRT_EXEC=1`` says the
  host's qemu.conf has ``seccomp_sandbox = 0``.

QMP events (QEMU's timestamped STOP, for the skew between hosts; GUEST_PANICKED for ``watch``)
come through virConnectDomainQemuMonitorEventRegister, with libvirt's default event loop run in
a daemon thread; without the binding (virsh) there are none.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import shutil
import threading
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from vmstate_gdb.capture.monitor import COMMAND_TIMEOUT, CONNECT_TIMEOUT, Monitor
from vmstate_gdb.errors import QemuError

PID_FILE = "/run/libvirt/qemu/{domain}.pid"
ABSENT = (
    "--libvirt: libvirt is not available here (no libvirt Python binding, no virsh); "
    "install python3-libvirt or libvirt-clients, or reach the VMs with --qmp SOCKET"
)
FD_NAME = "vmstate-capture"
EXEC_ALLOWED = "VMSTATE_LIBVIRT_EXEC"
#: keepalive probes on each connection, "INTERVAL,COUNT" (seconds): a daemon that stops answering
#: (hung, or the network to it cut) is given up after about INTERVAL * (COUNT + 1)
KEEPALIVE_ENV = "VMSTATE_LIBVIRT_KEEPALIVE"
KEEPALIVE = (5, 3)


def _is_local(uri: str | None) -> bool:
    """qemu:///system, qemu+unix:///session: no host part, QEMU runs here."""
    return uri is None or uri.partition("://")[2].startswith("/")


@dataclass
class Target:
    """One libvirt connection and what to capture there: named domains, and/or all running ones."""

    uri: str | None
    domains: list[str] = field(default_factory=list)
    all_running: bool = False

    @property
    def where(self) -> str:
        return self.uri or "libvirt default URI"


class LibvirtMonitor(Monitor):
    def __init__(
        self,
        domain: str,
        uri: str | None,
        handle: Any = None,
    ):
        self.label = domain
        self.uri = uri
        self.host = uri
        self._domain = handle  # a libvirt.virDomain, or None to go through virsh
        self.supports_events = handle is not None and _EVENT_LOOP.is_set()
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
        return await self._call(command, timeout, self._send, message)

    async def _call(self, command: str, timeout: float, send: Any, *args: Any) -> Any:
        try:
            reply = await asyncio.wait_for(send(*args), timeout)
        except TimeoutError:
            raise QemuError(
                f"{self.label}: {command}: no answer from libvirt within {timeout:.0f} s"
            ) from None
        except QemuError:
            raise
        except Exception as exc:  # libvirtError: daemon gone, domain gone, monitor closed
            raise QemuError(f"{self.label}: {command}: {self._lost()}{_message(exc)}") from None
        data = json.loads(reply)
        if "error" in data:
            raise QemuError(f"{self.label}: {command}: {data['error'].get('desc', data['error'])}")
        return data.get("return")

    def _lost(self) -> str:
        """'connection to libvirtd lost: ' when it is (the daemon died or was restarted)."""
        with contextlib.suppress(Exception):
            if self._domain is not None and not self._domain.connect().isAlive():
                return "connection to libvirt lost: "
        return ""

    async def _in_thread(self, func: Any, *args: Any) -> Any:
        return await detached(func, *args)

    async def _send(self, message: str) -> str:
        if self._domain is not None:
            qemu = importlib.import_module("libvirt_qemu")
            return await self._in_thread(qemu.qemuMonitorCommand, self._domain, message, 0)
        argv = ["virsh", *(["-c", self.uri] if self.uri else []), "qemu-monitor-command", self.label, message]
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await proc.communicate()
        if proc.returncode != 0:
            text = err.decode(errors="replace").strip().splitlines()
            raise QemuError(f"{self.label}: virsh: {text[-1] if text else f'exit code {proc.returncode}'}")
        return out.decode()

    @contextlib.contextmanager
    def events(self, names: Iterable[str]) -> Iterator[asyncio.Queue[dict]]:
        """A queue of the named QMP events, in QMP's shape (``event``, ``timestamp``, ``data``)."""
        qemu = importlib.import_module("libvirt_qemu")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[dict] = asyncio.Queue()

        def deliver(_conn, _dom, event, seconds, micros, details, _opaque) -> None:
            stamp = {"seconds": seconds, "microseconds": micros}
            event = {"event": event, "timestamp": stamp, "data": json.loads(details) if details else {}}
            with contextlib.suppress(RuntimeError):  # late, after the capture's loop closed
                loop.call_soon_threadsafe(queue.put_nowait, event)

        conn = self._domain.connect()
        ids = [qemu.qemuMonitorEventRegister(conn, self._domain, name, deliver, None, 0) for name in names]
        try:
            yield queue
        finally:

            def deregister() -> None:
                for callback in ids:
                    with contextlib.suppress(Exception):  # the daemon may be gone
                        qemu.qemuMonitorEventDeregister(conn, callback)

            # off the event loop: a daemon that hangs right after the stop must not stall the rest
            threading.Thread(target=deregister, name="libvirt-events-off", daemon=True).start()

    def _passes_fds(self) -> bool:
        qemu = importlib.import_module("libvirt_qemu") if self._domain is not None else None
        return self.local and hasattr(qemu, "qemuMonitorCommandWithFiles")

    def capture_blocker(self, file_uri: bool) -> str | None:
        if file_uri or self._passes_fds() or os.environ.get(EXEC_ALLOWED) == "1":
            return None
        return (
            "QEMU < 8.2 on a remote libvirt host: exec: migration would run a shell, and libvirt's "
            "seccomp sandbox (spawn=deny) kills QEMU for it; needs QEMU >= 8.2 (file:) or a local "
            f"connection (fd passing); {EXEC_ALLOWED}=1 if that host has seccomp_sandbox = 0"
        )

    async def migration_uri(self, path: str, file_uri: bool) -> tuple[str, str]:
        if not self._passes_fds():
            return await super().migration_uri(path, file_uri)
        qemu = importlib.import_module("libvirt_qemu")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        message = json.dumps({"execute": "getfd", "arguments": {"fdname": FD_NAME}})

        async def send() -> str:
            result = await self._in_thread(qemu.qemuMonitorCommandWithFiles, self._domain, message, [fd], 0)
            return result[0]

        try:
            await self._call("getfd", COMMAND_TIMEOUT, send)
        except QemuError:
            os.unlink(path)
            raise
        finally:
            os.close(fd)  # QEMU has its own copy now
        return "fd", f"fd:{FD_NAME}"


def detached(func: Any, *args: Any) -> asyncio.Future[Any]:
    """Run a blocking libvirt call in a daemon thread of its own: the stops of many VMs go out
    together, and a call stuck on a hung daemon (or a cut network) neither blocks the event loop
    nor, as a pool's worker would be, the exit once its timeout has been reported."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(value: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)

    def run() -> None:
        try:
            value, error = func(*args), None
        except BaseException as exc:
            value, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(settle, value, error)

    threading.Thread(target=run, name="libvirt-call", daemon=True).start()
    return future


def _message(exc: BaseException) -> str:
    """libvirtError's text without libvirt's prefix, on one line."""
    get = getattr(exc, "get_error_message", None)
    text = (get() if get else None) or str(exc) or type(exc).__name__
    return " ".join(text.split())


_EVENT_LOOP = threading.Event()


def _start_event_loop(libvirt: Any) -> None:
    """libvirt's default event loop, in a daemon thread: it delivers QMP events and keepalives
    (so a daemon that dies is noticed). Must run before the first connection is opened."""
    if _EVENT_LOOP.is_set():
        return
    try:
        libvirt.virEventRegisterDefaultImpl()
    except Exception:
        return

    def run() -> None:
        while True:
            libvirt.virEventRunDefaultImpl()

    threading.Thread(target=run, name="libvirt-events", daemon=True).start()
    _EVENT_LOOP.set()


def _binding() -> Any | None:
    try:
        importlib.import_module("libvirt_qemu")
        libvirt = importlib.import_module("libvirt")
    except ImportError:
        return None
    # libvirt prints every error to stderr by default; ours are one line each, raised instead
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


def _lookup(libvirt: Any, target: Target) -> tuple[Any, list[tuple[str, Any]]]:
    """Open ``target``'s connection and find its domains (blocking; one thread per URI)."""
    try:
        conn = libvirt.open(target.uri)
    except libvirt.libvirtError as exc:
        raise QemuError(f"{target.where}: cannot connect: {_message(exc)}") from None
    with contextlib.suppress(libvirt.libvirtError):
        conn.setKeepAlive(*_keepalive())
    try:
        found: dict[str, Any] = {}
        for name in target.domains:
            try:
                dom = conn.lookupByName(name)
            except libvirt.libvirtError as exc:
                raise QemuError(f"{target.where}: {name}: {_message(exc)}") from None
            if not dom.isActive():
                raise QemuError(f"{target.where}: {name}: domain is not running")
            found[name] = dom
        if target.all_running:
            for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_RUNNING):
                found.setdefault(dom.name(), dom)
            if not found:
                raise QemuError(f"{target.where}: no running domains")
    except BaseException:
        _close(conn)
        raise
    return conn, sorted(found.items()) if target.all_running else list(found.items())


async def _lookup_in_time(libvirt: Any, target: Target) -> tuple[Any, list[tuple[str, Any]]]:
    try:
        return await asyncio.wait_for(detached(_lookup, libvirt, target), CONNECT_TIMEOUT)
    except TimeoutError:
        raise QemuError(f"{target.where}: no answer from libvirt within {CONNECT_TIMEOUT:.0f} s") from None


def _keepalive() -> tuple[int, int]:
    try:
        interval, count = map(int, os.environ[KEEPALIVE_ENV].split(","))
        return interval, count
    except (KeyError, ValueError):
        return KEEPALIVE


def _close(conn: Any) -> None:
    with contextlib.suppress(Exception):  # a daemon that died mid-capture: nothing left to close
        conn.close()


@contextlib.asynccontextmanager
async def open_libvirt_all(targets: list[Target]) -> AsyncIterator[list[Monitor]]:
    """A monitor per domain of every target, all connections opened together. All or none: an
    unreachable daemon or an unknown domain is one error naming its URI before anything is stopped
    (a capture of a set of VMs is for one instant of that whole set)."""
    if not any(t.domains or t.all_running for t in targets):
        raise QemuError("--libvirt needs at least one domain name or --all-running")
    libvirt = _binding()
    if libvirt is None and shutil.which("virsh") is None:
        raise QemuError(ABSENT)
    if libvirt is None:
        async with _open_with_virsh(targets) as monitors:
            yield monitors
        return
    _start_event_loop(libvirt)
    opened = await asyncio.gather(*(_lookup_in_time(libvirt, t) for t in targets), return_exceptions=True)
    conns = [o[0] for o in opened if isinstance(o, tuple)]
    try:
        errors = [o for o in opened if isinstance(o, BaseException)]
        if errors:
            raise errors[0] if isinstance(errors[0], QemuError) else QemuError(_message(errors[0]))
        monitors: list[Monitor] = []
        for target, (_, domains) in zip(targets, opened, strict=True):
            monitors += [LibvirtMonitor(name, target.uri, dom) for name, dom in domains]
        yield monitors
    finally:
        closing = [asyncio.wait_for(detached(_close, conn), 5.0) for conn in conns]
        await asyncio.gather(*closing, return_exceptions=True)


@contextlib.asynccontextmanager
async def _open_with_virsh(targets: list[Target]) -> AsyncIterator[list[Monitor]]:
    monitors: list[Monitor] = []
    for target in targets:
        names = list(target.domains)
        if target.all_running:
            argv = ["virsh", *(["-c", target.uri] if target.uri else []), "list", "--name", "--state-running"]
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
            )
            out, err = await proc.communicate()
            if proc.returncode != 0:
                raise QemuError(f"{target.where}: virsh list: {_message(Exception(err.decode()))}")
            names += [n for n in out.decode().split() if n not in names]
        monitors += [LibvirtMonitor(d, target.uri) for d in names]
    checks = await asyncio.gather(*(m.execute("query-status") for m in monitors), return_exceptions=True)
    for monitor, check in zip(monitors, checks, strict=True):
        if isinstance(check, BaseException):
            raise QemuError(f"{monitor.host or 'libvirt default URI'}: {check}")
    yield monitors
