"""The `.meta.json` of a written snapshot: the input's, updated, so the output can be resumed and
edited again with the right command line (new MAC included)."""

from __future__ import annotations

import time

from ..resume import load_meta, resume_argv, resume_text, write_meta


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
    write_meta(result.path, meta)


def describe_resume(path: str, kind: str, tag: str | None) -> str:
    meta = load_meta(path) or {}
    mapped = meta.get("method") == "mapped-ram"
    argv = (
        resume_argv(
            meta,
            path,
            kind,
            tag or meta.get("tag"),
            meta.get("mac_changes"),
            meta.get("original_image"),
            mapped,
        )
        if meta
        else None
    )
    return resume_text(argv, kind, mapped, path)
