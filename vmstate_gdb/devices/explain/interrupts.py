"""x86 interrupt chips: the local APIC of each vCPU, the IOAPIC and both i8259s.

Field names are QEMU's (hw/intc/apic_common.c, ioapic_common.c, i8259_common.c); register names
and layouts are Intel's (SDM vol. 3 ch. 11; 82093AA; 8259A), as `info lapic` / `info pic` print them.
"""

from __future__ import annotations

from . import Explained, register

# QEMU's lvt[] order (apic_internal.h APIC_LVT_*) and the register names `info lapic` uses.
LVT_NAMES = ("LVTT", "LVTTHMR", "LVTPC", "LVT0", "LVT1", "LVTERR")
_DELIVERY = {0: "Fixed", 1: "LowPrio", 2: "SMI", 4: "NMI", 5: "INIT", 7: "ExtINT"}
_TIMER_MODE = {0: "one-shot", 1: "periodic", 2: "tsc-deadline"}
#: the parts of an LVT entry that can be set by name (SDM vol. 3 fig. 11-8)
LVT_BITS = {"vector": (0, 8), "delivery": (8, 3), "polarity": (13, 1), "trigger": (15, 1), "masked": (16, 1),
            "timer_mode": (17, 2)}  # fmt: skip


def vectors(words: list[int]) -> list[int]:
    """A 256-bit vector bitmap kept as eight 32-bit words -> the set vectors, ascending."""
    return [i * 32 + b for i, w in enumerate(words) for b in range(32) if w >> b & 1]


def lvt_text(name: str, raw: int) -> str:
    parts = [f"vec {raw & 0xFF}", _DELIVERY.get(raw >> 8 & 7, f"mode {raw >> 8 & 7}")]
    if name not in ("LVTT", "LVTTHMR", "LVTPC", "LVTERR"):  # only LINT0/1 have polarity and trigger
        parts.append("active-lo" if raw & 1 << 13 else "active-hi")
        parts.append("level" if raw & 1 << 15 else "edge")
    if raw & 1 << 12:
        parts.append("pending")
    if raw & 1 << 16:
        parts.append("masked")
    if name == "LVTT":
        parts.append(_TIMER_MODE.get(raw >> 17 & 3, "reserved-mode"))
    return " ".join(parts)


_ICR_DELIVERY = {0: "Fixed", 1: "LowPrio", 2: "SMI", 4: "NMI", 5: "INIT", 6: "StartUp"}
_SHORTHAND = {0: "to the destination", 1: "to self", 2: "to all", 3: "to all but self"}


def icr_text(raw: int) -> str:
    """The last interrupt command sent (SDM vol. 3 fig. 11-12)."""
    mode = raw >> 8 & 7
    parts = [_ICR_DELIVERY.get(mode, f"mode {mode}"), f"vec {raw & 0xFF:#x}", _SHORTHAND[raw >> 18 & 3]]
    parts.append("logical" if raw & 1 << 11 else "physical")
    if mode == 5:
        parts.append("assert" if raw & 1 << 14 else "de-assert")
    if raw & 1 << 12:
        parts.append("send pending")
    return " ".join(parts)


def _words(value, rel: str) -> list[int]:
    return [value(f"{rel}[{i}]") for i in range(8)]


def explain_apic(device, value) -> Explained:
    x = Explained(device.key, "local APIC")
    base = value("apicbase")
    x.add("APICBASE", base, f"base {base & ~0xFFF:#x}{' enabled' if base & 1 << 11 else ' disabled'}"
          f"{' BSP' if base & 1 << 8 else ''}", "apicbase")  # fmt: skip
    x.add("ID", value("id"), f"APIC id {value('id')}", "id")
    tpr = value("tpr")
    x.add("TPR", tpr, f"priority class {tpr >> 4}", "tpr")
    spiv = value("spurious_vec")
    x.add("SPIV", spiv, f"{'APIC enabled' if spiv & 0x100 else 'APIC disabled'}, spurious vec {spiv & 0xFF}",
          "spurious_vec")  # fmt: skip
    x.add("LDR", value("log_dest"), "logical destination", "log_dest")
    x.add("DFR", value("dest_mode"), "flat" if value("dest_mode") == 0xF else "cluster", "dest_mode")
    for i, name in enumerate(LVT_NAMES):
        raw = value(f"lvt[{i}]")
        x.add(name, raw, lvt_text(name, raw), f"lvt[{i}]", bits=LVT_BITS)
    x.add("ESR", value("esr"), "error status", "esr")
    x.add("ICR", value("icr[0]"), icr_text(value("icr[0]")), "icr[0]")
    x.add("ICR2", value("icr[1]"), f"destination {value('icr[1]') >> 24}", "icr[1]")
    dcr = value("divide_conf")
    shift = ((dcr & 3) | (dcr >> 1 & 4)) + 1 & 7
    x.add("DCR", dcr, f"divide by {1 << shift}", "divide_conf")
    x.add("initial_count", value("initial_count"), "TMICT, the timer's initial count (the current count "
          "TMCCT follows from QEMU's clock, which the stream does not give)", "initial_count")  # fmt: skip
    for name, rel in (("ISR", "isr"), ("TMR", "tmr"), ("IRR", "irr")):
        vs = vectors(_words(value, rel))
        x.add(name, vs, " ".join(map(str, vs)) or "(none)", rel)
    return x


def explain_i8259(device, value) -> Explained:
    x = Explained(device.key, "i8259 PIC")
    for name in ("irr", "imr", "isr"):
        raw = value(name)
        lines = [i for i in range(8) if raw >> i & 1]
        label = {"irr": "requested", "imr": "masked", "isr": "in service"}[name]
        x.add(name.upper(), raw, f"{label}: {' '.join(f'IR{i}' for i in lines) or 'none'}", name)
    x.add("irq_base", value("irq_base"), f"vectors {value('irq_base'):#x}..{value('irq_base') + 7:#x}",
          "irq_base")  # fmt: skip
    elcr = value("elcr")
    x.add("ELCR", elcr, "level: " + (" ".join(f"IR{i}" for i in range(8) if elcr >> i & 1) or "none"), "elcr")
    return x


#: an IOAPIC redirection entry's parts (82093AA, 3.2.4)
REDIRECTION_BITS = {"vector": (0, 8), "delivery": (8, 3), "dest_mode": (11, 1), "polarity": (13, 1),
                    "trigger": (15, 1), "masked": (16, 1), "dest": (56, 8)}  # fmt: skip


def redirection_text(raw: int) -> str:
    parts = [f"dest={raw >> 56}", f"vec={raw & 0xFF}", "active-lo" if raw & 1 << 13 else "active-hi",
             "level" if raw & 1 << 15 else "edge"]  # fmt: skip
    if raw & 1 << 16:
        parts.append("masked")
    parts.append(_DELIVERY.get(raw >> 8 & 7, f"mode {raw >> 8 & 7}").lower())
    parts.append("logical" if raw & 1 << 11 else "physical")
    if raw & 1 << 14:
        parts.append("remote-IRR")
    return " ".join(parts)


def explain_ioapic(device, value) -> Explained:
    x = Explained(device.key, "IOAPIC")
    x.add("ID", value("id"), f"IOAPIC id {value('id')}", "id")
    x.add("IOREGSEL", value("ioregsel"), "selected register", "ioregsel")
    irr = value("irr")
    x.add(
        "IRR", irr, "pending pins: " + (" ".join(str(i) for i in range(32) if irr >> i & 1) or "none"), "irr"
    )
    node = device.root.child("ioredtbl")
    count = node.count if node is not None else 24  # type: ignore[attr-defined]
    for pin in range(count):
        raw = value(f"ioredtbl[{pin}]")
        x.add(f"pin{pin}", raw, redirection_text(raw), f"ioredtbl[{pin}]", bits=REDIRECTION_BITS)
    return x


register("apic", explain_apic)
register("i8259", explain_i8259)
register("ioapic", explain_ioapic)
