"""ELF note framing shared by every architecture's core notes (include/elf.h, dump/dump.c)."""

from __future__ import annotations

import struct

NHDR = struct.Struct("<III")
NT_PRSTATUS, NT_PRFPREG = 1, 2


def align(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def make_note(name: bytes, note_type: int, desc: bytes) -> bytes:
    """One ELF note: header, NUL-terminated name and desc, each padded to 4 bytes (as QEMU does)."""
    name_z = name + b"\0"
    return (
        NHDR.pack(len(name_z), len(desc), note_type)
        + name_z.ljust(align(len(name_z), 4), b"\0")
        + desc.ljust(align(len(desc), 4), b"\0")
    )
