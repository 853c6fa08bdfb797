"""aarch64 `info registers` in the layout of QEMU's aarch64_cpu_dump_state (target/arm/cpu.c), for
the CPUs QEMU's virt guests use without SVE/SME/BTI (cortex-a53/a57/a72)."""

from __future__ import annotations

from .cpu import Aarch64Cpu

PSTATE_N, PSTATE_Z, PSTATE_C, PSTATE_V = 1 << 31, 1 << 30, 1 << 29, 1 << 28
PSTATE_SP = 1


def fpu_disabled(cpu: Aarch64Cpu) -> bool:
    """CPACR_EL1.FPEN traps FP at this EL (fp_exception_el, with no EL2/EL3 traps on virt)."""
    fpen = (cpu.values.get("cpacr_el1", 0) >> 20) & 3
    return fpen in (0, 2) or (fpen == 1 and cpu.el == 0)


def format_registers(cpu: Aarch64Cpu) -> str:
    v = cpu.values
    out = f" PC={cpu.pc:016x} "
    for i in range(32):
        if i == 31:
            out += f" SP={cpu.sp:016x}\n"
        else:
            out += f"X{i:02d}={v[f'x{i}']:016x}" + (" " if (i + 2) % 3 else "\n")
    psr = v["pstate"]
    flags = "".join(
        c if psr & bit else "-"
        for c, bit in zip("NZCV", (PSTATE_N, PSTATE_Z, PSTATE_C, PSTATE_V), strict=True)
    )
    out += f"PSTATE={psr:08x} {flags} EL{cpu.el}{'h' if psr & PSTATE_SP else 't'}"
    if fpu_disabled(cpu):
        return out + "    FPU disabled\n"
    out += f"     FPCR={cpu.fpcr:08x} FPSR={cpu.fpsr:08x}\n"
    for i in range(32):
        q = cpu.q(i)
        out += f"Q{i:02d}={q >> 64:016x}:{q & (1 << 64) - 1:016x}" + ("\n" if i & 1 else " ")
    return out
