"""virtio devices: status, negotiated features by name, and each split virtqueue with its rings
read from guest memory (what the driver made available, what the device took and returned).

The common state is virtio_save's (hw/virtio/virtio.c): the PCI or MMIO transport, status,
features, and per queue its size, descriptor table address and last_avail_idx; the avail and used
ring addresses of a VIRTIO_F_VERSION_1 device are in the ``virtio/virtqueues`` subsection (1024
pairs of big-endian u64), the high feature bits in ``virtio/64bit_features``. QEMU saves no used
index: it reads it back from the used ring in guest memory when it loads (virtio_load), and so do
we. Layouts of the rings and requests: the virtio 1.2 specification, 2.7 and 5.2.6.
"""

from __future__ import annotations

import struct

from ...errors import EditError, VmstateError
from . import Explained, register

STATUS = {0: "ACKNOWLEDGE", 1: "DRIVER", 2: "DRIVER_OK", 3: "FEATURES_OK", 6: "DEVICE_NEEDS_RESET",
          7: "FAILED"}  # fmt: skip
TRANSPORT_FEATURES = {24: "VIRTIO_F_NOTIFY_ON_EMPTY", 27: "VIRTIO_F_ANY_LAYOUT",
                      28: "VIRTIO_RING_F_INDIRECT_DESC", 29: "VIRTIO_RING_F_EVENT_IDX",
                      32: "VIRTIO_F_VERSION_1", 33: "VIRTIO_F_ACCESS_PLATFORM",
                      34: "VIRTIO_F_RING_PACKED", 35: "VIRTIO_F_IN_ORDER",
                      36: "VIRTIO_F_ORDER_PLATFORM", 37: "VIRTIO_F_SR_IOV",
                      38: "VIRTIO_F_NOTIFICATION_DATA", 40: "VIRTIO_F_RING_RESET"}  # fmt: skip
DEVICE_FEATURES = {
    "virtio-net": {0: "CSUM", 1: "GUEST_CSUM", 2: "CTRL_GUEST_OFFLOADS", 3: "MTU", 5: "MAC", 6: "GSO",
                   7: "GUEST_TSO4", 8: "GUEST_TSO6", 9: "GUEST_ECN", 10: "GUEST_UFO", 11: "HOST_TSO4",
                   12: "HOST_TSO6", 13: "HOST_ECN", 14: "HOST_UFO", 15: "MRG_RXBUF", 16: "STATUS",
                   17: "CTRL_VQ", 18: "CTRL_RX", 19: "CTRL_VLAN", 20: "CTRL_RX_EXTRA",
                   21: "GUEST_ANNOUNCE", 22: "MQ", 23: "CTRL_MAC_ADDR", 61: "RSC_EXT", 62: "STANDBY"},
    "virtio-blk": {0: "BARRIER", 1: "SIZE_MAX", 2: "SEG_MAX", 4: "GEOMETRY", 5: "RO", 6: "BLK_SIZE",
                   7: "SCSI", 9: "FLUSH", 10: "TOPOLOGY", 11: "CONFIG_WCE", 12: "MQ", 13: "DISCARD",
                   14: "WRITE_ZEROES", 15: "LIFETIME", 16: "SECURE_ERASE"},
}  # fmt: skip
_PREFIX = {"virtio-net": "VIRTIO_NET_F_", "virtio-blk": "VIRTIO_BLK_F_"}
_BLK_TYPES = {0: "IN (read)", 1: "OUT (write)", 4: "FLUSH", 8: "GET_ID", 11: "DISCARD", 13: "WRITE_ZEROES"}
DESC_F_NEXT, DESC_F_WRITE, DESC_F_INDIRECT = 1, 2, 4
SHOWN = 8  # descriptor chains listed per queue; the rest are counted


def feature_names(model: str, bits: int) -> list[str]:
    own = DEVICE_FEATURES.get(model, {})
    prefix = _PREFIX.get(model, "")
    names = []
    for b in range(64):
        if bits >> b & 1:
            if b in TRANSPORT_FEATURES:
                names.append(TRANSPORT_FEATURES[b])
            elif b in own:
                names.append(prefix + own[b])
            else:
                names.append(f"bit{b}")
    return names


def subsection(blob: bytes, name: str) -> int | None:
    """Where the body of subsection ``name`` starts in the virtio blob (after its 0x05 marker,
    name and version), or None when the stream does not carry it."""
    tag = b"\x05" + bytes([len(name)]) + name.encode()
    at = blob.find(tag)
    return None if at < 0 else at + len(tag) + 4


def queue_names(model: str, count: int) -> list[str]:
    if model == "virtio-net":
        pairs = (count - 1) // 2 if count % 2 else count // 2
        names = [f"{d}{i}" for i in range(pairs) for d in ("rx", "tx")]
        return names + ["ctrl"] * (count - len(names))
    if model == "virtio-blk":
        return [f"req{i}" for i in range(count)]
    return [f"vq{i}" for i in range(count)]


def explain_virtio(device, value) -> Explained | None:
    node = value.node("virtio")
    if node.is_leaf:  # the blob was not decoded: not a virtio device of a known transport
        return None
    blob = value.raw("virtio")
    model = device.model
    x = Explained(device.key, f"{model} (virtio)")
    status = value("virtio/status")
    x.add("status", status, " ".join(n for b, n in STATUS.items() if status >> b & 1) or "reset",
          "virtio/status", bits={n.lower(): (b, 1) for b, n in STATUS.items()})  # fmt: skip
    features = value("virtio/guest_features_lo")
    at = subsection(blob, "virtio/64bit_features")
    if at is not None:
        features = struct.unpack_from(">Q", blob, at)[0]
    x.add("features", features, " ".join(feature_names(model, features)) or "none",
          "virtio/guest_features_lo" if at is None else "virtio/64bit_features")  # fmt: skip
    x.add("isr", value("virtio/isr"), "interrupt status (bit 0 queue, bit 1 config)", "virtio/isr")
    if _has(value, "virtio/config_vector"):  # PCI's MSI-X; virtio-mmio has one interrupt
        x.add("config_vector", value("virtio/config_vector"), "MSI-X vector of config changes",
              "virtio/config_vector")  # fmt: skip
    rings = subsection(blob, "virtio/virtqueues")
    count = value("virtio/num_queues")
    names = queue_names(model, count)
    memory = value.memory
    for i in range(count):
        q = f"virtio/vq[{i}]"
        num, desc = value(f"{q}/num"), value(f"{q}/desc")
        if not num or not desc:
            continue
        if rings is not None:
            avail, used = struct.unpack_from(">QQ", blob, rings + 16 * i)
        else:  # a legacy device: the rings follow the table, the used ring 4096-aligned
            avail = desc + 16 * num
            used = (avail + 6 + 2 * num + 4095) & ~4095
        last = value(f"{q}/last_avail_idx")
        vector = value(f"{q}/vector") if _has(value, f"{q}/vector") else 0xFFFF
        ring = Ring(memory, num, desc, avail, used)
        name = names[i]
        text = f"{num} entries: desc {desc:#x} avail {avail:#x} used {used:#x}; vector " + (
            "none" if vector == 0xFFFF else str(vector)
        )
        x.add(f"{name}", desc, text, f"{q}/desc")
        x.add(f"{name}.last_avail_idx", last, "next available entry the device will take",
              f"{q}/last_avail_idx")  # fmt: skip
        if ring.avail_idx is None:
            x.add(f"{name}.rings", "unreadable", "not in guest RAM", f"{q}/desc", settable=False)
            continue
        waiting = (ring.avail_idx - last) & 0xFFFF
        in_flight = (last - ring.used_idx) & 0xFFFF
        x.add(f"{name}.avail_idx", ring.avail_idx, f"driver made {waiting} available the device has "
              "not taken", f"guest memory {avail + 2:#x}", settable=False)  # fmt: skip
        x.add(f"{name}.used_idx", ring.used_idx, f"{in_flight} taken by the device, not yet used",
              f"guest memory {used + 2:#x}", settable=False)  # fmt: skip
        if ring.used_idx:  # the request the device completed last, still in the table
            entry = ring.used_entry(ring.used_idx - 1)
            if entry is not None:
                text = (f"{_chain_text(model, ring, ring.chain(entry[0]))}; {entry[1]} bytes written "
                        "(descriptors as the table holds them now: the driver may reuse them)")  # fmt: skip
                where = used + 4 + 8 * ((ring.used_idx - 1) % num)
                x.add(f"{name}.last_used", entry[0], text, f"guest memory {where:#x}", settable=False)
        for label, start, n in (("waiting", last, waiting), ("in_flight", ring.used_idx, in_flight)):
            if not n:
                continue
            chains = [ring.chain(ring.avail_entry(start + k)) for k in range(min(n, SHOWN))]
            lines = [_chain_text(model, ring, c) for c in chains]
            more = f" (+{n - SHOWN} more)" if n > SHOWN else ""
            x.add(f"{name}.{label}", n, "; ".join(lines) + more, f"guest memory {avail + 4:#x}",
                  settable=False)  # fmt: skip
    return x


def _has(value, rel: str) -> bool:
    try:
        value.node(rel)
    except EditError:
        return False
    return True


class Ring:
    """One split virtqueue in guest memory; every read may fail (None) on a damaged ring."""

    def __init__(self, memory, num: int, desc: int, avail: int, used: int):
        self.memory, self.num, self.desc, self.avail, self.used = memory, num, desc, avail, used
        self.avail_idx = self._u16(avail + 2)
        self.used_idx = self._u16(used + 2)

    def _read(self, address: int, size: int) -> bytes | None:
        if self.memory is None:
            return None
        try:
            return self.memory(address, size)
        except VmstateError:  # an address outside RAM: the ring shows unreadable
            return None

    def _u16(self, address: int) -> int | None:
        raw = self._read(address, 2)
        return None if raw is None else int.from_bytes(raw, "little")

    def avail_entry(self, index: int) -> int | None:
        return self._u16(self.avail + 4 + 2 * (index % self.num))

    def used_entry(self, index: int) -> tuple[int, int] | None:
        """(descriptor id, bytes written) of used ring entry ``index``."""
        raw = self._read(self.used + 4 + 8 * (index % self.num), 8)
        return None if raw is None else struct.unpack("<II", raw)

    def chain(self, head: int | None) -> list[tuple[int, int, int]]:
        """(addr, len, flags) of each descriptor of the chain at ``head``, an indirect table's
        entries in its place (2.7.5.3), at most ``num`` long: a looping chain stops."""
        out: list[tuple[int, int, int]] = []
        for addr, length, flags in self._walk(self.desc, self.num, head):
            if flags & DESC_F_INDIRECT and length >= 16:
                out += self._walk(addr, length // 16, 0)
            else:
                out.append((addr, length, flags))
        return out

    def _walk(self, table: int, size: int, head: int | None) -> list[tuple[int, int, int]]:
        out: list[tuple[int, int, int]] = []
        index = head
        while index is not None and index < size and len(out) < size:
            raw = self._read(table + 16 * index, 16)
            if raw is None:
                break
            addr, length, flags, nxt = struct.unpack("<QIHH", raw)
            out.append((addr, length, flags))
            index = nxt if flags & DESC_F_NEXT else None
        return out

    def read(self, address: int, size: int) -> bytes | None:
        return self._read(address, size)


def _chain_text(model: str, ring: Ring, chain: list[tuple[int, int, int]]) -> str:
    if not chain:
        return "(unreadable chain)"
    parts = []
    for addr, length, flags in chain:
        kind = "w" if flags & DESC_F_WRITE else "r"
        stale = "" if ring.read(addr, 1) is not None else " (not in RAM: stale)"
        parts.append(f"{kind} {addr:#x}+{length}{stale}")
    text = " ".join(parts)
    addr, length, flags = chain[0]
    if model == "virtio-blk" and length >= 16 and not flags & DESC_F_WRITE:
        header = ring.read(addr, 16)
        if header is not None:
            kind, _prio, sector = struct.unpack("<IIQ", header)
            text = f"{_BLK_TYPES.get(kind, f'type {kind}')} sector {sector}: {text}"
    return text


register("virtio-net", explain_virtio)
register("virtio-blk", explain_virtio)
register("virtio-scsi", explain_virtio)
register("virtio-balloon", explain_virtio)
register("virtio-rng", explain_virtio)
register("virtio-serial", explain_virtio)
