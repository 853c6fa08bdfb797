"""Guest memory as a stack of small layers: RAM blocks (index + overlay) -> physical -> virtual.

Each layer has one method that matters (map an address to the layer below); reads, writes and
searches are built on it.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator

from .arch import Cpu, PageWalker
from .arch.paging import Translation
from .edits import EditOverlay
from .errors import AddressError
from .machine import MachineLayout, PhysicalRange
from .stream.ram import PAGE_ABSENT, PAGE_ZERO, RamBlock

_RUN_BYTES = 4 << 20  # one read of consecutive page records, at most


class GuestRam:
    """Bytes of RAM blocks by (block, offset): the stream's last copy of each page, or the overlay's."""

    def __init__(self, blocks: dict[str, RamBlock], buf, overlay: EditOverlay):
        self.blocks = blocks
        self.buf = buf
        self.overlay = overlay

    def is_zero(self, block: RamBlock, index: int) -> bool:
        """The page is known to be zero without reading it: a ZERO record, a clear mapped-ram bit,
        or never sent, and not edited. Exporters skip such pages (holes in a core, no diff)."""
        loc = block.pages[index]
        return (loc == PAGE_ZERO or loc == PAGE_ABSENT) and self.overlay.page(block.name, index) is None

    def page(self, block: RamBlock, index: int) -> bytes:
        edited = self.overlay.page(block.name, index)
        if edited is not None:
            return bytes(edited)
        loc = block.pages[index]
        if loc == PAGE_ZERO or loc == PAGE_ABSENT:
            return bytes(block.page_size)
        return bytes(self.buf[loc : loc + block.page_size])

    def pages(self, block: RamBlock, first: int, count: int) -> Iterator[tuple[int, bytes | None]]:
        """(index, bytes or None for a page known to be zero) for pages first..first+count-1,
        in order. Pages whose records follow each other in the stream (what QEMU writes for a
        stopped VM) are read in runs of up to _RUN_BYTES: one read for hundreds of pages."""
        ps = block.page_size
        stride = ps + 8  # a PAGE record that continues the block: an 8-byte header, the page
        index, end = first, first + count
        scratch = memoryview(b"")
        readinto = getattr(self.buf, "readinto", None)  # checked files: into one reused buffer
        while index < end:
            if self.is_zero(block, index):
                yield index, None
                index += 1
                continue
            loc = block.pages[index]
            edited = self.overlay.pages
            n = 1
            if loc > 0 and (block.name, index) not in edited:
                limit = min(end - index, _RUN_BYTES // stride)
                while (
                    n < limit
                    and block.pages[index + n] == loc + n * stride
                    and (block.name, index + n) not in edited
                ):
                    n += 1
            if n == 1:
                yield index, self.page(block, index)
            else:
                span = (n - 1) * stride + ps
                if readinto is not None:  # no fresh 4 MiB object (and its page faults) per run
                    if len(scratch) < span:
                        scratch = memoryview(bytearray(_RUN_BYTES + ps))
                    readinto(loc, scratch[:span])
                    chunk = scratch
                else:
                    chunk = memoryview(bytes(self.buf[loc : loc + span]))
                for k in range(n):
                    yield index + k, bytes(chunk[k * stride : k * stride + ps])
            index += n

    def original_page(self, block: RamBlock, index: int) -> bytes:
        """The page as the snapshot file holds it, without the overlay."""
        loc = block.pages[index]
        if loc == PAGE_ZERO or loc == PAGE_ABSENT:
            return bytes(block.page_size)
        return bytes(self.buf[loc : loc + block.page_size])

    def read(self, name: str, offset: int, size: int) -> bytes:
        block = self.blocks[name]
        if offset < 0 or offset + size > block.used_length:
            raise AddressError(f"{name}: offset {offset:#x}+{size:#x} is outside the block", offset)
        ps = block.page_size
        index, within = divmod(offset, ps)
        if within + size <= ps:  # the common small read: one page, one slice
            edited = self.overlay.pages.get((name, index)) if self.overlay.pages else None
            if edited is not None:
                return bytes(edited[within : within + size])
            loc = block.pages[index]
            if loc == PAGE_ZERO or loc == PAGE_ABSENT:
                return bytes(size)
            return bytes(self.buf[loc + within : loc + within + size])
        out = bytearray()
        while size > 0:
            index, within = divmod(offset, ps)
            n = min(size, ps - within)
            edited = self.overlay.page(name, index)
            if edited is not None:
                out += edited[within : within + n]
            else:
                loc = block.pages[index]
                if loc == PAGE_ZERO or loc == PAGE_ABSENT:
                    out += bytes(n)
                else:
                    out += self.buf[loc + within : loc + within + n]
            offset += n
            size -= n
        return bytes(out)

    def write(self, name: str, offset: int, data: bytes) -> None:
        block = self.blocks[name]
        if offset < 0 or offset + len(data) > block.used_length:
            raise AddressError(f"{name}: offset {offset:#x}+{len(data):#x} is outside the block", offset)
        ps = block.page_size
        pos = 0
        while pos < len(data):
            index, within = divmod(offset + pos, ps)
            n = min(len(data) - pos, ps - within)
            page = self.overlay.page(name, index)
            if page is None:
                page = bytearray(self.page(block, index))
            page[within : within + n] = data[pos : pos + n]
            if page == self.original_page(block, index):
                # written back to what the file holds (a breakpoint removed): no edit left
                self.overlay.drop_page(name, index)
            else:
                self.overlay.set_page(name, index, page)
            pos += n


class PhysicalMemory:
    """Guest-physical addresses over the machine layout's ranges."""

    def __init__(self, ram: GuestRam, layout: MachineLayout):
        self.ram = ram
        self.layout = layout
        self.ranges = [r for r in layout.ranges if r.block in ram.blocks]
        self._starts = [r.start for r in self.ranges]

    def locate(self, address: int) -> PhysicalRange:
        i = bisect.bisect_right(self._starts, address) - 1
        if i >= 0 and address < self.ranges[i].end:
            return self.ranges[i]
        where = ", ".join(f"{r.start:#x}-{r.end - 1:#x}" for r in self.ranges)
        raise AddressError(f"physical address {address:#x} is not guest RAM or ROM ({where} are)", address)

    def _spans(self, address: int, size: int):
        while size > 0:
            r = self.locate(address)
            n = min(size, r.end - address)
            yield r, address, n
            address += n
            size -= n

    def read(self, address: int, size: int) -> bytes:
        r = self.locate(address)
        if address + size <= r.end:
            return self.ram.read(r.block, r.block_offset + address - r.start, size)
        return b"".join(
            self.ram.read(r.block, r.block_offset + a - r.start, n) for r, a, n in self._spans(address, size)
        )

    def write(self, address: int, data: bytes) -> None:
        spans = list(self._spans(address, len(data)))  # check the whole range before changing anything
        pos = 0
        for r, a, _n in spans:
            if r.kind != "ram":
                raise AddressError(f"physical address {a:#x} is in {r.block} (ROM); not writable", a)
        for r, a, n in spans:
            self.ram.write(r.block, r.block_offset + a - r.start, data[pos : pos + n])
            pos += n

    def readable_prefix(self, address: int, size: int) -> bytes:
        """As much of [address, address+size) as is mapped, stopping at the first hole."""
        out = bytearray()
        try:
            for r, a, n in self._spans(address, size):
                out += self.ram.read(r.block, r.block_offset + a - r.start, n)
        except AddressError:
            pass
        return bytes(out)

    def search(self, pattern: bytes, start: int, end: int) -> int | None:
        """First physical address in [start, end) where ``pattern`` starts; zero pages are skipped
        without being read when the pattern is not all zeros."""
        if not pattern:
            return start
        for r in self.ranges:
            lo, hi = max(start, r.start), min(end, r.end)
            if lo >= hi:
                continue
            hit = _search_block(self.ram, r, lo, hi, pattern)
            if hit is not None:
                return hit
        return None


def _search_block(ram: GuestRam, r: PhysicalRange, lo: int, hi: int, pattern: bytes) -> int | None:
    block = ram.blocks[r.block]
    ps = block.page_size
    zero_pattern = not any(pattern)
    overlap = len(pattern) - 1
    off_lo = r.block_offset + lo - r.start
    off_hi = r.block_offset + hi - r.start
    chunk_pages = 256
    first = off_lo // ps
    last = (off_hi + ps - 1) // ps
    carry = b""
    p = first
    while p < last:
        # Gather a run of pages; a zero page breaks the run (unless the pattern can be in zeros).
        q = p
        data = bytearray()
        while q < last and q - p < chunk_pages:
            loc = block.pages[q]
            is_zero = (loc == PAGE_ZERO or loc == PAGE_ABSENT) and ram.overlay.page(block.name, q) is None
            if is_zero and not zero_pattern:
                break
            data += ram.page(block, q)
            q += 1
        if q == p:  # a zero page: what straddles into it cannot match a non-zero pattern past it
            carry = b""
            p += 1
            continue
        base = p * ps
        window = carry + bytes(data)
        wbase = base - len(carry)
        i = window.find(pattern, max(0, off_lo - wbase))
        if i != -1 and wbase + i + len(pattern) <= off_hi:
            return r.start + (wbase + i - r.block_offset)
        carry = window[-overlap:] if overlap else b""
        p = q
    return None


class VirtualMemory:
    """A vCPU's virtual address space, translated page by page through its own page tables (or
    through the tables at physical ``root``, in that vCPU's paging mode)."""

    def __init__(self, physical: PhysicalMemory, cpu: Cpu, walker: PageWalker):
        self.physical = physical
        self.cpu = cpu
        self.walker = walker

    def translate(self, vaddr: int) -> Translation:
        return self.walker.translate(vaddr)

    def _spans(self, vaddr: int, size: int):
        while size > 0:
            t = self.translate(vaddr)
            n = min(size, t.page_size - (t.physical & (t.page_size - 1)))
            yield t.physical, n
            vaddr = (vaddr + n) & 0xFFFFFFFFFFFFFFFF
            size -= n

    def read(self, vaddr: int, size: int) -> bytes:
        return b"".join(self.physical.read(p, n) for p, n in self._spans(vaddr, size))

    def write(self, vaddr: int, data: bytes) -> None:
        spans = list(self._spans(vaddr, len(data)))
        pos = 0
        for p, n in spans:
            self.physical.write(p, data[pos : pos + n])
            pos += n


AddressSpace = PhysicalMemory | VirtualMemory
ReadFn = Callable[[int, int], bytes]
