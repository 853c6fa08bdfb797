"""The stream index on synthetic streams: record semantics, edge cases, and every way to be broken."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from streamgen import PS, XBZRLE, StreamBuilder, simple_stream

from vmstate_gdb.devices.tree import DeviceTree
from vmstate_gdb.errors import FormatError, UnsupportedError, VmstateError
from vmstate_gdb.stream.index import index_stream
from vmstate_gdb.stream.ram import PAGE_ABSENT, PAGE_ZERO

pytestmark = pytest.mark.unit


def idx_of(data: bytes):
    return index_stream(memoryview(data), "test.mig")


def page(data: bytes, idx, block: str, n: int) -> bytes:
    loc = idx.ram.blocks[block].pages[n]
    return bytes(PS) if loc in (PAGE_ZERO, PAGE_ABSENT) else data[loc : loc + PS]


def test_last_record_wins_across_chunks_and_continue():
    data = simple_stream()
    idx = idx_of(data)
    assert idx.machine_type == "pc-i440fx-7.2"
    assert page(data, idx, "pc.ram", 0) == b"A" * PS
    assert idx.ram.blocks["pc.ram"].pages[1] == PAGE_ZERO
    assert page(data, idx, "pc.ram", 2) == b"D" * PS  # repeated: the later copy
    assert idx.ram.blocks["pc.ram"].pages[3] == PAGE_ZERO  # PAGE then ZERO: zero
    assert page(data, idx, "pc.bios", 0) == b"R" * PS
    assert [s.idstr for s in idx.devices] == ["timer", "0000:00:03.0/nicdev"]


def test_never_sent_page_is_absent():
    b = StreamBuilder().ram_start({"pc.ram": 2 * PS})
    b.ram_chunk([("page", "pc.ram", 0, b"x" * PS)], end=True)
    idx = idx_of(b.finish())
    assert idx.ram.blocks["pc.ram"].pages[1] == PAGE_ABSENT


def test_device_tree_values_and_offsets():
    data = simple_stream()
    idx = idx_of(data)
    tree = DeviceTree(idx, lambda o, n: data[o : o + n])
    timer = tree.resolve("timer/offset")
    assert timer.value(tree.read) == -5
    mac = tree.resolve("nicdev/mac")
    assert data[mac.offset : mac.offset + 6] == bytes.fromhex("525400123456")
    assert tree.resolve("0000:00:03.0/nicdev/regs").value(tree.read) == 7


def test_without_vmdesc_sections_are_found_by_their_footers():
    data = simple_stream(vmdesc=False)
    idx = idx_of(data)
    assert idx.vmdesc is None
    assert [s.body_size for s in idx.devices] == [9, 10]
    tree = DeviceTree(idx, lambda o, n: data[o : o + n])
    assert tree.resolve("timer/data").size == 9


def test_switchover_start_is_accepted_other_commands_are_refused():
    b = StreamBuilder().ram_start({"pc.ram": PS})
    b.ram_chunk([("zero", "pc.ram", 0)]).command(11)
    b.ram_chunk([], end=True)
    idx = idx_of(b.finish())
    assert [c.name for c in idx.commands] == ["SWITCHOVER_START"]
    b = StreamBuilder().command(3, bytes(16))
    with pytest.raises(UnsupportedError, match="POSTCOPY_ADVISE"):
        idx_of(b.finish())


def test_xbzrle_is_refused_with_offset():
    b = StreamBuilder().ram_start({"pc.ram": PS})
    rec = struct.pack(">Q", 0 | XBZRLE) + b"\x06pc.ram" + b"\x01\x00\x02\x00\x00"
    b.ram_chunk([rec], end=True)
    data = b.finish()
    with pytest.raises(UnsupportedError, match=r"test.mig: at byte 0x[0-9a-f]+: RAM: XBZRLE"):
        idx_of(data)


def test_unknown_block_and_bad_offset():
    b = StreamBuilder().ram_start({"pc.ram": PS})
    b.ram_chunk([("page", "nope", 0, b"x" * PS)], end=True)
    with pytest.raises(FormatError, match="unknown block 'nope'"):
        idx_of(b.finish())
    b = StreamBuilder().ram_start({"pc.ram": PS})
    b.ram_chunk([("page", "pc.ram", 5 * PS, b"x" * PS)], end=True)
    with pytest.raises(FormatError, match="outside block"):
        idx_of(b.finish())


def test_iterative_sections_other_than_ram_are_refused():
    b = StreamBuilder()
    b.out += b"\x01" + struct.pack(">I", 1) + b"\x05block" + struct.pack(">II", 0, 1)
    with pytest.raises(UnsupportedError, match="iterative section 'block'"):
        idx_of(b.finish(vmdesc=False))


def test_wrong_magic_and_v2():
    with pytest.raises(FormatError, match="not a QEMU migration stream"):
        idx_of(b"NOPE" + bytes(20))
    with pytest.raises(UnsupportedError, match="version 2"):
        idx_of(b"QEVM\x00\x00\x00\x02" + bytes(8))


def test_mapped_ram_layout():
    """A mapped-ram stream built as QEMU lays it out: header, bitmap, pages at 1 MiB-aligned offsets."""
    b = StreamBuilder(caps=["mapped-ram"])
    out = b.out
    out += b"\x01" + struct.pack(">I", 1) + b"\x03ram" + struct.pack(">II", 0, 4)
    out += struct.pack(">Q", 4 * PS | 0x04) + b"\x06pc.ram" + struct.pack(">Q", 4 * PS)
    header_at = len(out)
    bitmap_at = header_at + 28
    pages_at = 1 << 20
    out += struct.pack(">IQQQ", 1, PS, bitmap_at, pages_at)
    out += bytes([0b0101]) + bytes(7)  # pages 0 and 2 present
    out += bytes(pages_at - len(out))
    out += b"P" * PS + bytes(PS) + b"Q" * PS + bytes(PS)
    out += struct.pack(">Q", 0x10) + b"\x7e" + struct.pack(">I", 1)
    out += b"\x03" + struct.pack(">I", 1) + struct.pack(">Q", 0x10) + b"\x7e" + struct.pack(">I", 1)
    data = b.finish(vmdesc=False)
    idx = idx_of(data)
    blk = idx.ram.blocks["pc.ram"]
    assert blk.mapped_ram is not None
    assert page(data, idx, "pc.ram", 0) == b"P" * PS
    assert blk.pages[1] == PAGE_ZERO
    assert page(data, idx, "pc.ram", 2) == b"Q" * PS


def _boundaries(data: bytes) -> list[int]:
    idx = idx_of(data)
    points = {0, 4, 8, idx.eof_offset, len(data) - 1}
    for s in idx.sections:
        points |= {s.header_offset, s.body_offset, s.body_end, s.body_end + 1}
    return sorted(p for p in points if 0 <= p < len(data))


@pytest.mark.parametrize("cut", _boundaries(simple_stream()))
def test_truncation_at_every_section_boundary_is_one_clear_error(cut):
    full = simple_stream()
    data = full[:cut]
    if cut > idx_of(full).eof_offset:  # only the JSON trailer is cut: QEMU loads it, we warn
        assert any("after EOF" in w for w in idx_of(data).warnings)
        return
    with pytest.raises(VmstateError) as exc:
        idx_of(data)
    assert "test.mig" in str(exc.value) and "\n" not in str(exc.value)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_bit_flips_never_escape_as_other_exceptions(data):
    raw = bytearray(simple_stream())
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] ^= 1 << data.draw(st.integers(0, 7))
    try:
        idx = idx_of(bytes(raw))
        DeviceTree(idx, lambda o, n: bytes(raw[o : o + n]))
    except VmstateError as e:
        assert "\n" not in str(e)


def test_bulk_runs_index_like_record_by_record():
    """Long runs take the bulk path; a break in a run (gap, other kind, new block) is still exact."""
    b = StreamBuilder().ram_start({"pc.ram": 300 * PS, "other": 40 * PS})
    recs = [("page", "pc.ram", 0, bytes([1]) * PS)]
    recs += [("page", None, i * PS, i.to_bytes(2, "little") * (PS // 2)) for i in range(1, 120)]
    recs += [("page", None, 125 * PS, b"g" * PS)]  # gap: pages 120..124 never sent
    recs += [("zero", None, i * PS) for i in range(126, 200)]
    recs += [("page", None, i * PS, i.to_bytes(2, "little") * (PS // 2)) for i in range(200, 260)]
    recs += [("zero", "other", 0)] + [("zero", None, i * PS) for i in range(1, 40)]
    recs += [("page", "pc.ram", 5 * PS, b"late" * (PS // 4))]  # a repeat: the last record wins
    b.ram_chunk(recs, end=True)
    data = b.finish()
    idx = idx_of(data)
    for i in range(1, 120):
        expect = b"late" * (PS // 4) if i == 5 else i.to_bytes(2, "little") * (PS // 2)
        assert page(data, idx, "pc.ram", i) == expect, i
    assert all(idx.ram.blocks["pc.ram"].pages[i] == PAGE_ABSENT for i in range(120, 125))
    assert page(data, idx, "pc.ram", 125) == b"g" * PS
    assert all(idx.ram.blocks["pc.ram"].pages[i] == PAGE_ZERO for i in range(126, 200))
    assert page(data, idx, "pc.ram", 259) == (259).to_bytes(2, "little") * (PS // 2)
    assert all(v == PAGE_ZERO for v in idx.ram.blocks["other"].pages)
    assert idx.ram.records == len(recs)


def test_absent_pages_are_filled_in_chunks_across_gaps_and_tails(monkeypatch):
    """Entries start as zeros; what no record named becomes PAGE_ABSENT, a gap as the scan passes
    it and a block's tail at the end, a chunk at a time (here 7 entries: chunk edges inside both)."""
    from vmstate_gdb.stream import ram

    monkeypatch.setattr(ram, "_ABSENT_CHUNK", 7)
    b = StreamBuilder().ram_start({"pc.ram": 100 * PS, "rom": 30 * PS})
    recs = [("zero", "pc.ram", 0), ("page", None, 1 * PS, b"a" * PS)]
    recs += [("zero", None, i * PS) for i in range(40, 60)]  # gap: 2..39
    recs += [("page", "rom", 3 * PS, b"r" * PS)]  # gap 0..2, tail 4..29
    b.ram_chunk(recs, end=True)
    data = b.finish()
    idx = idx_of(data)
    pages, rom = idx.ram.blocks["pc.ram"].pages, idx.ram.blocks["rom"].pages
    assert pages[0] == PAGE_ZERO and page(data, idx, "pc.ram", 1) == b"a" * PS
    assert [pages[i] for i in range(2, 40)] == [PAGE_ABSENT] * 38
    assert [pages[i] for i in range(40, 60)] == [PAGE_ZERO] * 20
    assert [pages[i] for i in range(60, 100)] == [PAGE_ABSENT] * 40  # the tail, at the end
    assert [rom[i] for i in (*range(3), *range(4, 30))] == [PAGE_ABSENT] * 29
    counts = idx.ram.blocks["pc.ram"].counts()
    assert counts == {"pages": 100, "data": 1, "zero": 21, "absent": 78}


def test_bulk_run_stops_at_a_corrupted_header():
    b = StreamBuilder().ram_start({"pc.ram": 64 * PS})
    b.ram_chunk(
        [("page", "pc.ram", 0, bytes(PS))] + [("page", None, i * PS, bytes(PS)) for i in range(1, 64)],
        end=True,
    )
    data = bytearray(b.finish())
    with_flip = idx_of(bytes(data))
    at = with_flip.ram.blocks["pc.ram"].pages[40] - 8  # header of page 40
    data[at + 7] = 0x29  # PAGE|CONTINUE|FULL: not a valid record
    with pytest.raises(VmstateError):
        idx_of(bytes(data))


def _with_json(data: bytes, mutate) -> bytes:
    """``data`` with its VMDESCRIPTION JSON rewritten by ``mutate(desc)``."""
    import json

    idx = idx_of(data)
    desc = json.loads(data[idx.vmdesc_offset + 5 :])
    mutate(desc)
    js = json.dumps(desc).encode()
    return data[: idx.vmdesc_offset] + b"\x06" + struct.pack(">I", len(js)) + js


@pytest.mark.parametrize(
    "lie",
    [
        lambda d: d["devices"][1]["fields"][0].update(name=None),
        lambda d: d["devices"][1]["fields"][0].update(type=None),
        lambda d: d["devices"][1]["fields"][0].update(size=0, array_len=10**15),
        lambda d: d["devices"][1]["fields"][0].update(size="6"),
        lambda d: d["devices"][1]["fields"][0].update(type="struct"),
        lambda d: d.update(devices={"not": "a list"}),
    ],
)
def test_a_lying_vmdescription_shows_the_section_raw(lie):
    data = _with_json(simple_stream(), lie)
    idx = idx_of(data)
    tree = DeviceTree(idx, lambda o, n: data[o : o + n])
    nic = tree.device("nicdev")
    assert nic is not None
    assert [c.name for c in nic.root.children()] in (["data"], ["mac", "regs"])
    if [c.name for c in nic.root.children()] == ["data"]:
        assert tree.warnings or idx.warnings


def test_an_early_eof_with_bytes_after_it_is_an_error():
    data = bytearray(simple_stream(vmdesc=False))
    idx = idx_of(bytes(data))
    first_device = idx.devices[0].header_offset
    data[first_device] = 0x00  # EOF where the first device section starts
    with pytest.raises(FormatError, match="follow the EOF byte"):
        idx_of(bytes(data))
    with_json = bytearray(simple_stream())
    with_json[first_device] = 0x00
    with pytest.raises(FormatError, match="VMDESCRIPTION starts at"):
        idx_of(bytes(with_json))


def test_a_corrupted_section_id_is_a_footer_error_not_a_swallowed_section():
    data = bytearray(simple_stream())
    sec = idx_of(bytes(data)).devices[0]
    data[sec.header_offset + 4] ^= 0x01  # the section id in the header
    with pytest.raises(FormatError, match="footer of section 'timer' names section id"):
        idx_of(bytes(data))


def _brute_counts(block) -> dict[str, int]:
    pages = list(block.pages)
    zero, absent = pages.count(PAGE_ZERO), pages.count(PAGE_ABSENT)
    return {"pages": len(pages), "data": len(pages) - zero - absent, "zero": zero, "absent": absent}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_page_counts_kept_by_the_scan_equal_a_count_of_the_index(data):
    """QEMU's passes: runs in order (bulk path), then pages sent again as data or zero, in any order."""
    n = 96
    b = StreamBuilder().ram_start({"pc.ram": n * PS})
    first = data.draw(st.integers(0, n - 1))  # one data page: a stream that can hold the RAM it claims
    chunks = [[("page", "pc.ram", first * PS, b"F" * PS)]]
    for _ in range(data.draw(st.integers(1, 4))):
        start = data.draw(st.integers(0, n - 1))
        length = data.draw(st.integers(1, n - start))
        kind = data.draw(st.sampled_from(["page", "zero"]))
        pages = list(range(start, start + length))
        if data.draw(st.booleans()):
            pages = data.draw(st.permutations(pages))
        recs = []
        for i, p in enumerate(pages):
            block = "pc.ram" if i == 0 else None
            recs.append(
                (kind, block, p * PS, bytes([p % 251 + 1]) * PS) if kind == "page" else (kind, block, p * PS)
            )
        chunks.append(recs)
    for i, recs in enumerate(chunks):
        b.ram_chunk(recs, end=i == len(chunks) - 1)
    idx = idx_of(b.finish())
    block = idx.ram.blocks["pc.ram"]
    assert block.counts() == _brute_counts(block)
