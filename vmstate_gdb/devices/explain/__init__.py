"""Devices explained: the raw fields of a device read as the hardware's registers, with flags named.

On top of the generic tree, not instead of it: every value names the raw field it comes from, so it
can be found and edited in place. One module per device family registers its explainers here by
vmsd name.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from ..tree import Device, DeviceTree

#: a composite value's writer: (device, value reader, new text) -> the raw fields to write
Setter = Callable[..., list[tuple[str, "int | bytes"]]]


@dataclass
class Value:
    name: str  # the register's name, as the datasheet or QEMU's monitor spells it
    value: int | str | list[int]
    text: str  # decoded: flags, modes, vectors
    source: str  # the raw field path it comes from
    #: parts that can be set by name (REGISTER.PART): (lowest bit, width) in the source field
    bits: dict[str, tuple[int, int]] = field(default_factory=dict)
    setter: Setter | None = None  # set from text, for values that are not one raw integer
    settable: bool = True  # False: shown from several fields or from guest memory
    limit: int | None = None  # the largest value the register can hold here (a ring index...)
    hint: str = ""  # how to change it instead, where it cannot be set by name
    width: int = 0  # bytes, for a register inside a buffer field (source "FIELD+OFFSET")

    def as_dict(self) -> dict:
        out = {"name": self.name, "value": self.value, "text": self.text, "source": self.source}
        if self.bits:
            out["bits"] = {k: list(v) for k, v in self.bits.items()}
        return out


@dataclass
class Explained:
    device: str
    kind: str  # "local APIC", "i8259", ...
    values: list[Value] = field(default_factory=list)

    def add(
        self, name: str, value, text: str, source: str, bits=None, setter=None, settable=True, **more
    ) -> None:
        self.values.append(Value(name, value, text, source, dict(bits or {}), setter, settable, **more))

    def get(self, name: str):
        for v in self.values:
            if v.name == name:
                return v.value
        raise KeyError(name)

    def as_dict(self) -> dict:
        return {"device": self.device, "kind": self.kind, "registers": [v.as_dict() for v in self.values]}


def value_text(value: int | str | list[int]) -> str:
    """A register's value as files and messages write it: integers in hex, vector lists spaced."""
    if isinstance(value, int):
        return f"{value:#x}"
    if isinstance(value, list):
        return " ".join(map(str, value))
    return str(value)


def flags(raw: int, names: dict[int, str]) -> str:
    """The names of the bits set in ``raw`` ({bit: name}), or "none"."""
    return " ".join(n for b, n in names.items() if raw >> b & 1) or "none"


def bits(names: dict[int, str]) -> dict[str, tuple[int, int]]:
    """One-bit parts settable by name, from the same {bit: name} table ("SAM(only)" -> "SAM")."""
    return {n.split("(")[0]: (b, 1) for b, n in names.items()}


Explainer = Callable[[Device, Callable[[str], object]], Explained | None]
_EXPLAINERS: dict[str, Explainer] = {}
_GENERIC: list[Explainer] = []  # tried on every device (PCI config space)


def register(vmsd_name: str, fn: Explainer) -> None:
    _EXPLAINERS[vmsd_name] = fn


def register_generic(fn: Explainer) -> None:
    _GENERIC.append(fn)


Memory = Callable[[int, int], bytes]


def explain(tree: DeviceTree, device: Device, memory: Memory | None = None) -> list[Explained]:
    """The semantic views of ``device`` (its bus function, then its own registers); empty when
    no explainer knows it. ``memory`` reads guest-physical memory, for what a device keeps
    there (virtio rings, descriptors)."""
    from ...errors import EditError

    _load()

    def node(rel: str):
        return tree.resolve(f"{device.key}/{rel}")

    def value(rel):
        n = rel if not isinstance(rel, str) else node(rel)
        return n.value(tree.read)  # type: ignore[attr-defined]

    # what an explainer may ask besides field values: the node, its raw bytes, guest memory
    value.node = node  # type: ignore[attr-defined]
    value.raw = lambda rel: tree.read(node(rel).offset, node(rel).size)  # type: ignore[attr-defined]
    value.memory = memory  # type: ignore[attr-defined]

    out = []
    for fn in [*_GENERIC, _EXPLAINERS.get(device.model)]:
        if fn is None:
            continue
        try:
            x = fn(device, value)
        except (EditError, KeyError, TypeError, ValueError, AttributeError, IndexError, struct.error):
            x = None  # a raw (undescribed) section, or a field this build names otherwise
        if x is not None:
            out.append(x)
    return out


def explain_all(tree: DeviceTree, memory: Memory | None = None) -> list[Explained]:
    return [x for d in tree.devices for x in explain(tree, d, memory)]


def render(found: list[Explained]) -> str:
    """The text view the CLI and gdb print: one register per line, its raw source in brackets."""
    lines = []
    for x in found:
        lines.append(f"{x.device}: {x.kind}")
        width = max([14, *(len(v.name) for v in x.values)])
        for v in x.values:
            shown = v.value if isinstance(v.value, str) else ""
            shown = f"{v.value:#x}" if isinstance(v.value, int) else shown
            lines.append(f"  {v.name:<{width}} {shown:<20} {v.text}   [{v.source}]")
    return "\n".join(lines)


def for_path(tree: DeviceTree, path: str, memory: Memory | None = None) -> list[Explained]:
    """Every device's views, or those of the device ``path`` names (EditError when none)."""
    from ...errors import EditError

    if not path:
        return explain_all(tree, memory)
    device, _ = tree.split_device(path)
    found = explain(tree, device, memory)
    if not found:
        raise EditError(f"no explanation for {device.key} ({device.model}) yet: its fields are in `devices`")
    return found


def _load() -> None:
    from . import ahci, e1000, ide, interrupts, pci, rtl8139, serial, timers, virtio  # noqa: F401  (register them)
