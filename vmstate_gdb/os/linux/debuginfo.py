"""Symbols and types for a drgn Program of a Linux kernel, from the kernel's own memory.

Used by :class:`.kernel.LinuxKernel` for snapshots and by the drgn plugin for any Program drgn
opens (an ELF core written by `vmstate core`, a kdump): it needs only ``prog.read`` and VMCOREINFO.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import drgn
from drgn import Program

from ...errors import VmstateError
from . import btf_types
from .btf import Btf
from .symbols import KernelSymbols
from .vmcoreinfo import VmcoreInfo

if TYPE_CHECKING:
    from ...arch.linux_abi import LinuxAbi

MAX_BTF = 256 << 20


class LinuxError(VmstateError):
    """The guest is not a Linux this layer can read, or a kernel object could not be read."""


@dataclass
class Loaded:
    symbols_source: str
    types_source: str
    types: btf_types.BtfTypes


def symbol_address(prog: Program, name: str) -> int | None:
    try:
        return prog.symbol(name).address
    except LookupError:
        return None


def load_debug_info_from_memory(
    prog: Program,
    info: VmcoreInfo,
    path: str | None,
    abi: LinuxAbi,
    use_cache: bool = True,
    timings: dict[str, float] | None = None,
    enable_index: int = 0,
) -> Loaded:
    """Register kallsyms (symbols) and BTF (types, objects) finders, and give the kernel module its
    address range so drgn unwinds with the ORC tables in memory. One LinuxError line says what the
    kernel lacks if it cannot be done."""
    timings = timings if timings is not None else {}
    missing = [
        s for s in ("kallsyms_names", "kallsyms_num_syms", "kallsyms_token_table") if info.symbol(s) is None
    ]
    if missing:
        raise LinuxError(
            f"Linux {info.release or '?'}: its VMCOREINFO has no kallsyms fields (they came with "
            "Linux 6.0); give the kernel's debug vmlinux with --vmlinux",
            path,
        )
    t = time.monotonic()
    kallsyms = KernelSymbols(prog, info, abi.is_kernel_image, use_cache)
    prog.register_symbol_finder("vmstate-kallsyms", kallsyms, enable_index=enable_index)
    timings["kallsyms_s"] = time.monotonic() - t

    def address(name: str) -> int | None:
        found = kallsyms.address(name)
        return found if found is not None else symbol_address(prog, name)

    if address("init_task") is None:
        raise LinuxError(
            f"Linux {info.release}: kallsyms lists no data symbols (CONFIG_KALLSYMS_ALL is off); "
            "give the kernel's debug vmlinux with --vmlinux",
            path,
        )
    start, stop = address("__start_BTF"), address("__stop_BTF")
    if start is None or stop is None or not 0 < stop - start < MAX_BTF:
        raise LinuxError(
            f"Linux {info.release}: the kernel has no BTF (CONFIG_DEBUG_INFO_BTF is off); "
            "give the kernel's debug vmlinux with --vmlinux",
            path,
        )
    t = time.monotonic()
    try:
        blob = prog.read(start, stop - start)
    except drgn.FaultError as e:
        raise LinuxError(f"the kernel's BTF at {start:#x} is not in guest RAM: {e}", path) from None
    btf = Btf(blob, f"{path + ': ' if path else ''}kernel BTF at {start:#x}")
    types = btf_types.install(prog, btf, address, enable_index)
    timings["btf_s"] = time.monotonic() - t
    kernel = prog.main_module("kernel", create=True)
    if kernel.address_range is None:
        kernel.address_range = (address("_stext") or info.symbol("_stext"), address("_end"))
    return Loaded(kallsyms.source, f"BTF in guest memory ({len(btf)} types)", types)


def load_module_symbols(prog: Program, enable_index: int = 1) -> str | None:
    """Kernel modules as drgn modules (with address ranges, so drgn loads their ORC) and their
    kallsyms symbols; returns a warning instead of failing, since the core kernel stays usable."""
    from drgn.helpers.linux.kallsyms import load_module_kallsyms

    try:
        prog.create_loaded_modules()
        prog.register_symbol_finder(
            "vmstate-module-kallsyms", load_module_kallsyms(prog), enable_index=enable_index
        )
    except (drgn.FaultError, LookupError, ValueError) as e:
        return f"kernel modules not loaded: {e}"
    return None
