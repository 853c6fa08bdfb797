"""Guest symbols for the command line and tests: an ELF with a symbol table (pyelftools) or a
System.map / /proc/kallsyms text file. gdb reads symbols itself; this is for the rest."""

from __future__ import annotations

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from .errors import FormatError


def load_symbols(path: str) -> dict[str, int]:
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
            f.seek(0)
            if magic == b"\x7fELF":
                return _elf_symbols(f, path)
            text = f.read().decode("ascii", "replace")
    except OSError as e:
        raise FormatError(f"cannot read symbols: {e.strerror}", path) from None
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            try:
                out.setdefault(parts[2], int(parts[0], 16))
            except ValueError:
                continue
    if not out:
        raise FormatError("no symbols: not an ELF file nor a System.map", path)
    return out


def _elf_symbols(f, path: str) -> dict[str, int]:
    try:
        elf = ELFFile(f)
        table = elf.get_section_by_name(".symtab")
        if table is None:
            raise FormatError("ELF file has no .symtab (stripped?)", path)
        return {s.name: s["st_value"] for s in table.iter_symbols() if s.name}
    except ELFError as e:
        raise FormatError(f"bad ELF file: {e}", path) from None


def resolve_address(text: str, symbols: dict[str, int] | None) -> int:
    """'0x1234', '4096', 'guest_mac', 'guest_mac+8'."""
    base, _, plus = text.partition("+")
    try:
        value = int(base, 0)
    except ValueError:
        if not symbols or base not in symbols:
            raise FormatError(f"{base!r} is neither an address nor a known symbol") from None
        value = symbols[base]
    return value + (int(plus, 0) if plus else 0)
