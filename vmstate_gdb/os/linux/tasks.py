"""Tasks and their kernel stacks, as `ps` and the kernel's own stack dumps show them."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from drgn import Object

from .kernel import LinuxKernel

PF_KTHREAD = 0x00200000  # include/linux/sched.h


@dataclass
class TaskRow:
    pid: int
    tgid: int
    ppid: int
    state: str  # ps's letter: R, S, D, T, t, X, Z, P, I
    comm: str
    cpu: int  # the Linux CPU the task last ran on
    vcpu: int | None  # the vCPU running it at the snapshot, if any
    kernel_thread: bool
    uid: int
    address: int  # its struct task_struct

    def as_dict(self) -> dict:
        return asdict(self)


def comm(task: Object) -> str:
    return task.comm.string_().decode(errors="replace")


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

    def text(self) -> str:
        if self.function is None:
            where = f"{self.pc:#x}"
        else:
            where = f"{self.function}+{self.offset:#x}/{self.size:#x}"
            if self.module:
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
        try:
            sp = frame.sp
        except LookupError:
            sp = None
        module = next((m for m, (lo, hi) in modules.items() if lo <= pc < hi), None)
        frames.append(Frame(i, pc, name, offset, size, module, sp))
    return frames


def _module_ranges(kernel: LinuxKernel) -> dict[str, tuple[int, int]]:
    ranges = {}
    for module in kernel.prog.modules():
        if module.name != "kernel" and getattr(module, "address_range", None):
            ranges[module.name] = module.address_range
    return ranges
