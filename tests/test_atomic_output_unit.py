"""AtomicOutput: the file has no name until it is complete; a failure or a kill leaves nothing."""

from __future__ import annotations

import os

import pytest

from vmstate_gdb.errors import SaveError
from vmstate_gdb.resume import write_meta
from vmstate_gdb.writer import emit, unnamed

pytestmark = pytest.mark.unit


def test_nothing_in_the_directory_until_complete(tmp_path):
    out = tmp_path / "out.bin"
    with emit.AtomicOutput(str(out)) as f:
        f.write(b"data")
        assert os.listdir(tmp_path) == []  # unnamed (O_TMPFILE): a SIGKILL here leaves nothing
        f.seek(0)
        assert f.read() == b"data"  # read-write: the qcow2 writer reads back what it wrote
    assert out.read_bytes() == b"data" and os.listdir(tmp_path) == ["out.bin"]
    assert oct(out.stat().st_mode & 0o777) == oct(0o644)


def test_replaces_an_existing_file(tmp_path):
    out = tmp_path / "out.bin"
    out.write_bytes(b"old")
    with emit.AtomicOutput(str(out)) as f:
        f.write(b"new")
    assert out.read_bytes() == b"new" and os.listdir(tmp_path) == ["out.bin"]


@pytest.mark.parametrize("has_tmpfile", [True, False])
def test_a_failure_leaves_nothing(tmp_path, monkeypatch, has_tmpfile):
    if not has_tmpfile:
        monkeypatch.setattr(emit, "open_unnamed", lambda directory: None)
    with pytest.raises(RuntimeError):
        with emit.AtomicOutput(str(tmp_path / "out.bin")) as f:
            f.write(b"partial")
            if not has_tmpfile:
                assert [p.startswith(".vmstate-") and p.endswith(".part") for p in os.listdir(tmp_path)] == [
                    True
                ]
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_no_way_to_name_an_unnamed_file_falls_back_to_a_hidden_temporary(tmp_path, monkeypatch):
    def refuse(fd: int, path: str) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(unnamed, "_METHODS", (refuse,))
    monkeypatch.setattr(unnamed, "_probed", {})
    assert unnamed.open_unnamed(str(tmp_path)) is None
    with emit.AtomicOutput(str(tmp_path / "out.bin")) as f:
        f.write(b"x")
    assert os.listdir(tmp_path) == ["out.bin"]


def test_write_meta_failure_is_a_save_error_naming_the_meta(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(emit.os, "fsync", full)
    with pytest.raises(SaveError, match=r"out\.vmstate\.meta\.json: cannot .*No space left"):
        write_meta(str(tmp_path / "out.vmstate"), {"path": "x"})
    assert os.listdir(tmp_path) == []


def _sparse(path, size: int, runs: dict[int, bytes]) -> None:
    with open(path, "wb") as f:
        for offset, data in runs.items():
            f.seek(offset)
            f.write(data)
        f.truncate(size)


@pytest.mark.parametrize("start,length", [(0, 64 << 20), (4096, (64 << 20) - 4096), (5000, 30 << 20)])
def test_copy_range_keeps_holes(tmp_path, start, length):
    """A mapped-ram stream is mostly holes: the copy must equal the source and stay sparse."""
    src = tmp_path / "src"
    _sparse(src, 64 << 20, {0: b"head" * 1024, 20 << 20: b"middle" * 2000, (64 << 20) - 3: b"end"})
    dst = tmp_path / "dst"
    with open(src, "rb") as s, open(dst, "wb") as d:
        d.write(b"prefix")
        emit.copy_range(s.fileno(), d, start, length)
        d.write(b"suffix")
    want = b"prefix" + src.read_bytes()[start : start + length] + b"suffix"
    assert dst.read_bytes() == want
    assert dst.stat().st_blocks * 512 < 1 << 20  # not 64 MiB of zeros


def test_copy_range_of_a_hole_at_the_end_sizes_the_output(tmp_path):
    src = tmp_path / "src"
    _sparse(src, 1 << 20, {0: b"x"})
    dst = tmp_path / "dst"
    with open(src, "rb") as s, open(dst, "wb") as d:
        emit.copy_range(s.fileno(), d, 0, 1 << 20)
        assert d.tell() == 1 << 20
    assert dst.read_bytes() == src.read_bytes()
