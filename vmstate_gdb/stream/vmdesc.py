"""The VMDESCRIPTION JSON trailer QEMU appends after EOF (migration/savevm.c, migration/vmstate.c).

QEMU ignores it on load; for us it is the schema of every device section: field names, types and
per-element sizes, in stream order.
"""

from __future__ import annotations

import json
import struct

from . import constants as C

_SEARCH_WINDOW = 64 << 20  # the JSON of a large VM is a few hundred KiB; be generous


def locate_trailer(buf, size: int) -> tuple[int, dict] | None:
    """Find ``0x06 be32 len {json}`` ending exactly at the end of the stream, without parsing RAM.

    Returns (offset of the 0x06 byte, parsed JSON) or None (suppress-vmdesc, xen, truncated).
    """
    for window in (1 << 20, _SEARCH_WINDOW):
        found = _locate_in(buf, size, window)
        if found is not None or window >= size:
            return found
    return None


def _locate_in(buf, size: int, window: int) -> tuple[int, dict] | None:
    start = max(0, size - window)
    tail = bytes(buf[start:size])
    for marker in (b'{"configuration"', b'{"page_size"'):
        pos = tail.rfind(marker)
        while pos >= 5:
            at = start + pos - 5
            if tail[pos - 5] == C.QEMU_VM_VMDESCRIPTION:
                (length,) = struct.unpack(">I", tail[pos - 4 : pos])
                if at + 5 + length == size:
                    try:
                        desc = json.loads(tail[pos:].decode("ascii"))
                    except (UnicodeDecodeError, ValueError, RecursionError):
                        return None
                    return (at, desc) if isinstance(desc, dict) else None
            pos = tail.rfind(marker, 0, pos)
    return None


def vmsd_wire_size(vmsd: dict) -> int:
    """Bytes a vmsd object (fields, then sent subsections) takes on the wire, from the JSON sizes.

    The JSON is untrusted: any shape it should not have raises ValueError."""
    try:
        return _wire_size(vmsd, 0)
    except (KeyError, TypeError, AttributeError, RecursionError) as e:
        raise ValueError(f"malformed VMDESCRIPTION entry: {e!r}") from None


def _wire_size(vmsd: dict, depth: int) -> int:
    if depth > 64:
        raise ValueError("VMDESCRIPTION nests deeper than 64 levels")
    total = 0
    for f in vmsd.get("fields", ()):
        total += int(f.get("size", 0)) * int(f.get("array_len", 1))
    for sub in vmsd.get("subsections", ()):
        name = sub.get("vmsd_name", "")
        total += 1 + 1 + len(name) + 4 + _wire_size(sub, depth + 1)
    if total < 0:
        raise ValueError("negative sizes in VMDESCRIPTION")
    return total


def device_entries(desc: dict | None) -> list[dict]:
    devices = desc.get("devices", ()) if desc else ()
    return [d for d in devices if isinstance(d, dict)] if isinstance(devices, list) else []
