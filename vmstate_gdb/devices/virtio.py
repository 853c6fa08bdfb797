"""Decode the opaque `virtio` field: QEMU writes virtio devices with its own routine (virtio_save in
hw/virtio/virtio.c, virtio_pci_save_config/_queue in hw/virtio/virtio-pci.c, the virtio-mmio
transport's state in hw/virtio/virtio-mmio.c), so the JSON only says
"virtio, N bytes". We name the parts a user edits: the cached config space (virtio-net: mac first)
and the device's own state (virtio-net-device: mac first), each with its stream offset.
"""

from __future__ import annotations

from collections.abc import Callable

from .fields import Group, Leaf, Node
from .tree import register_blob_decoder

PCI_CAP_ID_MSIX = 0x11
_MAX_QUEUES = 1024


def _msix_entries(config: bytes) -> int:
    """Table size from the MSI-X capability in PCI config space, or 0 when there is none."""
    if len(config) < 0x40 or not config[6] & 0x10:  # status: capabilities list
        return 0
    ptr = config[0x34] & 0xFC
    for _ in range(48):
        if ptr < 0x40 or ptr + 4 > len(config):
            return 0
        if config[ptr] == PCI_CAP_ID_MSIX:
            return (int.from_bytes(config[ptr + 2 : ptr + 4], "little") & 0x7FF) + 1
        ptr = config[ptr + 1] & 0xFC
    return 0


def _try_layout(
    blob: bytes, config_size: int, mmio_prefix: int | None = None
) -> list[tuple[str, int, int]] | None:
    """(name, offset in blob, size) of each part, or None if this config size does not fit.
    ``mmio_prefix``: a virtio-mmio transport, whose own state (virtio_mmio_save_config) takes that
    many bytes before the common part; PCI config space otherwise."""
    parts: list[tuple[str, int, int]] = []
    pos = 0

    def take(name: str, size: int) -> int:
        nonlocal pos
        if pos + size > len(blob):
            raise ValueError
        parts.append((name, pos, size))
        pos += size
        return pos - size

    try:
        if mmio_prefix is not None:
            n = 0
            if mmio_prefix:
                take("mmio/state", mmio_prefix)
        else:
            take("pci/version_id", 4)
            cfg_at = take("pci/config", config_size)
            take("pci/irq_state", 16)
            n = _msix_entries(blob[cfg_at : cfg_at + config_size])
        if n:
            take("msix_table", 16 * n)
            take("msix_pba", (n + 7) // 8)
            take("config_vector", 2)
        take("status", 1)
        take("isr", 1)
        take("queue_sel", 2)
        take("guest_features_lo", 4)
        at = take("config_len", 4)
        config_len = int.from_bytes(blob[at : at + 4], "big")
        if config_len > 4096:
            return None
        take("config", config_len)
        at = take("num_queues", 4)
        nq = int.from_bytes(blob[at : at + 4], "big")
        if nq > _MAX_QUEUES:
            return None
        for i in range(nq):
            take(f"vq[{i}]/num", 4)
            if mmio_prefix is not None:  # has_variable_vring_alignment: the vring's alignment
                take(f"vq[{i}]/align", 4)
            take(f"vq[{i}]/desc", 8)
            take(f"vq[{i}]/last_avail_idx", 2)
            if n:
                take(f"vq[{i}]/vector", 2)
        take("device", len(blob) - pos)
    except ValueError:
        return None
    return parts


def decode_virtio(f: dict, path: str, pos: int, read: Callable[[int, int], bytes], name: str) -> Node | None:
    size = int(f.get("size", 0))
    if size < 300:
        return None
    blob = read(pos, size)
    is_net = "virtio-net" in path
    layout = None
    if "virtio-mmio" in path:  # the transport's own state has no size on the wire: try each
        tries = [(0, k) for k in range(0, 65, 4)]
    else:
        tries = [(256, None), (4096, None)]  # 4096 when the function is PCI Express
    for config_size, mmio_prefix in tries:
        layout = _try_layout(blob, config_size, mmio_prefix)
        if layout is None:
            continue
        if is_net:
            dev = dict((n, (o, s)) for n, o, s in layout)
            dev_off, dev_size = dev["device"]
            cfg_off, cfg_size = dev["config"]
            if dev_size < 6:
                layout = None
                continue
            mac = blob[dev_off : dev_off + 6]
            cached = blob[cfg_off : cfg_off + 6] if cfg_size >= 6 else b""
            if cached and any(cached) and cached != mac:
                layout = None
                continue
            if mmio_prefix is not None and cached != mac:  # a guessed prefix must be proven
                layout = None
                continue
        break
    if layout is None:
        return None
    root = Group(name, path, "virtio", pos, size, vmsd_name="virtio")
    groups: dict[str, Group] = {"": root}

    def group_for(prefix: str) -> Group:
        if prefix not in groups:
            parent_prefix, _, leaf = prefix.rpartition("/")
            parent = group_for(parent_prefix)
            g = Group(leaf, f"{parent.path}/{leaf}", "struct", pos, 0)
            parent.members.append(g)
            groups[prefix] = g
        return groups[prefix]

    ints = {
        "pci/version_id",
        "config_vector",
        "status",
        "isr",
        "queue_sel",
        "guest_features_lo",
        "config_len",
        "num_queues",
    }
    for part, off, psize in layout:
        prefix, _, leaf = part.rpartition("/")
        parent = group_for(prefix)
        if parent.size == 0:
            parent.offset = pos + off
        parent.size = pos + off + psize - parent.offset
        absolute = pos + off
        if part in ("config", "device") and is_net and psize >= 6:
            g = Group(
                leaf,
                f"{parent.path}/{leaf}",
                "struct",
                absolute,
                psize,
                vmsd_name="virtio-net-device" if part == "device" else "virtio_net_config",
            )
            g.members.append(Leaf("mac", f"{g.path}/mac", "buffer", absolute, 6))
            if psize > 6:
                g.members.append(Leaf("rest", f"{g.path}/rest", "buffer", absolute + 6, psize - 6))
            parent.members.append(g)
            continue
        kind = "buffer"
        if part in ints or part.startswith("vq["):
            kind = {1: "uint8", 2: "uint16", 4: "uint32", 8: "uint64"}.get(psize, "buffer")
        parent.members.append(Leaf(leaf, f"{parent.path}/{leaf}", kind, absolute, psize))
    return root


register_blob_decoder("virtio", decode_virtio)
