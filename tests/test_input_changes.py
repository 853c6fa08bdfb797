"""An input truncated or rewritten under an open session: one clear error, never SIGBUS."""

from __future__ import annotations

import os
import shutil

import pytest

from vmstate_gdb.errors import FormatError, VmstateError
from vmstate_gdb.snapshot import Snapshot
from vmstate_gdb.writer import save


def _last_data_page(snap: Snapshot) -> int:
    block = snap.index.ram.blocks["pc.ram"]
    return max(i for i, loc in enumerate(block.pages) if loc > 0) * block.page_size


def test_truncated_underneath_is_an_error_not_sigbus(snapshot_small_pc_e1000, tmp_path):
    path = str(tmp_path / "in.vmstate")
    shutil.copy(snapshot_small_pc_e1000.path, path)
    with Snapshot.open(path, cache=False) as snap:
        offset = _last_data_page(snap)
        before = snap.ram.read("pc.ram", offset, 16)
        os.truncate(path, 4096)
        with pytest.raises(FormatError, match="truncated .* since it was opened"):
            snap.ram.read("pc.ram", offset, 16)
        with pytest.raises(VmstateError, match="since it was opened|input ended early"):
            save(snap, str(tmp_path / "out.vmstate"))
        assert before
    assert sorted(os.listdir(tmp_path)) == ["in.vmstate"]


def test_rewritten_in_place_is_an_error(snapshot_small_pc_e1000, tmp_path):
    path = str(tmp_path / "in.vmstate")
    shutil.copy(snapshot_small_pc_e1000.path, path)
    with Snapshot.open(path, cache=False) as snap:
        offset = _last_data_page(snap)
        with open(path, "r+b") as f:
            f.write(b"\0" * 64)
        os.utime(path, ns=(0, 12345))  # a change within the timestamp granularity is not seen
        with pytest.raises(FormatError, match="modified since it was opened"):
            snap.ram.read("pc.ram", offset, 16)


def test_replaced_by_rename_keeps_serving_the_opened_file(snapshot_small_pc_e1000, tmp_path):
    path = str(tmp_path / "in.vmstate")
    shutil.copy(snapshot_small_pc_e1000.path, path)
    with Snapshot.open(path, cache=False) as snap:
        offset = _last_data_page(snap)
        before = snap.ram.read("pc.ram", offset, 64)
        other = tmp_path / "other"
        other.write_bytes(b"x" * 100)
        os.replace(other, path)
        assert snap.ram.read("pc.ram", offset, 64) == before  # the inode we indexed
        out = str(tmp_path / "out.vmstate")
        save(snap, out)
    assert open(out, "rb").read() == open(snapshot_small_pc_e1000.path, "rb").read()
