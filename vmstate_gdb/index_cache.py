"""Stream indexes kept in the user's cache directory, so a second open of an unchanged file is a map.

A snapshot is opened many times (`vmstate info`, then `devices`, then gdb): the scan of its RAM records
is the same each time. The cache file holds each RAM block's page array exactly as it is in memory
(page-aligned; arrays smaller than a page packed after them), then the index's small parts
(sections, device descriptions, block list) as a compressed pickle and a footer;
loading maps the file and hands out the arrays as views into the map, so a reopen costs the same for
a 1 GiB guest as for a 64 GiB one and brings no page of the array into memory until it is read.
A first open builds the arrays straight into that file (:class:`PageFile`) and lets go of the pages
it has filled as the scan moves on, so the index of a 64 GiB guest (128 MiB) never sits in memory.

The key is the file's identity (device, inode, size, modification time), the container (kind, where
the stream starts, which qcow2 snapshot) and a hash of the stream's first and last 64 KiB: a file
changed, truncated or replaced is never served from a stale entry. As git does for its index, a file
modified in the last two seconds is not cached at all, since a rewrite within the filesystem's
timestamp granularity would keep its modification time. The cache is never required (any
problem with it means a normal scan) and is never written next to the snapshot.

Where: ``$VMSTATE_INDEX_CACHE`` (``off`` disables it), else ``$XDG_CACHE_HOME/vmstate_gdb/index``, else
``~/.cache/vmstate_gdb/index``; at most 4 GiB on disk (8 bytes per guest page that holds data: 128 MiB
for a 64 GiB guest full of data, almost nothing for one that left its RAM untouched), least recently
used entries removed first. Streams under 1 MiB are not cached (their scan takes
a few milliseconds). Entries are pickles: only files the user owns in a directory only the
user can write are loaded, like any other per-user cache of trusted data.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import pickle
import stat
import struct
import tempfile
import time
import zlib
from array import array
from pathlib import Path
from typing import TYPE_CHECKING

from .stream.ram import zero_entries

if TYPE_CHECKING:
    from .containers import StreamSource
    from .stream.index import StreamIndex

_FOOTER = struct.Struct("<8sQQQQ")  # magic, key offset, key length, metadata offset, length
_MAGIC = b"VMSIDX\x00\x04"  # bump the last byte when StreamIndex or the layout changes
_SAMPLE = 64 << 10
# a shorter stream is scanned in a few milliseconds; longer ones may hold millions of 9-byte
# zero-page records (a 4 GiB guest that touched little RAM: 10 MB, 80 ms to scan)
_MIN_STREAM = 1 << 20
_MAX_BYTES = 4 << 30  # the cache's size; least recently used entries go first
_SETTLED_NS = 2 * 10**9  # git's "racy" rule: a file modified this recently may change again unseen
_STALE_TMP_S = 24 * 3600  # leftovers of a killed scan
# free space kept beside the largest the entry can grow to (8 bytes for every page): see PageFile
_DISK_MARGIN = 64 << 20


def cache_dir() -> Path | None:
    env = os.environ.get("VMSTATE_INDEX_CACHE")
    if env is not None:
        return None if env.strip().lower() in ("", "0", "off", "no") else Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vmstate_gdb" / "index"


def source_key(source: StreamSource) -> bytes | None:
    """What identifies this stream's bytes; None: do not cache (no cache, not a settled regular file)."""
    if cache_dir() is None:
        return None
    try:
        st = os.stat(source.path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or source.size < _MIN_STREAM:
        return None
    # A file written in the last seconds could be rewritten within the filesystem's timestamp
    # granularity, same size and inode, and look unchanged: it is scanned, not cached.
    if time.time_ns() - st.st_mtime_ns < _SETTLED_NS:
        return None
    snap = getattr(source, "snapshot", None)
    which = f"{snap.id}/{snap.name}/{snap.vm_state_size}" if snap is not None else ""
    try:
        origin = source.file_offset(0)
    except Exception:
        origin = -1
    h = hashlib.sha256()
    h.update(
        f"{os.path.realpath(source.path)}|{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|"
        f"{source.kind}|{origin}|{source.size}|{which}".encode()
    )
    h.update(source.read(0, min(_SAMPLE, source.size)))
    tail = min(_SAMPLE, source.size)
    h.update(source.read(source.size - tail, tail))
    return h.hexdigest().encode()


def settled_file_key(path: str, what: str) -> bytes | None:
    """A key for something derived from the whole file ``path`` (its decompressed stream), made as
    :func:`source_key` makes one: identity, ``what``, first and last 64 KiB. None: do not cache."""
    if cache_dir() is None:
        return None
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode) or time.time_ns() - st.st_mtime_ns < _SETTLED_NS:
                return None
            h = hashlib.sha256(
                f"{os.path.realpath(path)}|{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{what}".encode()
            )
            h.update(f.read(_SAMPLE))
            f.seek(max(0, st.st_size - _SAMPLE))
            h.update(f.read(_SAMPLE))
    except OSError:
        return None
    return h.hexdigest().encode()


def _entry(key: bytes) -> Path | None:
    d = cache_dir()
    return None if d is None else d / (key[:40].decode() + ".idx")


def load(key: bytes | None, path: str) -> StreamIndex | None:
    """The cached index for ``key``, or None (missing, stale, foreign, unreadable: all the same)."""
    entry = _entry(key) if key else None
    if entry is None:
        return None
    try:
        fd = os.open(entry, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.getuid() or not _private(entry.parent) or st.st_size < _FOOTER.size:
            return None
        mm = mmap.mmap(fd, st.st_size, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    try:
        magic, key_off, key_len, meta_off, meta_len = _FOOTER.unpack_from(mm, len(mm) - _FOOTER.size)
        if (
            magic != _MAGIC
            or key_off + key_len != meta_off
            or meta_off + meta_len + _FOOTER.size != len(mm)
            or mm[key_off:meta_off] != key
        ):
            return None
        index, layout = pickle.loads(zlib.decompress(mm[meta_off : meta_off + meta_len]))
        view = memoryview(mm)
        for name, offset, count in layout:
            if offset + 8 * count > key_off:
                return None
            index.ram.blocks[name].pages = view[offset : offset + 8 * count].cast("q")
    except Exception:  # a damaged cache entry is a cache miss, never an error of the snapshot
        return None
    index.path = path
    with contextlib.suppress(OSError):
        os.utime(entry)  # recently used: evicted last
    return index


class PageFile:
    """The page arrays of an index being built, written straight into its future cache file.

    Called with a page count, it returns a writable ``'q'`` view of zero entries; the scan
    calls :meth:`release` as it moves on, which unmaps the filled pages (they stay in the page cache
    and come back on the next touch), so resident memory does not grow with the guest's RAM.
    The arrays are holes until written (the scan never stores a zero-page entry), so runs of
    zero pages take no disk and no memory. A store into a hole allocates the block then, and on a
    full disk the kernel could only answer with SIGBUS: an array is made here only while the disk
    has room for all of it written (8 bytes a page) and a margin, else the open goes on in memory.
    (Reserving the space with fallocate would avoid even a disk filled by another process during
    the scan, but ext4 then reports megabytes around each written page as data, and the holes are
    lost.)
    """

    def __init__(self, directory: Path, named: bool = True):
        if named:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not _private(directory):
                raise OSError(f"{directory} is writable by others")
            _remove_stale(directory)
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".idx")
        else:  # a file with no name: gone with the process, whatever happens to it
            fd, tmp = os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600), None
        self.tmp: str | None = tmp
        self.fd: int | None = fd
        self.end = 0
        self.maps: list[mmap.mmap] = []
        self.layout: dict[int, tuple[int, int]] = {}  # id(view) -> (offset, count)
        self.small: dict[int, memoryview] = {}  # id(view) -> arrays of under a page: in the tail
        self.reserved = 0  # bytes the arrays may still take when written: holes do not count as used

    @classmethod
    def scratch(cls) -> PageFile | None:
        """For an index that is not kept (cache off, a file just written): the arrays in an
        unnamed file in the temporary directory, so memory stays as low as with the cache; None
        where there is no such file (no O_TMPFILE): the scan goes on in memory."""
        try:
            return cls(Path(tempfile.gettempdir()), named=False)
        except (OSError, AttributeError):
            return None

    @classmethod
    def for_key(cls, key: bytes | None) -> PageFile | None:
        d = cache_dir() if key else None
        if d is None:
            return None
        try:
            return cls(d)
        except OSError:
            return None

    def __call__(self, npages: int):
        length = 8 * npages
        if length < mmap.PAGESIZE:  # ROMs and small regions: packed into the tail, not a page each
            view = zero_entries(npages)
            self.small[id(view)] = view
            return view
        offset = self.end
        self.end += length + -length % mmap.PAGESIZE
        try:
            fs = os.fstatvfs(self.fd)
            if fs.f_bavail * fs.f_frsize < self.reserved + length + _DISK_MARGIN:
                raise OSError("the index cache's disk is nearly full")
            self.reserved += length
            os.ftruncate(self.fd, self.end)
            mm = mmap.mmap(self.fd, length, offset=offset)
        except OSError:  # the cache's disk is full: this open goes on in memory, uncached
            return zero_entries(npages)
        self.maps.append(mm)
        view = memoryview(mm).cast("q")
        self.layout[id(view)] = (offset, npages)
        return view

    def release(self) -> None:
        for mm in self.maps:
            with contextlib.suppress(OSError, ValueError):
                mm.madvise(mmap.MADV_DONTNEED)

    def finish(self, key: bytes | None, index: StreamIndex) -> None:
        """Append the rest of the index and give the file its name; the arrays stay mapped.
        A scratch file (key None) only lets go of its descriptor: its maps keep it."""
        if self.tmp is None or key is None:
            self._close_fd()
            return
        try:
            layout, tail = [], bytearray()
            for name, b in index.ram.blocks.items():
                if id(b.pages) in self.small:
                    layout.append((name, self.end + len(tail), len(b.pages)))
                    tail += b.pages
                else:
                    layout.append((name, *self.layout[id(b.pages)]))
            meta = zlib.compress(_pickle_without_arrays(index, layout), 6)
            entry = _entry(key)
            os.pwrite(self.fd, tail, self.end)
            _write_tail(self.fd, self.end + len(tail), key, meta)
            os.replace(self.tmp, entry)
        except (OSError, KeyError, pickle.PicklingError, TypeError, ValueError):
            self.discard()
            return
        self._close_fd()
        _evict(entry.parent, _MAX_BYTES)

    def discard(self) -> None:
        if self.tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.tmp)
        self._close_fd()

    def _close_fd(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def page_arrays(key: bytes | None, size: int) -> PageFile | None:
    """Where an open builds its page arrays: the cache entry for ``key``; else, for a stream
    long enough to have many pages, a scratch file; else (None) ordinary memory."""
    pages = PageFile.for_key(key)
    if pages is None and size >= _MIN_STREAM:
        pages = PageFile.scratch()
    return pages


def _pickle_without_arrays(index: StreamIndex, layout) -> bytes:
    ram = index.ram
    saved = ram.checkpoint, ram.allocate, {name: b.pages for name, b in ram.blocks.items()}
    ram.checkpoint = ram.allocate = None  # the scan's callbacks: not data
    try:
        for b in ram.blocks.values():
            b.pages = array("q")
        return pickle.dumps((index, layout), protocol=pickle.HIGHEST_PROTOCOL)
    finally:
        ram.checkpoint, ram.allocate, arrays = saved
        for name, pages in arrays.items():
            ram.blocks[name].pages = pages


def _write_tail(fd: int, at: int, key: bytes, meta: bytes) -> None:
    footer = _FOOTER.pack(_MAGIC, at, len(key), at + len(key), len(meta))
    os.pwrite(fd, key + meta + footer, at)


def _evict(directory: Path, limit: int, pattern: str = "*.idx", keep: Path | None = None) -> None:
    """Remove the least recently used entries until the cache holds at most ``limit`` bytes
    (``keep``, the entry just made, stays)."""
    entries = []
    for p in directory.glob(pattern):
        if p == keep:
            continue
        with contextlib.suppress(OSError):
            st = p.stat()
            entries.append((st.st_mtime_ns, _disk_bytes(st), p))
    total = sum(size for _, size, _ in entries)
    if keep is not None:
        with contextlib.suppress(OSError):
            total += _disk_bytes(keep.stat())
    for _, size, p in sorted(entries):
        if total <= limit:
            break
        with contextlib.suppress(OSError):
            p.unlink()
            total -= size


def _disk_bytes(st: os.stat_result) -> int:
    """What an entry takes on disk: its holes (runs of zero pages) take nothing."""
    return min(st.st_size, st.st_blocks * 512)


def _remove_stale(directory: Path) -> None:
    now = time.time()
    for p in directory.glob(".tmp-*.idx"):
        with contextlib.suppress(OSError):
            if now - p.stat().st_mtime > _STALE_TMP_S:
                p.unlink()


def _private(directory: Path) -> bool:
    try:
        st = os.stat(directory)
    except OSError:
        return False
    return st.st_uid == os.getuid() and not st.st_mode & 0o022
