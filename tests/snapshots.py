"""Session-scoped snapshot fixtures: the pytest side of vmstate_gdb.harness.

A test asks for a snapshot by scenario name through the ``snapshot`` factory fixture::

    def test_something(snapshot):
        snap = snapshot("small-pc-e1000")      # built on first use, shared by the session

or through the per-scenario fixture ``snapshot_small_pc_e1000`` (dashes become underscores).
Scenarios whose QEMU build or guest is missing skip with the reason. Snapshots go to a
``tmp_path_factory`` directory, or to ``$VMSTATE_TEST_CACHE`` (reused across runs while config,
guest build and QEMU version match).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vmstate_gdb.errors import QemuError
from vmstate_gdb.harness import (
    ARM_SCENARIOS,
    SCENARIOS,
    STARTED_PIDS,
    GuestConfig,
    GuestUnavailable,
    QemuUnavailable,
    QemuVM,
    Snapshot,
    build_snapshot,
    find_qemu,
    pid_alive,
    restore,
)
from vmstate_gdb.harness.guests import GuestImage, build_guest, guest_image

CACHE_ENV = "VMSTATE_TEST_CACHE"
#: every scenario the ``snapshot`` factory builds (the x86 catalogue's fixtures are generated)
CATALOGUE = {**SCENARIOS, **ARM_SCENARIOS}


def fixture_name(scenario: str) -> str:
    return "snapshot_" + scenario.replace("-", "_")


class GuestBuilds:
    """Runs each guest's build at most once per session, lazily; remembers failures."""

    def __init__(self, work_dir: Path):
        self.work_dir = work_dir
        self._images: dict[str, GuestImage] = {}
        self._skips: dict[str, str] = {}

    def image(self, kind: str) -> GuestImage:
        if kind in self._skips:
            pytest.skip(self._skips[kind])
        if kind not in self._images:
            try:
                if kind != "dummy":
                    build_guest(kind)
                self._images[kind] = guest_image(kind, self.work_dir, build=False)
            except GuestUnavailable as exc:
                self._skips[kind] = f"{kind} guest unavailable: {exc}"
                pytest.skip(self._skips[kind])
        return self._images[kind]


class SnapshotCache:
    """Builds each scenario's snapshot once; a scenario that failed fails again at once."""

    def __init__(self, directory: Path, guests: GuestBuilds, reuse: bool):
        self.directory = directory
        self.guests = guests
        self.reuse = reuse
        self._built: dict[str, Snapshot] = {}
        self._failed: dict[str, str] = {}

    def __call__(self, name: str) -> Snapshot:
        if name not in CATALOGUE:
            raise KeyError(f"no snapshot scenario {name!r}; known: {', '.join(CATALOGUE)}")
        if name in self._built:
            return self._built[name]
        if name in self._failed:
            pytest.fail(f"snapshot {name} failed to build earlier in this session:\n{self._failed[name]}")
        scenario = CATALOGUE[name]
        try:
            find_qemu(scenario.config.qemu, scenario.config.target)
        except QemuUnavailable as exc:
            pytest.skip(f"{name}: {exc}")
        self.guests.image(scenario.config.kind)
        try:
            snap = build_snapshot(scenario, self.directory, reuse=self.reuse)
        except QemuError as exc:
            self._failed[name] = str(exc)
            raise
        self._built[name] = snap
        return snap


@pytest.fixture(scope="session")
def snapshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where session snapshots live: $VMSTATE_TEST_CACHE, or a fresh temp dir."""
    cache = os.environ.get(CACHE_ENV)
    if cache:
        path = Path(cache)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("snapshots")


@pytest.fixture(scope="session")
def guest_builds(snapshot_dir: Path) -> GuestBuilds:
    return GuestBuilds(snapshot_dir)


@pytest.fixture(scope="session")
def snapshot(snapshot_dir: Path, guest_builds: GuestBuilds) -> Callable[[str], Snapshot]:
    """Factory: ``snapshot("small-pc-e1000")`` -> the session's :class:`Snapshot` of that scenario."""
    return SnapshotCache(snapshot_dir, guest_builds, reuse=bool(os.environ.get(CACHE_ENV)))


def _scenario_fixture(name: str):
    @pytest.fixture(scope="session", name=fixture_name(name))
    def _fixture(snapshot: Callable[[str], Snapshot]) -> Snapshot:
        return snapshot(name)

    _fixture.__doc__ = f"The session snapshot of scenario {name} ({SCENARIOS[name].method})."
    return _fixture


SCENARIO_FIXTURES = {fixture_name(name): _scenario_fixture(name) for name in SCENARIOS}


@pytest.fixture
def qemu_vm(tmp_path: Path, guest_builds: GuestBuilds) -> Iterator[Callable[..., QemuVM]]:
    """Factory: ``qemu_vm(GuestConfig(...), **QemuVM kwargs)`` -> a started VM, killed at teardown
    (also when the test fails)."""
    vms: list[QemuVM] = []

    def start(config: GuestConfig, **kwargs) -> QemuVM:
        kwargs.setdefault("guest", guest_builds.image(config.kind))
        vm = QemuVM(config, tmp_path, **kwargs)
        vms.append(vm)
        return vm.start()

    yield start
    for vm in vms:
        vm.close()


@pytest.fixture
def restored(tmp_path: Path, guest_builds: GuestBuilds) -> Iterator[Callable[..., QemuVM]]:
    """Factory: ``restored(snap)`` -> a running VM resumed from ``snap``, killed at teardown."""
    vms: list[QemuVM] = []

    def start(snap: Snapshot, **kwargs) -> QemuVM:
        guest_builds.image(snap.config.kind)
        vm = restore(snap, tmp_path, **kwargs)
        vms.append(vm)
        return vm

    yield start
    for vm in vms:
        vm.close()


@pytest.fixture(scope="session", autouse=True)
def _no_qemu_left_behind() -> Iterator[None]:
    """At the end of the session, every QEMU this process started must be gone."""
    yield
    alive = [pid for pid in STARTED_PIDS if pid_alive(pid)]
    if alive:
        for pid in alive:
            try:
                os.killpg(pid, 9)
            except ProcessLookupError:
                pass
        warnings.warn(f"QEMU processes still alive at session end (killed now): {alive}", stacklevel=1)
