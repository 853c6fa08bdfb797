"""PCI IDE (QEMU's PIIX3/PIIX4 IDE, hw/ide/pci.c and core.c): each channel's bus-master DMA engine
and its PRD table in guest memory (Intel PIIX4 datasheet 3.3 and 5.8; SFF-8038i), and each drive's
task file by the ATA/ATAPI-6 names (status BSY DRDY DF DSC DRQ CORR IDX ERR, error, the LBA and
sector count of the command now or last in hand). QEMU's drive slots exist whether or not a drive
is attached; `identified` says whether the guest has had an IDENTIFY answered (a drive is there)."""

from __future__ import annotations

import struct

from ...errors import VmstateError
from . import Explained, bits, flags, register

STATUS = {7: "BSY", 6: "DRDY", 5: "DF", 4: "DSC", 3: "DRQ", 2: "CORR", 1: "IDX", 0: "ERR"}
ERROR = {7: "ICRC", 6: "UNC", 5: "MC", 4: "IDNF", 3: "MCR", 2: "ABRT", 1: "TK0NF", 0: "AMNF"}
BMIC = {0: "START", 3: "WRITE_TO_MEMORY"}  # bit 3: the device writes memory, i.e. a disk read
DEVICE_CONTROL = {1: "nIEN", 2: "SRST", 7: "HOB"}
_PRD_MAX = 512  # entries read from a PRD table: a 64 KiB table boundary holds 8192; enough to show


def address(drive, value) -> tuple[int | str, str]:
    """The task file's address: (LBA or "C/H/S", its mode). LBA28 is the DEV/HEAD low nibble, the
    cylinder registers and the sector; LBA48 adds the high-order bytes; with the LBA bit clear it
    is CHS."""
    sel, hcyl, lcyl, sector = (value(f"{drive}/{n}") for n in ("select", "hcyl", "lcyl", "sector"))
    if sel & 0x40:  # as QEMU's ide_get_sector: the LBA bit first, then the command's width
        if value(f"{drive}/lba48"):
            hob = [value(f"{drive}/hob_{n}") for n in ("hcyl", "lcyl", "sector")]
            return (hob[0] << 16 | hob[1] << 8 | hob[2]) << 24 | hcyl << 16 | lcyl << 8 | sector, "LBA48"
        return (sel & 0xF) << 24 | hcyl << 16 | lcyl << 8 | sector, "LBA28"
    return f"{hcyl << 8 | lcyl}/{sel & 0xF}/{sector}", "CHS cylinder/head/sector"


def prd_entries(memory, address: int) -> list[tuple[int, int, bool]]:
    """(buffer address, bytes, end of table) of each PRD entry, up to the one marked EOT; a byte
    count is even, and 0 means 64 KiB (as QEMU reads it)."""
    out = []
    for i in range(_PRD_MAX):
        raw = memory(address + 8 * i, 8)
        addr, count, flag = struct.unpack("<IHH", raw)
        out.append((addr & ~1, count & 0xFFFE or 0x10000, bool(flag & 0x8000)))  # bmdma_prepare_buf
        if flag & 0x8000:
            break
    return out


def explain_ide(device, value) -> Explained:
    x = Explained(device.key, "PCI IDE")
    memory = getattr(value, "memory", None)
    for ch in (0, 1):
        name = ("primary", "secondary")[ch]
        cmd, addr = value(f"bmdma[{ch}]/cmd"), value(f"bmdma[{ch}]/addr")
        x.add(f"BMIC{ch}", cmd, f"{name} bus master: {'running' if cmd & 1 else 'stopped'}, "
              f"{'device to memory (read)' if cmd & 8 else 'memory to device (write)'}",
              f"bmdma[{ch}]/cmd", bits=bits(BMIC))  # fmt: skip
        text = f"{name} PRD table at {addr:#x}"
        if addr and memory is not None:
            try:
                entries = prd_entries(memory, addr)
                total = sum(n for _, n, _ in entries)
                first = ", ".join(f"{a:#x}+{n}" for a, n, _ in entries[:4]) + (
                    " ..." if len(entries) > 4 else ""
                )
                eot = "EOT" if entries[-1][2] else f"no EOT in {_PRD_MAX} entries"
                text += f": {len(entries)} entries, {total} bytes ({first}; {eot})"
            except VmstateError:  # the table is outside RAM: only its address
                text += " (not in RAM)"
        x.add(f"PRD{ch}", addr, text, f"bmdma[{ch}]/addr", settable=False, hint="set bmdma[N]/addr raw")
        unit = value(f"bus[{ch}]/unit")
        role = ("master", "slave")[unit & 1]
        x.add(f"channel{ch}.selected", unit, f"{name} channel: drive {unit} ({role}) selected",
              f"bus[{ch}]/unit", limit=1)  # fmt: skip
        ctl = value(f"bus[{ch}]/cmd")
        x.add(f"channel{ch}.control", ctl, f"device control: {flags(ctl, DEVICE_CONTROL)}", f"bus[{ch}]/cmd",
              bits=bits(DEVICE_CONTROL))  # fmt: skip
        for unit in (0, 1):
            drive = f"bus[{ch}].ifs[{unit}]"
            label = f"ide{2 * ch + unit}"
            status, error = value(f"{drive}/status"), value(f"{drive}/error")
            x.add(f"{label}.status", status, flags(status, STATUS), f"{drive}/status", bits=bits(STATUS))
            x.add(f"{label}.error", error, flags(error, ERROR), f"{drive}/error", bits=bits(ERROR))
            lba, where = address(drive, value)
            x.add(f"{label}.lba", lba, f"{where}: the current or last command's (after one completes, "
                  "the sector after its last)", f"{drive}/sector", settable=False,
                  hint=f"set {drive}/sector, lcyl, hcyl, select raw")  # fmt: skip
            x.add(f"{label}.nsector", value(f"{drive}/nsector"), "sectors left to transfer",
                  f"{drive}/nsector")  # fmt: skip
            identified = value(f"{drive}/identify_set")
            x.add(f"{label}.identified", identified, "IDENTIFY answered (a drive is attached)" if identified
                  else "no IDENTIFY answered yet", f"{drive}/identify_set")  # fmt: skip
    return x


register("ide", explain_ide)
