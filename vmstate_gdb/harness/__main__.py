"""``python -m vmstate_gdb.harness``: list scenarios, build a snapshot, print how to resume one.

python -m vmstate_gdb.harness list
python -m vmstate_gdb.harness build small-pc-e1000 /tmp/snaps
python -m vmstate_gdb.harness resume-command /tmp/snaps/small-pc-e1000.vmstate
"""

from __future__ import annotations

import argparse
import json
import sys

from vmstate_gdb.errors import QemuError
from vmstate_gdb.harness.scenarios import KVM_SCENARIOS, SCENARIOS, build_snapshot
from vmstate_gdb.harness.snapshot import Snapshot


def main(argv: list[str] | None = None) -> int:
    catalogue = {**SCENARIOS, **KVM_SCENARIOS}
    parser = argparse.ArgumentParser(prog="python -m vmstate_gdb.harness", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the scenario catalogue")
    build = sub.add_parser("build", help="boot a scenario's VM and snapshot it into DIR")
    build.add_argument("scenario", choices=sorted(catalogue))
    build.add_argument("directory")
    build.add_argument("--no-reuse", action="store_true", help="rebuild even if a matching one exists")
    resume = sub.add_parser("resume-command", help="print the argv and QMP commands that resume a snapshot")
    resume.add_argument("snapshot", help="snapshot file or its .meta.json")
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            for name, s in catalogue.items():
                c = s.config
                nics = "+".join(n.model for n in c.nics) or "no NIC"
                print(
                    f"{name:34s} {c.kind:6s} {c.machine:4s} {c.cpus} cpu {c.memory_mib:5d} MiB "
                    f"{nics:32s} qemu {c.qemu:4s} {s.method}" + (" (kvm)" if c.accel == "kvm" else "")
                )
        elif args.command == "build":
            snap = build_snapshot(catalogue[args.scenario], args.directory, reuse=not args.no_reuse)
            print(f"{snap.path}\n{snap.meta_path}")
        elif args.command == "resume-command":
            snap = Snapshot.load(args.snapshot)
            print(snap.resume_command())
            for command in snap.resume_qmp:
                print("# then on QMP:", json.dumps(command))
    except QemuError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
