"""pytest wiring: markers, and the session snapshot fixtures of tests/snapshots.py."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
from snapshots import (  # noqa: F401  (fixtures are found by name in this module)
    SCENARIO_FIXTURES,
    _no_qemu_left_behind,
    fixture_name,
    guest_builds,
    qemu_vm,
    restored,
    snapshot,
    snapshot_dir,
)

from vmstate_gdb.harness import SCENARIOS

globals().update(SCENARIO_FIXTURES)

MARKERS = {
    "unit": "fast tests on synthetic bytes, no QEMU",
    "qemu": "boots real QEMU guests",
    "qemu10": "needs the QEMU 10 installed beside the system QEMU",
    "linux": "boots the Debian Linux test guest",
    "kvm": "snapshots written by a QEMU under KVM (skip where /dev/kvm is absent or unusable)",
}


def pytest_configure(config: pytest.Config) -> None:
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    # the index cache of the session (its tests point it elsewhere), not the user's ~/.cache
    if "VMSTATE_INDEX_CACHE" not in os.environ:
        os.environ["VMSTATE_INDEX_CACHE"] = tempfile.mkdtemp(prefix="vmstate-index-cache-")
        config.add_cleanup(lambda: shutil.rmtree(os.environ.pop("VMSTATE_INDEX_CACHE"), ignore_errors=True))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses a per-scenario fixture gets that scenario's markers (qemu, qemu10, linux)."""
    by_fixture = {fixture_name(name): scenario for name, scenario in SCENARIOS.items()}
    for item in items:
        for fixture in getattr(item, "fixturenames", ()):
            scenario = by_fixture.get(fixture)
            if scenario is not None:
                for mark in scenario.markers:
                    item.add_marker(mark)


@pytest.fixture(scope="session")
def libvirtd():
    """A private session-mode libvirtd (tests/libvirtd.py); skips with the reason when unusable.
    Its dir is not under pytest's tmp (0700, root's): the daemon runs as nobody."""
    from pathlib import Path

    from libvirtd import Libvirtd

    daemon = Libvirtd(Path(tempfile.mkdtemp(prefix="vmstate-libvirtd-")))
    reason = daemon.unusable()
    if reason:
        pytest.skip(reason)
    try:
        daemon.start()  # its error carries the log's tail: the dir goes either way
        yield daemon
    finally:
        daemon.cleanup()
