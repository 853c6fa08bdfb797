"""A libvirt save image again: a new header and domain XML, then the edited stream, uncompressed.

The header is rebuilt rather than copied: the output's stream is raw (``compressed`` 0) whatever the
input's was, and a changed NIC MAC must also change the XML's ``<mac address=...>``, because
``virsh restore`` starts QEMU with the command line it builds from that XML, and a NIC whose
``mac=`` differs from the MAC in the device state is what the guest would see after the next reset.
libvirt pads the XML with zeros (64 KiB in libvirt 9.0) so that ``virsh save-image-define`` can
grow it in place; the padding is kept when the new XML fits in it.
"""

from __future__ import annotations

import re
import struct

from ..containers.libvirt import HEADER_SIZE, MAGIC, LibvirtHeader

_PAD = 64 << 10  # what libvirt adds when it writes an image (virQEMUSaveDataWrite's zeros)


def edited_xml(xml: str, mac_changes: dict[str, str]) -> str:
    """``xml`` with each ``<mac address='OLD'/>`` of ``mac_changes`` (old -> new, any case) set to new."""
    for old, new in mac_changes.items():
        pattern = re.compile(r"(<mac\b[^>]*?\baddress=)(['\"])" + re.escape(old) + r"\2", re.IGNORECASE)
        xml = pattern.sub(lambda m, new=new: f"{m[1]}{m[2]}{new.lower()}{m[2]}", xml)
    return xml


def build_header(header: LibvirtHeader, xml: str) -> bytes:
    """Header, XML, cookie and zero padding, for a raw stream that follows immediately."""
    data = xml.encode() + b"\0"
    cookie_offset = 0
    if header.cookie is not None:
        cookie_offset = len(data) if header.version >= 2 else 0
        data += header.cookie.encode() + b"\0"
    data_len = header.data_len if len(data) <= header.data_len else len(data) + _PAD
    data += b"\0" * (data_len - len(data))
    endian = "<" if header.endian == "little" else ">"
    fields = struct.pack(endian + "5I", header.version, data_len, int(header.was_running), 0, cookie_offset)
    out = MAGIC + fields + b"\0" * (HEADER_SIZE - 16 - len(fields)) + data
    assert len(out) == HEADER_SIZE + data_len
    return out
