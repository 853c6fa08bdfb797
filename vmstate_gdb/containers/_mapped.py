"""A read-only memory map of one file, with every read checked against the file size.

The containers share this so that a truncated file or a table that points past the end always
gives a :class:`FormatError` that names the file and the byte, never an IndexError or a short
read that someone forgets to check.

Reads after opening go through ``pread`` on the file descriptor kept open, not through the map: a
file truncated by another process would make a touch of the map past its new end kill the process
with SIGBUS. Each such read also checks that the file still has the size and mtime it had when it
was opened, so a file rewritten underneath gives one clear error instead of other bytes served as
the snapshot's. Only indexing, which runs once at open, walks the map itself (it is many times
faster there); during it the file is held with a read lease (:meth:`MappedFile.no_writers`), so
another process that opens it to write or truncates it waits until the scan is done.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import signal
import stat
import struct
from collections.abc import Iterator

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
        except BaseException:
            if own:
                os.close(fd)
            raise
        # our own descriptor for reads after open (the caller's may be closed before ours)
        self._fd: int | None = fd if own else os.dup(fd)
        self.size = size
        self._opened = (size, st.st_mtime_ns)

    @property
    def mm(self) -> mmap.mmap:
        if self._mm is None:
            raise FormatError("file is closed", self.path)
        return self._mm

    def changed(self) -> str | None:
        """Why the file is no longer the one that was opened (shorter, longer, rewritten); None if
        it still has its size and modification time."""
        if self._fd is None:
            return "the file is closed"
        st = os.fstat(self._fd)
        size = st.st_size if stat.S_ISREG(st.st_mode) else self.size
        mtime = st.st_mtime_ns if stat.S_ISREG(st.st_mode) else self._opened[1]
        if size < self.size:
            return f"the file was truncated to {size:#x} bytes since it was opened ({self.size:#x} then)"
        if (size, mtime) != self._opened:
            return "the file was modified since it was opened (size or modification time changed)"
        return None

    def check_unchanged(self, offset: int = 0) -> None:
        """FormatError if another process truncated or rewrote the file since it was opened."""
        why = self.changed()
        if why is not None:
            raise FormatError(f"{why}; open it again", self.path, offset)

    @contextlib.contextmanager
    def no_writers(self) -> Iterator[bool]:
        """While the map is walked: a read lease (fcntl F_SETLEASE), so that a process truncating
        the file blocks until we are done (at most /proc/sys/fs/lease-break-time, 45 s by
        default) instead of our next touch of the map killing us with SIGBUS. Yields whether the
        lease was granted: not for a file another process has open for writing, one we neither own
        nor have CAP_LEASE for, or a filesystem without leases; the scan then runs as before.

        The kernel tells a lease holder of the waiting writer with a signal: SIGURG, ignored
        unless a program asks for it (the default, SIGIO, would terminate the process)."""
        fd = self._fd
        leased = False
        if fd is not None:
            try:
                fcntl.fcntl(fd, getattr(fcntl, "F_SETSIG", 10), signal.SIGURG)
                fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
                leased = True
            except (OSError, AttributeError):
                pass
        try:
            yield leased
        finally:
            if leased and self._fd is not None:
                try:
                    fcntl.fcntl(self._fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
                except OSError:
                    pass  # revoked after lease-break-time

    def open_file(self):
        """A new binary file object on the same open file (the writer copies from it): the
        bytes that were indexed, even when another file was renamed over the path since."""
        if self._fd is None:
            raise FormatError("file is closed", self.path)
        return os.fdopen(os.dup(self._fd), "rb")

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
        """File bytes [offset, offset+length), read with pread and checked (see the module doc)."""
        self.check(offset, length, what)
        if self._fd is None:
            raise FormatError("file is closed", self.path)
        data = os.pread(self._fd, length, offset) if length else b""
        self._read_done(offset, len(data), length, what)
        return data

    def readinto(self, offset: int, buf: memoryview, what: str) -> None:
        """File bytes [offset, offset+len(buf)) into ``buf``, checked as :meth:`bytes` reads:
        for bulk copies that reuse one buffer (a fresh multi-MB object per read costs page faults)."""
        length = len(buf)
        self.check(offset, length, what)
        if self._fd is None:
            raise FormatError("file is closed", self.path)
        self._read_done(offset, os.preadv(self._fd, [buf], offset) if length else 0, length, what)

    def _read_done(self, offset: int, got: int, length: int, what: str) -> None:
        """A read of ``length`` bytes at ``offset`` gave ``got``: short is an error, and either way
        the file must still be the one that was indexed."""
        if got != length:
            self.check_unchanged(offset + got)
            raise FormatError(f"{what}: short read at byte {offset + got:#x}", self.path, offset)
        self.check_unchanged(offset)

    def unpack(self, fmt: str, offset: int, what: str) -> tuple:
        return struct.unpack(fmt, self.bytes(offset, struct.calcsize(fmt), what))

    def checked_view(self, offset: int, length: int) -> CheckedView:
        """Bytes [offset, offset+length) as a sliceable object whose every read is checked."""
        self.check(offset, length, "view")
        return CheckedView(self, offset, length)

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
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        mm, self._mm = self._mm, None
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                # A memoryview handed out by view() is still alive; the map is unmapped when the
                # last view goes away.
                pass


class CheckedView:
    """A window of a :class:`MappedFile` that slices like a memoryview, each slice a checked read:
    what an open session reads, so that a truncated or rewritten file is an error, not SIGBUS."""

    __slots__ = ("file", "base", "size")

    def __init__(self, file: MappedFile, base: int, size: int):
        self.file = file
        self.base = base
        self.size = size

    def __len__(self) -> int:
        return self.size

    def readinto(self, start: int, buf: memoryview) -> None:
        if start < 0 or start + len(buf) > self.size:
            raise IndexError("CheckedView read out of range")
        self.file.readinto(self.base + start, buf, "read")

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(self.size)
            if step != 1:
                raise ValueError("CheckedView slices have step 1")
            return self.file.bytes(self.base + start, max(0, stop - start), "read")
        if key < 0:
            key += self.size
        if not 0 <= key < self.size:
            raise IndexError("CheckedView index out of range")
        return self.file.bytes(self.base + key, 1, "read")[0]
