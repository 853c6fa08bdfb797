"""Arm `virt` guest-physical layout (hw/arm/virt.c, base_memmap): RAM is one block at 1 GiB; the
two flash banks sit at 0 and 64 MiB below the devices (GIC, PL011, PL031, fw_cfg, virtio-mmio).

RAM above 255 GiB (VIRT_HIGH_GIC_REDIST2 and beyond) only starts past the 256 GiB of low RAM a
virt guest can have, so `mach-virt.ram` is mapped in one piece.
"""

from __future__ import annotations

from . import MachineLayout, PhysicalRange

VIRT_MEM = 0x40000000  # base_memmap[VIRT_MEM]
VIRT_FLASH = 0x0  # base_memmap[VIRT_FLASH]: two banks of 64 MiB
FLASH_BANK = 0x4000000
RAM_BLOCK = "mach-virt.ram"
FLASH_BLOCKS = ("virt.flash0", "virt.flash1")


def is_virt(machine_type: str, blocks: dict[str, int]) -> bool:
    return machine_type.startswith("virt") or RAM_BLOCK in blocks


def virt_layout(machine_type: str, blocks: dict[str, int]) -> MachineLayout:
    ranges: list[PhysicalRange] = []
    notes: list[str] = []
    ram = blocks.get(RAM_BLOCK, 0)
    if ram:
        ranges.append(PhysicalRange(VIRT_MEM, ram, RAM_BLOCK, 0, "ram"))
    else:
        notes.append(f"no {RAM_BLOCK} block: memory-backend RAM blocks need an explicit layout")
    for bank, name in enumerate(FLASH_BLOCKS):
        size = blocks.get(name)
        if size:  # pflash is a ROM device: the guest reads it, writes are commands to the chip
            ranges.append(
                PhysicalRange(VIRT_FLASH + bank * FLASH_BANK, min(size, FLASH_BANK), name, 0, "rom")
            )
    ranges.sort(key=lambda r: r.start)
    return MachineLayout(machine_type, ranges, 0, 0, notes)
