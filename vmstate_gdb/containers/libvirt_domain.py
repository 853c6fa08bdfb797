"""A libvirt domain's internal snapshots: which qcow2 disks hold them, asked of libvirt itself.

``virsh snapshot-create-as DOM NAME`` on a domain with qcow2 disks is QEMU's ``savevm`` into every
disk: the VM state goes into one of them (the first writable qcow2), the snapshot table into all.
The binding tells which disks the domain has and which snapshots libvirt knows; the qcow2 container
reads the tables themselves.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from ..errors import VmstateError


@dataclass
class DomainDisk:
    target: str  # vda
    path: str  # the qcow2 file


def domain_snapshot_disks(uri: str | None, domain: str) -> tuple[list[DomainDisk], list[str]]:
    """The domain's qcow2 file disks, and the names of the snapshots libvirt has for it."""
    try:
        import libvirt
    except ImportError:
        raise VmstateError("the libvirt Python binding is not installed (Debian: python3-libvirt)") from None
    where = uri or "libvirt's default URI"
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # its errors are ours to report, once
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as e:
        raise VmstateError(f"cannot connect: {e.get_error_message()}", where) from None
    try:
        try:
            dom = conn.lookupByName(domain)
            xml = dom.XMLDesc(0)
            names = sorted(dom.snapshotListNames(0))
        except libvirt.libvirtError as e:
            raise VmstateError(f"domain {domain}: {e.get_error_message()}", where) from None
    finally:
        conn.close()
    disks = []
    for disk in ET.fromstring(xml).iterfind("./devices/disk"):
        driver, source, target = disk.find("driver"), disk.find("source"), disk.find("target")
        if (
            disk.get("type") == "file"
            and driver is not None
            and driver.get("type") == "qcow2"
            and source is not None
            and source.get("file")
        ):
            disks.append(
                DomainDisk(target.get("dev", "?") if target is not None else "?", source.get("file"))
            )
    return disks, names
