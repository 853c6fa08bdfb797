"""A read-only memory map of one file, with every read checked against the file size.

The containers share this so that a truncated file or a table that points past the end always
gives a :class:`FormatError` that names the file and the byte, never an IndexError or a short
read that someone forgets to check.
"""

from __future__ import annotations

import mmap
import os
import stat
import struct

from ..errors import FormatError


def _open_error(path: str, exc: OSError) -> FormatError:
    reason = exc.strerror or exc.__class__.__name__
    if isinstance(exc, FileNotFoundError):
        reason = "no such file"
    elif isinstance(exc, PermissionError):
        reason = "permission denied, cannot read it"
    elif isinstance(exc, IsADirectoryError):
        reason = "is a directory, not a snapshot file"
    return FormatError(f"cannot open: {reason}", path)


class MappedFile:
    """``path`` mapped read-only. Nothing is loaded; pages come in as they are touched."""

    def __init__(self, path: str, fd: int | None = None):
        """``fd``: map this open file instead (an unlinked temporary file); ``path`` names it in
        errors. The caller keeps ``fd`` and closes it."""
        self.path = path
        own = fd is None
        if fd is None:
            try:
                # O_NONBLOCK: opening a FIFO must not wait for a writer; the type check below refuses it
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | os.O_NONBLOCK)
            except OSError as exc:
                raise _open_error(path, exc) from None
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise FormatError("cannot open: is a directory, not a snapshot file", path)
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
                raise FormatError(
                    "cannot open: not a regular file or block device (pipes are not seekable)", path
                )
            size = os.lseek(fd, 0, os.SEEK_END)
            if size == 0:
                raise FormatError("empty file (0 bytes): not a snapshot", path, 0)
            try:
                self._mm: mmap.mmap | None = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
            except (OSError, ValueError) as exc:
                raise FormatError(f"cannot memory-map the file: {exc}", path) from None
        finally:
            if own:
                os.close(fd)
        self.size = size

    @property
    def mm(self) -> mmap.mmap:
        if self._mm is None:
            raise FormatError("file is closed", self.path)
        return self._mm

    def check(self, offset: int, length: int, what: str) -> None:
        """FormatError unless bytes [offset, offset+length) lie inside the file."""
        if offset < 0 or length < 0 or offset + length > self.size:
            end = offset + length
            raise FormatError(
                f"{what} needs bytes {offset:#x}..{end:#x} but the file is only {self.size:#x} bytes"
                " (truncated or corrupt)",
                self.path,
                offset,
            )

    def bytes(self, offset: int, length: int, what: str) -> bytes:
        self.check(offset, length, what)
        return self.mm[offset : offset + length]

    def unpack(self, fmt: str, offset: int, what: str) -> tuple:
        n = struct.calcsize(fmt)
        self.check(offset, n, what)
        return struct.unpack_from(fmt, self.mm, offset)

    def view(self, offset: int, length: int) -> memoryview:
        self.check(offset, length, "view")
        return memoryview(self.mm)[offset : offset + length]

    def release(self, offset: int, length: int) -> None:
        """Drop the process's mapping of pages already read (the page cache keeps them), so that
        indexing a multi-GB file does not grow the resident set by the file's size."""
        if self._mm is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        page = mmap.PAGESIZE
        start = (offset + page - 1) // page * page
        end = min(self.size, offset + length) // page * page
        if end > start:
            try:
                self._mm.madvise(mmap.MADV_DONTNEED, start, end - start)
            except (OSError, ValueError):
                pass

    def find(self, needle: bytes, start: int, end: int) -> int:
        return self.mm.find(needle, max(0, start), min(end, self.size))

    def close(self) -> None:
        mm, self._mm = self._mm, None
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                # A memoryview handed out by view() is still alive; the map is unmapped when the
                # last view goes away.
                pass
