"""Virtual-to-physical translation through an aarch64 vCPU's EL1&0 stage 1 tables (VMSAv8-64).

As the architecture (and target/arm/ptw.c) does it: VA bit 55 chooses TTBR1_EL1 (upper half) or
TTBR0_EL1; TCR_EL1 gives each half its size (T0SZ/T1SZ), granule (TG0/TG1: 4, 16 or 64 KiB), walk
disable (EPD0/EPD1) and top-byte-ignore (TBI0/TBI1); the walk starts at the level the input size
needs and ends at a table's block (levels 1-2) or a level 3 page. 48-bit output addresses; the
table base is TTBR's BADDR without ASID and CnP.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from ...errors import AddressError
from ..paging import Translation, WalkStep
from .cpu import Aarch64Cpu

ReadPhysical = Callable[[int, int], bytes]
OA_MASK = 0x0000_FFFF_FFFF_F000  # output address bits 47:12
BADDR_MASK = 0x0000_FFFF_FFFF_FFFE  # TTBR BADDR, bit 0 is CnP
AP_RO, AP_EL0 = 1 << 7, 1 << 6  # AP[2], AP[1] of a block/page descriptor
APTABLE_RO, APTABLE_EL0 = 1 << 62, 1 << 61  # APTable[1], APTable[0] of a table descriptor (inverted EL0)

# TCR_EL1 fields (D13.2.131): T0SZ 5:0, EPD0 7, TG0 15:14, T1SZ 21:16, EPD1 23, TG1 31:30, TBI0 37, TBI1 38
_TG0 = {0: 12, 1: 16, 2: 14}
_TG1 = {1: 14, 2: 12, 3: 16}


def granule_bits(tcr: int, half: int) -> int:
    """log2 of the granule of TTBR``half``'s tables (an unknown encoding reads as 4 KiB, as ptw.c)."""
    if half == 0:
        return _TG0.get((tcr >> 14) & 3, 12)
    return _TG1.get((tcr >> 30) & 3, 12)


class Region:
    """One half of the address space: its root, input size, granule and walk geometry."""

    def __init__(self, half: int, tcr: int, ttbr: int):
        self.half = half
        self.tsz = (tcr >> (0 if half == 0 else 16)) & 0x3F
        self.disabled = bool(tcr >> (7 if half == 0 else 23) & 1)
        self.tbi = bool(tcr >> (37 if half == 0 else 38) & 1)
        self.granule = granule_bits(tcr, half)
        self.ttbr = ttbr
        self.input_bits = 64 - min(max(self.tsz, 16), 39)  # the TxSZ range without TTST or LVA
        self.stride = self.granule - 3
        # levels needed to resolve input_bits - granule bits, ending at level 3
        self.start_level = 4 - -(-(self.input_bits - self.granule) // self.stride)

    def shift(self, level: int) -> int:
        return self.granule + self.stride * (3 - level)

    def index_bits(self, level: int) -> int:
        return min(self.stride, self.input_bits - self.shift(level))

    @property
    def base_va(self) -> int:
        return 0 if self.half == 0 else (0xFFFFFFFFFFFFFFFF << self.input_bits) & 0xFFFFFFFFFFFFFFFF

    @property
    def table(self) -> int:
        return self.ttbr & BADDR_MASK


class PageWalker:
    """Translate for one vCPU; the table pages are read through ``read_physical``.

    ``root`` replaces TTBR0_EL1, the user half, as a guest process's page-table root does on
    aarch64 (Linux puts mm->pgd in TTBR0 and keeps the kernel in TTBR1); the kernel half still
    comes from TTBR1_EL1."""

    def __init__(self, cpu: Aarch64Cpu, read_physical: ReadPhysical, root: int | None = None):
        self.cpu = cpu
        self.read = read_physical
        self.mode = cpu.paging_mode
        v = cpu.values
        tcr = v.get("tcr_el1", 0)
        ttbr0 = v.get("ttbr0_el1", 0) if root is None else root
        self.regions = (Region(0, tcr, ttbr0), Region(1, tcr, v.get("ttbr1_el1", 0)))
        self.enumerable = self.mode != "none"

    def _entry(self, address: int) -> int:
        try:
            return int.from_bytes(self.read(address, 8), "little")
        except AddressError as e:
            raise AddressError(
                f"page-table entry at physical {address:#x} is not in guest RAM", e.address
            ) from e

    def region_of(self, vaddr: int) -> Region:
        r = self.regions[vaddr >> 55 & 1]
        top = vaddr >> r.input_bits
        width = (56 if r.tbi else 64) - r.input_bits
        expect = (1 << width) - 1 if r.half else 0
        if top & ((1 << width) - 1) != expect:
            raise AddressError(
                f"virtual address {vaddr:#x} is outside TTBR{r.half}_EL1's {r.input_bits}-bit range", vaddr
            )
        if r.disabled:
            raise AddressError(
                f"virtual address {vaddr:#x} is not mapped: walks through TTBR{r.half}_EL1 are "
                f"disabled (TCR_EL1.EPD{r.half})",
                vaddr,
            )
        return r

    def _fail(self, vaddr: int, r: Region, level: int, steps: list[WalkStep], why: str) -> AddressError:
        e = AddressError(
            f"virtual address {vaddr:#x} is not mapped: level {level} entry {why} "
            f"(ttbr{r.half}_el1={r.ttbr:#x}, {self.mode} granule)",
            vaddr,
        )
        e.steps = steps  # type: ignore[attr-defined]
        return e

    def translate(self, vaddr: int) -> Translation:
        vaddr &= 0xFFFFFFFFFFFFFFFF
        if self.mode == "none":
            return Translation(vaddr, vaddr, 1 << 12, [])
        r = self.region_of(vaddr)
        table = r.table
        steps: list[WalkStep] = []
        writable = user = True
        for level in range(r.start_level, 4):
            shift = r.shift(level)
            index = (vaddr >> shift) & ((1 << r.index_bits(level)) - 1)
            address = table + 8 * index
            entry = self._entry(address)
            steps.append(WalkStep(f"L{level}", address, entry, index))
            if not entry & 1:
                raise self._fail(vaddr, r, level, steps, "not valid")
            if level < 3 and entry & 2:  # table descriptor
                writable &= not entry & APTABLE_RO
                user &= not entry & APTABLE_EL0
                table = entry & OA_MASK & ~((1 << r.granule) - 1)
                continue
            if level == 3 and not entry & 2:
                raise self._fail(vaddr, r, level, steps, "reserved (a block at level 3)")
            size = 1 << shift
            base = entry & OA_MASK & ~(size - 1)
            writable &= not entry & AP_RO
            user &= bool(entry & AP_EL0)
            return Translation(vaddr, base | (vaddr & (size - 1)), size, steps, writable, user)
        raise self._fail(vaddr, r, 3, steps, "missing")  # not reached: level 3 returns or fails

    def mappings(self, limit: int = 1 << 20) -> Iterator[tuple[int, int, int, bool, bool]]:
        """(virtual, physical, size, writable, user) for every valid leaf, in address order: the
        TTBR0 half, then the TTBR1 half."""
        if self.mode == "none":
            return
        count = 0

        def walk(r: Region, table: int, level: int, vbase: int, w: bool, u: bool):
            nonlocal count
            entries = 1 << r.index_bits(level)
            shift = r.shift(level)
            try:
                raw = self.read(table, 8 * entries)
            except AddressError:
                return
            for i in range(entries):
                entry = int.from_bytes(raw[8 * i : 8 * i + 8], "little")
                if not entry & 1:
                    continue
                va = vbase | (i << shift)
                if level < 3 and entry & 2:
                    yield from walk(
                        r,
                        entry & OA_MASK & ~((1 << r.granule) - 1),
                        level + 1,
                        va,
                        w and not entry & APTABLE_RO,
                        u and not entry & APTABLE_EL0,
                    )
                    continue
                if level == 3 and not entry & 2:
                    continue
                count += 1
                if count > limit:
                    return
                size = 1 << shift
                yield (
                    va,
                    entry & OA_MASK & ~(size - 1),
                    size,
                    w and not entry & AP_RO,
                    u and bool(entry & AP_EL0),
                )

        for r in self.regions:
            if not r.disabled:
                yield from walk(r, r.table, r.start_level, r.base_va, True, True)
