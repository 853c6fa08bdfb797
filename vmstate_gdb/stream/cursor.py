"""A bounds-checked reader over stream bytes: every short read is a FormatError with its offset."""

from __future__ import annotations

import struct

from ..errors import FormatError

_BE16 = struct.Struct(">H")
_BE32 = struct.Struct(">I")
_BE64 = struct.Struct(">Q")


class Cursor:
    """Sequential big-endian reads from a sliceable buffer (memoryview or container adapter)."""

    __slots__ = ("buf", "pos", "size", "path", "origin")

    def __init__(self, buf, path: str, pos: int = 0, origin: int = 0):
        self.buf = buf
        self.pos = pos
        self.size = len(buf)
        self.path = path
        # Added to stream offsets in messages, so errors name the byte in the user's file.
        self.origin = origin

    def fail(self, message: str, offset: int | None = None) -> FormatError:
        where = self.pos if offset is None else offset
        return FormatError(message, self.path, where + self.origin)

    def need(self, n: int, what: str) -> None:
        if self.pos + n > self.size:
            raise self.fail(
                f"truncated: {what} needs {n} bytes, the stream ends at {self.size + self.origin:#x}"
            )

    def u8(self, what: str = "byte") -> int:
        self.need(1, what)
        value = self.buf[self.pos]
        self.pos += 1
        return value

    def peek_u8(self) -> int | None:
        return self.buf[self.pos] if self.pos < self.size else None

    def be16(self, what: str = "be16") -> int:
        self.need(2, what)
        (value,) = _BE16.unpack(self.buf[self.pos : self.pos + 2])
        self.pos += 2
        return value

    def be32(self, what: str = "be32") -> int:
        self.need(4, what)
        (value,) = _BE32.unpack(self.buf[self.pos : self.pos + 4])
        self.pos += 4
        return value

    def be64(self, what: str = "be64") -> int:
        self.need(8, what)
        (value,) = _BE64.unpack(self.buf[self.pos : self.pos + 8])
        self.pos += 8
        return value

    def take(self, n: int, what: str = "bytes") -> bytes:
        self.need(n, what)
        value = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return value

    def skip(self, n: int, what: str = "bytes") -> None:
        self.need(n, what)
        self.pos += n

    def counted_string(self, what: str = "name") -> str:
        """QEMU's counted string: a length byte, then that many bytes, no NUL."""
        start = self.pos
        raw = self.take(self.u8(what), what)
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not ASCII: {raw[:32]!r}", start) from None
