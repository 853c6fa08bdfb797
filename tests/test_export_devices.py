"""Device state as XML/JSON: export, edit the file, import; QEMU resumes the result with the edit."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import xmltodict

from vmstate_gdb.devices.fields import Leaf
from vmstate_gdb.errors import EditError, FormatError
from vmstate_gdb.export.devices_xml import (
    export_devices,
    format_int,
    import_devices,
    load_tree,
    parse_leaf_value,
)
from vmstate_gdb.harness import Nic
from vmstate_gdb.snapshot import Snapshot

NEW_MAC = "52:54:00:be:ef:07"


def edited_meta(meta, out: str, macs: dict[str, str]):
    nics = tuple(Nic(n.model, macs.get(n.mac, n.mac)) for n in meta.config.nics)
    return dataclasses.replace(meta, path=out, config=dataclasses.replace(meta.config, nics=nics))


def vmstate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vmstate_gdb", *args], capture_output=True, text=True, timeout=300
    )


# -- unit ---------------------------------------------------------------------------------------


@pytest.mark.unit
def test_value_notation_round_trips():
    u32 = Leaf("x", "dev/x", "uint32", 0, 4)
    i16 = Leaf("y", "dev/y", "int16", 0, 2)
    flag = Leaf("f", "dev/f", "bool", 0, 1)
    assert (
        format_int(u32, 9) == "9" and format_int(u32, 0xABC) == "0xabc" and format_int(i16, -300) == "-0x12c"
    )
    assert parse_leaf_value(u32, "0xabc", None) == (0xABC).to_bytes(4, "big")
    assert parse_leaf_value(i16, "-0x12c", None) == (-300).to_bytes(2, "big", signed=True)
    assert parse_leaf_value(flag, "true", None) == b"\x01"
    with pytest.raises(EditError, match=r"dev/x.*out of range"):
        parse_leaf_value(u32, "0x100000000", None)
    with pytest.raises(EditError, match=r"dev/x: 'zz' is not an integer"):
        parse_leaf_value(u32, "zz", None)
    buf = Leaf("idstr", "dev/idstr", "buffer", 0, 8)
    assert parse_leaf_value(buf, "abc", "text") == b"abc\0\0\0\0\0"
    with pytest.raises(EditError, match="dev/idstr: holds 8 bytes"):
        parse_leaf_value(buf, "00 11", "hex")


# -- real snapshots -------------------------------------------------------------------------


def test_export_is_complete_and_imports_as_no_change(snapshot, tmp_path):
    meta = snapshot("small-pc-e1000")
    xml, js = str(tmp_path / "devices.xml"), str(tmp_path / "devices.json")
    with Snapshot.open(meta.path) as snap:
        export_devices(snap, xml)
        export_devices(snap, js, as_json=True)
        keys = [d.key for d in snap.devices.devices]
        eip = snap.field_value("cpu/env.eip")
        for path in (xml, js):
            result = import_devices(snap, path)
            assert not result.changed, result.fields[:5]
        assert not snap.edits
    doc = xmltodict.parse(open(xml).read(), force_list=("device", "field", "nic"))
    root = doc["vmstate-devices"]
    assert [d["@name"] for d in root["device"]] == keys
    assert root["nics"]["nic"][0]["@mac"] == meta.config.nics[0].mac
    cpu = next(d for d in root["device"] if d["@name"] == "cpu")
    field = next(f for f in cpu["field"] if f["@name"] == "env.eip")
    assert field["@type"] == "uint64" and field["@size"] == "8" and int(field["#text"], 16) == eip
    tree = json.load(open(js))
    assert [d["name"] for d in tree["devices"]] == keys


def _edit_xml(path: str, device: str, field: str, **attrs) -> None:
    """Set attributes (or the text, as text=...) of one top-level field of a device in the file."""
    doc = xmltodict.parse(open(path).read(), force_list=("device", "field", "item", "nic"))
    dev = next(d for d in doc["vmstate-devices"]["device"] if d["@name"] == device)
    target = next(f for f in dev["field"] if f["@name"] == field)
    for key, value in attrs.items():
        target["#text" if key == "text" else "@" + key] = value
    open(path, "w").write(xmltodict.unparse(doc, pretty=True))


@pytest.mark.parametrize(
    "edit, message",
    [
        (dict(name="no_such_field"), r"port92/no_such_field: no such field"),
        (dict(type="uint16"), r"port92/outport: type changed from uint8 to uint16"),
        (dict(size="2"), r"port92/outport: size changed from 1 to 2"),
        (dict(text="0x100"), r"port92/outport: 0x100 is out of range \(uint8, 0x0\.\.0xff\)"),
        (dict(text="hello"), r"port92/outport: 'hello' is not an integer"),
    ],
)
def test_import_rejects_bad_edits_naming_the_path(snapshot, tmp_path, edit, message):
    meta = snapshot("small-pc-e1000")
    xml = str(tmp_path / "devices.xml")
    with Snapshot.open(meta.path) as snap:
        export_devices(snap, xml)
        _edit_xml(xml, "port92", "outport", **edit)
        with pytest.raises(EditError, match=message):
            import_devices(snap, xml)
        assert not snap.edits, "a refused import changes nothing"


def test_import_rejects_unknown_device_and_bad_files(snapshot, tmp_path):
    meta = snapshot("small-pc-e1000")
    with Snapshot.open(meta.path) as snap:
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({"devices": [{"name": "no-such-device", "fields": []}]}))
        with pytest.raises(EditError, match="unknown device 'no-such-device'"):
            import_devices(snap, str(bad))
        broken = tmp_path / "broken.xml"
        broken.write_text("<vmstate-devices><device name='timer'>")
        with pytest.raises(FormatError, match="not valid XML"):
            load_tree(str(broken))
    run = vmstate("import-devices", meta.path, str(bad), str(tmp_path / "out.vmstate"), "-q")
    assert run.returncode == 1 and run.stderr.startswith(f"vmstate: {meta.path}: unknown device"), run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["small-pc-e1000", "small-q35-virtio-2cpu"])
def test_mac_edited_in_the_file_resumes_in_qemu(snapshot, restored, tmp_path, name):
    """export-devices, change the NIC's MAC in the file, import-devices, resume: the NIC has it."""
    meta = snapshot(name)
    old = meta.config.nics[0].mac
    xml, out = str(tmp_path / "devices.xml"), str(tmp_path / "imported.vmstate")
    run = vmstate("export-devices", meta.path, xml, "-q")
    assert run.returncode == 0, run.stderr
    text = open(xml).read()
    if "virtio" in name:
        # every spelling of the MAC: the <nics> entry and the device's own fields
        assert text.count(old) >= 3
        text = text.replace(old, NEW_MAC)
    else:
        # only the <nics> entry: the import changes every copy (mac_reg RA, EEPROM, checksum)
        text = text.replace(f'mac="{old}"', f'mac="{NEW_MAC}"')
    open(xml, "w").write(text)
    run = vmstate("import-devices", meta.path, xml, out)  # not -q: the resume command line is wanted
    assert run.returncode == 0, run.stderr
    assert f"mac={NEW_MAC}" in run.stdout, run.stdout  # the resume command line has the new MAC
    if "virtio" in name:
        assert "field 0000:00:01.0/virtio-net/virtio/device/mac: " + old + " -> " + NEW_MAC in run.stdout
    else:
        assert f"{old} -> {NEW_MAC}" in run.stdout
    with Snapshot.open(out) as edited:
        assert [n.mac.hex(":") for n in edited.nics()] == [NEW_MAC]
    vm = restored(edited_meta(meta, out, {old: NEW_MAC}))
    ticks = vm.wait_for_ticks(2, timeout=30)
    assert ticks[0].n > meta.last_tick.n
    assert ticks[-1].hw_mac == NEW_MAC, ticks[-1]
    assert ticks[-1].sw_mac == old, "guest RAM was not edited: its boot-time copy keeps the old MAC"
    if "virtio" in name:
        assert vm.qmp("query-rx-filter")[0]["main-mac"] == NEW_MAC


def test_cpu_mode_edits_rederive_hflags(snapshot, tmp_path):
    """eflags.IOPL edited in the file: TCG's hflags follow, as with `vmstate patch --reg`."""
    meta = snapshot("small-pc-e1000")
    xml = str(tmp_path / "devices.xml")
    with Snapshot.open(meta.path) as snap:
        export_devices(snap, xml)
        eflags = snap.cpu(0)["eflags"]
        _edit_xml(xml, "cpu", "env.eflags", text=hex(eflags | 0x3000))
        result = import_devices(snap, xml)
        assert [c.path for c in result.fields] == ["cpu/env.eflags", "cpu[0] hflags (derived)"]
        assert snap.cpu(0)["hflags"] >> 12 & 3 == 3
