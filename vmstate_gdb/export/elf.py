"""The ELF64 pieces every core we write shares: headers, program headers, notes (include/elf.h)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

# note framing is shared with the architectures' core notes: one definition, in arch/
from ..arch.elfnote import NHDR, NT_PRFPREG, NT_PRSTATUS, align, make_note  # noqa: F401

ELFCLASS64, ELFDATA2LSB, EV_CURRENT, ET_CORE = 2, 1, 1, 4
PT_LOAD, PT_NOTE = 1, 4
PF_X, PF_W, PF_R = 1, 2, 4
NT_PRPSINFO, NT_AUXV = 3, 6
NT_FILE = 0x46494C45
PN_XNUM = 0xFFFF
EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
PHDR = struct.Struct("<IIQQQQQQ")


@dataclass
class ProgramHeader:
    type: int
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int
    flags: int = 0
    align: int = 0

    def pack(self) -> bytes:
        return PHDR.pack(
            self.type, self.flags, self.offset, self.vaddr, self.paddr, self.filesz, self.memsz, self.align
        )


def core_headers(machine: int, program_headers: list[ProgramHeader]) -> bytes:
    """ELF header of an ET_CORE file followed by its program header table."""
    ident = b"\x7fELF" + bytes([ELFCLASS64, ELFDATA2LSB, EV_CURRENT]) + bytes(9)
    head = EHDR.pack(
        ident,
        ET_CORE,
        machine,
        EV_CURRENT,
        0,
        EHDR.size,
        0,
        0,
        EHDR.size,
        PHDR.size,
        len(program_headers),
        0,
        0,
        0,
    )
    return head + b"".join(p.pack() for p in program_headers)
