"""Streams without VMDESCRIPTION (issue 11): named from learned layouts (vmstate_gdb/devices/library.py).

The proof is a twin pair written by QEMU itself: the same stream loaded into two QEMUs, one started
with ``-machine suppress-vmdesc=on``, each migrated out again. The twin without the JSON must decode
to exactly the tree QEMU's own JSON gives the other: every field's path, type, offset and size, and
the values wherever QEMU wrote the same bytes (the RTC's seconds tick between the two loads).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from vmstate_gdb.devices import library
from vmstate_gdb.devices.fields import Leaf
from vmstate_gdb.harness.snapshot import restore, wait_migration
from vmstate_gdb.snapshot import Snapshot

TWINS = ["linux-pc-3nic", "linux-q35-3nic-qemu10"]


def _twins(harness_snap, work, guest_builds):
    guest_builds.image(harness_snap.config.kind)
    out = {}
    for suppress in (False, True):
        snap = dataclasses.replace(harness_snap)
        if suppress:
            extra = (*snap.config.extra_args, "-machine", "suppress-vmdesc=on")
            snap.config = dataclasses.replace(snap.config, extra_args=extra)
        path = work / f"{harness_snap.name}-{'novmdesc' if suppress else 'vmdesc'}.vmstate"
        with restore(snap, work, name=f"twin{int(suppress)}", cont=False) as vm:
            vm.qmp("migrate", uri=f"exec:cat > {path}")
            wait_migration(vm)
        out[suppress] = path
    return out[False], out[True]


@pytest.fixture(scope="module", params=TWINS)
def twin(request, snapshot, guest_builds, tmp_path_factory):
    if request.param.endswith("qemu10"):
        request.applymarker(pytest.mark.qemu10)
    harness_snap = snapshot(request.param)
    with_json, without = _twins(harness_snap, tmp_path_factory.mktemp("twin"), guest_builds)
    return harness_snap, with_json, without


def _rows(snap: Snapshot) -> dict[str, tuple[str, list[tuple], bytes]]:
    out = {}
    for d in snap.devices.devices:
        base = d.section.body_offset
        rows = [(n.path, n.type, n.offset - base, n.size) for n in d.root.walk() if isinstance(n, Leaf)]
        out[d.key] = (d.schema, rows, bytes(snap.read_stream(base, d.section.body_size)))
    return out


def _values(snap: Snapshot, key: str) -> list[tuple[str, object]]:
    return [
        (n.path, n.value(snap.read_stream))
        for n in snap.devices.device(key).root.walk()
        if isinstance(n, Leaf)
    ]


@pytest.mark.qemu
@pytest.mark.linux
def test_suppress_vmdesc_twin_decodes_to_the_tree_of_its_json_twin(twin):
    harness_snap, with_json, without = twin
    a, b = Snapshot.open(with_json), Snapshot.open(without)
    assert a.index.vmdesc is not None and b.index.vmdesc is None
    ra, rb = _rows(a), _rows(b)
    assert list(ra) == list(rb)
    unnamed = [k for k, (schema, _, _) in rb.items() if not schema.startswith("layouts of QEMU")]
    assert unnamed == []
    for key in ra:
        schema_a, rows_a, bytes_a = ra[key]
        _, rows_b, bytes_b = rb[key]
        assert schema_a == "VMDESCRIPTION"
        assert rows_b == rows_a, key
        if bytes_a == bytes_b:  # the same bytes: every value decodes the same as well
            assert _values(b, key) == _values(a, key), key
    differing = [k for k in ra if ra[k][2] != rb[k][2]]
    assert set(differing) <= {"mc146818rtc"}, differing
    # The NICs' MACs, as the guest was configured, found through the learned layouts.
    macs = {n.describe()["mac"] for n in b.nics()}
    assert macs == {nic.mac for nic in harness_snap.config.nics}
    # The build the layouts came from is the one that wrote the stream.
    assert {s for s, _, _ in rb.values()} == {f"layouts of QEMU {harness_snap.qemu_version}"}


@pytest.mark.qemu
@pytest.mark.linux
def test_layouts_learned_from_a_paused_qemu_name_the_nics(twin, tmp_path, monkeypatch):
    """`vmstate learn QEMU -machine M -device ...` alone (no shipped file, no guest) is enough for
    the NICs and most devices; the rest stay raw, never wrongly named."""
    harness_snap, with_json, without = twin
    cfg = harness_snap.config
    args = ["-machine", cfg.machine, "-m", "128"]
    for nic in cfg.nics:
        args += ["-device", nic.model]
    monkeypatch.setenv("VMSTATE_DESCRIPTIONS", str(tmp_path))
    out = subprocess.run(
        [sys.executable, "-m", "vmstate_gdb", "learn", cfg.binaries.system, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert f"QEMU {harness_snap.qemu_version}" in out.stdout
    (learned,) = tmp_path.glob("*.json.gz")
    lib = library.Library()
    lib.merge_json(library.read_file(learned))
    b = Snapshot.open(without)
    matches = lib.describe_all(b.index.devices, b.read_stream, b.index.machine_type)
    named = {b.index.devices[i].idstr.rsplit("/", 1)[-1] for i in matches}
    assert {"e1000", "rtl8139", "virtio-net", "apic", "i8259", "ioapic"} <= named
    # What was named agrees with QEMU's own JSON of the twin.
    a = Snapshot.open(with_json)
    json_by_key = {d.section.idstr + f"#{d.section.instance_id}": d for d in a.devices.devices}
    for i, m in matches.items():
        sec = b.index.devices[i]
        d = json_by_key[sec.idstr + f"#{sec.instance_id}"]
        assert m.description["fields"] == d.section.description["fields"], sec.idstr


@pytest.mark.unit
def test_a_layout_that_does_not_account_for_every_byte_is_refused():
    """A section whose bytes a layout does not fit exactly stays unnamed (no wrong decode)."""
    from vmstate_gdb.stream.index import Section

    lib = library.Library()
    vmdesc = {
        "devices": [
            {
                "name": "toy",
                "instance_id": 0,
                "vmsd_name": "toy",
                "version": 1,
                "fields": [{"name": "a", "type": "uint32", "size": 4}],
                "subsections": [
                    {
                        "vmsd_name": "toy/sub",
                        "version": 2,
                        "fields": [{"name": "b", "type": "uint8", "size": 1}],
                    }
                ],
            }
        ]
    }
    assert lib.add_vmdesc(vmdesc, "QEMU 9.9.9 toy") == 2
    body = b"\x00\x00\x00\x07" + b"\x05\x07toy/sub\x00\x00\x00\x02" + b"\x2a"

    def sec(data: bytes) -> tuple[Section, object]:
        s = Section(1, 1, "toy", 0, 1, 0, 0, len(data))
        return s, (lambda off, n: data[off : off + n])

    s, read = sec(body)
    m = lib.describe(s, read)
    assert m is not None and m.description["subsections"][0]["vmsd_name"] == "toy/sub"
    assert m.source == "QEMU 9.9.9"
    for bad in (
        body[:-1],  # a byte short
        body + b"\x00",  # a byte over
        body.replace(b"\x00\x00\x00\x02", b"\x00\x00\x00\x03"),  # a subsection version not learned
        body.replace(b"toy/sub", b"toy/suX"),  # a subsection not learned
    ):
        s, read = sec(bad)
        assert lib.describe(s, read) is None, bad
    # Without the subsection at all (not needed at save time): the fields alone fit.
    s, read = sec(body[:4])
    m = lib.describe(s, read)
    assert m is not None and "subsections" not in m.description
    s, read = sec(body)
    s.version_id = 2  # a section version no layout has
    assert lib.describe(s, read) is None
