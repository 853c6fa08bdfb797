"""Snapshots written by a QEMU under KVM: the reader and the writer against what users really have.

The guests boot under TCG and are live-migrated into a QEMU started with ``-accel kvm``, which
writes the stream (harness KVM_SCENARIOS). Such a stream has a ``kvmclock`` section and cpu
subsections that only KVM fills (``tsc_khz``), and it loads only into a QEMU under KVM
("Unknown savevm section or instance 'kvmclock' 0" under TCG). Every test here skips, with the
reason, where /dev/kvm is absent or QEMU cannot use it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import pytest
from guestinfo import HIGHER_HALF, assert_registers_equal_qemus, expected_macs, linux_symbols, small_symbols
from snapshots import CACHE_ENV

from vmstate_gdb.errors import QemuError
from vmstate_gdb.harness import (
    KVM_SCENARIOS,
    Nic,
    QemuUnavailable,
    Snapshot,
    build_snapshot,
    find_qemu,
    kvm_unavailable,
)
from vmstate_gdb.mac import apply_mac_change, plan_mac_change
from vmstate_gdb.snapshot import Snapshot as Reader
from vmstate_gdb.writer import save

pytestmark = [pytest.mark.qemu, pytest.mark.kvm]

SMALL = "small-pc-rtl8139-kvm"
LINUX = "linux-pc-3nic-kvm"
SMALLS = [SMALL, pytest.param("small-pc-rtl8139-kvm-qemu10", marks=pytest.mark.qemu10)]
ALL = SMALLS + [pytest.param(LINUX, marks=pytest.mark.linux)]
NEW_MAC = "52:54:00:be:ef:43"


@pytest.fixture(scope="session")
def kvm_snapshot(snapshot_dir, guest_builds) -> Callable[[str], Snapshot]:
    """Factory: ``kvm_snapshot(name)`` -> the session's snapshot of a KVM scenario, built once;
    skips when KVM (or that QEMU, or the guest) is not usable here."""
    built: dict[str, Snapshot] = {}
    failed: dict[str, str] = {}
    reuse = bool(os.environ.get(CACHE_ENV))

    def get(name: str) -> Snapshot:
        if name in built:
            return built[name]
        if name in failed:
            pytest.fail(f"snapshot {name} failed to build earlier in this session:\n{failed[name]}")
        scenario = KVM_SCENARIOS[name]
        try:
            find_qemu(scenario.config.qemu)
        except QemuUnavailable as exc:
            pytest.skip(f"{name}: {exc}")
        reason = kvm_unavailable(scenario.config.qemu)
        if reason is not None:
            pytest.skip(f"{name}: KVM unusable here: {reason}")
        guest_builds.image(scenario.config.kind)
        try:
            built[name] = build_snapshot(scenario, snapshot_dir, reuse=reuse)
        except QemuError as exc:
            failed[name] = str(exc)
            raise
        return built[name]

    return get


def open_snap(meta) -> Reader:
    return Reader.open(meta.path, snapshot=meta.tag)


@pytest.mark.parametrize("name", ALL)
def test_kvm_registers_equal_qemu_info_registers(kvm_snapshot, name):
    """The KVM QEMU's `info registers` at stop time (KVM_GET_REGS/SREGS) equals what we decode."""
    meta = kvm_snapshot(name)
    assert meta.resume_argv[1:3] == ["-accel", "kvm"]
    with open_snap(meta) as snap:
        assert len(snap.cpus) == meta.config.cpus
        assert_registers_equal_qemus(snap, meta)
        for cpu in snap.cpus:
            assert cpu.cpu_mode == "long" and cpu.paging_mode == "4-level"


@pytest.mark.parametrize("name", ALL)
def test_kvm_stream_has_kvmclock_and_kvm_cpu_subsections(kvm_snapshot, name):
    meta = kvm_snapshot(name)
    with open_snap(meta) as snap:
        assert snap.describe()["warnings"] == []
        keys = [d.key for d in snap.devices.devices]
        assert "kvmclock" in keys and "kvm-tpr-opt" in keys
        # kvmclock: the guest clock in ns at stop time, and that it was read from a stable host clock
        assert 0 < snap.field_value("kvmclock/clock") < 3600 * 10**9
        assert snap.field_value("kvmclock/clock_is_reliable/clock_is_reliable") == 1
        # cpu subsection written only under KVM: the vCPU's TSC frequency
        assert 100_000 < snap.field_value("cpu/tsc_khz/env.tsc_khz") < 10_000_000
        if KVM_SCENARIOS[name].kvm_ticks:  # ran under KVM; a TCG source leaves env.tsc at 0
            assert snap.cpus[0]["tsc"] > 0
        assert snap.field_value("apic/apicbase") & 0xFFFFF000 == 0xFEE00000


@pytest.mark.parametrize("name", ALL)
def test_kvm_nic_macs_equal_the_command_line(kvm_snapshot, name):
    meta = kvm_snapshot(name)
    with open_snap(meta) as snap:
        found = {n.model: n.mac.hex(":") for n in snap.nics()}
    assert found == expected_macs(meta)
    assert [n["macaddr"] for n in meta.state.network.values()] == [n.mac for n in meta.config.nics]


@pytest.mark.parametrize("name", SMALLS)
def test_kvm_small_guest_tick_and_mac_through_virtual_addresses(kvm_snapshot, name):
    meta = kvm_snapshot(name)
    syms = small_symbols()
    with open_snap(meta) as snap:
        vm = snap.virtual(0)
        assert snap.cpus[0]["rip"] >= HIGHER_HALF
        for sym, size in (("guest_mac", 6), ("tick", 8)):
            assert vm.read(syms[sym], size) == snap.physical.read(syms[sym] - HIGHER_HALF, size), sym
        assert vm.read(syms["guest_mac"], 6).hex(":") == meta.config.nics[0].mac
        tick = int.from_bytes(vm.read(syms["tick"], 8), "little")
        # the KVM QEMU ran the guest on: its last TICK line came from there
        assert meta.last_tick is not None and meta.last_tick.n >= 3
        assert tick in (meta.last_tick.n, meta.last_tick.n + 1)


@pytest.mark.linux
def test_kvm_linux_banner_through_the_kvm_cr3(kvm_snapshot):
    meta = kvm_snapshot(LINUX)
    with open_snap(meta) as snap:
        assert snap.virtual(0).read(linux_symbols()["linux_banner"], 14) == b"Linux version "


@pytest.mark.parametrize("name", SMALLS)
def test_kvm_snapshot_resumes_under_kvm(kvm_snapshot, restored, name):
    meta = kvm_snapshot(name)
    vm = restored(meta)
    ticks = vm.wait_for_ticks(2, timeout=30)
    assert meta.last_tick.n < ticks[0].n <= meta.last_tick.n + 3, (meta.last_tick, ticks[0])
    assert all((t.sw_mac, t.hw_mac) == (meta.config.nics[0].mac,) * 2 for t in ticks), ticks


@pytest.mark.parametrize("name", SMALLS)
def test_kvm_mac_and_register_edits_resume_under_kvm(kvm_snapshot, restored, tmp_path, name):
    meta = kvm_snapshot(name)
    syms = small_symbols()
    out = str(tmp_path / "edited.vmstate")
    with open_snap(meta) as snap:
        change = plan_mac_change(snap, None, bytes.fromhex(NEW_MAC.replace(":", "")), memory=True)
        assert syms["guest_mac"] - HIGHER_HALF in change.memory_hits
        apply_mac_change(snap, change)
        snap.set_register(0, "r12", 0x5EED)
        save(snap, out)
    with Reader.open(out) as again:
        assert again.cpus[0]["r12"] == 0x5EED
        assert {n.mac.hex(":") for n in again.nics()} == {NEW_MAC}
        assert again.field_value("cpu/tsc_khz/env.tsc_khz") > 0  # KVM subsections kept
    nics = tuple(Nic(n.model, NEW_MAC) for n in meta.config.nics)
    edited = dataclasses.replace(meta, path=out, config=dataclasses.replace(meta.config, nics=nics))
    vm = restored(edited)
    ticks = vm.wait_for_ticks(2, timeout=30)
    assert meta.last_tick.n < ticks[0].n <= meta.last_tick.n + 3, (meta.last_tick, ticks[0])
    last = ticks[-1]
    assert (last.sw_mac, last.hw_mac, last.r12) == (NEW_MAC, NEW_MAC, 0x5EED), last.line


@pytest.mark.linux
def test_kvm_linux_mac_edits_save_and_read_back(kvm_snapshot, tmp_path):
    """The Linux KVM stream is edited and saved like a TCG one (it is not resumed: the PVM-type
    KVM of the development machines stops a stock kernel with an emulation failure)."""
    meta = kvm_snapshot(LINUX)
    out = str(tmp_path / "linux-kvm.vmstate")
    new = {n.mac: f"52:54:00:77:01:{i:02x}" for i, n in enumerate(meta.config.nics, 1)}
    with open_snap(meta) as snap:
        for nic in snap.nics():
            old = nic.mac.hex(":")
            change = plan_mac_change(snap, nic.name, bytes.fromhex(new[old].replace(":", "")), memory=True)
            assert change.memory_hits, f"{nic.model}: the kernel's copy of {old} was not found"
            apply_mac_change(snap, change)
        save(snap, out)
    with open_snap(meta) as snap:
        clock = snap.field_value("kvmclock/clock")
    with Reader.open(out) as again:
        assert sorted(n.mac.hex(":") for n in again.nics()) == sorted(new.values())
        assert again.field_value("kvmclock/clock") == clock
