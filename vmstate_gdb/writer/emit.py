"""Write a planned stream: copy unchanged ranges in the kernel, write patches and insertions.

Saving is atomic: an unnamed temporary file in the output's directory, fsync, a name, rename.
A failure (or SIGKILL) leaves nothing.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import struct
import tempfile
from collections.abc import Callable

from ..errors import SaveError
from .unnamed import Linker, open_unnamed

Progress = Callable[[int, int], None]
_CHUNK = 64 << 20
_FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)
_FICLONERANGE = 0x4020940D  # _IOW(0x94, 13, struct file_clone_range)


TEMP_PREFIX, TEMP_SUFFIX = ".vmstate-", ".part"


class AtomicOutput:
    """``with AtomicOutput(path) as f:`` — f is a binary file (read-write); renamed over ``path``
    only on success.

    The data goes to an unnamed file (O_TMPFILE) that gets a name only once it is complete and
    fsynced: a process killed mid-save leaves nothing behind. Where the filesystem has no
    O_TMPFILE, a hidden ``.vmstate-*.part`` beside the output, removed on any failure we live through.
    """

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self.tmp: str | None = None  # the temporary's name, while it has one
        self.link: Linker | None = None  # names the unnamed temporary
        self.file = None

    def __enter__(self):
        directory = os.path.dirname(self.path) or "."
        try:
            unnamed = open_unnamed(directory)
            if unnamed is not None:
                fd, self.link = unnamed
            else:
                fd, self.tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=directory)
        except OSError as e:
            raise SaveError(f"cannot write in {directory}: {e.strerror}", self.path) from None
        self.file = os.fdopen(fd, "w+b")
        return self.file

    def _name_it(self, fd: int) -> None:
        """Give the complete unnamed file a hidden name beside the output (then renamed over it)."""
        assert self.link is not None
        directory = os.path.dirname(self.path) or "."
        while True:
            name = os.path.join(directory, f"{TEMP_PREFIX}{secrets.token_hex(6)}{TEMP_SUFFIX}")
            try:
                self.link(fd, name)
            except FileExistsError:
                continue
            self.tmp = name
            return

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self.file.flush()
                fd = self.file.fileno()
                os.fchmod(fd, 0o644)
                os.fsync(fd)
                if self.tmp is None:
                    try:  # no file at the output's name: the complete file gets it, no temporary name
                        self.link(fd, self.path)  # type: ignore[misc]
                    except FileExistsError:
                        self._name_it(fd)
                self.file.close()
                if self.tmp is not None:
                    os.replace(self.tmp, self.path)
                    self.tmp = None
                _fsync_dir(os.path.dirname(self.path) or ".")
            else:
                self.file.close()
        except OSError as e:
            raise SaveError(f"cannot finish writing: {e.strerror}", self.path) from None
        finally:
            if not self.file.closed:
                self.file.close()
            if self.tmp is not None:
                try:
                    os.unlink(self.tmp)
                except OSError:
                    pass
        return False


def _fsync_dir(directory: str) -> None:
    """The rename reaches the disk too (a crash after save() returns keeps the new name)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def copy_range(
    src_fd: int,
    dst,
    src_offset: int,
    length: int,
    progress: Progress | None = None,
    done: int = 0,
    total: int = 0,
) -> None:
    """Copy file bytes [src_offset, +length) to the current end of ``dst`` (in-kernel when possible).

    Holes in the source stay holes (a mapped-ram stream is mostly holes: the pages QEMU never
    wrote); without this the copy would write every zero of the guest's RAM size."""
    dst.flush()
    dst_fd = dst.fileno()
    start = os.lseek(dst_fd, 0, os.SEEK_CUR)
    end = src_offset + length
    pos = src_offset
    while pos < end:
        data_at, hole_at = _data_run(src_fd, pos, end)
        if data_at > pos:  # a hole: the output gets one too (written past, or sized at the end)
            pos = data_at
            if progress:
                progress(done + pos - src_offset, total)
            continue
        _copy_data(src_fd, dst_fd, pos, hole_at - pos, start + pos - src_offset)
        pos = hole_at
        if progress:
            progress(done + pos - src_offset, total)
    out_end = start + length
    if os.fstat(dst_fd).st_size < out_end:  # the range ended in a hole
        os.ftruncate(dst_fd, out_end)
    os.lseek(dst_fd, out_end, os.SEEK_SET)


def _data_run(fd: int, pos: int, end: int) -> tuple[int, int]:
    """(start, end) of the next data run at or after ``pos``, clipped to ``end``; (end, end) if
    none. Where the filesystem cannot say, everything is data."""
    try:
        data_at = os.lseek(fd, pos, os.SEEK_DATA)
    except OSError as e:
        if e.errno == errno.ENXIO:  # only a hole from pos to the end of the file
            return end, end
        return pos, end
    if data_at >= end:
        return end, end
    try:
        hole_at = os.lseek(fd, data_at, os.SEEK_HOLE)
    except OSError:
        hole_at = end
    return data_at, min(hole_at, end)


def _copy_data(src_fd: int, dst_fd: int, pos: int, length: int, out_pos: int) -> None:
    remaining = length
    while remaining > 0:
        n = min(remaining, _CHUNK)
        try:
            copied = os.copy_file_range(src_fd, dst_fd, n, pos, out_pos)
        except OSError:
            copied = 0
        if copied <= 0:  # cross-filesystem or unsupported: fall back to read/write
            data = os.pread(src_fd, n, pos)
            if not data:
                raise SaveError(f"input ended early at byte {pos:#x}")
            copied = os.pwrite(dst_fd, data, out_pos)
        pos += copied
        out_pos += copied
        remaining -= copied


def clone_range(src_fd: int, dst_fd: int, length: int) -> bool:
    """Make bytes [0, length) of ``dst`` share the source's extents (a reflink: btrfs, XFS, ...).

    ``length`` must be a multiple of the filesystem's block size or the source's size. False where
    the filesystem cannot (ext4, tmpfs, another filesystem): the caller copies instead.
    """
    try:
        if length == os.fstat(src_fd).st_size:
            fcntl.ioctl(dst_fd, _FICLONE, src_fd)
        else:
            fcntl.ioctl(dst_fd, _FICLONERANGE, struct.pack("=qQQQ", src_fd, 0, length, 0))
    except OSError:
        return False
    return True


def write_stream(
    copy: Callable[[int, int], None],
    stream_size: int,
    patches: list[tuple[int, bytes]],
    insert_at: int | None,
    inserted: bytes,
    dst,
    progress: Progress | None = None,
    start: int = 0,
) -> int:
    """Write the stream with its patches and one insertion to ``dst``; returns bytes written.

    ``copy(offset, length)`` appends the source's stream bytes [offset, offset+length) to ``dst``
    (in the kernel for a contiguous file, in chunks for a fragmented qcow2 vmstate). With ``start``,
    ``dst`` already holds stream bytes [0, start) (cloned): writing begins there, and patches that
    begin before it are the caller's.
    """
    total = stream_size + len(inserted)
    events: list[tuple[int, int, bytes]] = [(off, 1, data) for off, data in patches if off >= start]
    if insert_at is not None:
        events.append((insert_at, 0, inserted))  # insertion sorts before a patch at the same offset
    events.sort(key=lambda e: (e[0], e[1]))
    pos = written = start

    def copy_upto(end: int) -> None:
        nonlocal pos, written
        while pos < end:
            n = min(_CHUNK, end - pos)
            copy(pos, n)
            pos += n
            written += n
            if progress:
                progress(written, total)

    for off, kind, data in events:
        if off < pos:
            raise SaveError(f"overlapping edits at stream offset {off:#x}")
        copy_upto(off)
        dst.write(data)
        written += len(data)
        if kind == 1:
            pos += len(data)
    copy_upto(stream_size)
    if progress:
        progress(total, total)
    return written
