"""The index cache on a real stream: a reopen is served from it, gives exactly what a scan gives, and
a changed, recent, damaged or foreign entry is never used.

The stream is the Linux guest's (QEMU 7.2, 256 MiB, 75 MiB of stream): long enough to be cached.
Each test works on its own copy, dated a minute back (a file modified in the last seconds is not
cached, git's "racy" rule), and on its own cache directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from vmstate_gdb import index_cache
from vmstate_gdb import snapshot as snapshot_module
from vmstate_gdb.errors import FormatError
from vmstate_gdb.snapshot import Snapshot

pytestmark = pytest.mark.qemu


@pytest.fixture
def stream(tmp_path, monkeypatch, snapshot_linux_pc_3nic):
    cache = tmp_path / "cache"
    monkeypatch.setenv("VMSTATE_INDEX_CACHE", str(cache))
    path = tmp_path / "guest.vmstate"
    shutil.copyfile(snapshot_linux_pc_3nic.path, path)
    _age(path)
    return str(path)


def _age(path, seconds: float = 60) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past))


def _entries() -> list:
    return (
        sorted(p.name for p in index_cache.cache_dir().glob("*.idx"))
        if index_cache.cache_dir().exists()
        else []
    )


def _count_scans(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = snapshot_module.index_stream

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(snapshot_module, "index_stream", counting)
    return calls


def _state(snap: Snapshot) -> dict:
    """What a user sees of a snapshot: RAM index, sections, devices, vCPUs, bytes."""
    idx = snap.index
    return {
        "pages": {name: list(b.pages) for name, b in idx.ram.blocks.items()},
        "sections": [
            (s.kind, s.idstr, s.instance_id, s.version_id, s.body_offset, s.body_end) for s in idx.sections
        ],
        "vmdesc": idx.vmdesc,
        "eos": idx.ram.eos_offsets,
        "nics": [n.describe() for n in snap.nics()],
        "cpu": dict(snap.cpu(0).values),
        "bytes": [snap.physical.read(a, 4096) for a in (0, 0x100000, 0x1000000, 0x7000000)],
        "describe": json.dumps(snap.describe(), default=str, sort_keys=True),
    }


def test_a_reopen_is_served_from_the_cache_and_equals_a_scan(stream, monkeypatch):
    with Snapshot.open(stream, cache=False) as fresh:
        expected = _state(fresh)
    assert _entries() == []
    with Snapshot.open(stream) as first:  # scans, building the arrays into the cache file
        assert isinstance(first.index.ram.blocks["pc.ram"].pages, memoryview)
        assert _state(first) == expected
    assert len(_entries()) == 1
    scans = _count_scans(monkeypatch)
    with Snapshot.open(stream) as again:
        assert scans == []
        assert _state(again) == expected
        assert again.path == stream


def test_a_changed_file_is_scanned_again(stream, monkeypatch):
    Snapshot.open(stream).close()
    scans = _count_scans(monkeypatch)
    with open(stream, "r+b") as f:  # the same bytes back, but the file was written: new mtime
        head = f.read(16)
        f.seek(0)
        f.write(head)
    _age(stream, 30)
    Snapshot.open(stream).close()
    assert len(scans) == 1


def test_a_rewrite_that_keeps_size_and_time_is_caught_by_the_hash(stream, monkeypatch):
    Snapshot.open(stream).close()
    st = os.stat(stream)
    with open(stream, "r+b") as f:  # the last byte of the VMDESCRIPTION JSON: still a valid stream
        f.seek(st.st_size - 1)
        last = f.read(1)
        f.seek(st.st_size - 1)
        f.write(b" " if last != b" " else b"\n")
    os.utime(stream, ns=(st.st_atime_ns, st.st_mtime_ns))
    scans = _count_scans(monkeypatch)
    try:
        Snapshot.open(stream).close()
    except FormatError:
        pass
    assert len(scans) == 1


def test_a_truncated_file_is_refused_not_served(stream):
    Snapshot.open(stream).close()
    size = os.path.getsize(stream)
    os.truncate(stream, size // 2)
    _age(stream, 30)
    with pytest.raises(FormatError):
        Snapshot.open(stream)


def test_a_file_modified_seconds_ago_is_not_cached(stream):
    os.utime(stream)  # now
    Snapshot.open(stream).close()
    assert _entries() == []


@pytest.mark.parametrize("damage", ["truncate", "footer", "key"])
def test_a_damaged_entry_is_a_miss(stream, monkeypatch, damage):
    with Snapshot.open(stream, cache=False) as fresh:
        expected = _state(fresh)
    Snapshot.open(stream).close()
    (entry,) = index_cache.cache_dir().glob("*.idx")
    size = entry.stat().st_size
    with open(entry, "r+b") as f:
        if damage == "truncate":
            f.truncate(size // 2)
        elif damage == "footer":
            f.seek(size - 1)
            f.write(b"\x7f")
        else:
            f.seek(size - 32)
            f.write(b"\xff" * 8)  # the footer's key offset: the key no longer matches
    scans = _count_scans(monkeypatch)
    with Snapshot.open(stream) as snap:
        assert _state(snap) == expected
    assert len(scans) == 1


def test_a_directory_others_can_write_is_not_trusted(stream, monkeypatch):
    Snapshot.open(stream).close()
    os.chmod(index_cache.cache_dir(), 0o777)
    scans = _count_scans(monkeypatch)
    Snapshot.open(stream).close()
    assert len(scans) == 1


def test_off_writes_nothing(stream, monkeypatch, tmp_path):
    monkeypatch.setenv("VMSTATE_INDEX_CACHE", "off")
    Snapshot.open(stream).close()
    Snapshot.open(stream).close()
    assert not (tmp_path / "cache").exists()


def test_a_failed_scan_leaves_no_file(stream, tmp_path):
    with open(stream, "r+b") as f:  # a RAM record naming a block that does not exist
        f.seek(0)
        data = f.read(1 << 20)
        at = data.index(b"pc.ram", 200)  # the first page record's block name, after the block list
        f.seek(at)
        f.write(b"xx.ram")
    _age(stream)
    with pytest.raises(FormatError):
        Snapshot.open(stream)
    assert list((tmp_path / "cache").iterdir()) == []


def test_the_cli_gives_the_same_answer_twice(stream):
    argv = [sys.executable, "-m", "vmstate_gdb.cli", "info", "--json", stream]
    first = subprocess.run(argv, capture_output=True, text=True, check=True, env=os.environ)
    assert len(_entries()) == 1
    second = subprocess.run(argv, capture_output=True, text=True, check=True, env=os.environ)
    assert json.loads(first.stdout) == json.loads(second.stdout)


@pytest.mark.unit
def test_eviction_removes_least_recently_used(tmp_path):
    for i, name in enumerate(("old", "mid", "new")):
        p = tmp_path / f"{name}.idx"
        p.write_bytes(bytes(1000))
        os.utime(p, (1000 + i, 1000 + i))
    index_cache._evict(tmp_path, 2500)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mid.idx", "new.idx"]


def test_runs_of_zero_pages_take_no_disk_in_the_entry(stream):
    """The entry holds 8 bytes for a page only in the 4 KiB stretches of its array that have a
    page with data (or one no record named): the rest are holes. Its arrays read back exactly."""
    with Snapshot.open(stream, cache=False) as fresh:
        arrays = {name: bytes(b.pages) for name, b in fresh.index.ram.blocks.items()}
        pages = sum(b.page_count for b in fresh.index.ram.blocks.values())
    Snapshot.open(stream).close()
    (entry,) = index_cache.cache_dir().glob("*.idx")
    st = entry.stat()
    big = [raw for raw in arrays.values() if len(raw) >= 4096]  # the rest is packed in the tail
    written = sum(4096 for raw in big for at in range(0, len(raw), 4096) if raw[at : at + 4096].strip(b"\0"))
    tail = st.st_size - sum(-(-len(raw) // 4096) * 4096 for raw in big)
    assert 0 < tail < 1 << 20  # small arrays, sections, device descriptions, key, footer
    disk = st.st_blocks * 512
    assert written <= disk <= written + -(-tail // 4096) * 4096 + (64 << 10), (disk, written, tail)
    assert disk < 8 * pages * 0.8, "a good part of this guest's RAM is zero pages in long runs"
    with Snapshot.open(stream) as again:
        assert {name: bytes(b.pages) for name, b in again.index.ram.blocks.items()} == arrays


def test_with_the_cache_off_the_arrays_live_in_an_unnamed_file(stream, monkeypatch, tmp_path):
    """An index that is not kept still keeps its arrays out of memory: in a file with no name in
    the temporary directory (gone with the process, nothing left behind), equal to a scan in
    memory."""
    monkeypatch.setenv("VMSTATE_INDEX_CACHE", "off")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(index_cache.tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    monkeypatch.setattr(index_cache.PageFile, "scratch", classmethod(lambda cls: None))
    with Snapshot.open(stream) as in_memory:
        expected = {name: bytes(b.pages) for name, b in in_memory.index.ram.blocks.items()}
    monkeypatch.undo()
    monkeypatch.setenv("VMSTATE_INDEX_CACHE", "off")
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(index_cache.tempfile, "tempdir", None)
    with Snapshot.open(stream) as snap:
        arrays = {name: bytes(b.pages) for name, b in snap.index.ram.blocks.items()}
        maps = [line for line in open("/proc/self/maps") if f"{scratch}/#" in line and "(deleted)" in line]
        assert maps, "the big arrays are mapped from an unnamed file in TMPDIR"
    assert arrays == expected
    assert list(scratch.iterdir()) == []
    assert not list((tmp_path / "cache").glob("*.idx"))
