"""x86_64 `cpu` sections without a VMDESCRIPTION (suppress-vmdesc): named from the built-in layout
of the main body, which has not changed from QEMU 5.0 to 10.x; the subsections stay raw bytes."""

from __future__ import annotations

from ...devices.fields import Group, Leaf
from ...devices.tree import register_section_decoder
from ...stream.index import Section
from .cpu import CPU_FIELDS, CPU_MAIN_BODY_SIZE, CPU_VERSION

_TYPES = {1: "uint8", 2: "uint16", 4: "uint32", 8: "uint64"}


def decode_cpu_section(sec: Section, key: str) -> Group | None:
    if sec.body_size < CPU_MAIN_BODY_SIZE or sec.version_id != CPU_VERSION:  # not an x86 vCPU
        return None
    group = Group(key, key, "device", sec.body_offset, sec.body_size, vmsd_name="cpu", version=sec.version_id)
    for name, (offset, size) in sorted(CPU_FIELDS.items(), key=lambda item: item[1][0]):
        group.members.append(Leaf(name, f"{key}/{name}", _TYPES[size], sec.body_offset + offset, size))
    rest = sec.body_size - CPU_MAIN_BODY_SIZE
    if rest:
        group.members.append(
            Leaf("subsections", f"{key}/subsections", "buffer", sec.body_offset + CPU_MAIN_BODY_SIZE, rest)
        )
    return group


register_section_decoder("cpu", decode_cpu_section)
