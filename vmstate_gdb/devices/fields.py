"""Typed nodes of the device tree. A node holds a stream offset and a size, never a copy of the bytes.

Values are read through a callable so that pending edits (the overlay) are seen by every reader.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

ByteReader = Callable[[int, int], bytes]

# VMStateInfo names whose wire form is one big-endian integer (migration/vmstate-types.c).
_SIGNED = {"int8", "int16", "int32", "int64", "int32 le", "int32 equal", "int64 equal", "timer"}
_UNSIGNED = {
    "bool",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "uint8 equal",
    "uint16 equal",
    "uint32 equal",
    "uint64 equal",
    "uint64_t",
    "int64_t",
}
INTEGER_TYPES = _SIGNED | _UNSIGNED


@dataclass
class Node:
    name: str
    path: str
    type: str
    offset: int  # stream offset of the first byte
    size: int  # total bytes on the wire

    @property
    def is_leaf(self) -> bool:
        return True

    def children(self) -> list[Node]:
        return []

    def child(self, name: str) -> Node | None:
        for c in self.children():
            if c.name == name:
                return c
        return None

    def walk(self) -> Iterator[Node]:
        yield self
        for c in self.children():
            yield from c.walk()


@dataclass
class Leaf(Node):
    """A scalar or an opaque buffer."""

    @property
    def is_integer(self) -> bool:
        return self.type in INTEGER_TYPES and self.size in (1, 2, 4, 8)

    @property
    def signed(self) -> bool:
        return self.type in _SIGNED

    def value(self, read: ByteReader) -> int | bytes:
        raw = read(self.offset, self.size)
        if self.is_integer:
            return int.from_bytes(raw, "big", signed=self.signed)
        return raw

    def encode(self, value: int | bytes) -> bytes:
        """Wire bytes for a new value, same size; ValueError if it does not fit."""
        if self.is_integer:
            if not isinstance(value, int):
                raise ValueError(f"{self.path} is an integer field ({self.type})")
            lo, hi = (
                (-(1 << (8 * self.size - 1)), (1 << (8 * self.size - 1)) - 1)
                if self.signed
                else (0, (1 << (8 * self.size)) - 1)
            )
            if self.type == "bool":
                hi = 1
            if not lo <= value <= hi:
                raise ValueError(f"{value} is out of range for {self.path} ({self.type}, {lo}..{hi})")
            return value.to_bytes(self.size, "big", signed=self.signed)
        if isinstance(value, int):
            raise ValueError(f"{self.path} is a {self.size}-byte buffer; give bytes (hex)")
        if len(value) != self.size:
            raise ValueError(f"{self.path} holds {self.size} bytes, got {len(value)}")
        return bytes(value)


@dataclass
class Group(Node):
    """A struct, a device, a subsection, or a decoded opaque blob: named children."""

    members: list[Node] = field(default_factory=list)
    vmsd_name: str | None = None
    version: int | None = None

    @property
    def is_leaf(self) -> bool:
        return False

    def children(self) -> list[Node]:
        return self.members


@dataclass
class Array(Node):
    """``count`` equal elements; element nodes are made on demand (e1000 keeps 32768 registers)."""

    count: int = 0
    element_size: int = 0
    make_element: Callable[[int, str, int], Node] | None = None

    @property
    def is_leaf(self) -> bool:
        return False

    def element(self, i: int) -> Node:
        if not 0 <= i < self.count:
            raise IndexError(f"{self.path} has {self.count} elements; index {i} is out of range")
        assert self.make_element is not None
        return self.make_element(i, f"{self.path}[{i}]", self.offset + i * self.element_size)

    def children(self) -> list[Node]:
        return [self.element(i) for i in range(self.count)]

    def child(self, name: str) -> Node | None:
        if name.startswith("[") and name.endswith("]"):
            try:
                return self.element(int(name[1:-1], 0))
            except (ValueError, IndexError):
                return None
        return None


def not_a_value(node: Node) -> str:
    """Why a path names no single value, for error messages."""
    if isinstance(node, Array):
        return f"{node.path} is an array of {node.count}; name an element, e.g. {node.path}[0]"
    return f"{node.path} is a group of {len(node.children())} fields; name one of them"
