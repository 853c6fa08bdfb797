"""Guest-physical layout per machine type. The stream names RAM blocks but not where the guest sees
them; this is QEMU's policy for each machine, reproduced (and overridable by the user): `pc` and
`q35` in x86_pc, Arm `virt` in arm_virt."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PhysicalRange:
    start: int  # guest-physical address
    size: int
    block: str
    block_offset: int
    kind: str  # "ram", "rom"

    @property
    def end(self) -> int:
        return self.start + self.size


@dataclass
class MachineLayout:
    machine_type: str
    ranges: list[PhysicalRange]
    below_4g: int  # bytes of main RAM below 4 GiB
    above_4g: int
    notes: list[str]


def layout_for(
    machine_type: str, blocks: dict[str, int], max_ram_below_4g: int | None = None
) -> MachineLayout:
    """The layout of the machine type the stream names; x86 `pc` rules for anything else, as
    before there was a second one."""
    from .arm_virt import is_virt, virt_layout
    from .x86_pc import pc_layout

    if is_virt(machine_type, blocks):
        return virt_layout(machine_type, blocks)
    return pc_layout(machine_type, blocks, max_ram_below_4g)
