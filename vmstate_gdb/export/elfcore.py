"""An ELF64 core of the guest, laid out as QEMU's `dump-guest-memory` writes one (dump/dump.c).

Layout: ELF header, program headers (PT_NOTE first, then one PT_LOAD per guest-physical RAM range),
the notes (the architecture's per-vCPU notes in QEMU's order: NT_PRSTATUS per vCPU and QEMU's
"QEMU" CPU-state note per vCPU on x86_64, NT_PRSTATUS + NT_PRFPREG per vCPU on aarch64; then the
guest's VMCOREINFO note if it has one), then guest RAM, range after range, page aligned. Zero pages are holes,
so the file is sparse; RAM is streamed page by page and never held in memory.

Physical cores set ``p_vaddr = p_paddr``, as QEMU does since v4.0 (commit "dump: Set correct vaddr for
ELF dump"), so gdb does not stack every segment at 0. With ``virtual=True`` the PT_LOADs are the
vCPU's supervisor mappings (the kernel's, through its page tables), coalesced into runs; like
QEMU's paging dump, they point into the one copy of physical RAM in the file (several virtual
mappings of a page share its bytes), and ``p_paddr`` still names the guest-physical address.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ..errors import SaveError, UnsupportedError, VmstateError
from ..machine import PhysicalRange
from ..os.linux.vmcoreinfo import VmcoreInfo, find_vmcoreinfo
from ..snapshot import Snapshot
from .elf import (  # noqa: F401  (NHDR, make_note: part of this module's interface)
    EHDR,
    ELFCLASS64,
    ELFDATA2LSB,
    ET_CORE,
    NHDR,
    NT_PRSTATUS,
    PHDR,
    PN_XNUM,
    PT_LOAD,
    PT_NOTE,
    ProgramHeader,
    align,
    core_headers,
    make_note,
)

DATA_ALIGN = 4096
MAX_ALIASES = 8  # virtual mappings kept per physical page in --virtual cores


# -- segments -----------------------------------------------------------------------------------


@dataclass
class Segment:
    vaddr: int
    paddr: int
    size: int
    offset: int = 0  # file offset, set by the layout


@dataclass
class CoreLayout:
    notes: bytes
    segments: list[Segment]
    data_offset: int  # where RAM starts in the file
    range_offsets: list[tuple[PhysicalRange, int]]  # each physical range and its file offset
    size: int
    vmcoreinfo: VmcoreInfo | None = None
    notes_text: list[str] = field(default_factory=list)


def virtual_runs(
    snap: Snapshot, cpu_index: int, include_user: bool = False, skipped: list[int] | None = None
) -> Iterator[Segment]:
    """The vCPU's present supervisor mappings clipped to guest RAM, coalesced where both the virtual
    and the physical addresses run on. ``skipped[0]`` counts the aliases left out."""
    skipped = skipped if skipped is not None else [0]
    cpu = snap.cpu(cpu_index)
    walker = snap.virtual(cpu_index).walker
    if cpu.paging_mode == "none" or not walker.enumerable:
        raise UnsupportedError(
            f"--virtual needs page tables that can be enumerated; vCPU {cpu_index} has paging "
            f"{cpu.paging_mode!r} (write a physical core instead)"
        )
    ranges = snap.physical.ranges
    run: Segment | None = None
    seen: dict[int, int] = {}
    for va, pa, size, _writable, user in walker.mappings():
        if user and not include_user:
            continue
        # A page mapped over and over (Linux's espfix stacks alias a few pages 64Ki times) would
        # cost one program header per alias; keep the first few aliases of each page.
        n = seen[pa] = seen.get(pa, 0) + 1
        if n > MAX_ALIASES:
            skipped[0] += 1
            continue
        for r in ranges:
            lo, hi = max(pa, r.start), min(pa + size, r.end)
            if lo >= hi:
                continue
            v = va + (lo - pa)
            if (
                run is not None
                and run.vaddr + run.size == v
                and run.paddr + run.size == lo
                and run.paddr + run.size <= r.end
                and run.paddr >= r.start
            ):
                run.size += hi - lo
                continue
            if run is not None:
                yield run
            run = Segment(v, lo, hi - lo)
    if run is not None:
        yield run


def plan_core(snap: Snapshot, virtual: bool = False, cpu_index: int = 0) -> CoreLayout:
    cpus = snap.cpus
    notes = snap.arch.core_notes(cpus)
    text = [f"{len(cpus)} vCPU(s): {snap.arch.core_notes_text}"]
    info = find_vmcoreinfo(snap)
    if info is not None:
        notes += info.note
        text.append(f"VMCOREINFO ({info.source})")
    else:
        text.append("no VMCOREINFO: the guest published none (no vmcoreinfo device, no note in RAM)")
    ranges = list(snap.physical.ranges)
    if virtual:
        skipped = [0]
        segments = list(virtual_runs(snap, cpu_index, skipped=skipped))
        roots = ", ".join(f"{k}={v:#x}" for k, v in snap.arch.page_table_roots(snap.cpu(cpu_index)).items())
        if not segments:
            raise UnsupportedError(f"vCPU {cpu_index}'s page tables map no guest RAM")
        text.append(
            f"virtual segments from vCPU {cpu_index}'s page tables ({roots})"
            + (f", {skipped[0]} aliased mappings left out" if skipped[0] else "")
        )
    else:
        segments = [Segment(r.start, r.start, r.size) for r in ranges]
    phnum = 1 + len(segments)
    if phnum >= PN_XNUM:
        raise UnsupportedError(f"{len(segments)} segments; more than ELF's {PN_XNUM - 1} program headers")
    notes_offset = EHDR.size + PHDR.size * phnum
    data_offset = align(notes_offset + len(notes), DATA_ALIGN)
    range_offsets = []
    pos = data_offset
    for r in ranges:
        range_offsets.append((r, pos))
        pos += align(r.size, DATA_ALIGN)
    for s in segments:
        for r, off in range_offsets:
            if r.start <= s.paddr < r.end:
                s.offset = off + s.paddr - r.start
                break
    return CoreLayout(notes, segments, data_offset, range_offsets, pos, info, text)


def _headers(layout: CoreLayout, machine: int) -> bytes:
    notes_offset = EHDR.size + PHDR.size * (1 + len(layout.segments))
    # p_flags 0 and p_align 0, as QEMU writes them
    phdrs = [ProgramHeader(PT_NOTE, notes_offset, 0, 0, len(layout.notes), len(layout.notes))]
    phdrs += [ProgramHeader(PT_LOAD, s.offset, s.vaddr, s.paddr, s.size, s.size) for s in layout.segments]
    return core_headers(machine, phdrs)


# -- writing ------------------------------------------------------------------------------------


@dataclass
class CoreResult:
    path: str
    layout: CoreLayout
    data_pages: int
    zero_pages: int

    def summary(self) -> str:
        kind = "virtual" if any(s.vaddr != s.paddr for s in self.layout.segments) else "physical"
        return (
            f"wrote {self.path}: ELF64 core, {len(self.layout.segments)} PT_LOAD ({kind}), "
            f"{self.data_pages} data pages, {self.zero_pages} zero pages as holes; "
            + "; ".join(self.layout.notes_text)
        )


def write_core(
    snap: Snapshot,
    out: str,
    virtual: bool = False,
    cpu_index: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> CoreResult:
    from ..writer import check_output_path
    from ..writer.emit import AtomicOutput

    check_output_path(snap, out)
    layout = plan_core(snap, virtual, cpu_index)
    data_pages = zero_pages = 0
    total = sum(r.size for r, _ in layout.range_offsets)
    done = 0
    try:
        with AtomicOutput(out) as f:
            f.write(_headers(layout, snap.arch.elf_machine))
            f.write(layout.notes)
            run = memoryview(bytearray(_WRITE_RUN))  # consecutive data pages, one write at run_at
            filled = run_at = 0
            for r, offset in layout.range_offsets:
                for page_offset, data in _range_pages(snap, r):
                    if data is None:
                        zero_pages += 1
                    else:
                        n = len(data)
                        if run_at + filled != offset + page_offset or filled + n > _WRITE_RUN:
                            _write_at(f, run_at, run[:filled])
                            filled, run_at = 0, offset + page_offset
                        run[filled : filled + n] = data
                        filled += n
                        data_pages += 1
                    done += DATA_ALIGN
                    if progress and not done % (64 << 20):
                        progress(done, total)
            _write_at(f, run_at, run[:filled])
            f.truncate(layout.size)
    except OSError as e:
        raise SaveError(f"cannot write: {e.strerror or e}", out) from None
    if progress:
        progress(total, total)
    return CoreResult(out, layout, data_pages, zero_pages)


_WRITE_RUN = 4 << 20  # bytes of consecutive pages gathered into one write


def _write_at(f, at: int, data: memoryview) -> None:
    if len(data):
        f.seek(at)
        f.write(data)


def _range_pages(snap: Snapshot, r: PhysicalRange) -> Iterator[tuple[int, bytes | None]]:
    """(offset in the range, page bytes or None for a zero page) for every page of a range."""
    ram = snap.ram
    block = ram.blocks[r.block]
    ps = block.page_size
    if r.block_offset % ps or r.size % ps:
        raise UnsupportedError(f"range {r.start:#x}+{r.size:#x} of {r.block} is not page aligned")
    first = r.block_offset // ps
    zero = bytes(ps)
    for index, data in ram.pages(block, first, r.size // ps):
        yield (index - first) * ps, (None if data is None or data == zero else data)


def read_core_segments(path: str) -> list[Segment]:
    """The PT_LOAD segments of a core file (any ELF64 little-endian core, not only ours)."""
    try:
        with open(path, "rb") as f:
            head = f.read(EHDR.size)
            if len(head) < EHDR.size or head[:4] != b"\x7fELF":
                raise VmstateError("not an ELF file", path)
            if head[4] != ELFCLASS64 or head[5] != ELFDATA2LSB:
                raise UnsupportedError("only ELF64 little-endian cores are read", path)
            fields = EHDR.unpack(head)
            phoff, phentsize, phnum = fields[5], fields[9], fields[10]
            if fields[1] != ET_CORE:
                raise VmstateError(f"ELF type {fields[1]} is not a core (ET_CORE)", path)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError as e:
        raise VmstateError(f"cannot read: {e.strerror or e}", path) from None
    out = []
    for i in range(phnum):
        p_type, _flags, offset, vaddr, paddr, filesz, _memsz, _align_ = PHDR.unpack_from(table, i * phentsize)
        if p_type == PT_LOAD and filesz:
            out.append(Segment(vaddr, paddr, filesz, offset))
    return out


def read_core_notes(path: str) -> list[tuple[bytes, int, bytes]]:
    """(name, type, desc) of every note in the core's PT_NOTE segments."""
    with open(path, "rb") as f:
        head = f.read(EHDR.size)
        fields = EHDR.unpack(head)
        phoff, phentsize, phnum = fields[5], fields[9], fields[10]
        f.seek(phoff)
        table = f.read(phentsize * phnum)
        out = []
        for i in range(phnum):
            p_type, _fl, offset, _v, _p, filesz, _m, _a = PHDR.unpack_from(table, i * phentsize)
            if p_type != PT_NOTE:
                continue
            f.seek(offset)
            data = f.read(filesz)
            pos = 0
            while pos + NHDR.size <= len(data):
                namesz, descsz, ntype = NHDR.unpack_from(data, pos)
                pos += NHDR.size
                name = data[pos : pos + namesz].rstrip(b"\0")
                pos += align(namesz, 4)
                out.append((name, ntype, data[pos : pos + descsz]))
                pos += align(descsz, 4)
    return out
