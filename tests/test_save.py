"""vmstate-save's promise, judged by QEMU: the saved snapshot resumes, the VM continues from where it
stopped, and exactly our edits are visible to the guest."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys

import pytest
from guestinfo import small_symbols

from vmstate_gdb.errors import SaveError, VmstateError
from vmstate_gdb.harness import Nic
from vmstate_gdb.harness.console import parse_tick
from vmstate_gdb.mac import apply_mac_change, plan_mac_change
from vmstate_gdb.snapshot import Snapshot
from vmstate_gdb.writer import save

pytestmark = pytest.mark.qemu

NEW_MAC = "52:54:00:be:ef:42"


def digest(path: str) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def edited_meta(meta, out: str, macs: dict[str, str] | None = None):
    """The harness record for a saved output: same VM, new file, NIC mac= as the edit says."""
    nics = tuple(Nic(n.model, (macs or {}).get(n.mac, n.mac)) for n in meta.config.nics)
    return dataclasses.replace(meta, path=out, config=dataclasses.replace(meta.config, nics=nics))


def out_path(tmp_path, meta) -> str:
    return str(tmp_path / ("edited.qcow2" if meta.format == "qcow2" else "edited.vmstate"))


SMALL_MATRIX = [
    "small-pc-e1000",
    "small-q35-virtio-2cpu",
    "small-pc-rtl8139-2cpu",
    "small-q35-e1000-savevm",
    "small-pc-e1000-qemu10-file",
    "small-pc-e1000-qemu10-mapped",
    "small-q35-virtio-qemu10-savevm",
]


@pytest.mark.parametrize("name", SMALL_MATRIX)
def test_mac_register_and_zero_page_edits_resume(snapshot, restored, tmp_path, name):
    meta = snapshot(name)
    before = digest(meta.path)
    syms = small_symbols()
    out = out_path(tmp_path, meta)
    with Snapshot.open(meta.path, snapshot=meta.tag) as snap:
        change = plan_mac_change(snap, None, bytes.fromhex(NEW_MAC.replace(":", "")), memory=True)
        assert change.memory_hits, "the guest's own copy (guest_mac) must be found in RAM"
        assert syms["guest_mac"] - 0xFFFFFFFF80000000 in change.memory_hits
        apply_mac_change(snap, change)
        snap.set_register(0, "r12", 0x5EED)
        snap.virtual(0).write(syms["guest_note"], b"edited by vmstate\0")  # a zero page in the stream
        result = save(snap, out)
    assert result.plan.pages_added or result.plan.pages_in_place
    assert digest(meta.path) == before, "the input snapshot must never change"
    vm = restored(edited_meta(meta, out, {meta.config.nics[0].mac: NEW_MAC}))
    ticks = vm.wait_for_ticks(2, timeout=30)
    first = ticks[0]
    assert first.n > meta.last_tick.n, f"counter restarted: {first} after {meta.last_tick}"
    assert first.n <= meta.last_tick.n + 3
    line = [t for t in ticks][-1]
    assert line.sw_mac == NEW_MAC and line.hw_mac == NEW_MAC, line
    assert line.r12 == 0x5EED and line.note == "edited by vmstate", line
    if meta.config.nics[0].model == "virtio-net-pci":
        rx = vm.qmp("query-rx-filter")
        assert rx[0]["main-mac"] == NEW_MAC


@pytest.mark.parametrize("name", ["small-pc-e1000", "small-pc-e1000-qemu10-mapped"])
def test_save_without_edits_is_byte_identical_and_resumes(snapshot, restored, tmp_path, name):
    meta = snapshot(name)
    out = str(tmp_path / "same.vmstate")
    with Snapshot.open(meta.path) as snap:
        save(snap, out)
    assert digest(out) == digest(meta.path)
    vm = restored(edited_meta(meta, out))
    assert vm.wait_for_ticks(1)[0].n > meta.last_tick.n


def test_qcow2_output_passes_qemu_img_check(snapshot, tmp_path):
    meta = snapshot("small-q35-e1000-savevm")
    out = str(tmp_path / "checked.qcow2")
    with Snapshot.open(meta.path, snapshot=meta.tag) as snap:
        for i in range(40):  # many new PAGE records: the vmstate grows by clusters
            snap.physical.write(0x3000000 + i * 4096, b"grow" * 8)
        result = save(snap, out)
    assert result.plan.pages_added == 40
    check = subprocess.run([meta.config.binaries.img, "check", out], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    with Snapshot.open(out, snapshot=meta.tag) as again:
        assert again.physical.read(0x3000000 + 39 * 4096, 4) == b"grow"


def test_linux_guest_sees_new_macs(snapshot, restored, tmp_path):
    meta = snapshot("linux-pc-3nic")
    out = str(tmp_path / "linux.vmstate")
    new = {n.mac: f"52:54:00:77:00:{i:02x}" for i, n in enumerate(meta.config.nics, 1)}
    with Snapshot.open(meta.path) as snap:
        for nic in snap.nics():
            old = nic.mac.hex(":")
            change = plan_mac_change(snap, nic.name, bytes.fromhex(new[old].replace(":", "")), memory=True)
            assert change.memory_hits, f"{nic.model}: the kernel's copy of {old} was not found"
            apply_mac_change(snap, change)
        save(snap, out)
    vm = restored(edited_meta(meta, out, new))
    vm.wait_for_line(r"TICK \d+ eth2 ", timeout=60)
    start = len(vm.serial_text())
    vm.wait_for_line(r"TICK \d+ eth2 ", timeout=60, start=start)
    lines = [ln for ln in vm.serial_text()[start:].splitlines() if ln.startswith("TICK")]
    seen = {ln.split()[2]: ln.split()[3] for ln in lines}
    assert sorted(seen.values()) == sorted(new.values()), lines
    rx = vm.qmp("query-rx-filter")
    assert any(r["main-mac"] in new.values() for r in rx)


def test_refuses_to_overwrite_the_input_and_fails_cleanly(snapshot, tmp_path):
    meta = snapshot("small-pc-e1000")
    before = digest(meta.path)
    link = tmp_path / "hardlink.vmstate"
    os.link(meta.path, link)
    sym = tmp_path / "symlink.vmstate"
    sym.symlink_to(meta.path)
    with Snapshot.open(meta.path) as snap:
        snap.set_register(0, "rax", 1)
        for target in (meta.path, str(link), str(sym), meta.path + ".meta.json"):
            with pytest.raises(SaveError, match="input"):
                save(snap, target)
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        if os.geteuid() != 0:  # root writes anywhere; the directory check below still applies
            with pytest.raises(SaveError):
                save(snap, str(ro / "x.vmstate"))
        with pytest.raises(SaveError, match="does not exist"):
            save(snap, str(tmp_path / "missing" / "x.vmstate"))
    assert digest(meta.path) == before
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".part")]


def test_a_failed_save_leaves_nothing_behind(snapshot, tmp_path, monkeypatch):
    meta = snapshot("small-pc-e1000")
    from vmstate_gdb.writer import emit

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(emit, "copy_range", broken)
    with Snapshot.open(meta.path) as snap:
        snap.set_register(0, "rax", 2)
        with pytest.raises(VmstateError, match="No space left"):
            save(snap, str(tmp_path / "full.vmstate"))
    assert os.listdir(tmp_path) == []


def test_cli_patch_end_to_end(snapshot, restored, tmp_path):
    meta = snapshot("small-pc-rtl8139-2cpu")
    out = str(tmp_path / "cli.vmstate")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "vmstate_gdb",
            "patch",
            meta.path,
            out,
            "--mac",
            NEW_MAC,
            "--memory",
            "--reg",
            "0:r12=0x77",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "rtl8139" in run.stdout and f"mac={NEW_MAC}" in run.stdout and "-incoming" in run.stdout
    vm = restored(edited_meta(meta, out, {meta.config.nics[0].mac: NEW_MAC}))
    tick = vm.wait_for_ticks(1)[0]
    assert tick.sw_mac == NEW_MAC and tick.hw_mac == NEW_MAC and tick.r12 == 0x77


def test_parse_tick_fields():
    t = parse_tick("TICK 7 sw=52:54:00:12:34:56 hw=52:54:00:12:34:56 r12=0x1 note=")
    assert t.n == 7 and t.sw_mac == "52:54:00:12:34:56"


def test_qcow2_vmstate_grows_into_new_l2_tables(qemu_vm, tmp_path):
    """4 KiB clusters: one L2 table maps only 2 MiB, so 3 MiB of new page records need new L2
    tables and clusters. qemu-img check stays clean and QEMU's loadvm sees the pages and runs on."""
    from vmstate_gdb.harness import GuestConfig
    from vmstate_gdb.harness import Nic as HNic

    config = GuestConfig("small", "pc", 1, 128, (HNic("e1000", "52:54:00:12:34:56"),), disk_mib=64)
    disk = tmp_path / "small-clusters.qcow2"
    subprocess.run(
        [config.binaries.img, "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", str(disk), "64M"],
        check=True,
    )
    vm = qemu_vm(config, disk=str(disk))
    vm.wait_ready()
    before = vm.wait_for_ticks(2)[-1]
    vm.qmp("stop")
    assert "rror" not in vm.hmp("savevm grow")
    vm.qmp("quit")
    vm.close()
    out = str(tmp_path / "grown.qcow2")
    with Snapshot.open(str(disk), snapshot="grow") as snap:
        for i in range(768):
            snap.physical.write(0x1000000 + i * 4096, b"grown %d" % i)
        result = save(snap, out)
    assert result.plan.pages_added == 768
    check = subprocess.run([config.binaries.img, "check", out], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    resumed = qemu_vm(config, disk=out, paused=True, name="grown")
    assert "rror" not in resumed.hmp("loadvm grow")
    assert "0x67 0x72 0x6f 0x77 0x6e 0x20 0x37 0x36" in resumed.hmp(f"xp /8xb {0x1000000 + 767 * 4096:#x}")
    resumed.qmp("cont")
    assert resumed.wait_for_ticks(1)[-1].n > before.n


def test_fragmented_qcow2_vmstate_saves_both_ways(qemu_vm, tmp_path):
    """512-byte clusters scatter the vmstate over dozens of extents (no single view of it): the
    edited qcow2 passes qemu-img check and loadvm runs on with the edit; the stream form opens."""
    from vmstate_gdb.harness import GuestConfig
    from vmstate_gdb.harness import Nic as HNic

    config = GuestConfig("small", "pc", 1, 128, (HNic("e1000", "52:54:00:12:34:56"),), disk_mib=64)
    disk = tmp_path / "tiny-clusters.qcow2"
    subprocess.run(
        [config.binaries.img, "create", "-q", "-f", "qcow2", "-o", "cluster_size=512", str(disk), "64M"],
        check=True,
    )
    vm = qemu_vm(config, disk=str(disk))
    vm.wait_ready()
    vm.wait_for_ticks(2)
    vm.qmp("stop")
    assert "rror" not in vm.hmp("savevm frag")
    vm.qmp("quit")
    vm.close()
    out, stream = str(tmp_path / "frag.qcow2"), str(tmp_path / "frag.vmstate")
    with Snapshot.open(str(disk), snapshot="frag") as snap:
        assert snap.source.view() is None and len(snap.source.extents) > 10
        snap.set_register(0, "r12", 0xF4A6)
        save(snap, out)
        save(snap, stream, fmt="stream")
    check = subprocess.run([config.binaries.img, "check", out], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    with Snapshot.open(stream) as again:
        assert again.cpus[0]["r12"] == 0xF4A6
    resumed = qemu_vm(config, disk=out, paused=True, name="frag")
    assert "rror" not in resumed.hmp("loadvm frag")
    resumed.qmp("cont")
    assert resumed.wait_for_ticks(1)[-1].r12 == 0xF4A6
