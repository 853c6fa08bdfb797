"""An edited ELF core back into a snapshot: the pages (and registers) that differ go into the overlay.

Every PT_LOAD is compared with the snapshot page by page at its ``p_paddr`` (our cores and QEMU's
give the guest-physical address there, for physical and paging dumps alike). Segments without one
(``p_paddr`` 0 while ``p_vaddr`` is not) are translated through vCPU 0's page tables. Holes of a
sparse core are read as zeros without being read at all where the snapshot page is zero too.
All differences are collected against the unedited snapshot first, so a page that appears in
several segments (virtual aliases) is compared, not re-applied; copies that disagree are an error.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field

from ..errors import AddressError, EditError, VmstateError
from ..snapshot import Snapshot
from .elfcore import NT_PRSTATUS, Segment, read_core_notes, read_core_segments

PAGE = 4096


@dataclass
class InjectResult:
    pages: list[int] = field(default_factory=list)  # guest-physical page addresses written
    registers: list[str] = field(default_factory=list)  # "cpu0 rax: 0x1 -> 0x2"
    skipped: list[str] = field(default_factory=list)

    def describe(self) -> list[str]:
        lines = [
            f"{len(self.pages)} page(s) differ"
            + (
                ": "
                + ", ".join(f"{a:#x}" for a in self.pages[:16])
                + (" ..." if len(self.pages) > 16 else "")
                if self.pages
                else ""
            )
        ]
        lines += [f"register {r}" for r in self.registers]
        lines += [f"skipped: {s}" for s in self.skipped]
        return lines


class _Holes:
    """Which file offsets are holes (SEEK_DATA/SEEK_HOLE), so sparse zeros need no reading."""

    def __init__(self, fd: int):
        self.fd = fd
        self.data = (-1, -1)  # the last data extent found
        self.hole = (-1, -1)  # the last hole found

    def is_hole(self, offset: int, length: int) -> bool:
        """True when [offset, offset+length) holds no data."""
        if not hasattr(os, "SEEK_DATA"):
            return False
        end = offset + length
        if self.hole[0] <= offset and end <= self.hole[1]:
            return True
        if offset < self.data[1] and self.data[0] < end:
            return False
        try:
            start = os.lseek(self.fd, offset, os.SEEK_DATA)
        except OSError:  # ENXIO: nothing but a hole up to the end of the file
            self.hole = (offset, 1 << 63)
            return True
        self.hole = (offset, start)
        if start >= end:
            return True
        self.data = (start, os.lseek(self.fd, start, os.SEEK_HOLE))
        return False


def _snapshot_page_is_zero(snap: Snapshot, paddr: int) -> bool:
    r = snap.physical.locate(paddr)
    block = snap.ram.blocks[r.block]
    index = (r.block_offset + paddr - r.start) // block.page_size
    return snap.ram.is_zero(block, index)


def _physical_pages(snap: Snapshot, seg: Segment):
    """(page-aligned guest-physical address, offset within the segment) for each whole page."""
    if seg.paddr or not seg.vaddr:
        base = seg.paddr
        for off in range(0, seg.size - PAGE + 1, PAGE):
            yield base + off, off
        return
    vm = snap.virtual(0)
    for off in range(0, seg.size - PAGE + 1, PAGE):
        try:
            yield vm.translate(seg.vaddr + off).physical & ~(PAGE - 1), off
        except AddressError:
            continue


def diff_core(snap: Snapshot, core: str) -> tuple[dict[int, bytes], InjectResult]:
    segments = read_core_segments(core)
    if not segments:
        raise VmstateError("the core has no PT_LOAD segments with data", core)
    result = InjectResult()
    pages: dict[int, bytes] = {}
    compared: dict[int, bytes | None] = {}  # physical page -> new bytes (None: same as the snapshot)
    with open(core, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        holes = _Holes(f.fileno())
        view = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        try:
            for seg in segments:
                if seg.offset + seg.size > size:
                    raise VmstateError(
                        f"segment at {seg.offset:#x}+{seg.size:#x} runs past the end ({size:#x})", core
                    )
                if seg.paddr % PAGE or seg.size % PAGE or seg.offset % PAGE:
                    result.skipped.append(f"segment paddr {seg.paddr:#x}: not page aligned")
                    continue
                outside = 0
                for paddr, off in _physical_pages(snap, seg):
                    pos = seg.offset + off
                    try:
                        snap_zero = _snapshot_page_is_zero(snap, paddr)
                    except AddressError:
                        outside += 1
                        continue
                    if snap_zero and holes.is_hole(pos, PAGE):
                        data = None
                    else:
                        new = bytes(view[pos : pos + PAGE])
                        data = None if new == snap.physical.read(paddr, PAGE) else new
                    if paddr in compared:
                        if compared[paddr] != data and data is not None:
                            raise EditError(
                                f"physical page {paddr:#x} differs between two segments of the "
                                "core (edit every virtual alias the same way)"
                            )
                        continue
                    compared[paddr] = data
                    if data is not None:
                        pages[paddr] = data
                if outside:
                    result.skipped.append(
                        f"segment at physical {seg.paddr:#x}: {outside} page(s) outside "
                        "this snapshot's guest RAM"
                    )
        finally:
            if view is not None:
                view.close()
    return pages, result


def inject_core(snap: Snapshot, core: str, registers: bool = True) -> InjectResult:
    """Apply the core's differences to ``snap``'s overlay; returns what changed."""
    pages, result = diff_core(snap, core)
    for paddr in sorted(pages):
        r = snap.physical.locate(paddr)
        if r.kind != "ram":
            result.skipped.append(f"physical {paddr:#x}: in {r.block} (ROM)")
            continue
        snap.physical.write(paddr, pages[paddr])
        result.pages.append(paddr)
    if registers:
        _inject_registers(snap, core, result)
    return result


def _inject_registers(snap: Snapshot, core: str, result: InjectResult) -> None:
    cpus = {c.index + 1: c for c in snap.cpus}  # pr_pid is the vCPU index + 1, as QEMU writes it
    for name, ntype, desc in read_core_notes(core):
        if name != b"CORE" or ntype != NT_PRSTATUS:
            continue
        parsed = snap.arch.registers_from_prstatus(desc)
        if parsed is None:
            continue
        pid, values = parsed
        cpu = cpus.get(pid)
        if cpu is None:
            continue
        for ours, value in values.items():
            if value != cpu[ours]:
                old = cpu[ours]
                snap.set_register(cpu.index, ours, value)
                cpu = snap.cpu(cpu.index)
                result.registers.append(f"cpu{cpu.index} {ours}: {old:#x} -> {value:#x}")
