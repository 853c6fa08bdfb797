"""Save a >4 GiB snapshot with a handful of edited pages, against `cp` of the same file.

Prints both throughputs and their ratio (target: vmstate save at least 0.9x cp's throughput).
Open/index time is not counted (see bench_open.py); the edits are 4 pages patched in place, 4 zero
pages turned into new records, and a register. Then the same on XFS with reflink, on a loop image
the benchmark makes (needs root and xfsprogs; --no-xfs skips it): a save with one edited page
(target < 0.1 s) and with the full edit set, against `cp --reflink=never` and `--reflink=always`.
Run: .venv/bin/python benchmarks/bench_save.py [--no-xfs]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from common import filled_snapshot, work_dir  # noqa: E402

from vmstate_gdb.snapshot import Snapshot  # noqa: E402
from vmstate_gdb.stream.ram import PAGE_ZERO  # noqa: E402
from vmstate_gdb.writer import save  # noqa: E402


def drop(path: str) -> None:
    if os.path.exists(path):
        os.unlink(path)


def _edit(snap, pages_in_place: int, zero_pages: int) -> None:
    block = snap.index.ram.blocks["pc.ram"]
    data = [i for i in range(0, block.page_count, block.page_count // 5) if block.pages[i] > 0][
        :pages_in_place
    ]
    zeros = [i for i in range(block.page_count) if block.pages[i] == PAGE_ZERO][::997][:zero_pages]
    for i in data + zeros:
        snap.ram.write("pc.ram", i * block.page_size, b"edited page %d" % i)
    snap.set_register(0, "rax", 0x1234)


def _timed_save(snap, out: str) -> tuple[float, object]:
    drop(out)
    t = time.perf_counter()
    result = save(snap, out)
    os.sync()
    return time.perf_counter() - t, result


def _timed_cp(args: list[str]) -> float:
    drop(args[-1])
    t = time.perf_counter()
    subprocess.run(["cp", *args], check=True)
    os.sync()
    return time.perf_counter() - t


def reflink(src: str) -> None:
    if os.geteuid() != 0 or shutil.which("mkfs.xfs") is None:
        print("xfs: skipped (needs root and mkfs.xfs)")
        return
    size = os.path.getsize(src)
    base = tempfile.mkdtemp(prefix="bench-xfs-", dir=work_dir())
    image, mnt = os.path.join(base, "fs.img"), os.path.join(base, "mnt")
    os.mkdir(mnt)
    with open(image, "wb") as f:
        f.truncate(size * 3 + (1 << 30))
    subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", image], check=True)
    if subprocess.run(["mount", "-o", "loop", image, mnt]).returncode != 0:
        print("xfs: skipped (cannot mount a loop image here)")
        shutil.rmtree(base)
        return
    try:
        xsrc = os.path.join(mnt, "in.vmstate")
        shutil.copyfile(src, xsrc)
        os.sync()
        out = os.path.join(mnt, "out.vmstate")
        cp_copy = min(_timed_cp(["--reflink=never", xsrc, out]) for _ in range(2))
        cp_clone = min(_timed_cp(["--reflink=always", xsrc, out]) for _ in range(3))
        rows = []
        for label, in_place, zero in (("1 page in place", 1, 0), ("8 pages, 4 as new records", 4, 4)):
            with Snapshot.open(xsrc) as snap:
                _edit(snap, in_place, zero)
                times = [_timed_save(snap, out) for _ in range(3)]
            rows.append((label, min(t for t, _ in times), times[0][1]))
        print(
            f"xfs (reflink) {size / 2**30:.2f} GiB: cp --reflink=never {cp_copy:.3f} s, "
            f"cp --reflink=always {cp_clone:.3f} s"
        )
        for label, t, result in rows:
            print(
                f"  save, {label:<26} {t:.3f} s ({result.plan.describe()}): "
                f"{cp_copy / t:.0f}x faster than a copy"
                f"{'; target < 0.1 s: OK' if label.startswith('1 ') and t < 0.1 else ''}"
            )
    finally:
        subprocess.run(["umount", "-l", mnt], check=False)
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-xfs", action="store_true", help="skip the reflink measurement")
    args = ap.parse_args()
    src = filled_snapshot()
    size = os.path.getsize(src)
    d = work_dir()
    cp_out, our_out = str(d / "cp-copy.vmstate"), str(d / "saved.vmstate")
    subprocess.run(["cat", src], stdout=subprocess.DEVNULL, check=True)  # same warm cache for both
    cp_times, save_times = [], []
    with Snapshot.open(src) as snap:
        _edit(snap, 4, 4)
        for _ in range(3):
            drop(cp_out)
            t = time.perf_counter()
            subprocess.run(["cp", src, cp_out], check=True)
            os.sync()
            cp_times.append(time.perf_counter() - t)
            drop(our_out)
            t = time.perf_counter()
            result = save(snap, our_out)
            os.sync()
            save_times.append(time.perf_counter() - t)
    cp_s, save_s = min(cp_times), min(save_times)
    print(f"snapshot      {src}: {size / 2**30:.2f} GiB")
    print(f"edits         {result.plan.describe()}")
    print(f"cp            {cp_s:.3f} s  ({size / cp_s / 2**30:.2f} GiB/s)")
    print(f"vmstate save  {save_s:.3f} s  ({result.size / save_s / 2**30:.2f} GiB/s)")
    print(f"ratio         {(result.size / save_s) / (size / cp_s):.2f}x cp's throughput (target >= 0.9x)")
    # an ELF core of the same guest: every data page copied out of the stream (zero pages holes)
    from vmstate_gdb.export.elfcore import write_core

    core_out = str(d / "guest.core")
    core_times = []
    with Snapshot.open(src) as snap:
        for _ in range(3):
            drop(core_out)
            t = time.perf_counter()
            core = write_core(snap, core_out)
            os.sync()
            core_times.append(time.perf_counter() - t)
    core_s = min(core_times)
    data = core.data_pages * 4096
    print(f"vmstate core  {core_s:.3f} s  ({data / core_s / 2**30:.2f} GiB/s of page data)")
    print(f"ratio         {(data / core_s) / (size / cp_s):.2f}x cp's throughput")
    drop(core_out)
    drop(cp_out)
    drop(our_out)
    if not args.no_xfs:
        reflink(src)


if __name__ == "__main__":
    main()
