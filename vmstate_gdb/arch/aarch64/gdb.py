"""The aarch64 register file as gdb sees it: target description and the g-packet layout.

Order and sizes follow QEMU's aarch64 gdbstub (target/arm/gdbstub64.c): the core feature (x0-x30,
sp, pc, cpsr: 34 registers, QEMU's whole g packet) then the FPU feature (v0-v31, fpsr, fpcr), so
register numbers match QEMU's. Our g packet also carries the FPU registers (gdb takes a longer g),
then a few EL1 system registers in a feature of their own (what an OS layer or a kernel developer
looks at: the page-table roots, TCR, SCTLR, VBAR, the exception registers).
"""

from __future__ import annotations

from ...errors import EditError
from .. import GdbRegister
from .cpu import FPCR_MASK, FPSR_MASK, Aarch64Cpu

CORE = [f"x{i}" for i in range(31)] + ["sp", "pc", "cpsr"]
FPU = [f"v{i}" for i in range(32)] + ["fpsr", "fpcr"]
SYSTEM = [
    "sctlr_el1",
    "ttbr0_el1",
    "ttbr1_el1",
    "tcr_el1",
    "mair_el1",
    "vbar_el1",
    "esr_el1",
    "far_el1",
    "elr_el1",
    "spsr_el1",
    "sp_el0",
    "sp_el1",
    "tpidr_el1",
    "tpidr_el0",
    "contextidr_el1",
    "cpacr_el1",
]


def _register_table() -> list[GdbRegister]:
    names_bits = [(n, 64) for n in CORE[:33]] + [("cpsr", 32)]
    names_bits += [(n, 128) for n in FPU[:32]] + [("fpsr", 32), ("fpcr", 32)]
    names_bits += [(n, 64) for n in SYSTEM]
    return [GdbRegister(n, i, b) for i, (n, b) in enumerate(names_bits)]


REGISTERS = _register_table()
BY_NAME = {r.name: r for r in REGISTERS}
CORE_G_SIZE = sum(r.bits // 8 for r in REGISTERS[: len(CORE)])  # QEMU's g packet: 268 bytes


def target_xml() -> str:
    cpsr = (
        '<flags id="cpsr_flags" size="4">'
        '<field name="SP" start="0" end="0"/><field name="EL" start="2" end="3"/>'
        '<field name="nRW" start="4" end="4"/><field name="F" start="6" end="6"/>'
        '<field name="I" start="7" end="7"/><field name="A" start="8" end="8"/>'
        '<field name="D" start="9" end="9"/><field name="BTYPE" start="10" end="11"/>'
        '<field name="SSBS" start="12" end="12"/><field name="IL" start="20" end="20"/>'
        '<field name="SS" start="21" end="21"/><field name="PAN" start="22" end="22"/>'
        '<field name="UAO" start="23" end="23"/><field name="V" start="28" end="28"/>'
        '<field name="C" start="29" end="29"/><field name="Z" start="30" end="30"/>'
        '<field name="N" start="31" end="31"/></flags>'
    )
    core = (
        f'<feature name="org.gnu.gdb.aarch64.core">{cpsr}'
        + "".join(f'<reg name="x{i}" bitsize="64" type="int" regnum="{i}"/>' for i in range(31))
        + '<reg name="sp" bitsize="64" type="data_ptr"/><reg name="pc" bitsize="64" type="code_ptr"/>'
        + '<reg name="cpsr" bitsize="32" type="cpsr_flags"/></feature>'
    )
    vectors = (
        '<vector id="v2d" type="ieee_double" count="2"/><vector id="v2u" type="uint64" count="2"/>'
        '<vector id="v2i" type="int64" count="2"/><vector id="v4f" type="ieee_single" count="4"/>'
        '<vector id="v4u" type="uint32" count="4"/><vector id="v4i" type="int32" count="4"/>'
        '<vector id="v8f" type="ieee_half" count="8"/><vector id="v8u" type="uint16" count="8"/>'
        '<vector id="v8i" type="int16" count="8"/><vector id="v16u" type="uint8" count="16"/>'
        '<vector id="v16i" type="int8" count="16"/><vector id="v1u" type="uint128" count="1"/>'
        '<vector id="v1i" type="int128" count="1"/>'
        '<union id="vnd"><field name="f" type="v2d"/><field name="u" type="v2u"/>'
        '<field name="s" type="v2i"/></union>'
        '<union id="vns"><field name="f" type="v4f"/><field name="u" type="v4u"/>'
        '<field name="s" type="v4i"/></union>'
        '<union id="vnh"><field name="f" type="v8f"/><field name="u" type="v8u"/>'
        '<field name="s" type="v8i"/></union>'
        '<union id="vnb"><field name="u" type="v16u"/><field name="s" type="v16i"/></union>'
        '<union id="vnq"><field name="u" type="v1u"/><field name="s" type="v1i"/></union>'
        '<union id="aarch64v"><field name="d" type="vnd"/><field name="s" type="vns"/>'
        '<field name="h" type="vnh"/><field name="b" type="vnb"/><field name="q" type="vnq"/></union>'
    )
    fpu = (
        f'<feature name="org.gnu.gdb.aarch64.fpu">{vectors}'
        + "".join(
            f'<reg name="v{i}" bitsize="128" type="aarch64v"'
            + (f' regnum="{BY_NAME["v0"].number}"' if i == 0 else "")
            + "/>"
            for i in range(32)
        )
        + '<reg name="fpsr" bitsize="32" type="int"/><reg name="fpcr" bitsize="32" type="int"/></feature>'
    )
    system = (
        '<feature name="org.qemu.gdb.aarch64.vmstate-system">'
        + "".join(
            f'<reg name="{n}" bitsize="64" type="{"code_ptr" if n in ("vbar_el1", "elr_el1") else "uint64"}"'
            + (f' regnum="{BY_NAME[n].number}"' if i == 0 else "")
            + ' group="system"/>'
            for i, n in enumerate(SYSTEM)
        )
        + "</feature>"
    )
    return (
        '<?xml version="1.0"?><!DOCTYPE target SYSTEM "gdb-target.dtd"><target version="1.0">'
        "<architecture>aarch64</architecture>" + core + fpu + system + "</target>"
    )


def _field(name: str) -> str:
    """The Aarch64Cpu value behind a gdb register that is one stored field."""
    return {"cpsr": "pstate"}.get(name, name)


def read_register(cpu: Aarch64Cpu, reg: GdbRegister) -> int:
    """The value QEMU's gdbstub would report for ``reg`` on this vCPU (0 for a system register the
    stream does not hold)."""
    name = reg.name
    if name.startswith("v") and name[1:].isdigit():
        return cpu.q(int(name[1:]))
    if name == "fpsr":
        return cpu.fpsr
    if name == "fpcr":
        return cpu.fpcr
    return cpu.values.get(_field(name), 0) & ((1 << reg.bits) - 1)


def write_register(target, cpu: Aarch64Cpu, reg: GdbRegister, value: int) -> None:
    snap = target.snap
    name = reg.name
    if name.startswith("v") and name[1:].isdigit():
        i = int(name[1:])
        writes = [(f"q{i}.lo", value & (1 << 64) - 1), (f"q{i}.hi", value >> 64)]
    elif name in ("fpsr", "fpcr"):
        mask = FPSR_MASK if name == "fpsr" else FPCR_MASK
        writes = [("fpscr", (cpu.values.get("fpscr", 0) & ~mask | value & mask) & 0xFFFFFFFF)]
    else:
        writes = [(_field(name), value)]
    for field, field_value in writes:
        if field not in cpu.values:
            raise EditError(f"{name}: this snapshot's vCPU {cpu.index} has no {field} in its state")
        snap.set_register(cpu.index, field, field_value)
