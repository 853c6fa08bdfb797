"""The real snapshots the fuzzer mutates, and where their structures are (file offsets).

Each base is read once with the project's own reader: its section headers, RAM page headers,
subsection markers, JSON trailer, container headers and tables become mutation targets, so the
mutations reach the parsers instead of dying at the magic.
"""

from __future__ import annotations

import gzip
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from vmstate_gdb.containers.libvirt import HEADER_SIZE
from vmstate_gdb.snapshot import Snapshot
from vmstate_gdb.stream import constants as C
from vmstate_gdb.stream.ram import PAGE_ZERO

#: base name -> (file in the test cache, qcow2 snapshot tag)
SOURCES = {
    "stream": ("small-pc-e1000.vmstate", None),
    "stream-novmdesc": ("small-pc-e1000.vmstate", None),  # the same, its VMDESCRIPTION cut off
    "arm64-novmdesc": ("arm64-virt-novmdesc.vmstate", None),
    "mapped-ram": ("small-pc-e1000-qemu10-mapped.vmstate", None),
    "qcow2": ("small-q35-e1000-savevm.qcow2", "snap0"),
    "libvirt": ("small-pc-e1000.vmstate", None),  # wrapped in a libvirt save header
    "libvirt-gzip": ("small-pc-e1000.vmstate", None),  # the same, gzip-compressed (save_image_format)
}
LIBVIRT_XML = (
    "<domain type='kvm'><name>fuzz</name><devices><interface type='user'>"
    "<mac address='52:54:00:12:34:56'/><model type='e1000'/></interface></devices></domain>"
)


@dataclass
class Field:
    """A length, count, offset or id: the place to tell a lie."""

    label: str
    offset: int
    width: int
    order: str = "big"


@dataclass
class Base:
    name: str
    suffix: str  # ".vmstate", ".qcow2", ".save"
    tag: str | None
    size: int
    extents: list[tuple[int, bytes]]  # the data runs of the file (a mapped-ram stream is sparse)
    boundaries: list[int] = field(default_factory=list)  # file offsets where a structure begins
    regions: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # label -> [start, end)
    fields: list[Field] = field(default_factory=list)
    page_data: list[tuple[int, int]] = field(default_factory=list)  # RAM page bytes only
    arch: str = "x86_64"

    def region(self, label: str, start: int, end: int) -> None:
        if 0 <= start < end <= self.size:
            self.regions.setdefault(label, []).append((start, end))

    def lie(self, label: str, offset: int, width: int, order: str = "big") -> None:
        if 0 <= offset and offset + width <= self.size:
            self.fields.append(Field(label, offset, width, order))

    def read(self, start: int, end: int) -> bytes:
        """File bytes [start, end): the extents, zeros in the holes."""
        out = bytearray(end - start)
        for off, blob in self.extents:
            lo, hi = max(start, off), min(end, off + len(blob))
            if lo < hi:
                out[lo - start : hi - start] = blob[lo - off : hi - off]
        return bytes(out)


def _data_runs(path: str) -> list[tuple[int, int]]:
    fd = os.open(path, os.O_RDONLY)
    try:
        size, pos, runs = os.fstat(fd).st_size, 0, []
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            runs.append((start, end))
            pos = end
        return runs
    finally:
        os.close(fd)


def _read_extents(path: str, limit: int | None = None) -> tuple[int, list[tuple[int, bytes]]]:
    size = os.path.getsize(path) if limit is None else limit
    out = []
    with open(path, "rb") as f:
        for start, end in _data_runs(path):
            end = min(end, size)
            if start < end:
                f.seek(start)
                out.append((start, f.read(end - start)))
    return size, out


def load_bases(cache: Path, names: list[str] | None = None) -> tuple[list[Base], list[str]]:
    """The bases whose snapshots are in ``cache``; and notes on those that are missing."""
    bases, notes = [], []
    for name in names or list(SOURCES):
        file, tag = SOURCES[name]
        path = cache / file
        if not path.exists():
            notes.append(f"{name}: {path} missing (run the test suite with VMSTATE_TEST_CACHE={cache})")
            continue
        bases.append(_make(name, str(path), tag))
    return bases, notes


def _make(name: str, path: str, tag: str | None) -> Base:
    suffix = {"qcow2": ".qcow2", "libvirt": ".save", "libvirt-gzip": ".save"}.get(name, ".vmstate")
    size, extents = _read_extents(path)
    if name == "stream-novmdesc":
        with Snapshot.open(path, cache=False) as snap:
            cut = snap.index.vmdesc_offset
        assert cut is not None
        size, extents = _read_extents(path, cut)
    prefix = b""
    if name.startswith("libvirt"):
        xml = LIBVIRT_XML.encode() + b"\0"
        data = xml + bytes(-(HEADER_SIZE + len(xml)) % 4096)
        compressed = int(name == "libvirt-gzip")
        prefix = b"LibvirtQemudSave" + struct.pack("<5I", 2, len(data), 1, compressed, 0) + bytes(56) + data
    if name == "libvirt-gzip":
        return _gzip_base(name, suffix, prefix, b"".join(blob for _, blob in extents))
    if name == "libvirt":
        extents = [(off + len(prefix), blob) for off, blob in extents]
        extents.insert(0, (0, prefix))
        size += len(prefix)
    base = Base(name, suffix, tag, size, extents)
    if prefix:
        _libvirt_targets(base, len(prefix))
    with Snapshot.open(path, snapshot=tag, cache=False) as snap:
        base.arch = snap.arch.name
        origin = len(prefix)

        def at(stream_offset: int) -> int:
            return origin + snap.source.file_offset(stream_offset)

        _stream_targets(base, snap, at, limit=size)
        if name == "qcow2":
            _qcow2_targets(base, snap)
    base.boundaries = sorted({b for b in base.boundaries if 0 < b < base.size})
    return base


def _stream_targets(base: Base, snap: Snapshot, at, limit: int) -> None:
    idx = snap.index
    base.boundaries += [at(0), at(idx.configuration_end), at(idx.eof_offset)]
    if idx.configuration_offset is not None:
        conf = at(idx.configuration_offset)
        base.region("configuration", conf, at(idx.configuration_end))
        base.lie("machine type length", conf + 1, 4)
    for sec in idx.sections:
        h = at(sec.header_offset)
        base.boundaries += [h, at(sec.body_offset), at(sec.body_end)]
        base.region("section header", h, at(sec.body_offset))
        base.lie("section id", h + 1, 4)
        if sec.kind in (C.QEMU_VM_SECTION_START, C.QEMU_VM_SECTION_FULL):
            base.lie("section name length", h + 5, 1)
            base.lie("instance id", h + 6 + len(sec.idstr), 4)
            base.lie("version id", h + 10 + len(sec.idstr), 4)
            base.region("device body", at(sec.body_offset), at(sec.body_end))
            _subsections(base, snap, sec, at)
        if sec.body_end + 5 <= idx.size:
            base.region("section footer", at(sec.body_end), at(sec.body_end) + 5)
        if sec.kind == C.QEMU_VM_SECTION_START and sec.idstr == C.RAM_SECTION_IDSTR:
            base.lie("RAM total size", at(sec.body_offset), 8)
    for block in idx.ram.blocks.values():
        e = at(block.entry_offset)
        base.lie(f"RAM block {block.name} used_length", e + 1 + len(block.name), 8)
        base.region("RAM block entry", e, e + 9 + len(block.name))
        if block.mapped_ram is not None:
            m = block.mapped_ram
            h = at(m.header_offset)
            base.region("mapped-ram header", h, h + 28)
            for label, off, width in (
                ("version", 0, 4),
                ("page size", 4, 8),
                ("bitmap", 12, 8),
                ("pages", 20, 8),
            ):
                base.lie(f"mapped-ram {label}", h + off, width)
            bitmap = at(m.bitmap_offset)
            base.region("mapped-ram bitmap", bitmap, bitmap + (block.page_count + 7) // 8)
        _page_headers(base, block, at)
    for eos in idx.ram.eos_offsets:
        base.region("RAM EOS word", at(eos), at(eos) + 8)
    if idx.vmdesc_offset is not None and at(idx.vmdesc_offset) < limit:
        v = at(idx.vmdesc_offset)
        base.boundaries += [v, v + 5]
        base.lie("JSON length", v + 1, 4)
        base.region("JSON", v + 5, limit)
        _json_numbers(base, snap, v + 5, limit)


def _subsections(base: Base, snap: Snapshot, sec, at) -> None:
    """Subsection markers in a device body: 0x05, name length, "device/subsection", version."""
    body = snap.read_stream(sec.body_offset, sec.body_size)
    for m in re.finditer(rb"\x05([\x03-\x60])", body):
        n = m[1][0]
        name = body[m.end() : m.end() + n]
        if len(name) == n and b"/" in name and all(32 < c < 127 for c in name):
            start = at(sec.body_offset + m.start())
            base.boundaries.append(start)
            base.region("subsection marker", start, start + 2 + n + 4)
            base.lie("subsection name length", start + 1, 1)
            base.lie("subsection version", start + 2 + n, 4)


def _page_headers(base: Base, block, at, most: int = 64) -> None:
    """The record word before sampled data pages (a CONTINUE record: 8 bytes, then the page)."""
    pages = block.pages
    step = max(1, block.page_count // 4096)
    found = 0
    for page in range(0, block.page_count, step):
        loc = pages[page]
        if loc <= PAGE_ZERO:
            continue
        data = at(loc)
        base.page_data.append((data, data + block.page_size))
        if block.mapped_ram is None:
            base.region("RAM page header", data - 8, data)
            base.lie("RAM page header", data - 8, 8)
            base.boundaries.append(data - 8)
        found += 1
        if found >= most:
            break


def _json_numbers(base: Base, snap: Snapshot, start: int, end: int, most: int = 200) -> None:
    text = base.read(start, end)
    for m in list(re.finditer(rb'"(size|num|version|instance_id|page_size)": (\d+)', text))[:most]:
        base.region("JSON number", start + m.start(2), start + m.end(2))


def _gzip_base(name: str, suffix: str, prefix: bytes, stream: bytes) -> Base:
    """A compressed image: the stream's structure is out of reach; its header, the gzip framing
    and the deflate data are not."""
    payload = gzip.compress(stream, mtime=0)
    base = Base(name, suffix, None, len(prefix) + len(payload), [(0, prefix + payload)])
    _libvirt_targets(base, len(prefix))
    p = len(prefix)
    base.region("gzip header", p, p + 10)
    base.region("deflate data", p + 10, base.size - 8)
    base.region("gzip trailer", base.size - 8, base.size)
    base.lie("gzip ISIZE", base.size - 4, 4, "little")
    base.boundaries = sorted({b for b in base.boundaries + [p + 10, base.size - 8] if 0 < b < base.size})
    return base


def _libvirt_targets(base: Base, header_len: int) -> None:
    base.region("libvirt header", 0, HEADER_SIZE)
    base.region("libvirt XML", HEADER_SIZE, header_len)
    base.boundaries += [16, HEADER_SIZE, header_len]
    for label, off in (("version", 16), ("data_len", 20), ("compressed", 28), ("cookieOffset", 32)):
        base.lie(f"libvirt {label}", off, 4, "little")


def _qcow2_targets(base: Base, snap: Snapshot) -> None:
    img = snap.source.image  # type: ignore[attr-defined]
    info = snap.source.snapshot  # type: ignore[attr-defined]
    base.region("qcow2 header", 0, img.header_length)
    for label, off, width in (
        ("version", 4, 4),
        ("cluster_bits", 20, 4),
        ("size", 24, 8),
        ("l1_size", 36, 4),
        ("l1_table_offset", 40, 8),
        ("refcount_table_offset", 48, 8),
        ("refcount_table_clusters", 56, 4),
        ("nb_snapshots", 60, 4),
        ("snapshots_offset", 64, 8),
        ("incompatible_features", 72, 8),
        ("refcount_order", 96, 4),
        ("header_length", 100, 4),
    ):
        base.lie(f"qcow2 {label}", off, width)
    cs = img.cluster_size
    base.region("qcow2 snapshot table", img.snapshots_offset, img.snapshots_offset + cs)
    base.boundaries += [img.snapshots_offset, info.l1_table_offset]
    e = info.entry_offset
    for label, off, width in (
        ("l1_table_offset", 0, 8),
        ("l1_size", 8, 4),
        ("id_str_size", 12, 2),
        ("name_size", 14, 2),
        ("vm_state_size", 32, 4),
        ("extra_data_size", 36, 4),
        ("vm_state_size_large", 40, 8),
        ("disk_size", 48, 8),
    ):
        base.lie(f"qcow2 snapshot {label}", e + off, width)
    l1 = info.l1_table_offset
    base.region("qcow2 L1", l1, l1 + 8 * info.l1_size)
    table = base.read(l1, l1 + 8 * info.l1_size)
    for i in range(info.l1_size):
        (entry,) = struct.unpack_from(">Q", table, 8 * i)
        base.lie("qcow2 L1 entry", l1 + 8 * i, 8)
        l2 = entry & 0x00FFFFFFFFFFFE00
        if l2:
            base.region("qcow2 L2", l2, l2 + cs)
            base.boundaries.append(l2)
            for j in range(0, cs // 8, 97):
                base.lie("qcow2 L2 entry", l2 + 8 * j, 8)
    base.region("qcow2 refcount table", img.refcount_table_offset, img.refcount_table_offset + cs)
