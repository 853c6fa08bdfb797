"""The kernel's symbol table, decoded from kallsyms in guest memory and cached per kernel build.

drgn's own decoder (``load_vmlinux_kallsyms``) reads a page of memory per symbol; 94,000 symbols
cost about a second through the snapshot's memory. The result depends only on the kernel build and
its KASLR offset, so it is kept in the user's cache directory under the build id from VMCOREINFO,
with kernel-image addresses stored relative to the KASLR offset (per-CPU and absolute symbols are
not relocated). A cache entry is used only if its ``_stext`` lands where VMCOREINFO says.
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
from pathlib import Path

from drgn import Program, Symbol, SymbolBinding, SymbolIndex, SymbolKind

from .vmcoreinfo import VmcoreInfo

CACHE_ENV = "VMSTATE_CACHE_DIR"
_MAGIC = b"VMSKSYM1"
_KERNEL_IMAGE = 0xFFFFFFFF80000000  # x86_64's kernel text mapping starts here (KASLR moves within it)
_ENTRY = struct.Struct("<QQBB")


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


def _relocated(address: int, offset: int, sign: int) -> int:
    return (address + sign * offset) & 0xFFFFFFFFFFFFFFFF if address >= _KERNEL_IMAGE else address


def _encode(symbols: list[Symbol], kaslr: int) -> bytes:
    names = b"\0".join(s.name.encode() for s in symbols)
    body = b"".join(
        _ENTRY.pack(_relocated(s.address, kaslr, -1), s.size, s.binding.value, s.kind.value) for s in symbols
    )
    return _MAGIC + struct.pack("<II", len(symbols), len(names)) + names + body


def _decode(data: bytes, kaslr: int) -> list[Symbol] | None:
    if data[:8] != _MAGIC or len(data) < 16:
        return None
    count, names_len = struct.unpack_from("<II", data, 8)
    names = data[16 : 16 + names_len].split(b"\0")
    body = memoryview(data)[16 + names_len :]
    if len(names) != count or len(body) != count * _ENTRY.size:
        return None
    out = []
    for name, (address, size, binding, kind) in zip(names, _ENTRY.iter_unpack(body), strict=True):
        out.append(
            Symbol(
                name.decode(), _relocated(address, kaslr, 1), size, SymbolBinding(binding), SymbolKind(kind)
            )
        )
    return out


def load_kernel_symbols(prog: Program, info: VmcoreInfo, use_cache: bool = True) -> tuple[SymbolIndex, str]:
    """The core kernel's symbols as a drgn SymbolIndex, and where they came from."""
    from drgn.helpers.linux.kallsyms import load_vmlinux_kallsyms

    key = kernel_key(info) if use_cache else None
    path = cache_dir() / "linux" / f"{key}.kallsyms" if key else None
    stext = info.symbol("_stext")
    if path is not None and path.exists():
        try:
            symbols = _decode(path.read_bytes(), info.kaslr_offset)
        except (OSError, ValueError, IndexError, struct.error):
            symbols = None
        if symbols:
            index = SymbolIndex(symbols)
            found = index(prog, "_stext", None, True)
            if found and found[0].address == stext:
                return index, f"kallsyms (cached in {path})"
    index = load_vmlinux_kallsyms(prog)
    if path is not None:
        _store(path, _encode(index(prog, None, None, False), info.kaslr_offset))
    return index, "kallsyms in guest memory"


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
