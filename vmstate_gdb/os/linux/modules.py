"""Loaded kernel modules, as /proc/modules lists them (kernel/module/procfs.c)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from drgn import Object

from .kernel import LinuxKernel

MODULE_REF_BASE = 1  # kernel/module/main.c: a live module's refcnt starts at 1
_STATES = {0: "Live", 1: "Loading", 2: "Unloading", 3: "Unformed"}  # enum module_state


@dataclass
class ModuleRow:
    name: str
    size: int  # as /proc/modules: every memory region of the module
    refcount: int
    used_by: list[str]
    state: str
    address: int  # start of its core (text) memory

    def proc_line(self) -> str:
        users = "".join(f"{u}," for u in self.used_by) or "-"
        return f"{self.name} {self.size} {self.refcount} {users} {self.state} {self.address:#x}"

    def as_dict(self) -> dict:
        return asdict(self)


def _memory(mod: Object) -> tuple[int, int]:
    """(size, base): since Linux 6.4 the regions of ``mod->mem[]``, before it core and init layout."""
    try:
        regions = list(mod.mem)
    except AttributeError:
        core, init = mod.core_layout, mod.init_layout
        size = core.size.value_() + init.size.value_()
        try:
            size += mod.data_layout.size.value_()  # CONFIG_ARCH_WANTS_MODULES_DATA_IN_VMALLOC
        except AttributeError:
            pass
        return size, core.base.value_()
    return sum(r.size.value_() for r in regions), regions[0].base.value_()


def _users(mod: Object) -> list[str]:
    from drgn.helpers.linux.list import list_for_each_entry

    try:
        uses = list_for_each_entry("struct module_use", mod.source_list.address_of_(), "source_list")
        names = [u.source.name.string_().decode() for u in uses]
    except AttributeError:  # CONFIG_MODULE_UNLOAD off
        return []
    if mod.init and not mod.exit:
        names.append("[permanent]")
    return names


def list_modules(kernel: LinuxKernel) -> list[ModuleRow]:
    """In /proc/modules order: the newest module first."""
    from drgn.helpers.linux.module import for_each_module

    rows = []
    for mod in for_each_module(kernel.prog):
        size, base = _memory(mod)
        try:
            refcount = mod.refcnt.counter.value_() - MODULE_REF_BASE
        except AttributeError:
            refcount = 0
        state = _STATES.get(mod.state.value_(), str(mod.state.value_()))
        rows.append(ModuleRow(mod.name.string_().decode(), size, refcount, _users(mod), state, base))
    return rows
