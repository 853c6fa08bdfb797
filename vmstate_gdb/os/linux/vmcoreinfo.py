"""VMCOREINFO: the note in which Linux describes itself for crash dumps (kernel/crash_core.c).

It names the release and build id, the KASLR offset, and the addresses drgn needs to start with no
debug info: swapper_pg_dir for page walks, and since Linux 6.0 (commit 5fd8fea935a1 "vmcoreinfo:
include kallsyms symbols") the kallsyms tables.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import VmstateError

if TYPE_CHECKING:
    from ...snapshot import Snapshot

NOTE_HEADER = struct.Struct("<III")  # namesz, descsz, type
NAME = b"VMCOREINFO"
# hw/nvram/fw_cfg.h: FW_CFG_VMCOREINFO_FORMAT_ELF, the format Linux writes to etc/vmcoreinfo
FW_CFG_VMCOREINFO_FORMAT_ELF = 1
_FIELD = re.compile(r"^([A-Z_-]+)(?:\(([^)]*)\))?=(.*)$")


def _align4(n: int) -> int:
    return (n + 3) & ~3


@dataclass
class VmcoreInfo:
    note: bytes  # the complete ELF note, as the guest wrote it
    source: str  # where it came from, for the report

    @classmethod
    def from_text(cls, text: str, source: str) -> VmcoreInfo:
        """From the note's text alone (drgn's ``prog["VMCOREINFO"]``)."""
        desc = text.encode()
        head = NOTE_HEADER.pack(len(NAME) + 1, len(desc), 0)
        name = (NAME + b"\0").ljust(_align4(len(NAME) + 1), b"\0")
        return cls(head + name + desc.ljust(_align4(len(desc)), b"\0"), source)

    @property
    def text(self) -> str:
        namesz, descsz, _ = NOTE_HEADER.unpack_from(self.note)
        start = NOTE_HEADER.size + _align4(namesz)
        return self.note[start : start + descsz].decode("ascii", "replace")

    @cached_property
    def fields(self) -> dict[str, str]:
        """``KEY`` or ``KEY(name)`` -> value text, e.g. ``SYMBOL(_stext)`` -> ``ffffffff81000000``."""
        out = {}
        for line in self.text.splitlines():
            m = _FIELD.match(line.strip())
            if m:
                key = m.group(1) if m.group(2) is None else f"{m.group(1)}({m.group(2)})"
                out[key] = m.group(3)
        return out

    def symbol(self, name: str) -> int | None:
        value = self.fields.get(f"SYMBOL({name})")
        return int(value, 16) if value else None

    def number(self, name: str) -> int | None:
        value = self.fields.get(f"NUMBER({name})")
        return int(value, 0) if value else None

    @property
    def release(self) -> str:
        return self.fields.get("OSRELEASE", "")

    @property
    def build_id(self) -> str:
        return self.fields.get("BUILD-ID", "")

    @property
    def kaslr_offset(self) -> int:
        return int(self.fields.get("KERNELOFFSET", "0"), 16)


def _parse_note(data: bytes) -> bytes | None:
    if len(data) < NOTE_HEADER.size:
        return None
    namesz, descsz, _ = NOTE_HEADER.unpack_from(data)
    size = NOTE_HEADER.size + _align4(namesz) + _align4(descsz)
    if namesz == 0 or namesz > 64 or descsz > 1 << 20 or size > len(data):
        return None
    return data[:size]


def _note_at(snap: Snapshot, head: int) -> bytes | None:
    try:
        namesz, descsz, ntype = NOTE_HEADER.unpack(snap.physical.read(head, NOTE_HEADER.size))
    except VmstateError:
        return None
    if namesz != len(NAME) + 1 or ntype != 0 or not 0 < descsz <= 1 << 16:
        return None
    size = NOTE_HEADER.size + 12 + _align4(descsz)
    note = snap.physical.readable_prefix(head, size)
    if len(note) != size or note[NOTE_HEADER.size : NOTE_HEADER.size + 10] != NAME:
        return None
    return note


#: a hint saying the file's RAM holds no note (a guest that is not Linux): no second search
NO_NOTE = -1


def _hint_key(snap: Snapshot) -> str | None:
    try:
        st = os.stat(snap.path)
    except OSError:
        return None
    where = json.dumps(snap.source.describe(), sort_keys=True, default=str)
    text = f"{os.path.realpath(snap.path)}\0{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}\0{where}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _hints_path() -> Path:
    from .symbols import cache_dir

    return cache_dir() / "linux" / "vmcoreinfo-hints.json"


def _load_hints() -> dict[str, int]:
    try:
        hints = json.loads(_hints_path().read_text())
        return {k: int(v) for k, v in hints.items()} if isinstance(hints, dict) else {}
    except (OSError, ValueError, TypeError):
        return {}


def _remember(key: str, head: int) -> None:
    """Where the note of this (unchanged) file is, so the next open skips the RAM search; the
    hint is checked before use and never needed."""
    from .symbols import _store

    hints = _load_hints()
    hints.pop(key, None)
    hints[key] = head
    keep = dict(list(hints.items())[-256:])
    _store(_hints_path(), json.dumps(keep).encode())


def find_vmcoreinfo(snap: Snapshot) -> VmcoreInfo | None:
    """The guest's VMCOREINFO note: from the `vmcoreinfo` device (fw_cfg etc/vmcoreinfo, filled by
    Linux when QEMU runs with -device vmcoreinfo), else the note Linux keeps in RAM, found like
    crash finds it: the note header "VMCOREINFO" followed by "OSRELEASE=" (where the same file's
    last open found it, first)."""
    has_device = any(sec.idstr == "vmcoreinfo" for sec in snap.index.devices)
    dev = snap.devices.device("vmcoreinfo") if has_device else None  # the tree costs a JSON parse
    if dev is not None:
        try:
            present = snap.field_value(f"{dev.key}/has_vmcoreinfo")
            fmt = snap.field_value(f"{dev.key}/vmcoreinfo.guest_format")
            size = snap.field_value(f"{dev.key}/vmcoreinfo.size")
            paddr = snap.field_value(f"{dev.key}/vmcoreinfo.paddr")
            if present and fmt == FW_CFG_VMCOREINFO_FORMAT_ELF and 0 < size <= 1 << 20:
                note = _parse_note(snap.physical.read(paddr, size))
                if note is not None:
                    return VmcoreInfo(note, f"fw_cfg etc/vmcoreinfo at physical {paddr:#x}")
        except VmstateError:
            pass
    key = _hint_key(snap)
    hint = _load_hints().get(key) if key else None
    if hint == NO_NOTE:
        return None  # this unchanged file was searched before
    if hint is not None:
        note = _note_at(snap, hint)
        if note is not None:
            return VmcoreInfo(note, f"found in RAM at physical {hint:#x}")
    marker = NAME + b"\0\0OSRELEASE="  # name padded to 4 bytes, then the text
    for r in snap.physical.ranges:
        if r.kind != "ram":
            continue
        pos = r.start
        while True:
            hit = snap.physical.search(marker, pos, r.end)
            if hit is None:
                break
            head = hit - NOTE_HEADER.size
            note = _note_at(snap, head) if head >= r.start else None
            if note is not None:
                if key:
                    _remember(key, head)
                return VmcoreInfo(note, f"found in RAM at physical {head:#x}")
            pos = hit + 1
    if key:
        _remember(key, NO_NOTE)
    return None
