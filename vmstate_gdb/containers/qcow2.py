"""qcow2 (v2/v3) images: the vmstate of an internal snapshot made by ``savevm``, as a stream source.

QEMU stores the vmstate as if it were guest data at virtual offset ``vm_state_offset + pos``,
the first L1-entry boundary at or after the snapshot's disk size. We read it through the
*snapshot's* L1/L2 tables (after ``savevm`` the active L1 no longer maps these clusters).
Format facts: QEMU docs/interop/qcow2.rst and block/qcow2.h (read, not copied).
"""

from __future__ import annotations

import bisect
import datetime
import struct
from dataclasses import asdict, dataclass

from ..errors import FormatError, UnsupportedError
from ._mapped import MappedFile
from .plain import check_qevm

MAGIC = b"QFI\xfb"
V2_HEADER_SIZE = 72
V3_MIN_HEADER_SIZE = 104

INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4
INCOMPAT_KNOWN = (
    INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2
)

OFFSET_MASK = 0x00FFFFFFFFFFFE00  # L1 and L2 entries
REFT_OFFSET_MASK = 0xFFFFFFFFFFFFFE00
OFLAG_COMPRESSED = 1 << 62
OFLAG_ZERO = 1 << 0
SUBCLUSTERS = 32

MAX_SNAPSHOTS = 65536
MAX_EXTRA_DATA = 1024
SNAPSHOT_HEADER_SIZE = 40

_CRYPT = {1: "AES", 2: "LUKS"}


@dataclass(frozen=True)
class SnapshotInfo:
    """One entry of the snapshot table. ``icount`` is None when not recorded (or -1: replay off)."""

    index: int  # position in the table
    id: str
    name: str
    date_sec: int
    date_nsec: int
    vm_clock_nsec: int
    vm_state_size: int  # the 64-bit extra-data value when present
    disk_size: int
    icount: int | None
    l1_table_offset: int
    l1_size: int
    entry_offset: int  # file offset of this table entry
    extra_data: bytes = b""

    @property
    def date(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.date_sec + self.date_nsec / 1e9, datetime.UTC)

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("extra_data")
        d["date"] = self.date.isoformat()
        return d


@dataclass(frozen=True)
class Extent:
    """Stream bytes [stream_offset, stream_offset+length) are at file offset ``file_offset``.

    ``file_offset`` is None for clusters that are unallocated or marked zero (they read as zeros).
    """

    stream_offset: int
    file_offset: int | None
    length: int


class Qcow2Image:
    """Header, snapshot table and refcounts of a qcow2 file (read-only)."""

    def __init__(self, path: str, *, mapped: MappedFile | None = None):
        self.path = path
        self.file = mapped if mapped is not None else MappedFile(path)
        try:
            self._parse_header()
            self.snapshots = self._parse_snapshots()
        except BaseException:
            self.close()
            raise

    # -- header ---------------------------------------------------------------------------------

    def _parse_header(self) -> None:
        f, path = self.file, self.path
        magic = f.bytes(0, 4, "qcow2 magic")
        if magic != MAGIC:
            raise FormatError(f"not a qcow2 image: magic is {magic.hex(' ')}, expected 51 46 49 fb", path, 0)
        (version,) = f.unpack(">I", 4, "qcow2 version")
        if version not in (2, 3):
            raise UnsupportedError(f"qcow2 version {version} is not supported (2 and 3 are)", path, 4)
        f.check(0, V2_HEADER_SIZE, "qcow2 header (72 bytes)")
        (
            _backing_off,
            _backing_len,
            cluster_bits,
            size,
            crypt,
            l1_size,
            l1_off,
            rt_off,
            rt_clusters,
            nb_snap,
            snap_off,
        ) = f.unpack(">QIIQIIQQIIQ", 8, "qcow2 header")
        if not 9 <= cluster_bits <= 21:
            raise FormatError(f"qcow2 cluster_bits {cluster_bits} is out of range (9..21)", path, 20)
        self.version = version
        self.cluster_bits = cluster_bits
        self.cluster_size = 1 << cluster_bits
        self.disk_size = size
        self.l1_size = l1_size
        self.l1_table_offset = l1_off
        self.refcount_table_offset = rt_off
        self.refcount_table_clusters = rt_clusters
        self.nb_snapshots = nb_snap
        self.snapshots_offset = snap_off
        self.incompatible = self.compatible = self.autoclear = 0
        self.refcount_order = 4
        self.header_length = V2_HEADER_SIZE
        if version == 3:
            f.check(0, V3_MIN_HEADER_SIZE, "qcow2 v3 header (104 bytes)")
            (self.incompatible, self.compatible, self.autoclear, self.refcount_order, self.header_length) = (
                f.unpack(">QQQII", 72, "qcow2 v3 header")
            )
            if self.header_length < V3_MIN_HEADER_SIZE or self.header_length > self.cluster_size:
                raise FormatError(f"qcow2 header_length {self.header_length} is invalid", path, 100)
            if self.refcount_order > 6:
                raise FormatError(
                    f"qcow2 refcount_order {self.refcount_order} is out of range (0..6)", path, 96
                )
        if crypt:
            raise UnsupportedError(
                f"qcow2 image is encrypted ({_CRYPT.get(crypt, f'method {crypt}')}); its vmstate is "
                "encrypted too and cannot be read (qemu-img convert can decrypt the disk, but drops "
                "internal snapshots)",
                path,
                32,
            )
        inc = self.incompatible
        if inc & INCOMPAT_DATA_FILE:
            raise UnsupportedError(
                "qcow2 image uses an external data file (incompatible feature bit 2); such "
                "images cannot hold internal snapshots",
                path,
                72,
            )
        if inc & INCOMPAT_CORRUPT:
            raise FormatError(
                "qcow2 image is marked corrupt (incompatible feature bit 1); repair it with "
                "'qemu-img check -r all' on a copy before reading snapshots",
                path,
                72,
            )
        unknown = inc & ~INCOMPAT_KNOWN
        if unknown:
            bits = ", ".join(str(b) for b in range(64) if unknown >> b & 1)
            raise UnsupportedError(f"qcow2 image has unknown incompatible feature bits {bits}", path, 72)
        self.dirty = bool(inc & INCOMPAT_DIRTY)
        self.extended_l2 = bool(inc & INCOMPAT_EXTL2)
        self.l2_entry_size = 16 if self.extended_l2 else 8
        self.l2_bits = cluster_bits - (4 if self.extended_l2 else 3)
        self.refcount_bits = 1 << self.refcount_order

    # -- snapshot table -------------------------------------------------------------------------

    def _parse_snapshots(self) -> list[SnapshotInfo]:
        f, path = self.file, self.path
        n = self.nb_snapshots
        if n == 0:
            return []
        if n > MAX_SNAPSHOTS:
            raise FormatError(f"qcow2 nb_snapshots {n} exceeds QEMU's limit {MAX_SNAPSHOTS}", path, 60)
        off = self.snapshots_offset
        if off % self.cluster_size:
            raise FormatError(f"qcow2 snapshots_offset {off:#x} is not cluster aligned", path, 64)
        f.check(off, n * SNAPSHOT_HEADER_SIZE, f"qcow2 snapshot table ({n} entries)")
        out = []
        for i in range(n):
            entry = off
            (l1_off, l1_size, id_len, name_len, dsec, dnsec, clock, vm32, extra_len) = f.unpack(
                ">QIHHIIQII", off, f"qcow2 snapshot entry {i}"
            )
            if extra_len > MAX_EXTRA_DATA:
                raise FormatError(
                    f"qcow2 snapshot entry {i}: extra_data_size {extra_len} is too large", path, entry + 36
                )
            off += SNAPSHOT_HEADER_SIZE
            extra = f.bytes(off, extra_len, f"qcow2 snapshot entry {i} extra data")
            off += extra_len
            sid = f.bytes(off, id_len, f"qcow2 snapshot entry {i} id")
            off += id_len
            name = f.bytes(off, name_len, f"qcow2 snapshot entry {i} name")
            off += name_len
            off = (off + 7) & ~7
            vm_size = vm32
            if extra_len >= 8:
                (vm_size,) = struct.unpack_from(">Q", extra, 0)
            disk_size = self.disk_size
            if extra_len >= 16:
                (disk_size,) = struct.unpack_from(">Q", extra, 8)
            icount = None
            if extra_len >= 24:
                (ic,) = struct.unpack_from(">q", extra, 16)
                icount = None if ic < 0 else ic
            out.append(
                SnapshotInfo(
                    i,
                    sid.decode("utf-8", "replace"),
                    name.decode("utf-8", "replace"),
                    dsec,
                    dnsec,
                    clock,
                    vm_size,
                    disk_size,
                    icount,
                    l1_off,
                    l1_size,
                    entry,
                    extra,
                )
            )
        return out

    def find_snapshot(self, which: str | None = None) -> SnapshotInfo:
        """By id first, then by name (QEMU's order); default: newest snapshot with VM state."""
        snaps = self.snapshots
        with_vm = [s for s in snaps if s.vm_state_size > 0]
        if which is None:
            if not snaps:
                raise FormatError(
                    "qcow2 image has no internal snapshots (make one with HMP 'savevm TAG')", self.path, 60
                )
            if not with_vm:
                raise FormatError(
                    "qcow2 image has only disk-only snapshots (vm_state_size 0: "
                    f"{', '.join(repr(s.name) for s in snaps)}); none holds VM state",
                    self.path,
                    snaps[0].entry_offset + 32,
                )
            return max(with_vm, key=lambda s: (s.date_sec, s.date_nsec, s.index))
        sel = [s for s in snaps if s.id == which] or [s for s in snaps if s.name == which]
        if not sel:
            have = ", ".join(f"{s.name!r} (id {s.id})" for s in snaps) or "none"
            raise FormatError(
                f"qcow2 image has no snapshot with id or name {which!r}; snapshots: {have}",
                self.path,
                self.snapshots_offset,
            )
        s = sel[0]
        if s.vm_state_size == 0:
            others = ", ".join(repr(x.name) for x in with_vm) or "none"
            raise FormatError(
                f"snapshot {s.name!r} (id {s.id}) is disk-only (vm_state_size 0) and holds no VM "
                f"state; snapshots with VM state: {others}",
                self.path,
                s.entry_offset + 32,
            )
        return s

    # -- address translation --------------------------------------------------------------------

    def vm_state_offset(self, snap: SnapshotInfo) -> int:
        shift = self.cluster_bits + self.l2_bits
        return ((snap.disk_size + (1 << shift) - 1) >> shift) << shift

    def extents(self, snap: SnapshotInfo) -> list[Extent]:
        """Map the snapshot's vmstate through its own L1/L2 tables, coalescing contiguous runs."""
        f, path = self.file, self.path
        size = snap.vm_state_size
        if size > f.size:
            # QEMU writes every vmstate cluster, so the vmstate cannot be larger than the file.
            raise FormatError(
                f"snapshot {snap.name!r}: vm_state_size {size} is larger than the whole file "
                f"({f.size} bytes); the snapshot table is corrupt",
                path,
                snap.entry_offset + 32,
            )
        l1_off = snap.l1_table_offset
        if l1_off % self.cluster_size:
            raise FormatError(
                f"snapshot {snap.name!r}: L1 table offset {l1_off:#x} is not cluster aligned",
                path,
                snap.entry_offset,
            )
        f.check(l1_off, snap.l1_size * 8, f"snapshot {snap.name!r} L1 table ({snap.l1_size} entries)")
        cs = self.cluster_size
        l2_mask = (1 << self.l2_bits) - 1
        base = self.vm_state_offset(snap)
        sub = cs // SUBCLUSTERS
        runs: list[list] = []  # [stream_off, file_off|None, length]

        def add(soff: int, foff: int | None, length: int) -> None:
            if runs:
                last = runs[-1]
                if last[0] + last[2] == soff and (
                    (foff is None and last[1] is None)
                    or (foff is not None and last[1] is not None and last[1] + last[2] == foff)
                ):
                    last[2] += length
                    return
            runs.append([soff, foff, length])

        pos = 0
        while pos < size:
            vpos = base + pos
            in_cluster = vpos & (cs - 1)
            chunk = min(cs - in_cluster, size - pos)
            l1_idx = vpos >> (self.cluster_bits + self.l2_bits)
            l1e = 0
            if l1_idx < snap.l1_size:
                (l1e,) = f.unpack(">Q", l1_off + 8 * l1_idx, "L1 entry")
            l2_off = l1e & OFFSET_MASK
            if l2_off == 0:
                add(pos, None, chunk)
                pos += chunk
                continue
            if l2_off % cs:
                raise FormatError(
                    f"snapshot {snap.name!r}: L2 table offset {l2_off:#x} is not cluster aligned",
                    path,
                    l1_off + 8 * l1_idx,
                )
            f.check(l2_off, cs, f"L2 table (from L1 entry {l1_idx} at {l1_off + 8 * l1_idx:#x})")
            ent_off = l2_off + ((vpos >> self.cluster_bits) & l2_mask) * self.l2_entry_size
            (l2e,) = f.unpack(">Q", ent_off, "L2 entry")
            if l2e & OFLAG_COMPRESSED:
                raise UnsupportedError(
                    f"snapshot {snap.name!r}: vmstate cluster at stream offset {pos:#x} is "
                    "compressed; compressed vmstate clusters are not supported",
                    path,
                    ent_off,
                )
            host = l2e & OFFSET_MASK
            if host % cs:
                raise FormatError(
                    f"snapshot {snap.name!r}: data cluster offset {host:#x} is not cluster aligned",
                    path,
                    ent_off,
                )
            if host:
                f.check(host, cs, f"data cluster (from L2 entry at {ent_off:#x})")
            if not self.extended_l2:
                if host == 0 or (l2e & OFLAG_ZERO and self.version >= 3):
                    add(pos, None, chunk)
                else:
                    add(pos, host + in_cluster, chunk)
                pos += chunk
                continue
            (bitmap,) = f.unpack(">Q", ent_off + 8, "extended L2 bitmap")
            end_in = in_cluster + chunk
            s = in_cluster
            while s < end_in:
                k = s // sub
                e = min((k + 1) * sub, end_in)
                if bitmap >> (32 + k) & 1:
                    add(pos + s - in_cluster, None, e - s)
                elif bitmap >> k & 1:
                    if host == 0:
                        raise FormatError(
                            f"snapshot {snap.name!r}: subcluster {k} is marked allocated but the "
                            "cluster has no host offset",
                            path,
                            ent_off,
                        )
                    add(pos + s - in_cluster, host + s, e - s)
                else:
                    add(pos + s - in_cluster, None, e - s)
                s = e
            pos += chunk
        return [Extent(a, b, c) for a, b, c in runs]

    # -- refcounts ------------------------------------------------------------------------------

    def refcount(self, host_offset: int) -> int:
        """Refcount of the host cluster holding file byte ``host_offset`` (1 = safe to patch in place)."""
        f, path = self.file, self.path
        if self.dirty:
            raise UnsupportedError(
                "qcow2 image is marked dirty (incompatible feature bit 0): its refcounts "
                "may be stale; open and close it once in QEMU or run 'qemu-img check -r all'",
                path,
                72,
            )
        if not 0 <= host_offset < f.size:
            raise FormatError(f"host offset {host_offset:#x} is outside the file", path, max(0, host_offset))
        cluster = host_offset >> self.cluster_bits
        block_bits = self.cluster_bits + 3 - self.refcount_order  # entries per refcount block, log2
        t_idx = cluster >> block_bits
        b_idx = cluster & ((1 << block_bits) - 1)
        if t_idx >= self.refcount_table_clusters * self.cluster_size // 8:
            return 0
        t_off = self.refcount_table_offset + 8 * t_idx
        (rte,) = f.unpack(">Q", t_off, "refcount table entry")
        blk = rte & REFT_OFFSET_MASK
        if blk == 0:
            return 0
        if blk % self.cluster_size:
            raise FormatError(f"refcount block offset {blk:#x} is not cluster aligned", path, t_off)
        f.check(blk, self.cluster_size, f"refcount block (from refcount table entry at {t_off:#x})")
        bits = self.refcount_bits
        if bits >= 8:
            n = bits // 8
            return int.from_bytes(f.bytes(blk + b_idx * n, n, "refcount"), "big")
        (byte,) = f.unpack("B", blk + (b_idx * bits) // 8, "refcount")
        return (byte >> ((b_idx * bits) % 8)) & ((1 << bits) - 1)

    def describe(self) -> dict:
        return {
            "kind": "qcow2",
            "path": self.path,
            "qcow2_version": self.version,
            "cluster_size": self.cluster_size,
            "disk_size": self.disk_size,
            "extended_l2": self.extended_l2,
            "dirty": self.dirty,
            "refcount_bits": self.refcount_bits,
            "snapshots": [s.as_dict() for s in self.snapshots],
        }

    def close(self) -> None:
        self.file.close()


class Qcow2VmState:
    """The vmstate of one internal snapshot, as a :class:`StreamSource`."""

    kind = "qcow2"

    def __init__(self, path: str, snapshot: str | None = None, *, mapped: MappedFile | None = None):
        self.path = path
        self.image = Qcow2Image(path, mapped=mapped)
        try:
            self.snapshot = self.image.find_snapshot(snapshot)
            self.size = self.snapshot.vm_state_size
            self.vm_state_offset = self.image.vm_state_offset(self.snapshot)
            self.extents = self.image.extents(self.snapshot)
            self._starts = [e.stream_offset for e in self.extents]
            head = self.read(0, min(8, self.size))
            first = self.extents[0].file_offset if self.extents else None
            check_qevm(
                head,
                path,
                first if first is not None else self.snapshot.entry_offset,
                f"vmstate of snapshot {self.snapshot.name!r}",
            )
        except BaseException:
            self.image.close()
            raise

    def _find(self, offset: int) -> int:
        return bisect.bisect_right(self._starts, offset) - 1

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise FormatError(
                f"read of stream bytes {offset:#x}..{offset + length:#x} goes past the end of the vmstate of "
                f"snapshot {self.snapshot.name!r} ({self.size:#x} bytes)",
                self.path,
                self.snapshot.entry_offset + 32,
            )
        out = bytearray()
        i = self._find(offset) if length else len(self.extents)
        pos, end = offset, offset + length
        while pos < end:
            e = self.extents[i]
            take = min(end, e.stream_offset + e.length) - pos
            if e.file_offset is None:
                out += bytes(take)
            else:
                out += self.image.file.bytes(e.file_offset + pos - e.stream_offset, take, "vmstate read")
            pos += take
            i += 1
        return bytes(out)

    def view(self) -> memoryview | None:
        if len(self.extents) == 1 and self.extents[0].file_offset is not None:
            return self.image.file.view(self.extents[0].file_offset, self.size)
        return None

    def checked_view(self):
        if len(self.extents) == 1 and self.extents[0].file_offset is not None:
            return self.image.file.checked_view(self.extents[0].file_offset, self.size)
        return None

    def open_file(self):
        return self.image.file.open_file()

    def check_unchanged(self) -> None:
        self.image.file.check_unchanged(self.snapshot.entry_offset)

    def file_offset(self, offset: int) -> int:
        if not 0 <= offset < self.size:
            raise FormatError(
                f"stream offset {offset:#x} is outside the vmstate of snapshot "
                f"{self.snapshot.name!r} ({self.size:#x} bytes)",
                self.path,
                self.snapshot.entry_offset + 32,
            )
        e = self.extents[self._find(offset)]
        if e.file_offset is None:
            raise UnsupportedError(
                f"stream offset {offset:#x} of snapshot {self.snapshot.name!r} is in an "
                "unallocated/zero cluster: it has no byte in the file",
                self.path,
                self.snapshot.l1_table_offset,
            )
        return e.file_offset + offset - e.stream_offset

    def release(self, offset: int, length: int) -> None:
        if len(self.extents) == 1 and self.extents[0].file_offset is not None:
            self.image.file.release(self.extents[0].file_offset + offset, length)

    def no_writers(self):
        """Context for the index scan: writers and truncations wait (see MappedFile.no_writers)."""
        return self.image.file.no_writers()

    def refcount(self, offset: int) -> int:
        """Refcount of the host cluster behind stream byte ``offset``."""
        return self.image.refcount(self.file_offset(offset))

    def describe(self) -> dict:
        d = self.image.describe()
        d.update(
            snapshot=self.snapshot.as_dict(),
            size=self.size,
            vm_state_offset=self.vm_state_offset,
            extents=len(self.extents),
            contiguous=len(self.extents) == 1 and self.extents[0].file_offset is not None,
        )
        return d

    def close(self) -> None:
        self.image.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
