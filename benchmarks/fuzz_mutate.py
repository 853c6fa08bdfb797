"""Mutations of a base aimed at its parsers; each mutant is a pure function of (seed, number).

A mutation is a list of byte patches and an optional truncation, with a one-line description
that says where it hit, so a failure can be reproduced and read.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

from fuzz_bases import Base


@dataclass
class Mutant:
    number: int
    base: Base
    what: list[str] = field(default_factory=list)
    patches: list[tuple[int, bytes]] = field(default_factory=list)
    size: int = 0
    ram_data_only: bool = True  # every patch lies in RAM page bytes (QEMU must resume the edit)

    @property
    def description(self) -> str:
        return f"#{self.number} {self.base.name}: " + "; ".join(self.what)


def _lies(width: int, original: int, rng: random.Random) -> list[int]:
    top = (1 << (8 * width)) - 1
    return [
        0,
        1,
        top,  # -1 when signed
        1 << (8 * width - 1),  # the most negative
        (1 << (8 * width - 1)) - 1,
        min(top, original * 2 + 1),
        max(0, original - 1),
        min(top, original + 1),
        min(top, original << 8),
        rng.getrandbits(8 * width),
    ]


def _truncate(m: Mutant, rng: random.Random, boundary: bool) -> None:
    b = m.base
    if boundary and b.boundaries:
        at = rng.choice(b.boundaries) + rng.choice((0, 0, 0, 1, -1, 2, 4, 8))
    else:
        at = rng.randrange(1, b.size)
    m.size = max(1, min(m.size, at))
    m.what.append(f"truncated at {m.size:#x}" + (" (a structure boundary)" if boundary else ""))
    m.ram_data_only = False


def _pick_region(b: Base, rng: random.Random) -> tuple[str, int, int]:
    label = rng.choice(sorted(b.regions))
    start, end = rng.choice(b.regions[label])
    return label, start, end


def _flip(m: Mutant, rng: random.Random) -> None:
    label, start, end = _pick_region(m.base, rng)
    for _ in range(rng.choice((1, 1, 2, 3, 8))):
        at = rng.randrange(start, end)
        bit = rng.randrange(8)
        byte = m.base.read(at, at + 1)[0] ^ (1 << bit)
        m.patches.append((at, bytes([byte])))
        m.what.append(f"bit {bit} of {at:#x} flipped ({label})")
    m.ram_data_only = False


def _run(m: Mutant, rng: random.Random) -> None:
    label, start, end = _pick_region(m.base, rng)
    at = rng.randrange(start, end)
    n = min(rng.choice((1, 2, 4, 8, 16, 64)), m.base.size - at)
    fill = rng.choice(("zeros", "ones", "random", "repeat"))
    data = {
        "zeros": bytes(n),
        "ones": b"\xff" * n,
        "random": rng.randbytes(n),
        "repeat": m.base.read(at, at + 1) * n,
    }[fill]
    m.patches.append((at, data))
    m.what.append(f"{n} bytes of {fill} at {at:#x} ({label})")
    m.ram_data_only = False


def _lie(m: Mutant, rng: random.Random) -> None:
    f = rng.choice(m.base.fields)
    original = int.from_bytes(m.base.read(f.offset, f.offset + f.width), f.order)
    value = rng.choice(_lies(f.width, original, rng))
    m.patches.append((f.offset, value.to_bytes(f.width, f.order)))
    m.what.append(f"{f.label} at {f.offset:#x}: {original:#x} -> {value:#x}")
    m.ram_data_only = False


def _json_lie(m: Mutant, rng: random.Random) -> None:
    """A number of the VMDESCRIPTION (a field's size, an array's count) replaced by a lie."""
    start, end = rng.choice(m.base.regions["JSON number"])
    lie = rng.choice(
        (b"0", b"-1", b"-2147483648", b"99999999999999999999", b"4294967296", b"1.5e300", b"null")
    )
    old = m.base.read(start, end)
    # the JSON keeps its length (its length word stays true): pad with spaces, or lie shorter
    new = (lie + b" " * len(old))[: len(old)] if len(lie) <= len(old) else lie
    m.patches.append((start, new))
    if len(new) > len(old):  # a longer number shifts the rest of the JSON: write it after
        tail = m.base.read(end, m.base.size)
        m.patches.append((start + len(new), tail))
        m.size = max(m.size, start + len(new) + len(tail))
    m.what.append(f"JSON number at {start:#x}: {old.decode()} -> {new.decode()}")
    m.ram_data_only = False


def _body_word(m: Mutant, rng: random.Random) -> None:
    """A 16/32-bit word inside a device body (counts, indices, lengths of arrays) set to a lie."""
    start, end = rng.choice(m.base.regions["device body"])
    width = rng.choice((2, 4, 4, 8))
    if end - start <= width:
        return
    at = rng.randrange(start, end - width)
    original = int.from_bytes(m.base.read(at, at + width), "big")
    value = rng.choice(_lies(width, original, rng))
    m.patches.append((at, value.to_bytes(width, "big")))
    m.what.append(f"device body word at {at:#x} ({width} bytes): {original:#x} -> {value:#x}")
    m.ram_data_only = False


def _page_data(m: Mutant, rng: random.Random) -> None:
    start, end = rng.choice(m.base.page_data)
    at = rng.randrange(start, end - 16)
    m.patches.append((at, rng.randbytes(16)))
    m.what.append(f"16 random bytes at {at:#x} (RAM page data)")


# weights: where parsers break, and a share of harmless RAM-data edits (their saves must resume)
_KINDS = (
    (15, lambda m, r: _truncate(m, r, True)),
    (5, lambda m, r: _truncate(m, r, False)),
    (25, _flip),
    (12, _run),
    (25, _lie),
    (8, _json_lie),
    (10, _body_word),
    (5, _page_data),
)
_NEEDS = {_json_lie: "JSON number", _body_word: "device body"}


def make_mutant(base: Base, seed: int, number: int) -> Mutant:
    rng = random.Random(f"{seed}/{number}")
    m = Mutant(number, base, size=base.size)
    weights = [
        0
        if (k is _page_data and not base.page_data) or (k in _NEEDS and _NEEDS[k] not in base.regions)
        else w
        for w, k in _KINDS
    ]
    for _ in range(1 if rng.random() < 0.7 else rng.choice((2, 3))):
        kind = rng.choices([k for _, k in _KINDS], weights)[0]
        kind(m, rng)
    return m


def write_mutant(m: Mutant, path: str) -> None:
    """The mutant as a file (sparse where the base is: a mapped-ram stream stays cheap)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for off, blob in m.base.extents:
            if off < m.size:
                os.pwrite(fd, blob[: m.size - off], off)
        for off, data in m.patches:
            if off < m.size:
                os.pwrite(fd, data[: m.size - off], off)
        os.ftruncate(fd, m.size)
    finally:
        os.close(fd)
