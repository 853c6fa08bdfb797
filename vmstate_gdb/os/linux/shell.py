"""drgn's own interactive shell and script runner on a snapshot's kernel, with two additions: edits
of guest memory (drgn itself only reads) and saving them as a new snapshot."""

from __future__ import annotations

import os
import runpy
import sys

import drgn
from drgn import Object

from ...errors import EditError
from .kernel import LinuxKernel


def snapshot_globals(kernel: LinuxKernel) -> dict:
    """What a session gets beside drgn's defaults: ``snap``, ``kernel``, ``write`` and ``save``."""
    prog, snap = kernel.prog, kernel.snap

    def write(target, value, pid: int | None = None) -> None:
        """write(obj, value): set a kernel (or, with pid=, user) object; write(address, bytes)."""
        task = kernel.task(pid) if pid is not None else None
        if isinstance(target, Object):
            if target.address_ is None:
                raise EditError("write() needs an object in memory (not a value or a register)")
            if target.bit_field_size_ is not None:
                raise EditError("write() of a bit field: write its containing word instead")
            data = Object(prog, target.type_, value).to_bytes_()
            kernel.write(target.address_, data, task)
        else:
            kernel.write(int(target), bytes(value), task)

    def save(out: str, fmt: str | None = None) -> None:
        """Write the snapshot with every edit made so far to OUT (stream or qcow2, as the input)."""
        from ...writer import save as write_snapshot
        from ...writer.meta import describe_resume, write_output_meta

        result = write_snapshot(snap, out, fmt=fmt)
        write_output_meta(snap, result, {})
        print(result.summary())
        print(describe_resume(result.path, result.format, result.snapshot_name))

    return {"snap": snap, "kernel": kernel, "write": write, "save": save}


def run_shell(kernel: LinuxKernel) -> None:
    from drgn.cli import run_interactive

    facts = kernel.facts

    def banner(default: str) -> str:
        return (
            f"drgn {drgn.__version__} on {kernel.snap.path}: Linux {facts.release}\n"
            f"symbols: {facts.symbols}; types: {facts.types}\n"
            f"{default}\n>>> # snap, kernel; write(obj, value) / write(address, bytes, pid=None); save(OUT)"
        )

    run_interactive(kernel.prog, banner_func=banner, globals_func=lambda g: {**g, **snapshot_globals(kernel)})


def run_script(kernel: LinuxKernel, script: str, args: list[str]) -> None:
    from drgn.cli import default_globals

    if not os.path.exists(script):
        raise EditError(f"{script}: no such script")
    drgn.set_default_prog(kernel.prog)
    sys.argv = [script, *args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    init = {**default_globals(kernel.prog), **snapshot_globals(kernel)}
    init.pop("__name__", None)
    runpy.run_path(script, init_globals=init, run_name="__main__")
