"""The `ram` section: block list, and a per-page index of where each page's last copy lives.

The index is the whole point of opening a multi-GB snapshot quickly: one signed 64-bit entry per
guest page (PAGE_ZERO, PAGE_ABSENT, or the stream offset of the page bytes), never the bytes.
Arrays start as zeros that cost nothing (holes of the cache file, untouched anonymous pages) and the
scan never stores a PAGE_ZERO there: the index of a guest that left most of its RAM untouched takes
memory and disk only for its data pages. Pages above a block's ``highest`` have had no record yet,
so their zero entries mean "absent": gaps are filled with PAGE_ABSENT as the scan passes them, the
rest when it ends (:meth:`RamBlock.finish`).
"""

from __future__ import annotations

import mmap
import struct
import sys
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import UnsupportedError
from . import constants as C
from .cursor import Cursor

PAGE_ZERO = 0  # the last record for the page was a ZERO record (or a clear mapped-ram bit)
PAGE_ABSENT = -1  # no record at all: QEMU's loader leaves such a page as it was
_ABSENT_CHUNK = 1 << 17  # entries filled at a time (1 MiB)

_BE64 = struct.Struct(">Q")


@dataclass
class MappedRamHeader:
    """Per-block header of the mapped-ram layout (QEMU >= 9.0, migration/ram.c)."""

    header_offset: int  # stream offset of the 28-byte header
    page_size: int
    bitmap_offset: int  # stream offsets (converted from QEMU's channel offsets)
    pages_offset: int


@dataclass
class RamBlock:
    name: str
    used_length: int
    page_size: int
    entry_offset: int  # stream offset of the block's entry in the setup list
    pages: Any = field(repr=False)  # 'q' array or memoryview per page: data offset, PAGE_ZERO, PAGE_ABSENT
    mapped_ram: MappedRamHeader | None = None
    mr_addr: int | None = None  # only with x-ignore-shared
    # kept by the scan (account()), so `vmstate info` does not walk millions of entries
    data_pages: int = 0
    zero_pages: int = 0
    highest: int = -1  # the highest page written so far: entries above it are still PAGE_ABSENT

    @property
    def page_count(self) -> int:
        return self.used_length // self.page_size

    def page_location(self, page: int) -> int:
        return self.pages[page]

    def counts(self) -> dict[str, int]:
        absent = self.page_count - self.data_pages - self.zero_pages
        return {"pages": self.page_count, "data": self.data_pages, "zero": self.zero_pages, "absent": absent}

    def account(self, first: int, count: int, data: bool) -> None:
        """Pages first..first+count-1 now hold data (or zero): keep the counts exact, looking at
        the old entries only where a later pass of QEMU's sends a page again; a gap the records
        jumped over becomes PAGE_ABSENT."""
        seen = min(count, self.highest + 1 - first)
        if seen <= 0:
            old_data = old_zero = 0
            if first > self.highest + 1:
                self.fill_absent(self.highest + 1, first)
        else:
            old = array("q", self.pages[first : first + seen])
            old_zero = old.count(PAGE_ZERO)
            old_data = seen - old_zero - old.count(PAGE_ABSENT)
        self.highest = max(self.highest, first + count - 1)
        if data:
            self.data_pages += count - old_data
            self.zero_pages -= old_zero
        else:
            self.zero_pages += count - old_zero
            self.data_pages -= old_data

    def fill_absent(self, start: int, end: int) -> None:
        chunk = array("q", [PAGE_ABSENT]) * min(max(end - start, 0), _ABSENT_CHUNK)
        for at in range(start, end, _ABSENT_CHUNK):  # a block never sent can be 64 GiB of RAM
            n = min(_ABSENT_CHUNK, end - at)
            self.pages[at : at + n] = chunk if n == len(chunk) else chunk[:n]

    def finish(self) -> None:
        """The scan is over: pages no record named are PAGE_ABSENT."""
        self.fill_absent(self.highest + 1, self.page_count)
        self.highest = self.page_count - 1


def zero_entries(npages: int):
    """A writable 'q' view of npages zero entries that takes memory only where it is written."""
    if not npages:
        return memoryview(array("q"))
    return memoryview(mmap.mmap(-1, 8 * npages)).cast("q")


@dataclass
class RamState:
    """Everything parsed from the RAM section, across START/PART/END chunks."""

    page_size: int
    blocks: dict[str, RamBlock] = field(default_factory=dict)
    mapped_ram: bool = False
    ignore_shared: bool = False
    total_bytes: int = 0
    records: int = 0  # page records seen (repeats included)
    last_block: RamBlock | None = None  # QEMU keeps "current block" across sections
    eos_offsets: list[int] = field(default_factory=list)  # stream offset of each chunk's EOS word
    checkpoint: Callable[[int], None] | None = None  # called every RELEASE_EVERY bytes of RAM records
    #: where page arrays live: called with a page count, returns a writable 'q' buffer of zero
    #: entries (index_cache.PageFile: in the cache file); None: anonymous memory (zero_entries)
    allocate: Callable[[int], Any] | None = None


def parse_ram_setup(cur: Cursor, state: RamState, channel_base: int) -> None:
    """START body: MEM_SIZE word and the block list (ram_save_setup)."""
    word = cur.be64("RAM setup word")
    flags = word & (state.page_size - 1)
    if flags != C.RAM_SAVE_FLAG_MEM_SIZE:
        raise cur.fail(f"RAM section starts with flags {flags:#x}, expected MEM_SIZE", cur.pos - 8)
    total = word & ~(state.page_size - 1)
    # Every page takes at least a 9-byte ZERO record (or its reserved place, with mapped-ram), so a
    # size the file cannot hold is a corruption; refusing it here keeps the index from growing
    # to the claimed size.
    most = cur.size if state.mapped_ram else cur.size // _MIN_RECORD * state.page_size
    if total > most:
        raise cur.fail(
            f"RAM section claims {total:#x} bytes of RAM, more than a stream of {cur.size:#x} bytes can hold",
            cur.pos - 8,
        )
    state.total_bytes = total
    remaining = total
    while remaining > 0:
        entry = cur.pos
        name = cur.counted_string("RAM block name")
        used = cur.be64(f"used_length of RAM block {name}")
        if used % state.page_size or used > remaining:
            raise cur.fail(f"RAM block {name!r} has a bad used_length {used:#x}", entry)
        npages = used // state.page_size
        pages = state.allocate(npages) if state.allocate else zero_entries(npages)
        block = RamBlock(name, used, state.page_size, entry, pages)
        if state.ignore_shared:
            block.mr_addr = cur.be64("mr_addr")
        if state.mapped_ram:
            _parse_mapped_ram_block(cur, block, channel_base)
        if name in state.blocks:
            raise cur.fail(f"RAM block {name!r} listed twice", entry)
        state.blocks[name] = block
        remaining -= used
    _parse_ram_records(cur, state)


def _parse_mapped_ram_block(cur: Cursor, block: RamBlock, channel_base: int) -> None:
    header_offset = cur.pos
    version = cur.be32("mapped-ram header version")
    if version != C.MAPPED_RAM_HDR_VERSION:
        raise cur.fail(f"mapped-ram header version {version} is not supported", header_offset)
    page_size = cur.be64("mapped-ram page size")
    bitmap_offset = cur.be64("mapped-ram bitmap offset") - channel_base
    pages_offset = cur.be64("mapped-ram pages offset") - channel_base
    if page_size != block.page_size:
        raise cur.fail(f"mapped-ram page size {page_size} differs from the stream's {block.page_size}")
    npages = block.page_count
    bitmap_size = (npages + 63) // 64 * 8
    if (
        bitmap_offset < 0
        or bitmap_offset + bitmap_size > cur.size
        or pages_offset + block.used_length > cur.size
    ):
        raise cur.fail(f"mapped-ram block {block.name!r} points past the end of the stream", header_offset)
    block.mapped_ram = MappedRamHeader(header_offset, page_size, bitmap_offset, pages_offset)
    bitmap = bytes(cur.buf[bitmap_offset : bitmap_offset + bitmap_size])
    pages = block.pages
    ps = block.page_size
    # Bit i of the little-endian unsigned longs is bit i % 8 of byte i // 8. Whole bytes of set
    # bits (the common case) are filled with slice assignments; clear bits are zero pages, which
    # the zeroed array already says.
    for byte_index, byte in enumerate(bitmap):
        first = byte_index * 8
        if first >= npages:
            break
        n = min(8, npages - first)
        if byte == 0xFF:
            pages[first : first + n] = array(
                "q", range(pages_offset + first * ps, pages_offset + (first + n) * ps, ps)
            )
        elif byte:
            for bit in range(n):
                if byte >> bit & 1:
                    pages[first + bit] = pages_offset + (first + bit) * ps
    set_bits = int.from_bytes(bitmap, "little") & ((1 << npages) - 1)
    block.data_pages = set_bits.bit_count()
    block.zero_pages = npages - block.data_pages
    block.highest = npages - 1
    # The writer seeks past the reserved page area; the next block entry (or EOS) follows there.
    cur.pos = pages_offset + block.used_length


def parse_ram_chunk(cur: Cursor, state: RamState) -> None:
    """PART/END body: page records up to EOS."""
    _parse_ram_records(cur, state)


_MIN_RECORD = 9  # a ZERO record with CONTINUE: be64 word + fill byte
_RUN_MIN = 4  # consecutive records of one kind before trying the bulk path
_RUN_MAX_PAGES = 1 << 10  # page records checked in one bulk step (4 MiB: bounded resident set)
_RUN_MAX_ZEROS = 1 << 12  # zero records (9 bytes each): as many as the header lanes allow
RELEASE_EVERY = 8 << 20  # bytes between progress/release callbacks: bounds the mapped pages
_NATIVE_LITTLE = sys.byteorder == "little"


def _parse_ram_records(cur: Cursor, state: RamState) -> None:
    """Records up to EOS. Runs of consecutive PAGE or ZERO records of one block (what QEMU writes
    for a stopped VM) are checked and indexed in bulk with C-level slice comparisons; everything
    else, and every irregularity, goes through the record-by-record path."""
    buf = cur.buf
    size = cur.size
    ps = state.page_size
    page_shift = ps.bit_length() - 1
    flag_mask = ps - 1
    blocks = state.blocks
    block = state.last_block
    pages = block.pages if block else None
    npages = block.page_count if block else 0
    pos = cur.pos
    fast = isinstance(buf, memoryview)
    unpack = _BE64.unpack_from
    records = 0
    run_kind = -1
    run_page = -2
    run_len = 0
    next_checkpoint = pos + RELEASE_EVERY
    try:
        while True:
            if pos >= next_checkpoint:
                next_checkpoint = pos + RELEASE_EVERY
                if state.checkpoint is not None:
                    state.checkpoint(pos)
            if pos + 8 > size:
                cur.pos = pos
                cur.need(8, "RAM record header")
            (word,) = unpack(buf, pos) if fast else _BE64.unpack(buf[pos : pos + 8])
            record = pos
            pos += 8
            flags = word & flag_mask
            if flags & C.RAM_SAVE_FLAG_EOS:
                if flags != C.RAM_SAVE_FLAG_EOS:
                    raise cur.fail(f"RAM record with EOS and other flags {flags:#x}", record)
                state.eos_offsets.append(record)
                break
            kind = flags & ~C.RAM_SAVE_FLAG_CONTINUE
            if kind == C.RAM_SAVE_FLAG_MULTIFD_FLUSH:
                continue
            if kind not in (C.RAM_SAVE_FLAG_PAGE, C.RAM_SAVE_FLAG_ZERO):
                _refuse_ram_flags(cur, kind, record)
            if state.mapped_ram:
                raise cur.fail("page record in a mapped-ram stream", record)
            if flags & C.RAM_SAVE_FLAG_CONTINUE:
                if block is None:
                    raise cur.fail("RAM record continues a block, but no block was named before", record)
            else:
                cur.pos = pos
                name = cur.counted_string("RAM block name")
                pos = cur.pos
                block = blocks.get(name)
                if block is None:
                    raise cur.fail(f"RAM record names unknown block {name!r}", record)
                pages = block.pages
                npages = block.page_count
                run_len = 0
            page = word >> page_shift
            if page >= npages:
                raise cur.fail(
                    f"RAM record offset {page << page_shift:#x} is outside block {block.name!r} "
                    f"({block.used_length:#x} bytes)",
                    record,
                )
            if kind == C.RAM_SAVE_FLAG_PAGE:
                if pos + ps > size:
                    cur.pos = pos
                    cur.need(ps, "RAM page data")
                if page == block.highest + 1:
                    block.highest = page
                    block.data_pages += 1
                else:
                    block.account(page, 1, True)
                pages[page] = pos
                pos += ps
            else:
                if pos >= size:
                    cur.pos = pos
                    cur.need(1, "zero-page fill byte")
                fill = buf[pos]
                if fill:
                    raise UnsupportedError(
                        f"zero page record with fill byte {fill:#x} (pre-2017 QEMU) is not supported",
                        cur.path,
                        pos + cur.origin,
                    )
                pos += 1
                if page == block.highest + 1:  # the entry is zero already: a store would allocate it
                    block.highest = page
                    block.zero_pages += 1
                else:
                    again = page <= block.highest
                    block.account(page, 1, False)
                    if again:
                        pages[page] = PAGE_ZERO
            records += 1
            if kind == run_kind and page == run_page + 1:
                run_len += 1
            else:
                run_kind, run_len = kind, 1
            run_page = page
            if fast and run_len >= _RUN_MIN:
                n = _bulk_run(buf, size, pos, kind, block, page + 1, ps)
                if n:
                    pos += n * (8 + (ps if kind == C.RAM_SAVE_FLAG_PAGE else 1))
                    records += n
                    run_page = page + n
                else:
                    run_len = -8  # the run broke: stay on the slow path for a while
    finally:
        state.records += records
        state.last_block = block
    cur.pos = pos


# Byte lanes 5 and 6 of consecutive 4 KiB page header words repeat with short periods.
_LANE5 = bytes((i >> 4) & 0xFF for i in range(2 * 4096))
_LANE6 = bytes((i & 0xF) << 4 for i in range(4096 + 16))


def _header_lanes(p0: int, n: int, flags: int, ps: int) -> list[bytes]:
    """Byte j of the big-endian header words ``(p0+i)*ps | flags``, i < n, as one bytes per j.

    Built from a few slices instead of n Python integers: the run check costs nanoseconds a page.
    """
    if ps != 4096 or n > 4096 or flags >= 0x100:
        words = array("Q", range(p0 * ps | flags, (p0 + n) * ps | flags, ps))
        if _NATIVE_LITTLE:
            words.byteswap()
        raw = words.tobytes()
        return [raw[j::8] for j in range(8)]
    lanes: list[bytes] = [b""] * 8
    lanes[7] = bytes([flags]) * n
    lanes[6] = _LANE6[p0 % 16 : p0 % 16 + n]
    lanes[5] = _LANE5[p0 % 4096 : p0 % 4096 + n]
    for j in range(5):  # bits 24.. of the word: page number bits 12.., at most one carry in n <= 4096
        shift = 8 * (7 - j) - 12
        high = p0 >> shift
        k = min(n, ((high + 1) << shift) - p0)
        lanes[j] = bytes([high & 0xFF]) * k + bytes([(high + 1) & 0xFF]) * (n - k)
    return lanes


def _bulk_run(buf: memoryview, size: int, pos: int, kind: int, block: RamBlock, first: int, ps: int) -> int:
    """Index the longest run of CONTINUE records of ``kind`` for pages first, first+1, ... that
    starts at ``pos``; returns how many records it covered (0: none). Windows grow geometrically,
    so the work is proportional to the run's length, not to the block's."""
    is_page = kind == C.RAM_SAVE_FLAG_PAGE
    stride = 8 + (ps if is_page else 1)
    limit = min(block.page_count - first, (size - pos) // stride)
    flags = kind | C.RAM_SAVE_FLAG_CONTINUE
    most = _RUN_MAX_PAGES if is_page else _RUN_MAX_ZEROS

    def valid(a: int, b: int) -> bool:
        """Records a..b-1 of the run are exactly what QEMU would write for those pages."""
        lanes = _header_lanes(first + a, b - a, flags, ps)
        start = pos + a * stride
        end = pos + b * stride
        if is_page:  # 8 header bytes in every 4 KiB: strided views, no copy of the data
            raw, at = buf, start
        else:  # 9-byte records: one copy, then strided slices of bytes (several times faster)
            raw, at, end = bytes(buf[start:end]), 0, end - start
        for j in (7, 6, 5, 4, 3, 2, 1, 0):  # the flag byte first: a run usually breaks there
            if raw[at + j : end : stride] != lanes[j]:
                return False
        return is_page or raw[8::stride] == bytes(b - a)

    done = 0
    window = 16
    while done < limit:
        upto = min(limit, done + window)
        if valid(done, upto):
            done = upto
            window = min(window * 4, most)
            continue
        lo, hi = done, upto  # records < lo are good; the run breaks before hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if valid(lo, mid):
                lo = mid
            else:
                hi = mid
        done = lo
        break
    if done:
        seen = max(0, min(done, block.highest + 1 - first))  # entries to overwrite with zeros
        block.account(first, done, is_page)
        if is_page:
            block.pages[first : first + done] = array("q", range(pos + 8, pos + 8 + done * stride, stride))
        elif seen:
            block.pages[first : first + seen] = array("q", bytes(8 * seen))
    return done


def _refuse_ram_flags(cur: Cursor, kind: int, offset: int) -> None:
    names = {
        C.RAM_SAVE_FLAG_XBZRLE: "XBZRLE-encoded page (xbzrle capability)",
        C.RAM_SAVE_FLAG_COMPRESS_PAGE: "compressed page (compress capability)",
        C.RAM_SAVE_FLAG_HOOK: "RDMA hook record",
        C.RAM_SAVE_FLAG_MEM_SIZE: "second RAM block list",
        C.RAM_SAVE_FLAG_FULL: "obsolete FULL page record",
    }
    what = names.get(kind)
    if what:
        raise UnsupportedError(f"RAM: {what} is not supported", cur.path, offset + cur.origin)
    raise cur.fail(f"RAM record with unknown flags {kind:#x}", offset)
