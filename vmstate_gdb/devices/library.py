"""Device descriptions for streams that carry no VMDESCRIPTION (``suppress-vmdesc``, some savevm paths).

QEMU's JSON trailer is a per-stream copy of each device's vmsd layout. The layout depends only on the
QEMU build and the device's version, so layouts harvested from other streams of the same build
describe a stream without one. Top-level layouts are kept per (idstr tail, section version);
subsections separately per (name, version), because which of them a stream carries depends on the
device's runtime state and the stream itself names each one it carries (0x05, name, version).

A layout is only ever used when it accounts for every byte of the section exactly, subsection
markers included, so a wrong or stale match is refused (the section stays raw), never trusted.

Where layouts come from: the files shipped in ``descriptions/`` (harvested from the QEMUs the suite
runs, ``tools/harvest_descriptions.py``) and those the user adds with ``vmstate learn`` (in
``$VMSTATE_DESCRIPTIONS`` or ``~/.local/share/vmstate_gdb/descriptions``).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..stream.index import Section
from ..stream.vmdesc import device_entries

FORMAT = 1
SHIPPED_DIR = Path(__file__).with_name("descriptions")
_SUBSECTION = 0x05
ELASTIC_TYPES = ("virtio",)
_MAX_DEPTH = 16

Read = Callable[[int, int], bytes]


def user_dir() -> Path:
    env = os.environ.get("VMSTATE_DESCRIPTIONS")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "vmstate_gdb" / "descriptions"


def _canon(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _fields_size(fields: list[dict]) -> int:
    total = 0
    for f in fields:
        size, count = f.get("size", 0), f.get("array_len", 1)
        if not isinstance(size, int) or not isinstance(count, int) or size < 0 or count < 0:
            raise ValueError("bad field size")
        total += size * count
    return total


@dataclass
class Layout:
    """One vmsd's own fields (subsections apart), and where it was learned."""

    vmsd_name: str
    version: int
    fields: list[dict]
    sources: list[str]
    size: int = 0

    def __post_init__(self) -> None:
        self.size = _fields_size(self.fields)

    @property
    def builds(self) -> set[str]:
        return {build_of(s) for s in self.sources}


@dataclass
class Match:
    description: dict  # shaped like a VMDESCRIPTION "devices" entry
    source: str  # the QEMU build / file the layout was learned from


@dataclass
class Library:
    sections: dict[str, list[Layout]] = field(default_factory=dict)  # "tail@version"
    subsections: dict[str, list[Layout]] = field(default_factory=dict)  # "name@version"
    sources: list[str] = field(default_factory=list)
    _seen: dict[tuple[str, str], Layout] = field(default_factory=dict)

    # -- learning -------------------------------------------------------------------------------

    def add_vmdesc(self, vmdesc: dict, source: str) -> int:
        """Take every device layout of one VMDESCRIPTION; returns how many were new."""
        new = 0
        for dev in device_entries(vmdesc):
            name, vmsd = dev.get("name"), dev.get("vmsd_name")
            if not isinstance(name, str) or not isinstance(vmsd, str):
                continue
            version = dev.get("version")
            if not isinstance(version, int):
                continue
            new += self._add(self.sections, f"{tail(name)}@{version}", dev, source)
            new += self._add_subsections(dev, source, 0)
        if source not in self.sources:
            self.sources.append(source)
        return new

    def _add_subsections(self, vmsd: dict, source: str, depth: int) -> int:
        new = 0
        subs = vmsd.get("subsections", ())
        if depth > _MAX_DEPTH or not isinstance(subs, list):
            return 0
        for sub in subs:
            if isinstance(sub, dict) and isinstance(sub.get("vmsd_name"), str):
                if isinstance(sub.get("version"), int):
                    new += self._add(self.subsections, f"{sub['vmsd_name']}@{sub['version']}", sub, source)
                new += self._add_subsections(sub, source, depth + 1)
        return new

    def _add(self, table: dict[str, list[Layout]], key: str, vmsd: dict, *sources: str) -> int:
        fields = vmsd.get("fields", [])
        if not isinstance(fields, list):
            return 0
        sig = _canon(fields)
        known = self._seen.get((key, sig))
        if known is not None:
            known.sources += [s for s in sources if s not in known.sources]
            return 0
        try:
            layout = Layout(vmsd["vmsd_name"], vmsd["version"], fields, list(sources))
        except (ValueError, TypeError, AttributeError, KeyError):
            return 0
        self._seen[(key, sig)] = layout
        table.setdefault(key, []).append(layout)
        return 1

    # -- files ----------------------------------------------------------------------------------

    def to_json(self) -> dict:
        def dump(table: dict[str, list[Layout]]) -> dict:
            return {
                k: [
                    {"vmsd_name": x.vmsd_name, "version": x.version, "fields": x.fields, "sources": x.sources}
                    for x in v
                ]
                for k, v in sorted(table.items())
            }

        return {
            "format": FORMAT,
            "sources": self.sources,
            "sections": dump(self.sections),
            "subsections": dump(self.subsections),
        }

    def merge_json(self, data: dict) -> None:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError("not a vmstate_gdb description library (format 1)")
        for table_name, table in (("sections", self.sections), ("subsections", self.subsections)):
            for key, layouts in data.get(table_name, {}).items():
                for x in layouts:
                    srcs = x.get("sources")
                    self._add(table, key, x, *(srcs if isinstance(srcs, list) else ["?"]))
        for s in data.get("sources", []):
            if s not in self.sources:
                self.sources.append(s)

    # -- describing -----------------------------------------------------------------------------

    def describe_all(
        self, sections: list[Section], read: Read, machine: str | None = None
    ) -> dict[int, Match]:
        """Describe every section, preferring the QEMU build that fits the most of them: a few
        layouts changed names but not sizes between builds (hpet's num_timers), and only the
        stream as a whole tells which build wrote it. Keyed by position in ``sections``."""
        for layouts in self.sections.values():
            for layout in layouts:
                for src in layout.sources:
                    if machine and machine in src.split():
                        return self._describe_each(sections, read, build_of(src))
        votes: dict[str, int] = {}
        for sec in sections:
            builds: set[str] = set()
            for layout in self._fitting(sec, read, None):
                builds |= layout.builds
            for b in builds:
                votes[b] = votes.get(b, 0) + 1
        best = max(votes.values(), default=0)
        leaders = [b for b, v in votes.items() if v == best]
        return self._describe_each(sections, read, leaders[0] if len(leaders) == 1 else None)

    def _describe_each(self, sections: list[Section], read: Read, prefer: str | None) -> dict[int, Match]:
        out: dict[int, Match] = {}
        for i, sec in enumerate(sections):
            m = self.describe(sec, read, prefer)
            if m is not None:
                out[i] = m
        return out

    def _fitting(self, sec: Section, read: Read, prefer: str | None):
        for layout in self._ordered(self.sections.get(f"{tail(sec.idstr)}@{sec.version_id}", ()), prefer):
            if self._fit(sec, layout, read, prefer) is not None:
                yield layout

    def describe(self, sec: Section, read: Read, prefer: str | None = None) -> Match | None:
        """A description that accounts for every byte of ``sec``'s body, or None."""
        for layout in self._ordered(self.sections.get(f"{tail(sec.idstr)}@{sec.version_id}", ()), prefer):
            desc = self._fit(sec, layout, read, prefer)
            if desc is not None:
                builds = sorted(layout.builds)
                source = prefer if prefer in builds else (builds[-1] if builds else "?")
                return Match(desc, source)
        return None

    @staticmethod
    def _ordered(layouts, prefer: str | None) -> list[Layout]:
        return sorted(layouts, key=lambda x: prefer not in x.builds) if prefer else list(layouts)

    def _fit(self, sec: Section, layout: Layout, read: Read, prefer: str | None) -> dict | None:
        elastic = _elastic(layout, sec.body_size)
        if elastic is not None:
            return _entry(sec, layout, elastic)
        end = sec.body_offset + layout.size
        if end > sec.body_end:
            return None
        found = self._subsections(layout.vmsd_name, layout.vmsd_name, end, sec.body_end, read, 0, prefer)
        if found is None or found[1] != sec.body_end:
            return None
        desc = _entry(sec, layout, layout.fields)
        if found[0]:
            desc["subsections"] = found[0]
        return desc

    def _subsections(
        self, top: str, parent: str, pos: int, limit: int, read: Read, depth: int, prefer: str | None
    ) -> tuple[list[dict], int] | None:
        """Follow the subsection markers the stream carries after a vmsd's fields (QEMU's
        vmstate_subsection_load: a marker whose name does not start with the parent's name ends
        this level and belongs to an outer one)."""
        out: list[dict] = []
        while pos < limit and depth <= _MAX_DEPTH:
            marker = _marker(read, pos, limit)
            if marker is None:
                break
            name, version, body = marker
            if not name.startswith(parent):
                break
            for layout in self._ordered(self.subsections.get(f"{name}@{version}", ()), prefer):
                end = body + layout.size
                if end > limit:
                    continue
                inner = self._subsections(top, name, end, limit, read, depth + 1, prefer)
                if inner is None:
                    continue
                subs, after = inner
                # What follows must be the body's end or another marker of this device.
                if after != limit:
                    nxt = _marker(read, after, limit)
                    if nxt is None or not nxt[0].startswith(top):
                        continue
                entry = {"vmsd_name": name, "version": version, "fields": layout.fields}
                if subs:
                    entry["subsections"] = subs
                out.append(entry)
                pos = after
                break
            else:
                return None  # a subsection no learned layout fits
        return out, pos


def build_of(source: str) -> str:
    """'QEMU 10.0.2 pc-q35-10.0' -> 'QEMU 10.0.2': layouts belong to a build, not a machine."""
    m = re.match(r"QEMU \S+", source)
    return m.group(0) if m else source


def _entry(sec: Section, layout: Layout, fields: list[dict]) -> dict:
    return {
        "name": sec.idstr,
        "instance_id": sec.instance_id,
        "vmsd_name": layout.vmsd_name,
        "version": layout.version,
        "fields": fields,
    }


def _elastic(layout: Layout, body_size: int) -> list[dict] | None:
    """A virtio device's section is its fixed fields and then one `virtio` blob whose length is the
    device's runtime state (queues in use, filter tables): the rest of the body. Its own
    subsections are inside the blob, where the virtio decoder reads them."""
    fields = layout.fields
    if not fields or fields[-1].get("type") not in ELASTIC_TYPES or "array_len" in fields[-1]:
        return None
    fixed = _fields_size(fields[:-1])
    if fixed >= body_size:
        return None
    return [*fields[:-1], {**fields[-1], "size": body_size - fixed}]


def tail(idstr: str) -> str:
    """'0000:00:03.0/e1000' -> 'e1000': the part of an idstr that names the device model."""
    return idstr.rsplit("/", 1)[-1]


def _marker(read: Read, pos: int, limit: int) -> tuple[str, int, int] | None:
    """(name, version, body offset) of a subsection marker at ``pos``, or None."""
    if pos + 2 > limit:
        return None
    head = read(pos, 2)
    if len(head) < 2 or head[0] != _SUBSECTION:
        return None
    n = head[1]
    if pos + 2 + n + 4 > limit:
        return None
    raw = read(pos + 2, n + 4)
    name = raw[:n]
    if not name or any(c < 0x20 or c > 0x7E for c in name):
        return None
    (version,) = struct.unpack(">I", raw[n:])
    return name.decode("ascii"), version, pos + 2 + n + 4


def _files(dirs: Iterable[Path]) -> list[Path]:
    out: list[Path] = []
    for d in dirs:
        if d.is_dir():
            out += sorted(p for p in d.iterdir() if p.name.endswith((".json", ".json.gz")))
    return out


def read_file(path: Path) -> dict:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return json.loads(raw)


_cached: tuple[tuple, Library] | None = None


def load() -> Library:
    """The user's layouts first (they were learned from the user's own QEMU), then the shipped ones.
    A damaged user file is skipped with nothing worse than a missing description."""
    global _cached
    files = _files([user_dir(), SHIPPED_DIR])
    stamp = tuple((str(p), _mtime(p)) for p in files)
    if _cached is not None and _cached[0] == stamp:
        return _cached[1]
    lib = Library()
    for p in files:
        try:
            lib.merge_json(read_file(p))
        except (OSError, ValueError, EOFError, TypeError, AttributeError, KeyError):
            continue
    _cached = (stamp, lib)
    return lib


def _mtime(p: Path) -> int:
    try:
        return p.stat().st_mtime_ns
    except OSError:
        return 0
