"""Device state as a file a person reads and edits (XML through xmltodict, or JSON), and back.

Export writes every device section with its fields in stream order: type, size and value of each
leaf, arrays item by item, structs and subsections nested. Values are in their usual notation:
integers in hex (decimal below 10), booleans as true/false, MACs as aa:bb:cc:dd:ee:ff, printable
strings as text, other buffers and byte arrays as hex. A ``<nics>`` list gives each NIC's MAC once;
changing it there changes every copy the device keeps (as ``vmstate patch --mac`` does).

Import reads such a file and applies only what differs from the snapshot. Entries left out are
unchanged. Unknown devices or fields, a changed type, size or count, and values out of range are
refused with one error naming the path, before anything is changed.

The JSON form is the same tree: ``{"devices": [{"name", ..., "fields": [...]}]}``.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from dataclasses import field as dataclass_field

import xmltodict

from ..devices.fields import Array, Group, Leaf, Node
from ..devices.format import looks_like_mac
from ..devices.nics import format_mac, parse_mac
from ..errors import EditError, FormatError
from ..snapshot import Snapshot

FORMAT_VERSION = "1"
ROOT_TAG = "vmstate-devices"
_HEX_GROUP = 32  # bytes per space-separated group of long hex values
_PRINTABLE = set(string.printable.encode()) - set(b"\t\n\r\x0b\x0c")
_BYTE_TYPES = {"uint8", "int8", "uint8 equal", "buffer"}


# -- values ---------------------------------------------------------------------------------


def encoding_of(node: Leaf, value: bytes) -> str:
    """How a buffer is written: 'mac', 'text' (printable, NUL padded) or 'hex'."""
    if looks_like_mac(node):
        return "mac"
    text = value.rstrip(b"\0")
    if len(text) >= 2 and all(b in _PRINTABLE for b in text) and text == text.strip():
        return "text"
    return "hex"


def format_int(node: Leaf, value: int) -> str:
    if node.type == "bool":
        return "true" if value else "false"
    if -10 < value < 10:
        return str(value)
    return f"-{-value:#x}" if value < 0 else f"{value:#x}"


def format_bytes(value: bytes, encoding: str) -> str:
    if encoding == "mac":
        return format_mac(value)
    if encoding == "text":
        return value.rstrip(b"\0").decode("ascii")
    hexed = value.hex()
    step = 2 * _HEX_GROUP
    return " ".join(hexed[i : i + step] for i in range(0, len(hexed), step))


def parse_leaf_value(node: Leaf, text, encoding: str | None) -> bytes:
    """The new wire bytes for ``text``; EditError naming the path when it does not fit."""
    text = "" if text is None else text
    try:
        if node.is_integer:
            if isinstance(text, bool):
                number = int(text)
            elif isinstance(text, int):
                number = text
            else:
                t = str(text).strip().lower()
                number = {"true": 1, "false": 0}[t] if t in ("true", "false") else int(t, 0)
            return node.encode(number)
        return node.encode(parse_bytes(node.size, str(text), encoding or "hex", node.path))
    except (ValueError, KeyError):
        raise EditError(_value_error(node, text)) from None


def _value_error(node: Leaf, text) -> str:
    if node.is_integer:
        try:
            int(str(text).strip(), 0)
        except ValueError:
            pass
        else:
            bits = 8 * node.size
            lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if node.signed else (0, (1 << bits) - 1)
            if node.type == "bool":
                hi = 1
            return f"{node.path}: {str(text).strip()} is out of range ({node.type}, {lo:#x}..{hi:#x})"
        return f"{node.path}: {str(text)[:40]!r} is not an integer ({node.type}, {node.size} bytes)"
    return f"{node.path}: {str(text)[:40]!r} is not {node.size} bytes"


def parse_bytes(size: int, text: str, encoding: str, path: str) -> bytes:
    if encoding == "mac":
        return parse_mac(text.strip())
    if encoding == "text":
        raw = text.encode("ascii")
        if len(raw) > size:
            raise EditError(f"{path}: text of {len(raw)} bytes does not fit in {size}")
        return raw.ljust(size, b"\0")
    if encoding != "hex":
        raise EditError(f"{path}: unknown encoding {encoding!r} (hex, text or mac)")
    try:
        data = bytes.fromhex("".join(text.split()))
    except ValueError:
        raise EditError(f"{path}: {text[:40]!r} is not hex bytes") from None
    if len(data) != size:
        raise EditError(f"{path}: holds {size} bytes, the file gives {len(data)}")
    return data


# -- export ---------------------------------------------------------------------------------


def export_tree(snap: Snapshot) -> dict:
    """The neutral tree both file forms are made of."""
    read = snap.read_stream
    devices = []
    for dev in snap.devices.devices:
        root = dev.root
        entry = {
            "name": dev.key,
            "idstr": dev.idstr,
            "instance": dev.section.instance_id,
            "version": dev.section.version_id,
            "size": dev.section.body_size,
        }
        if root.vmsd_name:
            entry["vmsd"] = root.vmsd_name
        entry["fields"] = [_export_node(c, read) for c in root.children()]
        devices.append(entry)
    return {
        "format": FORMAT_VERSION,
        "snapshot": snap.path,
        "machine": snap.index.machine_type,
        "nics": [{"device": n.name, "model": n.model, "mac": format_mac(n.mac)} for n in snap.nics()],
        "devices": devices,
        "explained": export_explained(snap),
    }


def export_explained(snap: Snapshot) -> list[dict]:
    """The registers by name, next to the raw fields: editable where ``settable``; import sets
    those whose value was changed in the file (see explain/edit.py)."""
    from ..devices.explain import explain_all, value_text

    views = []
    for x in explain_all(snap.devices, snap.physical.read):
        regs = []
        for v in x.values:
            reg = {"name": v.name, "value": value_text(v.value), "source": v.source, "meaning": v.text}
            if not v.settable or isinstance(v.value, list):
                reg["settable"] = False
            regs.append(reg)
        views.append({"device": x.device, "kind": x.kind, "registers": regs})
    return views


def _export_node(node: Node, read, index: int | None = None) -> dict:
    entry: dict = {"name": node.name} if index is None else {"index": index}
    if isinstance(node, Leaf):
        entry.update(type=node.type, size=node.size)
        value = node.value(read)
        if isinstance(value, int):
            entry["value"] = format_int(node, value)
        else:
            enc = encoding_of(node, value)
            if enc != "hex":
                entry["encoding"] = enc
            entry["value"] = format_bytes(value, enc)
        return entry
    if isinstance(node, Array):
        entry.update(type=node.type, count=node.count, element_size=node.element_size)
        if node.count == 0:
            entry["items"] = []
            return entry
        first = node.element(0)
        if isinstance(first, Leaf) and first.type in _BYTE_TYPES and node.element_size == 1:
            entry["value"] = format_bytes(read(node.offset, node.size), "hex")
            return entry
        if isinstance(first, Leaf) and first.is_integer:
            raw = read(node.offset, node.size)
            w = node.element_size
            entry["items"] = [
                {
                    "index": i,
                    "value": format_int(
                        first, int.from_bytes(raw[i * w : (i + 1) * w], "big", signed=first.signed)
                    ),
                }
                for i in range(node.count)
            ]
            return entry
        entry["items"] = [_export_node(node.element(i), read, i) for i in range(node.count)]
        return entry
    entry["type"] = node.type
    if isinstance(node, Group) and node.vmsd_name:
        entry["vmsd"] = node.vmsd_name
    if isinstance(node, Group) and node.version is not None:
        entry["version"] = node.version
    entry["fields"] = [_export_node(c, read) for c in node.children()]
    return entry


def to_xml(tree: dict) -> str:
    root = {"@format": tree["format"], "@snapshot": tree["snapshot"], "@machine": tree["machine"] or ""}
    root["nics"] = (
        {"nic": [{"@device": n["device"], "@model": n["model"], "@mac": n["mac"]} for n in tree["nics"]]}
        if tree["nics"]
        else None
    )
    root["device"] = [_xml_entry(d, top=True) for d in tree["devices"]]
    root["explained"] = {
        "view": [
            {
                "@device": x["device"],
                "@kind": x["kind"],
                "register": [_xml_register(r) for r in x["registers"]],
            }
            for x in tree.get("explained") or []
        ]
    }
    return xmltodict.unparse({ROOT_TAG: root}, pretty=True, indent="  ")


def _xml_register(r: dict) -> dict:
    out = {"@name": r["name"], "@source": r["source"], "@meaning": r["meaning"], "#text": r["value"]}
    if r.get("settable") is False:
        out["@settable"] = "false"
    return out


def _xml_entry(entry: dict, top: bool = False) -> dict:
    out: dict = {}
    for key in (
        "name",
        "index",
        "idstr",
        "instance",
        "type",
        "vmsd",
        "version",
        "size",
        "count",
        "element_size",
        "encoding",
    ):
        if key in entry:
            out["@" + key.replace("_", "-")] = str(entry[key])
    if "value" in entry:
        out["#text"] = entry["value"]
    if "fields" in entry:
        out["field"] = [_xml_entry(e) for e in entry["fields"]]
    if "items" in entry:
        out["item"] = [_xml_entry(e) for e in entry["items"]]
    return out


def export_devices(snap: Snapshot, out: str, as_json: bool = False) -> dict:
    from ..writer import check_output_path
    from ..writer.emit import AtomicOutput

    check_output_path(snap, out)
    tree = export_tree(snap)
    text = json.dumps(tree, indent=1) + "\n" if as_json else to_xml(tree) + "\n"
    try:
        with AtomicOutput(out) as f:
            f.write(text.encode())
    except OSError as e:
        raise FormatError(f"cannot write: {e.strerror or e}", out) from None
    return tree


# -- import ---------------------------------------------------------------------------------


def load_tree(path: str) -> dict:
    """Read an exported file (XML or JSON, told by its first character) into the neutral tree."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise FormatError(f"cannot read: {e.strerror or e}", path) from None
    if text.lstrip().startswith("{"):
        try:
            tree = json.loads(text)
        except ValueError as e:
            raise FormatError(f"not valid JSON: {e}", path) from None
        if not isinstance(tree, dict) or not isinstance(tree.get("devices"), list):
            raise FormatError('not a device-state file: no "devices" list', path)
        return tree
    try:
        doc = xmltodict.parse(
            text, force_list=("device", "field", "item", "nic", "view", "register"), strip_whitespace=False
        )
    except Exception as e:  # expat's ExpatError, with line and column
        raise FormatError(f"not valid XML: {e}", path) from None
    root = doc.get(ROOT_TAG) if isinstance(doc, dict) else None
    if not isinstance(root, dict):
        raise FormatError(f"not a device-state file: the root element is not <{ROOT_TAG}>", path)
    nics = (root.get("nics") or {}).get("nic") or [] if isinstance(root.get("nics"), dict) else []
    return {
        "format": root.get("@format"),
        "snapshot": root.get("@snapshot"),
        "machine": root.get("@machine"),
        "nics": [{"device": n.get("@device"), "model": n.get("@model"), "mac": n.get("@mac")} for n in nics],
        "devices": [_from_xml(d) for d in root.get("device") or []],
        "explained": [
            {
                "device": v.get("@device"),
                "registers": [
                    {"name": r.get("@name"), "value": r.get("#text", "")} if isinstance(r, dict) else {}
                    for r in v.get("register") or []
                ],
            }
            for v in ((root.get("explained") or {}).get("view") or [])
            if isinstance(v, dict)
        ],
    }


def _from_xml(el) -> dict:
    if not isinstance(el, dict):  # <item>text</item> without attributes
        return {"value": el}
    out: dict = {}
    for key, value in el.items():
        if key.startswith("@"):
            name = key[1:].replace("-", "_")
            out[name] = (
                int(value)
                if name in ("index", "instance", "size", "count", "element_size", "version")
                and value.lstrip("-").isdigit()
                else value
            )
    if "#text" in el:
        out["value"] = el["#text"]
    if "field" in el:
        out["fields"] = [_from_xml(e) for e in el["field"]]
    if "item" in el:
        out["items"] = [_from_xml(e) for e in el["item"]]
    if not any(k in out for k in ("value", "fields", "items")):
        out["value"] = ""
    return out


@dataclass
class FieldChange:
    path: str
    offset: int
    data: bytes
    old: str
    new: str

    def describe(self) -> str:
        return f"{self.path}: {self.old} -> {self.new}"


@dataclass
class ImportResult:
    fields: list[FieldChange]
    mac_lines: list[str]
    macs: dict[str, str]  # old MAC -> new MAC, for the output's resume command line
    register_lines: list[str] = dataclass_field(default_factory=list)  # edits by register name

    @property
    def changed(self) -> bool:
        return bool(self.fields or self.macs or self.register_lines)


def plan_import(snap: Snapshot, tree: dict) -> list[FieldChange]:
    """Every field whose value in ``tree`` differs from the snapshot; validates everything first."""
    changes: list[FieldChange] = []
    seen: set[str] = set()
    for entry in tree.get("devices") or []:
        name = entry.get("name")
        dev = snap.devices.device(name) if isinstance(name, str) else None
        if dev is None or dev.key != name:
            raise EditError(f"unknown device {name!r}: not in this snapshot (see `vmstate devices`)")
        if name in seen:
            raise EditError(f"device {name} appears twice in the file")
        seen.add(name)
        _match_fields(snap, dev.root, entry.get("fields") or [], changes)
    return changes


def _match_fields(snap: Snapshot, group: Node, entries: list, changes: list[FieldChange]) -> None:
    names: set[str] = set()
    for e in entries:
        name = e.get("name")
        node = group.child(name) if isinstance(name, str) else None
        if node is None:
            raise EditError(
                f"{group.path}/{name}: no such field (it has: "
                f"{', '.join(c.name for c in group.children()[:12])})"
            )
        if name in names:
            raise EditError(f"{node.path}: appears twice in the file")
        names.add(name)
        _match(snap, node, e, changes)


def _match(snap: Snapshot, node: Node, e: dict, changes: list[FieldChange]) -> None:
    if "type" in e and str(e["type"]) != node.type:
        raise EditError(f"{node.path}: type changed from {node.type} to {e['type']} (types cannot change)")
    read = snap.read_stream
    if isinstance(node, Leaf):
        if "size" in e and int(e["size"]) != node.size:
            raise EditError(
                f"{node.path}: size changed from {node.size} to {e['size']} (sizes cannot change)"
            )
        if "fields" in e or "items" in e:
            raise EditError(f"{node.path}: is a single value ({node.type}), not a group")
        new = parse_leaf_value(node, e.get("value"), e.get("encoding"))
        old = read(node.offset, node.size)
        if new != old:
            changes.append(FieldChange(node.path, node.offset, new, _show(node, old), _show(node, new)))
        return
    if isinstance(node, Array):
        if "count" in e and int(e["count"]) != node.count:
            raise EditError(
                f"{node.path}: count changed from {node.count} to {e['count']} (arrays cannot grow)"
            )
        if "element_size" in e and int(e["element_size"]) != node.element_size:
            raise EditError(
                f"{node.path}: element size changed from {node.element_size} to {e['element_size']}"
            )
        if "value" in e and "items" not in e:  # a byte array as one hex string
            new = parse_bytes(node.size, str(e["value"] or ""), e.get("encoding") or "hex", node.path)
            old = read(node.offset, node.size)
            if new != old:
                for i in range(node.size):  # one change per byte that differs, named by index
                    if new[i] != old[i]:
                        el = node.element(i // node.element_size) if node.element_size else node
                        changes.append(
                            FieldChange(
                                el.path, node.offset + i, new[i : i + 1], f"{old[i]:#04x}", f"{new[i]:#04x}"
                            )
                        )
            return
        indexes: set[int] = set()
        for item in e.get("items") or []:
            try:
                i = int(item.get("index"))
            except (TypeError, ValueError):
                raise EditError(f"{node.path}: an item has no index") from None
            if not 0 <= i < node.count:
                raise EditError(f"{node.path}[{i}]: index out of range (0..{node.count - 1})")
            if i in indexes:
                raise EditError(f"{node.path}[{i}]: appears twice in the file")
            indexes.add(i)
            element = node.element(i)
            item = {k: v for k, v in item.items() if k != "index"}
            if isinstance(element, Leaf):
                item.setdefault("type", element.type)
            _match(snap, element, item, changes)
        return
    if "value" in e and e.get("value") not in ("", None) and "fields" not in e:
        raise EditError(f"{node.path}: is a group of fields ({node.type}), not a single value")
    _match_fields(snap, node, e.get("fields") or [], changes)


def _show(node: Leaf, raw: bytes) -> str:
    if node.is_integer:
        return format_int(node, int.from_bytes(raw, "big", signed=node.signed))
    enc = encoding_of(node, raw)
    text = format_bytes(raw, enc)
    return text if len(text) <= 80 else text[:77] + "..."


def import_devices(snap: Snapshot, path: str) -> ImportResult:
    """Apply the file's changes to the snapshot's edit overlay (nothing is written here)."""
    from ..devices.explain.edit import set_by_name
    from ..mac import apply_mac_change, plan_mac_change

    tree = load_tree(path)
    changes = plan_import(snap, tree)
    by_name = _changed_registers(snap, tree)  # against the snapshot as it is, before any change
    current = {n.name: n for n in snap.nics()}
    mac_plans = []
    for entry in tree.get("nics") or []:
        nic = current.get(entry.get("device"))
        if nic is None:
            raise EditError(f"nics: unknown NIC {entry.get('device')!r}")
        new = parse_mac(str(entry.get("mac") or ""))
        if new != nic.mac:
            mac_plans.append(plan_mac_change(snap, nic.name, new))
    for c in changes:
        snap.edits.patch(c.offset, c.data, c.path)
    _rederive_hflags(snap, changes)
    lines: list[str] = []
    macs: dict[str, str] = {}
    for plan in mac_plans:  # after the fields: the <nics> MAC wins over edits of its copies
        lines += plan.describe()
        apply_mac_change(snap, plan)
        macs[format_mac(plan.old)] = format_mac(plan.new)
    register_lines: list[str] = []
    for name, value in by_name:
        register_lines += set_by_name(snap, name, value) or []
    for nic in snap.nics():  # a MAC changed field by field: the resume command line needs it too
        before = current[nic.name].mac
        if nic.mac != before:
            macs.setdefault(format_mac(before), format_mac(nic.mac))
    return ImportResult(changes, lines, macs, register_lines)


def _changed_registers(snap: Snapshot, tree: dict) -> list[tuple[str, str]]:
    """(DEVICE.REGISTER, new value) for each register whose value in the file's ``explained``
    part differs from the snapshot's; unknown ones are refused before anything changes."""
    from ..devices.explain import explain_all, value_text

    if not tree.get("explained"):
        return []
    current = {(x.device, v.name): v for x in explain_all(snap.devices, snap.physical.read) for v in x.values}
    out = []
    for view in tree["explained"]:
        for reg in view.get("registers") or []:
            key = (view.get("device"), reg.get("name"))
            v = current.get(key)
            if v is None:
                raise EditError(f"explained: {key[0]} has no register {key[1]!r} in this snapshot")
            text = str(reg.get("value") if reg.get("value") is not None else "")
            if text.strip() != value_text(v.value):
                if not v.settable or isinstance(v.value, list):
                    raise EditError(
                        f"explained: {key[0]}.{key[1]} is shown from {v.source}; it cannot be set"
                    )
                out.append((f"{key[0]}.{key[1]}", text.strip()))
    return out


def _rederive_hflags(snap: Snapshot, changes: list[FieldChange]) -> None:
    """State QEMU derives but does not recompute on load (x86 TCG's hflags from CR0/CR4/EFER/
    EFLAGS/segments, see Snapshot.set_register) must follow edits made through the cpu section's
    fields too, unless the derived field was edited as well."""
    arch = snap.arch
    for cpu in snap.cpus:
        start, end = arch.cpu_field_range(cpu)
        touched = [c for c in changes if start <= c.offset < end]
        if not touched:
            continue
        for field, value in arch.rederive(cpu):
            off, size = cpu.field_offset(field)
            if any(c.offset == off for c in touched):
                continue
            old = cpu[field]
            snap.edits.patch(off, value.to_bytes(size, "big"), f"cpu[{cpu.index}] {field} (derived)")
            changes.append(
                FieldChange(
                    f"cpu[{cpu.index}] {field} (derived)",
                    off,
                    value.to_bytes(size, "big"),
                    f"{old:#x}",
                    f"{value:#x}",
                )
            )
