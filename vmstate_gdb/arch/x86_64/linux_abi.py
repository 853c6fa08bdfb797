"""Linux on x86_64: pt_regs and user_regs_struct (arch/x86/include/asm/ptrace.h, asm/user_64.h),
the per-CPU base in GS, the FXSAVE image, the 64-bit vDSO."""

from __future__ import annotations

import struct
from typing import Any

from ..linux_abi import LinuxAbi
from .cpu import X86Cpu

#: user_regs_struct order, with the pt_regs member that holds each (None: kept in task->thread)
_USER_REGS = (
    ("r15", "r15"),
    ("r14", "r14"),
    ("r13", "r13"),
    ("r12", "r12"),
    ("rbp", "bp"),
    ("rbx", "bx"),
    ("r11", "r11"),
    ("r10", "r10"),
    ("r9", "r9"),
    ("r8", "r8"),
    ("rax", "ax"),
    ("rcx", "cx"),
    ("rdx", "dx"),
    ("rsi", "si"),
    ("rdi", "di"),
    ("orig_rax", "orig_ax"),
    ("rip", "ip"),
    ("cs", "cs"),
    ("eflags", "flags"),
    ("rsp", "sp"),
    ("ss", "ss"),
    ("fs_base", None),
    ("gs_base", None),
    ("ds", None),
    ("es", None),
    ("fs", None),
    ("gs", None),
)
#: struct pt_regs in memory order, as vCPU register names (orig_ax has no vCPU register)
_PT_REGS_ORDER = (
    "r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi orig_ax rip cs eflags rsp ss".split()
)
_KERNEL_IMAGE = 0xFFFFFFFF80000000  # __START_KERNEL_map: KASLR moves the image within it
_FXSAVE_SIZE = 512


class X86_64Linux(LinuxAbi):
    user_regs = tuple(name for name, _ in _USER_REGS)
    per_cpu_register = "gs.base"

    def is_kernel_image(self, address: int) -> bool:
        return address >= _KERNEL_IMAGE

    def in_user_mode(self, cpu: X86Cpu) -> bool:  # type: ignore[override]
        return cpu["cs.selector"] & 3 == 3

    def per_cpu_offset(self, cpu: X86Cpu) -> int:  # type: ignore[override]
        # swapgs on kernel entry: in user mode the kernel's GS base waits in KERNEL_GS_BASE
        return cpu["kernel_gs_base"] if self.in_user_mode(cpu) else cpu["gs.base"]

    def pt_regs(self, cpu: X86Cpu, size: int) -> bytes:  # type: ignore[override]
        values = []
        for name in _PT_REGS_ORDER:
            if name in ("cs", "ss"):
                values.append(cpu[f"{name}.selector"])
            else:
                values.append(cpu.values.get(name, 0))
        return struct.pack(f"<{len(values)}Q", *values).ljust(size, b"\0")

    def user_regs_of_vcpu(self, cpu: X86Cpu) -> dict[str, int]:  # type: ignore[override]
        values = {name: cpu[name] for name in self.user_regs if name in cpu.values}
        values.update(orig_rax=(1 << 64) - 1, fs_base=cpu["fs.base"], gs_base=cpu["gs.base"])
        for seg in ("cs", "ss", "ds", "es", "fs", "gs"):
            values[seg] = cpu[f"{seg}.selector"]
        return values

    def user_regs_of_thread(self, task: Any, pt_regs: Any) -> dict[str, int]:
        values = {name: pt_regs.member_(member).value_() for name, member in _USER_REGS if member}
        thread = task.thread
        values.update(
            fs_base=thread.fsbase.value_(),
            gs_base=thread.gsbase.value_(),
            ds=thread.ds.value_(),
            es=thread.es.value_(),
            fs=thread.fsindex.value_(),
            gs=thread.gsindex.value_(),
        )
        return values

    def fp_regs_of_thread(self, prog: Any, task: Any) -> bytes | None:
        # since Linux 5.16 behind fpu->fpstate, before in fpu->state
        fpu = task.thread.fpu
        try:
            state = fpu.fpstate.regs
        except AttributeError:
            try:
                state = fpu.state
            except AttributeError:
                return None
        try:
            return prog.read(state.fxsave.address_, _FXSAVE_SIZE)
        except (LookupError, ValueError):
            return None

    def vdso_range(self, prog: Any) -> tuple[int, int] | None:
        try:
            image = prog["vdso_image_64"]  # arch/x86/entry/vdso/vdso-image-64.c
            return image.data.value_(), image.size.value_()
        except (LookupError, AttributeError, ValueError):
            return None

    def stack_pointer(self, cpu: X86Cpu) -> int:  # type: ignore[override]
        return cpu["rsp"]

    def switched_out_pt_regs(self, prog: Any, task: Any, size: int) -> bytes:
        # __switch_to_asm pushes struct inactive_task_frame (bp, bx, r12..r15 and the return
        # address below them) and stores the stack pointer in thread.sp
        sp = task.thread.sp.value_()
        frame = prog.read(sp, 7 * 8)
        r15, r14, r13, r12, rbx, rbp, ret = struct.unpack("<7Q", frame)
        regs = dict(r15=r15, r14=r14, r13=r13, r12=r12, rbx=rbx, rbp=rbp, rip=ret, rsp=sp + 7 * 8)
        values = [regs.get(name, 0) for name in _PT_REGS_ORDER]
        return struct.pack(f"<{len(values)}Q", *values).ljust(size, b"\0")


LINUX = X86_64Linux()
