"""The `qvmstate.linux*` operations behind the gdb-side Linux commands (vmstate-ps, -bt, -task,
-symbols, -types ...). The kernel view is built once per session, on first use."""

from __future__ import annotations

import tempfile
from typing import TYPE_CHECKING

from ..os.linux.kernel import kernel_errors, open_linux

if TYPE_CHECKING:
    from .server import SnapshotServer


def kernel(server: SnapshotServer):
    if server.linux is None:
        server.linux = open_linux(server.snap)
    return server.linux


def _workdir(server: SnapshotServer) -> str:
    if server.workdir is None:
        server.workdir = tempfile.mkdtemp(prefix="vmstate-linux-")
    return server.workdir


def linux(server: SnapshotServer, view: str, pid: str | None = None) -> dict:
    from ..os.linux.views import VIEWS

    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r} (one of {', '.join(VIEWS)})")
    with kernel_errors(server.snap.path):
        _data, text = VIEWS[view](kernel(server), pid)
    return {"text": text + "\n"}


def task(server: SnapshotServer, pid: int | None = None) -> dict:
    """Memory accesses through a process's page tables (its user space, and the kernel's half),
    or back to the selected vCPU's with no pid."""
    if pid is None:
        server.task_view = None
        return {"text": "memory accesses go through the selected vCPU's page tables again\n"}
    with kernel_errors(server.snap.path):
        k = kernel(server)
        t = k.task(pid)
        space = k.user_space(t)
        comm = t.comm.string_().decode(errors="replace")
    label = f"pid {pid} ({comm})"
    server.task_view = (label, space)
    server.physical_mode = False
    return {"text": f"memory accesses now go through {label}'s page tables\n"}


def symbols(server: SnapshotServer) -> dict:
    from ..export.gdb_symbols import write_symbol_file

    path = f"{_workdir(server)}/kernel-symbols.elf"
    with kernel_errors(server.snap.path):
        count = write_symbol_file(kernel(server), path)
    return {"path": path, "count": count}


def types(server: SnapshotServer) -> dict:
    from ..export.gdb_types import build_type_object

    with kernel_errors(server.snap.path):
        obj = build_type_object(kernel(server))
    return {
        "command": obj.add_symbol_file_command(),
        "types": obj.types,
        "variables": obj.variables,
        "cached": obj.cached,
    }


def threads(server: SnapshotServer, mode: str) -> dict:
    """Switch what gdb's threads are: the guest's tasks (kgdb's way) or the vCPUs."""
    from .linux_threads import TaskThreads

    # gdb's remote side remembers the last thread it selected (Hg) and does not select it again:
    # the server keeps that thread id, which may now name another thread of the new kind
    if mode == "vcpus":
        if server.tasks is not None:
            vcpu = server.tasks.threads[server.thread].vcpu if server.thread in server.tasks.threads else None
            first = (vcpu or 0) + 1
            server.tasks = None
        else:
            first = server.thread
        if server.thread not in server.threads():
            server.thread = 1
        return {"thread": first, "count": len(server.threads()), "text": ""}
    if mode != "tasks":
        raise ValueError(f"unknown thread mode {mode!r} (tasks or vcpus)")
    with kernel_errors(server.snap.path):
        if server.tasks is None:
            vcpu = server.thread - 1
            server.tasks = TaskThreads(kernel(server))
            first = server.tasks.of_vcpu(vcpu) or server.tasks.ids()[0]
            if server.thread not in server.tasks.threads:
                server.thread = first
        else:
            first = server.thread
        server.task_view = None
    return {"thread": first, "count": len(server.tasks.ids()), "text": ""}


def unwind(server: SnapshotServer, thread: int) -> list[dict]:
    """The kernel frames of a thread, as drgn unwinds them with ORC; [] where the thread is in
    user mode (its kernel stack is empty) or is not a task of this kernel."""
    from .linux_threads import unwind as unwind_task

    with kernel_errors(server.snap.path):
        k = kernel(server)
        if server.tasks is not None:
            t = server.tasks.threads.get(thread)
            if t is None:
                return []
            task, vcpu = t.task, t.vcpu
        else:
            vcpu = thread - 1
            task = k.task_on_vcpu_stack(vcpu)
            if task is None:
                return []
        if vcpu is not None and k.abi.in_user_mode(server.snap.cpu(vcpu)):
            return []
        return unwind_task(k, task)


OPERATIONS = {
    "linux_threads": threads,
    "linux_unwind": unwind,
    "linux": linux,
    "linux_task": task,
    "linux_symbols": symbols,
    "linux_types": types,
}
