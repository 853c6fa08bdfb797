"""The protocol server, driven packet by packet over a socketpair (no gdb), on real snapshots.

The oracle is QEMU's `info registers` recorded at stop time; the layout is QEMU's gdbstub's.
"""

from __future__ import annotations

import json
import socket
import threading

import pytest

from vmstate_gdb.arch.x86_64 import gdb as regs
from vmstate_gdb.harness.state import split_cpus
from vmstate_gdb.rsp.protocol import _expand_runs, checksum, escape_binary, frame, hex_runs, unescape_binary
from vmstate_gdb.rsp.server import SnapshotServer
from vmstate_gdb.snapshot import Snapshot


def _symbol(name: str) -> int:
    from guestinfo import small_symbols

    return small_symbols()[name]


class Client:
    """A minimal gdb: frames packets, checks acks, collects O packets."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = b""
        self.console = b""

    def _read_packet(self) -> bytes:
        while True:
            start = self.buf.find(b"$")
            end = self.buf.find(b"#", start)
            if start != -1 and end != -1 and len(self.buf) >= end + 3:
                payload = self.buf[start + 1 : end]
                assert self.buf[end + 1 : end + 3] == b"%02x" % checksum(payload)
                self.buf = self.buf[end + 3 :]
                self.sock.sendall(b"+")
                return _expand_runs(payload)  # as gdb does, before anything else
            chunk = self.sock.recv(1 << 20)
            assert chunk, "server closed the connection"
            self.buf += chunk

    def ask(self, payload: bytes | str) -> bytes:
        if isinstance(payload, str):
            payload = payload.encode()
        self.sock.sendall(frame(payload))
        while True:
            reply = self._read_packet()
            if (
                reply.startswith(b"O")
                and reply != b"OK"
                and len(reply) > 1
                and all(c in b"0123456789abcdef" for c in reply[1:])
            ):
                self.console += bytes.fromhex(reply[1:].decode())
                continue
            return reply

    def op(self, name: str, **args):
        packet = f"qvmstate.{name}" + (":" + json.dumps(args).encode().hex() if args else "")
        return json.loads(bytes.fromhex(self.ask(packet).decode()))


@pytest.fixture
def connect():
    opened = []

    def start(path: str):
        snap = Snapshot.open(path)
        ours, theirs = socket.socketpair()
        server = SnapshotServer(snap)
        t = threading.Thread(target=server.serve, args=(theirs,), daemon=True)
        t.start()
        opened.append((snap, ours, theirs, t))
        return Client(ours), server

    yield start
    for snap, ours, theirs, t in opened:
        ours.close()
        t.join(5)
        theirs.close()
        snap.close()


@pytest.mark.unit
def test_escape_roundtrip():
    data = bytes(range(256)) * 2
    assert unescape_binary(escape_binary(data)) == data
    assert b"#" not in escape_binary(data) and b"$" not in escape_binary(data)


@pytest.mark.unit
@pytest.mark.parametrize("zeros", [*range(0, 120), 4096, 4096 * 3 + 5])
def test_zero_runs_are_encoded_as_gdb_expands_them(zeros):
    data = b"\x12\x00\x00\x34" + bytes(zeros) + b"\xab"
    encoded = hex_runs(data)
    assert _expand_runs(encoded) == data.hex().encode()
    assert b"#" not in encoded and b"$" not in encoded
    if zeros >= 4096:
        assert len(encoded) < len(data) * 2 // 20


@pytest.mark.unit
def test_register_table_matches_qemu_layout():
    names = [r.name for r in regs.REGISTERS]
    assert len(names) == 66  # QEMU x86_64: 16+1+1+9+6+16+16+1
    assert names[:8] == ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp"]
    assert names[16:24] == ["rip", "eflags", "cs", "ss", "ds", "es", "fs", "gs"]
    assert names[24:33] == ["fs_base", "gs_base", "k_gs_base", "cr0", "cr2", "cr3", "cr4", "cr8", "efer"]
    assert names[33] == "st0" and names[41] == "fctrl" and names[49] == "xmm0" and names[65] == "mxcsr"
    assert regs.G_PACKET_SIZE == 608
    xml = regs.target_xml()
    assert 'regnum="33"' in xml and 'regnum="49"' in xml and "i386:x86-64" in xml


def _qemu_regs(snapshot):
    return snapshot.state.registers


def test_g_packet_equals_qemu_registers(snapshot_small_q35_virtio_2cpu, connect):
    """Every vCPU, one in long mode and one (the halted AP) in 32-bit protected mode."""
    client, _ = connect(snapshot_small_q35_virtio_2cpu.path)
    assert b"qXfer:features:read+" in client.ask("qSupported:multiprocess+;xmlRegisters=i386")
    assert client.ask("qfThreadInfo") == b"m01,02"
    assert client.ask("qsThreadInfo") == b"l"
    for i, qemu in enumerate(_qemu_regs(snapshot_small_q35_virtio_2cpu)):
        assert client.ask(f"Hg{i + 1:x}") == b"OK"
        g = bytes.fromhex(client.ask("g").decode())
        assert len(g) == regs.G_PACKET_SIZE
        values = {}
        pos = 0
        for r in regs.REGISTERS:
            values[r.name] = int.from_bytes(g[pos : pos + r.bits // 8], "little")
            pos += r.bits // 8
        for name in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "rip"):
            assert values[name] == qemu[name.upper()], (i, name)
        assert values["eflags"] == qemu["RFL"]
        for seg in ("cs", "ss", "ds", "es", "fs", "gs"):
            assert values[seg] == qemu[seg.upper()]
        for cr in ("cr0", "cr2", "cr3", "cr4"):
            assert values[cr] == qemu[cr.upper()]
        assert values["efer"] == qemu["EFER"]
        assert values["fs_base"] == qemu["FS_BASE"] and values["gs_base"] == qemu["GS_BASE"]
        if "R8" in qemu:
            assert [values[f"r{n}"] for n in range(8, 16)] == [qemu[f"R{n}"] for n in range(8, 16)]
        else:  # 32-bit code: QEMU's gdbstub reports r8-r15 as 0
            assert all(values[f"r{n}"] == 0 for n in range(8, 16))
        # p reads the same bytes as g
        assert bytes.fromhex(client.ask("p10").decode()) == g[128:136]


def test_monitor_info_registers_is_qemus_text(snapshot_small_q35_virtio_2cpu, connect):
    client, _ = connect(snapshot_small_q35_virtio_2cpu.path)
    text = bytes.fromhex(client.ask("qRcmd," + b"info registers -a".hex()).decode()).decode()
    ours = split_cpus(text)
    theirs = snapshot_small_q35_virtio_2cpu.state.registers_text
    assert len(ours) == len(theirs)
    for mine, qemu in zip(ours, theirs, strict=True):
        # QEMU's HMP text comes with \r\n line ends through QMP
        assert [x.rstrip() for x in mine.strip().splitlines()] == [
            x.rstrip() for x in qemu.strip().splitlines()
        ]


def test_memory_read_write_and_errors(snapshot_small_pc_e1000, connect):
    client, server = connect(snapshot_small_pc_e1000.path)
    GUEST_MAC, GUEST_TICK = _symbol("guest_mac"), _symbol("tick")
    mac = bytes.fromhex(client.ask(f"m{GUEST_MAC:x},6").decode())
    assert mac == bytes.fromhex(snapshot_small_pc_e1000.config.nics[0].mac.replace(":", ""))
    tick = int.from_bytes(bytes.fromhex(client.ask(f"m{GUEST_TICK:x},8").decode()), "little")
    assert tick >= snapshot_small_pc_e1000.last_tick.n
    assert client.ask("mdead000000000000,8").startswith(b"E")  # non-canonical
    assert client.ask("m7fff00000000,8").startswith(b"E")  # not mapped
    # binary write with characters that need escaping, then hex write; both read back
    data = b"#$}*\x00\x01"
    assert client.ask(b"X%x,%x:" % (GUEST_TICK, len(data)) + escape_binary(data)) == b"OK"
    assert bytes.fromhex(client.ask(f"m{GUEST_TICK:x},6").decode()) == data
    assert client.ask(f"M{GUEST_TICK:x},8:{(77).to_bytes(8, 'little').hex()}") == b"OK"
    assert client.ask(f"m{GUEST_TICK:x},8") == (77).to_bytes(8, "little").hex().encode()
    assert server.snap.edits.pages  # in the overlay, not the file
    # physical mode (QEMU's packet and our monitor command)
    assert client.ask("Qqemu.PhyMemMode:1") == b"OK" and client.ask("qqemu.PhyMemMode") == b"1"
    phys = server.snap.virtual(0).translate(GUEST_MAC).physical
    assert bytes.fromhex(client.ask(f"m{phys:x},6").decode()) == mac
    assert client.ask("Qqemu.PhyMemMode:0") == b"OK"


def test_search_finds_mac_virtual_and_physical(snapshot_small_pc_e1000, connect):
    client, server = connect(snapshot_small_pc_e1000.path)
    mac = bytes.fromhex(snapshot_small_pc_e1000.config.nics[0].mac.replace(":", ""))
    reply = client.ask(b"qSearch:memory:ffffffff80100000;200000;" + escape_binary(mac))
    first = int(reply[2:], 16)  # maybe a copy on the stack, before .bss
    assert reply.startswith(b"1,") and server.snap.virtual(0).read(first, 6) == mac
    at = _symbol("guest_mac")
    assert client.ask(b"qSearch:memory:%x;1000;" % (at - 0x10) + escape_binary(mac)) == b"1,%x" % at
    client.ask("Qqemu.PhyMemMode:1")
    reply = client.ask(b"qSearch:memory:0;8000000;" + escape_binary(mac))
    assert reply.startswith(b"1,")
    hit = int(reply[2:], 16)
    assert server.snap.physical.read(hit, 6) == mac
    assert client.ask(b"qSearch:memory:0;8000000;" + escape_binary(b"\xde\xad\xbe\xef\x99\x42")) == b"0"


def test_register_writes_land_in_overlay(snapshot_small_pc_e1000, connect):
    client, server = connect(snapshot_small_pc_e1000.path)
    assert client.ask("P0=" + (0x1234).to_bytes(8, "little").hex()) == b"OK"  # rax
    assert client.ask("p0") == (0x1234).to_bytes(8, "little").hex().encode()
    assert server.snap.cpus[0]["rax"] == 0x1234
    g = bytearray(bytes.fromhex(client.ask("g").decode()))
    g[8:16] = (0x5678).to_bytes(8, "little")  # rbx
    assert client.ask(b"G" + bytes(g).hex().encode()) == b"OK"
    assert server.snap.cpus[0]["rbx"] == 0x5678
    assert "cpu[0] rax" in [p.what for p in server.snap.edits.patches]


def test_cannot_run_and_probes(snapshot_small_pc_e1000, connect):
    client, _ = connect(snapshot_small_pc_e1000.path)
    assert client.ask("vCont;c") == b"T00thread:01;"
    assert b"cannot run" in client.console
    assert client.ask("vCont;s:1") == b"T00thread:01;"
    assert client.ask("?") == b"T05thread:01;"
    assert client.ask("qqemu.sstepbits") == b"ENABLE=1,NOIRQ=2,NOTIMER=4"
    assert client.ask("Qqemu.sstepbits=1") == b"OK"
    assert client.ask("qAttached") == b"1"
    assert client.ask("T1") == b"OK" and client.ask("T9").startswith(b"E")
    version = bytes.fromhex(client.ask("qRcmd," + b"info version".hex()).decode()).decode()
    assert "vmstate_gdb" in version
    mem = bytes.fromhex(client.ask("qRcmd," + b"info mem".hex()).decode()).decode()
    assert "ffffffff80000000-" in mem
    bad = bytes.fromhex(client.ask("qRcmd," + b"frobnicate".hex()).decode()).decode()
    assert "unknown monitor command" in bad and "\n" == bad[-1] and bad.count("\n") == 1


def test_vmstate_operations(snapshot_small_pc_e1000, connect):
    client, server = connect(snapshot_small_pc_e1000.path)
    facts = client.op("facts")["result"]
    assert facts["ncpus"] == 1 and facts["nics"][0]["mac"] == snapshot_small_pc_e1000.config.nics[0].mac
    assert "e1000" in client.op("devices")["result"]["text"]
    assert client.op("field", path="nosuch/x")["error"].startswith("no device")
    ral = client.op("field", path="e1000/mac_reg[0][0]")["result"]["int"]
    assert ral.to_bytes(4, "little") == bytes.fromhex(facts["nics"][0]["mac"].replace(":", ""))[:4]
    changed = client.op("mac", new="02:00:00:00:00:01", memory=True)["result"]
    assert changed["memory_hits"] and "guest memory: physical" in changed["text"]
    assert client.op("facts")["result"]["nics"][0]["mac"] == "02:00:00:00:00:01"
    assert "pending edits" in client.op("describe")["result"]["text"]
    client.op("revert")
    assert not server.snap.edits
    assert client.op("set", path="e1000/mac_reg[0][0]", value="0x1ffffffff")["error"]
