"""Devices explained, second part (issue 11): timers, the RTC, the UART, rtl8139 and virtio read by
meaning and compared with what the guest itself printed before the stop (tests/linux/init.sh's
report: /proc/driver/rtc, stty of the console, /proc/interrupts, a CLOCK line each second) and with
QEMU 10's own x-query-virtio view recorded by the harness; then edits by register name, their diff
and export, and one of them resumed in QEMU and seen by the guest."""

from __future__ import annotations

import calendar
import dataclasses
import datetime as dt
import json
import re
import subprocess
import sys
import time

import pytest

from vmstate_gdb.devices.explain import explain_all
from vmstate_gdb.devices.explain.edit import find, plan, set_by_name
from vmstate_gdb.errors import EditError
from vmstate_gdb.snapshot import Snapshot

LINUX = ["linux-pc-3nic", "linux-q35-3nic-qemu10"]
VMSTATE = [sys.executable, "-m", "vmstate_gdb"]


def _views(snap: Snapshot) -> dict[str, object]:
    return {f"{x.device}:{x.kind}": x for x in explain_all(snap.devices, snap.physical.read)}


def _kind(snap: Snapshot, kind: str):
    found = [x for x in explain_all(snap.devices, snap.physical.read) if x.kind == kind]
    assert len(found) == 1, (kind, [x.kind for x in explain_all(snap.devices)])
    return found[0]


def _section(console: str, name: str) -> list[str]:
    """One @section of the guest's report."""
    lines = [ln.rstrip("\r") for ln in console.splitlines()]
    start = lines.index(f"@{name}") + 1
    end = next(
        i for i in range(start, len(lines)) if lines[i].startswith("@") or lines[i] == "GUEST-REPORT-END"
    )
    return lines[start:end]


def _proc_rtc(console: str) -> dict[str, str]:
    out = {}
    for line in _section(console, "rtc"):
        key, _, value = line.partition(":")
        out[key.strip()] = value.strip()
    return out


def _epoch(text: str) -> int:
    return calendar.timegm(dt.datetime.fromisoformat(text).timetuple())


@pytest.mark.qemu
@pytest.mark.linux
@pytest.mark.parametrize("name", LINUX)
def test_rtc_is_the_guests_clock(snapshot, name):
    """The time registers at the stop are the time the guest last read from its RTC (a CLOCK line
    each second) plus at most the second or two to the stop; status and alarm registers are what
    the kernel's rtc driver reported (/proc/driver/rtc)."""
    meta = snapshot(name)
    clocks = re.findall(r"^CLOCK \d+ (\S+ \S+)\r?$", meta.console, re.M)
    assert clocks, "the guest printed no CLOCK line before the stop"
    proc = _proc_rtc(meta.console)
    with Snapshot.open(meta.path) as snap:
        rtc = _kind(snap, "MC146818 RTC")
        ours = _epoch(rtc.get("time"))
        # a CLOCK line a second; a loaded 2-core machine may stretch the guest's second or two
        assert 0 <= ours - _epoch(clocks[-1].replace(" ", "T")) <= 5, (rtc.get("time"), clocks[-1])
        b, a = rtc.get("REG_B"), rtc.get("REG_A")
        assert proc["24hr"] == ("yes" if b & 2 else "no")
        assert proc["BCD"] == ("no" if b & 4 else "yes")
        assert proc["periodic_IRQ"] == ("yes" if b & 0x40 else "no")
        assert proc["update_IRQ"] == ("yes" if b & 0x10 else "no")
        assert proc["alarm_IRQ"] == ("yes" if b & 0x20 else "no")
        assert int(proc["periodic_freq"]) == 32768 >> ((a & 0xF) - 1)
        assert proc["alrm_time"] == rtc.get("alarm")
        assert proc["batt_status"] == ("okay" if rtc.get("REG_D") & 0x80 else "dead")


@pytest.mark.qemu
@pytest.mark.linux
@pytest.mark.parametrize("name", LINUX)
def test_uart_and_interrupt_routing_are_the_guests(snapshot, name):
    """The console UART's divisor and line control give the speed and framing `stty` showed (busybox
    lists only what differs from cs8 -parenb -cstopb); the IOAPIC pins left unmasked are exactly those
    /proc/interrupts shows on the IO-APIC, with the same trigger mode; the PIT's IRQ0 is off and the
    HPET routes the timer in legacy replacement mode, as Linux's 'timer' on IO-APIC pin 2 says."""
    meta = snapshot(name)
    tty = " ".join(_section(meta.console, "tty"))
    speed = int(re.search(r"speed (\d+) baud", tty)[1])
    framing = f"{7 if ' cs7' in tty else 8}{'E' if ' parenb' in tty else 'N'}{2 if ' cstopb' in tty else 1}"
    pins = {}
    for line in _section(meta.console, "interrupts"):
        m = re.search(r"IO-APIC\s+(\d+)-(edge|fasteoi)", line)
        if m:
            pins[int(m[1])] = "edge" if m[2] == "edge" else "level"
    assert pins.get(2) == "edge" and 4 in pins, pins  # the timer and ttyS0
    with Snapshot.open(meta.path) as snap:
        uart = _kind(snap, "16550A UART")
        assert uart.get("divisor") == 115200 // speed
        assert next(v.text for v in uart.values if v.name == "divisor").startswith(f"{speed} {framing}")
        ioapic = _kind(snap, "IOAPIC")
        unmasked = {}
        for v in ioapic.values:
            if re.fullmatch(r"pin\d+", v.name) and not v.value >> 16 & 1:
                unmasked[int(v.name[3:])] = "level" if v.value >> 15 & 1 else "edge"
        assert unmasked == pins
        pit, hpet = _kind(snap, "i8254 PIT"), _kind(snap, "HPET")
        assert pit.get("irq0") == 1 and hpet.get("config") & 3 == 3


@pytest.mark.qemu
@pytest.mark.linux
@pytest.mark.parametrize("name", LINUX)
def test_rtl8139_cplus_rings_are_the_8139cp_drivers(snapshot, name):
    """Linux's 8139cp runs the NIC in C+ mode with 64-entry rings (CP_RX_RING_SIZE,
    CP_TX_RING_SIZE) of 1536-byte receive buffers (PKT_BUF_SZ): the explained rings end at their
    EOR descriptor after 64 entries, and every RX descriptor the NIC owns holds such a buffer."""
    meta = snapshot(name)
    with Snapshot.open(meta.path) as snap:
        x = _kind(snap, "RTL8139 registers")
        assert x.get("CpCmd") & 3 == 3  # C+ transmit and receive
        for side in ("RX", "TX"):
            text = next(v.text for v in x.values if v.name == f"{side} ring")
            assert "64 in the ring (EOR)" in text, text
        rx = snap.physical.read(x.get("RX ring"), 64 * 16)
        owned = [rx[i : i + 16] for i in range(0, len(rx), 16) if rx[i + 3] & 0x80]
        assert owned, "the driver posts receive buffers"
        for desc in owned:
            assert int.from_bytes(desc[:4], "little") & 0x1FFF == 1536
            assert int.from_bytes(desc[8:16], "little") != 0
        text = next(v.text for v in x.values if v.name == "RX ring")
        assert f"{len(owned)} owned by the NIC" in text
        mac = next(n.mac for n in meta.config.nics if n.model == "rtl8139")
        assert x.get("IDR") == mac.lower()


@pytest.mark.qemu
@pytest.mark.qemu10
def test_virtio_matches_qemus_x_query_virtio(snapshot):
    """Status bits, negotiated features by name and every queue's ring addresses and indexes, as
    QEMU 10's x-query-virtio-status / x-query-virtio-queue-status gave them at the stop."""
    meta = snapshot("linux-q35-3nic-qemu10")
    (qemu,) = [v for v in meta.state.virtio if v["name"] == "virtio-net"]
    status = qemu["status"]
    with Snapshot.open(meta.path) as snap:
        x = _kind(snap, "virtio-net (virtio)")
        names = {s.split(":")[0].removeprefix("VIRTIO_CONFIG_S_") for s in status["status"]["statuses"]}
        assert set(next(v.text for v in x.values if v.name == "status").split()) == names
        theirs = {f.split(":")[0] for part in status["guest-features"].values() for f in part}
        assert set(next(v.text for v in x.values if v.name == "features").split()) == theirs
        queues = sorted(qemu["queues"], key=lambda q: q["queue-index"])
        assert len(queues) == status["num-vqs"] == 3
        for name, q in zip(("rx0", "tx0", "ctrl"), queues, strict=True):
            text = next(v.text for v in x.values if v.name == name)
            assert text.startswith(f"{q['vring-num']} entries: desc {q['vring-desc']:#x} avail "
                                   f"{q['vring-avail']:#x} used {q['vring-used']:#x}"), text  # fmt: skip
            assert x.get(f"{name}.last_avail_idx") == q["last-avail-idx"]
            assert x.get(f"{name}.used_idx") == q["used-idx"]
        # the receive queue: the driver posted buffers the device has not taken yet
        waiting = x.get("rx0.avail_idx") - x.get("rx0.last_avail_idx")
        assert waiting > 0 and x.get("rx0.waiting") == waiting


# -- edits by name -------------------------------------------------------------------------------


@pytest.mark.qemu
def test_edits_by_register_name_write_the_raw_fields(snapshot):
    meta = snapshot("linux-pc-3nic")
    with Snapshot.open(meta.path) as snap:
        tree = snap.devices
        rctl = snap.field_value("e1000/mac_reg[RCTL]")
        lvtt = snap.field_value("apic/lvt[0]")
        lines = set_by_name(snap, "e1000.RCTL.EN", "0")
        assert lines and "EN" not in lines[0].split("(")[1].split(")")[0].split()
        assert snap.field_value("e1000/mac_reg[RCTL]") == rctl & ~2
        set_by_name(snap, "apic.LVTT.masked", "1")
        set_by_name(snap, "apic.LVTT.vector", "0x31")
        assert snap.field_value("apic/lvt[0]") == (lvtt & ~0xFF | 0x31 | 1 << 16)
        set_by_name(snap, "mc146818rtc.REG_B.UIE", "on")  # one byte of the CMOS buffer
        assert snap.field_value("mc146818rtc/cmos_data")[0x0B] & 0x10
        assert set_by_name(snap, "e1000/mac_reg[RCTL]", "0") is None  # a raw path: not by name
        config = "e1000/parent_obj/config[0]"
        command = int.from_bytes(snap.field_value(config)[4:6], "little")
        set_by_name(snap, "e1000.pci.command.bus-master", "0")  # 2 bytes inside PCI config space
        assert int.from_bytes(snap.field_value(config)[4:6], "little") == command & ~4
        for name, value, message in (
            ("e1000.RCTL.NOPE", "1", "has no part 'NOPE'"),
            ("e1000.NOPE", "1", "has no register 'NOPE'"),
            ("apic.LVTT.vector", "256", "does not fit 8 bit(s)"),
            ("e1000.RX ring", "0", "set the fields it is made of"),
            ("mc146818rtc.time", "yesterday", "is not a date and time"),
            ("e1000.RCTL", "lots", "is not a number"),
            ("e1000.RDH", "0x1ffff", "beyond what it can hold here"),
            ("e1000.vendor", "0x1234", "read-only: QEMU refuses"),
            ("rtl8139.IDR", "0", "--mac"),
            ("virtio-net.rx0.avail_idx", "3", "--write ADDR=HEX --phys"),
        ):
            target = find(tree, name, snap.physical.read) if "NOPE" not in name else None
            with pytest.raises(EditError, match=re.escape(message)):
                if target is None:
                    find(tree, name, snap.physical.read)
                else:
                    plan(tree, target, value)


@pytest.mark.qemu
def test_diff_and_export_speak_register_names(snapshot, tmp_path):
    """`vmstate patch --set` by name, then `vmstate diff` names the register and the part that
    changed; the exported file carries the registers, and changing one there and importing it
    gives the same edit."""
    meta = snapshot("linux-pc-3nic")
    out = tmp_path / "named.vmstate"
    run = subprocess.run([*VMSTATE, "patch", "-q", meta.path, str(out), "--set", "e1000.RCTL.EN=0"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    diff = subprocess.run([*VMSTATE, "diff", "--no-memory", "--json", meta.path, str(out)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    data = json.loads(diff.stdout)
    (reg,) = data["explained"]
    assert reg["register"] == "0000:00:02.0/e1000.RCTL" and reg["change"].endswith(": EN 1->0")
    exported = tmp_path / "devices.json"
    run = subprocess.run([*VMSTATE, "export-devices", "-q", "--json", meta.path, str(exported)],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    tree = json.loads(exported.read_text())
    (e1000,) = [v for v in tree["explained"] if v["kind"] == "e1000 registers"]
    (rctl,) = [r for r in e1000["registers"] if r["name"] == "RCTL"]
    old = int(rctl["value"], 16)
    assert rctl["source"] == "mac_reg[RCTL]" and old & 2
    rctl["value"] = f"{old & ~2:#x}"
    exported.write_text(json.dumps(tree))
    imported = tmp_path / "imported.vmstate"
    run = subprocess.run([*VMSTATE, "import-devices", "-q", meta.path, str(exported), str(imported)],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert f"register 0000:00:02.0/e1000.RCTL: {old:#x} -> {old & ~2:#x}" in run.stdout
    assert imported.read_bytes() == out.read_bytes()


@pytest.mark.qemu
@pytest.mark.linux
def test_rtc_edited_by_name_resumes_and_the_guest_reads_it(snapshot, restored, tmp_path):
    """mc146818rtc.time set in the snapshot: the resumed guest's RTC (its CLOCK lines) runs on from
    the new time, by the wall time that passed since the stop (QEMU's RTC follows the host clock
    across a pause)."""
    meta = snapshot("linux-pc-3nic")
    new = "2031-05-06 07:08:09"
    out = tmp_path / "rtc.vmstate"
    run = subprocess.run([*VMSTATE, "patch", "-q", meta.path, str(out), "--set", f"mc146818rtc.time={new}"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    vm = restored(dataclasses.replace(meta, path=str(out)))
    # the first CLOCK line may straddle the stop: its date read before it, its time after
    first = vm.wait_for_line(r"^CLOCK (\d+) ", timeout=90)
    m = vm.wait_for_line(rf"^CLOCK {int(first[1]) + 1} (\S+) (\S+)", timeout=30)
    seen = _epoch(f"{m[1]}T{m[2]}")
    expected = _epoch(new.replace(" ", "T")) + (time.time() - meta.state.stopped_at)
    assert abs(seen - expected) < 15, (m[0], expected - seen)


@pytest.mark.qemu
def test_gdb_vmstate_set_by_register_name(snapshot, tmp_path):
    from test_gdb_target import run_gdb

    meta = snapshot("linux-pc-3nic")
    out_file = tmp_path / "gdb-named.vmstate"
    out = run_gdb(
        f"vmstate-open {meta.path}",
        "vmstate-set e1000.RCTL.EN 0",
        'vmstate-set mc146818rtc.time "2030-02-03 04:05:06"',
        "vmstate-set e1000.RCTL.BOGUS 1",
        f"vmstate-save {out_file}",
    )
    with Snapshot.open(meta.path) as snap:
        old = _kind(snap, "e1000 registers").get("RCTL")
    assert f"0000:00:02.0/e1000.RCTL.EN: {old:#x} -> {old & ~2:#x}" in out, out
    assert "mc146818rtc.time: " in out and "-> 2030-02-03 04:05:06" in out, out
    assert "has no part 'BOGUS'" in out and "Traceback" not in out, out
    with Snapshot.open(str(out_file)) as snap:
        assert _kind(snap, "MC146818 RTC").get("time") == "2030-02-03 04:05:06"
        assert not _kind(snap, "e1000 registers").get("RCTL") & 2


@pytest.mark.qemu
@pytest.mark.qemu10
@pytest.mark.linux
def test_virtio_blk_queue_and_its_last_request_are_the_guests(snapshot):
    """virtio-blk's request queue as QEMU 10 saw it, and the request the device completed last is
    the guest's last direct read (a BLKREAD line each second, or the next one if the stop came
    between the read and its line): a read at that sector, with a 16-byte header the device read,
    4096 bytes of data and the status byte it wrote."""
    meta = snapshot("linux-q35-3nic-qemu10")
    (qemu,) = [v for v in meta.state.virtio if v["name"] == "virtio-blk"]
    reads = re.findall(r"^BLKREAD (\d+) sector (\d+)\r?$", meta.console, re.M)
    assert reads, "the guest printed no BLKREAD line"
    n, sector = int(reads[-1][0]), int(reads[-1][1])
    with Snapshot.open(meta.path) as snap:
        x = _kind(snap, "virtio-blk (virtio)")
        theirs = {f.split(":")[0] for part in qemu["status"]["guest-features"].values() for f in part}
        assert set(next(v.text for v in x.values if v.name == "features").split()) == theirs
        (q,) = qemu["queues"]
        text = next(v.text for v in x.values if v.name == "req0")
        assert text.startswith(f"{q['vring-num']} entries: desc {q['vring-desc']:#x} avail "
                               f"{q['vring-avail']:#x} used {q['vring-used']:#x}"), text  # fmt: skip
        assert (x.get("req0.last_avail_idx"), x.get("req0.used_idx")) == (q["last-avail-idx"], q["used-idx"])
        last = next(v.text for v in x.values if v.name == "req0.last_used")
        # a 16-byte header the device reads, the 4096 data bytes (one buffer or more), the status byte
        # (whose entry of the freed indirect table may have been reused since: shown as stale)
        status = r"w 0x[0-9a-f]+\+1( \(not in RAM: stale\))?; "
        m = re.match(r"IN \(read\) sector (\d+): r 0x[0-9a-f]+\+16 ((?:w 0x[0-9a-f]+\+\d+ )+)" + status, last)
        assert m and sum(int(p.split("+")[1]) for p in m[2].split()[1::2]) == 4096, last
        assert int(m[1]) in (sector, (n + 1) % 1000 * 8), (last, reads[-1])


@pytest.mark.qemu
@pytest.mark.qemu10
@pytest.mark.linux
def test_ahci_is_what_linuxs_ahci_driver_printed(snapshot):
    """q35's AHCI controller as Linux's ahci driver reported it at probe (the guest's dmesg in its
    report): version, command slots, ports, speed, implemented ports and the capability flags it
    names; each port's SStatus and SControl from its 'SATA link down' line; and the command list
    and FIS areas the driver gave every port lie in guest RAM."""
    meta = snapshot("linux-q35-3nic-qemu10")
    ata = "\n".join(_section(meta.console, "ata"))
    hba = re.search(r"AHCI (\S+) (\d+) slots (\d+) ports (\S+ Gbps) (0x[0-9a-f]+) impl", ata)
    assert hba, ata
    flags = re.search(r"flags: (.*)$", ata, re.M)[1].split()
    links = {int(n) - 1: (int(s, 16), int(c, 16)) for n, s, c in
             re.findall(r"ata(\d+): SATA link down \(SStatus (\S+) SControl (\S+)\)", ata)}  # fmt: skip
    assert links, ata
    with Snapshot.open(meta.path) as snap:
        x = _kind(snap, "AHCI HBA")
        cap = next(v.text for v in x.values if v.name == "CAP")
        assert cap.startswith(f"{hba[2]} slots {hba[3]} ports {hba[4]}"), (cap, hba[0])
        assert next(v.text for v in x.values if v.name == "VS") == f"AHCI {hba[1]}"
        assert x.get("PI") == int(hba[5], 16)
        ours = {f.split("(")[1].rstrip(")") for f in cap.split("; ")[1].split() if "(" in f}
        assert ours == set(flags), (ours, flags)  # 64bit ncq only: the three Linux names
        for port, (sstatus, scontrol) in links.items():
            assert (x.get(f"P{port}SSTS"), x.get(f"P{port}SCTL")) == (sstatus, scontrol), port
            for area in ("CLB", "FB"):
                snap.physical.read(x.get(f"P{port}{area}"), 256)  # in RAM: readable
            assert x.get(f"P{port}CMD") & 0x10, "FIS receive enabled by the driver"


@pytest.mark.qemu
@pytest.mark.linux
def test_e1000e_registers_are_the_82574_linux_drove(snapshot):
    """e1000e keeps its registers as one array (core.mac): found by offset, they are what Linux's
    e1000e driver set up. Link up, receiver and transmitter on, extended RX descriptors (RFCTL
    EXSTEN) of QEMU's size; the ring the device owns holds posted buffers not yet written back; the
    frames sent (the guest's ARP at link up) are behind the TX head; receive address 0 is
    the guest's MAC; MSI-X routes the queues the guest's /proc/interrupts lists."""
    meta = snapshot("linux-q35-e1000e")
    nic = meta.config.nics[0]
    with Snapshot.open(meta.path) as snap:
        x = _kind(snap, "e1000e registers")
        assert x.get("STATUS") & 2 and x.get("RCTL") & 2 and x.get("TCTL") & 2  # LU, EN, EN
        assert x.get("RA0") == nic.mac.lower()
        assert x.get("RFCTL") >> 15 & 1  # EXSTEN: the driver's extended status
        assert x.get("CTRL_EXT") >> 28 & 1  # DRV_LOAD: e1000e_get_hw_control at open
        assert "DRV_LOAD" in next(v.text for v in x.values if v.name == "CTRL_EXT")
        rx_text = next(v.text for v in x.values if v.name == "RX ring")
        assert "descriptors of 16 bytes" in rx_text, rx_text
        rdlen, rdh, rdt = x.get("RDLEN"), x.get("RDH"), x.get("RDT")
        count = rdlen // 16
        rx = snap.physical.read(x.get("RX ring"), rdlen)
        owned = [(rdh + i) % count for i in range((rdt - rdh) % count)]
        assert owned, "the driver posts receive buffers"
        for i in owned:  # extended descriptor, read format: buffer address, then status (DD bit 0)
            desc = rx[16 * i : 16 * i + 16]
            assert int.from_bytes(desc[:8], "little") != 0, f"RX descriptor {i} has no buffer"
            assert desc[8] & 1 == 0, f"RX descriptor {i} owned by the device but marked done"
        tdh, tdt = x.get("TDH"), x.get("TDT")
        assert tdh == tdt and tdh > 0, "the guest's frames were sent and the queue drained"
        tx = snap.physical.read(x.get("TX ring"), x.get("TDLEN"))
        sent = [tx[16 * i : 16 * i + 16] for i in range(tdh)]
        # the gratuitous ARP: one 42-byte frame in a buffer of its own (the driver cleans the
        # status of what was sent, not the address and length; a checksum context descriptor,
        # DEXT with DTYP 0, holds neither)
        frames = [int.from_bytes(d[8:10], "little") for d in sent if int.from_bytes(d[:8], "little")]
        assert 42 in frames, [d.hex() for d in sent]
        ivar = x.get("IVAR")
        interrupts = _section(meta.console, "interrupts")
        vectors = [line for line in interrupts if re.search(r"eth0-(rx|tx)-0", line)]
        if vectors:  # MSI-X: the driver routed RxQ0 and TxQ0 (IVAR valid bits)
            assert ivar & 0x8 and ivar >> 8 & 0x8, f"IVAR {ivar:#x} with {vectors}"


@pytest.mark.qemu
@pytest.mark.linux
def test_e1000e_register_edited_by_name_resumes(snapshot, restored, tmp_path):
    """A register of e1000e's array set by name lands in its element (ITR is core.mac[0xc4 / 4]);
    a ring index beyond the ring is refused; QEMU resumes the edited stream and the guest runs on."""
    meta = snapshot("linux-q35-e1000e")
    out = tmp_path / "itr.vmstate"
    bad = subprocess.run([*VMSTATE, "patch", "-q", meta.path, str(tmp_path / "bad.vmstate"), "--set",
                          "e1000e.RDT=256"], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 1 and "at most 0xff" in bad.stderr and not (tmp_path / "bad.vmstate").exists(), (
        bad.stderr
    )
    run = subprocess.run([*VMSTATE, "patch", "-q", meta.path, str(out), "--set", "e1000e.ITR=0x100"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    with Snapshot.open(str(out)) as snap:
        assert _kind(snap, "e1000e registers").get("ITR") == 0x100
        assert snap.devices.resolve("e1000e/core.mac[49]").value(snap.devices.read) == 0x100
    vm = restored(dataclasses.replace(meta, path=str(out)))
    first = vm.wait_for_line(r"^CLOCK (\d+) ", timeout=90)
    vm.wait_for_line(rf"^CLOCK {int(first[1]) + 1} ", timeout=30)


@pytest.mark.qemu
@pytest.mark.linux
def test_ide_drive_holds_the_guests_last_read(snapshot):
    """The PIIX IDE disk the Linux guest read one sector from at boot (through ata_piix's
    bus-master DMA; the kernel may read the page around it): the drive answered IDENTIFY, is ready
    and idle, nothing left to transfer; the channel's DMA engine stopped after a transfer into
    memory; its PRD table in guest RAM (ending with EOT) holds as many bytes as the task file moved
    on, a read that covered the guest's sector. The drive slots with no disk were never
    identified."""
    from vmstate_gdb.harness.scenarios import IDE_READ_SECTOR

    meta = snapshot("linux-pc-3nic")
    assert re.search(rf"^IDEREAD {IDE_READ_SECTOR}\r?$", meta.console, re.M), "the guest read its sector"
    with Snapshot.open(meta.path) as snap:
        x = _kind(snap, "PCI IDE")
        assert x.get("ide0.identified") == 1
        assert [x.get(f"ide{n}.identified") for n in (1, 2, 3)] == [0, 0, 0]
        status = x.get("ide0.status")
        assert status & 0x40 and not status & 0x89, f"{status:#x}"  # DRDY; not BSY, DRQ, ERR
        assert x.get("ide0.nsector") == 0
        bmic = x.get("BMIC0")
        assert not bmic & 1 and bmic & 8, f"{bmic:#x}"  # stopped; the last transfer was into memory
        prd = next(v.text for v in x.values if v.name == "PRD0")
        m = re.search(r": \d+ entries, (\d+) bytes \(0x[0-9a-f]+\+\d+.*; EOT\)", prd)
        assert m and int(m[1]) % 512 == 0, prd
        end = x.get("ide0.lba")  # after the command: the sector after its last
        start = end - int(m[1]) // 512
        assert start <= IDE_READ_SECTOR < end, (start, end, prd)
        # by name: a status bit of one drive (a register whose name has a dot), the selected drive
        set_by_name(snap, "ide.ide0.status.ERR", "1")
        assert snap.field_value("ide/bus[0].ifs[0]/status") == status | 1
        set_by_name(snap, "ide.channel0.selected", "0")
        assert snap.field_value("ide/bus[0]/unit") == 0
        with pytest.raises(EditError, match="at most 0x1"):
            set_by_name(snap, "ide.channel0.selected", "2")
