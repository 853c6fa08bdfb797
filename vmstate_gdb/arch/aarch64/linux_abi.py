"""Linux on arm64: pt_regs and user_pt_regs (arch/arm64/include/asm/ptrace.h, uapi/asm/ptrace.h),
the per-CPU offset in TPIDR_EL1, the FPSIMD state, the vDSO between vdso_start and vdso_end."""

from __future__ import annotations

import struct
from typing import Any

from ..linux_abi import LinuxAbi
from .cpu import Aarch64Cpu

_USER_REGS = tuple(f"x{i}" for i in range(31)) + ("sp", "pc", "pstate")
_KERNEL_HALF = 0xFFFF000000000000  # TTBR1's half: the image and everything kallsyms names
_FPSIMD_SIZE = 528  # struct user_fpsimd_state: vregs[32], fpsr, fpcr, __reserved[2]


class Aarch64Linux(LinuxAbi):
    user_regs = _USER_REGS
    per_cpu_register = "tpidr_el1"

    def is_kernel_image(self, address: int) -> bool:
        return address >= _KERNEL_HALF

    def in_user_mode(self, cpu: Aarch64Cpu) -> bool:  # type: ignore[override]
        return cpu.el == 0

    def per_cpu_offset(self, cpu: Aarch64Cpu) -> int:  # type: ignore[override]
        # a kernel running at EL2 (VHE) keeps it in TPIDR_EL2; QEMU's TCG cortex-a57 runs it at EL1
        return cpu.values.get("tpidr_el1", 0)

    def pt_regs(self, cpu: Aarch64Cpu, size: int) -> bytes:  # type: ignore[override]
        # xregs[31] is the live SP of the vCPU's current exception level
        values = [cpu[name] for name in _USER_REGS]
        return struct.pack("<34Q", *values).ljust(size, b"\0")

    def user_regs_of_vcpu(self, cpu: Aarch64Cpu) -> dict[str, int]:  # type: ignore[override]
        return {name: cpu[name] for name in _USER_REGS}

    def user_regs_of_thread(self, task: Any, pt_regs: Any) -> dict[str, int]:
        values = {f"x{i}": pt_regs.regs[i].value_() for i in range(31)}
        values.update(sp=pt_regs.sp.value_(), pc=pt_regs.pc.value_(), pstate=pt_regs.pstate.value_())
        return values

    def fp_regs_of_thread(self, prog: Any, task: Any) -> bytes | None:
        try:
            state = task.thread.uw.fpsimd_state
            return prog.read(state.address_, _FPSIMD_SIZE)
        except (LookupError, AttributeError, ValueError):
            return None

    def vdso_range(self, prog: Any) -> tuple[int, int] | None:
        try:  # labels of arch/arm64/kernel/vdso-wrap.S
            start = prog.symbol("vdso_start").address
            end = prog.symbol("vdso_end").address
        except (LookupError, ValueError):
            return None
        return (start, end - start) if end > start else None

    def stack_pointer(self, cpu: Aarch64Cpu) -> int:  # type: ignore[override]
        return cpu["sp"]


LINUX = Aarch64Linux()
