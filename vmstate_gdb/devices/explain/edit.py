"""Edits by meaning: ``DEVICE.REGISTER[.PART] = VALUE`` (``e1000.RCTL.EN=0``, ``apic[1].LVTT.masked=1``,
``mc146818rtc.time=2031-05-06 07:08:09``) become writes of the raw fields the explainers name as
their source, so the overlay, the writer and QEMU see ordinary field edits. A value that is more
than one field (the RTC's time) has its own setter, which keeps every copy consistent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ...errors import EditError
from ..tree import Device, DeviceTree
from . import Explained, Memory, Value, explain, value_text

_BYTE_OF_BUFFER = re.compile(r"^(?P<field>.+)\[(?P<index>0x[0-9a-fA-F]+|\d+)\]$")
_BYTES_OF_BUFFER = re.compile(r"^(?P<field>.+)\+(?P<offset>0x[0-9a-fA-F]+|\d+)$")  # PCI config space
_TRUE = {"1": 1, "true": 1, "on": 1, "yes": 1, "0": 0, "false": 0, "off": 0, "no": 0}


@dataclass
class Target:
    device: Device
    value: Value
    part: str | None  # a named bit field of the register, or the whole register

    @property
    def name(self) -> str:
        return f"{self.device.key}.{self.value.name}" + (f".{self.part}" if self.part else "")


def find(tree: DeviceTree, name: str, memory: Memory | None = None) -> Target | None:
    """The register ``name`` means, or None when ``name`` does not start with a device and a
    dot (then it is a raw field path). EditError when the device is known but not the register."""
    for i, ch in enumerate(name):
        if ch != ".":
            continue
        device = tree.device(name[:i])
        if device is None:
            continue
        return _register(tree, device, name[i + 1 :], memory)
    return None


def _register(tree: DeviceTree, device: Device, rest: str, memory: Memory | None) -> Target:
    views: list[Explained] = explain(tree, device, memory)
    values = [v for x in views for v in x.values]
    for v in sorted(values, key=lambda v: -len(v.name)):  # 'T0.config' before 'T0'
        if rest == v.name:
            return Target(device, v, None)
        if rest.startswith(v.name + "."):
            part = rest[len(v.name) + 1 :]
            if part not in v.bits:
                known = ", ".join(v.bits) or "none"
                raise EditError(f"{device.key}.{v.name} has no part {part!r} (parts: {known})")
            return Target(device, v, part)
    if not values:
        raise EditError(f"{device.key} ({device.model}) has no explainer: set its raw fields by path")
    import difflib

    close = difflib.get_close_matches(rest.split(".")[0], [v.name for v in values], n=3)
    if close:
        raise EditError(f"{device.key} has no register {rest!r}; did you mean {' or '.join(close)}?")
    names = ", ".join(v.name for v in values[:16]) + (" ..." if len(values) > 16 else "")
    raise EditError(f"{device.key} has no register {rest!r} (registers: {names}; all: devices --explain)")


def plan(tree: DeviceTree, target: Target, text: str) -> list[tuple[str, int | bytes]]:
    """The raw writes (full field path, new value) that give ``target`` the value ``text``."""
    v, device = target.value, target.device

    def value(rel: str):
        return tree.resolve(f"{device.key}/{rel}").value(tree.read)  # type: ignore[attr-defined]

    if not v.settable:
        if v.hint:
            raise EditError(f"{target.name} cannot be set by name: {v.hint}")
        if v.source.startswith("guest memory"):
            raise EditError(
                f"{target.name} is in guest memory ({v.source[13:]}): write it with "
                "--write ADDR=HEX --phys (vmstate patch), or in gdb after monitor phys on"
            )
        raise EditError(f"{target.name} is shown from {v.source} and more; set the fields it is made of")
    if v.setter is not None and target.part is None:
        return [(f"{device.key}/{rel}", new) for rel, new in v.setter(device, value, text)]
    number = _number(text, target.name)
    path, offset, width = _location(tree, device, v, target.name)
    raw = None if offset is None else bytearray(value(path))
    current = value(path) if raw is None else int.from_bytes(raw[offset : offset + width], "little")
    if not isinstance(current, int):
        raise EditError(f"{target.name} comes from {v.source}, which is not an integer field")
    if target.part is None and v.limit is not None and number > v.limit:
        raise EditError(f"{target.name}: {text} is beyond what it can hold here (at most {v.limit:#x})")
    if target.part is not None:
        low, bits = v.bits[target.part]
        if not 0 <= number < 1 << bits:
            raise EditError(f"{target.name}: {text} does not fit {bits} bit(s)")
        number = current & ~((1 << bits) - 1 << low) | number << low
    if raw is None:
        return [(f"{device.key}/{path}", number)]  # the field's own encoder checks the range
    if not 0 <= number < 1 << 8 * width:
        raise EditError(f"{target.name}: {text} does not fit {8 * width} bits")
    raw[offset : offset + width] = number.to_bytes(width, "little")
    return [(f"{device.key}/{path}", bytes(raw))]


def _location(tree: DeviceTree, device: Device, v: Value, name: str) -> tuple[str, int | None, int]:
    """Where a register lives: (field path, None, 0) for an integer field, or (buffer field path,
    byte offset, width) for bytes inside a buffer: "cmos_data[0x0b]" is one byte, PCI config
    space's "config[0]+0x4" is ``v.width`` bytes, little-endian."""

    def exists(path: str) -> bool:
        try:
            tree.resolve(f"{device.key}/{path}")
        except EditError:
            return False
        return True

    if exists(v.source):
        return v.source, None, 0
    m = _BYTE_OF_BUFFER.match(v.source)
    if m and exists(m["field"]):
        return m["field"], int(m["index"], 0), 1
    m = _BYTES_OF_BUFFER.match(v.source)
    if m and v.width and exists(m["field"]):
        return m["field"], int(m["offset"], 0), v.width
    raise EditError(f"{name} is shown from {v.source}, which cannot be set by name; set the raw field")


def _number(text: str, name: str) -> int:
    t = text.strip().lower()
    if t in _TRUE:
        return _TRUE[t]
    try:
        return int(t, 0)
    except ValueError:
        raise EditError(f"{name}: {text!r} is not a number") from None


def set_by_name(snap, name: str, text: str) -> list[str] | None:
    """Apply ``name = text`` to ``snap``'s overlay; the lines describing it, or None when ``name``
    is a raw field path (the caller sets it as one)."""
    tree = snap.devices
    memory = snap.physical.read
    target = find(tree, name, memory)
    if target is None:
        return None
    before = target.value
    writes = plan(tree, target, text)
    for path, new in writes:
        snap.set_field(path, new)
    after = _register(tree, target.device, target.name[len(target.device.key) + 1 :], memory).value
    shown = value_text(before.value), value_text(after.value)
    fields = ", ".join(p.split("/", 1)[1] if "/" in p else p for p, _ in writes)
    return [f"{target.name}: {shown[0]} -> {shown[1]} ({after.text}) [{fields}]"]
