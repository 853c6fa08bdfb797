"""Run real QEMU guests, snapshot them every way QEMU can, and resume the snapshots.

Used by the test suite (tests/conftest.py wires it into pytest) and by demo scripts::

    from vmstate_gdb.harness import SCENARIOS, build_snapshot, restore
    snap = build_snapshot(SCENARIOS["small-pc-e1000"], "/tmp/snaps")
    with restore(snap, "/tmp/snaps") as vm:
        print(vm.wait_for_ticks(2))
"""

from vmstate_gdb.harness.config import (
    GuestConfig,
    Nic,
    QemuBinaries,
    QemuUnavailable,
    find_qemu,
    kvm_unavailable,
    render_argv,
)
from vmstate_gdb.harness.console import Tick, parse_tick, parse_ticks
from vmstate_gdb.harness.guests import GuestImage, GuestUnavailable, guest_image, repo_root
from vmstate_gdb.harness.machine import STARTED_PIDS, QemuVM, pid_alive
from vmstate_gdb.harness.scenarios import (
    ARM_SCENARIOS,
    KVM_SCENARIOS,
    SCENARIOS,
    Scenario,
    build_snapshot,
    check_available,
)
from vmstate_gdb.harness.snapshot import (
    METHODS,
    Snapshot,
    capture,
    migrate_into,
    restore,
    wait_incoming,
    wait_migration,
)
from vmstate_gdb.harness.state import RecordedState, parse_info_pci, parse_info_registers

__all__ = [
    "GuestConfig",
    "Nic",
    "QemuBinaries",
    "QemuUnavailable",
    "find_qemu",
    "kvm_unavailable",
    "render_argv",
    "Tick",
    "parse_tick",
    "parse_ticks",
    "GuestImage",
    "GuestUnavailable",
    "guest_image",
    "repo_root",
    "STARTED_PIDS",
    "QemuVM",
    "pid_alive",
    "SCENARIOS",
    "KVM_SCENARIOS",
    "ARM_SCENARIOS",
    "Scenario",
    "build_snapshot",
    "check_available",
    "METHODS",
    "Snapshot",
    "capture",
    "migrate_into",
    "restore",
    "wait_incoming",
    "wait_migration",
    "RecordedState",
    "parse_info_pci",
    "parse_info_registers",
]
