"""Change a NIC's MAC address everywhere it lives: the device's state and, on request, the guest's
own copies in RAM (the kernel's net_device, a driver's softc...), which are found by searching for
the old address."""

from __future__ import annotations

from dataclasses import dataclass, field

from .devices.nics import Nic, format_mac, mac_patches
from .errors import EditError
from .snapshot import Snapshot

MAX_MEMORY_HITS = 64


@dataclass
class MacChange:
    nic: Nic
    old: bytes
    new: bytes
    device_fields: list[tuple[int, bytes, str]] = field(default_factory=list)
    memory_hits: list[int] = field(default_factory=list)  # guest-physical addresses of the old MAC

    def describe(self) -> list[str]:
        lines = [f"{self.nic.name} ({self.nic.model}): {format_mac(self.old)} -> {format_mac(self.new)}"]
        lines += [f"  device state: {what}" for _, _, what in self.device_fields]
        lines += [f"  guest memory: physical {a:#x}" for a in self.memory_hits]
        return lines


def pick_nic(snap: Snapshot, name: str | None) -> Nic:
    nics = snap.nics()
    if not nics:
        raise EditError("this snapshot has no NIC (e1000, e1000e, rtl8139, virtio-net)")
    if name is None:
        if len(nics) > 1:
            raise EditError(
                f"{len(nics)} NICs; name one: " + ", ".join(f"{n.name} ({n.model})" for n in nics)
            )
        return nics[0]
    for n in nics:
        if name in (n.name, n.model) or n.name.endswith("/" + name) or n.name.split("/")[0] == name:
            return n
    raise EditError(f"no NIC {name!r}; the NICs are: " + ", ".join(n.name for n in nics))


def find_in_memory(snap: Snapshot, pattern: bytes, limit: int = MAX_MEMORY_HITS) -> list[int]:
    hits: list[int] = []
    for r in snap.physical.ranges:
        if r.kind != "ram":
            continue
        pos = r.start
        while len(hits) < limit:
            hit = snap.physical.search(pattern, pos, r.end)
            if hit is None:
                break
            hits.append(hit)
            pos = hit + 1
    return hits


def plan_mac_change(snap: Snapshot, nic_name: str | None, new: bytes, memory: bool = False) -> MacChange:
    nic = pick_nic(snap, nic_name)
    if not nic.copies:
        raise EditError(f"{nic.name}: the MAC's place in this device's state is unknown")
    change = MacChange(nic, nic.mac, new, mac_patches(snap, nic, new))
    if memory and nic.mac and nic.mac != new:
        change.memory_hits = find_in_memory(snap, nic.mac)
    return change


def apply_mac_change(snap: Snapshot, change: MacChange) -> None:
    for offset, data, what in change.device_fields:
        snap.edits.patch(offset, data, what)
    for address in change.memory_hits:
        snap.physical.write(address, change.new)
    if change.old != change.new:
        first = next((k for k, v in snap.edits.macs.items() if v == change.old), change.old)
        snap.edits.macs[first] = change.new
