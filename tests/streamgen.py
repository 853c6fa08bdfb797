"""Build small synthetic migration streams for unit and fuzz tests (real QEMU streams are the proof;
these reach edge cases QEMU rarely writes: repeats, CONTINUE across chunks, xbzrle, commands)."""

from __future__ import annotations

import json
import struct

PS = 4096
ZERO, MEM_SIZE, PAGE, EOS, CONT, XBZRLE = 0x02, 0x04, 0x08, 0x10, 0x20, 0x40


def counted(s: str) -> bytes:
    b = s.encode()
    return bytes([len(b)]) + b


class StreamBuilder:
    def __init__(self, machine: str = "pc-i440fx-7.2", caps: list[str] | None = None):
        self.out = bytearray(b"QEVM\x00\x00\x00\x03")
        self.out += b"\x07" + struct.pack(">I", len(machine)) + machine.encode()
        if caps:
            self.out += b"\x05" + counted("configuration/capabilities") + struct.pack(">I", 1)
            self.out += struct.pack(">I", len(caps)) + b"".join(counted(c) for c in caps)
        self.blocks: dict[str, int] = {}
        self.devices: list[dict] = []
        self.next_id = 0

    def ram_start(self, blocks: dict[str, int], sid: int = 2) -> StreamBuilder:
        self.blocks = dict(blocks)
        self.ram_sid = sid
        self.out += b"\x01" + struct.pack(">I", sid) + counted("ram") + struct.pack(">II", 0, 4)
        self.out += struct.pack(">Q", sum(blocks.values()) | MEM_SIZE)
        for name, size in blocks.items():
            self.out += counted(name) + struct.pack(">Q", size)
        self.out += struct.pack(">Q", EOS) + b"\x7e" + struct.pack(">I", sid)
        return self

    def ram_chunk(self, records: list[tuple], end: bool = False) -> StreamBuilder:
        """records: ("page", block|None, offset, data) / ("zero", block|None, offset) / raw bytes."""
        self.out += (b"\x03" if end else b"\x02") + struct.pack(">I", self.ram_sid)
        for r in records:
            if isinstance(r, (bytes, bytearray)):
                self.out += r
                continue
            kind, block, offset = r[0], r[1], r[2]
            flags = {"page": PAGE, "zero": ZERO}[kind] | (CONT if block is None else 0)
            self.out += struct.pack(">Q", offset | flags)
            if block is not None:
                self.out += counted(block)
            self.out += r[3] if kind == "page" else b"\x00"
        self.out += struct.pack(">Q", EOS) + b"\x7e" + struct.pack(">I", self.ram_sid)
        return self

    def command(self, cmd: int, data: bytes = b"") -> StreamBuilder:
        self.out += b"\x08" + struct.pack(">HH", cmd, len(data)) + data
        return self

    def device(
        self,
        idstr: str,
        fields: list[tuple[str, str, bytes]],
        instance: int = 0,
        version: int = 1,
        describe: bool = True,
    ) -> StreamBuilder:
        """fields: (name, type, wire bytes)."""
        self.next_id += 10
        sid = self.next_id
        self.out += b"\x04" + struct.pack(">I", sid) + counted(idstr) + struct.pack(">II", instance, version)
        for _, _, data in fields:
            self.out += data
        self.out += b"\x7e" + struct.pack(">I", sid)
        if describe:
            self.devices.append(
                {
                    "name": idstr,
                    "instance_id": instance,
                    "vmsd_name": idstr.rsplit("/", 1)[-1],
                    "version": version,
                    "fields": [{"name": n, "type": t, "size": len(d)} for n, t, d in fields],
                }
            )
        return self

    def finish(self, vmdesc: bool = True) -> bytes:
        self.out += b"\x00"
        if vmdesc:
            js = json.dumps({"page_size": PS, "devices": self.devices}).encode()
            self.out += b"\x06" + struct.pack(">I", len(js)) + js
        return bytes(self.out)


def simple_stream(vmdesc: bool = True) -> bytes:
    """pc.ram of 4 pages (page 0 data, 1 zero, 2 data twice, 3 data then zero) and one device."""
    b = StreamBuilder().ram_start({"pc.ram": 4 * PS, "pc.bios": PS})
    b.ram_chunk(
        [
            ("page", "pc.ram", 0, b"A" * PS),
            ("zero", None, PS),
            ("page", None, 2 * PS, b"B" * PS),
            ("page", None, 3 * PS, b"C" * PS),
        ]
    )
    b.ram_chunk(
        [("page", None, 2 * PS, b"D" * PS), ("zero", None, 3 * PS), ("page", "pc.bios", 0, b"R" * PS)],
        end=True,
    )
    b.device("timer", [("offset", "int64", struct.pack(">q", -5)), ("flag", "bool", b"\x01")])
    b.device(
        "0000:00:03.0/nicdev",
        [("mac", "buffer", bytes.fromhex("525400123456")), ("regs", "uint32", struct.pack(">I", 7))],
    )
    return b.finish(vmdesc)
