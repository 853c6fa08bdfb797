"""The `.meta.json` of a written snapshot: the input's, updated, so the output can be resumed and
edited again with the right command line (new MAC included)."""

from __future__ import annotations

import time

from ..errors import SaveError, VmstateError
from ..resume import load_meta, write_meta


def write_output_meta(snap, result, mac_changes: dict[str, str]) -> None:
    meta = load_meta(snap.path)
    if meta is None:
        return
    meta = dict(meta)
    meta.setdefault("original_image", meta.get("path", snap.path))
    macs = dict(meta.get("mac_changes", {}))
    for old, new in mac_changes.items():
        # chain edits: a MAC changed twice maps the first command line's value to the newest one
        first = next((k for k, v in macs.items() if v == old), old)
        macs[first] = new
    meta.update(
        path=result.path,
        format=result.format,
        mac_changes=macs,
        edited_from=snap.path,
        edited_at=time.time(),
        edits=result.plan.describe(),
    )
    if result.snapshot_name:
        meta["tag"] = result.snapshot_name
    meta.setdefault("machine_type", snap.index.machine_type)
    try:
        write_meta(result.path, meta)
    except SaveError as e:
        raise SaveError(
            f"{e.message}; the snapshot {result.path} itself is complete, but resume-cmd will not know "
            "its QEMU command line",
            e.path,
        ) from None


def resume_plan(path: str, kind: str, tag: str | None, snap=None):
    """The plan to resume ``path``; facts about the stream (mapped-ram, run state) come from
    ``snap`` when the caller has it open, else from the file."""
    from ..resume import plan_resume
    from ..snapshot import Snapshot

    if kind == "libvirt":
        return _libvirt_plan(path, snap)
    meta = load_meta(path) or {}
    own = snap is None
    if own:
        snap = Snapshot.open(path, snapshot=tag if kind == "qcow2" else None)
    try:
        mapped = "mapped-ram" in snap.index.capabilities
        try:
            runstate = bytes(snap.field_value("globalstate/runstate")).split(b"\0")[0]
        except VmstateError:
            runstate = b""
        return plan_resume(
            meta,
            path,
            kind,
            tag,
            mapped_ram=mapped,
            running=runstate == b"running",
            machine_type=snap.index.machine_type or None,
        )
    finally:
        if own:
            snap.close()


def _libvirt_plan(path: str, snap=None):
    import re

    from ..containers._mapped import MappedFile
    from ..containers.libvirt import LibvirtHeader
    from ..resume import plan_libvirt_restore

    f = MappedFile(path)
    try:
        header = LibvirtHeader(f)  # the header alone: a compressed image is not decompressed
    finally:
        f.close()
    name = re.search(r"<name>([^<]*)</name>", header.xml)
    return plan_libvirt_restore(path, header.was_running, name[1] if name else None)


def describe_resume(path: str, kind: str, tag: str | None, snap=None) -> str:
    return resume_plan(path, kind, tag, snap).text(kind, path)
