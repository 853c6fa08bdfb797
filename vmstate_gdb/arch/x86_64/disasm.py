"""Disassembly in a vCPU's own mode (16, 32 or 64 bit) with capstone."""

from __future__ import annotations

import capstone

from ...errors import AddressError
from .. import Instruction
from .cpu import X86Cpu

_MODES = {16: capstone.CS_MODE_16, 32: capstone.CS_MODE_32, 64: capstone.CS_MODE_64}


def code_address(cpu: X86Cpu) -> int:
    """The linear address of the next instruction: CS base + rip outside 64-bit mode."""
    if cpu.bits == 64:
        return cpu["rip"]
    return (cpu["cs.base"] + cpu["rip"]) & 0xFFFFFFFF


def disassemble(code: bytes, address: int, bits: int, count: int = 1) -> list[Instruction]:
    md = capstone.Cs(capstone.CS_ARCH_X86, _MODES[bits])
    out = []
    for insn in md.disasm(code, address):
        out.append(
            Instruction(insn.address, insn.size, f"{insn.mnemonic} {insn.op_str}".strip(), bytes(insn.bytes))
        )
        if len(out) >= count:
            break
    return out


def disassemble_at(read, cpu: X86Cpu, address: int | None = None, count: int = 1) -> list[Instruction]:
    """``read(address, size)`` reads linear memory of the vCPU (virtual or physical as its mode says)."""
    address = code_address(cpu) if address is None else address
    size = 16 * count
    try:
        code = read(address, size)
    except AddressError:
        code = b""
        for n in (64, 16, 1):  # maybe the instructions end just before an unmapped page
            try:
                code = read(address, min(n, size))
                break
            except AddressError:
                continue
    return disassemble(code, address, cpu.bits, count)
