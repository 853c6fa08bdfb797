"""gdb commands for the Linux guest inside the snapshot: tasks, log, modules, stacks, a process's
memory, and the kernel's symbols and types for gdb itself. Each asks the snapshot server (which
reads the kernel through drgn, with no vmlinux); nothing here parses guest bytes."""

from __future__ import annotations

import gdb  # type: ignore[import-not-found]

from .commands import _argv, _flush_gdb_caches, _one_line_errors
from .session import SESSION


class _LinuxView(gdb.Command):
    """Base: print one of the server's Linux views (`vmstate linux SNAP VIEW` on the command line)."""

    command_name = ""
    view = ""
    takes_pid = False
    needs_pid = False

    def __init__(self):
        super().__init__(self.command_name, gdb.COMMAND_DATA, gdb.COMPLETE_NONE)

    @_one_line_errors
    def invoke(self, arg, from_tty):
        args = _argv(arg)
        if len(args) > (1 if self.takes_pid else 0) or (self.needs_pid and not args):
            usage = f"{self.command_name} PID" if self.needs_pid else self.command_name
            raise gdb.GdbError(
                f"usage: {usage}{' [PID|all]' if self.takes_pid and not self.needs_pid else ''}"
            )
        gdb.write(SESSION.request("linux", view=self.view, pid=args[0] if args else None)["text"])


class VmstatePs(_LinuxView):
    """List the guest's tasks: pid, thread group, parent, state, CPU, the vCPU running it, uid, name.

    Read from the kernel in the snapshot (kallsyms, BTF), no vmlinux needed; kernel threads are in
    [brackets], pid 0 lines are the CPUs' idle tasks."""

    command_name = "vmstate-ps"
    view = "ps"


class VmstateDmesg(_LinuxView):
    """Print the guest kernel's log (its printk ring buffer) as dmesg does."""

    command_name = "vmstate-dmesg"
    view = "dmesg"


class VmstateModules(_LinuxView):
    """List the guest's loaded kernel modules as /proc/modules does (name, size, users, address)."""

    command_name = "vmstate-modules"
    view = "modules"


class VmstateBt(_LinuxView):
    """Kernel stack of a guest task, unwound with the kernel's own ORC tables: vmstate-bt [PID|all]

    A task running on a vCPU is unwound from that vCPU's registers, any other from where the
    scheduler switched away. Without PID: every task."""

    command_name = "vmstate-bt"
    view = "bt"
    takes_pid = True


class VmstateMaps(_LinuxView):
    """A guest process's memory map, as /proc/PID/maps shows it: vmstate-maps PID"""

    command_name = "vmstate-maps"
    view = "maps"
    takes_pid = needs_pid = True


class VmstateFiles(_LinuxView):
    """A guest process's open files (fd and path): vmstate-files PID"""

    command_name = "vmstate-files"
    view = "files"
    takes_pid = needs_pid = True


class VmstateTask(gdb.Command):
    """Read and write memory through a guest process's page tables: vmstate-task [PID]

    After `vmstate-task PID`, x, p, set var, find and restore use that process's user addresses
    (and the kernel's, which every process maps); add the program's symbols with add-symbol-file.
    Edits go to the overlay like any other and are saved by vmstate-save. Without PID: back to the
    selected vCPU's page tables."""

    command_name = "vmstate-task"

    def __init__(self):
        super().__init__(self.command_name, gdb.COMMAND_DATA, gdb.COMPLETE_NONE)

    @_one_line_errors
    def invoke(self, arg, from_tty):
        args = _argv(arg)
        if len(args) > 1:
            raise gdb.GdbError("usage: vmstate-task [PID]")
        pid = None
        if args:
            try:
                pid = int(args[0], 0)
            except ValueError:
                raise gdb.GdbError(f"vmstate-task: {args[0]!r} is not a PID") from None
        gdb.write(SESSION.request("linux_task", pid=pid)["text"])
        _flush_gdb_caches()


class VmstateThreads(gdb.Command):
    """Choose what gdb's threads are: vmstate-threads tasks|vcpus

    tasks: every task of the guest's Linux kernel is a thread, as kgdb shows them (thread id =
    pid; the CPUs' idle tasks are 0x10000000+CPU). `info threads` lists pid, name and the vCPU
    running it; `thread N` then `bt` walks that task's kernel stack, and x, p and find read through
    its page tables. A task no vCPU runs has the registers the kernel saved when it switched away
    (the others show <unavailable>) and they cannot be changed. The kernel's symbols are loaded
    from kallsyms if gdb has none.
    vcpus (the default): one thread per vCPU, as QEMU's gdbstub shows them."""

    command_name = "vmstate-threads"

    def __init__(self):
        super().__init__(self.command_name, gdb.COMMAND_RUNNING)

    def complete(self, text, word):
        return [m for m in ("tasks", "vcpus") if m.startswith(word or "")]

    @_one_line_errors
    def invoke(self, arg, from_tty):
        args = _argv(arg)
        if len(args) != 1 or args[0] not in ("tasks", "vcpus"):
            raise gdb.GdbError("usage: vmstate-threads tasks|vcpus")
        reply = SESSION.request("linux_threads", mode=args[0])
        _flush_gdb_caches()
        gdb.execute("info threads", to_string=True)  # gdb asks the server for the new thread list
        for thread in gdb.selected_inferior().threads():
            if thread.ptid[1] == reply["thread"]:
                thread.switch()
                break
        loaded = ""
        if args[0] == "tasks" and not _has_symbol("init_task"):
            symbols = SESSION.request("linux_symbols")
            _quiet(f"add-symbol-file {symbols['path']}")
            loaded = f"; {symbols['count']} kernel symbols loaded from kallsyms"
        what = "tasks of the guest's kernel" if args[0] == "tasks" else "vCPUs"
        gdb.write(f"vmstate: {reply['count']} threads, the {what}{loaded}\n")


def _has_symbol(name: str) -> bool:
    try:
        gdb.parse_and_eval(f"&{name}")
    except gdb.error:
        return False
    return True


def _quiet(command: str) -> str:
    """Run a gdb command without its confirmation question (add-symbol-file asks one)."""
    confirm = gdb.parameter("confirm")
    gdb.execute("set confirm off", to_string=True)
    try:
        return gdb.execute(command, to_string=True)
    finally:
        gdb.execute(f"set confirm {'on' if confirm else 'off'}", to_string=True)


class VmstateSymbols(gdb.Command):
    """Give gdb the guest kernel's symbols (kallsyms of the kernel and its modules, at their
    KASLR-relocated addresses): `x/i $pc`, `info symbol`, `break`-free `p &init_task` by name."""

    command_name = "vmstate-symbols"

    def __init__(self):
        super().__init__(self.command_name, gdb.COMMAND_FILES, gdb.COMPLETE_NONE)

    @_one_line_errors
    def invoke(self, arg, from_tty):
        reply = SESSION.request("linux_symbols")
        _quiet(f"add-symbol-file {reply['path']}")
        gdb.write(f"vmstate: {reply['count']} kernel symbols loaded from the guest's kallsyms\n")


class VmstateTypes(gdb.Command):
    """Give gdb the guest kernel's types from its BTF, and its main globals typed at their
    addresses: `ptype struct task_struct`, `p init_task.comm`, `p *(struct file *)ADDR`.

    Made with bpftool (BTF to C) and gcc -g (C to DWARF), cached per kernel build in
    ~/.cache/vmstate_gdb; needs the bpftool and gcc packages."""

    command_name = "vmstate-types"

    def __init__(self):
        super().__init__(self.command_name, gdb.COMMAND_FILES, gdb.COMPLETE_NONE)

    @_one_line_errors
    def invoke(self, arg, from_tty):
        reply = SESSION.request("linux_types")
        _quiet(reply["command"])
        gdb.write(
            f"vmstate: {reply['types']} kernel types from BTF{' (cached)' if reply['cached'] else ''}, "
            f"{len(reply['variables'])} typed globals (init_task, modules, prb, ...)\n"
        )


COMMANDS = (
    VmstatePs,
    VmstateDmesg,
    VmstateModules,
    VmstateBt,
    VmstateMaps,
    VmstateFiles,
    VmstateTask,
    VmstateThreads,
    VmstateSymbols,
    VmstateTypes,
)
