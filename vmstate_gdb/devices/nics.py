"""Where each NIC model keeps its MAC address in device state, and how to change every copy.

QEMU sources: hw/net/e1000.c (eeprom_data, mac_reg RA, e1000/full_mac_state), hw/net/e1000e.c
(core.eeprom, core.mac, core.permanent_mac), hw/net/rtl8139.c (phys, conf.macaddr,
eeprom.contents), hw/net/virtio-net.c (virtio-net-device mac, config space).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import EditError
from .fields import Array, Leaf
from .tree import Device

if TYPE_CHECKING:
    from ..snapshot import Snapshot

NIC_MODELS = ("e1000", "e1000e", "igb", "rtl8139", "virtio-net")
E1000_RA = 0x1500  # RAL0 word index in mac_reg (0x5400 >> 2)
EEPROM_CHECKSUM_WORD = 0x3F
EEPROM_SUM = 0xBABA


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def parse_mac(text: str) -> bytes:
    parts = text.replace("-", ":").split(":")
    try:
        mac = bytes(int(p, 16) for p in parts)
    except ValueError:
        mac = b""
    if len(mac) != 6 or any(len(p) not in (1, 2) for p in parts):
        raise EditError(f"{text!r} is not a MAC address (aa:bb:cc:dd:ee:ff)")
    return mac


@dataclass
class MacCopy:
    """One place a device keeps the MAC; ``encode`` gives its new bytes for a MAC."""

    path: str
    offset: int
    size: int
    kind: str  # "raw", "ral", "rah", "eeprom" (3 LE words as be16), "checksum"


@dataclass
class Nic:
    device: Device
    copies: list[MacCopy] = field(default_factory=list)
    mac: bytes = b""

    @property
    def name(self) -> str:
        return self.device.key

    @property
    def model(self) -> str:
        return self.device.model

    def describe(self) -> dict:
        return {
            "name": self.name,
            "model": self.model,
            "mac": format_mac(self.mac) if self.mac else "unknown (device state not decoded)",
            "copies": [c.path for c in self.copies],
        }


def find_nics(snap: Snapshot) -> list[Nic]:
    out = []
    for dev in snap.devices.devices:
        if dev.model not in NIC_MODELS:
            continue
        nic = Nic(dev)
        _locate(snap, nic)
        out.append(nic)
    return out


def _leaf(snap: Snapshot, path: str) -> Leaf | None:
    try:
        node = snap.devices.resolve(path)
    except EditError:
        return None
    return node if isinstance(node, Leaf) else None


def _array(snap: Snapshot, path: str) -> Array | None:
    try:
        node = snap.devices.resolve(path)
    except EditError:
        return None
    return node if isinstance(node, Array) else None


def _locate(snap: Snapshot, nic: Nic) -> None:
    key = nic.device.key
    rd = snap.read_stream
    model = nic.model
    if model == "virtio-net":
        for part in ("virtio/device/mac", "virtio/config/mac"):
            leaf = _leaf(snap, f"{key}/{part}")
            if leaf is not None:
                nic.copies.append(MacCopy(leaf.path, leaf.offset, 6, "raw"))
        if nic.copies:
            nic.mac = rd(nic.copies[0].offset, 6)
        return
    if model == "rtl8139":
        for part in ("phys", "conf.macaddr"):
            leaf = _leaf(snap, f"{key}/{part}")
            if leaf is not None:
                nic.copies.append(MacCopy(leaf.path, leaf.offset, 6, "raw"))
        eeprom = _array(snap, f"{key}/eeprom.contents")
        if eeprom is not None and eeprom.count >= 10:
            nic.copies.append(MacCopy(f"{eeprom.path}[7..9]", eeprom.offset + 14, 6, "eeprom"))
        if nic.copies:
            nic.mac = rd(nic.copies[0].offset, 6)
        return
    # e1000 family
    regs_paths = [f"{key}/mac_reg[0]"] if model == "e1000" else []
    full_paths = [f"{key}/full_mac_state/mac_reg", f"{key}/core.mac"]
    eeprom_paths = [f"{key}/eeprom_data", f"{key}/core.eeprom"]
    for p in regs_paths:
        ra = _array(snap, p)
        if ra is not None and ra.count >= 2:
            nic.copies.append(MacCopy(f"{ra.path}[0]", ra.offset, 4, "ral"))
            nic.copies.append(MacCopy(f"{ra.path}[1]", ra.offset + 4, 4, "rah"))
    for p in full_paths:
        regs = _array(snap, p)
        if regs is not None and regs.count > E1000_RA + 1:
            at = regs.offset + 4 * E1000_RA
            nic.copies.append(MacCopy(f"{regs.path}[{E1000_RA}]", at, 4, "ral"))
            nic.copies.append(MacCopy(f"{regs.path}[{E1000_RA + 1}]", at + 4, 4, "rah"))
    for p in eeprom_paths:
        ee = _array(snap, p)
        if ee is not None and ee.count == 64:
            nic.copies.append(MacCopy(f"{ee.path}[0..2]", ee.offset, 6, "eeprom"))
            nic.copies.append(
                MacCopy(
                    f"{ee.path}[{EEPROM_CHECKSUM_WORD}]",
                    ee.offset + 2 * EEPROM_CHECKSUM_WORD,
                    2,
                    "checksum",
                )
            )
    perm = _leaf(snap, f"{key}/core.permanent_mac")
    if perm is not None:
        nic.copies.append(MacCopy(perm.path, perm.offset, 6, "raw"))
    for c in nic.copies:
        if c.kind == "ral":
            ral = int.from_bytes(rd(c.offset, 4), "big")
            rah = int.from_bytes(rd(c.offset + 4, 4), "big")
            nic.mac = ral.to_bytes(4, "little") + (rah & 0xFFFF).to_bytes(2, "little")
            break


def mac_patches(snap: Snapshot, nic: Nic, mac: bytes) -> list[tuple[int, bytes, str]]:
    """(stream offset, new bytes, what) for every copy of the MAC in this NIC's state."""
    rd = snap.read_stream
    out: list[tuple[int, bytes, str]] = []
    eeprom_base: dict[str, int] = {}
    for c in nic.copies:
        if c.kind == "raw":
            out.append((c.offset, mac, c.path))
        elif c.kind == "ral":
            out.append((c.offset, int.from_bytes(mac[0:4], "little").to_bytes(4, "big"), c.path))
        elif c.kind == "rah":
            old = int.from_bytes(rd(c.offset, 4), "big")
            new = (old & 0xFFFF0000) | int.from_bytes(mac[4:6], "little")
            out.append((c.offset, new.to_bytes(4, "big"), c.path))
        elif c.kind == "eeprom":
            words = b"".join(int.from_bytes(mac[i : i + 2], "little").to_bytes(2, "big") for i in (0, 2, 4))
            out.append((c.offset, words, c.path))
            eeprom_base[c.path.split("[")[0]] = c.offset
        elif c.kind == "checksum":
            base = eeprom_base.get(c.path.split("[")[0])
            if base is None:
                continue
            words = bytearray(rd(base, 128))
            for off, data, _ in out:  # the MAC words just patched
                if base <= off < base + 128:
                    words[off - base : off - base + len(data)] = data
            total = sum(
                int.from_bytes(words[2 * i : 2 * i + 2], "big")
                for i in range(64)
                if i != EEPROM_CHECKSUM_WORD
            )
            out.append((c.offset, ((EEPROM_SUM - total) & 0xFFFF).to_bytes(2, "big"), c.path))
    return out
