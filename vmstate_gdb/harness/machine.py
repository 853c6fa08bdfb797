"""One QEMU process under TCG: start, talk QMP/HMP, read the serial console, kill.

QEMU runs in its own process group (``start_new_session``) so :meth:`QemuVM.close` can kill it
and anything it forked (``exec:`` migration helpers) by group id. Every wait is bounded and its
error carries the tail of the serial log and of QEMU's stderr.
"""

from __future__ import annotations

import asyncio
import atexit
import itertools
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient

from vmstate_gdb.errors import QemuError
from vmstate_gdb.harness.config import GuestConfig, render_argv
from vmstate_gdb.harness.console import Tick, parse_ticks
from vmstate_gdb.harness.guests import GuestImage, guest_image
from vmstate_gdb.harness.state import (
    RecordedState,
    parse_info_network,
    parse_info_pci,
    parse_info_registers,
    parse_info_registers_aarch64,
    split_cpus,
)

QMP_CONNECT_TIMEOUT = 20.0
QMP_COMMAND_TIMEOUT = 120.0  # savevm/loadvm of a few hundred MiB under TCG go through here

#: pid of every QEMU this process started, for tests asserting that none is left behind.
STARTED_PIDS: list[int] = []
_LIVE: set[QemuVM] = set()
_SEQUENCE = itertools.count(1)


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _tail_file(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no file)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty)"


class QemuVM:
    """A qemu-system-x86_64 (or -aarch64, for `virt`) for ``config``. Use as a context manager, or
    call :meth:`close`.

    ``incoming`` is passed as ``-incoming`` (``"exec:cat FILE"``, ``"defer"``); ``paused`` adds ``-S``;
    ``disk`` is the qcow2 path (created with the matching qemu-img if missing) when the config
    has ``disk_mib``. The serial log and stderr go to fresh files in ``work_dir``.
    """

    def __init__(
        self,
        config: GuestConfig,
        work_dir: str | os.PathLike[str],
        *,
        name: str = "vm",
        disk: str | os.PathLike[str] | None = None,
        incoming: str | None = None,
        paused: bool = False,
        guest: GuestImage | None = None,
    ):
        self.config = config
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        seq = next(_SEQUENCE)
        self.name = f"{name}-{os.getpid()}-{seq}"
        self.guest = guest or guest_image(config.kind, self.work_dir)
        if config.disk_mib is not None and disk is None:
            disk = self.work_dir / f"{self.name}.qcow2"
        self.disk = Path(disk) if disk is not None else None
        self.incoming = incoming
        self.paused = paused
        self.serial_path = self.work_dir / f"{self.name}.serial.log"
        self.stderr_path = self.work_dir / f"{self.name}.stderr.log"
        # Unix socket paths are limited to 108 bytes: keep QMP in a short private temp dir.
        self._sock_dir = Path(tempfile.mkdtemp(prefix="vmstate-qmp-"))
        self.qmp_path = self._sock_dir / "qmp.sock"
        self.process: subprocess.Popen[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: QMPClient | None = None
        self._version: tuple[int, int, int] | None = None

    # -- life cycle --------------------------------------------------------------------------

    @property
    def argv(self) -> list[str]:
        return render_argv(
            self.config,
            list(self.guest.boot_args),
            serial=f"file:{self.serial_path}",
            qmp_socket=str(self.qmp_path),
            disk=str(self.disk) if self.disk else None,
            incoming=self.incoming,
            paused=self.paused,
        )

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self) -> QemuVM:
        if self.process is not None:
            raise QemuError(f"{self.name}: already started")
        if self.disk is not None and not self.disk.exists():
            self._create_disk()
        argv = self.argv
        self.serial_path.write_bytes(b"")
        with open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, start_new_session=True
            )
        STARTED_PIDS.append(self.process.pid)
        _LIVE.add(self)
        try:
            self._connect_qmp()
        except BaseException:
            self.close()
            raise
        return self

    def _create_disk(self) -> None:
        assert self.disk is not None and self.config.disk_mib is not None
        img = self.config.binaries.img
        proc = subprocess.run(
            [img, "create", "-q", "-f", "qcow2", str(self.disk), f"{self.config.disk_mib}M"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if proc.returncode != 0:
            raise QemuError(f"{img} create {self.disk} failed: {proc.stderr.strip()}")

    def _connect_qmp(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._client = QMPClient(self.name)
        deadline = time.monotonic() + QMP_CONNECT_TIMEOUT
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            self._check_running("while connecting to QMP")
            if self.qmp_path.exists():
                try:
                    self._run(self._client.connect(str(self.qmp_path)), 5.0)
                    return
                except Exception as exc:  # socket there but not yet listening
                    last_error = exc
            time.sleep(0.05)
        self._fail(f"QMP socket {self.qmp_path} not ready after {QMP_CONNECT_TIMEOUT:.0f} s ({last_error})")

    def _run(self, coro: Any, timeout: float) -> Any:
        assert self._loop is not None
        return self._loop.run_until_complete(asyncio.wait_for(coro, timeout))

    def close(self) -> None:
        """Disconnect QMP and kill QEMU's process group: SIGTERM, up to 3 s, then SIGKILL."""
        if self._client is not None and self._loop is not None:
            try:
                self._run(self._client.disconnect(), 3.0)
            except Exception:
                pass
        self._client = None
        if self.process is not None:
            pgid = self.process.pid  # start_new_session: the group id is QEMU's pid
            for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 10.0)):
                if self.process.poll() is not None:
                    break
                try:
                    os.killpg(pgid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.process.wait(wait)
                except subprocess.TimeoutExpired:
                    continue
            # Leftover helpers (an ``exec:cat`` still running) share the group: make sure.
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if self.process.poll() is None:
                self.process.wait(10.0)
        if self._loop is not None:
            self._loop.close()
            self._loop = None
        shutil.rmtree(self._sock_dir, ignore_errors=True)
        _LIVE.discard(self)

    kill = close

    def __enter__(self) -> QemuVM:
        if self.process is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<QemuVM {self.name} pid={self.pid} {self.config.kind}/{self.config.machine}>"

    # -- errors ------------------------------------------------------------------------------

    def diagnostics(self) -> str:
        """Tails of the serial log and of QEMU's stderr, for error messages."""
        code = self.process.poll() if self.process else None
        status = (
            "not started"
            if self.process is None
            else ("running" if code is None else f"exited with code {code}")
        )
        return (
            f"QEMU {self.name} (pid {self.pid}, {status})\n"
            f"--- serial {self.serial_path} (tail) ---\n{_tail_file(self.serial_path)}\n"
            f"--- stderr {self.stderr_path} (tail) ---\n{_tail_file(self.stderr_path)}"
        )

    def _fail(self, message: str) -> None:
        raise QemuError(f"{message}\n{self.diagnostics()}")

    def _check_running(self, doing: str) -> None:
        if self.process is None:
            raise QemuError(f"{self.name}: not started")
        if self.process.poll() is not None:
            self._fail(f"QEMU exited {doing}")

    # -- monitor -----------------------------------------------------------------------------

    def qmp(self, cmd: str, /, *, qmp_timeout: float = QMP_COMMAND_TIMEOUT, **args: Any) -> Any:
        """Run QMP ``cmd`` with ``args`` (use ``**{"command-line": ...}`` for dashed names) and
        return its ``return`` value; a QMP error or no answer within ``qmp_timeout`` raises
        QemuError with the console and stderr tails."""
        timeout = qmp_timeout
        if self._client is None:
            raise QemuError(f"{self.name}: QMP is not connected")
        try:
            return self._run(self._client.execute(cmd, args or None), timeout)
        except TimeoutError:
            self._fail(f"QMP {cmd} did not answer within {timeout:.0f} s")
        except Exception as exc:
            self._fail(f"QMP {cmd} {args} failed: {exc}")

    def hmp(self, text: str, timeout: float = QMP_COMMAND_TIMEOUT) -> str:
        """Run an HMP command through QMP ``human-monitor-command`` and return its output."""
        return self.qmp("human-monitor-command", qmp_timeout=timeout, **{"command-line": text})

    def version(self) -> tuple[int, int, int]:
        if self._version is None:
            v = self.qmp("query-version")["qemu"]
            self._version = (v["major"], v["minor"], v["micro"])
        return self._version

    def version_string(self) -> str:
        return ".".join(map(str, self.version()))

    def status(self) -> str:
        return self.qmp("query-status")["status"]

    # -- console -----------------------------------------------------------------------------

    def serial_text(self) -> str:
        try:
            return self.serial_path.read_bytes().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_line(self, regex: str, timeout: float, start: int = 0) -> re.Match[str]:
        """Wait until a serial line (from character offset ``start``) matches ``regex``."""
        pattern = re.compile(regex)
        deadline = time.monotonic() + timeout
        while True:
            text = self.serial_text()[start:]
            for line in text.splitlines():
                m = pattern.search(line)
                if m:
                    return m
            self._check_running(f"while waiting for /{regex}/ on the serial console")
            if time.monotonic() > deadline:
                self._fail(f"no serial line matched /{regex}/ within {timeout:.0f} s")
            time.sleep(0.1)

    def wait_ready(self, timeout: float | None = None) -> re.Match[str]:
        """Wait for the guest's READY line (its own timeout unless one is given)."""
        return self.wait_for_line(self.guest.ready_pattern, timeout or self.guest.ready_timeout)

    def ticks(self) -> list[Tick]:
        return parse_ticks(self.serial_text())

    def wait_for_ticks(self, count: int, timeout: float = 30.0) -> list[Tick]:
        """Wait until at least ``count`` distinct TICK numbers are on the console; return all ticks."""
        deadline = time.monotonic() + timeout
        while True:
            ticks = self.ticks()
            if len({t.n for t in ticks}) >= count:
                return ticks
            self._check_running(f"while waiting for {count} TICK lines")
            if time.monotonic() > deadline:
                self._fail(f"fewer than {count} TICK lines within {timeout:.0f} s")
            time.sleep(0.1)

    # -- state -------------------------------------------------------------------------------

    def record_state(self) -> RecordedState:
        """QEMU's own view of the (stopped) VM: registers of every vCPU, PCI, network, rx-filter."""
        state = RecordedState()
        text = self.hmp("info registers -a")
        chunks = split_cpus(text)
        if len(chunks) != self.config.cpus:
            # Older QEMU without -a: select each vCPU, then ask.
            chunks = []
            for index in range(self.config.cpus):
                self.hmp(f"cpu {index}")
                chunks.append(self.hmp("info registers"))
        state.registers_text = [c.strip("\r\n") for c in chunks]
        if self.config.target == "aarch64":
            from vmstate_gdb.harness.gdbstub import read_gdbstub

            state.registers = [parse_info_registers_aarch64(c) for c in chunks]
            # the stub's own view too: the core g packet, fpsr/fpcr (66/67), v0/v1 (34/35)
            state.gdbstub = read_gdbstub(self, self.config.cpus, [34, 35, 66, 67])
        else:
            state.registers = [parse_info_registers(c) for c in chunks]
        state.pci_text = self.hmp("info pci")
        state.pci = parse_info_pci(state.pci_text)
        state.network_text = self.hmp("info network")
        state.network = parse_info_network(state.network_text)
        if any(n.model == "virtio-net-pci" for n in self.config.nics):
            try:
                state.rx_filter = self._run(self._client.execute("query-rx-filter"), 10.0)
            except Exception as exc:  # only virtio-net implements it; others raise
                state.rx_filter_error = str(exc)
        if self.config.target != "aarch64":
            self._record_devices(state)
        return state

    #: HMP commands whose text is kept as QEMU's view of the devices (x86 guests)
    DEVICE_HMP = ("info pic", "info irq", "info qtree", "info mtree -f")

    def _record_devices(self, state: RecordedState) -> None:
        """Interrupt chips, device tree, memory map and virtio state as QEMU prints them, the
        oracle for the semantic device decoders."""
        for command in self.DEVICE_HMP:
            state.monitor[command] = self.hmp(command)
        for index in range(self.config.cpus):
            # `cpu N` does not carry over between human-monitor-command calls: select by argument
            state.lapic_text.append(
                self.qmp("human-monitor-command", **{"command-line": "info lapic", "cpu-index": index})
            )
        assert self._client is not None
        try:
            devices = self._run(self._client.execute("x-query-virtio"), 10.0)
        except Exception:  # QEMU 7.2's x-query-virtio works too; older ones lack it
            return
        for dev in devices:
            status = self.qmp("x-query-virtio-status", path=dev["path"])
            queues = [
                self.qmp("x-query-virtio-queue-status", path=dev["path"], queue=q)
                for q in range(int(status.get("num-vqs", 0)))
            ]
            state.virtio.append(dict(dev, status=status, queues=queues))


@atexit.register
def _kill_leftovers() -> None:
    for vm in list(_LIVE):
        vm.close()
