"""What differs between two snapshots of the same VM: device fields, vCPU registers, RAM pages.

Devices are matched by key and compared section body first (equal bodies are skipped without
decoding); differing ones field by field. RAM is compared per block and page: two zero pages are
equal without reading; differing pages are reported as runs, with their guest-physical address.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..devices.fields import Array, Leaf, Node
from ..snapshot import Snapshot
from .devices_xml import encoding_of, format_bytes, format_int


@dataclass
class SnapshotDiff:
    a: str
    b: str
    fields: list[dict] = field(default_factory=list)  # {path, a, b}
    explained: list[dict] = field(default_factory=list)  # {register, a, b, change, text}
    devices: list[dict] = field(default_factory=list)  # {device, only_in | note}
    registers: list[dict] = field(default_factory=list)  # {cpu, register, a, b}
    memory: list[dict] = field(default_factory=list)  # {block, offset, size, physical}
    notes: list[str] = field(default_factory=list)

    def to_plain(self) -> dict:
        return {
            "a": self.a,
            "b": self.b,
            "devices": self.devices,
            "fields": self.fields,
            "explained": self.explained,
            "registers": self.registers,
            "memory": self.memory,
            "notes": self.notes,
            "memory_bytes": sum(m["size"] for m in self.memory),
        }

    @property
    def same(self) -> bool:
        return not (self.fields or self.devices or self.registers or self.memory)  # explained: from fields

    def text(self) -> str:
        lines = [f"--- {self.a}", f"+++ {self.b}"]
        for d in self.devices:
            lines.append(f"device {d['device']}: {d.get('note') or 'only in ' + d['only_in']}")
        for f in self.fields:
            lines.append(f"field {f['path']}: {f['a']} -> {f['b']}")
        for e in self.explained:
            lines.append(f"register {e['register']}: {e['change']} ({e['text']})")
        for r in self.registers:
            lines.append(f"cpu{r['cpu']} {r['register']}: {r['a']:#x} -> {r['b']:#x}")
        for m in self.memory:
            where = f"physical {m['physical']:#x}" if m["physical"] is not None else "not mapped"
            lines.append(
                f"memory {m['block']}+{m['offset']:#x} ({where}): {m['size']:#x} bytes "
                f"({m['size'] // m['page_size']} page(s)) differ"
            )
        lines += [f"note: {n}" for n in self.notes]
        if self.same:
            lines.append("no differences in device state, registers or RAM")
        return "\n".join(lines)


def diff_snapshots(a: Snapshot, b: Snapshot, memory: bool = True) -> SnapshotDiff:
    out = SnapshotDiff(a.path, b.path)
    _diff_devices(a, b, out)
    _diff_registers(a, b, out)
    if memory:
        _diff_memory(a, b, out)
    return out


# -- devices ----------------------------------------------------------------------------------


def _diff_devices(a: Snapshot, b: Snapshot, out: SnapshotDiff) -> None:
    keys_b = {d.key: d for d in b.devices.devices}
    keys_a = {d.key for d in a.devices.devices}
    for da in a.devices.devices:
        db = keys_b.get(da.key)
        if db is None:
            out.devices.append({"device": da.key, "only_in": a.path})
            continue
        body_a = a.read_stream(da.section.body_offset, da.section.body_size)
        body_b = b.read_stream(db.section.body_offset, db.section.body_size)
        if body_a == body_b:
            continue
        if da.section.version_id != db.section.version_id or da.root.size != db.root.size:
            out.devices.append(
                {
                    "device": da.key,
                    "note": f"version or layout differs (v{da.section.version_id}, "
                    f"{da.section.body_size} bytes vs v{db.section.version_id}, "
                    f"{db.section.body_size} bytes); not compared field by field",
                }
            )
            continue
        before = len(out.fields)
        _diff_node(a, b, da.root, db.root, out)
        if len(out.fields) > before:
            _diff_explained(a, b, da, db, out)
    for db in b.devices.devices:
        if db.key not in keys_a:
            out.devices.append({"device": db.key, "only_in": b.path})


def _diff_node(a: Snapshot, b: Snapshot, na: Node, nb: Node, out: SnapshotDiff) -> None:
    ra, rb = a.read_stream(na.offset, na.size), b.read_stream(nb.offset, nb.size)
    if ra == rb:
        return
    if isinstance(na, Leaf):
        out.fields.append({"path": na.path, "a": _show(na, ra), "b": _show(na, rb)})
        return
    if isinstance(na, Array) and isinstance(nb, Array):
        if na.count != nb.count:
            out.fields.append({"path": na.path, "a": f"{na.count} elements", "b": f"{nb.count} elements"})
            return
        w = na.element_size
        for i in range(na.count):
            if w and ra[i * w : (i + 1) * w] == rb[i * w : (i + 1) * w]:
                continue
            _diff_node(a, b, na.element(i), nb.element(i), out)
        return
    by_name = {c.name: c for c in nb.children()}
    for ca in na.children():
        cb = by_name.get(ca.name)
        if cb is None:
            out.fields.append({"path": ca.path, "a": "present", "b": "absent"})
        elif type(ca) is not type(cb) or ca.size != cb.size:
            out.fields.append(
                {"path": ca.path, "a": f"{ca.type}, {ca.size} bytes", "b": f"{cb.type}, {cb.size} bytes"}
            )
        else:
            _diff_node(a, b, ca, cb, out)


def _diff_explained(a: Snapshot, b: Snapshot, da, db, out: SnapshotDiff) -> None:
    """The same difference by register name ("e1000 RDT 12 -> 40", "apic IRR +236"): what the
    raw fields mean, from the explainers of the device."""
    from ..devices.explain import explain

    va = {v.name: v for x in explain(a.devices, da, a.physical.read) for v in x.values}
    for x in explain(b.devices, db, b.physical.read):
        for vb in x.values:
            v = va.get(vb.name)
            if v is None or v.value == vb.value:
                continue
            out.explained.append(
                {
                    "register": f"{db.key}.{vb.name}",
                    "a": v.value,
                    "b": vb.value,
                    "change": _change(v.value, vb.value, vb.bits),
                    "text": vb.text,
                }
            )


def _change(old, new, bits: dict[str, tuple[int, int]]) -> str:
    if isinstance(old, int) and isinstance(new, int) and bits:
        parts = []
        for name, (low, width) in bits.items():
            o, n = old >> low & (1 << width) - 1, new >> low & (1 << width) - 1
            if o != n:
                parts.append(f"{name} {o}->{n}")
        if parts:
            return f"{old:#x} -> {new:#x}: " + ", ".join(parts)
    if isinstance(old, list) and isinstance(new, list):
        gone = [f"-{n}" for n in old if n not in new]
        came = [f"+{n}" for n in new if n not in old]
        return " ".join(came + gone) or "reordered"
    if isinstance(old, int) and isinstance(new, int):
        return f"{old:#x} -> {new:#x}" if max(abs(old), abs(new)) > 9 else f"{old} -> {new}"
    return f"{old} -> {new}"


def _show(node: Leaf, raw: bytes) -> str:
    if node.is_integer:
        return format_int(node, int.from_bytes(raw, "big", signed=node.signed))
    text = format_bytes(raw, encoding_of(node, raw))
    return text if len(text) <= 80 else text[:77] + "..."


# -- registers --------------------------------------------------------------------------------


def _diff_registers(a: Snapshot, b: Snapshot, out: SnapshotDiff) -> None:
    cpus_b = {c.index: c for c in b.cpus}
    for ca in a.cpus:
        cb = cpus_b.get(ca.index)
        if cb is None:
            out.notes.append(f"vCPU {ca.index} only in {a.path}")
            continue
        for name in a.arch.register_names(ca):
            if name in cb.values and ca[name] != cb[name]:
                out.registers.append({"cpu": ca.index, "register": name, "a": ca[name], "b": cb[name]})
    for cb in b.cpus:
        if cb.index not in {c.index for c in a.cpus}:
            out.notes.append(f"vCPU {cb.index} only in {b.path}")


# -- memory -----------------------------------------------------------------------------------


def _diff_memory(a: Snapshot, b: Snapshot, out: SnapshotDiff) -> None:
    blocks_b = b.ram.blocks
    for name, ba in a.ram.blocks.items():
        bb = blocks_b.get(name)
        if bb is None:
            out.notes.append(f"RAM block {name} only in {a.path}")
            continue
        if ba.used_length != bb.used_length or ba.page_size != bb.page_size:
            out.notes.append(
                f"RAM block {name}: {ba.used_length:#x} bytes vs {bb.used_length:#x}; not compared"
            )
            continue
        ps = ba.page_size
        run_start = None
        for i in range(ba.page_count):
            same = (a.ram.is_zero(ba, i) and b.ram.is_zero(bb, i)) or a.ram.page(ba, i) == b.ram.page(bb, i)
            if not same and run_start is None:
                run_start = i
            elif same and run_start is not None:
                _add_run(a, out, name, run_start, i, ps)
                run_start = None
        if run_start is not None:
            _add_run(a, out, name, run_start, ba.page_count, ps)
    for name in blocks_b:
        if name not in a.ram.blocks:
            out.notes.append(f"RAM block {name} only in {b.path}")


def _add_run(snap: Snapshot, out: SnapshotDiff, block: str, first: int, end: int, ps: int) -> None:
    """One entry per run, split where the guest-physical layout splits it."""
    offset, stop = first * ps, end * ps
    while offset < stop:
        physical, size = None, stop - offset
        for r in snap.physical.ranges:
            if r.block == block and r.block_offset <= offset < r.block_offset + r.size:
                physical = r.start + offset - r.block_offset
                size = min(size, r.block_offset + r.size - offset)
                break
        out.memory.append(
            {"block": block, "offset": offset, "size": size, "physical": physical, "page_size": ps}
        )
        offset += size
