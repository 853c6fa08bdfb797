"""x86_64 `info registers` in the layout of QEMU's x86_cpu_dump_state (target/i386/cpu-dump.c)."""

from __future__ import annotations

from .cpu import X86Cpu
from .gdb import GDB_GPRS, is_64bit_code

HF_INHIBIT_IRQ, HF_SMM, HF_PE = 1 << 3, 1 << 19, 1 << 7  # target/i386/cpu.h
DESC_P, DESC_S, DESC_CS, DESC_C, DESC_E, DESC_R, DESC_W, DESC_A = (
    1 << 15,
    1 << 12,
    1 << 11,
    1 << 10,
    1 << 10,
    1 << 9,
    1 << 9,
    1 << 8,
)
DESC_B, DESC_L = 1 << 22, 1 << 21
_SYSTEM_TYPES_LEGACY = (
    "Reserved",
    "TSS16-avl",
    "LDT",
    "TSS16-busy",
    "CallGate16",
    "TaskGate",
    "IntGate16",
    "TrapGate16",
    "Reserved",
    "TSS32-avl",
    "Reserved",
    "TSS32-busy",
    "CallGate32",
    "Reserved",
    "IntGate32",
    "TrapGate32",
)
_SYSTEM_TYPES_LONG = (
    "<hiword>",
    "Reserved",
    "LDT",
    "Reserved",
    "Reserved",
    "Reserved",
    "Reserved",
    "Reserved",
    "Reserved",
    "TSS64-avl",
    "Reserved",
    "TSS64-busy",
    "CallGate64",
    "Reserved",
    "IntGate64",
    "TrapGate64",
)


def _segment_line(cpu: X86Cpu, name: str, wide: bool) -> str:
    seg = cpu.segment(name)
    label = f"{name.upper():<3}"
    base = f"{seg.base:016x}" if wide else f"{seg.base & 0xFFFFFFFF:08x}"
    line = f"{label}={seg.selector & 0xFFFF:04x} {base} {seg.limit:08x} {seg.flags:08x}"
    if not (cpu["hflags"] & HF_PE) or not seg.flags & DESC_P:
        return line
    line += f" DPL={seg.dpl} "
    f = seg.flags
    if f & DESC_S:
        if f & DESC_CS:
            kind = "CS64" if f & DESC_L else ("CS32" if f & DESC_B else "CS16")
            line += f"{kind} [{'C' if f & DESC_C else '-'}{'R' if f & DESC_R else '-'}"
        else:
            kind = "DS  " if f & DESC_B else "DS16"
            line += f"{kind} [{'E' if f & DESC_E else '-'}{'W' if f & DESC_W else '-'}"
        line += f"{'A' if f & DESC_A else '-'}]"
    else:
        table = _SYSTEM_TYPES_LONG if cpu["efer"] & (1 << 10) else _SYSTEM_TYPES_LEGACY
        line += table[(f >> 8) & 0xF]
    return line


def format_registers(cpu: X86Cpu) -> str:
    """One vCPU's registers in the layout of QEMU's `info registers`."""
    wide = is_64bit_code(cpu)
    v = cpu.values
    lines = []
    if wide:
        names = GDB_GPRS  # QEMU prints them in the same order as its gdbstub
        for row in range(4):
            lines.append(" ".join(f"{n.upper():<3}={v[n]:016x}" for n in names[4 * row : 4 * row + 4]))
        ip = f"RIP={v['rip']:016x} RFL={v['eflags'] & 0xFFFFFFFF:08x}"
    else:
        names = ("eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "esp")
        for row in range(2):
            lines.append(
                " ".join(
                    f"{n.upper()}={v['r' + n[1:]] & 0xFFFFFFFF:08x}" for n in names[4 * row : 4 * row + 4]
                )
            )
        ip = f"EIP={v['rip'] & 0xFFFFFFFF:08x} EFL={v['eflags'] & 0xFFFFFFFF:08x}"
    fl = v["eflags"]
    flags = "".join(
        c if fl & bit else "-"
        for c, bit in (
            ("D", 1 << 10),
            ("O", 1 << 11),
            ("S", 1 << 7),
            ("Z", 1 << 6),
            ("A", 1 << 4),
            ("P", 1 << 2),
            ("C", 1),
        )
    )
    h = v["hflags"]
    lines.append(
        f"{ip} [{flags}] CPL={h & 3} II={int(bool(h & HF_INHIBIT_IRQ))} "
        f"A20={(v['a20_mask'] >> 20) & 1} SMM={int(bool(h & HF_SMM))} HLT={int(cpu.halted)}"
    )
    for seg in ("es", "cs", "ss", "ds", "fs", "gs", "ldt", "tr"):
        lines.append(_segment_line(cpu, seg, wide))
    for table in ("gdt", "idt"):
        base = v[f"{table}.base"]
        lines.append(
            f"{table.upper()}=     {base:016x} {v[table + '.limit']:08x}"
            if wide
            else f"{table.upper()}=     {base & 0xFFFFFFFF:08x} {v[table + '.limit']:08x}"
        )
    if wide:
        lines.append(f"CR0={v['cr0']:08x} CR2={v['cr2']:016x} CR3={v['cr3']:016x} CR4={v['cr4']:08x}")
    else:
        lines.append(" ".join(f"CR{i}={v[f'cr{i}'] & 0xFFFFFFFF:08x}" for i in (0, 2, 3, 4)))
    lines.append("".join(f"DR{i}={v[f'dr{i}']:016x} " for i in range(4)))
    lines.append(f"DR6={v['dr6']:016x} DR7={v['dr7']:016x}")
    lines.append(f"EFER={v['efer']:016x}")
    lines.append(
        f"FCW={v['fpuc']:04x} FSW={v['fpus']:04x} [ST={(v['fpus'] >> 11) & 7}] FTW={v['fptag']:02x} "
        f"MXCSR={v['mxcsr']:08x}"
    )
    for i in range(0, 8, 2):
        lines.append(" ".join(f"FPR{j}={v[f'fpr{j}.mant']:016x} {v[f'fpr{j}.exp']:04x}" for j in (i, i + 1)))
    for i in range(0, 16 if wide else 8, 2):
        lines.append(
            " ".join(f"XMM{j:02d}={v[f'xmm{j}.hi']:016x} {v[f'xmm{j}.lo']:016x}" for j in (i, i + 1))
        )
    return "\n".join(lines) + "\n"
