"""aarch64 notes of an ELF core, as QEMU's dump-guest-memory writes them (target/arm/arch_dump.c):
per vCPU an NT_PRSTATUS (392 bytes: Linux's elf_prstatus with user_pt_regs) and an NT_PRFPREG
(528 bytes: user_fpsimd_state), both named "CORE"."""

from __future__ import annotations

import struct

from ..elfnote import NT_PRFPREG, NT_PRSTATUS, make_note
from .cpu import Aarch64Cpu

PRSTATUS_SIZE = 392
PRSTATUS_PID_OFFSET = 32
PRSTATUS_REGS_OFFSET = 112  # pr_reg: regs[31], sp, pc, pstate
PRSTATUS_FPVALID_OFFSET = 112 + 34 * 8
FPREGSET_SIZE = 528  # vregs[32] (128-bit), fpsr, fpcr, 8 bytes of padding
USER_REGS = tuple(f"x{i}" for i in range(31)) + ("sp", "pc", "pstate")


def prstatus_note(cpu: Aarch64Cpu) -> bytes:
    desc = bytearray(PRSTATUS_SIZE)
    struct.pack_into("<I", desc, PRSTATUS_PID_OFFSET, cpu.index + 1)  # cpu_index + 1, as QEMU
    struct.pack_into("<34Q", desc, PRSTATUS_REGS_OFFSET, *(cpu[n] for n in USER_REGS))
    struct.pack_into("<I", desc, PRSTATUS_FPVALID_OFFSET, 1)
    return make_note(b"CORE", NT_PRSTATUS, bytes(desc))


def fpregset_note(cpu: Aarch64Cpu) -> bytes:
    desc = bytearray(FPREGSET_SIZE)
    for i in range(32):
        q = cpu.q(i)
        struct.pack_into("<QQ", desc, 16 * i, q & (1 << 64) - 1, q >> 64)
    struct.pack_into("<II", desc, 512, cpu.fpsr, cpu.fpcr)
    return make_note(b"CORE", NT_PRFPREG, bytes(desc))
