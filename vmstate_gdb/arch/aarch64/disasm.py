"""A64 disassembly with capstone (AArch32 code is not decoded)."""

from __future__ import annotations

import capstone

from ...errors import UnsupportedError
from .. import Instruction


def disassemble(code: bytes, address: int, bits: int, count: int = 1) -> list[Instruction]:
    if bits != 64:
        raise UnsupportedError("AArch32 code is not disassembled (only A64)")
    arch = getattr(capstone, "CS_ARCH_AARCH64", None) or capstone.CS_ARCH_ARM64  # renamed in capstone 6
    md = capstone.Cs(arch, capstone.CS_MODE_ARM)
    out = []
    for insn in md.disasm(code, address):
        out.append(
            Instruction(insn.address, insn.size, f"{insn.mnemonic} {insn.op_str}".strip(), bytes(insn.bytes))
        )
        if len(out) >= count:
            break
    return out
