"""Turn the edit overlay into a plan: byte patches in place, and records to insert.

Everything not edited stays byte for byte. A page whose last record is a PAGE record is patched in
place; a mapped-ram page is written at its fixed place (and its bitmap bit set); any other page
(last record ZERO, or never sent) gets a new PAGE record just before the EOS of the last RAM
chunk, where the loader applies it after every earlier record (last record wins).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..stream import constants as C
from ..stream.ram import PAGE_ABSENT, PAGE_ZERO

if TYPE_CHECKING:
    from ..snapshot import Snapshot


@dataclass
class Plan:
    patches: list[tuple[int, bytes]] = field(default_factory=list)  # (stream offset, bytes), same length
    insert_at: int | None = None  # stream offset where new RAM records go
    inserted: bytes = b""
    pages_in_place: int = 0
    pages_added: int = 0
    fields: list[str] = field(default_factory=list)

    @property
    def size_delta(self) -> int:
        return len(self.inserted)

    def describe(self) -> str:
        parts = []
        pages = self.pages_in_place + self.pages_added
        if pages:
            parts.append(
                f"{pages} page{'s' if pages != 1 else ''} of memory"
                f"{f' ({self.pages_added} as new records)' if self.pages_added else ''}"
            )
        if self.fields:
            parts.append(
                f"{len(self.fields)} field{'s' if len(self.fields) != 1 else ''} of device/vCPU state"
            )
        return ", ".join(parts) or "no edits"


def make_plan(snap: Snapshot) -> Plan:
    plan = Plan()
    for p in snap.edits.patches:
        plan.patches.append((p.offset, p.data))
        plan.fields.append(p.what)
    ram = snap.index.ram
    new_records = bytearray()
    bitmap_bytes: dict[int, int] = {}  # stream offset -> new byte value
    for (block_name, page), data in sorted(snap.edits.pages.items()):
        block = ram.blocks[block_name]
        if bytes(data) == snap.ram.original_page(block, page):
            continue  # written back to what it was
        loc = block.pages[page]
        if block.mapped_ram is not None:
            m = block.mapped_ram
            plan.patches.append((m.pages_offset + page * block.page_size, bytes(data)))
            byte_at = m.bitmap_offset + page // 8
            current = bitmap_bytes.get(byte_at, snap.buf[byte_at])
            bitmap_bytes[byte_at] = current | (1 << (page % 8))
            plan.pages_in_place += 1
        elif loc not in (PAGE_ZERO, PAGE_ABSENT):
            plan.patches.append((loc, bytes(data)))
            plan.pages_in_place += 1
        else:
            name = block_name.encode()
            word = (page * block.page_size) | C.RAM_SAVE_FLAG_PAGE
            new_records += word.to_bytes(8, "big") + bytes([len(name)]) + name + bytes(data)
            plan.pages_added += 1
    for at, value in bitmap_bytes.items():
        plan.patches.append((at, bytes([value])))
    if new_records:
        if not ram.eos_offsets:
            raise ValueError("stream has no RAM section to add pages to")
        plan.insert_at = ram.eos_offsets[-1]
        plan.inserted = bytes(new_records)
    plan.patches = merge_patches(plan.patches)
    return plan


def merge_patches(patches: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """Non-overlapping, sorted runs from patches given in the order they were made (later wins)."""
    items = sorted(enumerate(patches), key=lambda t: t[1][0])
    out: list[tuple[int, bytes]] = []
    group: list[tuple[int, tuple[int, bytes]]] = []
    group_end = -1

    def flush() -> None:
        if not group:
            return
        start = min(p[0] for _, p in group)
        buf = bytearray(group_end - start)
        for _, (off, data) in sorted(group, key=lambda t: t[0]):
            buf[off - start : off - start + len(data)] = data
        out.append((start, bytes(buf)))

    for order, (off, data) in items:
        if group and off >= group_end:
            flush()
            group = []
        group.append((order, (off, data)))
        group_end = max(group_end if len(group) > 1 else 0, off + len(data))
    flush()
    return out
