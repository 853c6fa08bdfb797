"""The gdb remote-protocol server over a Snapshot: registers, memory, vCPUs as threads, edits.

Every write goes to the snapshot's edit overlay; the file is never written. A snapshot cannot run,
so continue/step print a console message and report the same stop again.

Besides the standard packets, ``qvmstate.OP[:HEXJSON]`` packets carry the gdb-side commands
(`vmstate-devices`, `vmstate-set`, ...): the argument and the reply are hex-encoded JSON, the
reply ``{"result": ...}`` or ``{"error": "one line"}``.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import traceback
from collections.abc import Callable

from ..arch import GdbRegister
from ..errors import AddressError, VmstateError
from ..memory import PhysicalMemory, VirtualMemory
from ..progress import ProgressLines
from ..snapshot import Snapshot
from .monitor import run_monitor
from .protocol import INTERRUPT, PacketConnection, escape_binary, hex_runs, unescape_binary

PACKET_SIZE = 0x40000  # advertised PacketSize: 128 KiB of memory per m reply
SIGTRAP = 5
EFAULT = b"E0e"  # gdb prints "Cannot access memory at address ..." for any error reply to m
STEPBITS = b"ENABLE=1,NOIRQ=2,NOTIMER=4"  # what QEMU answers to qqemu.sstepbits
CANNOT_RUN = (
    "vmstate_gdb: a snapshot cannot run; the vCPUs stay where they stopped. Edit registers "
    "and memory here, then `vmstate-save OUT` and resume OUT in QEMU.\n"
)


def _hex_json(value) -> bytes:
    return json.dumps(value).encode().hex().encode()


class SnapshotServer:
    """Answers packets for one snapshot; :meth:`serve` runs a client connection to its end."""

    def __init__(self, snap: Snapshot, log: Callable[[str], None] | None = None):
        self.snap = snap
        self.log = log
        self.thread = 1  # Hg thread: vCPU thread-1
        self.physical_mode = False
        self.saved_generation: int | None = None  # edits.generation at the last vmstate-save
        self.monitor_cpu = 0  # `monitor cpu N`; QEMU's monitor also starts at the first vCPU
        self.mac_changes: dict[str, str] = {}  # old -> new, for the resume command of vmstate-save
        self.stepbits = 0
        self._virtual: dict[int, tuple[int, VirtualMemory]] = {}
        self.detached = False
        self.killed = False
        #: vmstate-task: (label, address space) of the guest process memory accesses go through
        self.task_view: tuple[str, VirtualMemory] | None = None
        self.linux = None  # the guest's Linux kernel (os.linux.kernel.LinuxKernel), built on first use
        #: vmstate-threads tasks: the guest's tasks are the threads (rsp.linux_threads.TaskThreads)
        self.tasks = None
        self.workdir: str | None = None  # files made for gdb (symbol files), removed by close()
        from .linux_ops import OPERATIONS as LINUX_OPERATIONS
        from .vmstate_ops import OPERATIONS  # the qvmstate.* handlers

        self.operations = {**OPERATIONS, **LINUX_OPERATIONS}
        #: one request at a time, from gdb's connection or the side channel (serve_side)
        self.lock = threading.Lock()

    def close(self) -> None:
        if self.workdir:
            import shutil

            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    # -- state --------------------------------------------------------------------------------

    def cpu_index(self) -> int:
        """The selected thread's vCPU; with tasks as threads, that of the task running there, or
        vCPU 0's for a task that is not running (its own registers come from the kernel)."""
        if self.tasks is not None:
            vcpu = self.tasks.threads[self.thread].vcpu
            return 0 if vcpu is None else vcpu
        return self.thread - 1

    def current_cpu(self):
        return self.snap.cpu(self.cpu_index())

    def task_registers(self) -> dict[str, int] | None:
        """With tasks as threads, the registers of a selected task that no vCPU runs."""
        return self.tasks.registers(self.thread) if self.tasks is not None else None

    def virtual(self, cpu_index: int | None = None) -> VirtualMemory:
        i = self.cpu_index() if cpu_index is None else cpu_index
        gen = self.snap.edits.generation
        cached = self._virtual.get(i)
        if cached is None or cached[0] != gen:
            cached = (gen, self.snap.virtual(i))
            self._virtual[i] = cached
        return cached[1]

    def space(self) -> PhysicalMemory | VirtualMemory:
        if self.physical_mode:
            return self.snap.physical
        if self.task_view:
            return self.task_view[1]
        if self.tasks is not None and self.tasks.threads[self.thread].vcpu is None:
            return self.tasks.space(self.thread, self.snap.edits.generation)
        return self.virtual()

    def threads(self) -> list[int]:
        if self.tasks is not None:
            return self.tasks.ids()
        return [c.index + 1 for c in self.snap.cpus]

    def stop_reply(self, signal: int = SIGTRAP) -> bytes:
        return b"T%02xthread:%02x;" % (signal, self.thread)

    def describe_text(self) -> str:
        from .vmstate_ops import describe

        return describe(self)["text"]

    # -- serving ------------------------------------------------------------------------------

    def serve(self, sock: socket.socket) -> None:
        conn = PacketConnection(sock)
        while not (self.detached or self.killed):
            packet = conn.read()
            if packet is None:
                return
            if packet == INTERRUPT:
                conn.send(self.stop_reply())
                continue
            with self.lock:
                replies = self.handle(packet, conn)
            for reply in replies:
                conn.send(reply)
            if packet == b"QStartNoAckMode":
                conn.ack = False  # after the OK, which is still acknowledged

    def handle(self, packet: bytes, conn: PacketConnection | None = None) -> list[bytes]:
        """The reply packets for one request (console 'O' packets first, then the reply)."""
        if self.log:
            self.log(f"<- {packet[:200]!r}")
        try:
            replies = self._dispatch(packet, conn)
        except VmstateError as e:
            replies = [b"E." + str(e).encode(errors="replace")[:400]]
        except Exception as e:  # a bug here must not kill the session
            if self.log:
                self.log(traceback.format_exc())
            replies = [b"E." + f"internal error: {type(e).__name__}: {e}".encode(errors="replace")[:400]]
        if self.log:
            for r in replies:
                self.log(f"-> {r[:200]!r}")
        return replies

    def _dispatch(self, p: bytes, conn: PacketConnection | None) -> list[bytes]:
        c = p[:1]
        if c == b"m":
            return [self._read_memory(p[1:])]
        if c == b"M":
            return [self._write_memory_hex(p[1:])]
        if c == b"X":
            return [self._write_memory_binary(p[1:])]
        arch = self.snap.arch
        if c == b"g":
            known = self.task_registers()
            if known is not None:
                return [b"".join(_encode_known(known, r) for r in arch.gdb_registers)]
            return [arch.encode_gdb_registers(self.current_cpu()).hex().encode()]
        if c == b"G":
            return [self._write_all_registers(bytes.fromhex(p[1:].decode()))]
        if c == b"p":
            n = int(p[1:], 16)
            if n >= len(arch.gdb_registers):
                return [b"E00"]
            known = self.task_registers()
            if known is not None:
                return [_encode_known(known, arch.gdb_registers[n])]
            return [arch.encode_gdb_register(self.current_cpu(), arch.gdb_registers[n]).hex().encode()]
        if c == b"P":
            num, _, val = p[1:].partition(b"=")
            return [self._write_register(int(num, 16), bytes.fromhex(val.decode()))]
        if c == b"H":
            return [self._set_thread(p[2:])]
        if c == b"T":
            return [b"OK" if self._parse_thread(p[1:]) in self.threads() else b"E22"]
        if c == b"?":
            return [self.stop_reply()]
        if c in (b"c", b"s", b"C", b"S") or p.startswith(b"vCont;"):
            # Signal 0 ("stopped"), not SIGTRAP: a step that did not move must end gdb's stepping
            # loop instead of being retried forever.
            return [b"O" + CANNOT_RUN.encode().hex().encode(), self.stop_reply(0)]
        if p == b"vCont?":
            return [b"vCont;c;C;s;S"]
        if c == b"k" or p.startswith(b"vKill"):
            self.killed = True
            return [b"OK"] if p.startswith(b"vKill") else []
        if c == b"D":
            self.detached = True
            return [b"OK"]
        if c == b"q" or c == b"Q":
            return [self._query(p)]
        if c in (b"Z", b"z"):
            return [b""]  # no breakpoints: nothing runs to hit them
        if p == b"vMustReplyEmpty":
            return [b""]
        return [b""]

    # -- queries ------------------------------------------------------------------------------

    def _query(self, p: bytes) -> bytes:
        if p.startswith(b"qSupported"):
            return (
                b"PacketSize=%x;qXfer:features:read+;QStartNoAckMode+;qSearch:memory+;"
                b"vContSupported+" % PACKET_SIZE
            )
        if p == b"QStartNoAckMode":
            return b"OK"
        if p.startswith(b"qXfer:features:read:"):
            annex, _, span = p[len(b"qXfer:features:read:") :].partition(b":")
            if annex != b"target.xml":
                return b"E00"
            off, _, length = span.partition(b",")
            return self._xfer(self.snap.arch.target_xml().encode(), int(off, 16), int(length, 16))
        if p == b"qfThreadInfo":
            return b"m" + b",".join(b"%02x" % t for t in self.threads())
        if p == b"qsThreadInfo":
            return b"l"
        if p == b"qC":
            return b"QC%02x" % self.thread
        if p.startswith(b"qThreadExtraInfo,"):
            t = self._parse_thread(p[len(b"qThreadExtraInfo,") :])
            if self.tasks is not None:
                return self.tasks.extra_info(t).encode().hex().encode() if t in self.tasks.threads else b"E22"
            cpu = self.snap.cpu(t - 1)
            text = f"CPU#{cpu.index} [{'halted ' if cpu.halted else 'running'}] {cpu.cpu_mode}"
            return text.encode().hex().encode()
        if p.startswith(b"qAttached"):
            return b"1"
        if p == b"qOffsets":
            return b""  # QEMU's system-mode gdbstub does not answer qOffsets either
        if p.startswith(b"qSymbol"):
            return b"OK"
        if p == b"qTStatus":
            return b""
        if p.startswith(b"qRcmd,"):
            command = bytes.fromhex(p[len(b"qRcmd,") :].decode()).decode(errors="replace")
            try:
                text = run_monitor(self, command)
            except VmstateError as e:
                text = f"{e}\n"
            return text.encode().hex().encode() if text else b"OK"
        if p.startswith(b"qSearch:memory:"):
            return self._search(p[len(b"qSearch:memory:") :])
        if p == b"qqemu.sstepbits":
            return STEPBITS
        if p.startswith(b"Qqemu.sstepbits="):
            self.stepbits = int(p.split(b"=", 1)[1], 16)
            return b"OK"
        if p == b"qqemu.PhyMemMode":
            return b"1" if self.physical_mode else b"0"
        if p.startswith(b"Qqemu.PhyMemMode:"):
            self.physical_mode = p.endswith(b":1")
            return b"OK"
        if p.startswith(b"qvmstate."):
            return self._vmstate_op(p[len(b"qvmstate.") :])
        return b""

    @staticmethod
    def _xfer(data: bytes, offset: int, length: int) -> bytes:
        chunk = data[offset : offset + length]
        return (b"m" if offset + length < len(data) else b"l") + escape_binary(chunk)

    def _vmstate_op(self, body: bytes) -> bytes:
        name, _, arg = body.partition(b":")
        try:
            args = json.loads(bytes.fromhex(arg.decode())) if arg else {}
        except ValueError as e:
            return _hex_json({"error": f"ValueError: {e}"})
        return _hex_json(self.operation(name.decode(), args))

    def operation(self, name: str, args: dict, progress=None) -> dict:
        """Run one qvmstate operation: ``{"result": ...}`` or ``{"error": "one line"}``.
        Operations that can take long (``reports_progress``) call ``progress(done, total)``."""
        op = self.operations.get(name)
        if op is None:
            return {"error": f"unknown vmstate operation {name!r}"}
        if progress is not None and getattr(op, "reports_progress", False):
            args = {**args, "progress": progress}
        try:
            return {"result": op(self, **args)}
        except VmstateError as e:
            return {"error": str(e)}
        except (OSError, ValueError, TypeError, LookupError) as e:
            return {"error": f"{type(e).__name__}: {e}"}

    def serve_side(self, listener: socket.socket) -> None:
        """The side channel: qvmstate operations as JSON lines, for gdb-side code that must not
        send remote packets (gdb's frame unwinders run while gdb itself talks to the target)."""
        while not (self.detached or self.killed):
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn, conn.makefile("rwb") as f:
                for line in f:
                    try:
                        request = json.loads(line)
                        name, args = request["op"], request.get("args") or {}
                    except (ValueError, KeyError, TypeError):
                        reply = {"error": "bad side-channel request"}
                    else:
                        progress = None
                        if request.get("progress"):
                            progress = ProgressLines(
                                lambda done, total: (
                                    f.write(json.dumps({"progress": [done, total]}).encode() + b"\n"),
                                    f.flush(),
                                )
                            )
                        with self.lock:
                            reply = self.operation(name, args, progress)
                    f.write(json.dumps(reply).encode() + b"\n")
                    f.flush()

    # -- threads ------------------------------------------------------------------------------

    @staticmethod
    def _parse_thread(text: bytes) -> int:
        text = text.split(b".")[-1]  # multiprocess form p1.2
        return int(text, 16) if text not in (b"-1", b"0", b"") else 0

    def _set_thread(self, text: bytes) -> bytes:
        t = self._parse_thread(text)
        if t == 0:  # "any" / "all": keep the current one
            return b"OK"
        if t not in self.threads():
            return b"E22"
        self.thread = t
        return b"OK"

    # -- memory -------------------------------------------------------------------------------

    def _read_memory(self, args: bytes) -> bytes:
        addr_s, _, len_s = args.partition(b",")
        address, length = int(addr_s, 16), int(len_s, 16)
        return hex_runs(self.read_memory(address, length)) or EFAULT

    def read_memory(self, address: int, length: int) -> bytes:
        """What gdb gets: the bytes, or as many as are readable from the start (maybe none)."""
        return readable_prefix(self.space(), address, length)

    def _write(self, address: int, data: bytes) -> bytes:
        try:
            self.space().write(address, data)
        except AddressError:
            return EFAULT
        return b"OK"

    def _write_memory_hex(self, args: bytes) -> bytes:
        head, _, data = args.partition(b":")
        addr_s, _, _len = head.partition(b",")
        return self._write(int(addr_s, 16), bytes.fromhex(data.decode()))

    def _write_memory_binary(self, args: bytes) -> bytes:
        head, _, data = args.partition(b":")
        addr_s, _, len_s = head.partition(b",")
        data = unescape_binary(data)
        if int(len_s, 16) == 0:
            return b"OK"  # gdb's probe for X support
        return self._write(int(addr_s, 16), data)

    def _search(self, args: bytes) -> bytes:
        addr_s, _, rest = args.partition(b";")
        len_s, _, pattern = rest.partition(b";")
        start, length = int(addr_s, 16), int(len_s, 16)
        hit = self.search(start, length, unescape_binary(pattern))
        return b"0" if hit is None else b"1,%x" % hit

    def search(self, start: int, length: int, pattern: bytes) -> int | None:
        from .search import search_virtual

        end = start + length
        space = self.space()
        if space is self.snap.physical:
            return self.snap.physical.search(pattern, start, end)
        return search_virtual(space, pattern, start, end)

    # -- registers ----------------------------------------------------------------------------

    def _write_all_registers(self, data: bytes) -> bytes:
        if self.task_registers() is not None:
            return b"E01"  # a task no vCPU runs: its registers are the kernel's saved words
        arch = self.snap.arch
        cpu = self.current_cpu()
        pos = 0
        for reg in arch.gdb_registers:
            size = reg.bits // 8
            chunk = data[pos : pos + size]
            pos += size
            if len(chunk) < size:
                break
            if chunk != arch.encode_gdb_register(cpu, reg):
                self.write_register(reg, int.from_bytes(chunk, "little"))
                cpu = self.current_cpu()
        return b"OK"

    def _write_register(self, number: int, data: bytes) -> bytes:
        registers = self.snap.arch.gdb_registers
        if number >= len(registers) or self.task_registers() is not None:
            return b"E00" if number >= len(registers) else b"E01"
        reg = registers[number]
        self.write_register(reg, int.from_bytes(data[: reg.bits // 8], "little"))
        return b"OK"

    def write_register(self, reg: GdbRegister, value: int) -> None:
        self.snap.arch.write_gdb_register(self, self.current_cpu(), reg, value)


def _encode_known(values: dict[str, int], reg: GdbRegister) -> bytes:
    """One register in a g/p reply: its value, or x's (unavailable) where it is not known."""
    size = reg.bits // 8
    value = values.get(reg.name)
    if value is None:
        return b"xx" * size
    return (value & ((1 << reg.bits) - 1)).to_bytes(size, "little").hex().encode()


def serve_socket(
    snap: Snapshot,
    listener: socket.socket,
    once: bool = True,
    log: Callable[[str], None] | None = None,
    side: socket.socket | None = None,
) -> None:
    """Accept clients on ``listener``; with ``once``, return after the first one leaves. ``side``:
    a listener for the side channel of the (first) client (see :meth:`SnapshotServer.serve_side`)."""
    while True:
        conn, _ = listener.accept()
        server = SnapshotServer(snap, log)
        if side is not None:
            threading.Thread(target=server.serve_side, args=(side,), daemon=True).start()
            side = None
        try:
            conn.setsockopt(
                socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
            ) if conn.family != socket.AF_UNIX else None
            server.serve(conn)
        except (ConnectionError, OSError) as e:
            if log:
                log(f"connection ended: {e}")
        finally:
            conn.close()
            server.close()
        if once or server.killed:
            return


def _stderr_log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def readable_prefix(space: PhysicalMemory | VirtualMemory, address: int, length: int) -> bytes:
    """The bytes at ``address``, or as many as are readable from the start (maybe none)."""
    try:
        return space.read(address, length)
    except AddressError:
        pass
    out = bytearray()
    while length > 0:  # page by page up to the first hole
        n = min(length, 0x1000 - (address & 0xFFF))
        try:
            out += space.read(address, n)
        except AddressError:
            break
        address = (address + n) & 0xFFFFFFFFFFFFFFFF
        length -= n
    return bytes(out)
