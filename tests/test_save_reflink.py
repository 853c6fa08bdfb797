"""Saving on a filesystem that shares extents (XFS with reflink, on a loop-mounted image the test
makes): the output is a clone of the input plus the edited blocks, byte for byte what the copying
writer produces, takes almost no new space, and QEMU resumes it with the edits visible.

Needs root, mkfs.xfs (xfsprogs) and a loop device; without them the tests skip and say which.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess

import pytest
from guestinfo import small_symbols
from test_save import NEW_MAC, edited_meta

from vmstate_gdb.mac import apply_mac_change, plan_mac_change
from vmstate_gdb.snapshot import Snapshot
from vmstate_gdb.writer import emit, save

pytestmark = pytest.mark.qemu


@pytest.fixture(scope="module")
def xfs(tmp_path_factory):
    """A directory on a freshly made XFS (reflink on), unmounted at teardown also on failure."""
    if os.geteuid() != 0:
        pytest.skip("mounting a loop image needs root")
    if shutil.which("mkfs.xfs") is None:
        pytest.skip("mkfs.xfs (xfsprogs) is not installed")
    base = tmp_path_factory.mktemp("xfs")
    image, mnt = base / "fs.img", base / "mnt"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(2 << 30)
    subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)], check=True)
    mount = subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a loop image here: {mount.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
        image.unlink()


def _used(path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def _digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _edit(snap: Snapshot) -> None:
    change = plan_mac_change(snap, None, bytes.fromhex(NEW_MAC.replace(":", "")), memory=True)
    apply_mac_change(snap, change)
    snap.set_register(0, "r12", 0x5EED)
    snap.virtual(0).write(small_symbols()["guest_note"], b"edited by vmstate\0")


@pytest.mark.parametrize("name", ["small-pc-e1000", "small-pc-e1000-qemu10-mapped"])
def test_a_save_is_a_reflink_plus_the_edits_and_resumes(snapshot, restored, tmp_path, xfs, monkeypatch, name):
    meta = snapshot(name)
    src = xfs / f"{name}.vmstate"
    shutil.copyfile(meta.path, src)
    before = _digest(src)
    copied = tmp_path / "copied.vmstate"  # the copying writer's output (this directory is not XFS)
    with Snapshot.open(str(src)) as snap:
        _edit(snap)
        save(snap, str(copied))
    clones = []
    real_clone = emit.clone_range

    def counting(src_fd, dst_fd, length):
        clones.append((real_clone(src_fd, dst_fd, length), length))
        return clones[-1][0]

    monkeypatch.setattr(emit, "clone_range", counting)
    out = xfs / "edited.vmstate"
    used = _used(xfs)
    with Snapshot.open(str(src)) as snap:
        _edit(snap)
        result = save(snap, str(out))
    grew = _used(xfs) - used
    size = os.path.getsize(out)
    ((cloned, length),) = clones
    assert cloned and length > size // 2, f"cloned {length} of {size} bytes"
    assert _digest(out) == _digest(copied), "a clone plus edits must be byte for byte the copy"
    # new space: what follows the clone, a block or two per patch, the filesystem's own metadata
    budget = (size - length) + 8192 * len(result.plan.patches) + (256 << 10)
    assert grew <= budget, f"{grew} new bytes for a {size}-byte output cloned up to {length}"
    assert _digest(src) == before
    assert result.plan.pages_added or result.plan.pages_in_place
    vm = restored(edited_meta(meta, str(out), {meta.config.nics[0].mac: NEW_MAC}))
    line = vm.wait_for_ticks(2, timeout=30)[-1]
    assert line.hw_mac == NEW_MAC and line.r12 == 0x5EED and line.note == "edited by vmstate", line


def test_no_reflink_filesystem_copies(snapshot, tmp_path, monkeypatch):
    """On this ext4/tmpfs test directory the clone is refused and the copy path writes the file."""
    meta = snapshot("small-pc-e1000")
    results = []
    real_clone = emit.clone_range
    monkeypatch.setattr(emit, "clone_range", lambda *a: results.append(real_clone(*a)) or results[-1])
    with Snapshot.open(meta.path) as snap:
        save(snap, str(tmp_path / "same.vmstate"))
    fs = subprocess.run(
        ["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True, text=True
    ).stdout.strip()
    if fs in ("xfs", "btrfs"):
        pytest.skip(f"the test directory itself is on {fs}")
    assert results == [False]
    assert _digest(tmp_path / "same.vmstate") == _digest(meta.path)
