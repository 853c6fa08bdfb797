"""Framing of the gdb remote serial protocol: $payload#checksum packets, acks, binary escapes.

Only what a server needs: read a client's packets (with or without acks, Ctrl-C as its own event),
send replies, and the escaping of binary data in X/qSearch requests and qXfer replies.
"""

from __future__ import annotations

import re
import socket

INTERRUPT = b"\x03"
_ESCAPE = 0x7D
_NEEDS_ESCAPE = frozenset(b"#$}*")


_ZERO_RUN = re.compile(rb"\x00{16,}")
_ZERO16 = bytes(16)


def _zero_chars(count: int) -> bytes:
    """``count`` hex '0' characters, run-length encoded as gdb reads them: a character, '*', and
    chr(29 + repeats), repeats at most 97 (the count character stays printable) and never 6 or 7
    (they would be '#' and '$')."""
    full, rest = divmod(count, 98)
    out = b"0*~" * full
    if rest in (7, 8):
        return out + b"0*\x22" + b"0" * (rest - 6)
    if rest >= 4:
        return out + b"0*" + bytes((28 + rest,))
    return out + b"0" * rest


def hex_runs(data: bytes) -> bytes:
    """``data.hex()`` with its zero runs run-length encoded: guest memory is mostly zero pages,
    and gdb's cost is per character it reads, so a zero page costs 252 characters, not 8192."""
    if _ZERO16 not in data:
        return data.hex().encode()
    out = []
    pos = 0
    for m in _ZERO_RUN.finditer(data):
        start, end = m.span()
        out.append(data[pos:start].hex().encode())
        out.append(_zero_chars(2 * (end - start)))
        pos = end
    out.append(data[pos:].hex().encode())
    return b"".join(out)


def checksum(payload: bytes) -> int:
    return sum(payload) & 0xFF


def frame(payload: bytes) -> bytes:
    return b"$" + payload + b"#" + b"%02x" % checksum(payload)


def escape_binary(data: bytes) -> bytes:
    if not any(b in _NEEDS_ESCAPE for b in data):
        return data
    out = bytearray()
    for b in data:
        if b in _NEEDS_ESCAPE:
            out += bytes((_ESCAPE, b ^ 0x20))
        else:
            out.append(b)
    return bytes(out)


def unescape_binary(data: bytes) -> bytes:
    if _ESCAPE not in data:
        return data
    out = bytearray()
    it = iter(data)
    for b in it:
        out.append(next(it) ^ 0x20 if b == _ESCAPE else b)
    return bytes(out)


def _expand_runs(payload: bytes) -> bytes:
    """Clients may run-length encode (X*n): a char, '*', and a count char (n = count - 29)."""
    if b"*" not in payload:
        return payload
    out = bytearray()
    i = 0
    while i < len(payload):
        b = payload[i]
        if b == 0x2A and out and i + 1 < len(payload):
            out += bytes((out[-1],)) * (payload[i + 1] - 29)
            i += 2
            continue
        out.append(b)
        i += 1
    return bytes(out)


class PacketConnection:
    """One client on a connected socket."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.ack = True
        self._buf = bytearray()

    def _fill(self) -> bool:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            return False
        self._buf += chunk
        return True

    def read(self) -> bytes | None:
        """The next packet's payload, INTERRUPT for a Ctrl-C, or None at end of connection."""
        while True:
            buf = self._buf
            # Drop acks and noise before the next packet or interrupt.
            i = 0
            while i < len(buf) and buf[i] not in (0x24, 0x03):
                i += 1
            del buf[:i]
            if buf[:1] == INTERRUPT:
                del buf[:1]
                return INTERRUPT
            if buf[:1] == b"$":
                end = buf.find(b"#")
                if end != -1 and len(buf) >= end + 3:
                    payload = bytes(buf[1:end])
                    sent = bytes(buf[end + 1 : end + 3])
                    del buf[: end + 3]
                    if self.ack:
                        ok = sent.lower() == b"%02x" % checksum(payload)
                        self.sock.sendall(b"+" if ok else b"-")
                        if not ok:
                            continue
                    return _expand_runs(payload)
            if not self._fill():
                return None

    def send(self, payload: bytes) -> None:
        data = frame(payload)
        while True:
            self.sock.sendall(data)
            if not self.ack:
                return
            # Wait for the client's ack; a '-' asks for the packet again.
            while not self._buf:
                if not self._fill():
                    return
            first = self._buf[0]
            if first in (0x2B, 0x2D):
                del self._buf[:1]
                if first == 0x2B:
                    return
            else:
                return  # a new packet: take it as an implicit ack
