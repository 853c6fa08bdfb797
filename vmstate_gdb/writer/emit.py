"""Write a planned stream: copy unchanged ranges in the kernel, write patches and insertions.

Saving is atomic: a temporary file in the output's directory, fsync, rename. A failure removes it.
"""

from __future__ import annotations

import fcntl
import os
import struct
import tempfile
from collections.abc import Callable

from ..errors import SaveError

Progress = Callable[[int, int], None]
_CHUNK = 64 << 20
_FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)
_FICLONERANGE = 0x4020940D  # _IOW(0x94, 13, struct file_clone_range)


class AtomicOutput:
    """``with AtomicOutput(path) as f:`` — f is a binary file; renamed over ``path`` only on success."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self.tmp: str | None = None
        self.file = None

    def __enter__(self):
        directory = os.path.dirname(self.path) or "."
        try:
            fd, self.tmp = tempfile.mkstemp(prefix=".vmstate-", suffix=".part", dir=directory)
        except OSError as e:
            raise SaveError(f"cannot write in {directory}: {e.strerror}", self.path) from None
        self.file = os.fdopen(fd, "wb")
        return self.file

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self.file.flush()
                os.fsync(self.file.fileno())
                self.file.close()
                os.chmod(self.tmp, 0o644)
                os.replace(self.tmp, self.path)
                self.tmp = None
            else:
                self.file.close()
        except OSError as e:
            raise SaveError(f"cannot finish writing: {e.strerror}", self.path) from None
        finally:
            if self.tmp is not None:
                try:
                    os.unlink(self.tmp)
                except OSError:
                    pass
        return False


def copy_range(
    src_fd: int,
    dst,
    src_offset: int,
    length: int,
    progress: Progress | None = None,
    done: int = 0,
    total: int = 0,
) -> None:
    """Copy file bytes [src_offset, +length) to the current end of ``dst`` (in-kernel when possible)."""
    dst.flush()
    dst_fd = dst.fileno()
    out_pos = os.lseek(dst_fd, 0, os.SEEK_CUR)
    remaining = length
    pos = src_offset
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
        if progress:
            progress(done + length - remaining, total)
    os.lseek(dst_fd, out_pos, os.SEEK_SET)


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
