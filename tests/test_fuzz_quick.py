"""The fuzz benchmark in small: 300 mutants of the suite's real snapshots must give no failure
(benchmarks/bench_fuzz.py for the full run); and its pool must see a failure when there is one."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import fuzz_pool  # noqa: E402
from bench_fuzz import write_failures  # noqa: E402
from fuzz_bases import SOURCES, load_bases  # noqa: E402
from fuzz_exercise import Outcome  # noqa: E402

SCENARIOS = [
    "small-pc-e1000",
    "arm64-virt-novmdesc",
    "small-pc-e1000-qemu10-mapped",
    "small-q35-e1000-savevm",
]


@pytest.fixture(scope="module")
def bases(snapshot):
    dirs = {Path(snapshot(name).path).parent for name in SCENARIOS}
    assert len(dirs) == 1
    found, notes = load_bases(dirs.pop())
    assert not notes and [b.name for b in found] == list(SOURCES)
    return found


@pytest.mark.qemu
def test_300_mutants_without_a_failure(bases, tmp_path, monkeypatch):
    monkeypatch.setenv("VMSTATE_INDEX_CACHE", "off")
    report = fuzz_pool.run_fuzz(bases, 300, seed=15, out_dir=str(tmp_path), budget=20)
    distinct = write_failures(report, tmp_path / "failures.txt", 15)
    assert report.mutants == 300 and report.by_base == {b.name: 50 for b in bases}
    assert report.failures == 0, f"{distinct} distinct:\n" + (tmp_path / "failures.txt").read_text()
    assert report.opened > 50 and report.refused > 50 and report.saved > 50
    assert report.opened + report.refused == 300


def _faulty(path, tag, work, rng, keep=False):
    """Stands in for the exercise in the forked children: mutant N fails in the N-th way."""
    number = _CURRENT[0]
    if number == 1:
        time.sleep(60)
    if number == 2:
        os.kill(os.getpid(), signal.SIGSEGV)
    if number == 3:
        raise KeyError("a bug")
    if number == 4:
        bytearray(8 << 30)
    return Outcome(refused="FormatError: x")


_CURRENT = [0]


@pytest.mark.qemu
def test_the_pool_counts_hangs_crashes_memory_and_exceptions(bases, tmp_path, monkeypatch):
    real = fuzz_pool.make_mutant

    def numbered(base, seed, number):
        _CURRENT[0] = number
        return real(base, seed, number)

    monkeypatch.setattr(fuzz_pool, "make_mutant", numbered)
    monkeypatch.setattr(fuzz_pool, "exercise", _faulty)
    report = fuzz_pool.run_fuzz(bases[:1], 8, seed=1, out_dir=str(tmp_path), budget=1, mem_mib=1024)
    assert report.mutants == 8
    assert [r["n"] for r in report.hangs] == [1]
    assert [r["n"] for r in report.crashes] == [2] and "signal 11" in report.crashes[0]["tb"]
    assert [r["n"] for r in report.errors] == [3] and "KeyError" in report.errors[0]["tb"]
    assert [r["n"] for r in report.memory] == [4]
    assert report.refused == 4
