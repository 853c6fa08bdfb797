"""The QEMU stream of a compressed libvirt save image, decompressed once into a file we can map.

libvirt pipes QEMU's migration stream through ``gzip``/``bzip2``/``xz``/``lzop``/``zstd -c`` when
qemu.conf sets ``save_image_format``; the stream's RAM index needs random access, so the payload is
decompressed, streaming, into a file:

- a cache entry under the index cache's directory (``<index cache>/streams``), keyed like the index
  cache by the image's identity and a hash of its first and last 64 KiB, so an unchanged image opens
  without decompressing again and a changed one is never served stale; or
- with the cache off (``VMSTATE_INDEX_CACHE=off``), or for an image modified in the last seconds, a
  temporary file that is unlinked as soon as it is mapped: nothing is left behind, even if we are
  killed.

gzip, bzip2 and xz go through Python's own modules; lzop and zstd through their programs (Python has
no module for them). A truncated or corrupt payload is one :class:`FormatError` naming the image, and
leaves no file.
"""

from __future__ import annotations

import bz2
import contextlib
import lzma
import os
import shutil
import subprocess
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import index_cache
from ..errors import FormatError, UnsupportedError

Progress = Callable[[int, int], None]
_CHUNK = 1 << 20
_MAX_CACHE_BYTES = 32 << 30  # decompressed streams are guest-RAM sized: at most this many kept
_PROGRAMS = {"lzop": ["lzop", "-dc"], "zstd": ["zstd", "-dcq"]}
# packages that hold the programs (Debian), for the error when one is missing
_PACKAGES = {"lzop": "lzop", "zstd": "zstd"}


@dataclass
class Decompressed:
    """Where the decompressed stream is: ``path`` (cache entry) or an open ``fd`` of an unlinked
    temporary file; ``where`` says which for `vmstate info`."""

    path: str | None
    fd: int | None
    where: str
    size: int

    def open(self):
        """A binary file of the stream, for the writer (which copies from it in the kernel)."""
        if self.path is not None:
            return open(self.path, "rb")
        assert self.fd is not None
        return os.fdopen(os.dup(self.fd), "rb")

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)


def streams_dir() -> Path | None:
    """The cache of decompressed streams, inside the index cache's directory; None when it is off."""
    base = index_cache.cache_dir()
    return None if base is None else base / "streams"


def decompress(
    image: str, payload_offset: int, compression: str, progress: Progress | None = None
) -> Decompressed:
    """Decompress bytes [payload_offset, EOF) of ``image`` (``compression``: gzip, bzip2, xz, lzop,
    zstd) into a cache entry or a temporary file."""
    key = index_cache.settled_file_key(image, f"libvirt-payload|{payload_offset}|{compression}")
    directory = streams_dir() if key else None
    if directory is not None:
        entry = directory / (key.decode()[:40] + ".stream")
        with contextlib.suppress(OSError):
            st = entry.stat()
            if st.st_uid == os.getuid() and st.st_size > 0 and index_cache._private(directory):
                os.utime(entry)
                return Decompressed(str(entry), None, f"cache file {entry}", st.st_size)
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not index_cache._private(directory):
                directory = None
        except OSError:
            directory = None
    if directory is not None:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".stream")
        try:
            size = _run(image, payload_offset, compression, fd, progress)
            os.replace(tmp, entry)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        os.close(fd)
        index_cache._evict(directory, _MAX_CACHE_BYTES, pattern="*.stream", keep=entry)
        return Decompressed(str(entry), None, f"cache file {entry}", size)
    fd, tmp = tempfile.mkstemp(prefix="vmstate-", suffix=".stream")
    os.unlink(tmp)  # lives while open: removed at close, also if we are killed
    try:
        size = _run(image, payload_offset, compression, fd, progress)
    except BaseException:
        os.close(fd)
        raise
    return Decompressed(None, fd, f"temporary file in {os.path.dirname(tmp)} (removed at close)", size)


def _run(image: str, offset: int, compression: str, out_fd: int, progress: Progress | None) -> int:
    """Decompress into ``out_fd``; returns the stream's length. Every failure is one FormatError."""
    try:
        src = open(image, "rb")
    except OSError as e:
        raise FormatError(f"cannot read: {e.strerror or e}", image) from None
    with src:
        total = os.fstat(src.fileno()).st_size - offset
        src.seek(offset)
        try:
            if compression in _PROGRAMS:
                size = _run_program(image, src, total, compression, out_fd, progress)
            else:
                size = _run_module(image, src, total, compression, out_fd, progress)
        except OSError as e:
            raise FormatError(
                f"cannot decompress the {compression} stream: {e.strerror or e}", image, offset
            ) from None
    if progress is not None:
        progress(total, total)
    if size == 0:
        raise FormatError(f"the {compression} stream decompresses to nothing", image, offset)
    return size


def _decoder(compression: str):
    if compression == "gzip":
        return zlib.decompressobj(wbits=31)
    if compression == "bzip2":
        return bz2.BZ2Decompressor()
    if compression == "xz":
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    raise UnsupportedError(f"no decompressor for {compression}")


def _run_module(image: str, src, total: int, compression: str, out_fd: int, progress) -> int:
    decoder = _decoder(compression)
    done = size = 0
    offset = src.tell()
    while True:
        chunk = src.read(_CHUNK)
        if not chunk:
            break
        if decoder.eof:
            break  # trailing bytes after the compressed stream (alignment padding): ignored
        try:
            data = decoder.decompress(chunk)
        except (zlib.error, OSError, lzma.LZMAError, EOFError) as e:
            raise FormatError(
                f"the {compression} stream is corrupt between here and byte "
                f"{offset + done + len(chunk):#x}: {e}",
                image,
                offset + done,
            ) from None
        _write_all(out_fd, data)
        size += len(data)
        done += len(chunk)
        if progress is not None:
            progress(done, total)
    if not decoder.eof:
        raise FormatError(
            f"the {compression} stream is truncated: it ends after {total} compressed bytes "
            f"({size} decompressed) without its end marker",
            image,
            offset + total,
        )
    return size


def _run_program(image: str, src, total: int, compression: str, out_fd: int, progress) -> int:
    argv = _PROGRAMS[compression]
    if shutil.which(argv[0]) is None:
        raise UnsupportedError(
            f"the stream is {compression}-compressed and the {argv[0]} program is not installed "
            f"(Debian package {_PACKAGES[compression]})",
            image,
        )
    offset = src.tell()
    start = os.lseek(out_fd, 0, os.SEEK_CUR)
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out_fd, stderr=err)
        done = 0
        try:
            while True:
                chunk = src.read(_CHUNK)
                if not chunk:
                    break
                try:
                    proc.stdin.write(chunk)
                except BrokenPipeError:
                    break  # the program gave up: its exit status and message say why
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()
            rc = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if rc != 0:
            err.seek(0)
            message = err.read().decode(errors="replace").strip().splitlines()
            why = message[-1].removeprefix(f"{argv[0]}: ") if message else f"exit status {rc}"
            if compression == "lzop" and "Inappropriate ioctl" in why:
                # lzop 1.04 reports input that ends early with the errno its isatty() check left
                why = "unexpected end of the compressed data"
            raise FormatError(
                f"the {compression} stream is truncated or corrupt: {argv[0]} says: {why}", image, offset
            )
    return os.fstat(out_fd).st_size - start


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
