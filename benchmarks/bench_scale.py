"""How open, reopen and memory grow with the guest: 1, 4, 16 and 64 GiB, zero-heavy and data-heavy.

Zero-heavy streams are real QEMU streams of the small test guest with that much RAM (QEMU writes a
9-byte record per untouched page). Data-heavy ones are synthesized honestly from them (see
common.filled_snapshot: 90 % of the pages get non-repeating data, QEMU loads the result); the 64 GiB
data-heavy file needs 64 GiB of disk and is only written with --data 64.

For each file, in fresh processes, page cache warm (the baseline, `cat FILE > /dev/null`, is
measured in the same run): a first open (scan; index built into the cache file), a first open with
the cache off (scan into ordinary memory), a reopen (from the cache), the peak resident memory of
each (VmHWM: file-backed pages included), the cache entry's bytes on disk per guest page, and `vmstate info`
end to end, first and cached. Targets (issue 14): open <= 1.0x cat, CLI <= cat + 0.1 s, reopen
< 50 ms, peak RSS < 64 MiB, index <= 8 bytes per guest page; `vmstate --help` < 0.1 s.

Run: .venv/bin/python benchmarks/bench_scale.py [--zero 1,4,16,64] [--data 1,4,16]
(first run boots QEMU once per size and writes the files into $VMSTATE_BENCH_DIR).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from common import filled_snapshot, real_snapshot, timed  # noqa: E402

import vmstate_gdb  # noqa: E402

VMSTATE_PACKAGE = vmstate_gdb.__file__

VMSTATE = [sys.executable, "-m", "vmstate_gdb.cli"]
# as installed: with bytecode (pip compiles it at install time; some shells set this variable)
CHILD_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}

_OPEN = """
import json, os, sys, time
t = time.perf_counter()
from vmstate_gdb.snapshot import Snapshot
t_import = time.perf_counter() - t
t = time.perf_counter()
s = Snapshot.open(sys.argv[1])
t_open = time.perf_counter() - t
pages = sum(b.page_count for b in s.index.ram.blocks.values())
hwm = [int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')][0]
print(json.dumps({"open": t_open, "import": t_import, "hwm_kib": hwm, "pages": pages}))
"""


def _open_child(path: str, cache: str) -> dict:
    env = dict(os.environ, VMSTATE_INDEX_CACHE=cache)
    out = subprocess.run(
        [sys.executable, "-c", _OPEN, path], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def _cli(argv: list[str], cache: str) -> float:
    env = dict(CHILD_ENV, VMSTATE_INDEX_CACHE=cache)
    t = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def _best(f, n: int = 3) -> float:
    return min(f() for _ in range(n))


def measure(label: str, path: str) -> dict:
    size = os.path.getsize(path)
    time.sleep(max(0.0, 2.5 - (time.time() - os.path.getmtime(path))))  # just written: not cached yet
    for _ in range(2):
        timed(["sh", "-c", f"cat '{path}' > /dev/null"])
    cat_s = min(timed(["sh", "-c", f"cat '{path}' > /dev/null"])[0] for _ in range(3))
    firsts, uncached, reopens, clis_first, clis_cached = [], [], [], [], []
    entry_bytes = 0
    for _ in range(3):
        cache = tempfile.mkdtemp(prefix="bench-index-")
        try:
            firsts.append(_open_child(path, cache))
            # what the entry takes on disk: runs of zero pages are holes in it
            entry_bytes = sum(os.stat(os.path.join(cache, f)).st_blocks * 512 for f in os.listdir(cache))
            reopens.append(_open_child(path, cache))
            uncached.append(_open_child(path, "off"))
            fresh = tempfile.mkdtemp(prefix="bench-index-")
            clis_first.append(_cli([*VMSTATE, "info", "-q", path], fresh))
            clis_cached.append(_cli([*VMSTATE, "info", "-q", path], fresh))
            shutil.rmtree(fresh)
        finally:
            shutil.rmtree(cache)
    pages = firsts[0]["pages"]
    r = {
        "label": label,
        "file_gib": size / 2**30,
        "guest_gib": pages * 4096 / 2**30,
        "cat": cat_s,
        "open": min(f["open"] for f in firsts),
        "open_uncached": min(f["open"] for f in uncached),
        "reopen": min(f["open"] for f in reopens),
        "rss_first": max(f["hwm_kib"] for f in firsts) / 1024,
        "rss_uncached": max(f["hwm_kib"] for f in uncached) / 1024,
        "rss_reopen": max(f["hwm_kib"] for f in reopens) / 1024,
        "bytes_per_page": entry_bytes / pages,
        "cli_first": min(clis_first),
        "cli_cached": min(clis_cached),
    }
    print(
        f"{label:<18} {r['guest_gib']:5.1f} GiB guest {r['file_gib']:6.2f} GiB file | cat {cat_s:6.3f} s | "
        f"open {r['open']:6.3f} s ({r['open'] / cat_s:4.2f}x cat; cache off {r['open_uncached']:6.3f} s) | "
        f"reopen {r['reopen'] * 1000:5.1f} ms | peak RSS {r['rss_first']:5.1f} / "
        f"off {r['rss_uncached']:5.1f} / reopen {r['rss_reopen']:5.1f} MiB | "
        f"index {r['bytes_per_page']:4.2f} B/page | "
        f"vmstate info {r['cli_first']:5.2f} s (cat + {r['cli_first'] - cat_s:+.2f}), "
        f"cached {r['cli_cached']:5.2f} s",
        flush=True,
    )
    return r


def startup() -> None:
    bare = _best(lambda: _cli([sys.executable, "-c", "pass"], "off"), 5)
    help_s = _best(lambda: _cli([*VMSTATE, "--help"], "off"), 5)
    print(f"startup: vmstate --help {help_s:.3f} s (python alone {bare:.3f} s; target < 0.1 s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zero", default="1,4,16,64", help="GiB sizes of zero-heavy guests")
    ap.add_argument("--data", default="1,4,16", help="GiB sizes of data-heavy guests")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    compile_all = [sys.executable, "-m", "compileall", "-q", os.path.dirname(VMSTATE_PACKAGE)]
    subprocess.run(compile_all, env=CHILD_ENV, stdout=subprocess.DEVNULL)
    startup()
    rows = []
    for gib in [int(x) for x in args.zero.split(",") if x]:
        rows.append(measure(f"zero-heavy {gib}G", real_snapshot(gib * 1024)))
    for gib in [int(x) for x in args.data.split(",") if x]:
        rows.append(measure(f"data-heavy {gib}G", filled_snapshot(0.9, gib * 1024)))
    for shape in ("zero-heavy", "data-heavy"):
        same = [r for r in rows if r["label"].startswith(shape)]
        if len(same) > 1:
            a, b = same[0], same[-1]
            print(
                f"growth, {shape} {a['guest_gib']:.0f} -> {b['guest_gib']:.0f} GiB "
                f"(x{b['guest_gib'] / a['guest_gib']:.0f}):"
                f" open x{b['open'] / a['open']:.1f}, reopen x{b['reopen'] / a['reopen']:.1f}, "
                f"peak RSS x{b['rss_first'] / a['rss_first']:.2f}"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
