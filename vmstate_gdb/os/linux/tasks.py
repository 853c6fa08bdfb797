"""Tasks and their kernel stacks, as `ps` and the kernel's own stack dumps show them."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import drgn
from drgn import Object

from .kernel import LinuxKernel

PF_WQ_WORKER, PF_KTHREAD = 0x00000020, 0x00200000  # include/linux/sched.h


@dataclass
class TaskRow:
    pid: int
    tgid: int
    ppid: int
    state: str  # ps's letter: R, S, D, T, t, X, Z, P, I
    comm: str  # task->comm (15 characters at most)
    name: str  # as /proc/PID/stat shows it: a kernel thread's full name where it has one
    cpu: int  # the Linux CPU the task last ran on
    vcpu: int | None  # the vCPU running it at the snapshot, if any
    kernel_thread: bool
    uid: int
    address: int  # its struct task_struct

    def as_dict(self) -> dict:
        return asdict(self)


def comm(task: Object) -> str:
    return task.comm.string_().decode(errors="replace")


def proc_name(task: Object) -> str:
    """The name /proc shows (proc_task_name()): a workqueue worker's comm with its latest work's
    description ("kworker/0:1-events", '+' while it runs one); another kernel thread's untruncated
    name, which since Linux 6.1 (commit d6986ce24fc0 "kthread: dynamically allocate memory to store
    kthread's full name") its struct kthread keeps; else task->comm."""
    name = comm(task)
    flags = task.flags.value_()
    if not flags & PF_KTHREAD:
        return name
    try:
        kthread = drgn.cast("struct kthread *", task.worker_private)
        if not kthread:
            return name
        if flags & PF_WQ_WORKER:
            worker = drgn.cast("struct worker *", kthread.data)
            desc = worker.desc.string_().decode(errors="replace")
            if worker.pool and desc:
                return f"{name}{'+' if worker.current_work else '-'}{desc}"
            return name
        full = kthread.full_name.read_()
        if full:
            return full.string_().decode(errors="replace")
    except (AttributeError, LookupError, drgn.FaultError):
        pass
    return name


def task_row(kernel: LinuxKernel, task: Object, running: dict[int, int]) -> TaskRow:
    from drgn.helpers.linux.sched import task_cpu, task_state_to_char

    parent = task.real_parent
    try:
        uid = task.cred.uid.val.value_()
    except AttributeError:
        uid = task.cred.uid.value_()
    return TaskRow(
        pid=task.pid.value_(),
        tgid=task.tgid.value_(),
        ppid=parent.tgid.value_() if parent and parent.value_() != task.value_() else 0,
        state=task_state_to_char(task),
        comm=comm(task),
        name=proc_name(task),
        cpu=task_cpu(task),
        vcpu=running.get(task.value_()),
        kernel_thread=bool(task.flags.value_() & PF_KTHREAD),
        uid=uid,
        address=task.value_(),
    )


def all_tasks(kernel: LinuxKernel) -> list[Object]:
    """Every thread of every process, and the idle task of each CPU (pid 0, which ps hides but
    which is what an idle vCPU runs), in pid order."""
    from drgn.helpers.linux.cpumask import for_each_online_cpu
    from drgn.helpers.linux.pid import for_each_task
    from drgn.helpers.linux.sched import idle_task

    prog = kernel.prog
    tasks = [idle_task(prog, cpu) for cpu in for_each_online_cpu(prog)]
    seen = {t.value_() for t in tasks}
    for task in for_each_task(prog):
        if task.value_() not in seen:
            seen.add(task.value_())
            tasks.append(task)
    tasks.sort(key=lambda t: (t.pid.value_(), t.value_()))
    return tasks


def list_tasks(kernel: LinuxKernel) -> list[TaskRow]:
    running = {task.value_(): vcpu for vcpu, task in kernel.running().items()}
    return [task_row(kernel, t, running) for t in all_tasks(kernel)]


@dataclass
class Frame:
    index: int
    pc: int
    function: str | None  # symbol name
    offset: int  # pc - symbol start
    size: int  # symbol size
    module: str | None  # kernel module holding the pc, None for the core kernel
    sp: int | None
    inline: bool = False  # a function inlined at this pc (DWARF only), within the next frame's

    def text(self) -> str:
        if self.function is None:
            where = f"{self.pc:#x}"
        elif self.inline:
            where = f"{self.function} (inlined)"
        else:
            where = f"{self.function}+{self.offset:#x}/{self.size:#x}"
        if self.module and self.function is not None:
            where += f" [{self.module}]"
        return f"#{self.index:<2} {where}"

    def as_dict(self) -> dict:
        return asdict(self)


def kernel_stack(kernel: LinuxKernel, task: Object) -> list[Frame]:
    trace = kernel.stack_trace(task)
    frames = []
    modules = _module_ranges(kernel)
    for i, frame in enumerate(trace):
        pc = frame.pc
        try:
            sym = frame.symbol()
            name, offset, size = sym.name, pc - sym.address, sym.size
        except LookupError:
            name, offset, size = None, 0, 0
        if frame.is_inline:  # with DWARF only: a function inlined into the next frame's symbol
            name = frame.function_name or name
        try:
            sp = frame.sp
        except LookupError:
            sp = None
        module = next((m for m, (lo, hi) in modules.items() if lo <= pc < hi), None)
        frames.append(Frame(i, pc, name, offset, size, module, sp, frame.is_inline))
    return frames


def _module_ranges(kernel: LinuxKernel) -> dict[str, tuple[int, int]]:
    ranges = {}
    for module in kernel.prog.modules():
        if module.name != "kernel" and getattr(module, "address_range", None):
            ranges[module.name] = module.address_range
    return ranges
