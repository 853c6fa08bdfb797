"""Saving under faults, with the real CLI on real snapshots: a full disk, a read-only directory,
SIGKILL mid-save, two saves racing to one output. Each leaves the complete new file or nothing under
the final name (no temporaries: the data goes to an unnamed O_TMPFILE that is named only once
complete), an error is one line naming the file, and the input is unchanged by hash. Readers
(two gdb sessions and the CLI) of one snapshot at once see the same, correct bytes.

As root, chmod does not make a directory read-only (root bypasses permission bits), so the
read-only directory is a tmpfs remounted ``ro``; mounts need CAP_SYS_ADMIN and skip without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mounts import tmpfs as mounted_tmpfs

from vmstate_gdb.snapshot import Snapshot

pytestmark = pytest.mark.qemu

ROOT = Path(__file__).resolve().parent.parent
GDB = "/usr/bin/gdb"
RAX = 0x1234_5678
EDIT_AT = 0x3000000  # guest-physical; a zero page in these guests: the save inserts a PAGE record
EDIT = b"written by test_save_faults"
TEMPORARY = re.compile(r"^\.vmstate-[0-9a-z_]+\.part$")


def digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def patch_argv(src: str, out: str, rax: int = RAX) -> list[str]:
    return [
        sys.executable,
        "-m",
        "vmstate_gdb",
        "patch",
        src,
        out,
        "-q",
        "--reg",
        f"0:rax={rax:#x}",
        "--phys",
        "--write",
        f"{EDIT_AT:#x}={EDIT.hex()}",
    ]


def patch(src: str, out: str, rax: int = RAX) -> subprocess.CompletedProcess:
    return subprocess.run(patch_argv(src, out, rax), capture_output=True, text=True, timeout=300)


def assert_edited(path: str, tag: str | None, rax: int = RAX) -> None:
    """A complete, valid output: it opens and holds both edits."""
    with Snapshot.open(path, snapshot=tag, cache=False) as snap:
        assert snap.cpus[0]["rax"] == rax
        assert snap.physical.read(EDIT_AT, len(EDIT)) == EDIT


def assert_one_line_error(run: subprocess.CompletedProcess, names: str, *words: str) -> None:
    err = run.stderr.strip()
    assert run.returncode == 1, (run.returncode, run.stdout, run.stderr)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("vmstate: ") and names in err, err
    for word in words:
        assert word in err, err


@pytest.fixture
def tmpfs(tmp_path):
    """Factory: ``tmpfs(size)`` -> a fresh tmpfs mount of ``size`` bytes, unmounted at teardown."""
    with contextlib.ExitStack() as mounts:
        count = itertools.count()

        def mount(size: int) -> Path:
            return mounts.enter_context(mounted_tmpfs(tmp_path / f"mnt{next(count)}", size))

        yield mount


SAVES = [("small-pc-e1000", "out.vmstate"), ("small-q35-e1000-savevm", "out.qcow2")]


@pytest.mark.parametrize("name,out_name", SAVES)
def test_disk_full_is_one_line_and_leaves_nothing(snapshot, tmpfs, name, out_name):
    meta = snapshot(name)
    before = digest(meta.path)
    mnt = tmpfs(256 << 10)  # smaller than any of these snapshots
    out = str(mnt / out_name)
    run = patch(meta.path, out)
    assert_one_line_error(run, out, "No space left on device")
    assert os.listdir(mnt) == []
    assert digest(meta.path) == before


def test_disk_full_at_the_meta_json(snapshot, tmpfs, tmp_path):
    """Room for the snapshot but not its .meta.json: the snapshot stays (complete), the error
    says so in one line, and no partial .meta.json or temporary is left."""
    meta = snapshot("small-pc-e1000")
    before = digest(meta.path)
    probe = str(tmp_path / "probe.vmstate")
    assert patch(meta.path, probe).returncode == 0
    size = os.path.getsize(probe)
    assert os.path.getsize(probe + ".meta.json") > 8192
    mnt = tmpfs((size + 4095) // 4096 * 4096 + 4096)
    out = str(mnt / "out.vmstate")
    run = patch(meta.path, out)
    assert_one_line_error(run, out + ".meta.json", "No space left on device", "complete")
    assert os.listdir(mnt) == ["out.vmstate"]
    assert_edited(out, None)
    assert digest(meta.path) == before


def test_read_only_output_directory(snapshot, tmpfs):
    meta = snapshot("small-pc-e1000")
    before = digest(meta.path)
    mnt = tmpfs(64 << 20)
    subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
    out = str(mnt / "out.vmstate")
    run = patch(meta.path, out)
    assert_one_line_error(run, out, "Read-only file system")
    assert os.listdir(mnt) == []
    assert digest(meta.path) == before


def _temporary_open(pid: int, directory: str) -> bool:
    """The save has begun: the process holds a file in ``directory`` (unnamed: '#123 (deleted)')."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(directory + "/") and not target.endswith(".meta.json"):
            return True
    return False


def _start_and_wait_for_save(argv: list[str], directory: str) -> tuple[subprocess.Popen, float]:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while not _temporary_open(proc.pid, directory):
        if proc.poll() is not None:  # a save quicker than the polling: it must have succeeded
            assert proc.returncode == 0, f"patch failed: {proc.stderr.read()}"
            break
        time.sleep(0.0005)
    return proc, time.perf_counter()


def test_sigkill_mid_save_leaves_new_file_or_nothing(snapshot, tmpfs):
    """A Linux guest's 79 MB stream of data, written to a tmpfs (no in-kernel copy from ext4, no
    holes to skip: the save takes long enough to be hit). The kill lands at random points from the
    temporary's creation through the rename and the .meta.json; half the runs have an older file at
    the output name."""
    meta = snapshot("linux-pc-3nic")
    before = digest(meta.path)
    mnt = tmpfs(1 << 30)
    reference = str(mnt / "reference.vmstate")
    proc, began = _start_and_wait_for_save(patch_argv(meta.path, reference), str(mnt))
    while not os.path.exists(reference) and proc.poll() is None:
        time.sleep(0.0005)
    save_seconds = time.perf_counter() - began  # until the complete file has its name
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    assert_edited(reference, None)
    os.unlink(reference)
    os.unlink(reference + ".meta.json")
    rng = random.Random(15)
    outcomes = []
    for i in range(8):
        d = mnt / f"kill{i}"
        d.mkdir()
        out = str(d / "out.vmstate")
        old = b"an older file at the output name\n" if i % 2 else None
        if old:
            Path(out).write_bytes(old)
        delay = rng.uniform(0, 1.25) * save_seconds
        proc, _ = _start_and_wait_for_save(patch_argv(meta.path, out), str(d))
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        left = sorted(os.listdir(d))
        extra = [p for p in left if p not in ("out.vmstate", "out.vmstate.meta.json")]
        # a name is given only to a complete fsynced file, microseconds before its rename
        assert all(TEMPORARY.match(p) for p in extra), left
        for p in extra:
            assert_edited(str(d / p), None)
        if os.path.exists(out) and (old is None or Path(out).read_bytes() != old):
            assert_edited(out, None)
            outcomes.append("new")
        else:
            outcomes.append("old" if old else "nothing")
        if os.path.exists(out + ".meta.json"):
            assert json.loads(Path(out + ".meta.json").read_text())["path"] == out
        assert not extra, f"kill {i} at {delay:.3f}s left temporaries {extra}"
    assert digest(meta.path) == before
    print(f"save {save_seconds:.3f}s; outcomes after SIGKILL: {outcomes}")


@pytest.mark.parametrize("name,out_name", SAVES)
def test_two_saves_racing_to_one_output(snapshot, tmp_path, name, out_name):
    meta = snapshot(name)
    before = digest(meta.path)
    tag = meta.tag if meta.format == "qcow2" else None
    for round_ in range(3):
        d = tmp_path / f"race{round_}"
        d.mkdir()
        out = str(d / out_name)
        procs = [
            subprocess.Popen(patch_argv(meta.path, out, rax), stderr=subprocess.PIPE, text=True)
            for rax in (0x1111, 0x2222)
        ]
        for p in procs:
            assert p.wait(timeout=300) == 0, p.stderr.read()
        with Snapshot.open(out, snapshot=tag, cache=False) as snap:
            assert snap.cpus[0]["rax"] in (0x1111, 0x2222)
        assert_edited(out, tag, rax=snap.cpus[0]["rax"])
        assert json.loads(Path(out + ".meta.json").read_text())["path"] == out
        assert sorted(os.listdir(d)) == [out_name, out_name + ".meta.json"]
    assert digest(meta.path) == before


@pytest.mark.skipif(not Path(GDB).exists(), reason="needs /usr/bin/gdb")
def test_two_gdb_sessions_and_the_cli_read_at_once(snapshot):
    """Three readers of one snapshot at the same moment each get exactly the bytes the Python API
    reads: 32 virtual reads across the guest's RAM in each gdb, 32 `vmstate read` of the same."""
    meta = snapshot("small-pc-e1000")
    before = digest(meta.path)
    with Snapshot.open(meta.path, cache=False) as snap:
        rip = snap.cpus[0]["rip"]
        mem = snap.virtual(0)
        base = rip & ~0xFFF
        addresses = [base + 0x100 * i for i in range(32)]
        expected = [mem.read(a, 16) for a in addresses]
    gdb = [GDB, "-nx", "-batch", "-x", str(ROOT / "vmstate.gdb"), "-ex", f"vmstate-open {meta.path}"]
    for a in addresses:
        gdb += ["-ex", f"x/16xb {a:#x}"]
    script = (
        "import subprocess, sys\n"
        "for a in sys.argv[2:]:\n"
        "    argv = [sys.executable, '-m', 'vmstate_gdb', 'read', sys.argv[1], a, '16', '--raw']\n"
        "    print(subprocess.run(argv, capture_output=True, check=True).stdout.hex())\n"
    )
    cli = [sys.executable, "-c", script, meta.path, *[hex(a) for a in addresses]]
    procs = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd="/")
        for argv in (gdb, gdb, cli)
    ]
    outs = [p.communicate(timeout=300)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    for out in outs[:2]:
        assert "Traceback" not in out, out
        dumped = [
            bytes(int(b, 16) for b in re.findall(r"0x([0-9a-f]{2})\b", line)) for line in out.splitlines()
        ]
        dumped = [d for d in dumped if len(d) == 8]
        got = [dumped[2 * i] + dumped[2 * i + 1] for i in range(len(addresses))]
        assert got == expected
    assert outs[0] == outs[1]
    assert [bytes.fromhex(line) for line in outs[2].split()] == expected
    assert digest(meta.path) == before


@pytest.mark.skipif(not Path(GDB).exists(), reason="needs /usr/bin/gdb")
def test_vmstate_save_in_gdb_on_a_full_disk_is_one_line(snapshot, tmpfs):
    meta = snapshot("small-pc-e1000")
    before = digest(meta.path)
    mnt = tmpfs(256 << 10)
    out = str(mnt / "out.vmstate")
    argv = [GDB, "-nx", "-batch", "-x", str(ROOT / "vmstate.gdb"), "-ex", f"vmstate-open {meta.path}"]
    argv += ["-ex", "set $rax = 0x1234", "-ex", f"vmstate-save {out}", "-ex", "echo after\\n"]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd="/")
    text = run.stdout + run.stderr
    assert "Traceback" not in text, text
    errors = [ln for ln in text.splitlines() if "No space left on device" in ln]
    assert len(errors) == 1 and out in errors[0], text
    assert os.listdir(mnt) == []
    assert digest(meta.path) == before
