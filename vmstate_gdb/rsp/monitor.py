"""`monitor` commands (qRcmd), answered in the words and formats of QEMU's HMP where QEMU has them.

`info registers` follows the layout of QEMU's x86 cpu dump (what `info registers` prints), so
scripts that parse a live QEMU's output parse ours; `info mem` follows QEMU's mem_info.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import __version__
from ..arch.x86_64.cpu import X86Cpu
from ..errors import VmstateError
from .registers import GDB_GPRS, is_64bit_code

if TYPE_CHECKING:
    from .server import SnapshotServer

HF_INHIBIT_IRQ, HF_SMM, HF_PE = 1 << 3, 1 << 19, 1 << 7  # target/i386/cpu.h
DESC_P, DESC_S, DESC_CS, DESC_C, DESC_E, DESC_R, DESC_W, DESC_A = (
    1 << 15,
    1 << 12,
    1 << 11,
    1 << 10,
    1 << 10,
    1 << 9,
    1 << 9,
    1 << 8,
)
DESC_B, DESC_L = 1 << 22, 1 << 21
_SYSTEM_TYPES_LEGACY = (
    "Reserved",
    "TSS16-avl",
    "LDT",
    "TSS16-busy",
    "CallGate16",
    "TaskGate",
    "IntGate16",
    "TrapGate16",
    "Reserved",
    "TSS32-avl",
    "Reserved",
    "TSS32-busy",
    "CallGate32",
    "Reserved",
    "IntGate32",
    "TrapGate32",
)
_SYSTEM_TYPES_LONG = (
    "<hiword>",
    "Reserved",
    "LDT",
    "Reserved",
    "Reserved",
    "Reserved",
    "Reserved",
    "Reserved",
    "Reserved",
    "TSS64-avl",
    "Reserved",
    "TSS64-busy",
    "CallGate64",
    "Reserved",
    "IntGate64",
    "TrapGate64",
)

HELP = """\
monitor commands of the vmstate_gdb snapshot server:
  info version          server version and snapshot file
  info registers [-a]   registers of the monitor's vCPU (-a: every vCPU), in QEMU's format
  info mem              the monitor's vCPU's virtual mappings, in QEMU's format
  info vmstate          snapshot file, vCPUs, memory mode and pending edits
  cpu N                 the monitor's vCPU (as in QEMU: vCPU 0 until set; gdb's own
                        commands follow the thread gdb selects, `thread N+1`)
  phys on|off           gdb memory accesses are guest-physical / virtual (selected vCPU)
  help                  this text"""


def _segment_line(cpu: X86Cpu, name: str, wide: bool) -> str:
    seg = cpu.segment(name)
    label = f"{name.upper():<3}"
    base = f"{seg.base:016x}" if wide else f"{seg.base & 0xFFFFFFFF:08x}"
    line = f"{label}={seg.selector & 0xFFFF:04x} {base} {seg.limit:08x} {seg.flags:08x}"
    if not (cpu["hflags"] & HF_PE) or not seg.flags & DESC_P:
        return line
    line += f" DPL={seg.dpl} "
    f = seg.flags
    if f & DESC_S:
        if f & DESC_CS:
            kind = "CS64" if f & DESC_L else ("CS32" if f & DESC_B else "CS16")
            line += f"{kind} [{'C' if f & DESC_C else '-'}{'R' if f & DESC_R else '-'}"
        else:
            kind = "DS  " if f & DESC_B else "DS16"
            line += f"{kind} [{'E' if f & DESC_E else '-'}{'W' if f & DESC_W else '-'}"
        line += f"{'A' if f & DESC_A else '-'}]"
    else:
        table = _SYSTEM_TYPES_LONG if cpu["efer"] & (1 << 10) else _SYSTEM_TYPES_LEGACY
        line += table[(f >> 8) & 0xF]
    return line


def format_registers(cpu: X86Cpu) -> str:
    """One vCPU's registers in the layout of QEMU's `info registers`."""
    wide = is_64bit_code(cpu)
    v = cpu.values
    lines = []
    if wide:
        names = GDB_GPRS  # QEMU prints them in the same order as its gdbstub
        for row in range(4):
            lines.append(" ".join(f"{n.upper():<3}={v[n]:016x}" for n in names[4 * row : 4 * row + 4]))
        ip = f"RIP={v['rip']:016x} RFL={v['eflags'] & 0xFFFFFFFF:08x}"
    else:
        names = ("eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "esp")
        for row in range(2):
            lines.append(
                " ".join(
                    f"{n.upper()}={v['r' + n[1:]] & 0xFFFFFFFF:08x}" for n in names[4 * row : 4 * row + 4]
                )
            )
        ip = f"EIP={v['rip'] & 0xFFFFFFFF:08x} EFL={v['eflags'] & 0xFFFFFFFF:08x}"
    fl = v["eflags"]
    flags = "".join(
        c if fl & bit else "-"
        for c, bit in (
            ("D", 1 << 10),
            ("O", 1 << 11),
            ("S", 1 << 7),
            ("Z", 1 << 6),
            ("A", 1 << 4),
            ("P", 1 << 2),
            ("C", 1),
        )
    )
    h = v["hflags"]
    lines.append(
        f"{ip} [{flags}] CPL={h & 3} II={int(bool(h & HF_INHIBIT_IRQ))} "
        f"A20={(v['a20_mask'] >> 20) & 1} SMM={int(bool(h & HF_SMM))} HLT={int(cpu.halted)}"
    )
    for seg in ("es", "cs", "ss", "ds", "fs", "gs", "ldt", "tr"):
        lines.append(_segment_line(cpu, seg, wide))
    for table in ("gdt", "idt"):
        base = v[f"{table}.base"]
        lines.append(
            f"{table.upper()}=     {base:016x} {v[table + '.limit']:08x}"
            if wide
            else f"{table.upper()}=     {base & 0xFFFFFFFF:08x} {v[table + '.limit']:08x}"
        )
    if wide:
        lines.append(f"CR0={v['cr0']:08x} CR2={v['cr2']:016x} CR3={v['cr3']:016x} CR4={v['cr4']:08x}")
    else:
        lines.append(" ".join(f"CR{i}={v[f'cr{i}'] & 0xFFFFFFFF:08x}" for i in (0, 2, 3, 4)))
    lines.append("".join(f"DR{i}={v[f'dr{i}']:016x} " for i in range(4)))
    lines.append(f"DR6={v['dr6']:016x} DR7={v['dr7']:016x}")
    lines.append(f"EFER={v['efer']:016x}")
    lines.append(
        f"FCW={v['fpuc']:04x} FSW={v['fpus']:04x} [ST={(v['fpus'] >> 11) & 7}] FTW={v['fptag']:02x} "
        f"MXCSR={v['mxcsr']:08x}"
    )
    for i in range(0, 8, 2):
        lines.append(" ".join(f"FPR{j}={v[f'fpr{j}.mant']:016x} {v[f'fpr{j}.exp']:04x}" for j in (i, i + 1)))
    for i in range(0, 16 if wide else 8, 2):
        lines.append(
            " ".join(f"XMM{j:02d}={v[f'xmm{j}.hi']:016x} {v[f'xmm{j}.lo']:016x}" for j in (i, i + 1))
        )
    return "\n".join(lines) + "\n"


def format_mem(server: SnapshotServer) -> str:
    """QEMU's `info mem`: coalesced virtual ranges with u/r/w protection."""
    cpu = server.snap.cpu(server.monitor_cpu)
    if cpu.paging_mode == "none":
        return "PG disabled\n"
    walker = server.virtual(server.monitor_cpu).walker
    lines = []
    run = None  # [start, end, prot]
    for va, _pa, size, writable, user in walker.mappings():
        prot = f"{'u' if user else '-'}r{'w' if writable else '-'}"
        if run is not None and run[1] == va and run[2] == prot:
            run[1] = va + size
            continue
        if run is not None:
            lines.append(f"{run[0]:016x}-{run[1]:016x} {run[1] - run[0]:016x} {run[2]}")
        run = [va, va + size, prot]
    if run is not None:
        lines.append(f"{run[0]:016x}-{run[1]:016x} {run[1] - run[0]:016x} {run[2]}")
    return "\n".join(lines) + "\n"


def run_monitor(server: SnapshotServer, command: str) -> str:
    words = command.split()
    if not words or words[0] == "help":
        return HELP + "\n"
    if words[0] == "info" and len(words) >= 2:
        what = words[1]
        if what == "version":
            return f"{__version__} (vmstate_gdb snapshot server: {server.snap.path})\n"
        if what == "registers":
            if "-a" in words[2:]:
                return "".join(f"\nCPU#{c.index}\n" + format_registers(c) for c in server.snap.cpus)
            return format_registers(server.snap.cpu(server.monitor_cpu))
        if what == "mem":
            return format_mem(server)
        if what == "vmstate":
            return server.describe_text()
    if words[0] == "cpu":
        if len(words) != 2 or not words[1].isdigit():
            raise VmstateError("usage: monitor cpu N")
        server.snap.cpu(int(words[1]))  # a clear error for a vCPU that does not exist
        server.monitor_cpu = int(words[1])
        return ""
    if words[0] == "phys":
        if len(words) > 2 or (len(words) == 2 and words[1] not in ("on", "off", "1", "0")):
            raise VmstateError("usage: monitor phys [on|off]")
        if len(words) == 2:
            server.physical_mode = words[1] in ("on", "1")
        return f"memory accesses are {'guest-physical' if server.physical_mode else 'virtual'}\n"
    raise VmstateError(f"unknown monitor command {command!r} (try `monitor help`)")
