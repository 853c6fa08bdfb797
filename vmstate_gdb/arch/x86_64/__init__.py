"""x86_64 guests: the `cpu` section layout, page-table walks, the gdb register set, core notes."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from .. import Architecture, Cpu, GdbRegister, Instruction, register
from . import (
    cpu_layout,  # noqa: F401  (registers the cpu decoder for streams without JSON)
    elfnotes,
    gdb,
    monitor,
)
from .cpu import CPU_FIELDS, CPU_MAIN_BODY_SIZE, CPU_VERSION, compute_hflags, decode_cpu
from .paging import PageWalker

if TYPE_CHECKING:
    from ...snapshot import Snapshot
    from ...stream.index import StreamIndex
    from ..linux_abi import LinuxAbi

# Registers whose change must be reflected in TCG's derived hflags (see compute_hflags).
_HFLAGS_INPUTS = {"cr0", "cr4", "efer", "eflags"} | {
    f"{s}.{p}" for s in ("cs", "ss", "ds", "es") for p in ("flags", "base")
}
_PC_MACHINES = ("pc", "q35", "isapc", "microvm", "xenfv", "xenpv")
# user_regs_struct names a core can change (selectors and orig_rax are not applied)
_INJECTED_REGS = set(elfnotes.USER_REGS) - {"orig_rax", "cs", "ss", "ds", "es", "fs", "gs"}


class X86_64(Architecture):
    name = "x86_64"
    gdb_architecture = "i386:x86-64"
    gdb_program = "gdb"
    elf_machine = 62  # EM_X86_64
    drgn_architecture = "X86_64"
    drgn_register_names = {"rflags": "eflags", "fs.base": "fs_base", "gs.base": "gs_base"}
    pc_name = "rip"
    register_examples = "rax..r15, rip, eflags, cr0, cr3, efer, fs.base, cs.selector, xmm0.lo, ..."
    gdb_registers = gdb.REGISTERS
    core_notes_text = "NT_PRSTATUS and QEMU CPU state"
    instruction_size = None
    max_instruction_size = 16

    def linux_abi(self) -> LinuxAbi:
        from .linux_abi import LINUX

        return LINUX

    def probe(self, index: StreamIndex) -> bool:
        for sec in index.devices:
            if sec.idstr == "cpu":
                return sec.version_id == CPU_VERSION and sec.body_size >= CPU_MAIN_BODY_SIZE
        return (index.machine_type or "").startswith(_PC_MACHINES)

    def decode_cpus(self, snap: Snapshot) -> list[Cpu]:
        cpus: list[Cpu] = []
        for sec in snap.index.devices:
            if sec.idstr != "cpu":
                continue
            body = snap.read_stream(sec.body_offset, sec.body_size)
            cpu = decode_cpu(sec.instance_id, body, sec.body_offset, snap.path)
            common = snap.index.find("cpu_common", sec.instance_id)
            if common is not None and common.body_size >= 4:
                cpu.halted = bool(int.from_bytes(snap.read_stream(common.body_offset, 4), "big"))
            apic = snap.devices.device(f"apic[{sec.instance_id}]") or (
                snap.devices.device("apic") if sec.instance_id == 0 else None
            )
            if apic is not None:
                for name, attr in (("tpr", "apic_tpr"), ("apicbase", "apic_base")):
                    node = apic.root.child(name)
                    if node is not None and node.is_leaf:
                        value = node.value(snap.read_stream)  # type: ignore[attr-defined]
                        if isinstance(value, int):
                            setattr(cpu, attr, value)
            cpus.append(cpu)
        return cpus

    def register_names(self, cpu: Cpu) -> list[str]:
        return list(CPU_FIELDS)

    def derived_writes(self, cpu: Cpu, name: str, value: int) -> list[tuple[str, int]]:
        if name not in _HFLAGS_INPUTS:
            return []
        hflags = compute_hflags(dict(cpu.values, **{name: value}), cpu["hflags"])
        return [("hflags", hflags)] if hflags != cpu["hflags"] else []

    def rederive(self, cpu: Cpu) -> list[tuple[str, int]]:
        hflags = compute_hflags(cpu.values, cpu["hflags"])
        return [("hflags", hflags)] if hflags != cpu["hflags"] else []

    def page_table_root(self, cpu: Cpu, user: bool = False) -> int:
        return cpu["cr3"]

    def page_table_roots(self, cpu: Cpu) -> dict[str, int]:
        return {"cr3": cpu["cr3"]}

    def page_walker(self, cpu: Cpu, read, root: int | None = None) -> PageWalker:
        return PageWalker(cpu, read, root)  # type: ignore[arg-type]

    # -- gdb ------------------------------------------------------------------------------------

    def target_xml(self) -> str:
        return gdb.target_xml()

    def read_gdb_register(self, cpu: Cpu, reg: GdbRegister) -> int:
        return gdb.read_register(cpu, reg)  # type: ignore[arg-type]

    def write_gdb_register(self, target, cpu: Cpu, reg: GdbRegister, value: int) -> None:
        gdb.write_register(target, cpu, reg, value)  # type: ignore[arg-type]

    def format_registers(self, cpu: Cpu) -> str:
        return monitor.format_registers(cpu)  # type: ignore[arg-type]

    # -- code -----------------------------------------------------------------------------------

    def code_address(self, cpu: Cpu) -> int:
        from . import disasm  # capstone: only when code is shown

        return disasm.code_address(cpu)  # type: ignore[arg-type]

    def disassemble(self, code: bytes, address: int, cpu: Cpu, count: int = 1) -> list[Instruction]:
        from . import disasm  # capstone: only when code is shown

        return disasm.disassemble(code, address, cpu.bits, count)

    # -- cores ----------------------------------------------------------------------------------

    def core_notes(self, cpus: list[Cpu]) -> bytes:
        return b"".join(elfnotes.prstatus_note(c) for c in cpus) + b"".join(  # type: ignore[arg-type]
            elfnotes.qemu_cpustate_note(c)  # type: ignore[arg-type]
            for c in cpus
        )

    def registers_from_prstatus(self, desc: bytes) -> tuple[int, dict[str, int]] | None:
        if len(desc) < elfnotes.PRSTATUS_REGS_OFFSET + 8 * len(elfnotes.USER_REGS):
            return None
        pid = struct.unpack_from("<I", desc, elfnotes.PRSTATUS_PID_OFFSET)[0]
        values = struct.unpack_from(f"<{len(elfnotes.USER_REGS)}Q", desc, elfnotes.PRSTATUS_REGS_OFFSET)
        regs = {
            name.replace("_base", ".base"): value
            for name, value in zip(elfnotes.USER_REGS, values, strict=True)
            if name in _INJECTED_REGS
        }
        return pid, regs

    def cpu_field_range(self, cpu: Cpu) -> tuple[int, int]:
        return cpu.body_offset, cpu.body_offset + CPU_MAIN_BODY_SIZE


ARCH = register(X86_64())
