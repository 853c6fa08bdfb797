"""A migration stream stored as-is in a file, possibly starting at a byte offset.

Covers ``migrate "exec:cat > f"``, ``migrate file:f`` and ``file:f,offset=N``, and serves the
stream inside a raw libvirt save image (see :mod:`.libvirt`).
"""

from __future__ import annotations

from ..errors import FormatError
from ._mapped import MappedFile

QEVM_MAGIC = b"QEVM\x00\x00\x00\x03"
QEVM_MAGIC_V2 = b"QEVM\x00\x00\x00\x02"


def check_qevm(data: bytes, path: str, offset: int, what: str = "migration stream") -> None:
    """FormatError unless ``data`` (read at file ``offset``) starts with the v3 QEVM header."""
    if data[:8] == QEVM_MAGIC:
        return
    if len(data) < 8 and QEVM_MAGIC.startswith(data) and data:
        raise FormatError(
            f"{what} is truncated: only {len(data)} bytes of the 8-byte QEVM header", path, offset
        )
    if data[:8] == QEVM_MAGIC_V2:
        raise FormatError(
            f"{what} is a version 2 QEVM stream (QEMU before 0.13?); only version 3 is read", path, offset
        )
    raise FormatError(
        f"{what} does not start with the QEVM magic 51 45 56 4d 00 00 00 03; "
        f"found {data[:8].hex(' ') or 'nothing'}",
        path,
        offset,
    )


class PlainStream:
    """The stream is bytes [base, EOF) of ``path``; stream offset ``o`` is file offset ``base + o``."""

    kind = "stream"

    def __init__(self, path: str, base: int = 0, *, mapped: MappedFile | None = None, kind: str = "stream"):
        self.path = path
        self.kind = kind
        self._file = mapped if mapped is not None else MappedFile(path)
        try:
            if base < 0 or base >= self._file.size:
                raise FormatError(
                    f"stream offset {base:#x} is not inside the file ({self._file.size:#x} bytes)", path, base
                )
            self.base = base
            self.size = self._file.size - base
            check_qevm(self._file.bytes(base, min(8, self.size), "QEVM header"), path, base)
        except BaseException:
            self._file.close()
            raise

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise FormatError(
                f"read of stream bytes {offset:#x}..{offset + length:#x} goes past the end of the "
                f"stream ({self.size:#x} bytes; truncated?)",
                self.path,
                self.base + min(max(offset, 0), self.size),
            )
        return self._file.bytes(self.base + offset, length, "stream read")

    def view(self) -> memoryview | None:
        return self._file.view(self.base, self.size)

    def checked_view(self):
        return self._file.checked_view(self.base, self.size)

    def open_file(self):
        return self._file.open_file()

    def check_unchanged(self) -> None:
        self._file.check_unchanged(self.base)

    def file_offset(self, offset: int) -> int:
        if offset < 0 or offset > self.size:
            raise FormatError(
                f"stream offset {offset:#x} is outside the stream ({self.size:#x} bytes)",
                self.path,
                self.base + max(0, min(offset, self.size)),
            )
        return self.base + offset

    def open_stream_file(self):
        """The file holding the stream's bytes at :meth:`file_offset`, opened for reading (the
        writer copies from it in the kernel)."""
        return self.open_file()

    def release(self, offset: int, length: int) -> None:
        self._file.release(self.base + offset, length)

    def no_writers(self):
        """Context for the index scan: writers and truncations wait (see MappedFile.no_writers)."""
        return self._file.no_writers()

    def describe(self) -> dict:
        return {"kind": self.kind, "path": self.path, "stream_offset": self.base, "size": self.size}

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
