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
    return {"text": f"memory accesses now go through {label}'s page tables (cr3={space.walker.cr3:#x})\n"}


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


OPERATIONS = {
    "linux": linux,
    "linux_task": task,
    "linux_symbols": symbols,
    "linux_types": types,
}
