"""Unnamed temporary files (O_TMPFILE) that get a name only when complete.

A save writes into a file with no name, so a process killed mid-save (SIGKILL, OOM, power loss)
leaves nothing in the directory. Naming it takes linkat(2): with AT_EMPTY_PATH (needs
CAP_DAC_READ_SEARCH on older kernels), or through /proc/self/fd (refused in some sandboxes). Which
one works is probed once per filesystem with a throwaway file, before any data is written: a file
that could not be named would lose the save.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable

_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000
_libc = None


def _link_empty_path(fd: int, path: str) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.linkat(fd, b"", _AT_FDCWD, os.fsencode(path), _AT_EMPTY_PATH) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)


def _link_proc(fd: int, path: str) -> None:
    os.link(f"/proc/self/fd/{fd}", path, follow_symlinks=True)


Linker = Callable[[int, str], None]
_METHODS: tuple[Linker, ...] = (_link_empty_path, _link_proc)
_probed: dict[int, Linker | None] = {}  # st_dev -> the method that names a file there


def _open_tmpfile(directory: str) -> int | None:
    try:
        return os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o644)
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
            return None  # no O_TMPFILE on this filesystem or kernel
        raise


def _linker_for(directory: str) -> Linker | None:
    dev = os.stat(directory).st_dev
    if dev not in _probed:
        _probed[dev] = None
        probe = _open_tmpfile(directory)
        if probe is not None:
            try:
                for method in _METHODS:
                    name = os.path.join(directory, f".vmstate-probe-{os.getpid()}-{id(method):x}")
                    try:
                        method(probe, name)
                    except OSError:
                        continue
                    os.unlink(name)
                    _probed[dev] = method
                    break
            finally:
                os.close(probe)
    return _probed[dev]


def open_unnamed(directory: str) -> tuple[int, Linker] | None:
    """(fd, link) of a new unnamed read-write file in ``directory``; ``link(fd, path)`` names it.
    None where no way to name it works here (the caller uses a named temporary)."""
    linker = _linker_for(directory)
    if linker is None:
        return None
    fd = _open_tmpfile(directory)
    return None if fd is None else (fd, linker)
