"""Capture a stopped VM into a snapshot, record what QEMU said about it, and resume it.

Ways to capture (``method``):

* ``exec``       ``migrate`` to ``exec:cat > FILE`` -> a plain migration stream
* ``file``       ``migrate`` to ``file:FILE`` (QEMU >= 8.2)
* ``mapped-ram`` ``file:`` with the mapped-ram capability (QEMU >= 9.0): RAM at fixed offsets
* ``savevm``     HMP ``savevm TAG`` into the VM's qcow2 disk -> an internal qcow2 snapshot

A config with ``accel="kvm"`` boots under TCG and is moved into a KVM QEMU by
:func:`migrate_into` before any of these (see scenarios.build_snapshot).

Each snapshot gets ``FILE.meta.json`` (:class:`Snapshot`): config, QEMU version, the argv to
resume it, the state QEMU reported at stop time and the last TICK seen before the stop.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmstate_gdb.errors import QemuError
from vmstate_gdb.harness.config import GuestConfig, render_argv
from vmstate_gdb.harness.console import Tick
from vmstate_gdb.harness.guests import fingerprint, guest_image
from vmstate_gdb.harness.machine import QemuVM
from vmstate_gdb.harness.state import RecordedState

METHODS = ("exec", "file", "mapped-ram", "savevm")
MIGRATION_TIMEOUT = 60.0
#: First QEMU versions with each method (``file:`` URIs came in 8.2, mapped-ram in 9.0).
MIN_VERSION = {"exec": (0, 0), "file": (8, 2), "mapped-ram": (9, 0), "savevm": (0, 0)}


@dataclass
class Snapshot:
    """A snapshot file and how it came to be; saved as ``<path>.meta.json``."""

    path: str
    format: str  # "stream" | "qcow2"
    method: str  # one of METHODS
    config: GuestConfig
    qemu_version: str
    source_argv: list[str]
    resume_argv: list[str]
    #: QMP commands to send (in order) on ``resume_argv``'s QMP socket; the last is ``cont``,
    #: to be sent only once ``query-status`` has left ``inmigrate`` (a ``cont`` during the load
    #: is overridden by the paused runstate carried in the stream).
    resume_qmp: list[dict[str, Any]]
    state: RecordedState
    last_tick: Tick | None
    tag: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    name: str | None = None
    #: digest of the guest's boot files (see guests.fingerprint), to detect stale cached snapshots
    guest_fingerprint: str | None = None
    #: the serial console up to the stop: what the guest itself printed (its own view of its state)
    console: str = ""

    @property
    def meta_path(self) -> Path:
        return Path(self.path + ".meta.json")

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format,
            "method": self.method,
            "tag": self.tag,
            "name": self.name,
            "config": self.config.to_json(),
            "qemu_version": self.qemu_version,
            "source_argv": self.source_argv,
            "resume_argv": self.resume_argv,
            "resume_qmp": self.resume_qmp,
            "state": self.state.to_json(),
            "last_tick": self.last_tick.to_json() if self.last_tick else None,
            "timings": self.timings,
            "guest_fingerprint": self.guest_fingerprint,
            "console": self.console,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Snapshot:
        data = dict(data)
        data["config"] = GuestConfig.from_json(data["config"])
        data["state"] = RecordedState.from_json(data["state"])
        data["last_tick"] = Tick.from_json(data.get("last_tick"))
        return cls(**data)

    def save(self) -> Path:
        tmp = self.meta_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1))
        tmp.replace(self.meta_path)
        return self.meta_path

    @classmethod
    def load(cls, path: str | Path) -> Snapshot:
        """Load from the snapshot file's path or from its ``.meta.json``."""
        path = str(path)
        meta = Path(path if path.endswith(".meta.json") else path + ".meta.json")
        return cls.from_json(json.loads(meta.read_text()))

    def resume_command(self) -> str:
        """The resume argv as one shell line (for printing)."""
        return shlex.join(self.resume_argv)


def _check_version(vm: QemuVM, method: str) -> None:
    need = MIN_VERSION[method]
    if vm.version()[:2] < need:
        raise QemuError(
            f"{method} snapshots need QEMU >= {need[0]}.{need[1]}; {vm.config.binaries.system} "
            f"is {vm.version_string()}"
        )


def set_mapped_ram(vm: QemuVM) -> None:
    vm.qmp("migrate-set-capabilities", capabilities=[{"capability": "mapped-ram", "state": True}])


def wait_migration(vm: QemuVM, timeout: float = MIGRATION_TIMEOUT) -> dict[str, Any]:
    """Poll ``query-migrate`` until ``completed``; raise on failed/cancelled or after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        info = vm.qmp("query-migrate")
        status = info.get("status")
        if status == "completed":
            return info
        if status in ("failed", "cancelled"):
            vm._fail(f"migration {status}: {info.get('error-desc', info)}")
        if time.monotonic() > deadline:
            vm._fail(f"migration not completed within {timeout:.0f} s (status {status})")
        time.sleep(0.1)


def wait_incoming(vm: QemuVM, timeout: float = MIGRATION_TIMEOUT) -> None:
    """Wait until the destination has loaded the stream (it leaves ``inmigrate``)."""
    deadline = time.monotonic() + timeout
    while True:
        status = vm.status()
        if status != "inmigrate":
            break
        if time.monotonic() > deadline:
            vm._fail(f"incoming migration not finished within {timeout:.0f} s (status {status})")
        time.sleep(0.1)
    info = vm.qmp("query-migrate")
    if info.get("status") not in (None, "completed"):
        vm._fail(f"incoming migration ended as {info.get('status')}: {info.get('error-desc', info)}")


def migrate_into(vm: QemuVM, config: GuestConfig, *, name: str | None = None) -> QemuVM:
    """Stop ``vm`` and live-migrate it into a new QEMU started for ``config`` (typically the
    same VM with ``accel="kvm"``) over a Unix socket. Returns the new VM, loaded and paused;
    the caller owns it and still owns (and should close) ``vm``."""
    vm.qmp("stop")
    dest = QemuVM(
        config, vm.work_dir, name=name or f"{vm.name}-to-{config.accel}", incoming="defer", guest=vm.guest
    )
    dest.start()
    try:
        uri = f"unix:{dest.qmp_path.with_name('migrate.sock')}"
        dest.qmp("migrate-incoming", uri=uri)
        vm.qmp("migrate", uri=uri)
        wait_migration(vm)
        wait_incoming(dest)
    except BaseException:
        dest.close()
        raise
    return dest


def _hmp_checked(vm: QemuVM, command: str) -> str:
    reply = vm.hmp(command)
    # HMP reports failure only as text; savevm/loadvm print nothing on success.
    if reply.strip() and re.search(r"error|fail|not|can't|cannot", reply, re.I):
        vm._fail(f"HMP `{command}` failed: {reply.strip()}")
    return reply


def capture(
    vm: QemuVM,
    path: str | Path,
    method: str = "exec",
    *,
    tag: str = "snap0",
    keep_running: bool = False,
    name: str | None = None,
) -> Snapshot:
    """Stop ``vm``, record its state, and snapshot it by ``method`` into ``path`` (for ``savevm``
    the snapshot goes into the VM's qcow2 disk and ``path`` is ignored). Afterwards the VM is
    killed, or resumed with ``cont`` if ``keep_running``."""
    if method not in METHODS:
        raise ValueError(f"unknown capture method {method!r}; expected one of {METHODS}")
    _check_version(vm, method)
    started = time.monotonic()
    vm.qmp("stop")
    stopped_at = time.time()
    state = vm.record_state()
    state.stopped_at = stopped_at
    console = vm.serial_text()
    ticks = vm.ticks()
    last_tick = ticks[-1] if ticks else None
    timings: dict[str, float] = {}
    resume_qmp: list[dict[str, Any]] = []
    t0 = time.monotonic()
    if method == "savevm":
        if vm.disk is None:
            raise QemuError(f"savevm needs a qcow2 disk; {vm.name}'s config has disk_mib=None")
        _hmp_checked(vm, f"savevm {tag}")
        listing = vm.hmp("info snapshots")
        if not re.search(rf"\s{re.escape(tag)}\s", listing):
            vm._fail(f"savevm {tag}: tag missing from `info snapshots`:\n{listing}")
        path = str(vm.disk)
        fmt = "qcow2"
        resume = dict(loadvm=tag)
    else:
        path = str(Path(path).resolve())
        fmt = "stream"
        if method == "exec":
            uri = f"exec:cat > {shlex.quote(path)}"
            resume = dict(incoming=f"exec:cat {shlex.quote(path)}")
        else:
            if method == "mapped-ram":
                set_mapped_ram(vm)
                resume_qmp.append(
                    {
                        "execute": "migrate-set-capabilities",
                        "arguments": {"capabilities": [{"capability": "mapped-ram", "state": True}]},
                    }
                )
                resume_qmp.append({"execute": "migrate-incoming", "arguments": {"uri": f"file:{path}"}})
                resume = dict(incoming="defer")
            else:
                resume = dict(incoming=f"file:{path}")
            uri = f"file:{path}"
        vm.qmp("migrate", uri=uri)
        wait_migration(vm)
    resume_qmp.append({"execute": "cont"})
    timings["capture_s"] = time.monotonic() - t0
    timings["stop_to_done_s"] = time.monotonic() - started
    resume_argv = render_argv(
        vm.config,
        list(vm.guest.boot_args),
        serial="stdio",
        # QMP: mapped-ram must be set before migrate-incoming, and a stream of a stopped VM
        # loads paused (the runstate travels in the stream), so something must send "cont".
        qmp_socket=path + ".qmp.sock",
        disk=str(vm.disk) if vm.disk else None,
        **resume,
    )
    snapshot = Snapshot(
        path=path,
        format=fmt,
        method=method,
        tag=tag if method == "savevm" else None,
        config=vm.config,
        qemu_version=vm.version_string(),
        source_argv=vm.argv,
        resume_argv=resume_argv,
        resume_qmp=resume_qmp,
        state=state,
        last_tick=last_tick,
        timings=timings,
        name=name,
        guest_fingerprint=fingerprint(vm.guest),
        console=console,
    )
    snapshot.save()
    if keep_running:
        vm.qmp("cont")
    else:
        vm.close()
    return snapshot


def restore(snapshot: Snapshot, work_dir: str | Path, *, name: str = "restore", cont: bool = True) -> QemuVM:
    """Start a new VM from ``snapshot`` and wait until it is loaded; ``cont`` it unless told not
    to. The caller owns the returned VM (use it as a context manager)."""
    config = snapshot.config
    work_dir = Path(work_dir)
    guest = guest_image(config.kind, work_dir)
    if snapshot.method == "savevm":
        vm = QemuVM(config, work_dir, name=name, disk=snapshot.path, paused=True, guest=guest)
    elif snapshot.method == "exec":
        vm = QemuVM(
            config, work_dir, name=name, incoming=f"exec:cat {shlex.quote(snapshot.path)}", guest=guest
        )
    else:
        vm = QemuVM(config, work_dir, name=name, incoming="defer", guest=guest)
    vm.start()
    try:
        if snapshot.method == "savevm":
            _hmp_checked(vm, f"loadvm {snapshot.tag}")
        else:
            if snapshot.method in ("file", "mapped-ram"):
                _check_version(vm, snapshot.method)
                if snapshot.method == "mapped-ram":
                    set_mapped_ram(vm)
                vm.qmp("migrate-incoming", uri=f"file:{snapshot.path}")
            wait_incoming(vm)
        if cont:
            vm.qmp("cont")
    except BaseException:
        vm.close()
        raise
    return vm
