"""Where a migration stream lives: a plain file, a libvirt save image, or a qcow2 internal snapshot.

Every container gives the layers above the same thing, a :class:`StreamSource`: random access to
the stream's bytes by *stream* offset, and the file offset behind each stream byte (so an edit can
be patched in place and errors can name the byte in the user's file).
"""

from __future__ import annotations

from typing import Protocol


class StreamSource(Protocol):
    path: str  # the file the user named
    kind: str  # "stream" | "libvirt" | "qcow2"
    size: int  # length of the migration stream in bytes

    def read(self, offset: int, length: int) -> bytes:
        """Stream bytes [offset, offset+length); FormatError (naming the file) past the end."""
        ...

    def view(self) -> memoryview | None:
        """Zero-copy view of the whole stream when it is contiguous in the file, else None."""
        ...

    def file_offset(self, offset: int) -> int:
        """Byte position in ``path`` of stream byte ``offset``."""
        ...

    def describe(self) -> dict:
        """Container facts for `vmstate info` (kind, snapshot name, libvirt XML, ...)."""
        ...

    def close(self) -> None: ...
