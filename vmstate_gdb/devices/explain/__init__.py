"""Devices explained: the raw fields of a device read as the hardware's registers, with flags named.

On top of the generic tree, not instead of it: every value names the raw field it comes from, so it
can be found and edited in place. One module per device family registers its explainers here by
vmsd name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..tree import Device, DeviceTree


@dataclass
class Value:
    name: str  # the register's name, as the datasheet or QEMU's monitor spells it
    value: int | str | list[int]
    text: str  # decoded: flags, modes, vectors
    source: str  # the raw field path it comes from

    def as_dict(self) -> dict:
        return {"name": self.name, "value": self.value, "text": self.text, "source": self.source}


@dataclass
class Explained:
    device: str
    kind: str  # "local APIC", "i8259", ...
    values: list[Value] = field(default_factory=list)

    def add(self, name: str, value, text: str, source: str) -> None:
        self.values.append(Value(name, value, text, source))

    def get(self, name: str):
        for v in self.values:
            if v.name == name:
                return v.value
        raise KeyError(name)

    def as_dict(self) -> dict:
        return {"device": self.device, "kind": self.kind, "registers": [v.as_dict() for v in self.values]}


Explainer = Callable[[Device, Callable[[str], object]], Explained | None]
_EXPLAINERS: dict[str, Explainer] = {}


def register(vmsd_name: str, fn: Explainer) -> None:
    _EXPLAINERS[vmsd_name] = fn


def explain(tree: DeviceTree, device: Device) -> Explained | None:
    """The semantic view of ``device``, or None when no explainer knows its model."""
    _load()
    fn = _EXPLAINERS.get(device.model)
    if fn is None:
        return None

    def value(rel: str):
        node = tree.resolve(f"{device.key}/{rel}")
        return node.value(tree.read)  # type: ignore[attr-defined]

    try:
        return fn(device, value)
    except Exception as e:  # a raw (undescribed) section or a field this build names otherwise
        from ...errors import EditError

        if isinstance(e, EditError | KeyError | TypeError | ValueError | AttributeError):
            return None
        raise


def explain_all(tree: DeviceTree) -> list[Explained]:
    return [x for d in tree.devices if (x := explain(tree, d)) is not None]


def _load() -> None:
    from . import interrupts  # noqa: F401  (registers its explainers)
