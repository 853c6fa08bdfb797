"""Shared by the benchmarks: a real large snapshot, and a filled variant synthesized from it.

The filled variant is honest: a real QEMU stream of a guest with more than 4 GiB of RAM, with a
PAGE record of non-repeating data appended (before the final EOS, where QEMU's loader applies it
last) for every page the guest left zero. QEMU loads such a stream like any other.
"""

from __future__ import annotations

import hashlib
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from vmstate_gdb.harness import GuestConfig, Nic, Scenario, build_snapshot
from vmstate_gdb.snapshot import Snapshot
from vmstate_gdb.stream.ram import PAGE_ABSENT, PAGE_ZERO

BIG_MIB = 4608
BIG = Scenario(
    "bench-small-pc-4g5", GuestConfig("small", "pc", 1, BIG_MIB, (Nic("e1000", "52:54:00:12:34:56"),))
)


def work_dir() -> Path:
    d = Path(os.environ.get("VMSTATE_BENCH_DIR", "/var/tmp/vmstate-bench"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def real_big_snapshot():
    return build_snapshot(BIG, work_dir(), reuse=True)


def real_snapshot(mib: int) -> str:
    """A real QEMU stream of the small guest with ``mib`` MiB of RAM (mostly zero pages)."""
    if mib == BIG_MIB:
        return real_big_snapshot().path
    extra: tuple[str, ...] = ()
    if mib > 16 << 10:  # more than this host's RAM: reserve=off (MAP_NORESERVE), so QEMU may map it
        extra = (
            "-object",
            f"memory-backend-ram,id=pc.ram,size={mib}M,reserve=off",
            "-machine",
            "memory-backend=pc.ram",
        )
    config = GuestConfig("small", "pc", 1, mib, (Nic("e1000", "52:54:00:12:34:56"),), extra_args=extra)
    return build_snapshot(Scenario(f"bench-small-pc-{mib}m", config), work_dir(), reuse=True).path


def filled_snapshot(fill_fraction: float = 0.9, mib: int = BIG_MIB) -> str:
    """The real snapshot of a ``mib`` MiB guest with ~fill_fraction of pc.ram made non-zero;
    built once, reused."""
    real = real_snapshot(mib)
    suffix = "" if mib == BIG_MIB else f"-{mib}m"
    out = work_dir() / f"filled-{int(fill_fraction * 100)}{suffix}.vmstate"
    if out.exists() and out.stat().st_mtime > os.path.getmtime(real):
        return str(out)
    tmp = out.with_suffix(".tmp")
    with Snapshot.open(real, cache=False) as snap, open(real, "rb") as src, open(tmp, "wb") as dst:
        block = snap.index.ram.blocks["pc.ram"]
        insert_at = snap.index.ram.eos_offsets[-1]
        _copy(src, dst, 0, insert_at)
        name = block.name.encode()
        head = bytes([len(name)]) + name
        # Free memory in a real guest is zero in ranges: every 2560 pages, the last ones stay zero.
        zero_run = int(2560 * (1 - fill_fraction))
        seed = hashlib.sha256(b"vmstate-bench").digest()
        batch = bytearray()
        named = False
        for page in range(block.page_count):
            if block.pages[page] not in (PAGE_ZERO, PAGE_ABSENT) or page % 2560 >= 2560 - zero_run:
                continue
            data = (seed + page.to_bytes(8, "little")) * (block.page_size // 40) + bytes(block.page_size % 40)
            # like QEMU: the first record names the block, the others CONTINUE it
            flags = 0x28 if named else 0x08
            batch += ((page * block.page_size) | flags).to_bytes(8, "big") + (b"" if named else head) + data
            named = True
            if len(batch) > 32 << 20:
                dst.write(batch)
                batch.clear()
        dst.write(batch)
        _copy(src, dst, insert_at, snap.source.size - insert_at)
    tmp.replace(out)
    return str(out)


def _copy(src, dst, offset: int, length: int) -> None:
    src.seek(offset)
    while length > 0:
        chunk = src.read(min(length, 64 << 20))
        dst.write(chunk)
        length -= len(chunk)


def timed(argv: list[str]) -> tuple[float, int]:
    """(seconds, peak RSS in KiB) of a child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    elapsed = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return elapsed, max(after, before)


def python_child(code: str) -> list[str]:
    return [sys.executable, "-c", code]
