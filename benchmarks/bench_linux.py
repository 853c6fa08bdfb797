"""The software inside a Linux guest: time to the first `vmstate linux ps` on a 256 MiB guest, cold
(no per-kernel cache) and warm, against `vmstate info` of the same file (the same open, no OS view);
`bt all`; and `app-core` of the marker process against reading the same bytes back from the core.

Goals (issue 10): first ps under 2 s, under 0.5 s with the cache. Run:
.venv/bin/python benchmarks/bench_linux.py
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from common import work_dir  # noqa: E402

from vmstate_gdb.harness import SCENARIOS, build_snapshot  # noqa: E402
from vmstate_gdb.os.linux.kernel import open_linux  # noqa: E402
from vmstate_gdb.os.linux.tasks import all_tasks, kernel_stack  # noqa: E402
from vmstate_gdb.snapshot import Snapshot  # noqa: E402

VMSTATE = [sys.executable, "-m", "vmstate_gdb.cli"]
RUNS = 5


def wall(argv: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env=env)
    return time.perf_counter() - t


def median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> None:
    meta = build_snapshot(SCENARIOS["linux-pc-3nic"], work_dir(), reuse=True)
    path = meta.path
    subprocess.run(["cat", path], stdout=subprocess.DEVNULL, check=True)  # warm page cache for all
    cache = tempfile.mkdtemp(prefix="vmstate-bench-cache-")
    env = dict(os.environ, VMSTATE_CACHE_DIR=cache)

    info = median([wall([*VMSTATE, "info", path, "-q"], env) for _ in range(RUNS)])
    cold = []
    for _ in range(RUNS):
        subprocess.run(["rm", "-rf", cache], check=True)
        cold.append(wall([*VMSTATE, "linux", path, "ps", "-q"], env))
    warm = [wall([*VMSTATE, "linux", path, "ps", "-q"], env) for _ in range(RUNS)]
    print(f"snapshot: {path} ({os.path.getsize(path) >> 20} MiB stream, {meta.config.memory_mib} MiB guest)")
    print(f"baseline  vmstate info:                 {info:6.3f} s")
    first, again = median(cold), median(warm)
    print(f"first     vmstate linux ps (no cache):  {first:6.3f} s  = {first / info:4.2f}x info")
    print(f"again     vmstate linux ps (cached):    {again:6.3f} s  = {again / info:4.2f}x info")

    with Snapshot.open(path) as snap:
        os.environ["VMSTATE_CACHE_DIR"] = cache
        t = time.perf_counter()
        kernel = open_linux(snap)
        opened = time.perf_counter() - t
        timings = ", ".join(f"{k} {v:.3f}" for k, v in kernel.facts.timings.items())
        print(f"in process: kernel view {opened:.3f} s ({timings})")
        t = time.perf_counter()
        tasks = all_tasks(kernel)
        frames = sum(len(kernel_stack(kernel, task)) for task in tasks)
        bt_all = time.perf_counter() - t
        per_task = 1000 * bt_all / len(tasks)
        print(f"bt all:   {len(tasks)} tasks, {frames} frames in {bt_all:.3f} s ({per_task:.1f} ms/task)")

        marker = next(t for t in tasks if t.comm.string_() == b"marker" and t.pid == t.tgid)
        from vmstate_gdb.export.appcore import write_app_core

        out = os.path.join(cache, "marker.core")
        times = []
        for _ in range(RUNS):
            t = time.perf_counter()
            result = write_app_core(kernel, marker.pid.value_(), out)
            times.append(time.perf_counter() - t)
    data = result.data_pages * 4096
    baseline = []
    from elftools.elf.elffile import ELFFile

    with open(out, "rb") as f:
        loads = [s for s in ELFFile(f).iter_segments() if s["p_type"] == "PT_LOAD"]
        segments = [(s["p_offset"], s["p_filesz"]) for s in loads]
    for _ in range(RUNS):
        t = time.perf_counter()
        fd = os.open(out, os.O_RDONLY)
        for offset, size in segments:
            for page in range(offset, offset + size, 4096):
                os.pread(fd, 4096, page)
        os.close(fd)
        baseline.append(time.perf_counter() - t)
    print(
        f"app-core: {result.segments} PT_LOAD, {data >> 10} KiB from guest RAM in {median(times):.3f} s; "
        f"reading the core's {sum(s for _, s in segments) >> 10} KiB back page by page: "
        f"{median(baseline):.4f} s "
        f"({median(times) / median(baseline):.0f}x)"
    )
    subprocess.run(["rm", "-rf", cache], check=True)


if __name__ == "__main__":
    main()
