"""The fuzz benchmark in small: 50 mutants of each base of the suite's real snapshots must give no failure
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
def test_every_base_unmutated_opens_reads_and_saves_cleanly(bases, tmp_path, monkeypatch):
    """The baseline: a refusal of a mutant means the mutation, not the base or the exercise."""
    import random

    from fuzz_exercise import exercise
    from fuzz_mutate import Mutant, write_mutant

    monkeypatch.setenv("VMSTATE_INDEX_CACHE", "off")
    for base in bases:
        path = str(tmp_path / ("unmutated" + base.suffix))
        write_mutant(Mutant(0, base, size=base.size), path)
        o = exercise(path, base.tag, str(tmp_path), random.Random(1))
        assert o.opened and o.saved and not o.read_refusals and not o.bad_save, (base.name, o)


@pytest.mark.qemu
def test_50_mutants_of_each_base_without_a_failure(bases, tmp_path, monkeypatch):
    monkeypatch.setenv("VMSTATE_INDEX_CACHE", "off")
    count = 50 * len(bases)
    report = fuzz_pool.run_fuzz(bases, count, seed=15, out_dir=str(tmp_path), budget=20)
    distinct = write_failures(report, tmp_path / "failures.txt", 15)
    assert report.mutants == count and report.by_base == {b.name: 50 for b in bases}
    assert report.failures == 0, f"{distinct} distinct:\n" + (tmp_path / "failures.txt").read_text()
    assert report.opened > 50 and report.refused > 50 and report.saved > 50
    assert report.opened + report.refused == count


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


RESUMABLE = {
    "stream": "small-pc-e1000",
    "stream-novmdesc": "small-pc-e1000",
    "arm64-novmdesc": "arm64-virt-novmdesc",
    "mapped-ram": "small-pc-e1000-qemu10-mapped",
    "qcow2": "small-q35-e1000-savevm",
}


def _ram_data_mutant(base, seed: int) -> int:
    return next(n for n in range(10_000) if fuzz_pool.make_mutant(base, seed, n).ram_data_only)


@pytest.mark.qemu
@pytest.mark.parametrize("base_name", list(RESUMABLE))
def test_a_save_of_a_ram_data_mutant_resumes_in_qemu(
    bases, snapshot, restored, tmp_path, monkeypatch, base_name
):
    """A mutation only in RAM page bytes is a valid snapshot: the fuzzer's save of it (with its
    register and memory edit) must be loaded by QEMU, which then runs."""
    import dataclasses

    monkeypatch.setenv("VMSTATE_INDEX_CACHE", "off")
    base = next(b for b in bases if b.name == base_name)
    number = _ram_data_mutant(base, 15)
    previous = signal.signal(signal.SIGALRM, fuzz_pool._alarm)
    try:
        r = fuzz_pool.run_one(base, 15, number, str(tmp_path), budget=60, keep=(True, False))
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert r["status"] == "opened" and r["saved"] and not r["bad_save"], r
    meta = snapshot(RESUMABLE[base_name])
    vm = restored(dataclasses.replace(meta, path=r["output"]))
    assert vm.qmp("query-status")["status"] == "running", r["what"]
