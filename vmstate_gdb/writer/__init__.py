"""Write a new snapshot with the overlay's edits; QEMU resumes it. The input is never written."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import SaveError, VmstateError
from . import emit
from .emit import AtomicOutput, write_stream
from .plan import Plan, make_plan

if TYPE_CHECKING:
    from ..snapshot import Snapshot


@dataclass
class SaveResult:
    path: str
    format: str  # "stream" | "qcow2" | "libvirt"
    plan: Plan
    size: int
    snapshot_name: str | None = None

    def summary(self) -> str:
        what = f"wrote {self.path} ({self.format}, {self.size} bytes): {self.plan.describe()}"
        if self.snapshot_name:
            what += f"; internal snapshot {self.snapshot_name!r}"
        return what


def check_output_path(snap: Snapshot, out: str) -> None:
    """Refuse to write over the input, also through a symlink or a hard link."""
    src = snap.path
    if os.path.realpath(out) == os.path.realpath(src + ".meta.json"):
        raise SaveError("that is the input's .meta.json (its QEMU command line); choose another file", out)
    if os.path.realpath(out) == os.path.realpath(src):
        raise SaveError("refusing to overwrite the input snapshot; choose another output file", out)
    try:
        if os.path.exists(out) and os.path.samefile(out, src):
            raise SaveError("the output is a link to the input snapshot; choose another output file", out)
    except OSError:
        pass
    directory = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(directory):
        raise SaveError(f"directory {directory} does not exist", out)


def save(
    snap: Snapshot,
    out: str,
    fmt: str | None = None,
    progress=None,
    snapshot_name: str | None = None,
) -> SaveResult:
    """Write ``snap`` with its edits to ``out``: same kind as the input unless ``fmt`` says
    "stream" (a standalone migration stream), "qcow2" or "libvirt" (a save image, uncompressed)."""
    check_output_path(snap, out)
    kind = snap.source.kind
    fmt = fmt or (kind if kind in ("qcow2", "libvirt") else "stream")
    if fmt not in ("stream", "qcow2", "libvirt"):
        raise SaveError(f"unknown output format {fmt!r} (stream, qcow2 or libvirt)", out)
    try:
        plan = make_plan(snap)
    except ValueError as e:
        raise SaveError(str(e), out) from None
    try:
        return _save_as(snap, plan, out, fmt, kind, progress, snapshot_name)
    except VmstateError:
        raise
    except OSError as e:  # ENOSPC, EIO, EROFS... in any writer: one line, and the temporary is gone
        raise SaveError(f"cannot write: {e.strerror or e}", out) from None


def _save_as(
    snap: Snapshot, plan: Plan, out: str, fmt: str, kind: str, progress, snapshot_name: str | None
) -> SaveResult:
    if fmt == "qcow2":
        if kind != "qcow2":
            raise SaveError("a qcow2 output needs a qcow2 input (its disk); use --format stream", out)
        from .qcow2 import save_qcow2

        name, size = save_qcow2(snap, plan, out, snapshot_name, progress)
        return SaveResult(out, "qcow2", plan, size, name)
    if fmt == "libvirt":
        if kind != "libvirt":
            raise SaveError(
                "a libvirt output needs a libvirt input (its header and domain XML); use --format stream",
                out,
            )
        return SaveResult(out, "libvirt", plan, _save_libvirt(snap, plan, out, progress))
    # a plain file's bytes before the stream (file:f,offset=N) are kept; a libvirt header is not
    size = _save_stream(snap, plan, out, progress, keep_prefix=(kind == "stream"))
    return SaveResult(out, "stream", plan, size)


def _save_libvirt(snap: Snapshot, plan: Plan, out: str, progress) -> int:
    """A libvirt image: a rebuilt header and XML (MACs updated, compressed 0), the edited stream."""
    from ..devices.nics import format_mac
    from .libvirt import build_header, edited_xml

    source = snap.source
    header = source.header
    macs = {format_mac(old): format_mac(new) for old, new in snap.edits.macs.items()}
    prefix = build_header(header, edited_xml(header.xml, macs))
    raw_in_place = getattr(source, "decompressed", None) is None and source.file_offset(0) == len(prefix)
    try:
        with AtomicOutput(out) as dst:
            if raw_in_place:  # same layout as the input: its bytes (a clone where possible), new header
                size = write_edited_stream(snap, plan, dst, progress, keep_prefix=True)
                dst.flush()
                os.pwrite(dst.fileno(), prefix, 0)
                return size
            dst.write(prefix)
            return len(prefix) + write_edited_stream(snap, plan, dst, progress, keep_prefix=False)
    except VmstateError:
        raise
    except OSError as e:
        raise SaveError(f"cannot write: {e.strerror or e}", out) from None


def _save_stream(snap: Snapshot, plan: Plan, out: str, progress, keep_prefix: bool) -> int:
    try:
        with AtomicOutput(out) as dst:
            return write_edited_stream(snap, plan, dst, progress, keep_prefix)
    except VmstateError:
        raise
    except OSError as e:
        raise SaveError(f"cannot write: {e.strerror or e}", out) from None


def write_edited_stream(snap: Snapshot, plan: Plan, dst, progress=None, keep_prefix: bool = False) -> int:
    """The input's stream with the plan applied, to ``dst``. The file's bytes before the stream
    (a libvirt header) are kept with ``keep_prefix``; a qcow2 vmstate becomes a standalone stream."""
    source = snap.source
    # the file that was opened and indexed (or its decompressed stream), not whatever the path names now
    opener = getattr(source, "open_stream_file", None) or source.open_file
    with opener() as src:
        fd = src.fileno()
        prefix = 0
        if source.view() is not None and keep_prefix:
            cloned = _write_by_clone(source, plan, fd, dst, progress)
            if cloned is not None:
                return cloned
        if source.view() is not None:  # contiguous in the file: copied in the kernel
            base = source.file_offset(0)
            if keep_prefix and base:
                emit.copy_range(fd, dst, 0, base)
                prefix = base

            def copy(offset: int, length: int) -> None:
                emit.copy_range(fd, dst, base + offset, length)
        else:

            def copy(offset: int, length: int) -> None:
                dst.write(source.read(offset, length))

        written = prefix + write_stream(
            copy, source.size, plan.patches, plan.insert_at, plan.inserted, dst, progress
        )
        source.check_unchanged()  # truncated or rewritten while we copied: no output
        return written


_CLONE_MIN = 64 << 10  # below this a copy costs no more than the ioctl


def _write_by_clone(source, plan: Plan, fd: int, dst, progress) -> int | None:
    """Where the filesystem shares extents, the output is a reflink of the input up to the first
    byte that moves (the inserted records), the rest written, and the patches written over the
    clone: time in proportion to the edits, not to the snapshot. None: not possible here."""
    base = source.file_offset(0)
    split = base + (plan.insert_at if plan.insert_at is not None else source.size)
    file_size = os.fstat(fd).st_size
    clone_to = split
    if clone_to != file_size:  # a clone ends on a block boundary, or at the source's end
        block = os.fstatvfs(dst.fileno()).f_bsize or 4096
        clone_to -= clone_to % block
    if clone_to < _CLONE_MIN:
        return None
    dst.flush()
    if not emit.clone_range(fd, dst.fileno(), clone_to):
        return None
    dst.seek(clone_to)
    start = clone_to - base

    def copy(offset: int, length: int) -> None:
        emit.copy_range(fd, dst, base + offset, length)

    written = emit.write_stream(
        copy, source.size, plan.patches, plan.insert_at, plan.inserted, dst, progress, start=start
    )
    dst.flush()
    for offset, data in plan.patches:
        if offset < start:  # in the clone: only these blocks get copies of their own
            os.pwrite(dst.fileno(), data, base + offset)
    source.check_unchanged()
    return base + written
