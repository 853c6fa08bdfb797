"""PCI configuration space of every PCI function (PCI Local Bus 3.0 ch. 6, type 0/1 headers).

QEMU keeps a function's whole config space in its vmstate (a `pci config` buffer, or virtio's
`pci/config`). BAR sizes are not in it (QEMU keeps the sizing masks outside the stream), so a BAR is
reported by type and address only.
"""

from __future__ import annotations

import re
import struct

from ..fields import Leaf
from . import Explained, bits, flags, register_generic

_BDF = re.compile(r"^([0-9a-f]{4}):([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])/")
CAPABILITIES = {0x01: "PM", 0x05: "MSI", 0x09: "vendor", 0x10: "PCIe", 0x11: "MSI-X", 0x12: "SATA"}
VIRTIO_CFG = {1: "common", 2: "notify", 3: "isr", 4: "device", 5: "pci"}  # virtio 1.x 4.1.4
_COMMAND = {0: "io", 1: "memory", 2: "bus-master", 10: "intx-disable"}
VENDORS = {
    0x8086: "Intel",
    0x10EC: "Realtek",
    0x1AF4: "Red Hat (virtio)",
    0x1B36: "Red Hat (QEMU)",
    0x1234: "QEMU",
}


def config_leaf(device) -> Leaf | None:
    for node in device.root.walk():
        if isinstance(node, Leaf) and node.size in (256, 4096):
            if node.type == "pci config" or node.path.endswith("/pci/config"):
                return node
    return None


def bars(cfg: bytes) -> dict[int, dict]:
    """BAR index -> {kind: io|memory, bits: 32|64, prefetchable, address} (type 0 header only)."""
    out: dict[int, dict] = {}
    if cfg[0x0E] & 0x7F != 0:
        return out
    i = 0
    while i < 6:
        (raw,) = struct.unpack_from("<I", cfg, 0x10 + 4 * i)
        if raw & 1:
            out[i] = {"kind": "io", "bits": 32, "prefetchable": False, "address": raw & ~3 & 0xFFFFFFFF}
            i += 1
            continue
        bits = 64 if raw >> 1 & 3 == 2 else 32
        addr = raw & ~0xF & 0xFFFFFFFF
        if bits == 64 and i < 5:
            addr |= struct.unpack_from("<I", cfg, 0x14 + 4 * i)[0] << 32
        out[i] = {"kind": "memory", "bits": bits, "prefetchable": bool(raw & 8), "address": addr}
        i += 2 if bits == 64 else 1
    return out


def capabilities(cfg: bytes) -> list[tuple[int, int]]:
    """(offset, capability id) along the list, guarded against loops and pointers out of range."""
    out: list[tuple[int, int]] = []
    if not cfg[0x06] & 0x10:  # status: capabilities list
        return out
    pos, seen = cfg[0x34] & ~3, set()
    while 0x40 <= pos < min(len(cfg), 256) - 1 and pos not in seen:
        seen.add(pos)
        out.append((pos, cfg[pos]))
        pos = cfg[pos + 1] & ~3
    return out


READ_ONLY = "read-only: QEMU refuses a stream whose read-only config bytes differ (get_pci_config_device)"
_STATUS = {3: "INTx", 4: "capabilities", 5: "66MHz", 7: "fast-b2b", 8: "master-parity-error",
           11: "signaled-target-abort", 12: "received-target-abort", 13: "received-master-abort",
           14: "signaled-system-error", 15: "detected-parity-error"}  # fmt: skip
RAW = "set the raw config bytes (vmstate devices DEV/parent_obj)"
FIXED = {"settable": False, "hint": READ_ONLY}


def explain_pci(device, value) -> Explained | None:
    m = _BDF.match(device.idstr)
    leaf = config_leaf(device)
    if m is None or leaf is None:
        return None
    cfg = bytes(value(leaf))
    src = leaf.path.split("/", 2)[-1] if "/" in leaf.path else leaf.path
    x = Explained(device.key, "PCI function")
    vendor, dev = struct.unpack_from("<HH", cfg, 0)
    x.add("address", f"{m[2]}:{m[3]}.{m[4]}", f"bus {int(m[2], 16)} slot {int(m[3], 16)} function {m[4]}",
          device.idstr)  # fmt: skip
    x.add("vendor", vendor, VENDORS.get(vendor, "unknown vendor"), f"{src}+0x0", **FIXED)
    x.add("device", dev, f"{vendor:04x}:{dev:04x}", f"{src}+0x2", **FIXED)
    command, status = struct.unpack_from("<HH", cfg, 4)
    x.add("pci.command", command, " ".join(n for b, n in _COMMAND.items() if command >> b & 1) or "disabled",
          f"{src}+0x4", width=2, bits=bits(_COMMAND))  # fmt: skip
    x.add("pci.status", status, flags(status, _STATUS),
          f"{src}+0x6", settable=False, hint="its error bits are write-one-to-clear; " + RAW)  # fmt: skip
    x.add("class", cfg[0x0B] << 16 | cfg[0x0A] << 8 | cfg[0x09], f"class {cfg[0x0B]:02x}{cfg[0x0A]:02x}"
          f" prog-if {cfg[0x09]:02x} rev {cfg[0x08]:02x}", f"{src}+0x9", **FIXED)  # fmt: skip
    if cfg[0x0E] & 0x7F == 0:
        sv, sd = struct.unpack_from("<HH", cfg, 0x2C)
        x.add("subsystem", sv << 16 | sd, f"{sv:04x}:{sd:04x}", f"{src}+0x2c", **FIXED)
    for i, bar in bars(cfg).items():
        if not bar["address"]:
            continue  # unused or not yet assigned by the guest
        text = (
            f"I/O at {bar['address']:#x}"
            if bar["kind"] == "io"
            else f"{bar['bits']} bit {'prefetchable ' * bar['prefetchable']}memory at {bar['address']:#x}"
        )
        x.add(f"BAR{i}", bar["address"], text, f"{src}+{0x10 + 4 * i:#x}", settable=False, hint=RAW)
    x.add("interrupt_line", cfg[0x3C], f"IRQ {cfg[0x3C]}", f"{src}+0x3c", width=1)
    pin = cfg[0x3D]
    x.add("interrupt_pin", pin, f"pin {'ABCD'[pin - 1]}" if 1 <= pin <= 4 else "none", f"{src}+0x3d", **FIXED)
    for off, cap in capabilities(cfg):
        text = CAPABILITIES.get(cap, f"id {cap:#x}")
        if cap == 0x11:
            (ctl,) = struct.unpack_from("<H", cfg, off + 2)
            table, pba = struct.unpack_from("<II", cfg, off + 4)
            text += (
                f": {(ctl & 0x7FF) + 1} vectors{' enabled' if ctl & 0x8000 else ''}"
                f"{' function-masked' if ctl & 0x4000 else ''}, table BAR{table & 7}+{table & ~7:#x},"
                f" PBA BAR{pba & 7}+{pba & ~7:#x}"
            )
        elif cap == 0x09 and vendor == 0x1AF4 and off + 16 <= len(cfg):
            kind = VIRTIO_CFG.get(cfg[off + 3], f"type {cfg[off + 3]}")
            offset, length = struct.unpack_from("<II", cfg, off + 8)
            text += f": virtio {kind} config in BAR{cfg[off + 4]}+{offset:#x}, {length:#x} bytes"
        elif cap == 0x05:
            (ctl,) = struct.unpack_from("<H", cfg, off + 2)
            text += f": {'enabled' if ctl & 1 else 'disabled'}, {'64' if ctl & 0x80 else '32'}-bit"
        x.add(f"cap@{off:#x}", cap, text, f"{src}+{off:#x}", settable=False, hint=RAW)
    return x


register_generic(explain_pci)
