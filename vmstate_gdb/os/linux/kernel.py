"""A Linux guest as a drgn Program, fed from the snapshot with no debug vmlinux.

The Program reads guest-physical memory through the snapshot (the edit overlay included, nothing
copied) and walks the kernel's page tables itself from VMCOREINFO's ``swapper_pg_dir``. Symbols come
from the kernel's own kallsyms, types from its BTF (btf_types.py), stacks from the ORC tables linked
into the image (drgn finds them through the symbols once the kernel module's address range is set).
A DWARF vmlinux, where the user has one, replaces kallsyms and BTF.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import drgn
from drgn import Object, Program

from ...errors import AddressError, UnsupportedError
from .debuginfo import LinuxError, load_debug_info_from_memory, load_module_symbols
from .vmcoreinfo import VmcoreInfo, find_vmcoreinfo

if TYPE_CHECKING:
    from ...arch.linux_abi import LinuxAbi
    from ...memory import VirtualMemory
    from ...snapshot import Snapshot


@dataclass
class KernelFacts:
    release: str
    build_id: str
    kaslr_offset: int
    vmcoreinfo: str  # where VMCOREINFO came from
    symbols: str  # where the symbols came from
    types: str  # where the types came from
    timings: dict[str, float] = field(default_factory=dict)


class LinuxKernel:
    """The drgn view of one snapshot's Linux kernel. ``open_linux`` builds it."""

    def __init__(
        self, snap: Snapshot, vmlinux: str | None = None, use_cache: bool = True, plugins: bool = False
    ):
        self.snap = snap
        abi = snap.arch.linux_abi()
        if abi is None:
            raise LinuxError(f"no Linux view of {snap.arch.name} guests yet", snap.path)
        self.abi: LinuxAbi = abi
        t0 = time.monotonic()
        info = find_vmcoreinfo(snap)
        if info is None:
            raise LinuxError(
                "no Linux kernel found: the guest's RAM holds no VMCOREINFO note (not Linux, or a "
                "kernel built without CONFIG_CRASH_CORE / CONFIG_KEXEC_CORE)",
                snap.path,
            )
        self.vmcoreinfo: VmcoreInfo = info
        self.prog = Program(_platform(snap), vmcoreinfo=info.text.encode())
        for r in snap.physical.ranges:
            self.prog.add_memory_segment(r.start, r.size, self._read_physical, physical=True)
        # before the target is set: drgn's plugins (ours too) look at the Program then
        self.prog.cache["vmstate_kernel"] = self
        with _drgn_plugins(plugins):
            self.prog.set_linux_kernel_custom(info.text.encode(), False)
        timings = {"vmcoreinfo_s": time.monotonic() - t0}
        if vmlinux:
            symbols, types = self._load_vmlinux(vmlinux)
        else:
            symbols, types = self._load_from_memory(use_cache, timings)
        self.facts = KernelFacts(
            info.release, info.build_id, info.kaslr_offset, info.source, symbols, types, timings
        )
        self._vcpu_of_cpu: dict[int, int] | None = None
        self._modules_loaded = bool(vmlinux)

    def load_modules(self) -> None:
        """Kernel modules as drgn modules (address ranges, so their ORC unwinds) and their kallsyms;
        on demand, since ps or dmesg need neither."""
        if not self._modules_loaded:
            self._modules_loaded = True
            t = time.monotonic()
            self.module_warning = load_module_symbols(self.prog)
            self.facts.timings["modules_s"] = time.monotonic() - t

    # -- memory ---------------------------------------------------------------------------------

    def _read_physical(self, address: int, count: int, offset: int, physical: bool) -> bytes:
        try:
            return self.snap.physical.read(address, count)
        except AddressError as e:
            raise drgn.FaultError(e.message, address) from None

    # -- loading --------------------------------------------------------------------------------

    def _load_from_memory(self, use_cache: bool, timings: dict[str, float]) -> tuple[str, str]:
        loaded = load_debug_info_from_memory(
            self.prog, self.vmcoreinfo, self.snap.path, self.abi, use_cache, timings
        )
        self.btf_types = loaded.types
        return loaded.symbols_source, loaded.types_source

    def btf_blob(self) -> bytes:
        """The kernel's BTF as it is in guest memory (for bpftool and the like)."""
        types = getattr(self, "btf_types", None)
        if types is None:
            raise LinuxError("the kernel's types come from a vmlinux here, not from BTF", self.snap.path)
        return types.btf.data

    def _load_vmlinux(self, vmlinux: str) -> tuple[str, str]:
        prog = self.prog
        try:
            kernel = prog.main_module("kernel", create=True)
            kernel.try_file(vmlinux, force=True)
        except (OSError, drgn.MissingDebugInfoError, ValueError) as e:
            raise LinuxError(f"cannot use it as the kernel's vmlinux: {e}", vmlinux) from None
        if kernel.debug_file_status != drgn.ModuleFileStatus.HAVE:
            raise LinuxError(
                "no DWARF debug info in it (a debug vmlinux, e.g. from linux-image-*-dbg)", vmlinux
            )
        # modules: their kallsyms name their code (their debug files are seldom at hand)
        self.module_warning = load_module_symbols(self.prog)
        return f"vmlinux {vmlinux}", f"DWARF in {vmlinux}"

    # -- CPUs and tasks -------------------------------------------------------------------------

    def vcpu_of_cpu(self) -> dict[int, int]:
        """Linux CPU number -> vCPU index, matched by the per-CPU offset each vCPU holds, so a guest
        that numbers its CPUs differently is right."""
        if self._vcpu_of_cpu is None:
            from drgn.helpers.linux.cpumask import for_each_online_cpu

            offsets = {}
            per_cpu_offset = self.prog["__per_cpu_offset"]
            for cpu in for_each_online_cpu(self.prog):
                offsets[per_cpu_offset[cpu].value_()] = cpu
            mapping = {}
            for vcpu in self.snap.cpus:
                cpu = offsets.get(self.abi.per_cpu_offset(vcpu))
                if cpu is None and len(offsets) == len(self.snap.cpus):
                    cpu = vcpu.index  # early boot or firmware: assume the usual 1:1 numbering
                if cpu is not None:
                    mapping[cpu] = vcpu.index
            self._vcpu_of_cpu = mapping
        return self._vcpu_of_cpu

    def running(self) -> dict[int, Object]:
        """vCPU index -> the task it runs (the idle task when the vCPU is idle)."""
        from drgn.helpers.linux.sched import cpu_curr

        return {vcpu: cpu_curr(self.prog, cpu) for cpu, vcpu in self.vcpu_of_cpu().items()}

    def vcpu_running(self, task: Object) -> int | None:
        address = task.value_()
        for vcpu, curr in self.running().items():
            if curr.value_() == address:
                return vcpu
        return None

    def task(self, pid: int) -> Object:
        from drgn.helpers.linux.pid import find_task

        task = find_task(self.prog, pid)
        if not task:
            raise LinuxError(f"no task with pid {pid} in this snapshot")
        return task

    def vcpu_regs(self, vcpu_index: int) -> Object:
        """The vCPU's registers as a ``struct pt_regs`` value, for unwinding a running task."""
        regs_type = self.prog.type("struct pt_regs")
        data = self.abi.pt_regs(self.snap.cpu(vcpu_index), regs_type.size)
        return Object.from_bytes_(self.prog, regs_type, data)

    def stack_trace(self, task: Object) -> drgn.StackTrace:
        """The task's kernel stack: from the vCPU's registers when it is running in the kernel,
        else from what the scheduler saved when it switched away."""
        self.load_modules()
        vcpu = self.vcpu_on_stack(task)
        if vcpu is None:  # the current task of a vCPU on an interrupt or exception stack
            running = self.vcpu_running(task)
            if (
                running is not None
                and not self.abi.in_user_mode(self.snap.cpu(running))
                and self.task_on_vcpu_stack(running).value_() == task.value_()
            ):
                vcpu = running
        if vcpu is not None:
            return self.prog.stack_trace(self.vcpu_regs(vcpu))
        try:
            return self.prog.stack_trace(task)
        except LookupError:
            # drgn wants a CPU's saved registers for a task still marked on_cpu; a vCPU stopped
            # inside a context switch has already saved this task's frame and left its stack
            if self.vcpu_running(task) is not None and not task.on_cpu:
                raise
            regs_type = self.prog.type("struct pt_regs")
            try:
                data = self.abi.switched_out_pt_regs(self.prog, task, regs_type.size)
            except NotImplementedError:
                raise LookupError(f"task {task.pid.value_()} is between CPUs: no saved frame") from None
            return self.prog.stack_trace(Object.from_bytes_(self.prog, regs_type, data))

    def task_on_vcpu_stack(self, vcpu: int) -> Object | None:
        """The task whose kernel stack the vCPU runs on: the scheduler's current task but for a
        vCPU stopped inside a context switch, still on the task it is leaving. A vCPU on an
        interrupt or exception stack (no task's) runs for its current task."""
        from drgn.helpers.linux.pid import for_each_task

        current = self.running().get(vcpu)
        if current is None or self.abi.in_user_mode(self.snap.cpu(vcpu)):
            return current
        return next((t for t in (current, *for_each_task(self.prog)) if self._on_stack(t, vcpu)), current)

    def vcpu_on_stack(self, task: Object) -> int | None:
        """The vCPU running kernel code on ``task``'s kernel stack, if one is: during a context
        switch that can differ from the scheduler's current task of that CPU."""
        return next((v for v in self.vcpu_of_cpu().values() if self._on_stack(task, v)), None)

    def _on_stack(self, task: Object, vcpu: int) -> bool:
        cpu = self.snap.cpu(vcpu)
        try:
            base = task.stack.value_()
        except AttributeError:
            return False
        sp = self.abi.stack_pointer(cpu)
        return not self.abi.in_user_mode(cpu) and base <= sp < base + self.abi.thread_size

    def kernel_space(self) -> VirtualMemory:
        """Kernel virtual addresses, through init_mm's page tables (those of every task's kernel
        half), for writes: drgn itself only reads."""
        from drgn.helpers.linux.mm import follow_phys

        init_mm = self.prog["init_mm"]
        root = follow_phys(init_mm.address_of_(), init_mm.pgd.value_()).value_()
        return self.snap.virtual(0, root=root)

    def write(self, address: int, data: bytes, task: Object | None = None) -> None:
        """Edit guest memory at a kernel address, or at a user address of ``task``; the edit goes to
        the snapshot's overlay and is saved with it."""
        space = self.kernel_space() if task is None else self.user_space(task)
        space.write(address, data)

    def user_space(self, task: Object) -> VirtualMemory:
        """The task's user address space: its mm's page tables, walked like the vCPU's own."""
        from drgn.helpers.linux.mm import virt_to_phys

        mm = task.mm
        if not mm:
            raise LinuxError(
                f"task {task.pid.value_()} ({_comm(task)}) is a kernel thread: it has no user memory"
            )
        root = virt_to_phys(mm.pgd).value_()
        return self.snap.virtual(0, root=root)


def _comm(task: Object) -> str:
    return task.comm.string_().decode(errors="replace")


def _platform(snap: Snapshot) -> drgn.Platform:
    """The drgn platform of the guest, as its architecture (snap.arch) names it."""
    cpus = snap.cpus
    if not cpus:
        raise UnsupportedError("no vCPU state in the snapshot, so no kernel to read", snap.path)
    if cpus[0].bits != 64:
        raise LinuxError(
            f"vCPU 0 is in {cpus[0].cpu_mode} mode: a 64-bit Linux kernel runs in 64-bit mode", snap.path
        )
    arch = snap.arch
    flags = drgn.PlatformFlags(0)
    for name in arch.drgn_platform_flags:
        flags |= getattr(drgn.PlatformFlags, name)
    return drgn.Platform(getattr(drgn.Architecture, arch.drgn_architecture), flags)


@contextmanager
def _drgn_plugins(enabled: bool) -> Iterator[None]:
    """drgn loads every installed plugin (its own command sets among them, 0.1 s) when a target is
    set; only the interactive shell has a use for them. drgn reads DRGN_DISABLE_PLUGINS once."""
    if enabled or "DRGN_DISABLE_PLUGINS" in os.environ:
        yield
        return
    os.environ["DRGN_DISABLE_PLUGINS"] = "*"
    try:
        yield
    finally:
        del os.environ["DRGN_DISABLE_PLUGINS"]


@contextmanager
def kernel_errors(path: str) -> Iterator[None]:
    """drgn's errors as one clear line: memory drgn could not read, objects it could not find."""
    try:
        yield
    except drgn.FaultError as e:
        raise LinuxError(f"kernel memory unreadable: {e}", path) from None
    except drgn.ObjectAbsentError as e:
        raise LinuxError(f"kernel object absent: {e}", path) from None
    except LookupError as e:
        raise LinuxError(f"not found in the kernel: {e.args[0] if e.args else e}", path) from None


def open_linux(
    snap: Snapshot, vmlinux: str | None = None, use_cache: bool = True, plugins: bool = False
) -> LinuxKernel:
    """The Linux kernel of a snapshot, or a LinuxError saying in one line what is missing.
    ``plugins``: let drgn load its plugins (for drgn's own shell)."""
    with kernel_errors(snap.path):
        return LinuxKernel(snap, vmlinux, use_cache, plugins)
