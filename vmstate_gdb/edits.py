"""The edit overlay: changed RAM pages, and byte patches to device/vCPU state in the stream.

Nothing is written to the snapshot file; readers see the overlay, the writer turns it into a new
snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StreamPatch:
    offset: int  # stream offset
    data: bytes
    what: str  # for `info vmstate`: "cpu[0] rax", "0000:00:03.0/e1000/mac_reg[0][0]"


@dataclass
class EditOverlay:
    pages: dict[tuple[str, int], bytearray] = field(default_factory=dict)  # (block, page index) -> bytes
    patches: list[StreamPatch] = field(default_factory=list)
    generation: int = 0  # bumped on every change, so caches above can tell
    patch_generation: int = 0  # bumped when stream patches change (vCPU and device state)
    # NIC MACs changed, first old -> newest: a libvirt image's domain XML must follow them
    macs: dict[bytes, bytes] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.pages or self.patches)

    def page(self, block: str, index: int) -> bytearray | None:
        return self.pages.get((block, index))

    def set_page(self, block: str, index: int, data: bytearray) -> None:
        self.pages[(block, index)] = data
        self.generation += 1

    def drop_page(self, block: str, index: int) -> None:
        if self.pages.pop((block, index), None) is not None:
            self.generation += 1

    def patch(self, offset: int, data: bytes, what: str) -> None:
        # A later patch of the same bytes replaces the earlier one, so the list stays small.
        self.patches = [p for p in self.patches if not (p.offset == offset and len(p.data) == len(data))]
        self.patches.append(StreamPatch(offset, bytes(data), what))
        self.generation += 1
        self.patch_generation += 1

    def apply(self, offset: int, raw: bytes) -> bytes:
        """``raw`` is stream bytes at ``offset``; return them with every overlapping patch applied."""
        end = offset + len(raw)
        out: bytearray | None = None
        for p in self.patches:
            p_end = p.offset + len(p.data)
            if p_end <= offset or p.offset >= end:
                continue
            if out is None:
                out = bytearray(raw)
            lo, hi = max(offset, p.offset), min(end, p_end)
            out[lo - offset : hi - offset] = p.data[lo - p.offset : hi - p.offset]
        return bytes(out) if out is not None else raw

    def clear(self) -> None:
        self.pages.clear()
        self.patches.clear()
        self.macs.clear()
        self.generation += 1
        self.patch_generation += 1

    def summary(self) -> dict:
        return {"pages": len(self.pages), "fields": [p.what for p in self.patches]}
