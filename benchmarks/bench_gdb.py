"""Benchmark the gdb target against a live QEMU's own gdbstub and against the limits.

One run, one guest (the small test guest with 512 MiB, 256 MiB of random bytes loaded at 32 MiB
with QEMU's loader device so no page is a zero page):

* `dump binary memory` of the 256 MiB through the snapshot target (gdb's memory cache on and off),
  through the live (stopped) QEMU's gdbstub (`-gdb unix:...`), and from an ELF core of the same
  bytes opened by gdb (the limit); the same for as much RAM the guest never touched (zero pages,
  which the server's replies run-length encode); and `x/100000x` (one read per value unless gdb
  caches). Target (issue 14): 5x the live gdbstub.
* `vmstate-dump` of the same range: the server writes the file, gdb only asks (no hex).
* `find` of a 6-byte pattern across guest RAM above 32 MiB: with the server's qSearch, with gdb's
  fallback that reads everything through m packets (`set remote search-memory-packet off`), and
  `bytes.find` over the snapshot file (the limit); target: fallback/qSearch >= 20.

Usage: .venv/bin/python benchmarks/bench_gdb.py [--workdir DIR] [--mib 256]. Takes a few minutes.
"""

from __future__ import annotations

import argparse
import mmap
import os
import re
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vmstate_gdb.harness import GuestConfig, Nic, QemuVM, wait_migration  # noqa: E402
from vmstate_gdb.harness.guests import guest_image  # noqa: E402

GDB = "/usr/bin/gdb"
BLOB_AT = 0x2000000
PATTERN = b"\x5a\xa5vmGB"
X_COUNT = 100000  # `x/100000x`: one 4-byte read per value, unless gdb caches


def gdb_timed(
    setup: list[str], timed: str, extra: list[str] | None = None, timeout: float = 1800
) -> tuple[float, str]:
    """Run gdb in batch mode; returns the seconds the ``timed`` command took, measured inside gdb."""
    argv = [GDB, "-nx", "-batch", "-x", str(ROOT / "vmstate.gdb")]
    for c in setup:
        argv += ["-ex", c]
    argv += [
        "-ex",
        "python import builtins, time; builtins._t0 = time.perf_counter()",
        "-ex",
        timed,
        "-ex",
        "python import builtins, time; print('ELAPSED %.6f' % (time.perf_counter() - builtins._t0))",
    ]
    for c in extra or []:
        argv += ["-ex", c]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    text = out.stdout + out.stderr
    m = re.search(r"ELAPSED ([0-9.]+)", text)
    if not m:
        raise SystemExit(f"gdb failed:\n{text[-2000:]}")
    return float(m[1]), text


def write_elf_core(path: Path, address: int, data_path: Path) -> None:
    """A minimal x86_64 ELF core: one PT_LOAD of the dumped bytes at their physical address."""
    size = data_path.stat().st_size
    ehsize, phsize = 64, 56
    offset = 0x1000
    header = struct.pack(
        "<16sHHIQQQIHHHHHH",
        b"\x7fELF\x02\x01\x01" + bytes(9),
        4,
        62,
        1,
        0,
        ehsize,
        0,
        0,
        ehsize,
        phsize,
        1,
        0,
        0,
        0,
    )
    phdr = struct.pack("<IIQQQQQQ", 1, 6, offset, address, address, size, size, 0x1000)
    with open(path, "wb") as f, open(data_path, "rb") as src:
        f.write(header + phdr)
        f.write(bytes(offset - len(header) - len(phdr)))
        while chunk := src.read(1 << 24):
            f.write(chunk)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default=None)
    p.add_argument("--mib", type=int, default=256, help="size of the dumped region (default 256)")
    args = p.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-gdb-"))
    work.mkdir(parents=True, exist_ok=True)
    size = args.mib << 20
    ram_mib = max(512, args.mib * 2 + 64)  # the blob, then as much untouched RAM
    blob = work / "blob.bin"
    data = bytearray(os.urandom(size))
    data[size - 4096 : size - 4096 + len(PATTERN)] = PATTERN  # the one place find must report
    while (i := data.find(PATTERN, 0, size - 4096)) != -1:
        data[i] ^= 0xFF
    blob.write_bytes(data)
    del data
    gdb_sock = work / "live-gdb.sock"
    snap = work / "bench.vmstate"
    config = GuestConfig(
        "small",
        "pc",
        1,
        ram_mib,
        (Nic("e1000", "52:54:00:12:34:56"),),
        extra_args=(
            "-device",
            f"loader,file={blob},addr={BLOB_AT:#x},force-raw=on",
            "-gdb",
            f"unix:{gdb_sock},server=on,wait=off",
        ),
    )
    results: dict[str, float] = {}
    dump_range = f"{BLOB_AT:#x} {BLOB_AT + size:#x}"
    zero_range = f"{BLOB_AT + size:#x} {BLOB_AT + 2 * size:#x}"  # RAM the guest never touched
    find_cmd = f"find /b {BLOB_AT:#x}, {(ram_mib << 20) - 1:#x}, " + ", ".join(f"{b:#x}" for b in PATTERN)
    with QemuVM(config, work, name="bench", guest=guest_image("small", work)) as vm:
        vm.wait_ready()
        vm.wait_for_ticks(1, timeout=60)
        vm.qmp("stop")
        vm.qmp("migrate", uri=f"exec:cat > {snap}")
        wait_migration(vm, timeout=600)
        live_out = work / "live.bin"
        live = [f"target remote {gdb_sock}", "maintenance packet Qqemu.PhyMemMode:1"]
        results["dump_live_s"], _ = gdb_timed(live, f"dump binary memory {live_out} {dump_range}")
        results["zero_live_s"], _ = gdb_timed(live, f"dump binary memory {work / 'zl.bin'} {zero_range}")
        results["x_live_s"], _ = gdb_timed(live, f"x/{X_COUNT}x {BLOB_AT:#x}")
        vm.close()
    snap_out = work / "snap.bin"
    opened = [f"vmstate-open {snap}", "monitor phys on"]
    results["dump_snapshot_s"], _ = gdb_timed(opened, f"dump binary memory {snap_out} {dump_range}")
    results["dump_nocache_s"], _ = gdb_timed(
        [*opened, "set vmstate-cache off"], f"dump binary memory {work / 'nc.bin'} {dump_range}"
    )
    results["zero_snapshot_s"], _ = gdb_timed(opened, f"dump binary memory {work / 'zs.bin'} {zero_range}")
    results["zero_nocache_s"], _ = gdb_timed(
        [*opened, "set vmstate-cache off"], f"dump binary memory {work / 'zn.bin'} {zero_range}"
    )
    vdump = work / "vdump.bin"
    results["vdump_s"], _ = gdb_timed(opened, f"vmstate-dump {vdump} {dump_range}")
    results["x_snapshot_s"], _ = gdb_timed(opened, f"x/{X_COUNT}x {BLOB_AT:#x}")
    results["x_nocache_s"], _ = gdb_timed([*opened, "set vmstate-cache off"], f"x/{X_COUNT}x {BLOB_AT:#x}")
    core = work / "bench.core"
    write_elf_core(core, BLOB_AT, snap_out)
    core_out = work / "core.bin"
    results["dump_core_s"], _ = gdb_timed(
        [f"core-file {core}"], f"dump binary memory {core_out} {dump_range}"
    )
    same = (
        blob.read_bytes()
        == snap_out.read_bytes()
        == live_out.read_bytes()
        == core_out.read_bytes()
        == vdump.read_bytes()
    )
    results["find_qsearch_s"], found = gdb_timed([f"vmstate-open {snap}", "monitor phys on"], find_cmd)
    assert f"{BLOB_AT + size - 4096:#x}" in found, found[-500:]
    results["find_fallback_s"], found2 = gdb_timed(
        [f"vmstate-open {snap}", "monitor phys on", "set remote search-memory-packet off"], find_cmd
    )
    assert f"{BLOB_AT + size - 4096:#x}" in found2, found2[-500:]
    t0 = time.perf_counter()
    with open(snap, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        hits, at = 0, m.find(PATTERN)
        while at != -1:
            hits += 1
            at = m.find(PATTERN, at + 1)
    results["find_bytes_find_s"] = time.perf_counter() - t0
    mib = args.mib
    print(
        f"region: {mib} MiB of random bytes at {BLOB_AT:#x}; guest RAM {ram_mib} MiB; dumps identical: {same}"
    )
    print(
        f"dump binary memory, live QEMU gdbstub: {results['dump_live_s']:8.2f} s  "
        f"({mib / results['dump_live_s']:7.1f} MiB/s)"
    )
    print(
        f"dump binary memory, snapshot target:   {results['dump_snapshot_s']:8.2f} s  "
        f"({mib / results['dump_snapshot_s']:7.1f} MiB/s)"
    )
    print(
        f"dump binary memory, ELF core (limit):  {results['dump_core_s']:8.2f} s  "
        f"({mib / results['dump_core_s']:7.1f} MiB/s)"
    )
    print(
        f"dump binary memory, snapshot, cache off: {results['dump_nocache_s']:6.2f} s  "
        f"({mib / results['dump_nocache_s']:7.1f} MiB/s)"
    )
    print(
        f"vmstate-dump (the server writes the file): {results['vdump_s']:4.2f} s  "
        f"({mib / results['vdump_s']:7.1f} MiB/s): live / vmstate-dump = "
        f"{results['dump_live_s'] / results['vdump_s']:.1f}x (target >= 5x)"
    )
    best = min(results["dump_snapshot_s"], results["dump_nocache_s"])
    print(
        f"  random data: live / snapshot = {results['dump_live_s'] / best:.2f}x faster (target >= 5x); "
        f"snapshot / core = {best / results['dump_core_s']:.1f}x (gdb parses hex a character at a time)"
    )
    for key, label in (
        ("zero_live_s", "live QEMU gdbstub"),
        ("zero_snapshot_s", "snapshot"),
        ("zero_nocache_s", "snapshot, cache off"),
    ):
        print(
            f"dump of {mib} MiB of untouched RAM, {label:<20} {results[key]:6.2f} s "
            f"({mib / results[key]:7.1f} MiB/s)"
        )
    print(
        f"  untouched RAM: live / snapshot = {results['zero_live_s'] / results['zero_snapshot_s']:.1f}x "
        f"(cache off: {results['zero_live_s'] / results['zero_nocache_s']:.1f}x; target >= 5x)"
    )
    print(
        f"x/{X_COUNT}x: live {results['x_live_s']:.2f} s, snapshot {results['x_snapshot_s']:.2f} s "
        f"(cache off {results['x_nocache_s']:.2f} s): {results['x_live_s'] / results['x_snapshot_s']:.1f}x"
    )
    print(f"find 6 bytes, qSearch:             {results['find_qsearch_s']:8.2f} s")
    print(f"find 6 bytes, gdb fallback (m):    {results['find_fallback_s']:8.2f} s")
    print(f"bytes.find over the file (limit):  {results['find_bytes_find_s']:8.2f} s ({hits} hit(s))")
    speedup = results["find_fallback_s"] / results["find_qsearch_s"]
    print(
        f"  fallback / qSearch = {speedup:.1f}x (target >= 20x): {'OK' if speedup >= 20 else 'MISSED'}; "
        f"qSearch / bytes.find = {results['find_qsearch_s'] / results['find_bytes_find_s']:.1f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
