"""The kernel's symbols (kallsyms, modules included) as an ELF symbol file for gdb.

gdb takes names for addresses from an object file's symbol table (`add-symbol-file FILE`). This
writes one with no code: an ET_EXEC whose single NOBITS section spans the symbols at their real
(KASLR-relocated) addresses, so gdb needs no offsets; functions are STT_FUNC so `bt` and `x/i`
name them, data STT_OBJECT. Per-CPU symbols, which are offsets and not addresses, are left out.
"""

from __future__ import annotations

import struct

from drgn import SymbolKind

from ..os.linux.kernel import LinuxKernel
from .elf import EHDR, ELFCLASS64, ELFDATA2LSB, EV_CURRENT, align

ET_EXEC = 2
SHDR = struct.Struct("<IIQQQQIIQQ")
SYM = struct.Struct("<IBBHQQ")
SHT_SYMTAB, SHT_STRTAB, SHT_NOBITS = 2, 3, 8
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 1, 2, 4
STB_LOCAL, STB_GLOBAL = 0, 1
STT_OBJECT, STT_FUNC = 1, 2
KERNEL_SPACE = 0xFFFF800000000000  # the upper half; per-CPU offsets are small numbers


def kernel_symbols(kernel: LinuxKernel) -> list[tuple[str, int, int, bool]]:
    """(name, address, size, is_function) of the core kernel and every loaded module."""
    kernel.load_modules()
    out = []
    for sym in kernel.prog.symbols():
        if sym.address < KERNEL_SPACE or not sym.name:
            continue
        out.append((sym.name, sym.address, sym.size, sym.kind == SymbolKind.FUNC))
    out.sort(key=lambda s: s[1])
    return out


def write_symbol_file(kernel: LinuxKernel, out: str) -> int:
    """Write the ELF; returns the number of symbols."""
    symbols = kernel_symbols(kernel)
    if not symbols:
        raise ValueError("the kernel has no symbols in the upper half")
    low = symbols[0][1] & ~0xFFF
    high = align(max(a + max(s, 1) for _, a, s, _ in symbols), 0x1000)
    strtab = bytearray(b"\0")
    symtab = bytearray(SYM.size)  # the null symbol
    for name, address, size, is_function in symbols:
        offset = len(strtab)
        strtab += name.encode() + b"\0"
        kind = STT_FUNC if is_function else STT_OBJECT
        symtab += SYM.pack(offset, STB_GLOBAL << 4 | kind, 0, 1, address, size)
    shstrtab = b"\0.kernel\0.symtab\0.strtab\0.shstrtab\0"
    names = {n: shstrtab.index(n.encode() + b"\0") for n in (".kernel", ".symtab", ".strtab", ".shstrtab")}
    pos = EHDR.size
    symtab_off = align(pos, 8)
    strtab_off = symtab_off + len(symtab)
    shstrtab_off = strtab_off + len(strtab)
    shoff = align(shstrtab_off + len(shstrtab), 8)
    sections = [
        bytes(SHDR.size),
        SHDR.pack(
            names[".kernel"],
            SHT_NOBITS,
            SHF_ALLOC | SHF_WRITE | SHF_EXECINSTR,
            low,
            0,
            high - low,
            0,
            0,
            4096,
            0,
        ),
        SHDR.pack(names[".symtab"], SHT_SYMTAB, 0, 0, symtab_off, len(symtab), 3, 1, 8, SYM.size),
        SHDR.pack(names[".strtab"], SHT_STRTAB, 0, 0, strtab_off, len(strtab), 0, 0, 1, 0),
        SHDR.pack(names[".shstrtab"], SHT_STRTAB, 0, 0, shstrtab_off, len(shstrtab), 0, 0, 1, 0),
    ]
    ident = b"\x7fELF" + bytes([ELFCLASS64, ELFDATA2LSB, EV_CURRENT]) + bytes(9)
    header = EHDR.pack(
        ident,
        ET_EXEC,
        kernel.snap.arch.elf_machine,
        EV_CURRENT,
        0,
        0,
        shoff,
        0,
        EHDR.size,
        0,
        0,
        SHDR.size,
        5,
        4,
    )
    with open(out, "wb") as f:
        f.write(header)
        f.seek(symtab_off)
        f.write(symtab)
        f.write(strtab)
        f.write(shstrtab)
        f.seek(shoff)
        f.write(b"".join(sections))
    return len(symbols)
