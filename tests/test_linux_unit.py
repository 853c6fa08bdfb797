"""The OS layer's small pieces on synthetic bytes: the BTF reader and its drgn types, VMCOREINFO,
the symbol cache, /proc formats. (Real kernels are in test_linux.py.)"""

from __future__ import annotations

import struct

import drgn
import pytest
from drgn import Architecture, Platform, PlatformFlags, Program, TypeKind

from vmstate_gdb.arch import by_name
from vmstate_gdb.errors import FormatError
from vmstate_gdb.os.linux import btf as B
from vmstate_gdb.os.linux.btf_types import BtfTypes
from vmstate_gdb.os.linux.declarations import _state_strings
from vmstate_gdb.os.linux.process import Vma
from vmstate_gdb.os.linux.symbols import Relocation, _decode, _encode
from vmstate_gdb.os.linux.vmcoreinfo import VmcoreInfo

pytestmark = pytest.mark.unit


class BtfWriter:
    """Builds a BTF blob type by type (include/uapi/linux/btf.h), for the reader's edge cases."""

    def __init__(self):
        self.types = bytearray()
        self.strings = bytearray(b"\0")
        self.count = 0

    def s(self, text: str) -> int:
        if not text:
            return 0
        off = len(self.strings)
        self.strings += text.encode() + b"\0"
        return off

    def add(
        self, kind: int, name: str, size_or_type: int, vlen: int = 0, kflag: int = 0, extra: bytes = b""
    ) -> int:
        info = kflag << 31 | kind << 24 | vlen
        self.types += struct.pack("<III", self.s(name), info, size_or_type) + extra
        self.count += 1
        return self.count

    def int(
        self, name: str, size: int, signed: bool = False, bits: int | None = None, encoding: int = 0
    ) -> int:
        enc = (B.BTF_INT_SIGNED if signed else 0) | encoding
        return self.add(B.BTF_KIND_INT, name, size, extra=struct.pack("<I", enc << 24 | (bits or 8 * size)))

    def blob(self, magic: int = B.BTF_MAGIC) -> bytes:
        header = struct.pack(
            "<HBBIIIII", magic, 1, 0, 24, 0, len(self.types), len(self.types), len(self.strings)
        )
        return header + bytes(self.types) + bytes(self.strings)


def sample() -> tuple[bytes, dict[str, int]]:
    w = BtfWriter()
    ids = {}
    ids["int"] = w.int("int", 4, signed=True)
    ids["ulong"] = w.int("long unsigned int", 8)
    ids["bool"] = w.int("_Bool", 1, encoding=B.BTF_INT_BOOL)
    ids["fwd"] = w.add(B.BTF_KIND_FWD, "node", 0)
    ids["ptr"] = w.add(B.BTF_KIND_PTR, "", ids["fwd"])
    # struct node { int value; struct node *next; unsigned long flags:3, mode:5; char name[8]; }
    ids["char"] = w.int("char", 1, encoding=B.BTF_INT_CHAR)
    ids["arr"] = w.add(B.BTF_KIND_ARRAY, "", 0, extra=struct.pack("<III", ids["char"], ids["int"], 8))
    members = [
        ("value", ids["int"], 0),
        ("next", ids["ptr"], 64),
        ("flags", ids["ulong"], 3 << 24 | 128),
        ("mode", ids["ulong"], 5 << 24 | 131),
        ("name", ids["arr"], 192),
    ]
    extra = b"".join(struct.pack("<III", w.s(n), t, o) for n, t, o in members)
    ids["node"] = w.add(B.BTF_KIND_STRUCT, "node", 32, vlen=len(members), kflag=1, extra=extra)
    enums = [("COLOR_RED", 0), ("COLOR_NONE", -1)]
    ids["enum"] = w.add(
        B.BTF_KIND_ENUM,
        "color",
        4,
        vlen=2,
        kflag=1,
        extra=b"".join(struct.pack("<Ii", w.s(n), v) for n, v in enums),
    )
    ids["anon_enum"] = w.add(B.BTF_KIND_ENUM, "", 4, vlen=1, extra=struct.pack("<Ii", w.s("MAX_THINGS"), 42))
    ids["typedef"] = w.add(B.BTF_KIND_TYPEDEF, "node_t", ids["node"])
    ids["const"] = w.add(B.BTF_KIND_CONST, "", ids["typedef"])
    params = [("a", ids["int"]), ("b", ids["ptr"])]
    ids["proto"] = w.add(
        B.BTF_KIND_FUNC_PROTO,
        "",
        ids["int"],
        vlen=2,
        extra=b"".join(struct.pack("<II", w.s(n), t) for n, t in params),
    )
    ids["func"] = w.add(B.BTF_KIND_FUNC, "node_sum", ids["proto"], vlen=1)
    ids["var"] = w.add(B.BTF_KIND_VAR, "percpu_node", ids["node"], extra=struct.pack("<I", 1))
    return w.blob(), ids


def program() -> Program:
    return Program(Platform(Architecture.X86_64, PlatformFlags.IS_64_BIT | PlatformFlags.IS_LITTLE_ENDIAN))


def test_btf_reader_decodes_each_kind():
    blob, ids = sample()
    btf = B.Btf(blob)
    assert len(btf) == len(ids) + 1
    node = btf.type(ids["node"])
    assert [(m.name, m.bit_offset, m.bit_size) for m in node.members][2:4] == [
        ("flags", 128, 3),
        ("mode", 131, 5),
    ]
    assert btf.type(ids["enum"]).enumerators == [("COLOR_RED", 0), ("COLOR_NONE", -1)]
    assert btf.resolve_fwd(ids["fwd"]) == ids["node"]
    assert btf.find(B.BTF_KIND_FUNC, "node_sum") == ids["func"]
    assert btf.type(ids["proto"]).params == [("a", ids["int"]), ("b", ids["ptr"])]


def test_btf_types_in_drgn():
    blob, ids = sample()
    prog = program()
    types = BtfTypes(
        prog, B.Btf(blob), lambda name: {"node_sum": 0xFFFFFFFF81000000, "percpu_node": 0x2000}.get(name)
    )
    prog.register_type_finder("test", types.find_type, enable_index=0)
    prog.register_object_finder("test", types.find_object, enable_index=0)
    node = prog.type("struct node")
    assert node.size == 32 and drgn.offsetof(node, "name") == 24
    flags = node.member("flags")
    assert (flags.bit_offset, flags.bit_field_size) == (128, 3)
    assert node.member("next").type.type.type_name() == "struct node"  # the forward declaration resolved
    assert prog.type("node_t").type.type_name() == "struct node"
    assert prog.type("unsigned long").size == 8  # drgn asks for "long unsigned int"
    assert prog.type("_Bool").kind == TypeKind.BOOL
    assert prog["COLOR_NONE"].value_() == -1 and prog["MAX_THINGS"].value_() == 42
    func = prog["node_sum"]
    assert func.address_ == 0xFFFFFFFF81000000 and [p.name for p in func.type_.parameters] == ["a", "b"]
    assert prog["percpu_node"].type_.type_name() == "struct node"
    with pytest.raises(LookupError):
        prog["no_such_thing"]


def test_btf_refuses_broken_blobs():
    blob, _ = sample()
    with pytest.raises(FormatError, match="no BTF magic"):
        B.Btf(BtfWriter().blob(magic=0x1234))
    with pytest.raises(FormatError, match="run past"):
        B.Btf(blob[:-10])
    w = BtfWriter()
    w.add(25, "weird", 0)
    with pytest.raises(FormatError, match="unknown kind 25"):
        B.Btf(w.blob())
    w = BtfWriter()
    bad = w.add(B.BTF_KIND_PTR, "", 99)
    with pytest.raises(FormatError, match="type id 99"):
        B.Btf(w.blob()).type(bad)
    for cut in range(0, 64, 5):  # every truncation is one FormatError, never another exception
        try:
            btf = B.Btf(blob[:cut])
            [btf.type(i) for i in range(1, len(btf))]
        except FormatError:
            pass


def test_vmcoreinfo_fields():
    text = (
        "OSRELEASE=6.1.0-57-amd64\nBUILD-ID=6a2b4ac7\nSYMBOL(_stext)=ffffffff81000000\n"
        "NUMBER(phys_base)=0\nKERNELOFFSET=2a000000\n"
    )
    info = VmcoreInfo.from_text(text, "test")
    assert info.text == text
    assert (info.release, info.build_id, info.kaslr_offset) == ("6.1.0-57-amd64", "6a2b4ac7", 0x2A000000)
    assert info.symbol("_stext") == 0xFFFFFFFF81000000 and info.number("phys_base") == 0
    assert info.symbol("nothing") is None


def test_symbol_cache_round_trip_relocates_the_kernel_image_only():
    syms = [
        drgn.Symbol("_stext", 0xFFFFFFFF81000000, 0, drgn.SymbolBinding.GLOBAL, drgn.SymbolKind.FUNC),
        drgn.Symbol("runqueues", 0x31C40, 0xCC0, drgn.SymbolBinding.GLOBAL, drgn.SymbolKind.OBJECT),
    ]
    image = by_name("x86_64").linux_abi().is_kernel_image
    data = _encode(syms, Relocation(0, image))
    moved = _decode(data, Relocation(0x1E000000, image))
    assert [(s.name, s.address, s.size, s.kind) for s in moved] == [
        ("_stext", 0xFFFFFFFF9F000000, 0, drgn.SymbolKind.FUNC),
        ("runqueues", 0x31C40, 0xCC0, drgn.SymbolKind.OBJECT),  # a per-CPU offset stays
    ]
    assert _decode(data[:-3], Relocation(0, image)) is None
    assert _decode(b"garbage!" + data[8:], Relocation(0, image)) is None


def test_maps_line_is_the_kernels_format():
    vma = Vma(0x400000, 0x401000, 0x1 | 0x4, 0x1000, "00:02", 7, "/bin/marker", True, False, False)
    assert vma.maps_line() == "00400000-00401000 r-xp 00001000 00:02 7" + " " * 34 + "/bin/marker"
    anon = Vma(0x7FFDCDD91000, 0x7FFDCDDB2000, 0x3, 0, "00:00", 0, "", False, True, True)
    assert anon.maps_line() == "7ffdcdd91000-7ffdcddb2000 rw-p 00000000 00:00 0 "


def test_task_state_array_length_from_its_strings():
    strings = {0x100: b"R (running)", 0x200: b"S (sleeping)", 0x300: b"I (idle)", 0x400: b"\x90\x90"}
    pointers = {0x1000: 0x100, 0x1008: 0x200, 0x1010: 0x300, 0x1018: 0x400}
    assert _state_strings(pointers.__getitem__, strings.__getitem__, 0x1000) == 3


def test_a_kernel_without_the_pieces_gets_one_line_naming_the_missing_one():
    from vmstate_gdb.os.linux.debuginfo import LinuxError, load_debug_info_from_memory

    old = VmcoreInfo.from_text("OSRELEASE=5.15.0\nSYMBOL(_stext)=ffffffff81000000\n", "test")
    with pytest.raises(
        LinuxError, match=r"Linux 5\.15\.0: its VMCOREINFO has no kallsyms fields .*--vmlinux"
    ):
        load_debug_info_from_memory(program(), old, "snap.img", by_name("x86_64").linux_abi())
    try:
        load_debug_info_from_memory(program(), old, "snap.img", by_name("x86_64").linux_abi())
    except LinuxError as e:
        assert str(e).startswith("snap.img: ") and "\n" not in str(e)
