"""How Linux uses an architecture: what the OS layer (os/linux) must know of a vCPU and of the
kernel's per-architecture structures, so that it never names an architecture itself.

Each architecture that has a Linux view returns one :class:`LinuxAbi` from
``Architecture.linux_abi()``; the methods take the architecture's own vCPU objects and drgn objects
of the guest kernel (drgn is imported only by callers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import Cpu


class LinuxAbi:
    #: user_regs_struct (elf_gregset_t) member names in order: NT_PRSTATUS's pr_reg
    user_regs: tuple[str, ...] = ()
    #: the register the kernel's per-CPU offset is in while the vCPU runs kernel code
    per_cpu_register: str = ""
    #: THREAD_SIZE, a task's kernel stack (x86_64 and arm64 with 4 KiB pages, without KASAN)
    thread_size: int = 16 * 1024

    def is_kernel_image(self, address: int) -> bool:
        """True for addresses in the kernel image, which KASLR moves as one (kallsyms entries
        below it, such as x86's per-CPU offsets, stay where they are)."""
        raise NotImplementedError

    def is_kernel_address(self, address: int) -> bool:
        """True in the kernel's half of the address space (the top half on x86_64 and arm64)."""
        return bool(address >> 63)

    def in_user_mode(self, cpu: Cpu) -> bool:
        raise NotImplementedError

    def per_cpu_offset(self, cpu: Cpu) -> int:
        """The vCPU's ``__per_cpu_offset`` value, to tell which Linux CPU it is."""
        raise NotImplementedError

    def pt_regs(self, cpu: Cpu, size: int) -> bytes:
        """The vCPU's registers as the bytes of a ``struct pt_regs`` of ``size`` bytes, for
        unwinding the task it runs in the kernel."""
        raise NotImplementedError

    def user_regs_of_vcpu(self, cpu: Cpu) -> dict[str, int]:
        """user_regs_struct values of a vCPU running a thread in user mode."""
        raise NotImplementedError

    def user_regs_of_thread(self, task: Any, pt_regs: Any) -> dict[str, int]:
        """user_regs_struct values of a switched-out thread: its entry ``pt_regs`` (drgn Object)
        and what the kernel keeps in ``task->thread``."""
        raise NotImplementedError

    def fp_regs_of_thread(self, prog: Any, task: Any) -> bytes | None:
        """The NT_PRFPREG desc of a switched-out thread from the FPU state the kernel saved, or
        None where it holds none."""
        raise NotImplementedError

    def vdso_range(self, prog: Any) -> tuple[int, int] | None:
        """(kernel virtual start, size) of the vDSO image every process maps as [vdso]."""
        raise NotImplementedError

    def switched_out_pt_regs(self, prog: Any, task: Any, size: int) -> bytes:
        """The registers the context switch saved for ``task`` (its kernel stack pointer, frame
        and resume address), as ``struct pt_regs`` bytes: for unwinding a task the scheduler
        still marks on a CPU (``on_cpu``) after that CPU switched to another one."""
        raise NotImplementedError

    def stack_pointer(self, cpu: Cpu) -> int:
        """The vCPU's current stack pointer."""
        raise NotImplementedError
