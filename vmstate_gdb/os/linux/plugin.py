"""drgn plugin (entry point group ``drgn.plugins``): a Linux kernel Program with no vmlinux gets
symbols from kallsyms, types from BTF and stacks from ORC, all read from the program's memory.

So ``drgn -c guest.core`` works on a core written by ``vmstate core`` (or any kdump of a Linux 6.0+
kernel with BTF). The finders are added after drgn's own, so a vmlinux, where there is one, wins.
``VMSTATE_DRGN_PLUGIN=0`` turns the plugin off.
"""

from __future__ import annotations

import logging
import os

import drgn

logger = logging.getLogger("vmstate_gdb.drgn")


def drgn_prog_set(prog: drgn.Program) -> None:
    if os.environ.get("VMSTATE_DRGN_PLUGIN", "1") == "0":
        return
    if not prog.flags & drgn.ProgramFlags.IS_LINUX_KERNEL:
        return
    if "vmstate_kernel" in prog.cache or "vmstate-kallsyms" in prog.registered_symbol_finders():
        return  # a Program vmstate_gdb built itself
    from ...arch import architectures
    from .debuginfo import LinuxError, load_debug_info_from_memory, load_module_symbols
    from .vmcoreinfo import VmcoreInfo

    arch = next((a for a in architectures() if a.drgn_architecture == prog.platform.arch.name), None)
    abi = arch.linux_abi() if arch is not None else None
    if abi is None:
        logger.warning("vmstate_gdb: no Linux view of %s programs", prog.platform.arch.name)
        return
    try:
        info = VmcoreInfo.from_text(prog["VMCOREINFO"].string_().decode("ascii", "replace"), "drgn")
        load_debug_info_from_memory(prog, info, prog.core_dump_path, abi, enable_index=-1)
        load_module_symbols(prog, enable_index=-1)
    except (LinuxError, LookupError, drgn.FaultError, ValueError) as e:
        logger.warning("vmstate_gdb: no kallsyms/BTF debug info from memory: %s", e)
