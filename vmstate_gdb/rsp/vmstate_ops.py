"""The `qvmstate.*` operations behind the gdb-side commands. Each takes keyword arguments from the
request's JSON and returns a JSON-able result; a VmstateError becomes the reply's one-line error.

All formatting for people happens here, in the server: the gdb side only prints the text.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..devices.fields import Array, Leaf, Node, not_a_value
from ..devices.nics import format_mac, parse_mac
from ..errors import EditError, VmstateError
from ..mac import apply_mac_change, pick_nic, plan_mac_change

if TYPE_CHECKING:
    from .server import SnapshotServer

try:
    from ..devices.format import format_value
except ImportError:  # pragma: no cover - the formatter module is optional

    def format_value(node: Leaf, value, limit: int = 64) -> str:  # type: ignore[misc]
        if isinstance(value, int):
            return f"{value:#x}" if value < 0 or value > 9 else str(value)
        return format_mac(value) if node.size == 6 and "mac" in node.name else value.hex()


def _nics(server: SnapshotServer) -> list[dict]:
    return [n.describe() for n in server.snap.nics()]


def facts(server: SnapshotServer) -> dict:
    """The headline facts, for the convenience variables set on open."""
    snap = server.snap
    return {
        "path": snap.path,
        "ncpus": snap.ncpus,
        "nics": _nics(server),
        "machine_type": snap.index.machine_type,
    }


def describe(server: SnapshotServer) -> dict:
    snap = server.snap
    lines = [f"snapshot: {snap.path} ({snap.source.kind}, machine {snap.index.machine_type or '?'})"]
    ram = sum(b.used_length for b in snap.index.ram.blocks.values())
    lines.append(f"RAM blocks: {len(snap.index.ram.blocks)}, {ram >> 20} MiB")
    for cpu in snap.cpus:
        mark = "*" if cpu.index == server.cpu_index() else " "
        lines.append(
            f"{mark} vCPU {cpu.index} (thread {cpu.index + 1}): {cpu.cpu_mode} mode, "
            f"{cpu.paging_mode} paging, {snap.arch.pc_name}={cpu.pc:#x}{', halted' if cpu.halted else ''}"
        )
    if server.physical_mode:
        mode = "guest-physical"
    elif server.task_view:
        mode = f"virtual, through {server.task_view[0]}'s page tables (vmstate-task)"
    else:
        mode = "virtual (selected vCPU)"
    lines.append(f"memory accesses: {mode}")
    for nic in _nics(server):
        lines.append(f"NIC {nic['name']} ({nic['model']}): {nic['mac']}")
    edits = snap.edits
    if not edits:
        lines.append("pending edits: none")
    else:
        lines.append(f"pending edits: {len(edits.pages)} RAM page(s), {len(edits.patches)} field(s)")
        for p in edits.patches:
            lines.append(f"  {p.what}")
    return {
        "text": "\n".join(lines) + "\n",
        "edited": bool(edits),
        "unsaved": bool(edits) and edits.generation != server.saved_generation,
        "pages": len(edits.pages),
        "fields": [p.what for p in edits.patches],
    }


# -- device tree ------------------------------------------------------------------------------


def _render(server: SnapshotServer, node: Node, lines: list[str], indent: int, depth: int) -> None:
    snap = server.snap
    pad = "  " * indent
    if isinstance(node, Leaf):
        lines.append(
            f"{pad}{node.name} = {format_value(node, node.value(snap.read_stream))}   "
            f"[{node.type}, {node.size} bytes]"
        )
        return
    if isinstance(node, Array):
        if depth <= 0 or node.count > 64:
            lines.append(
                f"{pad}{node.name}: {node.count} x {node.element_size} bytes"
                + (" (name an element, e.g. [0])" if node.count > 64 else "")
            )
            return
        lines.append(f"{pad}{node.name}: {node.count} x {node.element_size} bytes")
        for i in range(node.count):
            _render(server, node.element(i), lines, indent + 1, depth - 1)
        return
    vmsd = getattr(node, "vmsd_name", None)
    lines.append(f"{pad}{node.name}: {node.type}{' ' + vmsd if vmsd else ''} ({node.size} bytes)")
    if depth > 0:
        for c in node.children():
            _render(server, c, lines, indent + 1, depth - 1)


def devices(server: SnapshotServer, path: str = "", depth: int = 8, explain: bool = False) -> dict:
    tree = server.snap.devices
    if explain:
        from ..devices.explain import for_path, render

        found = for_path(tree, path, server.snap.physical.read)
        return {"text": (render(found) or "no device here has an explainer yet") + "\n"}
    if not path:
        lines = [
            f"{d.key:<44} {d.model:<22} {d.section.body_size:>8} bytes{'' if d.root.vmsd_name else '  (raw)'}"
            for d in tree.devices
        ]
        return {"text": "\n".join(lines) + "\n"}
    lines: list[str] = []
    _render(server, tree.resolve(path), lines, 0, depth)
    return {"text": "\n".join(lines) + "\n"}


def complete(server: SnapshotServer, prefix: str = "") -> list[str]:
    return server.snap.devices.complete(prefix)


def field(server: SnapshotServer, path: str) -> dict:
    """One leaf's value: an integer as {"int"}, a buffer as {"bytes": hex} (MACs also {"mac"})."""
    snap = server.snap
    node = snap.devices.resolve(path)
    if not isinstance(node, Leaf):
        raise EditError(not_a_value(node))
    value = node.value(snap.read_stream)
    out = {"path": node.path, "type": node.type, "size": node.size, "text": format_value(node, value)}
    if isinstance(value, int):
        out["int"] = value
        out["signed"] = node.signed
    else:
        out["bytes"] = value.hex()
    return out


def parse_value(node: Leaf, text: str) -> int | bytes:
    text = text.strip()
    if node.is_integer:
        if text in ("true", "false") and node.type == "bool":
            return int(text == "true")
        try:
            return int(text, 0)
        except ValueError:
            raise EditError(f"{text!r} is not an integer (for {node.path}, {node.type})") from None
    if node.size == 6 and ":" in text:
        return parse_mac(text)
    try:
        return bytes.fromhex(text.removeprefix("0x").replace(" ", ""))
    except ValueError:
        raise EditError(f"{node.path} is a {node.size}-byte buffer: give hex bytes") from None


def set_field(server: SnapshotServer, path: str, value: str) -> dict:
    from ..devices.explain.edit import set_by_name

    snap = server.snap
    lines = set_by_name(snap, path, value)  # DEVICE.REGISTER[.PART]: by the register's meaning
    if lines is not None:
        return {"text": "".join(line + "\n" for line in lines)}
    node = snap.devices.resolve(path)
    if not isinstance(node, Leaf):
        raise EditError(not_a_value(node))
    old = format_value(node, node.value(snap.read_stream))
    written = snap.set_field(path, parse_value(node, value))
    new = format_value(node, node.value(snap.read_stream))
    return {"text": f"{written}: {old} -> {new}\n"}


# -- NICs -------------------------------------------------------------------------------------


def mac(server: SnapshotServer, nic: str | None = None, new: str | None = None, memory: bool = False) -> dict:
    snap = server.snap
    if new is None:
        chosen = snap.nics() if nic is None else [pick_nic(snap, nic)]
        if not chosen:
            raise EditError("this snapshot has no NIC of a known model (e1000, e1000e, rtl8139, virtio-net)")
        return {"text": "".join(f"{n.name} ({n.model}): {format_mac(n.mac)}\n" for n in chosen)}
    change = plan_mac_change(snap, nic, parse_mac(new), memory=memory)
    apply_mac_change(snap, change)
    # remembered for vmstate-save: the resume command line needs the new mac= too
    mac_changes = server.mac_changes
    first = next((k for k, v in mac_changes.items() if v == format_mac(change.old)), format_mac(change.old))
    mac_changes[first] = format_mac(change.new)
    lines = change.describe()
    if memory and not change.memory_hits:
        lines.append("  guest memory: the old MAC does not occur")
    return {"text": "\n".join(lines) + "\n", "memory_hits": change.memory_hits}


# -- edits, save, mode ------------------------------------------------------------------------


def revert(server: SnapshotServer) -> dict:
    edits = server.snap.edits
    n_pages, n_fields = len(edits.pages), len(edits.patches)
    edits.clear()
    server.mac_changes.clear()
    return {"text": f"dropped {n_pages} RAM page(s) and {n_fields} field edit(s)\n"}


def save(server: SnapshotServer, out: str, fmt: str | None = None, progress=None) -> dict:
    try:
        from ..writer import save as write_snapshot
    except ImportError:
        raise VmstateError(
            "saving is not available yet in this build (vmstate_gdb.writer is missing)"
        ) from None
    from ..writer.meta import describe_resume, write_output_meta

    result = write_snapshot(server.snap, out, fmt=fmt, progress=progress)
    server.saved_generation = server.snap.edits.generation
    write_output_meta(server.snap, result, server.mac_changes)
    text = result.summary() + "\n" + describe_resume(result.path, result.format, result.snapshot_name) + "\n"
    return {"text": text}


save.reports_progress = True  # type: ignore[attr-defined]


def dump(
    server: SnapshotServer, out: str, start: int, end: int, physical: bool = False, progress=None
) -> dict:
    """Guest memory [start, end) into the file ``out``, written by the server at the disk's speed:
    gdb's own `dump binary memory` reads through m packets of hex, which gdb 13 parses a character
    at a time. The address space is the one gdb reads (the thread's, or physical)."""
    from ..writer import check_output_path
    from ..writer.emit import AtomicOutput
    from .server import readable_prefix

    if not 0 <= start <= end < 1 << 64:
        raise EditError(f"bad range {start:#x}..{end:#x}: END must not be below START")
    space = server.snap.physical if physical else server.space()
    check_output_path(server.snap, out)
    total, done, step = end - start, 0, 1 << 20
    with AtomicOutput(out) as f:
        while done < total:
            n = min(step, total - done)
            data = readable_prefix(space, start + done, n)
            if len(data) != n:
                raise EditError(f"cannot read memory at {start + done + len(data):#x}; {out} not written")
            f.write(data)
            done += n
            if progress is not None:
                progress(done, total)
    return {"text": f"wrote {out}: {total} bytes of {'physical' if physical else 'guest'} memory "
            f"{start:#x}..{end:#x}\n"}  # fmt: skip


dump.reports_progress = True  # type: ignore[attr-defined]


def phys(server: SnapshotServer, on: bool | None = None) -> dict:
    if on is not None:
        server.physical_mode = bool(on)
    return {"physical": server.physical_mode}


OPERATIONS = {
    "facts": facts,
    "describe": describe,
    "devices": devices,
    "complete": complete,
    "field": field,
    "set": set_field,
    "mac": mac,
    "revert": revert,
    "save": save,
    "phys": phys,
    "dump": dump,
}
