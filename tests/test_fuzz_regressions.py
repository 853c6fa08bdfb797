"""Bugs the fuzzer (benchmarks/bench_fuzz.py) found, each pinned on a real snapshot: the mutation
as the fuzzer made it, and the clear one-line refusal that replaced the traceback."""

from __future__ import annotations

import os
import shutil

import pytest

from vmstate_gdb.errors import VmstateError
from vmstate_gdb.snapshot import Snapshot
from vmstate_gdb.writer import save

pytestmark = pytest.mark.qemu


def _patched_copy(src: str, tmp_path, offset: int, data: bytes) -> str:
    path = str(tmp_path / ("in" + os.path.splitext(src)[1]))
    shutil.copy(src, path)
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)
    return path


def _save_refused(path: str, tag: str | None, tmp_path, match: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with Snapshot.open(path, snapshot=tag, cache=False) as snap:
        snap.set_register(0, "rax", 1)
        snap.physical.write(0x3000000, b"x")
        with pytest.raises(VmstateError, match=match) as e:
            save(snap, str(out / "saved.qcow2"))
    assert "\n" not in str(e.value) and path in str(e.value)
    assert os.listdir(out) == []


def test_qcow2_refcount_table_offset_outside_the_file(snapshot, tmp_path):
    """seed 3 #2458: 4 bytes of ones at 0x2e (the refcount table offset's top bytes): the writer
    preaded at 2**63 and died of OverflowError; the reader needs no refcounts and still opens it."""
    meta = snapshot("small-q35-e1000-savevm")
    path = _patched_copy(meta.path, tmp_path, 0x2E, b"\xff" * 4)
    _save_refused(path, meta.tag, tmp_path, "refcount table offset .* is not a cluster of the image")


def test_qcow2_refcount_block_outside_the_file(snapshot, tmp_path):
    meta = snapshot("small-q35-e1000-savevm")
    with Snapshot.open(meta.path, snapshot=meta.tag, cache=False) as snap:
        table = snap.source.image.refcount_table_offset
    path = _patched_copy(meta.path, tmp_path, table, (0x7FFF_0000_0000).to_bytes(8, "big"))
    _save_refused(path, meta.tag, tmp_path, "refcount table entry 0 .* is not a cluster of the image")
