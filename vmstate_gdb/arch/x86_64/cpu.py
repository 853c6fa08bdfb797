"""x86_64 vCPU state from a `cpu` section (vmstate_x86_cpu, version 12, target/i386/machine.c).

The main body (1817 bytes) has had the same layout from QEMU 5.0 to 10.x, so it is decoded from
this table even when the stream carries no VMDESCRIPTION. Offsets are from the body start.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...errors import FormatError

CPU_MAIN_BODY_SIZE = 1817
CPU_VERSION = 12  # vmstate_x86_cpu.version_id
SEGMENT_ORDER = ("es", "cs", "ss", "ds", "fs", "gs")  # QEMU R_ES..R_GS
GPR_ORDER = (
    "rax",
    "rcx",
    "rdx",
    "rbx",
    "rsp",
    "rbp",
    "rsi",
    "rdi",
    "r8",
    "r9",
    "r10",
    "r11",
    "r12",
    "r13",
    "r14",
    "r15",
)  # QEMU R_EAX..R_R15


def _layout() -> dict[str, tuple[int, int]]:
    """name -> (offset, size) of every scalar this package reads or edits."""
    t: dict[str, tuple[int, int]] = {}
    for i, name in enumerate(GPR_ORDER):
        t[name] = (8 * i, 8)
    t.update(
        rip=(128, 8),
        eflags=(136, 8),
        hflags=(144, 4),
        fpuc=(148, 2),
        fpus=(150, 2),
        fptag=(152, 2),
        fpregs_format=(154, 2),
    )
    for i in range(8):
        t[f"fpr{i}.mant"] = (156 + 10 * i, 8)
        t[f"fpr{i}.exp"] = (164 + 10 * i, 2)
    for i, seg in enumerate(SEGMENT_ORDER + ("ldt", "tr", "gdt", "idt")):
        base = 236 + 20 * i
        t[f"{seg}.selector"] = (base, 4)
        t[f"{seg}.base"] = (base + 4, 8)
        t[f"{seg}.limit"] = (base + 12, 4)
        t[f"{seg}.flags"] = (base + 16, 4)
    t.update(
        sysenter_cs=(436, 4),
        sysenter_esp=(440, 8),
        sysenter_eip=(448, 8),
        cr0=(456, 8),
        cr2=(464, 8),
        cr3=(472, 8),
        cr4=(480, 8),
    )
    for i in range(8):
        t[f"dr{i}"] = (488 + 8 * i, 8)
    t.update(a20_mask=(552, 4), mxcsr=(556, 4))
    for i in range(16):
        t[f"xmm{i}.lo"] = (560 + 16 * i, 8)
        t[f"xmm{i}.hi"] = (568 + 16 * i, 8)
    t.update(
        efer=(816, 8),
        star=(824, 8),
        lstar=(832, 8),
        cstar=(840, 8),
        fmask=(848, 8),
        kernel_gs_base=(856, 8),
        smbase=(864, 4),
        pat=(868, 8),
        hflags2=(876, 4),
        tsc=(1157, 8),
        tsc_aux=(1521, 8),
        xcr0=(1545, 8),
        xstate_bv=(1553, 8),
    )
    for i in range(16):
        t[f"ymmh{i}.lo"] = (1561 + 16 * i, 8)
        t[f"ymmh{i}.hi"] = (1569 + 16 * i, 8)
    return t


CPU_FIELDS = _layout()

# CR0/CR4/EFER/EFLAGS bits used for modes (target/i386/cpu.h)
CR0_PE, CR0_PG = 1 << 0, 1 << 31
CR4_PSE, CR4_PAE, CR4_LA57 = 1 << 4, 1 << 5, 1 << 12
EFER_LME, EFER_LMA = 1 << 8, 1 << 10
DESC_L, DESC_B = 1 << 21, 1 << 22


@dataclass
class Segment:
    selector: int
    base: int
    limit: int
    flags: int

    @property
    def dpl(self) -> int:
        return (self.flags >> 13) & 3


@dataclass
class X86Cpu:
    """One vCPU. ``values`` holds every CPU_FIELDS scalar; ``body_offset`` locates them in the stream."""

    index: int
    body_offset: int
    values: dict[str, int]
    halted: bool = False
    apic_tpr: int | None = None
    apic_base: int | None = None
    extra: dict[str, int] = field(default_factory=dict)

    def __getitem__(self, name: str) -> int:
        return self.values[name]

    def segment(self, name: str) -> Segment:
        v = self.values
        return Segment(v[f"{name}.selector"], v[f"{name}.base"], v[f"{name}.limit"], v[f"{name}.flags"])

    @property
    def pc(self) -> int:
        return self.values["rip"]

    @property
    def cr8(self) -> int:
        return (self.apic_tpr or 0) >> 4

    @property
    def fs_base(self) -> int:
        return self.values["fs.base"]

    @property
    def gs_base(self) -> int:
        return self.values["gs.base"]

    @property
    def cpu_mode(self) -> str:
        """'real', 'protected16', 'protected32', 'compat', or 'long' (64-bit code)."""
        v = self.values
        if not v["cr0"] & CR0_PE:
            return "real"
        cs = v["cs.flags"]
        if v["efer"] & EFER_LMA:
            return "long" if cs & DESC_L else "compat"
        return "protected32" if cs & DESC_B else "protected16"

    @property
    def bits(self) -> int:
        return {"real": 16, "protected16": 16, "protected32": 32, "compat": 32, "long": 64}[self.cpu_mode]

    @property
    def paging_mode(self) -> str:
        """'none', '32-bit', 'pae', '4-level' or '5-level'."""
        v = self.values
        if not (v["cr0"] & CR0_PG and v["cr0"] & CR0_PE):
            return "none"
        if not v["cr4"] & CR4_PAE:
            return "32-bit"
        if not v["efer"] & EFER_LMA:
            return "pae"
        return "5-level" if v["cr4"] & CR4_LA57 else "4-level"

    def field_offset(self, name: str) -> tuple[int, int]:
        """(stream offset, size) of a register field, for edits."""
        off, size = CPU_FIELDS[name]
        return self.body_offset + off, size


def decode_cpu(index: int, body: bytes, body_offset: int, path: str = "") -> X86Cpu:
    if len(body) < CPU_MAIN_BODY_SIZE:
        raise FormatError(
            f"cpu section {index} has {len(body)} bytes, fewer than the {CPU_MAIN_BODY_SIZE} "
            "of an x86_64 vCPU (is this a qemu-system-i386 or non-x86 stream?)",
            path or None,
            body_offset,
        )
    values = {name: int.from_bytes(body[off : off + size], "big") for name, (off, size) in CPU_FIELDS.items()}
    return X86Cpu(index, body_offset, values)


def compute_hflags(values: dict[str, int], old_hflags: int) -> int:
    """Recompute the mode bits of QEMU's TCG-internal ``hflags`` from CR0/CR4/EFER/EFLAGS/segments.

    QEMU's cpu_post_load recomputes only CPL; under TCG the other bits must agree with the
    architectural state (x86_update_hflags in target/i386/cpu.c). Bits not derived here are kept.
    """
    # HF_* bit positions (target/i386/cpu.h)
    CPL_MASK = 3
    CS32, SS32, ADDSEG = 1 << 4, 1 << 5, 1 << 6
    PE, TF, MP, EM, TS = 1 << 7, 1 << 8, 1 << 9, 1 << 10, 1 << 11
    IOPL_SHIFT = 12
    LMA, CS64 = 1 << 14, 1 << 15
    RF, VM, AC, SMM = 1 << 16, 1 << 17, 1 << 18, 1 << 19  # noqa: F841 (kept for reference)
    OSFXSR = 1 << 22
    derived = (
        CPL_MASK
        | CS32
        | SS32
        | ADDSEG
        | PE
        | TF
        | MP
        | EM
        | TS
        | (3 << IOPL_SHIFT)
        | LMA
        | CS64
        | VM
        | AC
        | OSFXSR
    )
    cr0, cr4, efer, eflags = values["cr0"], values["cr4"], values["efer"], values["eflags"]
    h = old_hflags & ~derived & 0xFFFFFFFF
    h |= values["ss.flags"] >> 13 & 3  # CPL = SS.DPL
    h |= (cr0 & CR0_PE) << 7  # PE bit 0 -> HF_PE (7)
    h |= (cr0 >> 1 & 7) << 9  # MP, EM, TS: CR0 bits 1..3 -> HF bits 9..11
    h |= (eflags >> 8 & 1) << 8  # TF
    h |= (eflags >> 12 & 3) << IOPL_SHIFT
    h |= (eflags >> 17 & 1) << 17  # VM
    h |= (eflags >> 18 & 1) << 18  # AC
    if cr4 & (1 << 9):
        h |= OSFXSR
    if efer & EFER_LMA:
        h |= LMA
    cs_flags, ss_flags = values["cs.flags"], values["ss.flags"]
    if h & LMA and cs_flags & DESC_L:
        # SS32 means nothing to 64-bit code, and QEMU's two paths disagree on it: x86_update_hflags
        # sets it, an interrupt that loads a null SS (cpu_x86_load_seg_cache) clears it. Keep QEMU's.
        h |= CS32 | CS64 | (old_hflags & SS32)
    else:
        h |= (cs_flags >> 22 & 1) << 4  # CS32 from CS.B
        h |= (ss_flags >> 22 & 1) << 5  # SS32 from SS.B
        if not (cr0 & CR0_PE) or eflags & (1 << 17) or not (h & CS32):
            h |= ADDSEG
        else:
            bases = values["ds.base"] | values["es.base"] | values["ss.base"]
            if bases:
                h |= ADDSEG
    return h
