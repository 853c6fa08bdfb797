"""The kernel's symbol table, decoded from kallsyms in guest memory and cached per kernel build.

drgn's own decoder (``load_vmlinux_kallsyms``) reads a page of memory per symbol; 94,000 symbols
cost about a second through the snapshot's memory. The result depends only on the kernel build and
its KASLR offset, so it is kept in the user's cache directory under the build id from VMCOREINFO,
with kernel-image addresses stored relative to the KASLR offset (per-CPU and absolute symbols are
not relocated). A cache entry is used only if its ``_stext`` lands where VMCOREINFO says.
"""

from __future__ import annotations

import array
import hashlib
import os
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from drgn import Program, Symbol, SymbolBinding, SymbolIndex, SymbolKind

from .vmcoreinfo import VmcoreInfo

CACHE_ENV = "VMSTATE_CACHE_DIR"
_MAGIC = b"VMSKSYM2"


def cache_dir() -> Path:
    """``$VMSTATE_CACHE_DIR``, else ``$XDG_CACHE_HOME/vmstate_gdb``, else ``~/.cache/vmstate_gdb``."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vmstate_gdb"


def kernel_key(info: VmcoreInfo) -> str | None:
    """The cache key of a kernel build: its build id (no key, no cache, for kernels without one)."""
    if not info.build_id:
        return None
    digest = hashlib.sha256(f"{info.release}\0{info.build_id}".encode()).hexdigest()[:20]
    return f"{info.release}-{digest}"


@dataclass(frozen=True)
class Relocation:
    """KASLR's offset, applied to the addresses of the kernel image only (the architecture says
    which those are), so that one cache file serves every boot of a kernel build."""

    offset: int
    is_image: Callable[[int], bool]

    def apply(self, address: int) -> int:
        return (address + self.offset) & 0xFFFFFFFFFFFFFFFF if self.is_image(address) else address

    def remove(self, address: int) -> int:
        return (address - self.offset) & 0xFFFFFFFFFFFFFFFF if self.is_image(address) else address


class _Table:
    """The cache file's columns: names, addresses (KASLR removed), sizes, bindings, kinds."""

    def __init__(
        self, names: list[str], addresses: array.array, sizes: array.array, bindings: bytes, kinds: bytes
    ):
        self.names, self.addresses, self.sizes, self.bindings, self.kinds = (
            names,
            addresses,
            sizes,
            bindings,
            kinds,
        )

    @classmethod
    def of(cls, symbols: list[Symbol], reloc: Relocation) -> _Table:
        return cls(
            [s.name for s in symbols],
            array.array("Q", (reloc.remove(s.address) for s in symbols)),
            array.array("Q", (s.size for s in symbols)),
            bytes(s.binding.value for s in symbols),
            bytes(s.kind.value for s in symbols),
        )

    def encode(self) -> bytes:
        names = "\0".join(self.names).encode()
        head = _MAGIC + struct.pack("<II", len(self.names), len(names))
        return head + names + self.addresses.tobytes() + self.sizes.tobytes() + self.bindings + self.kinds

    @classmethod
    def decode(cls, data: bytes) -> _Table | None:
        if data[:8] != _MAGIC or len(data) < 16:
            return None
        count, names_len = struct.unpack_from("<II", data, 8)
        pos = 16 + names_len
        if len(data) != pos + 18 * count:
            return None
        names = data[16:pos].decode(errors="replace").split("\0") if count else []
        if len(names) != count:
            return None
        addresses, sizes = array.array("Q"), array.array("Q")
        addresses.frombytes(data[pos : pos + 8 * count])
        sizes.frombytes(data[pos + 8 * count : pos + 16 * count])
        bindings, kinds = data[pos + 16 * count : pos + 17 * count], data[pos + 17 * count :]
        return cls(names, addresses, sizes, bindings, kinds)

    def symbols(self, reloc: Relocation) -> list[Symbol]:
        bindings = {b.value: b for b in SymbolBinding}  # enum lookups by value are slow per call
        kinds = {k.value: k for k in SymbolKind}
        return [
            Symbol(name, reloc.apply(address), size, bindings[b], kinds[k])
            for name, address, size, b, k in zip(
                self.names, self.addresses, self.sizes, self.bindings, self.kinds, strict=True
            )
        ]

    def addresses_by_name(self, reloc: Relocation) -> dict[str, int]:
        """Name -> address, a global symbol winning over a local one of the same name."""
        out: dict[str, int] = {}
        glob = SymbolBinding.GLOBAL.value
        for name, address, binding in zip(self.names, self.addresses, self.bindings, strict=True):
            if binding == glob or name not in out:
                out[name] = reloc.apply(address)
        return out


def _encode(symbols: list[Symbol], reloc: Relocation) -> bytes:
    return _Table.of(symbols, reloc).encode()


def _decode(data: bytes, reloc: Relocation) -> list[Symbol] | None:
    table = _Table.decode(data)
    return table.symbols(reloc) if table else None


class KernelSymbols:
    """A drgn symbol finder over the kernel's kallsyms that builds its 94,000 drgn Symbols only when
    drgn needs them (stacks, lookups by address): finding a variable by name, all `ps` needs, takes
    a dictionary lookup when the table comes from the cache."""

    def __init__(
        self, prog: Program, info: VmcoreInfo, is_image: Callable[[int], bool], use_cache: bool = True
    ):
        self.prog, self.info = prog, info
        self.reloc = Relocation(info.kaslr_offset, is_image)
        key = kernel_key(info) if use_cache else None
        self.path = cache_dir() / "linux" / f"{key}.kallsyms" if key else None
        self._index: SymbolIndex | None = None
        self._table: _Table | None = None
        self._by_name: dict[str, int] | None = None
        self.source = "kallsyms in guest memory"
        if self.path is not None and self.path.exists():
            try:
                table = _Table.decode(self.path.read_bytes())
            except (OSError, ValueError, struct.error):
                table = None
            if table is not None:
                by_name = table.addresses_by_name(self.reloc)
                if by_name.get("_stext") == info.symbol("_stext"):
                    self._table, self._by_name = table, by_name
                    self.source = f"kallsyms (cached in {self.path})"
        if self._table is None:
            self._load()

    def _load(self) -> None:
        from drgn.helpers.linux.kallsyms import load_vmlinux_kallsyms

        index = load_vmlinux_kallsyms(self.prog)
        symbols = index(self.prog, None, None, False)
        table = _Table.of(symbols, self.reloc)
        self._index, self._table = index, table
        self._by_name = table.addresses_by_name(self.reloc)
        if self.path is not None:
            _store(self.path, table.encode())

    def index(self) -> SymbolIndex:
        if self._index is None:
            assert self._table is not None
            self._index = SymbolIndex(self._table.symbols(self.reloc))
        return self._index

    def address(self, name: str) -> int | None:
        assert self._by_name is not None
        return self._by_name.get(name)

    def __call__(self, prog: Program, name: str | None, address: int | None, one: bool) -> list[Symbol]:
        return self.index()(prog, name, address, one)


def _store(path: Path, data: bytes) -> None:
    """Write atomically; a cache that cannot be written is only slower, never an error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError:
        pass
