"""The device tree: every FULL section decoded into named fields with their stream offsets.

The schema is the VMDESCRIPTION JSON of the same stream; without one, the layouts learned from QEMU
builds (library.py) where one fits every byte; else a hand decoder (x86 `cpu`), else raw bytes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import EditError
from ..stream.index import Section, StreamIndex
from . import library
from .fields import Array, Group, Leaf, Node

_INDEXED = re.compile(r"(.+)\[(\d+)\]")  # an array element's name, as the JSON's "index" gives it

# A hand decoder: (field json, path, offset, read) -> Node, or None to keep the generic form.
BlobDecoder = Callable[[dict, str, int, Callable[[int, int], bytes], str], Node | None]
_blob_decoders: dict[str, BlobDecoder] = {}
SectionDecoder = Callable[[Section, str], Group | None]
_section_decoders: dict[str, SectionDecoder] = {}


def register_blob_decoder(type_name: str, decoder: BlobDecoder) -> None:
    _blob_decoders[type_name] = decoder


def register_section_decoder(idstr: str, decoder: SectionDecoder) -> None:
    """For sections that arrive without a description (suppress-vmdesc)."""
    _section_decoders[idstr] = decoder


@dataclass
class Device:
    key: str  # how users name it: idstr, or idstr[instance] when the idstr repeats
    section: Section
    root: Group
    schema: str = "raw"  # where the field names come from: VMDESCRIPTION, library (source), layout

    @property
    def idstr(self) -> str:
        return self.section.idstr

    @property
    def model(self) -> str:
        """The vmsd name, e.g. 'e1000' for '0000:00:03.0/e1000'."""
        return self.root.vmsd_name or self.idstr.rsplit("/", 1)[-1]


class DeviceTree:
    def __init__(self, index: StreamIndex, read: Callable[[int, int], bytes]):
        self.read = read
        self.devices: list[Device] = []
        self.warnings: list[str] = []
        self._limit = 0  # bytes of the section being decoded: no field may claim more
        counts: dict[str, int] = {}
        for sec in index.devices:
            counts[sec.idstr] = counts.get(sec.idstr, 0) + 1
        seen: dict[str, int] = {}
        # Without a VMDESCRIPTION, the layouts learned from QEMU builds (devices/library.py).
        self._learned = (
            library.load().describe_all(index.devices, read, index.machine_type or None)
            if any(sec.description is None for sec in index.devices)
            else {}
        )
        for i, sec in enumerate(index.devices):
            key = (
                sec.idstr
                if counts[sec.idstr] == 1 and sec.instance_id == 0
                else f"{sec.idstr}[{sec.instance_id}]"
            )
            seen[key] = seen.get(key, 0) + 1
            if seen[key] > 1:  # e.g. one legacy `slirp` section per -netdev user, all instance 0
                key = f"{key}#{seen[key]}"
            root, schema = self._decode_section(sec, key, self._learned.get(i))
            self.devices.append(Device(key, sec, root, schema))
        self._by_key = {d.key: d for d in self.devices}

    # -- building -------------------------------------------------------------------------------

    def _decode_section(self, sec: Section, key: str, learned: library.Match | None) -> tuple[Group, str]:
        desc, schema = sec.description, "VMDESCRIPTION"
        if desc is None and learned is not None:
            desc, schema = learned.description, f"layouts of {learned.source}"
        if desc is not None and "vmsd_name" in desc:
            group = Group(
                key,
                key,
                "device",
                sec.body_offset,
                sec.body_size,
                vmsd_name=desc["vmsd_name"],
                version=desc.get("version"),
            )
            self._limit = sec.body_size
            try:
                end = self._vmsd(desc, group, sec.body_offset)
            except (KeyError, TypeError, ValueError, AttributeError, RecursionError):
                end = -1  # the JSON is untrusted: a missing key or a wrong type is a lie too
            if end != sec.body_end:  # the JSON lied somewhere (see stream-format.md 2.5)
                self.warnings.append(f"section {key!r}: its {schema} does not fit the bytes; shown raw")
                return self._raw(sec, key), "raw"
            return group, schema
        decoder = _section_decoders.get(sec.idstr)
        if decoder is not None:
            decoded = decoder(sec, key)
            if decoded is not None:
                return decoded, "built-in layout"
        return self._raw(sec, key), "raw"

    def _raw(self, sec: Section, key: str) -> Group:
        group = Group(
            key, key, "device", sec.body_offset, sec.body_size, vmsd_name=None, version=sec.version_id
        )
        group.members.append(Leaf("data", f"{key}/data", "buffer", sec.body_offset, sec.body_size))
        return group

    def _vmsd(self, vmsd: dict, group: Group, pos: int) -> int:
        for f in vmsd.get("fields", ()):
            pos = self._field(f, group, pos)
        prefix = (vmsd.get("vmsd_name") or "") + "/"
        for sub in vmsd.get("subsections", ()):
            full = sub.get("vmsd_name", "")
            name = full[len(prefix) :] if full.startswith(prefix) else full
            start = pos
            pos += 1 + 1 + len(full) + 4  # 0x05, counted name, be32 version
            child = Group(
                name,
                f"{group.path}/{name}",
                "subsection",
                start,
                0,
                vmsd_name=full,
                version=sub.get("version"),
            )
            pos = self._vmsd(sub, child, pos)
            child.size = pos - start
            group.members.append(child)
        return pos

    def _field(self, f: dict, group: Group, pos: int) -> int:
        name = f["name"]
        size = f.get("size", 0)
        count = f.get("array_len", 1)
        # The JSON is untrusted: shapes it cannot have are lies, and the section is shown raw.
        if not isinstance(name, str) or not isinstance(f.get("type"), str):
            raise ValueError("field without a name or type")
        if not isinstance(size, int) or not isinstance(count, int) or size < 0 or count < 0:
            raise ValueError(f"field {name!r} has a bad size or count")
        if size * count > self._limit or (size == 0 and count > 1):
            raise ValueError(f"field {name!r} is larger than its section")
        if "index" in f:
            name = f"{name}[{f['index']}]"
        elif group.members and (last := _INDEXED.fullmatch(group.members[-1].name)) and last[1] == name:
            # QEMU writes "index" only while more elements follow (vmsd_desc_field_start gets the
            # count of those left), so an array's last element comes without one
            name = f"{name}[{int(last[2]) + 1}]"
        path = f"{group.path}/{name}"
        if "array_len" in f:
            node = Array(
                name,
                path,
                f["type"] + "[]",
                pos,
                size * count,
                count=count,
                element_size=size,
                make_element=lambda i, p, off, f=f, limit=self._limit: self._lazy_element(
                    f, i, p, off, limit
                ),
            )
            if count and f["type"] in ("struct", "vstruct", "tmp"):
                node.element(0)  # elements share one layout: a lie in it shows now, not on first use
        else:
            node = self._element(f, name, path, pos)
        group.members.append(node)
        return pos + size * count

    def _lazy_element(self, f: dict, i: int, path: str, pos: int, limit: int) -> Node:
        """An array element made on first use, checked against its own section's size."""
        outer, self._limit = self._limit, limit
        try:
            return self._element(f, f"[{i}]", path, pos)
        finally:
            self._limit = outer

    def _element(self, f: dict, name: str, path: str, pos: int) -> Node:
        kind = f["type"]
        size = int(f.get("size", 0))
        if kind in ("struct", "vstruct") and isinstance(f.get("struct"), dict):
            st = f["struct"]
            g = Group(name, path, kind, pos, size, vmsd_name=st.get("vmsd_name"), version=st.get("version"))
            self._vmsd(st, g, pos)
            return g
        if kind == "tmp" and "fields" in f:
            g = Group(name, path, kind, pos, size, vmsd_name=f.get("vmsd_name"), version=f.get("version"))
            self._vmsd(f, g, pos)
            return g
        decoder = _blob_decoders.get(kind)
        if decoder is not None:
            decoded = decoder(f, path, pos, self.read, name)
            if decoded is not None:
                return decoded
        return Leaf(name, path, kind, pos, size)

    # -- lookup ---------------------------------------------------------------------------------

    def device(self, name: str) -> Device | None:
        """By key, or by a unique model name / last idstr component ('e1000', 'virtio-net')."""
        if name in self._by_key:
            return self._by_key[name]
        matches = [d for d in self.devices if d.model == name or d.idstr.rsplit("/", 1)[-1] == name]
        if len(matches) == 1:
            return matches[0]
        if name.endswith("[0]") and name[:-3] in self._by_key:
            return self._by_key[name[:-3]]
        return None

    def resolve(self, path: str) -> Node:
        """'0000:00:03.0/e1000/mac_reg[0][1]', 'e1000/full_mac_state/mac_reg', 'cpu[1]/env.eip'."""
        path = path.strip().strip("/")
        device, rest = self._split_device(path)
        node: Node = device.root
        for part in [p for p in rest.split("/") if p]:
            nxt = _step(node, part)
            if nxt is None:
                if isinstance(node, Array):
                    names = f"[0]..[{node.count - 1}]"
                else:
                    children = [c.name for c in node.children()]
                    names = ", ".join(children[:12]) + (
                        f", ... ({len(children)} in all)" if len(children) > 12 else ""
                    )
                raise EditError(f"{node.path} has no field {part!r} (it has: {names})")
            node = nxt
        return node

    def split_device(self, path: str) -> tuple[Device, str]:
        """'e1000/mac_reg[0]' -> (the e1000 device, 'mac_reg[0]'); EditError naming the choices."""
        return self._split_device(path)

    def _split_device(self, path: str) -> tuple[Device, str]:
        parts = path.split("/")
        for n in range(len(parts), 0, -1):
            d = self.device("/".join(parts[:n]))
            if d is not None:
                return d, "/".join(parts[n:])
        raise EditError(
            f"no device {parts[0]!r} in this snapshot "
            "(the device list: `vmstate devices SNAP`, or vmstate-devices in gdb)"
        )

    def complete(self, prefix: str) -> list[str]:
        """Tab completion: paths that extend ``prefix`` by one component."""
        if "/" not in prefix and self.device(prefix) is None:
            names = {d.key for d in self.devices} | {d.model for d in self.devices}
            return sorted(n for n in names if n.startswith(prefix))
        head, _, tail = prefix.rpartition("/")
        try:
            node = self.resolve(head)
        except EditError:
            return sorted(d.key + "/" for d in self.devices if d.key.startswith(prefix))
        if isinstance(node, Array):
            return [f"{head}[{i}]" for i in range(min(node.count, 64))]
        return sorted(f"{head}/{c.name}" for c in node.children() if c.name.startswith(tail))


def _step(node: Node, part: str) -> Node | None:
    """One path component: a child name as the JSON spells it ('mac_reg[0]' is one name), possibly
    followed by element indexes ('env.regs[3]', 'mac_reg[0][1]')."""
    found = node.child(part)
    if found is not None:
        return found
    cuts = [m.start() for m in re.finditer(r"\[", part)]
    for cut in reversed(cuts):
        head, tail = part[:cut], part[cut:]
        base = node.child(head) if head else node
        if base is None:
            continue
        for index in re.findall(r"\[[^\]]*\]", tail):
            base = base.child(index) if base is not None else None
        if base is not None and "".join(re.findall(r"\[[^\]]*\]", tail)) == tail:
            return base
    return None
