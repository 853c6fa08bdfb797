"""Hostile input at scale: mutants of real snapshots through open, info, every device field,
register and memory reads, and a save with a memory and a register edit.

Bases (from the suite's snapshot cache, $VMSTATE_TEST_CACHE or --cache): a plain stream, the same
without VMDESCRIPTION, an aarch64 stream without VMDESCRIPTION, a mapped-ram stream, a qcow2 with
a savevm snapshot, a libvirt save image raw and gzip-compressed. Mutations hit structure
boundaries (truncation), section headers, RAM page headers, subsection markers, the JSON, qcow2
header/L1/L2/snapshot table, libvirt header lengths, gzip framing, and tell lies in lengths and
counts (huge, zero, negative).

Failures, which must stay at zero: exceptions other than the project's VmstateError (their first
tracebacks, deduplicated, go to OUT/failures.txt), hangs over --budget, memory over --mem,
crashed children, and saves that succeeded but wrote a file the reader refuses or that lacks the
edits. Every mutant is a function of (--seed, its number): --only N re-runs one in this process.

Run: .venv/bin/python benchmarks/bench_fuzz.py --count 20000 --seed 1
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fuzz_bases import SOURCES, load_bases  # noqa: E402
from fuzz_pool import Report, run_fuzz, run_one  # noqa: E402


def failure_key(r: dict) -> str:
    """Deduplicate by the exception line and the innermost frame of the project."""
    tb = r.get("tb") or r.get("bad_save") or ""
    lines = [ln.strip() for ln in tb.strip().splitlines()]
    frames = [ln for ln in lines if ln.startswith("File ") and "vmstate_gdb" in ln]
    last = lines[-1] if lines else ""
    return f"{r.get('status', 'bad-save')}: {last} @ {frames[-1] if frames else ''}"


def write_failures(report: Report, path: Path, seed: int) -> int:
    seen: dict[str, dict] = {}
    for r in report.errors + report.hangs + report.memory + report.crashes + report.bad_saves:
        seen.setdefault(failure_key(r), r)
    with open(path, "w") as f:
        for key, r in seen.items():
            f.write(f"== {key}\n{r['what']}\nreproduce: bench_fuzz.py --seed {seed} --only {r['n']}\n")
            f.write((r.get("tb") or r.get("bad_save") or "") + "\n\n")
    return len(seen)


def print_report(report: Report, failures_file: Path, distinct: int) -> None:
    rate = report.mutants / report.seconds if report.seconds else 0.0
    print(f"mutants          {report.mutants} in {report.seconds:.1f} s ({rate:.1f} mutants/s)")
    print("  per base       " + ", ".join(f"{k} {v}" for k, v in sorted(report.by_base.items())))
    print(f"opened           {report.opened}")
    print(f"  saved          {report.saved} (refused by the writer: {report.save_refused})")
    print(f"  a read refused {report.read_refusals}")
    print(
        f"refused at open  {report.refused} ("
        + ", ".join(f"{k} {v}" for k, v in report.refused_by.most_common())
        + ")"
    )
    print("failures (must be 0):")
    print(f"  other exceptions  {len(report.errors)}")
    print(f"  hangs over budget {len(report.hangs)}")
    print(f"  memory over limit {len(report.memory)}")
    print(f"  crashed children  {len(report.crashes)}")
    print(f"  bad saves         {len(report.bad_saves)}")
    if report.failures:
        print(f"  {distinct} distinct, first tracebacks in {failures_file}")


def resume_sample(report: Report, cache: Path, most: int, work: Path) -> dict[str, list[str]]:
    """Resume up to ``most`` saves of RAM-data-only mutants, and as many of others, in QEMU (the
    harness's restore with the base's command line). The first must load and run; the others
    may also be refused by QEMU. Returns {outcome: [mutant descriptions]}."""
    import dataclasses

    from fuzz_bases import SOURCES

    from vmstate_gdb.errors import VmstateError
    from vmstate_gdb.harness import restore
    from vmstate_gdb.harness.snapshot import Snapshot as Meta

    outcomes: dict[str, list[str]] = {"resumed": [], "refused by QEMU": [], "did not resume": []}
    for ram_only in (True, False):
        by_base: dict[str, list[dict]] = {}
        for r in report.kept:
            if r["ram_only"] == ram_only and not r["base"].startswith("libvirt"):  # those: virsh restore
                by_base.setdefault(r["base"], []).append(r)
        rounds = itertools.zip_longest(*by_base.values())  # round robin over the bases
        for r in [r for group in rounds for r in group if r is not None][:most]:
            meta = Meta.load(str(cache / SOURCES[r["base"]][0]))
            what = ("RAM data only: " if ram_only else "") + r["what"]
            try:
                with restore(
                    dataclasses.replace(meta, path=r["output"]), work / "resume", name=f"m{r['n']}"
                ) as vm:
                    status = vm.qmp("query-status")["status"]
                outcomes["resumed" if status == "running" else "did not resume"].append(what)
            except VmstateError as e:
                outcomes["did not resume" if ram_only else "refused by QEMU"].append(f"{what}: {e}")
    return outcomes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--budget", type=float, default=10.0, help="seconds per mutant (default 10)")
    ap.add_argument("--mem", type=int, default=2048, help="address-space ceiling per child, MiB")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--out", help="work directory and failures.txt (default: a temporary directory in /dev/shm)"
    )
    ap.add_argument("--cache", default=os.environ.get("VMSTATE_TEST_CACHE"), help="the test snapshot cache")
    ap.add_argument("--bases", help=f"comma-separated subset of {','.join(SOURCES)}")
    ap.add_argument(
        "--resume", type=int, default=0, help="resume up to N saves of RAM-data-only mutants in QEMU"
    )
    ap.add_argument("--only", type=int, help="run mutant N alone, in this process, and show what happened")
    args = ap.parse_args(argv)
    if not args.cache:
        ap.error("no snapshot cache: set VMSTATE_TEST_CACHE or pass --cache")
    os.environ["VMSTATE_INDEX_CACHE"] = "off"
    bases, notes = load_bases(Path(args.cache), args.bases.split(",") if args.bases else None)
    for note in notes:
        print(f"skipped base {note}")
    if not bases:
        return 1
    own = args.out is None
    out = Path(
        args.out
        or tempfile.mkdtemp(prefix="vmstate-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    )
    out.mkdir(parents=True, exist_ok=True)
    try:
        if args.only is not None:
            import signal

            from fuzz_pool import _alarm

            signal.signal(signal.SIGALRM, _alarm)
            r = run_one(bases[args.only % len(bases)], args.seed, args.only, str(out), args.budget)
            for k, v in r.items():
                print(f"{k}: {v}")
            return 0
        last = [time.perf_counter()]

        def progress(rep: Report) -> None:
            if sys.stderr.isatty() and time.perf_counter() - last[0] > 1:
                last[0] = time.perf_counter()
                print(
                    f"\r{rep.mutants}/{args.count} mutants, {rep.failures} failures", end="", file=sys.stderr
                )

        report = run_fuzz(
            bases,
            args.count,
            args.seed,
            str(out),
            args.budget,
            args.mem,
            args.workers,
            keep_saves=args.resume,
            progress=progress,
        )
        if sys.stderr.isatty():
            print(file=sys.stderr)
        failures_file = out / "failures.txt"
        distinct = write_failures(report, failures_file, args.seed)
        if report.failures and own:
            kept = Path(tempfile.gettempdir()) / f"vmstate-fuzz-failures-seed{args.seed}.txt"
            shutil.copy(failures_file, kept)
            failures_file = kept
        print_report(report, failures_file, distinct)
        bad_resumes: list[str] = []
        if args.resume:
            outcomes = resume_sample(report, Path(args.cache), args.resume, out)
            ram = sum(w.startswith("RAM data only") for w in outcomes["resumed"])
            others = len(outcomes["resumed"]) - ram
            refused = len(outcomes["refused by QEMU"])
            print(f"resumed in QEMU   {ram} RAM-data-only saves; of other saves {others}, refused {refused}")
            bad_resumes = outcomes["did not resume"]
            for line in bad_resumes:
                print(f"  did not resume (must be none): {line}")
        return 1 if report.failures or bad_resumes else 0
    finally:
        if own:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
