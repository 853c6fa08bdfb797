"""The kernel's types (its BTF) and typed globals as DWARF for gdb, with no vmlinux.

bpftool turns the BTF into C declarations (`bpftool btf dump file F format c`, the vmlinux.h of
BPF programs); gcc compiles them with -g into an object whose DWARF gdb loads with
`add-symbol-file`. The globals BTF does not describe (declarations.py) are defined there too, each
in a section of its own, so that `add-symbol-file OBJ -s SECTION ADDRESS ...` places every one at
its kallsyms address: `p init_task.comm`, `ptype struct task_struct`, `p *(struct file *)ADDR`.
The object depends only on the kernel build; it is cached under the BTF's digest.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import UnsupportedError
from ..os.linux.declarations import GLOBALS
from ..os.linux.kernel import LinuxKernel
from ..os.linux.symbols import cache_dir

_DECLARATOR = re.compile(r"^(?P<base>.*?)\s*(?P<ptr>\**)\s*(?P<array>\[\d*\])?$")


@dataclass
class TypeObject:
    path: str  # the object file with the DWARF
    sections: list[tuple[str, int]]  # (section, address) for add-symbol-file -s
    types: int  # BTF types in it
    variables: list[str]
    cached: bool

    def add_symbol_file_command(self) -> str:
        placed = " ".join(f"-s {name} {address:#x}" for name, address in self.sections)
        return f"add-symbol-file {self.path} 0 {placed}".rstrip()


def _tool(name: str, package: str) -> str:
    found = shutil.which(name) or (f"/usr/sbin/{name}" if os.access(f"/usr/sbin/{name}", os.X_OK) else None)
    if not found:
        raise UnsupportedError(f"vmstate-types needs {name} (apt-get install {package})")
    return found


def _c_definition(name: str, decl: str, length: int | None) -> str:
    """``struct task_struct`` + ``init_task`` -> ``struct task_struct init_task``; arrays of unknown
    length get ``length`` (or 1)."""
    m = _DECLARATOR.match(decl)
    assert m is not None
    array = m["array"] or ""
    if array == "[]":
        array = f"[{length or 1}]"
    return f"{m['base']} {m['ptr']}{name}{array}"


def _globals(kernel: LinuxKernel) -> list[tuple[str, str, int]]:
    """(name, C definition, address) of the declared globals this kernel has, and whose type its
    BTF knows (a missing one would break the compile)."""
    prog = kernel.prog
    out = []
    for name, decl in GLOBALS.items():
        try:
            obj = prog[name]
        except (LookupError, ValueError, SyntaxError):
            continue
        address = obj.address_
        if address is None:
            continue
        length = None
        typ = obj.type_
        if typ.kind.name == "ARRAY":
            length = typ.length
            if length is None:
                from drgn import sizeof

                try:
                    length = prog.symbol(name).size // sizeof(typ.type) or None
                except (LookupError, ValueError, TypeError):
                    pass
        out.append((name, _c_definition(name, decl, length), address))
    return out


def build_type_object(kernel: LinuxKernel) -> TypeObject:
    blob = kernel.btf_blob()
    digest = hashlib.sha256(blob).hexdigest()[:24]
    globals_ = _globals(kernel)
    key = hashlib.sha256((digest + "".join(g[1] for g in globals_)).encode()).hexdigest()[:24]
    directory = cache_dir() / "linux" / f"types-{key}"
    obj = directory / "kernel-types.o"
    sections = [(f".vmstate.{name}", address) for name, _, address in globals_]
    if obj.exists():
        return TypeObject(str(obj), sections, len(kernel.btf_types.btf) - 1, [g[0] for g in globals_], True)
    bpftool, gcc = _tool("bpftool", "bpftool"), _tool("gcc", "gcc")
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        btf = Path(tmp) / "vmlinux.btf"
        btf.write_bytes(blob)
        header = Path(tmp) / "vmlinux.h"
        with open(header, "wb") as f:
            run = subprocess.run(
                [bpftool, "btf", "dump", "file", str(btf), "format", "c"], stdout=f, stderr=subprocess.PIPE
            )
        if run.returncode != 0:
            raise UnsupportedError(
                f"bpftool could not read the kernel's BTF: {run.stderr.decode().strip()[-200:]}"
            )
        source = Path(tmp) / "kernel-types.c"
        lines = ["#define BPF_NO_PRESERVE_ACCESS_INDEX", f'#include "{header}"']
        lines += [
            f'{definition} __attribute__((section(".vmstate.{name}")));' for name, definition, _ in globals_
        ]
        source.write_text("\n".join(lines) + "\n")
        out = Path(tmp) / "kernel-types.o"
        argv = [gcc, "-g", "-c", "-w", "-fno-eliminate-unused-debug-types", "-o", str(out), str(source)]
        run = subprocess.run(argv, capture_output=True, text=True)
        if run.returncode != 0:
            first = next((ln for ln in run.stderr.splitlines() if "error" in ln), run.stderr.strip()[-200:])
            raise UnsupportedError(f"gcc could not compile the kernel's types: {first}")
        os.replace(out, obj)
    return TypeObject(str(obj), sections, len(kernel.btf_types.btf) - 1, [g[0] for g in globals_], False)
