"""What the test guests are: symbols of the small guest's ELF and the Linux guest's System.map."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from vmstate_gdb.symbols import load_symbols

ROOT = Path(__file__).resolve().parent.parent
SMALL_ELF = ROOT / "tests/guest/build/guest.elf"
LINUX_MAP = ROOT / "tests/linux/build/System.map"
HIGHER_HALF = 0xFFFFFFFF80000000


@cache
def small_symbols() -> dict[str, int]:
    return load_symbols(str(SMALL_ELF))


@cache
def linux_symbols() -> dict[str, int]:
    return load_symbols(str(LINUX_MAP))


def expected_macs(meta) -> dict[str, str]:
    """NIC model (as our reader names it) -> MAC the VM was started with."""
    names = {"virtio-net-pci": "virtio-net"}
    return {names.get(n.model, n.model): n.mac for n in meta.config.nics}


GPRS = [
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
]


def assert_registers_equal_qemus(snap, meta) -> None:
    """Every vCPU's registers as we decode them equal QEMU's `info registers` at stop time
    (32-bit values where QEMU printed a 32-bit vCPU)."""
    assert len(snap.cpus) == meta.config.cpus
    for cpu, qemu in zip(snap.cpus, meta.state.registers, strict=True):
        long_mode = bool(cpu["efer"] & (1 << 10))  # QEMU prints 64-bit registers when EFER.LMA
        mask = (1 << 64) - 1 if long_mode else 0xFFFFFFFF
        for reg in GPRS if long_mode else [r for r in GPRS if not r[1:].isdigit()]:
            assert cpu[reg.lower()] & mask == qemu[reg], f"cpu{cpu.index} {reg}"
        assert cpu["eflags"] & 0xFFFFFFFF == qemu["RFL"]
        for cr in ("CR0", "CR2", "CR3", "CR4"):
            assert cpu[cr.lower()] & mask == qemu[cr], f"cpu{cpu.index} {cr}"
        assert cpu["efer"] == qemu["EFER"]
        for seg in ("ES", "CS", "SS", "DS", "FS", "GS", "LDT", "TR"):
            s = seg.lower()
            assert cpu[f"{s}.selector"] == qemu[seg], f"cpu{cpu.index} {seg}"
            assert cpu[f"{s}.base"] & mask == qemu[f"{seg}.base"], f"cpu{cpu.index} {seg}.base"
            assert cpu[f"{s}.limit"] == qemu[f"{seg}.limit"], f"cpu{cpu.index} {seg}.limit"
            assert cpu[f"{s}.flags"] == qemu[f"{seg}.flags"], f"cpu{cpu.index} {seg}.flags"
        for table in ("GDT", "IDT"):
            assert cpu[f"{table.lower()}.base"] & mask == qemu[f"{table}.base"]
            assert cpu[f"{table.lower()}.limit"] == qemu[f"{table}.limit"]
