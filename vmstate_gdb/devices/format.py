"""Readable values for people: MACs as aa:bb:cc:dd:ee:ff, integers in hex, buffers as hex."""

from __future__ import annotations

from .fields import Array, Leaf, Node
from .nics import format_mac

_MAC_NAMES = ("mac", "macaddr", "phys", "permanent_mac", "conf.macaddr", "core.permanent_mac")


def looks_like_mac(node: Node) -> bool:
    return node.size == 6 and node.name.split("/")[-1] in _MAC_NAMES


def format_value(node: Leaf, value: int | bytes, limit: int = 64) -> str:
    if isinstance(value, int):
        if node.type == "bool":
            return "true" if value else "false"
        return f"{value:#x}" if value < 0 or value > 9 else str(value)
    if looks_like_mac(node):
        return format_mac(value)
    if node.name == "runstate" or node.name.endswith("idstr"):
        text = value.split(b"\0", 1)[0]
        if text.isascii():
            return repr(text.decode())
    if len(value) > limit:
        return f"{value[:limit].hex()}... ({len(value)} bytes)"
    return value.hex()


def to_plain(node: Node, read, depth: int = 64, array_limit: int = 4096):
    """A JSON-able tree: leaves as {type,size,offset,value}, groups as dicts, arrays as lists."""
    if isinstance(node, Leaf):
        value = node.value(read)
        out = {"type": node.type, "size": node.size, "offset": node.offset}
        out["value"] = (
            value if isinstance(value, int) else (format_mac(value) if looks_like_mac(node) else value.hex())
        )
        return out
    if isinstance(node, Array):
        if node.count > array_limit or depth <= 0:
            return {
                "type": node.type,
                "size": node.size,
                "offset": node.offset,
                "count": node.count,
                "value": read(node.offset, node.size).hex(),
            }
        return [to_plain(node.element(i), read, depth - 1, array_limit) for i in range(node.count)]
    if depth <= 0:
        return {"type": node.type, "size": node.size, "offset": node.offset}
    return {c.name: to_plain(c, read, depth - 1, array_limit) for c in node.children()}
