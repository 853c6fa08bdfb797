"""The writer on synthetic streams: where each kind of edit lands, and that nothing else moves."""

from __future__ import annotations

import pytest
from streamgen import PS, simple_stream

from vmstate_gdb.snapshot import Snapshot
from vmstate_gdb.writer import save

pytestmark = pytest.mark.unit


@pytest.fixture
def stream(tmp_path):
    path = tmp_path / "in.mig"
    path.write_bytes(simple_stream())
    return str(path)


def reopen(path: str) -> Snapshot:
    return Snapshot.open(path)


def test_repeated_page_is_patched_where_the_loader_looks_last(stream, tmp_path):
    out = str(tmp_path / "out.mig")
    with reopen(stream) as snap:
        snap.physical.write(2 * PS + 10, b"XYZ")  # page 2 was sent twice ("B" then "D")
        result = save(snap, out)
    assert result.plan.pages_in_place == 1 and result.plan.pages_added == 0
    raw_in, raw_out = open(stream, "rb").read(), open(out, "rb").read()
    assert len(raw_in) == len(raw_out)
    assert raw_out.count(b"B" * PS) == 1  # the earlier copy is left alone
    with reopen(out) as again:
        assert again.physical.read(2 * PS, 16) == b"D" * 10 + b"XYZ" + b"D" * 3


def test_zero_and_absent_pages_get_new_records_before_the_last_eos(stream, tmp_path):
    out = str(tmp_path / "out.mig")
    with reopen(stream) as snap:
        eos = snap.index.ram.eos_offsets[-1]
        snap.physical.write(3 * PS - 2, b"abcd")  # spans page 2 (data) and page 3 (PAGE then ZERO)
        snap.physical.write(PS, b"one")  # a ZERO record
        result = save(snap, out)
    assert (result.plan.pages_in_place, result.plan.pages_added) == (1, 2)
    raw_in, raw_out = open(stream, "rb").read(), open(out, "rb").read()
    assert raw_out[eos + len(result.plan.inserted) :] == raw_in[eos:]  # EOS, devices, JSON unchanged
    with reopen(out) as again:
        assert again.physical.read(3 * PS - 2, 4) == b"abcd"
        assert again.physical.read(PS, 4) == b"one\0"
        assert again.physical.read(0, 4) == b"AAAA"
        assert [d.key for d in again.devices.devices] == ["timer", "0000:00:03.0/nicdev"]


def test_device_and_register_free_edits_only_touch_their_bytes(stream, tmp_path):
    out = str(tmp_path / "out.mig")
    with reopen(stream) as snap:
        node = snap.devices.resolve("nicdev/mac")
        snap.set_field("nicdev/mac", bytes.fromhex("020000000001"))
        snap.set_field("timer/offset", 99)
        save(snap, out)
    raw_in, raw_out = open(stream, "rb").read(), open(out, "rb").read()
    diff = [i for i in range(len(raw_in)) if raw_in[i] != raw_out[i]]
    assert diff and all(node.offset <= i < node.offset + 6 or i < node.offset for i in diff)
    with reopen(out) as again:
        assert again.field_value("nicdev/mac") == bytes.fromhex("020000000001")
        assert again.field_value("timer/offset") == 99


def test_writing_back_the_same_bytes_is_no_edit(stream, tmp_path):
    out = str(tmp_path / "out.mig")
    with reopen(stream) as snap:
        snap.physical.write(0, b"AAAA")
        result = save(snap, out)
    assert result.plan.describe() == "no edits"
    assert open(out, "rb").read() == open(stream, "rb").read()


def test_revert_drops_everything(stream, tmp_path):
    with reopen(stream) as snap:
        snap.physical.write(0, b"zz")
        snap.set_field("timer/flag", 0)
        snap.edits.clear()
        assert snap.physical.read(0, 2) == b"AA" and snap.field_value("timer/flag") == 1
