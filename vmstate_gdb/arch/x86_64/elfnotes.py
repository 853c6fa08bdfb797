"""x86_64 notes of an ELF core, as QEMU's dump-guest-memory writes them (target/i386/arch_dump.c)."""

from __future__ import annotations

import struct

from ..elfnote import NT_PRSTATUS, make_note
from .cpu import X86Cpu

# target/i386/arch_dump.c: x86_64_elf_prstatus is pad1[32], pid, pad2[76], user_regs, pad3[8].
PRSTATUS_SIZE = 336
PRSTATUS_PID_OFFSET = 32
PRSTATUS_REGS_OFFSET = 112
# x86_64_user_regs_struct, in order (Linux's struct user_regs_struct).
USER_REGS = (
    "r15",
    "r14",
    "r13",
    "r12",
    "rbp",
    "rbx",
    "r11",
    "r10",
    "r9",
    "r8",
    "rax",
    "rcx",
    "rdx",
    "rsi",
    "rdi",
    "orig_rax",
    "rip",
    "cs",
    "eflags",
    "rsp",
    "ss",
    "fs_base",
    "gs_base",
    "ds",
    "es",
    "fs",
    "gs",
)
# QEMUCPUState (arch_dump.c), QEMUCPUSTATE_VERSION 1; newer QEMU appends kernel_gs_base and
# readers tell by the size field.
QEMU_CPUSTATE_VERSION = 1
QEMU_CPUSTATE_GPRS = (
    "rax",
    "rbx",
    "rcx",
    "rdx",
    "rsi",
    "rdi",
    "rsp",
    "rbp",
    "r8",
    "r9",
    "r10",
    "r11",
    "r12",
    "r13",
    "r14",
    "r15",
    "rip",
    "eflags",
)
QEMU_CPUSTATE_SEGMENTS = ("cs", "ds", "es", "fs", "gs", "ss", "ldt", "tr", "gdt", "idt")


def user_regs(cpu: X86Cpu) -> dict[str, int]:
    """The x86_64 user_regs_struct values QEMU puts in NT_PRSTATUS (orig_rax is always 0)."""
    regs = {name: cpu[name] for name in USER_REGS if name in cpu.values}
    regs.update(orig_rax=0, fs_base=cpu["fs.base"], gs_base=cpu["gs.base"])
    for seg in ("cs", "ss", "ds", "es", "fs", "gs"):
        regs[seg] = cpu[f"{seg}.selector"]
    return regs


def prstatus_note(cpu: X86Cpu) -> bytes:
    desc = bytearray(PRSTATUS_SIZE)
    # QEMU's cpu_index() is cpu->cpu_index + 1: thread ids 1..N, as gdb shows them.
    struct.pack_into("<I", desc, PRSTATUS_PID_OFFSET, cpu.index + 1)
    regs = user_regs(cpu)
    struct.pack_into("<27Q", desc, PRSTATUS_REGS_OFFSET, *(regs[n] & (2**64 - 1) for n in USER_REGS))
    return make_note(b"CORE", NT_PRSTATUS, bytes(desc))


def qemu_cpustate_note(cpu: X86Cpu) -> bytes:
    body = b"".join(struct.pack("<Q", cpu[n]) for n in QEMU_CPUSTATE_GPRS)
    for seg in QEMU_CPUSTATE_SEGMENTS:
        body += struct.pack(
            "<IIIIQ", cpu[f"{seg}.selector"], cpu[f"{seg}.limit"], cpu[f"{seg}.flags"], 0, cpu[f"{seg}.base"]
        )
    body += struct.pack("<5Q", cpu["cr0"], 0, cpu["cr2"], cpu["cr3"], cpu["cr4"])
    body += struct.pack("<Q", cpu["kernel_gs_base"])
    desc = struct.pack("<II", QEMU_CPUSTATE_VERSION, 8 + len(body)) + body
    return make_note(b"QEMU", 0, desc)
