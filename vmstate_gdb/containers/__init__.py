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

    def checked_view(self):
        """Like :meth:`view`, but every slice is a checked read (an error, not SIGBUS, when the
        file was truncated underneath): what an open session reads through. None when fragmented."""
        ...

    def open_file(self):
        """A binary file object on the opened file (not the path: it may name another file by now)."""
        ...

    def check_unchanged(self) -> None:
        """FormatError if the file was truncated or rewritten since it was opened."""
        ...

    def file_offset(self, offset: int) -> int:
        """Byte position in ``path`` of stream byte ``offset``."""
        ...

    def describe(self) -> dict:
        """Container facts for `vmstate info` (kind, snapshot name, libvirt XML, ...)."""
        ...

    def close(self) -> None: ...


# -- opening by magic ---------------------------------------------------------------------------

_QEVM = b"QEVM"
_LIBVIRT = (b"LibvirtQemudSave", b"LibvirtQemudPart")
_QCOW2 = b"QFI\xfb"
_COMPRESSED = {
    b"\x1f\x8b": ("gzip", "gzip -dc"),
    b"BZh": ("bzip2", "bzip2 -dc"),
    b"\xfd7zXZ\x00": ("xz", "xz -dc"),
    b"\x28\xb5\x2f\xfd": ("zstd", "zstd -dc"),
    b"\x89LZO": ("lzop", "lzop -dc"),
}


def _sniff(path: str):
    from ..errors import FormatError, UnsupportedError
    from ._mapped import MappedFile

    f = MappedFile(path)
    try:
        head = f.bytes(0, min(16, f.size), "file magic")
        if head.startswith(_QEVM):
            return f, "stream"
        if head.startswith(_QCOW2):
            return f, "qcow2"
        if len(head) >= 7 and any(m.startswith(head) for m in _LIBVIRT):
            return f, "libvirt"
        for magic, (name, tool) in _COMPRESSED.items():
            if head.startswith(magic):
                raise UnsupportedError(
                    f"file is {name}-compressed; decompress it first ({tool} {path} > vm.mig) "
                    "and open the result",
                    path,
                    0,
                )
        shown = head[:16]
        raise FormatError(
            f"unknown file type: the first bytes are {shown.hex(' ')} ({shown!r}); expected a QEMU migration "
            "stream (QEVM), a libvirt save image (LibvirtQemudSave) or a qcow2 image (QFI\\xfb)",
            path,
            0,
        )
    except BaseException:
        f.close()
        raise


def open_source(
    path: str, snapshot: str | None = None, offset: int | None = None, progress=None
) -> StreamSource:
    """Open ``path`` by its magic: a migration stream, a libvirt save image or a qcow2 snapshot.

    ``snapshot`` picks a qcow2 snapshot by id or name (default: the newest with VM state).
    ``offset`` says the stream starts at that byte of a plain file (``migrate file:F,offset=N``).
    ``progress(done, total)`` follows the decompression of a compressed libvirt image.
    Every failure is a :class:`~vmstate_gdb.errors.VmstateError` naming the file.
    """
    from ..errors import UnsupportedError
    from ._mapped import MappedFile
    from .libvirt import LibvirtSave
    from .plain import PlainStream
    from .qcow2 import Qcow2VmState

    if offset:
        if snapshot is not None:
            raise UnsupportedError("a stream offset and a snapshot name cannot be combined", path, offset)
        return PlainStream(path, offset, mapped=MappedFile(path))
    f, kind = _sniff(path)
    try:
        if snapshot is not None and kind != "qcow2":
            raise UnsupportedError(
                f"file is a {'libvirt save image' if kind == 'libvirt' else 'migration stream'}"
                f" and has no snapshots; cannot select snapshot {snapshot!r}",
                path,
                0,
            )
        if kind == "stream":
            return PlainStream(path, 0, mapped=f)
        if kind == "libvirt":
            return LibvirtSave(path, mapped=f, progress=progress)
        return Qcow2VmState(path, snapshot, mapped=f)
    except BaseException:
        f.close()
        raise


def list_snapshots(path: str) -> list:
    """The snapshot table of a qcow2 image, as :class:`~.qcow2.SnapshotInfo` (disk-only ones too)."""
    from .qcow2 import Qcow2Image

    img = Qcow2Image(path)
    try:
        return list(img.snapshots)
    finally:
        img.close()
