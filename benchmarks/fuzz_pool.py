"""Run mutants in forked children: in process (no interpreter start per mutant), yet a hang, a
crash (SIGSEGV, SIGBUS) or a runaway allocation costs one child, never the run.

Each child takes a batch, sets its memory ceiling (RLIMIT_AS) and a per-mutant timer (SIGALRM),
and reports "start N" before and one JSON result after each mutant through a pipe. The parent
kills a child silent for twice the budget; the mutant it was on is a hang, the rest of its batch
goes to a new child.
"""

from __future__ import annotations

import faulthandler
import json
import os
import random
import resource
import select
import signal
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field

from fuzz_bases import Base
from fuzz_exercise import exercise
from fuzz_mutate import make_mutant, write_mutant

BATCH = 40


class _Timeout(BaseException):
    """Raised by SIGALRM in a child: not an Exception, so no `except Exception` swallows it."""


@dataclass
class Report:
    mutants: int = 0
    opened: int = 0
    refused: int = 0  # at open, with the project's error type
    saved: int = 0
    save_refused: int = 0
    read_refusals: int = 0  # mutants that opened and then had a read refused
    refused_by: Counter = field(default_factory=Counter)  # error type -> count
    by_base: Counter = field(default_factory=Counter)
    errors: list[dict] = field(default_factory=list)  # other exceptions
    hangs: list[dict] = field(default_factory=list)
    memory: list[dict] = field(default_factory=list)
    crashes: list[dict] = field(default_factory=list)  # the child died (a signal)
    bad_saves: list[dict] = field(default_factory=list)
    kept: list[dict] = field(default_factory=list)  # saved outputs kept for a resume in QEMU
    seconds: float = 0.0

    @property
    def failures(self) -> int:
        return len(self.errors) + len(self.hangs) + len(self.memory) + len(self.crashes) + len(self.bad_saves)

    def add(self, r: dict) -> None:
        self.mutants += 1
        self.by_base[r["base"]] += 1
        status = r["status"]
        if status == "refused":
            self.refused += 1
            self.refused_by[r["refused"].split(":", 1)[0]] += 1
        elif status == "opened":
            self.opened += 1
            self.saved += r["saved"]
            self.save_refused += not r["saved"]
            self.read_refusals += r["read_refusals"] > 0
            if r.get("bad_save"):
                self.bad_saves.append(r)
            if r.get("output"):
                self.kept.append(r)
        else:
            {"error": self.errors, "hang": self.hangs, "memory": self.memory, "crash": self.crashes}[
                status
            ].append(r)


def run_one(
    base: Base, seed: int, number: int, work: str, budget: float, keep: tuple[bool, bool] = (False, False)
) -> dict:
    """One mutant, in this process, with the timer armed; the result as a dict. ``keep``: keep the
    saved file of a (RAM-data-only, other) mutant, for a resume in QEMU."""
    m = make_mutant(base, seed, number)
    result = {"n": number, "base": base.name, "what": m.description, "ram_only": m.ram_data_only}
    path = os.path.join(work, "mutant" + base.suffix)
    write_mutant(m, path)
    rng = random.Random(f"{seed}/{number}/reads")
    signal.setitimer(signal.ITIMER_REAL, budget)
    try:
        o = exercise(path, base.tag, work, rng, keep=keep[0] if m.ram_data_only else keep[1])
        result.update(
            status="opened" if o.opened else "refused",
            refused=o.refused,
            saved=o.saved,
            read_refusals=len(o.read_refusals),
            bad_save=o.bad_save,
            output=o.output,
        )
    except _Timeout:
        result.update(status="hang", tb=traceback.format_exc())
    except MemoryError:
        result.update(status="memory", tb=traceback.format_exc())
    except Exception:
        result.update(status="error", tb=traceback.format_exc())
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    if result.get("output"):
        kept = os.path.join(work, f"kept-{number}{base.suffix}")
        os.replace(result["output"], kept)
        result["output"] = kept
    return result


def _alarm(signum, frame) -> None:
    raise _Timeout()


def _child(
    bases: list[Base],
    seed: int,
    numbers: list[int],
    work: str,
    budget: float,
    mem: int,
    keep: tuple[bool, bool],
    wfd: int,
):
    os.makedirs(work, exist_ok=True)
    faulthandler.disable()  # a crash is the parent's to count, not a dump on the terminal
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    signal.signal(signal.SIGALRM, _alarm)
    out = os.fdopen(wfd, "w", buffering=1)
    for n in numbers:
        out.write(f"S {n}\n")
        out.write("R " + json.dumps(run_one(bases[n % len(bases)], seed, n, work, budget, keep)) + "\n")
    out.flush()
    os._exit(0)


@dataclass
class _Worker:
    pid: int
    rfd: int
    numbers: list[int]
    slot: int
    buf: bytes = b""
    current: int | None = None
    since: float = 0.0


def run_fuzz(
    bases: list[Base],
    count: int,
    seed: int,
    out_dir: str,
    budget: float = 10.0,
    mem_mib: int = 2048,
    workers: int = 2,
    keep_saves: int = 0,
    progress=None,
) -> Report:
    """``count`` mutants over ``bases`` (mutant N mutates base N % len(bases)); about
    ``keep_saves`` saved files of RAM-data-only mutants and as many of others are kept."""
    report = Report()
    started = time.perf_counter()
    queue = [list(range(i, min(count, i + BATCH))) for i in range(0, count, BATCH)]
    active: dict[int, _Worker] = {}
    free_slots = list(range(workers))
    kept = Counter()

    def spawn(numbers: list[int]) -> None:
        slot = free_slots.pop()
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(rfd)
            try:
                _child(
                    bases,
                    seed,
                    numbers,
                    os.path.join(out_dir, f"w{slot}"),
                    budget,
                    mem_mib << 20,
                    (kept[True] < keep_saves, kept[False] < keep_saves),
                    wfd,
                )
            finally:
                os._exit(70)
        os.close(wfd)
        active[rfd] = _Worker(pid, rfd, numbers, slot)

    def handle(w: _Worker, line: str) -> None:
        if line.startswith("S "):
            w.current, w.since = int(line[2:]), time.perf_counter()
            return
        r = json.loads(line[2:])
        w.numbers.remove(r["n"])
        w.current = None
        report.add(r)
        if r.get("output"):
            kept[r["ram_only"]] += 1
        if progress:
            progress(report)

    def finish(w: _Worker, reason: str | None) -> None:
        del active[w.rfd]
        os.close(w.rfd)
        _, status = os.waitpid(w.pid, 0)
        free_slots.append(w.slot)
        if w.current is not None:  # died or was killed during a mutant
            n = w.current
            m = make_mutant(bases[n % len(bases)], seed, n)
            why = reason or (
                f"killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit {status}"
            )
            r = {
                "n": n,
                "base": m.base.name,
                "what": m.description,
                "status": "hang" if reason else "crash",
                "tb": why,
            }
            report.add(r)
            w.numbers.remove(n)
        if w.numbers:
            queue.insert(0, w.numbers)

    while queue or active:
        while queue and free_slots:
            spawn(queue.pop(0))
        ready, _, _ = select.select(list(active), [], [], 0.5)
        for rfd in ready:
            w = active[rfd]
            chunk = os.read(rfd, 1 << 16)
            if not chunk:
                finish(w, None)
                continue
            w.buf += chunk
            *lines, w.buf = w.buf.split(b"\n")
            for line in lines:
                handle(w, line.decode())
        now = time.perf_counter()
        for w in list(active.values()):
            if w.current is not None and now - w.since > 2 * budget + 5:
                os.kill(w.pid, signal.SIGKILL)
                finish(w, f"no answer after {now - w.since:.0f} s: killed")
    report.seconds = time.perf_counter() - started
    return report
