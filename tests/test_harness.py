"""The harness itself: boot each guest, snapshot each way, resume, and the TICK counter goes on."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from qemu.qmp.legacy import QEMUMonitorProtocol

from vmstate_gdb.errors import QemuError
from vmstate_gdb.harness import (
    SCENARIOS,
    STARTED_PIDS,
    GuestConfig,
    Nic,
    QemuUnavailable,
    Snapshot,
    find_qemu,
    parse_info_registers,
    parse_ticks,
    pid_alive,
    render_argv,
)
from vmstate_gdb.harness.console import tick_continues
from vmstate_gdb.harness.state import parse_info_lapic, parse_info_pic

# ---------------------------------------------------------------------------------------------
# unit: parsing and argv, no QEMU

REGS_64 = """\
RAX=0000000000000041 RBX=0000000000000041 RCX=00000000000003fd RDX=0000000000000041
RSI=ffffffff80200000 RDI=0000000000000000 RBP=ffffffff8010aff0 RSP=ffffffff8010afb0
R8 =00000000000003f8 R9 =000000000000003f R10=ffffffff80201000 R11=000000000000000a
R12=0000000000000001 R13=0000000000000000 R14=0000000000000001 R15=0000000000000800
RIP=ffffffff80100809 RFL=00000046 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=0
ES =0010 0000000000000000 ffffffff 00cf9300 DPL=0 DS   [-WA]
CS =0008 0000000000000000 ffffffff 00af9a00 DPL=0 CS64 [-R-]
FS =0000 0000000000001000 00000000 00000000
GS =0000 ffff888000000000 00000000 00000000
GDT=     ffffffff80106000 00000017
IDT=     0000000000000000 00000000
CR0=80010011 CR2=0000000000000000 CR3=0000000000101000 CR4=00000020
EFER=0000000000000500
"""


@pytest.mark.unit
def test_parse_info_registers_64():
    r = parse_info_registers(REGS_64)
    assert r["R8"] == 0x3F8 and r["R9"] == 0x3F and r["R15"] == 0x800
    assert r["RIP"] == 0xFFFFFFFF80100809 and r["RFL"] == 0x46
    assert (r["CS"], r["CS.flags"]) == (8, 0x00AF9A00)
    assert r["FS_BASE"] == 0x1000 and r["GS_BASE"] == 0xFFFF888000000000
    assert (r["GDT.base"], r["GDT.limit"]) == (0xFFFFFFFF80106000, 0x17)
    assert (r["CR0"], r["CR3"], r["EFER"]) == (0x80010011, 0x101000, 0x500)


LAPIC_TEXT = """dumping local APIC state for CPU 1

LVT0\t 0x00008700 active-hi level                             ExtINT (vec 0)
LVTT\t 0x000200ec active-hi edge                  periodic     Fixed  (vec 236)
Timer\t DCR=0xb (divide by 1) initial_count = 62500 current_count = 1234
SPIV\t 0x000001ff APIC enabled, focus=off, spurious vec 255
ISR\t (none)
IRR\t 48 236

APR 0x00 TPR 0x20 DFR 0x0f LDR 0x01 PPR 0x20
"""


@pytest.mark.unit
def test_parse_info_lapic_and_pic():
    regs = parse_info_lapic(LAPIC_TEXT)
    assert regs["LVT0"] == 0x8700 and regs["LVTT"] == 0x200EC and regs["TPR"] == 0x20
    assert (regs["DCR"], regs["initial_count"], regs["current_count"]) == (0xB, 62500, 1234)
    assert regs["ISR"] == [] and regs["IRR"] == [48, 236]
    chips = parse_info_pic(
        "ioapic0: ver=0x20 id=0x00 sel=0x00\n  pin 0  0x0000000000010000 dest=0 vec=0\n"
        "  pin 2  0x0000000000000030 dest=0 vec=48\n"
        "pic1: irr=00 imr=8e isr=00 hprio=0 irq_base=70 rr_sel=0 elcr=0c fnm=0\n"
        "pic0: irr=11 imr=b8 isr=00 hprio=0 irq_base=08 rr_sel=0 elcr=00 fnm=0\n"
    )
    assert chips["ioapic"] == {"pin0": 0x10000, "pin2": 0x30}
    assert chips["pic0"]["imr"] == 0xB8 and chips["pic1"]["irq_base"] == 0x70


@pytest.mark.unit
def test_parse_ticks_both_formats():
    text = (
        "\x1b[0mSeaBIOS\r\nGUEST READY nic=e1000 bar=0xfebc0000\r\n"
        "TICK 7 sw=52:54:00:12:34:56 hw=52:54:00:12:34:56 r12=0x1f note=hello world\r\n"
        "TICK 3 eth0 52:54:00:AB:cd:02\nTICK 3 eth1 52:54:00:ab:cd:03\nTICKLE 9\n"
    )
    small, eth0, eth1 = parse_ticks(text)
    assert (small.n, small.sw_mac, small.r12, small.note) == (7, "52:54:00:12:34:56", 0x1F, "hello world")
    assert (eth0.n, eth0.iface, eth0.mac) == (3, "eth0", "52:54:00:ab:cd:02")
    assert tick_continues(eth0, eth1) and not tick_continues(eth1, eth0)
    # a line still being printed is not a tick yet: its note may be yet to come
    partial = "TICK 4 sw=52:54:00:12:34:56 hw=52:54:00:12:34:56 r12=0x1f note=\nTICK 5 sw=52:54:00:12:34"
    assert [t.n for t in parse_ticks(partial)] == [4]
    assert tick_continues(eth1, small)


@pytest.mark.unit
def test_render_argv_and_config_json():
    config = GuestConfig(
        "small",
        "q35",
        2,
        256,
        [("virtio-net-pci", "52:54:00:00:00:01"), ("rtl8139", "52:54:00:00:00:02")],
        disk_mib=32,
    )
    argv = render_argv(config, ["-kernel", "k.elf"], serial="file:/s", qmp_socket="/q", disk="/d.qcow2")
    joined = " ".join(argv)
    for part in (
        "-accel tcg",
        "-machine q35",
        "-smp 2",
        "-m 256",
        "-nographic",
        "-display none",
        "-no-reboot",
        "-monitor none",
        "-serial file:/s",
        "-qmp unix:/q,server=on,wait=off",
        "disable-legacy=off",
        "mac=52:54:00:00:00:02",
        "file=/d.qcow2,if=none,id=d0,format=qcow2",
    ):
        assert part in joined
    assert GuestConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError):
        Nic("ne2k_pci", "52:54:00:00:00:01")


@pytest.mark.unit
def test_qemu10_absence_is_reported(monkeypatch, tmp_path):
    monkeypatch.setenv("VMSTATE_QEMU10", str(tmp_path / "nope/qemu-system-x86_64"))
    with pytest.raises(QemuUnavailable, match="QEMU 10 not found"):
        find_qemu("10")


# ---------------------------------------------------------------------------------------------
# qemu: real VMs


def _assert_macs(snap: Snapshot, ticks, complete: bool = True) -> None:
    config = snap.config
    if config.kind == "small":
        mac = config.nics[0].mac
        for t in ticks:
            assert (t.sw_mac, t.hw_mac) == (mac, mac), t.line
    elif config.kind.startswith("linux"):
        seen = {t.mac for t in ticks}
        configured = {n.mac for n in config.nics}
        assert seen == configured if complete else seen <= configured, ticks


@pytest.mark.qemu
@pytest.mark.parametrize(
    "name",
    [pytest.param(name, marks=[getattr(pytest.mark, m) for m in s.markers]) for name, s in SCENARIOS.items()],
)
def test_snapshot_resumes(name, snapshot, restored):
    snap = snapshot(name)
    config = snap.config
    # What QEMU said at stop time was recorded.
    assert len(snap.state.registers) == config.cpus
    assert all("RIP" in r and "CR3" in r and "CS.base" in r for r in snap.state.registers)
    assert [n["macaddr"] for n in snap.state.network.values()] == [n.mac for n in config.nics]
    if any(n.model == "virtio-net-pci" for n in config.nics):
        assert snap.state.rx_filter and snap.state.rx_filter[0]["main-mac"] == next(
            n.mac for n in config.nics if n.model == "virtio-net-pci"
        )
    assert snap.last_tick is not None and snap.last_tick.n >= 2
    assert Snapshot.load(snap.path).to_json() == snap.to_json()
    assert os.path.getsize(snap.path) > 0

    vm = restored(snap)
    ticks = vm.wait_for_ticks(2, timeout=30)
    first = ticks[0]
    assert first.n != 1 and tick_continues(snap.last_tick, first), (snap.last_tick, first)
    assert ticks[-1].n > first.n or len(ticks) > 1
    _assert_macs(snap, ticks)
    _assert_macs(snap, [snap.last_tick], complete=False)


@pytest.mark.qemu
def test_boot_record_state_and_kill(qemu_vm):
    config = GuestConfig("dummy", "pc", 2, 64, [("e1000", "52:54:00:12:34:99")])
    vm = qemu_vm(config)
    vm.wait_ready()
    vm.wait_for_ticks(1, timeout=15)
    assert vm.status() == "running"
    vm.qmp("stop")
    state = vm.record_state()
    assert len(state.registers) == 2 and state.network["nic0"]["macaddr"] == "52:54:00:12:34:99"
    assert any(d["vendor"] == 0x8086 and d["device"] == 0x100E for d in state.pci)
    # QEMU's device view, the oracle of the device decoders: one `info lapic` per vCPU, by index
    assert [f"for CPU {i}" in t for i, t in enumerate(state.lapic_text)] == [True, True]
    lapics = [parse_info_lapic(t) for t in state.lapic_text]
    assert lapics[0]["SPIV"] & 0x100 and "IRR" in lapics[1] and "initial_count" in lapics[1]
    chips = parse_info_pic(state.monitor["info pic"])
    assert {"pic0", "pic1", "ioapic"} <= set(chips) and len(chips["ioapic"]) == 24
    assert "e1000" in state.monitor["info qtree"] and "pc.ram" in state.monitor["info mtree -f"]
    assert "IRQ statistics" in state.monitor["info irq"] or state.monitor["info irq"] == ""
    with pytest.raises(QemuError) as err:
        vm.wait_for_line("NEVER PRINTED", timeout=0.5)
    assert (
        "--- serial" in str(err.value) and "--- stderr" in str(err.value) and "GUEST READY" in str(err.value)
    )
    pid = vm.pid
    vm.close()
    assert not pid_alive(pid)


@pytest.mark.qemu
@pytest.mark.parametrize(
    "name",
    [
        "small-pc-e1000",
        "small-q35-e1000-savevm",
        pytest.param("small-pc-e1000-qemu10-mapped", marks=pytest.mark.qemu10),
    ],
)
def test_resume_argv_resumes(name, snapshot, tmp_path):
    """The argv + QMP commands recorded in .meta.json resume the snapshot on their own."""
    snap = snapshot(name)
    argv = list(snap.resume_argv)
    sock = tmp_path / "q.sock"
    argv[argv.index("-qmp") + 1] = f"unix:{sock},server=on,wait=off"  # short private socket path
    out = tmp_path / "console.log"
    with open(out, "wb") as f:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=f, start_new_session=True)
    STARTED_PIDS.append(proc.pid)
    try:
        deadline = time.monotonic() + 20
        while not sock.exists():
            assert proc.poll() is None and time.monotonic() < deadline, out.read_text(errors="replace")
            time.sleep(0.05)
        qmp = QEMUMonitorProtocol(str(sock))
        qmp.connect()
        try:
            qmp.settimeout(30)
            for command in snap.resume_qmp:
                if command["execute"] == "cont":
                    # A "cont" during inmigrate is overridden by the paused runstate in the stream.
                    while qmp.cmd("query-status")["status"] == "inmigrate":
                        assert time.monotonic() < deadline
                        time.sleep(0.1)
                qmp.cmd(command["execute"], **command.get("arguments", {}))
        finally:
            qmp.close()
        while len({t.n for t in parse_ticks(out.read_text(errors="replace"))}) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, out.read_text(errors="replace")
            time.sleep(0.1)
        first = parse_ticks(out.read_text(errors="replace"))[0]
        assert tick_continues(snap.last_tick, first) and first.n != 1
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@pytest.mark.qemu
def test_every_started_qemu_is_gone():
    """Runs last in this file: all VMs of the tests above were killed at their teardown."""
    if not STARTED_PIDS:
        pytest.skip("no QEMU was started in this session")
    assert [pid for pid in STARTED_PIDS if pid_alive(pid)] == []
