"""What the Linux test guest printed about itself before the stop (tests/linux/init.sh's report,
kept in the snapshot's .meta.json as the console): the oracle for `vmstate linux`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER_BINARY = ROOT / "tests/linux/build/marker"
MARKER_GLOBAL = 0x5EED0001C0FFEE00
CHILD_GLOBAL = 0x5EED0002C0FFEE00


@dataclass
class StatLine:
    """One /proc/TID/stat line (proc(5)): field 3 state, 4 ppid, 39 processor."""

    tid: int
    comm: str
    state: str
    ppid: int
    processor: int

    @classmethod
    def parse(cls, line: str) -> StatLine:
        head, _, tail = line.rpartition(")")
        tid, _, comm = head.partition(" (")
        rest = tail.split()
        return cls(int(tid), comm, rest[0], int(rest[1]), int(rest[36]))


@dataclass
class GuestReport:
    stat: dict[int, StatLine] = field(default_factory=dict)
    maps: dict[int, list[str]] = field(default_factory=dict)
    fds: dict[int, dict[int, str]] = field(default_factory=dict)
    modules: list[str] = field(default_factory=list)
    dmesg: str = ""
    parent: int = 0  # the marker process
    child: int = 0  # its forked child


def guest_report(console: str) -> GuestReport:
    lines = [ln.rstrip("\r") for ln in console.splitlines()]
    try:
        start, end = lines.index("GUEST-REPORT-BEGIN"), lines.index("GUEST-REPORT-END")
    except ValueError:
        raise AssertionError(
            "the guest printed no report (GUEST-REPORT-BEGIN..END) before the stop"
        ) from None
    report = GuestReport()
    section, pid = "", 0
    for line in lines[start + 1 : end]:
        if line.startswith("@"):
            section, _, arg = line[1:].partition(" ")
            pid = int(arg) if arg else 0
            if section == "maps" and not report.parent:
                report.parent = pid
            elif section == "maps":
                report.child = pid
            continue
        if not line.strip() or line.startswith("MARKER"):  # the marker prints on the same console
            continue
        if section == "stat":
            s = StatLine.parse(line)
            report.stat[s.tid] = s
        elif section == "maps":
            report.maps.setdefault(pid, []).append(line)
        elif section == "fd":
            fd, _, target = line.partition(" ")
            report.fds.setdefault(pid, {})[int(fd)] = target
        elif section == "modules":
            report.modules.append(line)
        elif section == "dmesg":
            report.dmesg = line
    return report


def marker_lines(text: str, role: str = "parent") -> list[dict[str, str]]:
    """MARKER lines of the marker process (marker.c), as dicts of their key=value fields."""
    out = []
    for m in re.finditer(rf"^MARKER {role} (.*)$", text, re.M):
        out.append(dict(kv.split("=", 1) for kv in m[1].strip().split()))
    return out
