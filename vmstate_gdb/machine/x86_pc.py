"""x86 `pc` (i440fx) and `q35` guest-physical layout (hw/i386/pc_piix.c, pc_q35.c, pc.c)."""

from __future__ import annotations

from . import MachineLayout, PhysicalRange

GiB = 1 << 30
ABOVE_4G_START = 1 << 32


def ram_split(machine_type: str, ram_size: int, max_ram_below_4g: int | None = None) -> tuple[int, int]:
    """(below, above) bytes of main RAM, by QEMU's rules for the machine type."""
    if "q35" in machine_type:
        # pc_q35_init: 2 GiB below 4G when RAM >= 2.75 GiB, else up to 2.75 GiB; then the user's cap.
        lowmem = 0x80000000 if ram_size >= 0xB0000000 else 0xB0000000
        lowmem = min(lowmem, max_ram_below_4g if max_ram_below_4g is not None else 4 * GiB)
    else:
        # pc_init1: max-ram-below-4g (default 3.5 GiB); gigabyte-aligned types use 3 GiB when RAM
        # reaches it. Every pc-i440fx type since 2.1 is gigabyte-aligned.
        lowmem = max_ram_below_4g if max_ram_below_4g is not None else 0xE0000000
        if ram_size >= lowmem and _gigabyte_align(machine_type):
            lowmem = min(lowmem, 0xC0000000)
    if ram_size >= lowmem:
        return lowmem, ram_size - lowmem
    return ram_size, 0


def _gigabyte_align(machine_type: str) -> bool:
    for old in ("pc-i440fx-1.", "pc-i440fx-2.0", "pc-1.", "isapc"):
        if machine_type.startswith(old):
            return False
    return True


def pc_layout(
    machine_type: str, blocks: dict[str, int], max_ram_below_4g: int | None = None
) -> MachineLayout:
    ranges: list[PhysicalRange] = []
    notes: list[str] = []
    ram_size = blocks.get("pc.ram", 0)
    below, above = ram_split(machine_type, ram_size, max_ram_below_4g)
    if ram_size:
        ranges.append(PhysicalRange(0, below, "pc.ram", 0, "ram"))
        if above:
            ranges.append(PhysicalRange(ABOVE_4G_START, above, "pc.ram", below, "ram"))
    else:
        notes.append("no pc.ram block: memory-backend or NUMA RAM blocks need an explicit layout")
    bios = blocks.get("pc.bios")
    if bios:
        ranges.append(PhysicalRange(ABOVE_4G_START - bios, bios, "pc.bios", 0, "rom"))
    ranges.sort(key=lambda r: r.start)
    return MachineLayout(machine_type, ranges, below, above, notes)
