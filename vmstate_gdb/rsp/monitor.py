"""`monitor` commands (qRcmd), answered in the words and formats of QEMU's HMP where QEMU has them.

`info registers` follows the layout of QEMU's cpu dump for the architecture (what `info registers`
prints), so scripts that parse a live QEMU's output parse ours; `info mem` follows QEMU's mem_info.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import __version__
from ..errors import VmstateError

if TYPE_CHECKING:
    from .server import SnapshotServer

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
                return "".join(
                    f"\nCPU#{c.index}\n" + server.snap.arch.format_registers(c) for c in server.snap.cpus
                )
            return server.snap.arch.format_registers(server.snap.cpu(server.monitor_cpu))
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
