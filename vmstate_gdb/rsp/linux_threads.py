"""The guest's Linux tasks as gdb threads, the way kgdb shows them: thread id = pid, registers of
a task running on a vCPU from the vCPU, of any other from where the scheduler switched away
(registers the kernel did not save are unavailable), memory through the task's page tables.

Also the frames drgn unwinds with the kernel's ORC tables, for gdb's unwinder
(vmstate_gdb/gdb/unwinder.py), in either thread mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from drgn import Object

    from ..memory import VirtualMemory
    from ..os.linux.kernel import LinuxKernel

#: thread ids of the idle tasks (pid 0 on every CPU): above any pid (PID_MAX_LIMIT is 4M)
IDLE_BASE = 0x10000000


@dataclass
class TaskThread:
    tid: int
    task: Object
    vcpu: int | None  # the vCPU running it at the snapshot


class TaskThreads:
    """The task list of one kernel, fixed at the moment it is made (the snapshot does not run)."""

    def __init__(self, kernel: LinuxKernel):
        from ..os.linux.tasks import all_tasks

        self.kernel = kernel
        # the task whose stack each vCPU is on: inside a context switch, the one being left
        running = {kernel.task_on_vcpu_stack(vcpu).value_(): vcpu for vcpu in kernel.running()}
        self.threads: dict[int, TaskThread] = {}
        for task in all_tasks(kernel):
            pid = task.pid.value_()
            tid = pid if pid else IDLE_BASE + _cpu_of(task)
            self.threads[tid] = TaskThread(tid, task, running.get(task.value_()))
        self._spaces: dict[int, tuple[int, VirtualMemory]] = {}

    def ids(self) -> list[int]:
        return list(self.threads)

    def of_vcpu(self, vcpu: int) -> int | None:
        return next((t.tid for t in self.threads.values() if t.vcpu == vcpu), None)

    def extra_info(self, tid: int) -> str:
        t = self.threads[tid]
        comm = t.task.comm.string_().decode(errors="replace")
        where = f" on vCPU {t.vcpu}" if t.vcpu is not None else ""
        return f"pid {t.task.pid.value_()} {comm}{where}"

    def registers(self, tid: int) -> dict[str, int] | None:
        """gdb register name -> value of a task that is not running; None for one that is (its
        vCPU's registers are the whole set)."""
        t = self.threads[tid]
        if t.vcpu is not None:
            return None
        trace = self.kernel.stack_trace(t.task)
        return frame_registers(self.kernel, trace[0]) if len(trace) else {}

    def space(self, tid: int, generation: int) -> VirtualMemory:
        """The task's address space: its mm's page tables, the kernel's for a kernel thread."""
        cached = self._spaces.get(tid)
        if cached is None or cached[0] != generation:
            task = self.threads[tid].task
            space = self.kernel.user_space(task) if task.mm else self.kernel.kernel_space()
            cached = (generation, space)
            self._spaces[tid] = cached
        return cached[1]


def _cpu_of(task: Object) -> int:
    try:
        return task.thread_info.cpu.value_()
    except AttributeError:
        return task.cpu.value_()


def frame_registers(kernel: LinuxKernel, frame) -> dict[str, int]:
    """A drgn frame's known registers by gdb's names, the program counter included (drgn keeps it
    apart on some architectures)."""
    arch = kernel.snap.arch
    regs = {arch.drgn_register_names.get(name, name): value for name, value in frame.registers().items()}
    regs[arch.pc_name] = frame.pc
    return regs


def unwind(kernel: LinuxKernel, task: Object) -> list[dict]:
    """The task's kernel stack as drgn unwinds it, one entry per real (not inlined) frame: pc, sp,
    whether it is kernel code, and the registers known in it, by gdb's names. The last frame of a
    thread that entered the kernel from user mode is its user frame."""
    frames = []
    for frame in kernel.stack_trace(task):
        if frame.is_inline:
            continue
        try:
            pc, sp = frame.pc, frame.sp
        except LookupError:
            break
        kernel_mode = kernel.abi.is_kernel_address(pc)
        frames.append({"pc": pc, "sp": sp, "kernel": kernel_mode, "regs": frame_registers(kernel, frame)})
    return frames
