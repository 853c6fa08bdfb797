"""Guest architectures: one interface, one implementation per architecture, chosen from the stream.

Everything above this package (the snapshot facade, memory layers, the gdb server, exporters, the
command line, an OS layer) asks the :class:`Architecture` of a snapshot and never names one: how a
vCPU is decoded from its `cpu` section, its gdb register set and target description, its page-table
walk, its ELF core notes, its disassembler mode, what drgn calls it. A new architecture is a new
subpackage that registers an instance with :func:`register`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import UnsupportedError

if TYPE_CHECKING:
    from ..snapshot import Snapshot
    from ..stream.index import StreamIndex
    from .linux_abi import LinuxAbi
    from .paging import Translation

ReadPhysical = Callable[[int, int], bytes]


class Cpu(Protocol):
    """What every architecture's vCPU offers: named register values and where they are stored."""

    index: int
    body_offset: int
    values: dict[str, int]
    halted: bool

    def __getitem__(self, name: str) -> int: ...

    @property
    def pc(self) -> int: ...

    @property
    def cpu_mode(self) -> str: ...

    @property
    def paging_mode(self) -> str:
        """'none' when addresses are physical; anything else names the translation regime."""
        ...

    @property
    def bits(self) -> int: ...

    def field_offset(self, name: str) -> tuple[int, int]:
        """(stream offset, size in bytes) of a register field, for edits."""
        ...


class PageWalker(Protocol):
    cpu: Cpu
    #: True when :meth:`mappings` is the cheap way to find what is mapped (search, cores, info mem)
    enumerable: bool

    def translate(self, vaddr: int) -> Translation: ...

    def mappings(self, limit: int = 1 << 20) -> Iterator[tuple[int, int, int, bool, bool]]:
        """(virtual, physical, size, writable, user) of every present leaf, in address order."""
        ...


@dataclass(frozen=True)
class GdbRegister:
    name: str
    number: int  # the remote (g packet) number
    bits: int


@dataclass(frozen=True)
class Instruction:
    address: int
    size: int
    text: str
    raw: bytes


class GdbTarget(Protocol):
    """What a register write needs from the gdb server: the snapshot and the vCPU's memory."""

    snap: Snapshot

    def virtual(self, cpu_index: int | None = None) -> Any: ...


class Architecture:
    """One guest architecture. Subclasses fill in every attribute and method."""

    name: str = ""
    #: gdb's name, as in a target description's <architecture>
    gdb_architecture: str = ""
    #: the gdb that debugs it on a Debian host ("gdb" is x86 only there; "gdb-multiarch" is all)
    gdb_program: str = "gdb-multiarch"
    #: e_machine of ELF files and cores (include/elf.h)
    elf_machine: int = 0
    #: drgn's names: drgn.Architecture member and drgn.PlatformFlags members
    drgn_architecture: str = ""
    drgn_platform_flags: tuple[str, ...] = ("IS_64_BIT", "IS_LITTLE_ENDIAN")
    #: drgn's register names that differ from the gdb register names (drgn -> gdb)
    drgn_register_names: dict[str, str] = {}
    #: the name gdb and the CLI use for the program counter
    pc_name: str = "pc"
    #: a few register names for messages ("known: ...")
    register_examples: str = ""
    #: gdb register set: number order = g-packet order
    gdb_registers: list[GdbRegister] = []

    # -- choosing -------------------------------------------------------------------------------

    def probe(self, index: StreamIndex) -> bool:
        """True when the stream is of this architecture (its cpu sections or machine type)."""
        raise NotImplementedError

    # -- vCPUs ----------------------------------------------------------------------------------

    def decode_cpus(self, snap: Snapshot) -> list[Cpu]:
        raise NotImplementedError

    def register_names(self, cpu: Cpu) -> list[str]:
        """The names :meth:`Snapshot.set_register` accepts for this vCPU."""
        raise NotImplementedError

    def derived_writes(self, cpu: Cpu, name: str, value: int) -> list[tuple[str, int]]:
        """Fields QEMU does not recompute on load that must follow a register change (x86 TCG's
        hflags); [] where QEMU rebuilds its derived state itself."""
        return []

    def rederive(self, cpu: Cpu) -> list[tuple[str, int]]:
        """The derived fields that differ from what the vCPU's current values imply (after edits
        made field by field); [] where QEMU rebuilds its derived state on load."""
        return []

    def page_table_root(self, cpu: Cpu, user: bool = False) -> int:
        """Physical address register of the kernel's (or, with ``user``, the user half's) page
        tables: cr3 on x86 (one root), TTBR1_EL1 / TTBR0_EL1 on aarch64, with the attribute bits."""
        raise NotImplementedError

    def page_table_roots(self, cpu: Cpu) -> dict[str, int]:
        """The root registers by name, for reports ({"cr3": ...} / {"ttbr0_el1": ..., ...})."""
        raise NotImplementedError

    def summary_registers(self, cpu: Cpu) -> dict[str, int]:
        """The registers `vmstate info` shows per vCPU (program counter and page-table roots)."""
        return {self.pc_name: cpu.pc, **self.page_table_roots(cpu)}

    def page_walker(self, cpu: Cpu, read: ReadPhysical, root: int | None = None) -> PageWalker:
        """A walker for the vCPU's regime; ``root`` replaces the root the address would use."""
        raise NotImplementedError

    # -- gdb ------------------------------------------------------------------------------------

    def target_xml(self) -> str:
        raise NotImplementedError

    def read_gdb_register(self, cpu: Cpu, reg: GdbRegister) -> int:
        raise NotImplementedError

    def encode_gdb_register(self, cpu: Cpu, reg: GdbRegister) -> bytes:
        return self.read_gdb_register(cpu, reg).to_bytes(reg.bits // 8, "little")

    def encode_gdb_registers(self, cpu: Cpu) -> bytes:
        return b"".join(self.encode_gdb_register(cpu, r) for r in self.gdb_registers)

    def write_gdb_register(self, target: GdbTarget, cpu: Cpu, reg: GdbRegister, value: int) -> None:
        """Make ``reg`` read back as ``value`` through the snapshot's overlay, as the QEMU gdbstub's
        write would."""
        raise NotImplementedError

    def format_registers(self, cpu: Cpu) -> str:
        """The vCPU in the layout of QEMU's `info registers`."""
        raise NotImplementedError

    # -- code -----------------------------------------------------------------------------------

    #: bytes per instruction when fixed (listings before pc then need no guessing), else None
    instruction_size: int | None = None
    max_instruction_size: int = 16

    def code_address(self, cpu: Cpu) -> int:
        """The address the next instruction is fetched from (virtual, or physical without paging)."""
        return cpu.pc

    def disassemble(self, code: bytes, address: int, cpu: Cpu, count: int = 1) -> list[Instruction]:
        raise NotImplementedError

    # -- ELF cores ------------------------------------------------------------------------------

    #: what :meth:`core_notes` writes, for reports
    core_notes_text: str = ""

    def core_notes(self, cpus: list[Cpu]) -> bytes:
        """The per-vCPU notes of a core, in the order QEMU's dump-guest-memory writes them."""
        raise NotImplementedError

    def registers_from_prstatus(self, desc: bytes) -> tuple[int, dict[str, int]] | None:
        """(pr_pid, {register name for set_register: value}) of an NT_PRSTATUS desc, only the
        registers a core can change; None when the desc is not this architecture's."""
        raise NotImplementedError

    # -- the OS inside --------------------------------------------------------------------------

    def linux_abi(self) -> LinuxAbi | None:
        """How Linux uses this architecture (for os/linux); None where there is no Linux view."""
        return None

    # -- device state ---------------------------------------------------------------------------

    def cpu_field_range(self, cpu: Cpu) -> tuple[int, int]:
        """Stream offsets [start, end) of the vCPU's register fields (for edits made field by field)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "gdb_architecture": self.gdb_architecture,
            "elf_machine": self.elf_machine,
            "drgn_architecture": self.drgn_architecture,
            "drgn_platform_flags": list(self.drgn_platform_flags),
        }


_REGISTRY: list[Architecture] = []


def register(arch: Architecture) -> Architecture:
    _REGISTRY.append(arch)
    return arch


def _load() -> None:
    # always both: importing one subpackage directly (arch.aarch64.cpu) registers only that one
    from . import aarch64, x86_64  # noqa: F401  (each registers itself, once)


def architectures() -> list[Architecture]:
    _load()
    return list(_REGISTRY)


def by_name(name: str) -> Architecture:
    for arch in architectures():
        if arch.name == name:
            return arch
    known = ", ".join(a.name for a in _REGISTRY)
    raise UnsupportedError(f"unknown architecture {name!r} (known: {known})")


def architecture_for(index: StreamIndex) -> Architecture:
    """The architecture of a stream: the first that recognises it; x86_64 for a stream that says
    nothing either way (no cpu section, no known machine type), as every stream did before."""
    for arch in architectures():
        if arch.probe(index):
            return arch
    return by_name("x86_64")
