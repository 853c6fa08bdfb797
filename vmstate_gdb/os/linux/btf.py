"""The BPF Type Format (BTF) blob a kernel built with CONFIG_DEBUG_INFO_BTF keeps in memory.

The kernel links its deduplicated type information between ``__start_BTF`` and ``__stop_BTF``; it
describes every type, every function's prototype and the per-CPU variables (pahole before 1.26
emits no other variables). Layout and constants are those of include/uapi/linux/btf.h.

This module only reads the format: a one-pass index of type offsets and names, then records
decoded on demand. Turning them into drgn types is btf_types.py's job.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ...errors import FormatError

BTF_MAGIC = 0xEB9F
BTF_VERSION = 1
HEADER = struct.Struct("<HBBIIIII")  # magic, version, flags, hdr_len, type_off, type_len, str_off, str_len
TYPE = struct.Struct("<III")  # name_off, info, size_or_type

BTF_KIND_INT = 1
BTF_KIND_PTR = 2
BTF_KIND_ARRAY = 3
BTF_KIND_STRUCT = 4
BTF_KIND_UNION = 5
BTF_KIND_ENUM = 6
BTF_KIND_FWD = 7
BTF_KIND_TYPEDEF = 8
BTF_KIND_VOLATILE = 9
BTF_KIND_CONST = 10
BTF_KIND_RESTRICT = 11
BTF_KIND_FUNC = 12
BTF_KIND_FUNC_PROTO = 13
BTF_KIND_VAR = 14
BTF_KIND_DATASEC = 15
BTF_KIND_FLOAT = 16
BTF_KIND_DECL_TAG = 17
BTF_KIND_TYPE_TAG = 18
BTF_KIND_ENUM64 = 19

KIND_NAMES = {
    BTF_KIND_INT: "int",
    BTF_KIND_PTR: "ptr",
    BTF_KIND_ARRAY: "array",
    BTF_KIND_STRUCT: "struct",
    BTF_KIND_UNION: "union",
    BTF_KIND_ENUM: "enum",
    BTF_KIND_FWD: "fwd",
    BTF_KIND_TYPEDEF: "typedef",
    BTF_KIND_VOLATILE: "volatile",
    BTF_KIND_CONST: "const",
    BTF_KIND_RESTRICT: "restrict",
    BTF_KIND_FUNC: "func",
    BTF_KIND_FUNC_PROTO: "func_proto",
    BTF_KIND_VAR: "var",
    BTF_KIND_DATASEC: "datasec",
    BTF_KIND_FLOAT: "float",
    BTF_KIND_DECL_TAG: "decl_tag",
    BTF_KIND_TYPE_TAG: "type_tag",
    BTF_KIND_ENUM64: "enum64",
}

# BTF_INT_ENCODING bits
BTF_INT_SIGNED = 1
BTF_INT_CHAR = 2
BTF_INT_BOOL = 4

#: bytes after the 12-byte btf_type header: (fixed, per vlen entry)
_TRAILER = {
    BTF_KIND_INT: (4, 0),
    BTF_KIND_ARRAY: (12, 0),
    BTF_KIND_STRUCT: (0, 12),
    BTF_KIND_UNION: (0, 12),
    BTF_KIND_ENUM: (0, 8),
    BTF_KIND_FUNC_PROTO: (0, 8),
    BTF_KIND_VAR: (4, 0),
    BTF_KIND_DATASEC: (0, 12),
    BTF_KIND_DECL_TAG: (4, 0),
    BTF_KIND_ENUM64: (0, 12),
}
_NO_TRAILER = (0, 0)
_SIZED = {BTF_KIND_INT, BTF_KIND_STRUCT, BTF_KIND_UNION, BTF_KIND_ENUM, BTF_KIND_DATASEC, BTF_KIND_FLOAT}
_SIZED.add(BTF_KIND_ENUM64)


@dataclass
class Member:
    name: str
    type: int
    bit_offset: int
    bit_size: int = 0  # 0: not a bit field


@dataclass
class BtfType:
    """One decoded record. ``size`` for sized kinds, ``type`` for the kinds that refer to another."""

    id: int
    kind: int
    name: str
    kind_flag: bool
    size: int = 0
    type: int = 0
    # INT
    encoding: int = 0
    int_bits: int = 0
    int_offset: int = 0
    # ARRAY
    index_type: int = 0
    nelems: int = 0
    # STRUCT / UNION
    members: list[Member] = field(default_factory=list)
    # ENUM / ENUM64: (name, value) with the value already signed or unsigned as the enum is
    enumerators: list[tuple[str, int]] = field(default_factory=list)
    # FUNC_PROTO: (name, type); a last parameter of type 0 marks a variadic function
    params: list[tuple[str, int]] = field(default_factory=list)
    # FUNC: linkage in vlen; VAR: linkage
    linkage: int = 0
    # DATASEC: (var type, offset, size)
    entries: list[tuple[int, int, int]] = field(default_factory=list)

    @property
    def kind_name(self) -> str:
        return KIND_NAMES.get(self.kind, str(self.kind))


class Btf:
    """A BTF blob: ``Btf(data, source)``; ``source`` names where it came from in error messages."""

    def __init__(self, data: bytes, source: str = "BTF"):
        self.data = bytes(data)
        self.source = source
        if len(self.data) < HEADER.size:
            raise FormatError(f"BTF blob of {len(self.data)} bytes is shorter than its header", source, 0)
        magic, version, _flags, hdr_len, type_off, type_len, str_off, str_len = HEADER.unpack_from(self.data)
        if magic != BTF_MAGIC:
            raise FormatError(f"no BTF magic (found {magic:#06x}, expected {BTF_MAGIC:#06x})", source, 0)
        if version != BTF_VERSION:
            raise FormatError(f"BTF version {version} (this reader knows version {BTF_VERSION})", source, 2)
        types_start = hdr_len + type_off
        strings_start = hdr_len + str_off
        if (
            hdr_len < HEADER.size
            or types_start + type_len > len(self.data)
            or (strings_start + str_len > len(self.data))
        ):
            raise FormatError(
                f"BTF header's sections (types {type_len} bytes at {types_start:#x}, strings {str_len} "
                f"at {strings_start:#x}) run past the blob's {len(self.data)} bytes",
                source,
                0,
            )
        self._strings = (strings_start, strings_start + str_len)
        self._offsets = self._scan(types_start, types_start + type_len)
        self._cache: dict[int, BtfType] = {}
        self._by_name: dict[tuple[int, str], list[int]] | None = None

    # -- index ----------------------------------------------------------------------------------

    def _scan(self, pos: int, end: int) -> list[int]:
        """Offsets of every type record, in id order (index 0 is void)."""
        data = self.data
        offsets = [0]
        kinds = bytearray(1)  # kind of each id, for lookups that need no decoding
        name_offsets = [0]
        unpack = TYPE.unpack_from
        flagged = False
        while pos < end:
            if pos + TYPE.size > end:
                raise FormatError("BTF type record cut off by the end of the type section", self.source, pos)
            name_off, info, _ = unpack(data, pos)
            kind = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            trailer = _TRAILER.get(kind, _NO_TRAILER)
            if kind == 0 or kind > BTF_KIND_ENUM64:
                raise FormatError(f"BTF type {len(offsets)} has unknown kind {kind}", self.source, pos)
            offsets.append(pos)
            kinds.append(kind)
            name_offsets.append(name_off)
            if kind in (BTF_KIND_ENUM, BTF_KIND_ENUM64) and info >> 31:
                flagged = True
            pos += TYPE.size + trailer[0] + trailer[1] * vlen
        if pos != end:
            raise FormatError("BTF type records run past the type section", self.source, end)
        self._enum_signedness_flagged = flagged
        self._kinds = bytes(kinds)
        self._name_offsets = name_offsets
        return offsets

    def __len__(self) -> int:
        """Number of type ids, void (0) included."""
        return len(self._offsets)

    def string(self, offset: int) -> str:
        start, end = self._strings
        pos = start + offset
        if not start <= pos < end:
            raise FormatError(
                f"BTF string offset {offset:#x} is outside the string section", self.source, pos
            )
        stop = self.data.find(b"\0", pos, end)
        if stop < 0:
            raise FormatError("unterminated BTF string", self.source, pos)
        return self.data[pos:stop].decode("utf-8", "replace")

    def kind(self, type_id: int) -> int:
        self._check_id(type_id)
        return self._kinds[type_id]

    def ids_of_kind(self, *kinds: int) -> list[int]:
        return [i for i, k in enumerate(self._kinds) if k in kinds]

    def name(self, type_id: int) -> str:
        self._check_id(type_id)
        if type_id == 0:
            return "void"
        return self.string(TYPE.unpack_from(self.data, self._offsets[type_id])[0])

    def _check_id(self, type_id: int) -> None:
        if not 0 <= type_id < len(self._offsets):
            raise FormatError(
                f"BTF refers to type id {type_id}; the blob has ids 0..{len(self._offsets) - 1}", self.source
            )

    def names(self) -> dict[tuple[int, str], list[int]]:
        """(kind, name) -> the ids of that name, complete definitions before forward declarations."""
        if self._by_name is None:
            index: dict[tuple[int, str], list[int]] = {}
            start, end = self._strings
            table = self.data[start:end]
            strings: dict[int, str] = {}
            for type_id, (kind, name_off) in enumerate(zip(self._kinds, self._name_offsets, strict=True)):
                if not name_off:
                    continue
                name = strings.get(name_off)
                if name is None:
                    stop = table.find(b"\0", name_off)
                    if not 0 < name_off < len(table) or stop < 0:
                        self.string(name_off)  # raises the FormatError that says where
                    name = strings[name_off] = table[name_off:stop].decode("utf-8", "replace")
                index.setdefault((kind, name), []).append(type_id)
            self._by_name = index
        return self._by_name

    def find(self, kind: int, name: str) -> int | None:
        ids = self.names().get((kind, name))
        return ids[0] if ids else None

    # -- records --------------------------------------------------------------------------------

    def type(self, type_id: int) -> BtfType:
        cached = self._cache.get(type_id)
        if cached is not None:
            return cached
        self._check_id(type_id)
        if type_id == 0:
            raise FormatError("BTF type id 0 is void and has no record", self.source)
        t = self._decode(type_id, self._offsets[type_id])
        self._cache[type_id] = t
        return t

    def _decode(self, type_id: int, pos: int) -> BtfType:
        data = self.data
        name_off, info, size_or_type = TYPE.unpack_from(data, pos)
        kind = (info >> 24) & 0x1F
        vlen = info & 0xFFFF
        kflag = bool(info >> 31)
        t = BtfType(type_id, kind, self.string(name_off) if name_off else "", kflag)
        if kind in _SIZED:
            t.size = size_or_type
        else:
            t.type = size_or_type
            self._check_id(t.type)
        pos += TYPE.size
        if kind == BTF_KIND_INT:
            (word,) = struct.unpack_from("<I", data, pos)
            t.encoding, t.int_offset, t.int_bits = (word >> 24) & 0xF, (word >> 16) & 0xFF, word & 0xFF
        elif kind == BTF_KIND_ARRAY:
            t.type, t.index_type, t.nelems = struct.unpack_from("<III", data, pos)
            self._check_id(t.type)
        elif kind in (BTF_KIND_STRUCT, BTF_KIND_UNION):
            for name_off, mtype, offset in struct.iter_unpack("<III", data[pos : pos + 12 * vlen]):
                self._check_id(mtype)
                name = self.string(name_off) if name_off else ""
                if kflag:  # bit field size in the top byte of the offset
                    t.members.append(Member(name, mtype, offset & 0xFFFFFF, offset >> 24))
                else:
                    t.members.append(Member(name, mtype, offset))
        elif kind == BTF_KIND_ENUM:
            raw = [(self.string(n), v) for n, v in struct.iter_unpack("<Ii", data[pos : pos + 8 * vlen])]
            # kind_flag marks signed enums since Linux 6.0 / pahole 1.24; a blob whose encoder never
            # sets it is older, and there a negative value can only be a signed enumerator
            signed = kflag if self._enum_signedness_flagged else any(v < 0 for _, v in raw)
            mask = (1 << (8 * t.size)) - 1 if 0 < t.size <= 8 else 0xFFFFFFFF
            t.enumerators = [(n, v if signed else v & mask) for n, v in raw]
            t.kind_flag = signed
        elif kind == BTF_KIND_ENUM64:
            for n, lo, hi in struct.iter_unpack("<III", data[pos : pos + 12 * vlen]):
                value = hi << 32 | lo
                if kflag and value >> 63:
                    value -= 1 << 64
                t.enumerators.append((self.string(n), value))
        elif kind == BTF_KIND_FUNC_PROTO:
            for n, ptype in struct.iter_unpack("<II", data[pos : pos + 8 * vlen]):
                self._check_id(ptype)
                t.params.append((self.string(n) if n else "", ptype))
        elif kind == BTF_KIND_FUNC:
            t.linkage = vlen
        elif kind == BTF_KIND_VAR:
            (t.linkage,) = struct.unpack_from("<I", data, pos)
        elif kind == BTF_KIND_DATASEC:
            t.entries = list(struct.iter_unpack("<III", data[pos : pos + 12 * vlen]))
        return t

    def resolve_fwd(self, type_id: int) -> int:
        """A forward declaration's complete definition of the same name, if the blob has one."""
        t = self.type(type_id)
        if t.kind != BTF_KIND_FWD:
            return type_id
        kind = BTF_KIND_UNION if t.kind_flag else BTF_KIND_STRUCT
        found = self.find(kind, t.name)
        return found if found is not None else type_id
