"""aarch64 guests (QEMU's `virt` machine): the `cpu` section, the EL1&0 page walk, the gdb register
set, core notes, A64 disassembly."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from .. import Architecture, Cpu, GdbRegister, Instruction, register
from . import elfnotes, gdb, monitor
from .cpu import CPREG_INDEXES_OFFSET, CPU_VERSION, Aarch64Cpu, decode_cpu
from .paging import PageWalker

if TYPE_CHECKING:
    from ...snapshot import Snapshot
    from ...stream.index import Section, StreamIndex
    from ..linux_abi import LinuxAbi


class Aarch64(Architecture):
    name = "aarch64"
    gdb_architecture = "aarch64"
    gdb_program = "gdb-multiarch"
    elf_machine = 183  # EM_AARCH64
    drgn_architecture = "AARCH64"
    drgn_register_names = {"pstate": "cpsr"}
    pc_name = "pc"
    register_examples = "x0..x30, sp, pc, pstate, elr_el1, sp_el0, ttbr1_el1, tcr_el1, q0.lo, fpscr, ..."
    gdb_registers = gdb.REGISTERS
    core_notes_text = "NT_PRSTATUS and NT_PRFPREG"
    instruction_size = 4
    max_instruction_size = 4

    def linux_abi(self) -> LinuxAbi:
        from .linux_abi import LINUX

        return LINUX

    def probe(self, index: StreamIndex) -> bool:
        for sec in index.devices:
            if sec.idstr == "cpu":
                desc = sec.description or {}
                names = [f.get("name") for f in desc.get("fields", ()) if isinstance(f, dict)]
                if names:
                    return "env.xregs" in names
                return sec.version_id == CPU_VERSION and sec.body_size > CPREG_INDEXES_OFFSET
        return (index.machine_type or "").startswith("virt")

    def decode_cpus(self, snap: Snapshot) -> list[Cpu]:
        cpus: list[Cpu] = []
        for sec in snap.index.devices:
            if sec.idstr != "cpu":
                continue
            body = snap.read_stream(sec.body_offset, sec.body_size)
            cpu = decode_cpu(sec.instance_id, body, sec.body_offset, snap.path, _vfp_offset(snap, sec))
            common = snap.index.find("cpu_common", sec.instance_id)
            if common is not None and common.body_size >= 4:
                cpu.halted = bool(int.from_bytes(snap.read_stream(common.body_offset, 4), "big"))
            cpus.append(cpu)
        return cpus

    def register_names(self, cpu: Cpu) -> list[str]:
        return list(cpu.values)

    def page_table_root(self, cpu: Cpu, user: bool = False) -> int:
        return cpu.values.get("ttbr0_el1" if user else "ttbr1_el1", 0)

    def page_table_roots(self, cpu: Cpu) -> dict[str, int]:
        return {n: cpu.values.get(n, 0) for n in ("ttbr0_el1", "ttbr1_el1")}

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

    def disassemble(self, code: bytes, address: int, cpu: Cpu, count: int = 1) -> list[Instruction]:
        from . import disasm  # capstone: only when code is shown

        return disasm.disassemble(code, address, cpu.bits, count)

    # -- cores ----------------------------------------------------------------------------------

    def core_notes(self, cpus: list[Cpu]) -> bytes:
        return b"".join(
            elfnotes.prstatus_note(c) + elfnotes.fpregset_note(c)  # type: ignore[arg-type]
            for c in cpus
        )

    def registers_from_prstatus(self, desc: bytes) -> tuple[int, dict[str, int]] | None:
        if len(desc) != elfnotes.PRSTATUS_SIZE:
            return None
        pid = struct.unpack_from("<I", desc, elfnotes.PRSTATUS_PID_OFFSET)[0]
        values = struct.unpack_from("<34Q", desc, elfnotes.PRSTATUS_REGS_OFFSET)
        return pid, dict(zip(elfnotes.USER_REGS, values, strict=True))

    def cpu_field_range(self, cpu: Cpu) -> tuple[int, int]:
        offsets = [off for off, _ in cpu.offsets.values()]  # type: ignore[attr-defined]
        return min(offsets), max(offsets) + 8


def _vfp_offset(snap: Snapshot, sec: Section) -> int | None:
    """Body offset of the `cpu/vfp` fields, from the VMDESCRIPTION's decoded tree."""
    for dev in snap.devices.devices:
        if dev.section is sec:
            vfp = dev.root.child("vfp")
            if vfp is None or not vfp.children():  # type: ignore[attr-defined]
                return None
            return vfp.children()[0].offset - sec.body_offset  # type: ignore[attr-defined]
    return None


ARCH = register(Aarch64())

__all__ = ["ARCH", "Aarch64Cpu"]
