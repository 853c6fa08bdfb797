"""Devices explained (issue 11): the interrupt chips read by register name, compared field by field
with what QEMU's own monitor printed at the stop (`info lapic` per vCPU, `info pic`), recorded by
the harness before the snapshot was written."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from vmstate_gdb.devices.explain import explain, explain_all
from vmstate_gdb.devices.explain.interrupts import lvt_text, vectors
from vmstate_gdb.harness.state import parse_info_lapic, parse_info_pic
from vmstate_gdb.snapshot import Snapshot

# 2 vCPUs (the second one's APIC never enabled); a Linux guest with its LAPIC timer running, on
# pc under QEMU 7.2 and q35 under QEMU 10 (a pending timer vector 236 in IRR there).
SCENARIOS = ["small-pc-rtl8139-2cpu", "linux-pc-3nic", "linux-q35-3nic-qemu10"]
LAPIC_REGS = ["LVTT", "LVTTHMR", "LVTPC", "LVT0", "LVT1", "LVTERR", "SPIV", "ICR", "ICR2", "ESR", "TPR",
              "DCR", "initial_count", "ISR", "IRR", "LDR", "DFR"]  # fmt: skip


@pytest.mark.qemu
@pytest.mark.parametrize("name", SCENARIOS)
def test_interrupt_chips_match_qemus_monitor(snapshot, name):
    meta = snapshot(name)
    with Snapshot.open(meta.path) as snap:
        apics = [x for x in explain_all(snap.devices) if x.kind == "local APIC"]
        assert len(apics) == meta.config.cpus == len(meta.state.lapic_text)
        for cpu, (x, text) in enumerate(zip(apics, meta.state.lapic_text, strict=True)):
            qemu = parse_info_lapic(text)
            ours = {r: x.get(r) for r in LAPIC_REGS}
            assert ours == {r: qemu[r] for r in LAPIC_REGS}, f"vCPU {cpu}"
            assert x.get("ID") == cpu
        pic = parse_info_pic(meta.state.monitor["info pic"])
        pics = sorted((x for x in explain_all(snap.devices) if x.kind == "i8259 PIC"), key=lambda x: x.device)
        for x, chip in zip(pics, ("pic0", "pic1"), strict=True):
            for reg in ("IRR", "IMR", "ISR", "ELCR"):
                assert x.get(reg) == pic[chip][reg.lower()], (chip, reg)
            assert x.get("irq_base") == pic[chip]["irq_base"]
        (ioapic,) = [x for x in explain_all(snap.devices) if x.kind == "IOAPIC"]
        assert {f"pin{i}": ioapic.get(f"pin{i}") for i in range(len(pic["ioapic"]))} == pic["ioapic"]


@pytest.mark.qemu
def test_devices_explain_cli(snapshot):
    meta = snapshot("linux-q35-3nic-qemu10")
    run = [sys.executable, "-m", "vmstate_gdb", "devices", meta.path, "--explain"]
    out = subprocess.run([*run, "apic"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    qemu = parse_info_lapic(meta.state.lapic_text[0])
    line = next(ln for ln in out.stdout.splitlines() if ln.split()[:1] == ["IRR"])
    assert line.split()[1 : 1 + len(qemu["IRR"])] == [str(v) for v in qemu["IRR"]]
    data = json.loads(subprocess.run([*run, "--json"], capture_output=True, text=True, timeout=60).stdout)
    assert {d["kind"] for d in data} >= {"local APIC", "IOAPIC", "i8259 PIC", "PCI function"}
    apic = next(d for d in data if d["kind"] == "local APIC")
    regs = {r["name"]: r for r in apic["registers"]}
    assert regs["LVTT"]["source"] == "lvt[0]" and regs["LVTT"]["value"] == qemu["LVTT"]
    bad = subprocess.run([*run, "pckbd"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "no explanation" in bad.stderr


@pytest.mark.qemu
def test_gdb_vmstate_devices_explain(snapshot):
    from test_gdb_target import run_gdb

    meta = snapshot("linux-q35-3nic-qemu10")
    qemu = parse_info_lapic(meta.state.lapic_text[0])
    out = run_gdb(
        f"vmstate-open {meta.path}", "vmstate-devices apic --explain", "vmstate-devices --explain pckbd"
    )
    line = next(ln for ln in out.splitlines() if ln.split()[:1] == ["LVTT"])
    assert int(line.split()[1], 16) == qemu["LVTT"]
    assert "no explanation for pckbd" in out


@pytest.mark.unit
def test_vector_bitmaps_and_lvt_flags():
    assert vectors([1, 0, 0, 0, 0, 0, 0, 1 << 12]) == [0, 236]
    assert vectors([0] * 8) == []
    assert lvt_text("LVTT", 0x200EC) == "vec 236 Fixed periodic"  # no polarity or trigger: LINT0/1 only
    assert lvt_text("LVT0", 0x10700) == "vec 0 ExtINT active-hi edge masked"
    assert lvt_text("LVT1", 0xA400) == "vec 0 NMI active-lo level"


@pytest.mark.qemu
def test_raw_section_has_no_explanation(snapshot, tmp_path):
    """A section the stream does not describe stays unexplained rather than guessed."""
    meta = snapshot("small-pc-e1000")
    with Snapshot.open(meta.path) as snap:
        dev = snap.devices.device("apic")
        assert [x.kind for x in explain(snap.devices, dev)] == ["local APIC"]
        dev.root.members.clear()  # as if the section were raw: no fields to read
        assert explain(snap.devices, dev) == []


_IRQ = re.compile(r"Bus\s+(\d+), device\s+(\d+), function (\d+):(?:(?!Bus ).)*?IRQ (\d+), pin ([A-D])", re.S)


@pytest.mark.qemu
@pytest.mark.parametrize("name", ["small-q35-virtio-2cpu", "linux-pc-3nic", "linux-q35-3nic-qemu10"])
def test_pci_functions_match_info_pci(snapshot, name):
    """Ids, BAR types and addresses, IRQ line and pin of every PCI function, as `info pci` showed
    them at the stop."""
    meta = snapshot(name)
    irqs = {
        (int(b), int(d), int(f)): (int(irq), pin) for b, d, f, irq, pin in _IRQ.findall(meta.state.pci_text)
    }
    with Snapshot.open(meta.path) as snap:
        functions = {x.get("address"): x for x in explain_all(snap.devices) if x.kind == "PCI function"}
        compared = 0
        for fn in meta.state.pci:
            addr = f"{fn['bus']:02x}:{fn['slot']:02x}.{fn['function']}"
            x = functions.get(addr)
            if x is None:
                continue  # a function whose config space is not in its vmstate (a host bridge)
            compared += 1
            assert (x.get("vendor"), x.get("device")) == (fn["vendor"], fn["device"]), addr
            for index, bar in fn["bars"].items():
                assert x.get(f"BAR{index}") == bar["start"], (addr, index)
                kind = next(v.text for v in x.values if v.name == f"BAR{index}")
                assert kind.startswith("I/O" if bar["kind"] == "io" else tuple(("32 bit", "64 bit"))), kind
            key = (fn["bus"], fn["slot"], fn["function"])
            if key in irqs:
                assert (x.get("interrupt_line"), "ABCD"[x.get("interrupt_pin") - 1]) == irqs[key], addr
        nics = [n for n in meta.config.nics if n.model.endswith("pci") or n.model in ("e1000", "rtl8139")]
        assert compared >= len(nics) + 1


@pytest.mark.qemu
@pytest.mark.linux
@pytest.mark.parametrize("name", ["linux-pc-3nic", "linux-q35-3nic-qemu10"])
def test_e1000_rings_point_at_the_drivers_descriptors(snapshot, name):
    """The ring addresses decoded from the registers are where Linux's e1000 driver keeps its
    descriptors: every RX descriptor the device owns holds a buffer address and is not yet done,
    and every TX descriptor before the head holds the buffer and length of a packet sent."""
    meta = snapshot(name)
    with Snapshot.open(meta.path) as snap:
        (x,) = [x for x in explain_all(snap.devices) if x.kind == "e1000 registers"]
        rdlen, rdh, rdt = x.get("RDLEN"), x.get("RDH"), x.get("RDT")
        count = rdlen // 16
        assert count and x.get("RCTL") & 2  # receiver enabled, a ring configured
        rx = snap.physical.read(x.get("RX ring"), rdlen)
        owned = [(rdh + i) % count for i in range((rdt - rdh) % count)]
        assert owned, "the driver posts receive buffers"
        for i in owned:
            desc = rx[16 * i : 16 * i + 16]
            assert int.from_bytes(desc[:8], "little") != 0, f"RX descriptor {i} has no buffer"
            assert desc[12] & 1 == 0, f"RX descriptor {i} owned by the device but marked done"
        tdh, tdt = x.get("TDH"), x.get("TDT")
        tx = snap.physical.read(x.get("TX ring"), x.get("TDLEN"))
        sent = [tx[16 * i : 16 * i + 16] for i in range(tdh)]
        assert tdh == tdt, "the transmit queue drained before the stop"
        assert sent, "the guest sent packets"
        # clear-on-read counters: the driver's watchdog reads both every 2 s, so they agree
        assert x.get("GPTC") == x.get("TPT")
        # each sent descriptor: a buffer address and a length (the driver clears only the status)
        assert all(int.from_bytes(d[:8], "little") and int.from_bytes(d[8:10], "little") for d in sent)
