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


def _grown_copy(src: str, path: str, pages: int = 6000) -> None:
    """``src`` with ``pages`` PAGE records of random data before its last EOS: long enough that
    the open scan reports progress (every 8 MiB) while it is still walking the map."""
    with Snapshot.open(src, cache=False) as snap:
        at = snap.index.ram.eos_offsets[-1]
    data = open(src, "rb").read()
    records = bytearray()
    for i in range(pages):
        flags = 0x28 if i else 0x08  # the first names the block, the others CONTINUE it
        records += (((0x100 + i) * 4096) | flags).to_bytes(8, "big") + (b"" if i else b"\x06pc.ram")
        records += os.urandom(4096)
    with open(path, "wb") as f:
        f.write(data[:at] + records + data[at:])


def test_truncated_during_the_open_scan_waits_instead_of_sigbus(snapshot_small_pc_e1000, tmp_path):
    """Another process truncating the file while the scan walks the map would SIGBUS us: the read
    lease held during the scan makes its truncate(2) wait, and the next read is the clear error."""
    import subprocess
    import sys
    import time

    from vmstate_gdb.containers._mapped import MappedFile

    path = str(tmp_path / "in.vmstate")
    _grown_copy(snapshot_small_pc_e1000.path, path)
    probe = MappedFile(path)
    with probe.no_writers() as leased:
        pass
    probe.close()
    if not leased:
        pytest.skip("no file leases here (another filesystem, or not the file's owner)")
    pid = os.fork()
    if pid == 0:  # the open runs in a child: a regression is its SIGBUS, not the test run's
        code = 1
        try:
            truncator: list[subprocess.Popen] = []

            def progress(done: int, total: int) -> None:
                if not truncator:
                    argv = [sys.executable, "-c", f"import os; os.truncate({path!r}, 1 << 20)"]
                    truncator.append(subprocess.Popen(argv))
                    time.sleep(0.5)  # it is blocked on the lease until the scan ends

            snap = Snapshot.open(path, cache=False, progress=progress)
            assert truncator[0].wait(timeout=60) == 0
            try:
                snap.physical.read(0x100000 + 5000 * 4096, 16)
            except FormatError as e:
                code = 0 if "truncated" in str(e) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert not os.WIFSIGNALED(status), f"the open died of signal {os.WTERMSIG(status)}"
    assert os.WEXITSTATUS(status) == 0
