"""QEMU's own view of a stopped VM, recorded at capture time as the oracle for our readers.

``info registers`` (per vCPU), ``info pci``, ``info network`` and ``query-rx-filter`` are kept as
raw text and as parsed values.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

_SEGMENTS = ("ES", "CS", "SS", "DS", "FS", "GS", "LDT", "TR")
_SEGMENT_LINE = re.compile(
    r"^(?P<name>ES|CS|SS|DS|FS|GS|LDT|TR)\s*=(?P<sel>[0-9a-f]{4}) (?P<base>[0-9a-f]+) "
    r"(?P<limit>[0-9a-f]+) (?P<flags>[0-9a-f]+)"
)
_TABLE_LINE = re.compile(r"^(?P<name>GDT|IDT)=\s+(?P<base>[0-9a-f]+) (?P<limit>[0-9a-f]+)")
_PAIR = re.compile(r"\b([A-Z][A-Z0-9]*)\s*=([0-9a-f]+)\b")
# Only these plain NAME=hex pairs are kept (FPU/XMM/DR lines are left in the raw text).
_SCALARS = {
    "RAX",
    "RBX",
    "RCX",
    "RDX",
    "RSI",
    "RDI",
    "RBP",
    "RSP",
    "R8",
    "R9",
    "R10",
    "R11",
    "R12",
    "R13",
    "R14",
    "R15",
    "RIP",
    "RFL",
    "EAX",
    "EBX",
    "ECX",
    "EDX",
    "ESI",
    "EDI",
    "EBP",
    "ESP",
    "EIP",
    "EFL",
    "CPL",
    "HLT",
    "SMM",
    "A20",
    "CR0",
    "CR2",
    "CR3",
    "CR4",
    "EFER",
}


def parse_info_registers(text: str) -> dict[str, int]:
    """One vCPU's ``info registers`` text -> {"RAX": ..., "CS": sel, "CS.base": ..., "GDT.base": ...,
    "FS_BASE": ..., "GS_BASE": ...}. In 32-bit mode QEMU prints EAX..EIP/EFL; those are also
    stored under the R names so callers need not care which mode the vCPU was in."""
    regs: dict[str, int] = {}
    for line in text.splitlines():
        line = line.rstrip()
        m = _SEGMENT_LINE.match(line)
        if m:
            name = m["name"]
            regs[name] = int(m["sel"], 16)
            regs[f"{name}.base"] = int(m["base"], 16)
            regs[f"{name}.limit"] = int(m["limit"], 16)
            regs[f"{name}.flags"] = int(m["flags"], 16)
            continue
        m = _TABLE_LINE.match(line)
        if m:
            regs[f"{m['name']}.base"] = int(m["base"], 16)
            regs[f"{m['name']}.limit"] = int(m["limit"], 16)
            continue
        for name, value in _PAIR.findall(line):
            if name in _SCALARS:
                regs[name] = int(value, 16)
    for short in ("AX", "BX", "CX", "DX", "SI", "DI", "BP", "SP", "IP"):
        if f"E{short}" in regs and f"R{short}" not in regs:
            regs[f"R{short}"] = regs[f"E{short}"]
    if "EFL" in regs and "RFL" not in regs:
        regs["RFL"] = regs["EFL"]
    if "FS.base" in regs:
        regs["FS_BASE"] = regs["FS.base"]
    if "GS.base" in regs:
        regs["GS_BASE"] = regs["GS.base"]
    return regs


_AARCH64_PAIR = re.compile(r"\b(PC|X\d\d|SP|PSTATE|FPCR|FPSR)=([0-9a-f]+)\b")
_AARCH64_Q = re.compile(r"\bQ(\d\d)=([0-9a-f]{16}):([0-9a-f]{16})\b")


def parse_info_registers_aarch64(text: str) -> dict[str, int]:
    """One aarch64 vCPU's ``info registers`` text -> {"PC", "X00".."X30", "SP", "PSTATE", "FPCR",
    "FPSR", "Q00".."Q31" (128-bit)} (FPCR/FPSR/Q only when QEMU printed them: FPU enabled)."""
    regs = {name: int(value, 16) for name, value in _AARCH64_PAIR.findall(text)}
    for i, hi, lo in _AARCH64_Q.findall(text):
        regs[f"Q{i}"] = int(hi, 16) << 64 | int(lo, 16)
    return regs


def split_cpus(text: str) -> list[str]:
    """``info registers -a`` text -> one chunk per vCPU (split at the ``CPU#N`` headers)."""
    chunks = re.split(r"^CPU#\d+\s*$", text, flags=re.M)
    return [c for c in chunks[1:]] if len(chunks) > 1 else [text]


_PCI_DEVICE = re.compile(r"Bus\s+(\d+), device\s+(\d+), function (\d+):")
_PCI_ID = re.compile(r"PCI device ([0-9a-f]{4}):([0-9a-f]{4})")
_PCI_BAR = re.compile(
    r"BAR(\d+): (?:(32|64) bit (?:prefetchable )?memory|I/O) at (0x[0-9a-f]+) \[(0x[0-9a-f]+)\]"
)


def parse_info_pci(text: str) -> list[dict[str, Any]]:
    """``info pci`` -> [{"bus", "slot", "function", "class", "vendor", "device", "bars": {n: {...}}}]"""
    devices: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for line in text.splitlines():
        m = _PCI_DEVICE.search(line)
        if m:
            current = {"bus": int(m[1]), "slot": int(m[2]), "function": int(m[3]), "bars": {}, "id": ""}
            devices.append(current)
            continue
        if current is None:
            continue
        m = _PCI_ID.search(line)
        if m and "vendor" not in current and "subsystem" not in line:
            current["class"] = line.split(":")[0].strip()
            current["vendor"], current["device"] = int(m[1], 16), int(m[2], 16)
            continue
        m = _PCI_BAR.search(line)
        if m:
            kind = "io" if "I/O" in line else "memory"
            current["bars"][int(m[1])] = {"kind": kind, "start": int(m[3], 16), "end": int(m[4], 16)}
            continue
        if line.strip().startswith("id "):
            current["id"] = line.strip()[3:].strip().strip('"')
    return devices


def parse_info_network(text: str) -> dict[str, dict[str, str]]:
    """``info network`` -> {"nic0": {"model": "e1000", "macaddr": "52:54:..."}, ...}"""
    nics: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        line = line.strip().lstrip("\\_ ").strip()
        if ":" not in line or "=" not in line:
            continue
        name, _, rest = line.partition(":")
        fields = dict(kv.split("=", 1) for kv in rest.strip().split(",") if "=" in kv)
        if fields.get("type") == "nic":
            nics[name.strip()] = fields
    return nics


@dataclass
class RecordedState:
    """What QEMU itself reported about the stopped VM."""

    registers_text: list[str] = field(default_factory=list)
    registers: list[dict[str, int]] = field(default_factory=list)
    pci_text: str = ""
    pci: list[dict[str, Any]] = field(default_factory=list)
    network_text: str = ""
    network: dict[str, dict[str, str]] = field(default_factory=dict)
    rx_filter: list[dict[str, Any]] | None = None
    rx_filter_error: str | None = None
    #: QEMU's gdbstub per vCPU ({"g": hex of the g packet, "p": {regnum hex: reply}}), where recorded
    gdbstub: list[dict[str, Any]] = field(default_factory=list)
    #: HMP text by command ("info pic", "info irq", "info qtree", "info mtree -f"), x86 guests only
    monitor: dict[str, str] = field(default_factory=dict)
    #: HMP ``info lapic`` of each vCPU (selected with ``cpu N``), x86 guests only
    lapic_text: list[str] = field(default_factory=list)
    #: QEMU >= 7.2 x-query-virtio*: [{"path", "name", "status": {...}, "queues": [{...}, ...]}]
    virtio: list[dict[str, Any]] = field(default_factory=list)
    #: wall-clock time (UTC, seconds since the epoch) of the ``stop``: the RTC's reference
    stopped_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["pci"] = [dict(d, bars={str(k): v for k, v in d["bars"].items()}) for d in self.pci]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RecordedState:
        data = dict(data)
        data["pci"] = [dict(d, bars={int(k): v for k, v in d["bars"].items()}) for d in data.get("pci", [])]
        return cls(**data)


_LAPIC_REG = re.compile(r"^(LVT\w+|SPIV|ICR2?|ESR)\s+0x([0-9a-f]+)", re.M)
_LAPIC_PAIR = re.compile(r"\b(APR|TPR|DFR|LDR|PPR) 0x([0-9a-f]+)")
_LAPIC_TIMER = re.compile(r"DCR=0x([0-9a-f]+).*initial_count = (\d+) current_count = (\d+)")
_LAPIC_VECTORS = re.compile(r"^(ISR|IRR)\s+(.*)$", re.M)


def parse_info_lapic(text: str) -> dict[str, Any]:
    """One vCPU's ``info lapic`` -> {"LVT0": raw, ..., "SPIV", "ICR", "ESR", "TPR", ..., "DCR",
    "initial_count", "current_count", "ISR": [vectors], "IRR": [vectors]}."""
    regs: dict[str, Any] = {}
    for name, value in _LAPIC_REG.findall(text):
        regs[name] = int(value, 16)
    for name, value in _LAPIC_PAIR.findall(text):
        regs[name] = int(value, 16)
    m = _LAPIC_TIMER.search(text)
    if m:
        regs["DCR"], regs["initial_count"], regs["current_count"] = int(m[1], 16), int(m[2]), int(m[3])
    for name, rest in _LAPIC_VECTORS.findall(text):
        # "(none)" or "65 236" (vectors, decimal), possibly with "(level)" marks
        regs[name] = [int(v) for v in re.findall(r"\b(\d+)\b", rest)]
    return regs


_PIC_LINE = re.compile(r"^(pic\d): (.*)$", re.M)
_IOAPIC_PIN = re.compile(r"^\s+pin (\d+)\s+0x([0-9a-f]+)", re.M)


def parse_info_pic(text: str) -> dict[str, dict[str, int]]:
    """``info pic`` -> {"pic0": {"irr", "imr", "isr", "irq_base", "elcr", ...}, "pic1": ...,
    "ioapic": {"pin0": raw redirection entry, ...}} (all values hex in QEMU's text)."""
    chips: dict[str, dict[str, int]] = {}
    for name, rest in _PIC_LINE.findall(text):
        chips[name] = {k: int(v, 16) for k, v in re.findall(r"(\w+)=([0-9a-f]+)", rest)}
    pins = {f"pin{n}": int(v, 16) for n, v in _IOAPIC_PIN.findall(text)}
    if pins:
        chips["ioapic"] = pins
    return chips
