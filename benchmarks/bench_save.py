"""Save a >4 GiB snapshot with a handful of edited pages, against `cp` of the same file.

Prints both throughputs and their ratio (target: vmstate save at least 0.8x cp's throughput).
Open/index time is not counted (see bench_open.py); the edits are 4 pages patched in place, 4 zero
pages turned into new records, and a register. Run: .venv/bin/python benchmarks/bench_save.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from common import filled_snapshot, work_dir  # noqa: E402

from vmstate_gdb.snapshot import Snapshot  # noqa: E402
from vmstate_gdb.stream.ram import PAGE_ZERO  # noqa: E402
from vmstate_gdb.writer import save  # noqa: E402


def drop(path: str) -> None:
    if os.path.exists(path):
        os.unlink(path)


def main() -> None:
    src = filled_snapshot()
    size = os.path.getsize(src)
    d = work_dir()
    cp_out, our_out = str(d / "cp-copy.vmstate"), str(d / "saved.vmstate")
    subprocess.run(["cat", src], stdout=subprocess.DEVNULL, check=True)  # same warm cache for both
    cp_times, save_times = [], []
    with Snapshot.open(src) as snap:
        block = snap.index.ram.blocks["pc.ram"]
        data_pages = [i for i in range(0, block.page_count, block.page_count // 5) if block.pages[i] > 0][:4]
        zero_pages = [i for i in range(block.page_count) if block.pages[i] == PAGE_ZERO][::997][:4]
        for i in data_pages + zero_pages:
            snap.ram.write("pc.ram", i * block.page_size, b"edited page %d" % i)
        snap.set_register(0, "rax", 0x1234)
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
    print(f"ratio         {(result.size / save_s) / (size / cp_s):.2f}x cp's throughput (target >= 0.8x)")
    drop(cp_out)
    drop(our_out)


if __name__ == "__main__":
    main()
