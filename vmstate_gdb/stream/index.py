"""Walk a migration stream once and index it: sections, RAM pages, device bodies, the JSON trailer.

Nothing here copies guest data; the result holds offsets into the stream.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import FormatError, UnsupportedError, VmstateError
from . import constants as C
from .cursor import Cursor
from .ram import RELEASE_EVERY, RamState, parse_ram_chunk, parse_ram_setup
from .vmdesc import device_entries, locate_trailer, vmsd_wire_size

Progress = Callable[[int, int], None]


@dataclass
class Section:
    """One START/PART/END/FULL section. Offsets are stream offsets."""

    kind: int  # QEMU_VM_SECTION_*
    section_id: int
    idstr: str
    instance_id: int
    version_id: int
    header_offset: int
    body_offset: int
    body_end: int  # where the footer (or the next item, without footers) begins
    description: dict | None = None  # the JSON "devices" entry, FULL sections only

    @property
    def kind_name(self) -> str:
        return C.SECTION_TYPE_NAMES.get(self.kind, hex(self.kind))

    @property
    def body_size(self) -> int:
        return self.body_end - self.body_offset


@dataclass
class Command:
    offset: int
    cmd: int
    data: bytes

    @property
    def name(self) -> str:
        return C.MIG_CMD_NAMES.get(self.cmd, f"#{self.cmd}")


@dataclass
class StreamIndex:
    path: str
    size: int
    machine_type: str
    configuration_offset: int | None
    configuration_end: int
    capabilities: list[str]
    page_size: int
    ram: RamState
    sections: list[Section] = field(default_factory=list)
    commands: list[Command] = field(default_factory=list)
    eof_offset: int = 0
    vmdesc_offset: int | None = None
    vmdesc: dict | None = None
    footers: bool = True
    warnings: list[str] = field(default_factory=list)

    @property
    def devices(self) -> list[Section]:
        return [s for s in self.sections if s.kind == C.QEMU_VM_SECTION_FULL]

    def find(self, idstr: str, instance_id: int = 0) -> Section | None:
        for s in self.devices:
            if s.idstr == idstr and s.instance_id == instance_id:
                return s
        return None


def index_stream(
    buf,
    path: str,
    origin: int = 0,
    channel_base: int = 0,
    progress: Progress | None = None,
    release: Callable[[int, int], None] | None = None,
    allocate=None,
) -> StreamIndex:
    """Index the stream held in ``buf`` (a memoryview or a sliceable container view).

    ``release(offset, length)`` lets go of stream bytes the scan has passed; ``allocate`` is where
    the page arrays are kept (see :attr:`RamState.allocate`), with a ``release()`` of its own.

    ``origin`` is added to offsets in error messages (file offset of stream byte 0);
    ``channel_base`` converts mapped-ram's absolute channel offsets to stream offsets.
    """
    cur = Cursor(buf, path, 0, origin)
    try:
        return _Walker(cur, channel_base, progress, release, allocate).run()
    except VmstateError:
        raise
    except (IndexError, ValueError, KeyError, TypeError) as e:  # a bug or a lie we did not foresee
        raise cur.fail(f"cannot parse stream: {e}") from e


class _Walker:
    def __init__(
        self,
        cur: Cursor,
        channel_base: int,
        progress: Progress | None,
        release: Callable[[int, int], None] | None,
        allocate=None,
    ):
        self.allocate = allocate
        self.cur = cur
        self.channel_base = channel_base
        self.progress = progress
        self.release = release
        self.released = 0

    def checkpoint(self, pos: int) -> None:
        """Long RAM sections report progress, and hand back the pages they have read."""
        if self.progress:
            self.progress(pos, self.cur.size)
        if pos > self.released:
            if self.release:
                self.release(self.released, pos - self.released)
            if self.allocate is not None:
                self.allocate.release()
            self.released = pos

    def run(self) -> StreamIndex:
        cur = self.cur
        if cur.size < 8:
            raise cur.fail(f"not a QEMU migration stream: only {cur.size} bytes", 0)
        magic, version = cur.be32(), cur.be32()
        if magic != C.QEMU_VM_FILE_MAGIC:
            raise cur.fail(f"not a QEMU migration stream: starts with {bytes(cur.buf[0:8])!r}", 0)
        if version == C.QEMU_VM_FILE_VERSION_COMPAT:
            raise UnsupportedError(
                "stream format version 2 is obsolete (QEMU < 1.3)", cur.path, 4 + cur.origin
            )
        if version != C.QEMU_VM_FILE_VERSION:
            raise cur.fail(f"stream format version {version} is not 3", 4)

        found = locate_trailer(cur.buf, cur.size)
        vmdesc_offset, vmdesc = found if found else (None, None)
        page_size = int(vmdesc.get("page_size", 4096)) if vmdesc else 4096
        machine, caps, conf_off, page_bits = self._configuration()
        if page_bits is not None:
            page_size = 1 << page_bits
        ram = RamState(
            page_size=page_size,
            mapped_ram="mapped-ram" in caps,
            ignore_shared="x-ignore-shared" in caps,
            checkpoint=self.checkpoint,
            allocate=self.allocate,
        )
        idx = StreamIndex(
            cur.path,
            cur.size,
            machine,
            conf_off,
            cur.pos,
            caps,
            page_size,
            ram,
            vmdesc_offset=vmdesc_offset,
            vmdesc=vmdesc,
        )
        idx.footers = conf_off is not None
        if vmdesc is None:
            idx.warnings.append(
                "no VMDESCRIPTION trailer: devices are named from learned layouts where one fits every "
                "byte (see `vmstate learn`), else shown raw"
            )
        self._sections(idx, device_entries(vmdesc))
        for block in ram.blocks.values():
            block.finish()
        trailing = cur.size - idx.eof_offset - 1
        if vmdesc_offset is not None and vmdesc_offset != idx.eof_offset + 1:
            raise FormatError(
                f"the device sections end (EOF byte) at {idx.eof_offset + cur.origin:#x}, but the "
                f"VMDESCRIPTION starts at {vmdesc_offset + cur.origin:#x}: a section before it is corrupted",
                cur.path,
                idx.eof_offset + cur.origin,
            )
        if trailing and vmdesc_offset is None and cur.buf[idx.eof_offset + 1] != C.QEMU_VM_VMDESCRIPTION:
            raise FormatError(
                f"{trailing} bytes follow the EOF byte and they are not a VMDESCRIPTION: the stream is "
                "corrupted before them",
                cur.path,
                idx.eof_offset + cur.origin,
            )
        if vmdesc is not None and len(device_entries(vmdesc)) != len(idx.devices):
            idx.warnings.append(
                f"the VMDESCRIPTION lists {len(device_entries(vmdesc))} device sections, the stream has "
                f"{len(idx.devices)}"
            )
        if trailing and vmdesc_offset is None:
            idx.warnings.append(
                f"{trailing} bytes after EOF are not a complete VMDESCRIPTION (truncated?); QEMU ignores them"
            )
        return idx

    def _configuration(self) -> tuple[str, list[str], int | None, int | None]:
        cur = self.cur
        if cur.peek_u8() != C.QEMU_VM_CONFIGURATION:
            return "", [], None, None  # machine types <= 2.3 (send-configuration=off)
        conf_off = cur.pos
        cur.u8()
        name_len = cur.be32("machine type length")
        if name_len > 255:
            raise cur.fail(f"machine type name of {name_len} bytes", cur.pos - 4)
        raw = cur.take(name_len, "machine type")
        machine = raw.decode("ascii", "replace")
        caps: list[str] = []
        page_bits = None
        while cur.peek_u8() == C.QEMU_VM_SUBSECTION:
            start = cur.pos
            cur.u8()
            name = cur.counted_string("configuration subsection name")
            cur.be32("subsection version")
            if name == "configuration/target-page-bits":
                page_bits = cur.be32("target page bits")
            elif name == "configuration/capabilities":
                for _ in range(cur.be32("capability count")):
                    caps.append(cur.counted_string("capability name"))
            elif name == "configuration/uuid":
                cur.skip(16, "uuid")
            else:
                raise UnsupportedError(
                    f"unknown configuration subsection {name!r}", cur.path, start + cur.origin
                )
        unsupported = {"postcopy-ram", "dirty-bitmaps", "x-colo"} & set(caps)
        if unsupported:
            raise UnsupportedError(
                f"capability {sorted(unsupported)[0]} is not supported", cur.path, conf_off + cur.origin
            )
        return machine, caps, conf_off, page_bits

    def _sections(self, idx: StreamIndex, descriptions: list[dict]) -> None:
        cur = self.cur
        by_id: dict[int, Section] = {}
        desc_pos = 0
        while True:
            # QEMU writes RAM in many short PART sections: the release schedule spans them
            if cur.pos - self.released >= RELEASE_EVERY:
                self.checkpoint(cur.pos)
            start = cur.pos
            kind = cur.u8("section type")
            if kind == C.QEMU_VM_EOF:
                idx.eof_offset = start
                break
            if kind in (C.QEMU_VM_SECTION_START, C.QEMU_VM_SECTION_FULL):
                sid = cur.be32("section id")
                idstr = cur.counted_string("section name")
                instance = cur.be32("instance id")
                version = cur.be32("version id")
                sec = Section(kind, sid, idstr, instance, version, start, cur.pos, cur.pos)
                if kind == C.QEMU_VM_SECTION_START:
                    if idstr != C.RAM_SECTION_IDSTR:
                        raise UnsupportedError(
                            f"iterative section {idstr!r} (block migration, dirty bitmaps or vfio) "
                            "is not supported",
                            cur.path,
                            start + cur.origin,
                        )
                    if version != C.RAM_SECTION_VERSION:
                        raise UnsupportedError(
                            f"RAM section version {version} (only 4 is known)", cur.path, start + cur.origin
                        )
                    parse_ram_setup(cur, idx.ram, self.channel_base)
                    sec.body_end = cur.pos
                    by_id[sid] = sec
                else:
                    desc_pos = self._device_body(sec, descriptions, desc_pos, idx)
                self._footer(sec, idx)
                idx.sections.append(sec)
            elif kind in (C.QEMU_VM_SECTION_PART, C.QEMU_VM_SECTION_END):
                sid = cur.be32("section id")
                owner = by_id.get(sid)
                if owner is None:
                    raise cur.fail(
                        f"{C.SECTION_TYPE_NAMES[kind]} section for unknown section id {sid}", start
                    )
                sec = Section(
                    kind, sid, owner.idstr, owner.instance_id, owner.version_id, start, cur.pos, cur.pos
                )
                parse_ram_chunk(cur, idx.ram)
                sec.body_end = cur.pos
                self._footer(sec, idx)
                idx.sections.append(sec)
            elif kind == C.QEMU_VM_COMMAND:
                cmd = cur.be16("command")
                length = cur.be16("command length")
                data = cur.take(length, "command data")
                if cmd != C.MIG_CMD_SWITCHOVER_START or length != 0:
                    name = C.MIG_CMD_NAMES.get(cmd, f"unknown command {cmd}")
                    raise UnsupportedError(
                        f"stream command {name} (postcopy/COLO streams) is not supported",
                        cur.path,
                        start + cur.origin,
                    )
                idx.commands.append(Command(start, cmd, data))
            else:
                raise cur.fail(f"unknown section type {kind:#04x}", start)
        if self.progress:
            self.progress(cur.size, cur.size)

    def _device_body(self, sec: Section, descriptions: list[dict], desc_pos: int, idx: StreamIndex) -> int:
        """Find where a FULL body ends: by the JSON sizes, checked against the footer; else by scanning."""
        cur = self.cur
        for j in range(desc_pos, min(desc_pos + 4, len(descriptions))):
            d = descriptions[j]
            if d.get("name") == sec.idstr and d.get("instance_id", 0) == sec.instance_id:
                try:
                    end = sec.body_offset + vmsd_wire_size(d)
                except ValueError:
                    end = -1
                # Where the JSON says the body ends there must be a footer (0x7e); if its id is
                # wrong, the section header is corrupted, which _footer reports. Scanning for a
                # matching id instead could swallow the sections that follow.
                if (
                    end > 0
                    and end < cur.size
                    and (
                        cur.buf[end] == C.QEMU_VM_SECTION_FOOTER if idx.footers else self._valid_item_at(end)
                    )
                ):
                    sec.description = d
                    sec.body_end = end
                    cur.pos = end
                    return j + 1
                idx.warnings.append(
                    f"section {sec.idstr!r}: JSON sizes disagree with the stream; decoded as raw"
                )
                break
        end = self._scan_for_footer(sec)
        sec.body_end = end
        cur.pos = end
        return desc_pos

    def _is_footer(self, pos: int, sid: int) -> bool:
        buf = self.cur.buf
        if pos + 5 > self.cur.size or buf[pos] != C.QEMU_VM_SECTION_FOOTER:
            return False
        return int.from_bytes(buf[pos + 1 : pos + 5], "big") == sid

    def _scan_for_footer(self, sec: Section) -> int:
        """Without a schema, the body ends at the first footer for this id that a valid item follows."""
        cur = self.cur
        needle = bytes([C.QEMU_VM_SECTION_FOOTER]) + sec.section_id.to_bytes(4, "big")
        pos = sec.body_offset
        chunk = 1 << 20
        while pos < cur.size:
            window = bytes(cur.buf[pos : min(cur.size, pos + chunk + 16)])
            hit = window.find(needle)
            while hit != -1:
                at = pos + hit
                if self._valid_item_at(at + 5):
                    return at
                hit = window.find(needle, hit + 1)
            pos += chunk
        raise cur.fail(
            f"section {sec.idstr!r} (instance {sec.instance_id}) has no footer: the stream is "
            "truncated or corrupted",
            sec.header_offset,
        )

    def _valid_item_at(self, pos: int) -> bool:
        buf, size = self.cur.buf, self.cur.size
        if pos >= size:
            return False
        kind = buf[pos]
        if kind == C.QEMU_VM_EOF:
            return pos + 1 == size or buf[pos + 1] == C.QEMU_VM_VMDESCRIPTION
        if kind == C.QEMU_VM_SECTION_FULL and pos + 6 < size:
            n = buf[pos + 5]
            if n == 0 or pos + 6 + n + 8 > size:
                return False
            name = bytes(buf[pos + 6 : pos + 6 + n])
            return all(32 < c < 127 for c in name)
        return kind in (C.QEMU_VM_SECTION_PART, C.QEMU_VM_SECTION_END, C.QEMU_VM_COMMAND)

    def _footer(self, sec: Section, idx: StreamIndex) -> None:
        cur = self.cur
        if not idx.footers and not self._is_footer(cur.pos, sec.section_id):
            return  # machine types <= 2.3 send no footers (and no configuration)
        if cur.peek_u8() != C.QEMU_VM_SECTION_FOOTER:
            raise FormatError(
                f"missing section footer after {sec.idstr!r} (section id {sec.section_id}): the stream is "
                "corrupted here",
                cur.path,
                cur.pos + cur.origin,
            )
        at = cur.pos
        cur.u8()
        sid = cur.be32("footer section id")
        if sid != sec.section_id:
            raise cur.fail(
                f"footer of section {sec.idstr!r} names section id {sid}, expected {sec.section_id}", at
            )
