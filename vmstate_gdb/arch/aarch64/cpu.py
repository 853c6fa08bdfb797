"""aarch64 vCPU state from a `cpu` section (vmstate_arm_cpu, version 22, target/arm/machine.c).

The main body starts with the same fields from QEMU 7.2 to 10.x (only names further on differ,
`gt_timer[0]` vs `gt_timer[GTIMER_PHYS]`), so it is decoded by position: regs[16] (AArch32 view),
xregs[32], pc, cpsr (PSTATE when in AArch64), spsr, banked_spsr[8], banked_r13[8], banked_r14[8],
usr_regs[5], fiq_regs[5], elr_el[4], sp_el[4], cpreg_vmstate_array_len, then the system registers
as two arrays of that length: cpreg_vmstate_indexes (KVM-style ids) and cpreg_vmstate_values.
xregs[31] is the live SP; sp_el[] holds the banked copies QEMU syncs at exception entry and return.
The Q registers and FPSCR come from the `cpu/vfp` subsection.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...errors import FormatError

CPU_VERSION = 22  # vmstate_arm_cpu.version_id in QEMU 7.2 .. 10.x
XREGS_OFFSET = 64
PC_OFFSET = 320
CPSR_OFFSET = 328
BANKED_SPSR_OFFSET = 336
ELR_EL_OFFSET = 504
SP_EL_OFFSET = 536
CPREG_LEN_OFFSET = 568
CPREG_INDEXES_OFFSET = 572
VFP_SUBSECTION = b"cpu/vfp"

# KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM64_SYSREG: the id of an AArch64 system register
_SYSREG_BASE = 0x6030_0000_0013_0000


def sysreg_index(op0: int, op1: int, crn: int, crm: int, op2: int) -> int:
    return _SYSREG_BASE | op0 << 14 | op1 << 11 | crn << 7 | crm << 3 | op2


# The system registers this package names (target/arm/helper.c encodings, op0 op1 CRn CRm op2).
SYSREGS = {
    "midr_el1": sysreg_index(3, 0, 0, 0, 0),
    "mpidr_el1": sysreg_index(3, 0, 0, 0, 5),
    "sctlr_el1": sysreg_index(3, 0, 1, 0, 0),
    "cpacr_el1": sysreg_index(3, 0, 1, 0, 2),
    "ttbr0_el1": sysreg_index(3, 0, 2, 0, 0),
    "ttbr1_el1": sysreg_index(3, 0, 2, 0, 1),
    "tcr_el1": sysreg_index(3, 0, 2, 0, 2),
    "esr_el1": sysreg_index(3, 0, 5, 2, 0),
    "far_el1": sysreg_index(3, 0, 6, 0, 0),
    "par_el1": sysreg_index(3, 0, 7, 4, 0),
    "mair_el1": sysreg_index(3, 0, 10, 2, 0),
    "vbar_el1": sysreg_index(3, 0, 12, 0, 0),
    "contextidr_el1": sysreg_index(3, 0, 13, 0, 1),
    "tpidr_el1": sysreg_index(3, 0, 13, 0, 4),
    "tpidr_el0": sysreg_index(3, 3, 13, 0, 2),
    "tpidrro_el0": sysreg_index(3, 3, 13, 0, 3),
    "cntkctl_el1": sysreg_index(3, 0, 14, 1, 0),
    "cntv_ctl_el0": sysreg_index(3, 3, 14, 3, 1),
    "cntv_cval_el0": sysreg_index(3, 3, 14, 3, 2),
}

# PSTATE bits (target/arm/cpu.h)
PSTATE_SP = 1
PSTATE_EL_SHIFT = 2
PSTATE_nRW = 1 << 4
# FPSCR is FPSR | FPCR in the stream (vfp_get_fpscr); the masks of target/arm/cpu.h
FPSR_MASK = 0xF800009F
FPCR_MASK = 0x07FF9F00
SCTLR_M = 1


@dataclass
class Aarch64Cpu:
    """One vCPU. ``values`` holds every named scalar; ``offsets`` locates each in the stream."""

    index: int
    body_offset: int
    values: dict[str, int]
    offsets: dict[str, tuple[int, int]]
    halted: bool = False
    #: system registers in the stream that have no name here: KVM-style id -> value
    other_sysregs: dict[int, int] = field(default_factory=dict)

    def __getitem__(self, name: str) -> int:
        return self.values[name]

    @property
    def pc(self) -> int:
        return self.values["pc"]

    @property
    def sp(self) -> int:
        return self.values["sp"]

    @property
    def el(self) -> int:
        return (self.values["pstate"] >> PSTATE_EL_SHIFT) & 3

    @property
    def aarch32(self) -> bool:
        return bool(self.values["pstate"] & PSTATE_nRW)

    @property
    def cpu_mode(self) -> str:
        """'EL1h', 'EL0t', ... or 'aarch32'."""
        if self.aarch32:
            return "aarch32"
        return f"EL{self.el}{'h' if self.values['pstate'] & PSTATE_SP else 't'}"

    @property
    def bits(self) -> int:
        return 32 if self.aarch32 else 64

    @property
    def mmu_on(self) -> bool:
        return bool(self.values.get("sctlr_el1", 0) & SCTLR_M)

    @property
    def paging_mode(self) -> str:
        """'none' with the EL1&0 MMU off, else the granules of the two halves ('4k', '4k/64k')."""
        if not self.mmu_on:
            return "none"
        from .paging import granule_bits

        tcr = self.values.get("tcr_el1", 0)
        g0, g1 = granule_bits(tcr, 0), granule_bits(tcr, 1)
        names = {12: "4k", 14: "16k", 16: "64k"}
        return names[g1] if g0 == g1 else f"{names[g0]}/{names[g1]}"

    @property
    def fpsr(self) -> int:
        return self.values.get("fpscr", 0) & FPSR_MASK

    @property
    def fpcr(self) -> int:
        return self.values.get("fpscr", 0) & FPCR_MASK

    def q(self, i: int) -> int:
        return self.values.get(f"q{i}.lo", 0) | self.values.get(f"q{i}.hi", 0) << 64

    def field_offset(self, name: str) -> tuple[int, int]:
        """(stream offset, size) of a register field, for edits."""
        return self.offsets[name]


def _be(body: bytes, offset: int, size: int) -> int:
    return int.from_bytes(body[offset : offset + size], "big")


def decode_cpu(
    index: int, body: bytes, body_offset: int, path: str = "", vfp_at: int | None = None
) -> Aarch64Cpu:
    """``vfp_at``: body offset of the `cpu/vfp` subsection's fields (from the VMDESCRIPTION);
    without it the subsection is found by its header after the main body."""

    def need(end: int, what: str) -> None:
        if len(body) < end:
            raise FormatError(
                f"cpu section {index} has {len(body)} bytes, too few for an aarch64 vCPU's {what}",
                path or None,
                body_offset,
            )

    need(CPREG_INDEXES_OFFSET, "registers")
    values: dict[str, int] = {}
    offsets: dict[str, tuple[int, int]] = {}

    def put(name: str, offset: int, size: int) -> None:
        values[name] = _be(body, offset, size)
        offsets[name] = (body_offset + offset, size)

    for i in range(31):
        put(f"x{i}", XREGS_OFFSET + 8 * i, 8)
    put("sp", XREGS_OFFSET + 8 * 31, 8)
    put("pc", PC_OFFSET, 8)
    put("pstate", CPSR_OFFSET, 4)
    # banked_spsr[1] is SPSR_EL1 (BANK_SVC; aarch64_banked_spsr_index), elr_el[1] is ELR_EL1
    put("spsr_el1", BANKED_SPSR_OFFSET + 8 * 1, 8)
    for el in range(4):
        put(f"elr_el{el}", ELR_EL_OFFSET + 8 * el, 8)
        put(f"sp_el{el}", SP_EL_OFFSET + 8 * el, 8)
    del values["elr_el0"], offsets["elr_el0"]  # there is no ELR_EL0
    count = int.from_bytes(body[CPREG_LEN_OFFSET : CPREG_LEN_OFFSET + 4], "big", signed=True)
    values_at = CPREG_INDEXES_OFFSET + 8 * count
    if count < 0 or count > 4096:
        raise FormatError(f"cpu section {index}: {count} system registers is not plausible", path or None)
    need(values_at + 8 * count, f"{count} system registers")
    by_id = {sysreg: name for name, sysreg in SYSREGS.items()}
    other: dict[int, int] = {}
    for k in range(count):
        reg_id = _be(body, CPREG_INDEXES_OFFSET + 8 * k, 8)
        name = by_id.get(reg_id)
        if name is not None:
            put(name, values_at + 8 * k, 8)
        else:
            other[reg_id] = _be(body, values_at + 8 * k, 8)
    main_end = values_at + 8 * count
    if vfp_at is None:
        header = bytes([0x05, len(VFP_SUBSECTION)]) + VFP_SUBSECTION
        found = body.find(header, main_end)
        vfp_at = found + len(header) + 4 if found >= 0 else None
    if vfp_at is not None and vfp_at + 32 * 16 <= len(body):
        for i in range(32):
            put(f"q{i}.lo", vfp_at + 16 * i, 8)
            put(f"q{i}.hi", vfp_at + 16 * i + 8, 8)
        # then vfp.xregs[0] and xregs[2..15] (AArch32 FPSID etc.), then fpscr
        fpscr_at = vfp_at + 32 * 16 + 4 + 14 * 4
        if fpscr_at + 4 <= len(body):
            put("fpscr", fpscr_at, 4)
    return Aarch64Cpu(index, body_offset, values, offsets, other_sysregs=other)
