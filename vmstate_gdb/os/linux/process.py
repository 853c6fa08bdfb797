"""One user process: its memory map, open files, threads and their user registers.

Formats follow what the kernel shows in /proc (fs/proc/task_mmu.c for maps, fs/proc/fd.c) so the
results can be compared with the guest's own view line by line.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from drgn import Object

from ...errors import VmstateError
from .kernel import LinuxError, LinuxKernel
from .tasks import comm

# include/linux/mm.h
VM_READ, VM_WRITE, VM_EXEC, VM_SHARED = 0x1, 0x2, 0x4, 0x8
AT_NULL = 0  # include/uapi/linux/auxvec.h


@dataclass
class Vma:
    start: int
    end: int
    flags: int  # vm_flags
    offset: int  # file offset in bytes (vm_pgoff << PAGE_SHIFT)
    device: str  # "major:minor" of the file's device, as /proc/PID/maps prints it
    inode: int
    name: str  # file path, [heap], [stack], [vdso], ... or ""
    file_backed: bool
    anonymous: bool  # plain anonymous memory (no file, no vm_ops): untouched pages read as zeros
    anonymous_pages: bool  # has an anon_vma: some pages were written (private copies)

    @property
    def perms(self) -> str:
        f = self.flags
        return (
            ("r" if f & VM_READ else "-")
            + ("w" if f & VM_WRITE else "-")
            + ("x" if f & VM_EXEC else "-")
            + ("s" if f & VM_SHARED else "p")
        )

    def maps_line(self) -> str:
        """The /proc/PID/maps line, byte for byte: show_map_vma() ends the header with a space and
        pads it to 72 columns before a name."""
        head = f"{self.start:08x}-{self.end:08x} {self.perms} {self.offset:08x} {self.device} {self.inode} "
        return f"{head:<72} {self.name}" if self.name else head

    def as_dict(self) -> dict:
        return {**asdict(self), "perms": self.perms}


def _device(inode: Object) -> str:
    dev = inode.i_sb.s_dev.value_()  # the kernel's dev_t: major in bits 20.., minor in 0..19
    return f"{dev >> 20:02x}:{dev & 0xFFFFF:02x}"


def process_vmas(kernel: LinuxKernel, task: Object) -> list[Vma]:
    from drgn.helpers.linux.mm import for_each_vma, vma_name

    mm = _mm(task)
    page_shift = kernel.prog["PAGE_SHIFT"].value_()
    out = []
    for vma in for_each_vma(mm):
        vm_file = vma.vm_file.read_()
        if vm_file:
            inode = vm_file.f_inode
            device, ino = _device(inode), inode.i_ino.value_()
            offset = vma.vm_pgoff.value_() << page_shift
        else:
            device, ino, offset = "00:00", 0, 0
        out.append(
            Vma(
                start=vma.vm_start.value_(),
                end=vma.vm_end.value_(),
                flags=vma.vm_flags.value_(),
                offset=offset,
                device=device,
                inode=ino,
                name=vma_name(vma).decode(errors="replace"),
                file_backed=bool(vm_file),
                anonymous=not vm_file and not vma.vm_ops,
                anonymous_pages=bool(vma.anon_vma),
            )
        )
    return out


@dataclass
class OpenFile:
    fd: int
    path: str
    flags: int  # f_flags (O_RDONLY, O_APPEND, ...)
    position: int

    def as_dict(self) -> dict:
        return asdict(self)


#: pseudo file systems whose dentries have a d_dname(), and the name it gives (fs/pipe.c, net/socket.c,
#: fs/anon_inodes.c): readlink of /proc/PID/fd/N shows these instead of a path
_PSEUDO_NAMES = {
    "pipefs": "pipe:[{ino}]",
    "sockfs": "socket:[{ino}]",
    "anon_inodefs": "anon_inode:{name}",
}


def file_path(file: Object) -> str:
    """What readlink /proc/PID/fd/N shows for an open file."""
    from drgn.helpers.linux.fs import d_path

    dentry = file.f_path.dentry
    fs_name = dentry.d_sb.s_type.name.string_().decode(errors="replace")
    pseudo = _PSEUDO_NAMES.get(fs_name)
    if pseudo is not None:
        name = dentry.d_name.name.string_().decode(errors="replace")
        return pseudo.format(ino=file.f_inode.i_ino.value_(), name=name)
    try:
        return d_path(file.f_path).decode(errors="replace")
    except (LookupError, ValueError):
        return "?"


def open_files(kernel: LinuxKernel, task: Object) -> list[OpenFile]:
    from drgn.helpers.linux.fs import for_each_file

    if not task.files:
        return []
    return [
        OpenFile(fd, file_path(file), file.f_flags.value_(), file.f_pos.value_())
        for fd, file in for_each_file(task)
    ]


def threads(kernel: LinuxKernel, task: Object) -> list[Object]:
    """The process's threads, its group leader first (as the kernel dumps them)."""
    from drgn.helpers.linux.pid import for_each_task_in_group

    leader = task.group_leader
    rest = [t for t in for_each_task_in_group(leader) if t.value_() != leader.value_()]
    return [leader] + sorted(rest, key=lambda t: t.pid.value_())


@dataclass
class UserRegisters:
    values: dict[str, int]  # user_regs_struct names
    source: str  # "pt_regs" (saved at kernel entry) or "vCPU N" (running in user mode)
    fp: bytes | None  # the NT_PRFPREG desc, where the kernel holds the FPU state


def user_registers(kernel: LinuxKernel, task: Object) -> UserRegisters:
    """A thread's user-mode registers: the vCPU's own when it is running in user mode at the
    snapshot, else the ``pt_regs`` the kernel saved on entry at the top of the thread's stack."""
    if task.flags.value_() & 0x00200000:  # PF_KTHREAD
        raise LinuxError(
            f"task {task.pid.value_()} ({comm(task)}) is a kernel thread: it has no user registers"
        )
    abi = kernel.abi
    vcpu = kernel.vcpu_running(task)
    if vcpu is not None and abi.in_user_mode(kernel.snap.cpu(vcpu)):
        return UserRegisters(abi.user_regs_of_vcpu(kernel.snap.cpu(vcpu)), f"vCPU {vcpu}", None)
    values = abi.user_regs_of_thread(task, _pt_regs(kernel, task))
    return UserRegisters(values, "pt_regs", abi.fp_regs_of_thread(kernel.prog, task))


def _pt_regs(kernel: LinuxKernel, task: Object) -> Object:
    """task_pt_regs(): the entry frame at the very top of the kernel stack (no padding above it
    on 64-bit architectures: x86_64's TOP_OF_KERNEL_STACK_PADDING is 0, arm64 has none)."""
    prog = kernel.prog
    top = task.stack.value_() + prog["THREAD_SIZE"].value_()
    regs_type = prog.type("struct pt_regs")
    return Object(prog, regs_type, address=top - regs_type.size)


def auxv(kernel: LinuxKernel, task: Object) -> list[tuple[int, int]]:
    """mm->saved_auxv up to and including its AT_NULL entry."""
    words = [w.value_() for w in _mm(task).saved_auxv]
    out = []
    for i in range(0, len(words) - 1, 2):
        out.append((words[i], words[i + 1]))
        if words[i] == AT_NULL:
            break
    return out


def command_line(kernel: LinuxKernel, task: Object) -> str:
    from drgn.helpers.linux.mm import cmdline

    try:
        args = cmdline(task) or []
    except Exception:  # noqa: BLE001 - an argument page that is not in RAM
        return comm(task)
    return " ".join(a.decode(errors="replace") for a in args)


def _mm(task: Object) -> Object:
    mm = task.mm
    if not mm:
        raise LinuxError(f"task {task.pid.value_()} ({comm(task)}) is a kernel thread: it has no memory map")
    return mm


@dataclass
class PageRun:
    """A run of a VMA's pages, and what the snapshot has of them."""

    start: int
    end: int
    state: str  # "present" (in guest RAM), "zero" (never touched, reads as zeros), "absent"
    physical: list[int] | None = None  # for present runs: the page frame of each page


def vma_pages(kernel: LinuxKernel, space, vma: Vma) -> list[PageRun]:
    """Split a VMA by what the task's page tables say of each page. Untouched pages of plain
    anonymous memory read as zeros; those of the vDSO are the kernel's vDSO image; untouched pages
    of file and other special mappings, and swapped-out pages, are absent: not in guest RAM."""
    runs: list[PageRun] = []

    def add(start: int, end: int, state: str, phys: int | None = None) -> None:
        last = runs[-1] if runs else None
        if last is not None and last.state == state and last.end == start:
            last.end = end
            if phys is not None:
                last.physical.append(phys)  # type: ignore[union-attr]
            return
        runs.append(PageRun(start, end, state, [phys] if phys is not None else None))

    vdso = _vdso_pages(kernel) if vma.name == "[vdso]" else None

    def untouched(lo: int, hi: int) -> None:
        for page in range(lo, hi, 4096):
            index = (page - vma.start) // 4096
            if vma.anonymous:
                add(page, page + 4096, "zero")
            elif vdso is not None and index < len(vdso):
                add(page, page + 4096, "present", vdso[index])
            else:
                add(page, page + 4096, "absent")

    pos = vma.start
    for va, size, phys, _entry in space.walker.leaves(vma.start, vma.end):
        lo, hi = max(va, vma.start), min(va + size, vma.end)
        if lo > pos:
            untouched(pos, lo)
        if phys is None:
            add(lo, hi, "absent")
        else:
            for page in range(lo, hi, 4096):
                add(page, page + 4096, "present", phys + (page - va))
        pos = hi
    if pos < vma.end:
        untouched(pos, vma.end)
    return runs


def _vdso_pages(kernel: LinuxKernel) -> list[int] | None:
    """Physical pages of the kernel's vDSO image, which every process maps as [vdso] and which a
    page fault would map in."""
    found = kernel.abi.vdso_range(kernel.prog)
    if found is None:
        return None
    start, size = found
    try:
        space = kernel.kernel_space()
        return [space.translate(start + off).physical for off in range(0, size, 4096)]
    except (LookupError, AttributeError, ValueError, VmstateError):
        return None
