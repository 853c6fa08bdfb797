"""Open and index a >4 GiB snapshot whose RAM is mostly non-zero.

Prints: index time against `cat FILE > /dev/null` in the same run (target: at most 1.0x), the peak
RSS of the opening process (target: under 100 MiB for 4 GiB of RAM), and random 4 KiB guest-physical
reads per second. Run: .venv/bin/python benchmarks/bench_open.py
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from common import filled_snapshot, python_child, timed  # noqa: E402

from vmstate_gdb.snapshot import Snapshot  # noqa: E402


def main() -> None:
    path = filled_snapshot()
    size = os.path.getsize(path)
    for _ in range(2):  # warm the page cache for both, so both measure the same thing
        timed(["sh", "-c", f"cat '{path}' > /dev/null"])
    cat_s = min(timed(["sh", "-c", f"cat '{path}' > /dev/null"])[0] for _ in range(3))
    code = (
        "import time;from vmstate_gdb.snapshot import Snapshot;t=time.perf_counter();"
        f"s=Snapshot.open({path!r});e=time.perf_counter()-t;"
        "h=[l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1];print(e,h)"
    )
    runs = [
        subprocess.run(python_child(code), capture_output=True, text=True, check=True).stdout.split()
        for _ in range(3)
    ]
    open_s = min(float(r[0]) for r in runs)
    rss_kib = max(int(r[1]) for r in runs)
    base = subprocess.run(
        python_child(
            "import vmstate_gdb.snapshot;print([l for l in open('/proc/self/status') "
            "if l.startswith('VmHWM')][0].split()[1])"
        ),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    base_rss = int(base)
    with Snapshot.open(path) as snap:
        ram = snap.index.ram.blocks["pc.ram"]
        counts = ram.counts()
        ranges = [r for r in snap.physical.ranges if r.kind == "ram"]
        rng = random.Random(1)
        n = 0
        t = time.perf_counter()
        while time.perf_counter() - t < 2.0:
            r = rng.choice(ranges)
            snap.physical.read(r.start + rng.randrange(r.size // 4096) * 4096, 4096)
            n += 1
        reads = n / (time.perf_counter() - t)
    ram_gib = ram.used_length / 2**30
    print(
        f"snapshot        {path}: {size / 2**30:.2f} GiB, pc.ram {ram_gib:.2f} GiB, "
        f"{counts['data']} data pages, {counts['zero']} zero"
    )
    print(f"cat > /dev/null {cat_s:.3f} s ({size / cat_s / 2**30:.2f} GiB/s)")
    print(f"open + index    {open_s:.3f} s ({size / open_s / 2**30:.2f} GiB/s)")
    print(f"ratio           {open_s / cat_s:.2f}x cat (target <= 1.0x)")
    print(
        f"peak RSS        {rss_kib / 1024:.1f} MiB (python + imports alone: {base_rss / 1024:.1f} MiB; "
        f"target < 100 MiB)"
    )
    print(f"random 4 KiB reads {reads:,.0f}/s")


if __name__ == "__main__":
    main()
