"""The x86_64 register file as gdb sees it: target description and the g-packet layout.

Order and sizes follow QEMU's x86_64 gdbstub (target/i386/gdbstub.c): 16 GPRs in gdb order, rip,
eflags, six selectors, fs_base/gs_base/k_gs_base, cr0/cr2/cr3/cr4/cr8/efer, st0-7, the eight x87
control words, xmm0-15, mxcsr -- 66 registers, so a g packet here is laid out exactly like QEMU's.
Like QEMU, a vCPU outside 64-bit code keeps the 64-bit register file (gdb cannot change register
sizes mid-session): GPRs and rip read as their low 32 bits and r8-r15 as zero.
"""

from __future__ import annotations

from ...errors import EditError
from .. import GdbRegister as Register
from .cpu import X86Cpu

HF_CS64 = 1 << 15  # target/i386/cpu.h HF_CS64_SHIFT
FPUS_TOP_SHIFT = 11  # x87 status word bits 11-13: TOP

GDB_GPRS = (
    "rax",
    "rbx",
    "rcx",
    "rdx",
    "rsi",
    "rdi",
    "rbp",
    "rsp",
    "r8",
    "r9",
    "r10",
    "r11",
    "r12",
    "r13",
    "r14",
    "r15",
)
SELECTORS = ("cs", "ss", "ds", "es", "fs", "gs")
# gdb register -> CPU_FIELDS name, for the registers that are one stored field as they are
SIMPLE_FIELDS = {
    "fs_base": "fs.base",
    "gs_base": "gs.base",
    "k_gs_base": "kernel_gs_base",
    "cr0": "cr0",
    "cr2": "cr2",
    "cr3": "cr3",
    "cr4": "cr4",
    "efer": "efer",
    "fctrl": "fpuc",
    "fstat": "fpus",
    "mxcsr": "mxcsr",
}
X87_CONTROL = ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")


def _register_table() -> list[Register]:
    names_bits: list[tuple[str, int]] = [(n, 64) for n in GDB_GPRS]
    names_bits += [("rip", 64), ("eflags", 32)] + [(s, 32) for s in SELECTORS]
    names_bits += [("fs_base", 64), ("gs_base", 64), ("k_gs_base", 64)]
    names_bits += [(c, 64) for c in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer")]
    names_bits += [(f"st{i}", 80) for i in range(8)] + [(n, 32) for n in X87_CONTROL]
    names_bits += [(f"xmm{i}", 128) for i in range(16)] + [("mxcsr", 32)]
    return [Register(n, i, b) for i, (n, b) in enumerate(names_bits)]


REGISTERS = _register_table()
BY_NAME = {r.name: r for r in REGISTERS}
G_PACKET_SIZE = sum(r.bits // 8 for r in REGISTERS)


def _flags(ident: str, size: int, fields: list[tuple[str, int]]) -> str:
    body = "".join(f'<field name="{n}" start="{b}" end="{b}"/>' for n, b in fields)
    return f'<flags id="{ident}" size="{size}">{body}</flags>'


def _regs(names: list[str], bits: int, type_: str, first: int | None = None, group: str = "") -> str:
    out = []
    for i, n in enumerate(names):
        attrs = f' regnum="{first}"' if first is not None and i == 0 else ""
        if group:
            attrs += f' group="{group}"'
        out.append(f'<reg name="{n}" bitsize="{bits}" type="{type_}"{attrs}/>')
    return "".join(out)


def target_xml() -> str:
    """A target description gdb's amd64 support recognises (core, sse, segments features), with
    explicit regnums so that the g packet keeps QEMU's order; k_gs_base, the control registers and
    EFER go in a feature of their own, as gdb has no standard one for them."""
    n = BY_NAME
    eflags = _flags(
        "i386_eflags",
        4,
        [
            ("CF", 0),
            ("", 1),
            ("PF", 2),
            ("AF", 4),
            ("ZF", 6),
            ("SF", 7),
            ("TF", 8),
            ("IF", 9),
            ("DF", 10),
            ("OF", 11),
            ("NT", 14),
            ("RF", 16),
            ("VM", 17),
            ("AC", 18),
            ("VIF", 19),
            ("VIP", 20),
            ("ID", 21),
        ],
    )
    core = (
        f'<feature name="org.gnu.gdb.i386.core">{eflags}'
        + _regs(list(GDB_GPRS[:6]), 64, "int64")
        + _regs(["rbp", "rsp"], 64, "data_ptr")
        + _regs(list(GDB_GPRS[8:]), 64, "int64")
        + _regs(["rip"], 64, "code_ptr")
        + _regs(["eflags"], 32, "i386_eflags")
        + _regs(list(SELECTORS), 32, "int32")
        + _regs([f"st{i}" for i in range(8)], 80, "i387_ext", first=n["st0"].number)
        + _regs(list(X87_CONTROL), 32, "int", group="float")
        + "</feature>"
    )
    segments = (
        '<feature name="org.gnu.gdb.i386.segments">'
        + _regs(["fs_base", "gs_base"], 64, "int64", first=n["fs_base"].number)
        + "</feature>"
    )
    cr0 = _flags(
        "i386_cr0",
        8,
        [
            ("PE", 0),
            ("MP", 1),
            ("EM", 2),
            ("TS", 3),
            ("ET", 4),
            ("NE", 5),
            ("WP", 16),
            ("AM", 18),
            ("NW", 29),
            ("CD", 30),
            ("PG", 31),
        ],
    )
    cr4 = _flags(
        "i386_cr4",
        8,
        [
            ("VME", 0),
            ("PVI", 1),
            ("TSD", 2),
            ("DE", 3),
            ("PSE", 4),
            ("PAE", 5),
            ("MCE", 6),
            ("PGE", 7),
            ("PCE", 8),
            ("OSFXSR", 9),
            ("OSXMMEXCPT", 10),
            ("UMIP", 11),
            ("LA57", 12),
            ("VMXE", 13),
            ("SMXE", 14),
            ("FSGSBASE", 16),
            ("PCIDE", 17),
            ("OSXSAVE", 18),
            ("SMEP", 20),
            ("SMAP", 21),
            ("PKE", 22),
        ],
    )
    efer = _flags(
        "i386_efer",
        8,
        [
            ("SCE", 0),
            ("LME", 8),
            ("LMA", 10),
            ("NXE", 11),
            ("SVME", 12),
            ("LMSLE", 13),
            ("FFXSR", 14),
            ("TCE", 15),
        ],
    )
    system = (
        f'<feature name="org.qemu.gdb.i386.system">{cr0}{cr4}{efer}'
        + _regs(["k_gs_base"], 64, "int64", first=n["k_gs_base"].number, group="system")
        + _regs(["cr0"], 64, "i386_cr0", group="system")
        + _regs(["cr2", "cr3"], 64, "int64", group="system")
        + _regs(["cr4"], 64, "i386_cr4", group="system")
        + _regs(["cr8"], 64, "int64", group="system")
        + _regs(["efer"], 64, "i386_efer", group="system")
        + "</feature>"
    )
    mxcsr = _flags(
        "i386_mxcsr",
        4,
        [
            ("IE", 0),
            ("DE", 1),
            ("ZE", 2),
            ("OE", 3),
            ("UE", 4),
            ("PE", 5),
            ("DAZ", 6),
            ("IM", 7),
            ("DM", 8),
            ("ZM", 9),
            ("OM", 10),
            ("UM", 11),
            ("PM", 12),
            ("FZ", 15),
        ],
    )
    vec = (
        '<vector id="v8bf16" type="bfloat16" count="8"/><vector id="v4f" type="ieee_single" count="4"/>'
        '<vector id="v2d" type="ieee_double" count="2"/><vector id="v16i8" type="int8" count="16"/>'
        '<vector id="v8i16" type="int16" count="8"/><vector id="v4i32" type="int32" count="4"/>'
        '<vector id="v2i64" type="int64" count="2"/>'
        '<union id="vec128"><field name="v8_bfloat16" type="v8bf16"/><field name="v4_float" type="v4f"/>'
        '<field name="v2_double" type="v2d"/><field name="v16_int8" type="v16i8"/>'
        '<field name="v8_int16" type="v8i16"/><field name="v4_int32" type="v4i32"/>'
        '<field name="v2_int64" type="v2i64"/><field name="uint128" type="uint128"/></union>'
    )
    sse = (
        f'<feature name="org.gnu.gdb.i386.sse">{vec}{mxcsr}'
        + _regs([f"xmm{i}" for i in range(16)], 128, "vec128", first=n["xmm0"].number)
        + _regs(["mxcsr"], 32, "i386_mxcsr", group="vector")
        + "</feature>"
    )
    return (
        '<?xml version="1.0"?><!DOCTYPE target SYSTEM "gdb-target.dtd"><target version="1.0">'
        "<architecture>i386:x86-64</architecture>" + core + segments + system + sse + "</target>"
    )


# -- values ------------------------------------------------------------------------------------


def x87_top(cpu: X86Cpu) -> int:
    # The stream's fpus is QEMU's fpus_vmstate: the status word with TOP (fpstt) in bits 11-13.
    return (cpu["fpus"] >> FPUS_TOP_SHIFT) & 7


def st_physical(cpu: X86Cpu, i: int) -> int:
    """ST(i) is physical register R[(TOP + i) mod 8]."""
    return (x87_top(cpu) + i) & 7


def full_tag_word(cpu: X86Cpu) -> int:
    """The 16-bit x87 tag word (2 bits per physical register) from the stream's abridged tags.

    QEMU's gdbstub always reports 0 here; we report the real tags so `info float` can tell empty
    registers from valid ones. The stream's fptag is QEMU's fptag_vmstate: bit i set = R[i] in use.
    """
    word = 0
    for i in range(8):
        if not cpu["fptag"] >> i & 1:
            tag = 3  # empty
        else:
            exp, mant = cpu[f"fpr{i}.exp"] & 0x7FFF, cpu[f"fpr{i}.mant"]
            if exp == 0 and mant == 0:
                tag = 1  # zero
            elif exp == 0x7FFF or exp == 0 or not mant >> 63:
                tag = 2  # special: NaN/infinity, denormal, unnormal
            else:
                tag = 0  # valid
        word |= tag << (2 * i)
    return word


def is_64bit_code(cpu: X86Cpu) -> bool:
    return bool(cpu["hflags"] & HF_CS64)


def read_register(cpu: X86Cpu, reg: Register) -> int:
    """The value QEMU's gdbstub would report for ``reg`` on this vCPU."""
    name = reg.name
    long_mode = is_64bit_code(cpu)
    if name in GDB_GPRS:
        if long_mode:
            return cpu[name]
        return cpu[name] & 0xFFFFFFFF if GDB_GPRS.index(name) < 8 else 0
    if name == "rip":
        return cpu["rip"] if long_mode else cpu["rip"] & 0xFFFFFFFF
    if name == "eflags":
        return cpu["eflags"] & 0xFFFFFFFF
    if name in SELECTORS:
        return cpu[f"{name}.selector"]
    if name in SIMPLE_FIELDS:
        return cpu[SIMPLE_FIELDS[name]]
    if name == "cr8":
        return cpu.cr8
    if name.startswith("st"):
        r = st_physical(cpu, int(name[2:]))
        return cpu[f"fpr{r}.mant"] | cpu[f"fpr{r}.exp"] << 64
    if name == "ftag":
        return full_tag_word(cpu)
    if name in X87_CONTROL:  # fiseg..fop: QEMU reports 0
        return 0
    if name.startswith("xmm"):
        i = int(name[3:])
        return cpu[f"xmm{i}.lo"] | cpu[f"xmm{i}.hi"] << 64
    raise KeyError(name)


def encode_register(cpu: X86Cpu, reg: Register) -> bytes:
    return read_register(cpu, reg).to_bytes(reg.bits // 8, "little")


def encode_all(cpu: X86Cpu) -> bytes:
    return b"".join(encode_register(cpu, r) for r in REGISTERS)


def fields_for_write(cpu: X86Cpu, reg: Register, value: int) -> list[tuple[str, int]] | None:
    """The CPU_FIELDS writes that make ``reg`` read back as ``value``; [] to ignore the write (as
    QEMU does for fiseg..fop), None when the register needs special handling (selectors, cr8)."""
    name = reg.name
    long_mode = is_64bit_code(cpu)
    if name in GDB_GPRS:
        if long_mode:
            return [(name, value)]
        if GDB_GPRS.index(name) >= 8:
            return []  # QEMU ignores r8-r15 outside 64-bit code
        return [(name, value & 0xFFFFFFFF)]
    if name == "rip":
        return [("rip", value if long_mode else value & 0xFFFFFFFF)]
    if name == "eflags":
        return [("eflags", value)]
    if name in SIMPLE_FIELDS:
        return [(SIMPLE_FIELDS[name], value)]
    if name.startswith("st"):
        r = st_physical(cpu, int(name[2:]))
        return [(f"fpr{r}.mant", value & (1 << 64) - 1), (f"fpr{r}.exp", value >> 64 & 0xFFFF)]
    if name == "ftag":
        abridged = sum(1 << i for i in range(8) if (value >> (2 * i)) & 3 != 3)
        return [("fptag", abridged)]
    if name in X87_CONTROL:
        return []
    if name.startswith("xmm"):
        i = int(name[3:])
        return [(f"xmm{i}.lo", value & (1 << 64) - 1), (f"xmm{i}.hi", value >> 64)]
    return None


def write_register(target, cpu: X86Cpu, reg: Register, value: int) -> None:
    """Make ``reg`` read back as ``value`` (``target``: the gdb server, for the snapshot and the
    vCPU's memory, which a selector load reads its descriptor from)."""
    snap = target.snap
    writes = fields_for_write(cpu, reg, value)
    if writes is None:
        if reg.name == "cr8":
            _write_cr8(snap, cpu, value)
        else:
            _load_segment(target, cpu, reg.name, value & 0xFFFF)
        return
    for name, field_value in writes:
        snap.set_register(cpu.index, name, field_value)


def _write_cr8(snap, cpu: X86Cpu, value: int) -> None:
    # CR8 is the APIC's task priority (bits 7:4 of TPR), which lives in the apic device state.
    for key in (f"apic[{cpu.index}]", "apic" if cpu.index == 0 else None):
        if key is None:
            continue
        try:
            snap.set_field(f"{key}/tpr", (value & 0xF) << 4)
            return
        except EditError:
            continue
    raise EditError(f"cr8: no APIC state for vCPU {cpu.index} in this snapshot")


def _load_segment(target, cpu: X86Cpu, name: str, selector: int) -> None:
    """A new selector also loads the hidden descriptor cache, as the CPU (and QEMU's gdbstub)
    would: from selector<<4 in real/vm86 mode, else from the GDT or LDT."""
    snap = target.snap
    if selector == cpu[f"{name}.selector"]:
        return
    if not cpu["cr0"] & 1 or cpu["eflags"] & (1 << 17):
        dpl = 3 if cpu["eflags"] & (1 << 17) else 0
        base, limit, flags = (
            selector << 4,
            0xFFFF,
            (1 << 15) | (1 << 12) | (1 << 9) | (1 << 8) | dpl << 13,
        )
    else:
        table = cpu["ldt.base"] if selector & 4 else cpu["gdt.base"]
        table_limit = cpu["ldt.limit"] if selector & 4 else cpu["gdt.limit"]
        index = selector & ~7
        if index + 7 > table_limit:
            raise EditError(f"selector {selector:#x} is outside the {'LDT' if selector & 4 else 'GDT'}")
        read = target.virtual(cpu.index).read if cpu.paging_mode != "none" else snap.physical.read
        lo, hi = (int.from_bytes(read(table + index + k, 4), "little") for k in (0, 4))
        base = (lo >> 16) | (hi & 0xFF) << 16 | (hi & 0xFF000000)
        limit = (lo & 0xFFFF) | (hi & 0xF0000)
        if hi & (1 << 23):
            limit = limit << 12 | 0xFFF
        # QEMU's gdbstub keeps the descriptor's whole high dword as the cache's flags
        # (x86_cpu_gdb_load_seg in target/i386/gdbstub.c), accessed bit as it is.
        flags = hi
    for field, value in (("selector", selector), ("base", base), ("limit", limit), ("flags", flags)):
        snap.set_register(cpu.index, f"{name}.{field}", value)
