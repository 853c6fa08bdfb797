"""The reader against QEMU itself: what we decode from snapshots equals what QEMU said at stop time."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from guestinfo import HIGHER_HALF, assert_registers_equal_qemus, expected_macs, linux_symbols, small_symbols

from vmstate_gdb.errors import AddressError, VmstateError
from vmstate_gdb.snapshot import Snapshot

pytestmark = pytest.mark.qemu

SMALL = [
    "small-pc-e1000",
    "small-q35-virtio-2cpu",
    "small-pc-rtl8139-2cpu",
    "small-q35-e1000-savevm",
    "small-pc-e1000-qemu10-file",
    "small-pc-e1000-qemu10-mapped",
    "small-q35-virtio-qemu10-savevm",
]
ALL = SMALL + ["small-pc-bigmem", "small-q35-bigmem-qemu10", "linux-pc-3nic", "linux-q35-3nic-qemu10"]


def open_snap(meta) -> Snapshot:
    return Snapshot.open(meta.path, snapshot=meta.tag)


@pytest.mark.parametrize("name", ALL)
def test_registers_equal_qemu_info_registers(snapshot, name):
    meta = snapshot(name)
    with open_snap(meta) as snap:
        assert len(snap.cpus) == meta.config.cpus
        assert_registers_equal_qemus(snap, meta)


@pytest.mark.parametrize("name", ALL)
def test_nic_macs_equal_the_command_line(snapshot, name):
    meta = snapshot(name)
    with open_snap(meta) as snap:
        found = {n.model: n.mac.hex(":") for n in snap.nics()}
    assert found == expected_macs(meta)


@pytest.mark.parametrize("name", SMALL + ["small-pc-bigmem"])
def test_small_guest_symbols_virtual_and_physical_agree(snapshot, name):
    meta = snapshot(name)
    syms = small_symbols()
    with open_snap(meta) as snap:
        cpu0 = snap.cpus[0]
        assert cpu0.cpu_mode == "long" and cpu0.paging_mode == "4-level"
        assert cpu0["rip"] >= HIGHER_HALF
        vm = snap.virtual(0)
        for sym, size in (("guest_mac", 6), ("tick", 8), ("guest_magic", 8)):
            virt = vm.read(syms[sym], size)
            phys = snap.physical.read(syms[sym] - HIGHER_HALF, size)
            assert virt == phys, sym
        assert vm.read(syms["guest_mac"], 6).hex(":") == meta.config.nics[0].mac
        tick = int.from_bytes(vm.read(syms["tick"], 8), "little")
        assert tick in (meta.last_tick.n, meta.last_tick.n + 1)
        assert int.from_bytes(vm.read(syms["guest_magic"], 8), "little") != 0
        # the three page sizes of the guest's own tables
        assert vm.translate(syms["tick"]).page_size == 4096
        assert vm.translate(syms["guest_note"]).page_size == 2 << 20
        assert vm.translate(syms["tick"] - HIGHER_HALF).page_size == 1 << 30
        # a second vCPU parked by the firmware still reads sanely
        for cpu in snap.cpus[1:]:
            assert cpu.cpu_mode in ("real", "protected32") and cpu.paging_mode == "none"
        with pytest.raises(AddressError, match="not mapped: PML4"):
            vm.read(0x0000_7000_0000_0000, 8)


def test_linux_banner(snapshot):
    for name in ("linux-pc-3nic",):
        meta = snapshot(name)
        with open_snap(meta) as snap:
            banner = snap.virtual(0).read(linux_symbols()["linux_banner"], 64)
            assert banner.startswith(b"Linux version "), banner


def test_linux_banner_qemu10(snapshot):
    meta = snapshot("linux-q35-3nic-qemu10")
    with open_snap(meta) as snap:
        assert snap.virtual(0).read(linux_symbols()["linux_banner"], 14) == b"Linux version "
        assert snap.index.commands and snap.index.commands[0].name == "SWITCHOVER_START"


def test_bigmem_layout_splits_below_and_above_4g(snapshot):
    meta = snapshot("small-pc-bigmem")
    with open_snap(meta) as snap:
        ram = [r for r in snap.layout.ranges if r.block == "pc.ram"]
        assert [(r.start, r.size) for r in ram] == [(0, 0xC0000000), (1 << 32, 3700 * 2**20 - 0xC0000000)]
        # a read across the end of low RAM stops at the PCI hole
        with pytest.raises(AddressError, match="not guest RAM"):
            snap.physical.read(0xC0000000 - 8, 16)
        assert snap.physical.read((1 << 32) + 3700 * 2**20 - 0xC0000000 - 8, 8) is not None


def test_qcow2_and_stream_of_the_same_stopped_vm_agree(tmp_path, qemu_vm):
    """One stopped VM, saved both ways: every register, page and device field must be equal."""
    from vmstate_gdb.harness import GuestConfig, Nic

    vm = qemu_vm(GuestConfig("small", "pc", 2, 128, (Nic("e1000", "52:54:00:12:34:56"),), disk_mib=16))
    vm.wait_ready()
    vm.wait_for_ticks(2)
    vm.qmp("stop")
    reply = vm.hmp("savevm same")
    assert "rror" not in reply, reply
    stream = tmp_path / "same.vmstate"
    vm.qmp("migrate", uri=f"exec:cat > {stream}")
    from vmstate_gdb.harness import wait_migration

    wait_migration(vm)
    disk = str(vm.disk)
    vm.close()
    with Snapshot.open(str(stream)) as a, Snapshot.open(disk, snapshot="same") as b:
        assert a.source.size == b.source.size
        assert [c.values for c in a.cpus] == [c.values for c in b.cpus]
        for name, block in a.index.ram.blocks.items():
            other = b.index.ram.blocks[name]
            assert block.used_length == other.used_length
            for p in range(block.page_count):
                assert a.ram.page(block, p) == b.ram.page(other, p), (name, p)
        for da, db in zip(a.devices.devices, b.devices.devices, strict=True):
            assert da.key == db.key
            if da.key != "globalstate":  # savevm records the run state from before it stopped
                assert a.read_stream(da.section.body_offset, da.section.body_size) == b.read_stream(
                    db.section.body_offset, db.section.body_size
                ), da.key


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vmstate_gdb", *args], capture_output=True, text=True, timeout=120
    )


def test_cli_info_devices_read_translate(snapshot):
    meta = snapshot("small-pc-e1000")
    syms = small_symbols()
    info = json.loads(run_cli("info", meta.path, "--json").stdout)
    assert info["machine_type"].startswith("pc-i440fx-7.2")
    assert info["cpus"][0]["mode"] == "long" and info["cpus"][0]["instruction"]
    assert [n["mac"] for n in info["nics"]] == [meta.config.nics[0].mac]
    text = run_cli("info", meta.path).stdout
    assert "NIC 0000:00:0" in text and meta.config.nics[0].mac in text
    dev = run_cli("devices", meta.path, "e1000/mac_reg[0][0]")
    assert dev.returncode == 0 and "uint32" in dev.stdout
    read = json.loads(run_cli("read", meta.path, hex(syms["guest_mac"]), "6", "--json").stdout)
    assert bytes.fromhex(read["hex"]).hex(":") == meta.config.nics[0].mac
    tr = json.loads(run_cli("translate", meta.path, hex(syms["tick"]), "--json").stdout)
    assert tr["physical"] == syms["tick"] - HIGHER_HALF and [s["level"] for s in tr["steps"]] == [
        "PML4",
        "PDPT",
        "PD",
        "PT",
    ]
    bad = run_cli("read", meta.path, "0x7000000000", "--phys")
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "not guest RAM" in bad.stderr
    missing = run_cli("info", "/nonexistent/snap.img")
    assert (
        missing.returncode == 1
        and "/nonexistent/snap.img" in missing.stderr
        and "Traceback" not in missing.stderr
    )


def test_real_stream_corruption_is_one_clear_error(snapshot, tmp_path):
    """Truncate and bit-flip a real QEMU stream at each section boundary: our error, never a crash."""
    meta = snapshot("small-pc-e1000")
    data = open(meta.path, "rb").read()
    with Snapshot.open(meta.path) as snap:
        cuts = sorted(
            {s.header_offset for s in snap.index.sections}
            | {s.body_end for s in snap.index.sections}
            | {snap.index.eof_offset}
        )
    bad = tmp_path / "bad.vmstate"
    for cut in cuts:
        for variant in (data[:cut], data[:cut] + bytes([data[cut] ^ 0xFF]) + data[cut + 1 :]):
            bad.write_bytes(variant)
            try:
                Snapshot.open(str(bad)).close()
            except VmstateError as e:
                assert str(bad) in str(e) and "\n" not in str(e)


@pytest.mark.parametrize("name", ALL)
def test_derived_hflags_equal_qemus(snapshot, name):
    """Our hflags derivation (used when cr0/cr4/efer/segments are edited) reproduces QEMU's own."""
    from vmstate_gdb.arch.x86_64.cpu import compute_hflags

    with open_snap(snapshot(name)) as snap:
        for cpu in snap.cpus:
            # flip only the bits that are derived (SS32 is kept as QEMU had it in 64-bit code)
            cs64 = cpu["hflags"] & 1 << 15
            scrambled = cpu["hflags"] ^ (0xFFD3 if cs64 else 0xFFF3)
            assert compute_hflags(cpu.values, scrambled) == cpu["hflags"], f"cpu{cpu.index}"


def test_stream_without_vmdesc_still_opens(snapshot, tmp_path):
    meta = snapshot("small-q35-virtio-2cpu")
    with open_snap(meta) as full:
        eof = full.index.eof_offset
        cpus = [c.values for c in full.cpus]
        rip_path = "cpu[1]/env.eip"
        rip = full.field_value(rip_path)
    stripped = tmp_path / "novmdesc.vmstate"
    stripped.write_bytes(open(meta.path, "rb").read()[: eof + 1])
    with Snapshot.open(str(stripped)) as snap:
        assert snap.index.vmdesc is None and snap.index.warnings
        assert [c.values for c in snap.cpus] == cpus
        assert snap.field_value(rip_path) == rip  # named as with the JSON, from the shipped layouts
        # the others are named from the shipped layouts (tests/test_devices_library.py)
        assert snap.devices.device("0000:00:01.0/virtio-net").schema == f"layouts of QEMU {meta.qemu_version}"
        assert snap.virtual(0).read(small_symbols()["guest_mac"], 6).hex(":") == meta.config.nics[0].mac


@pytest.mark.parametrize("name", ["small-pc-e1000", "small-pc-bigmem", "small-q35-bigmem-qemu10"])
def test_layout_agrees_with_the_guest_and_its_markers(snapshot, name):
    """The below/above-4G split we derive equals what the guest was told (its own globals), and the
    markers the guest wrote at the top of low RAM and at both ends of high RAM read back in place."""
    meta = snapshot(name)
    syms = small_symbols()
    with open_snap(meta) as snap:
        vm = snap.virtual(0)
        below = int.from_bytes(vm.read(syms["guest_ram_below_4g"], 8), "little")
        above = int.from_bytes(vm.read(syms["guest_ram_above_4g"], 8), "little")
        assert (snap.layout.below_4g, snap.layout.above_4g) == (below, above)
        markers = [int.from_bytes(vm.read(syms["guest_marker_addr"] + 8 * i, 8), "little") for i in range(3)]
        assert markers[2] == below - 4096
        assert bool(markers[0]) == bool(above)
        for address in filter(None, markers):
            text = snap.physical.read(address, 64).split(b"\0")[0].decode()
            assert text == f"VMSTATE-HIGHMEM {address:#x}", text


def test_a_corrupted_vcpu_number_is_one_clear_error(snapshot, tmp_path):
    meta = snapshot("small-pc-e1000")
    data = bytearray(open(meta.path, "rb").read())
    with open_snap(meta) as snap:
        sec = snap.index.find("cpu", 0)
    instance_at = sec.header_offset + 1 + 4 + 1 + len("cpu")
    data[instance_at : instance_at + 4] = b"\xff\xff\xff\xff"
    bad = tmp_path / "badcpu.vmstate"
    bad.write_bytes(bytes(data))
    with Snapshot.open(str(bad)) as snap:
        with pytest.raises(VmstateError, match="vCPUs must be numbered"):
            snap.cpus  # noqa: B018
    run = run_cli("core", str(bad), str(tmp_path / "x.core"))
    assert run.returncode == 1 and str(bad) in run.stderr and "Traceback" not in run.stderr
