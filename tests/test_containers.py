"""Containers: plain streams, libvirt save images, qcow2 internal snapshots."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import subprocess
import tempfile
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmstate_gdb.containers import list_snapshots, open_source
from vmstate_gdb.containers.libvirt import HEADER_SIZE
from vmstate_gdb.containers.qcow2 import OFLAG_COMPRESSED, OFLAG_ZERO, Qcow2Image
from vmstate_gdb.errors import FormatError, UnsupportedError, VmstateError

QEVM = b"QEVM\x00\x00\x00\x03"


def fake_stream(body_len: int = 1500) -> bytes:
    """Header + configuration + filler + EOF + JSON trailer: enough to look like a stream."""
    machine = b"pc-i440fx-7.2"
    out = QEVM + b"\x07" + struct.pack(">I", len(machine)) + machine
    out += bytes((i * 7 + 3) & 0xFF for i in range(body_len)) + b"\x00"
    js = json.dumps({"page_size": 4096, "devices": [{"name": "timer", "instance_id": 0}]}).encode()
    return out + b"\x06" + struct.pack(">I", len(js)) + js


def write(tmp_path, name: str, data: bytes) -> str:
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


def one_line(exc: BaseException) -> str:
    s = str(exc)
    assert "\n" not in s and s
    return s


# ---------------------------------------------------------------------------------------------
# synthetic qcow2 builder (our own layout; QEMU's tools are checked against it in the qemu tests)
# ---------------------------------------------------------------------------------------------

CB = 9  # 512-byte clusters keep the images tiny
CS = 1 << CB


def build_qcow2(
    stream: bytes,
    *,
    version: int = 3,
    extended_l2: bool = False,
    layout: str = "contig",  # contig | reversed | hole | zero
    compressed: bool = False,
    crypt: int = 0,
    incompat: int = 0,
    disk_only_second: bool = False,
    only_disk_only: bool = False,
    disk_size: int = 64 << 10,
    extra_size: int = 24,
) -> bytes:
    l2_bits = CB - (4 if extended_l2 else 3)
    shift = CB + l2_bits
    vso = ((disk_size + (1 << shift) - 1) >> shift) << shift
    nclusters = (len(stream) + CS - 1) // CS
    l1_index = vso >> shift
    assert ((vso + len(stream) - 1) >> shift) == l1_index, "keep the vmstate under one L2 table"
    # cluster map: 0 header, 1 refcount table, 2 refcount block, 3 active L1, 4 snapshot L1,
    # 5 snapshot L2, 6 snapshot table, 7.. data
    data_first = 7
    order = list(range(nclusters))
    if layout == "reversed":
        order = order[::-1]
    total_clusters = data_first + nclusters + (1 if layout == "hole" else 0)
    img = bytearray(total_clusters * CS)
    incompat_bits = incompat | (1 << 4 if extended_l2 else 0)
    hdr = struct.pack(
        ">4sIQIIQIIQQIIQ",
        b"QFI\xfb",
        version,
        0,
        0,
        CB,
        disk_size,
        crypt,
        (disk_size + (1 << shift) - 1) >> shift,
        3 * CS,
        1 * CS,
        1,
        0,
        6 * CS,
    )
    if version == 3:
        hdr += struct.pack(">QQQII", incompat_bits, 0, 0, 4, 104)
    img[0 : len(hdr)] = hdr
    img[CS : CS + 8] = struct.pack(">Q", 2 * CS)  # refcount table -> block
    for c in range(total_clusters):
        img[2 * CS + 2 * c : 2 * CS + 2 * c + 2] = struct.pack(">H", 1)
    # snapshot L1 (l1_index + 1 entries) -> L2 at cluster 5
    img[4 * CS + 8 * l1_index : 4 * CS + 8 * l1_index + 8] = struct.pack(">Q", 5 * CS)
    esz = 16 if extended_l2 else 8
    first_l2 = (vso >> CB) & ((1 << l2_bits) - 1)
    for i in range(nclusters):
        chunk = stream[i * CS : (i + 1) * CS]
        ent = 5 * CS + (first_l2 + i) * esz
        host = (data_first + order[i]) * CS
        if layout == "hole" and i >= 1:
            host += CS  # leave a gap after the first data cluster: two extents
        flags = OFLAG_COMPRESSED if compressed and i == 0 else 0
        if layout == "zero" and i == 1 and not extended_l2:
            img[ent : ent + 8] = struct.pack(">Q", OFLAG_ZERO)  # reads as zeros, no host cluster
            continue
        img[host : host + len(chunk)] = chunk
        img[ent : ent + 8] = struct.pack(">Q", host | (1 << 63) | flags)
        if extended_l2:
            bitmap = 0xFFFFFFFF
            if layout == "zero" and i == 1:
                bitmap = 0xFFFF0000 | (0x0000FFFF << 32)  # first half zero, second half allocated
            img[ent + 8 : ent + 16] = struct.pack(">Q", bitmap)
    # snapshot table
    entries = []
    snaps = [("1", "snap1", len(stream))]
    if disk_only_second:
        snaps.append(("2", "disk2", 0))
    if only_disk_only:
        snaps = [("1", "disk1", 0)]
    for n, (sid, name, vmsize) in enumerate(snaps):
        extra = struct.pack(">QQq", vmsize, disk_size, -1)[:extra_size]
        e = (
            struct.pack(
                ">QIHHIIQII",
                4 * CS,
                l1_index + 1,
                len(sid),
                len(name),
                1_700_000_000 + n,
                0,
                10**9 * (n + 1),
                vmsize if vmsize < 2**32 else 0,
                len(extra),
            )
            + extra
            + sid.encode()
            + name.encode()
        )
        e += bytes(-len(e) % 8)
        entries.append(e)
    table = b"".join(entries)
    assert len(table) <= CS
    img[6 * CS : 6 * CS + len(table)] = table
    img[60:64] = struct.pack(">I", len(snaps))
    return bytes(img)


# ---------------------------------------------------------------------------------------------
# plain and offset streams
# ---------------------------------------------------------------------------------------------


@pytest.mark.unit
def test_plain_stream(tmp_path):
    data = fake_stream()
    p = write(tmp_path, "s.mig", data)
    src = open_source(p)
    try:
        assert src.kind == "stream" and src.size == len(data)
        assert src.read(0, 8) == QEVM
        assert bytes(src.view()) == data
        assert src.file_offset(100) == 100
        assert src.describe()["kind"] == "stream"
        with pytest.raises(FormatError) as ei:
            src.read(len(data) - 4, 8)
        assert p in one_line(ei.value) and "at byte" in str(ei.value)
    finally:
        src.close()


@pytest.mark.unit
def test_stream_at_offset(tmp_path):
    data = fake_stream()
    p = write(tmp_path, "f.mig", b"\xaa" * 4096 + data)
    src = open_source(p, offset=4096)
    try:
        assert src.size == len(data)
        assert src.read(0, 8) == QEVM
        assert src.file_offset(0) == 4096 and src.file_offset(10) == 4106
        assert bytes(src.view()) == data
    finally:
        src.close()
    with pytest.raises(FormatError, match="QEVM"):
        open_source(p, offset=100)
    with pytest.raises(FormatError, match="not inside the file"):
        open_source(p, offset=10**9)


@pytest.mark.unit
@pytest.mark.parametrize(
    "content, match",
    [
        (b"", "empty file"),
        (b"\x7fELF\x02\x01\x01\x00" + bytes(8), "unknown file type: the first bytes are 7f 45 4c 46"),
        (b"QEVM\x00\x00\x00\x02rest", "version 2"),
        (b"QEVM\x00", "truncated"),
        (b"\x1f\x8b\x08\x00" + bytes(20), "gzip-compressed"),
    ],
)
def test_open_errors(tmp_path, content, match):
    p = write(tmp_path, "x", content)
    with pytest.raises(VmstateError, match=match) as ei:
        open_source(p)
    assert p in one_line(ei.value)


@pytest.mark.unit
def test_missing_and_unreadable(tmp_path):
    with pytest.raises(FormatError, match="no such file"):
        open_source(str(tmp_path / "nope"))
    with pytest.raises(FormatError, match="directory"):
        open_source(str(tmp_path))
    with pytest.raises(UnsupportedError, match="no snapshots"):
        open_source(write(tmp_path, "s.mig", fake_stream()), snapshot="snap1")


# ---------------------------------------------------------------------------------------------
# libvirt
# ---------------------------------------------------------------------------------------------

XML = b"<domain type='kvm'><name>vm1</name></domain>\n"


def libvirt_image(
    stream: bytes,
    *,
    magic=b"LibvirtQemudSave",
    compressed=0,
    version=2,
    pad=4096,
    was_running=1,
    cookie=b"",
    endian="<",
) -> bytes:
    data = XML + b"\x00" + cookie
    cookie_off = len(XML) + 1 if cookie else 0
    data += bytes(max(0, pad - HEADER_SIZE - len(data)))
    hdr = magic + struct.pack(endian + "5I", version, len(data), was_running, compressed, cookie_off)
    hdr += bytes(4 * 14)
    assert len(hdr) == HEADER_SIZE
    return hdr + data + stream


@pytest.mark.unit
@pytest.mark.parametrize("endian", ["<", ">"])
def test_libvirt_raw(tmp_path, endian):
    stream = fake_stream()
    p = write(tmp_path, "vm.save", libvirt_image(stream, cookie=b"<cookie/>", endian=endian))
    src = open_source(p)
    try:
        assert src.kind == "libvirt"
        assert src.size == len(stream) and src.read(0, len(stream)) == stream
        assert src.file_offset(0) == 4096
        d = src.describe()
        assert d["xml"] == XML.decode() and d["was_running"] is True and d["compression"] == "raw"
        assert d["cookie"] == "<cookie/>" and d["libvirt_version"] == 2
    finally:
        src.close()


@pytest.mark.unit
def test_libvirt_unpadded_v1(tmp_path):
    stream = fake_stream()
    p = write(tmp_path, "vm.save", libvirt_image(stream, version=1, pad=0, was_running=0))
    with open_source(p) as src:
        assert src.read(0, 8) == QEVM and src.describe()["was_running"] is False


def _compress(name: str, data: bytes) -> bytes:
    import bz2
    import gzip
    import lzma
    import shutil
    import subprocess

    if name in ("lzop", "zstd"):
        if shutil.which(name) is None:
            pytest.skip(f"{name} not installed")
        return subprocess.run([name, "-c"], input=data, capture_output=True, check=True).stdout
    return {"gzip": gzip.compress, "bzip2": bz2.compress, "xz": lzma.compress}[name](data)


@pytest.mark.unit
@pytest.mark.parametrize("code, name", [(1, "gzip"), (2, "bzip2"), (3, "xz"), (4, "lzop"), (5, "zstd")])
def test_libvirt_compressed(tmp_path, monkeypatch, code, name):
    """A compressed image is served from its decompressed stream; damage is one FormatError."""
    monkeypatch.setenv("VMSTATE_INDEX_CACHE", "off")
    stream = fake_stream()
    packed = _compress(name, stream)
    p = write(tmp_path, "vm.save", libvirt_image(packed, compressed=code))
    with open_source(p) as src:
        assert src.size == len(stream) and src.read(0, len(stream)) == stream
        assert src.describe()["decompressed_to"].startswith("temporary file")
    p = write(tmp_path, "cut.save", libvirt_image(packed[: len(packed) // 2], compressed=code))
    with pytest.raises(FormatError, match=f"{name} stream is (truncated|corrupt)") as ei:
        open_source(p)
    assert one_line(ei.value).startswith(p)


@pytest.mark.unit
def test_libvirt_unknown_compression(tmp_path):
    p = write(tmp_path, "vm.save", libvirt_image(b"\x00" * 100, compressed=9))
    with pytest.raises(UnsupportedError, match="unknown compression format 9") as ei:
        open_source(p)
    assert "at byte 0x1c" in one_line(ei.value)


@pytest.mark.unit
def test_libvirt_partial_and_broken(tmp_path):
    p = write(tmp_path, "a", libvirt_image(fake_stream(), magic=b"LibvirtQemudPart"))
    with pytest.raises(FormatError, match="incomplete"):
        open_source(p)
    p = write(tmp_path, "b", libvirt_image(b"garbage" * 10))
    with pytest.raises(FormatError, match="QEVM"):
        open_source(p)
    img = libvirt_image(fake_stream())
    p = write(tmp_path, "c", img[:1000])  # data_len points past EOF
    with pytest.raises(FormatError, match="truncated") as ei:
        open_source(p)
    assert "at byte 0x5c" in one_line(ei.value)
    p = write(tmp_path, "d", img[:40])
    with pytest.raises(FormatError, match="92 bytes"):
        open_source(p)


# ---------------------------------------------------------------------------------------------
# qcow2 on synthetic images
# ---------------------------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize(
    "kw, extents",
    [
        ({}, 1),
        ({"version": 2, "extra_size": 16}, 1),
        ({"version": 2, "extra_size": 0}, 1),
        ({"layout": "reversed"}, None),
        ({"layout": "hole"}, 2),
        ({"extended_l2": True}, 1),
        ({"extended_l2": True, "layout": "hole"}, 2),
    ],
)
def test_qcow2_read(tmp_path, kw, extents):
    stream = fake_stream(1500)
    p = write(tmp_path, "d.qcow2", build_qcow2(stream, **kw))
    src = open_source(p)
    try:
        assert src.kind == "qcow2" and src.size == len(stream)
        assert src.read(0, src.size) == stream
        assert src.read(500, 700) == stream[500:1200]  # across cluster boundaries
        if extents is not None:
            assert len(src.extents) == extents
        else:
            assert len(src.extents) == (len(stream) + CS - 1) // CS
        v = src.view()
        assert (v is not None) == (len(src.extents) == 1)
        if v is not None:
            assert bytes(v) == stream
            del v
        raw = open(p, "rb").read()
        for off in (0, 511, 512, 1000, len(stream) - 1):
            assert raw[src.file_offset(off)] == stream[off]
        assert src.refcount(0) == 1
        d = src.describe()
        assert d["snapshot"]["name"] == "snap1" and d["vm_state_offset"] == 64 << 10
        assert d["snapshots"][0]["icount"] is None
    finally:
        src.close()


@pytest.mark.unit
@pytest.mark.parametrize("ext", [False, True])
def test_qcow2_zero_cluster(tmp_path, ext):
    stream = fake_stream(1500)
    p = write(tmp_path, "d.qcow2", build_qcow2(stream, layout="zero", extended_l2=ext))
    with open_source(p) as src:
        got = src.read(0, src.size)
        zero = slice(512, 768) if ext else slice(512, 1024)
        assert got[zero] == bytes(len(got[zero]))
        assert got[: zero.start] == stream[: zero.start] and got[1024:] == stream[1024:]
        assert src.view() is None
        with pytest.raises(UnsupportedError, match="no byte in the file"):
            src.file_offset(600)


@pytest.mark.unit
def test_qcow2_snapshot_selection(tmp_path):
    stream = fake_stream()
    p = write(tmp_path, "d.qcow2", build_qcow2(stream, disk_only_second=True))
    snaps = list_snapshots(p)
    got = [(s.id, s.name, s.vm_state_size) for s in snaps]
    assert got == [("1", "snap1", len(stream)), ("2", "disk2", 0)]
    with open_source(p) as src:  # default skips the newer disk-only one
        assert src.snapshot.name == "snap1"
    for which in ("1", "snap1"):
        with open_source(p, snapshot=which) as src:
            assert src.snapshot.id == "1"
    with pytest.raises(FormatError, match="disk-only") as ei:
        open_source(p, snapshot="disk2")
    assert "snap1" in one_line(ei.value)
    with pytest.raises(FormatError, match="no snapshot with id or name 'zz'"):
        open_source(p, snapshot="zz")
    p2 = write(tmp_path, "e.qcow2", build_qcow2(stream, only_disk_only=True))
    with pytest.raises(FormatError, match="only disk-only snapshots"):
        open_source(p2)


@pytest.mark.unit
def test_qcow2_errors(tmp_path):
    stream = fake_stream()
    good = build_qcow2(stream)

    def err(data, exc=FormatError):
        p = write(tmp_path, "bad.qcow2", data)
        with pytest.raises(exc) as ei:
            open_source(p)
        return one_line(ei.value)

    bad_magic = b"QFI\xfa" + good[4:]
    assert "unknown file type" in err(bad_magic)
    with pytest.raises(FormatError, match="not a qcow2 image"):
        Qcow2Image(write(tmp_path, "m.qcow2", bad_magic))
    assert "truncated" in err(good[:50]) and "72 bytes" in err(good[:50])
    assert "104 bytes" in err(good[:90])
    # snapshot L1 past EOF: point the snapshot's l1_table_offset far away
    bad = bytearray(good)
    bad[6 * CS : 6 * CS + 8] = struct.pack(">Q", 1 << 30)
    msg = err(bytes(bad))
    assert "L1 table" in msg and "at byte 0x40000000" in msg
    # L1 cut off by truncation
    assert "truncated" in err(good[: 4 * CS + 8])
    # encrypted
    assert "encrypted (AES)" in err(build_qcow2(stream, crypt=1), UnsupportedError)
    assert "encrypted (LUKS)" in err(build_qcow2(stream, crypt=2), UnsupportedError)
    assert "marked corrupt" in err(build_qcow2(stream, incompat=2))
    assert "external data file" in err(build_qcow2(stream, incompat=4), UnsupportedError)
    msg = err(build_qcow2(stream, incompat=1 << 7), UnsupportedError)
    assert "unknown incompatible feature bits 7" in msg
    assert "compressed" in err(build_qcow2(stream, compressed=True), UnsupportedError)
    bad = bytearray(good)
    bad[4:8] = struct.pack(">I", 4)
    assert "version 4" in err(bytes(bad), UnsupportedError)
    bad = bytearray(good)
    bad[20:24] = struct.pack(">I", 30)
    assert "cluster_bits" in err(bytes(bad))
    # vmstate that is not a stream (wrong disk_size in the extra data -> wrong offset -> zeros)
    bad = bytearray(good)
    bad[6 * CS + 48 : 6 * CS + 56] = struct.pack(">Q", 10 << 20)
    assert "QEVM" in err(bytes(bad))


@pytest.mark.unit
def test_qcow2_dirty(tmp_path):
    p = write(tmp_path, "d.qcow2", build_qcow2(fake_stream(), incompat=1))
    with open_source(p) as src:
        assert src.describe()["dirty"] is True
        assert src.read(0, 8) == QEVM
        with pytest.raises(UnsupportedError, match="dirty"):
            src.refcount(0)


_GOOD = build_qcow2(fake_stream(1200), disk_only_second=True)
_GOOD_EXT = build_qcow2(fake_stream(1200), extended_l2=True, layout="hole")


def _exercise(data: bytes) -> None:
    fd, p = tempfile.mkstemp(suffix=".qcow2")
    try:
        os.write(fd, data)
        os.close(fd)
        try:
            list_snapshots(p)
        except VmstateError as e:
            one_line(e)
        try:
            src = open_source(p)
        except VmstateError as e:
            one_line(e)
            return
        try:
            src.read(0, src.size)
            src.describe()
            if src.size:
                src.file_offset(src.size - 1)
                src.refcount(0)
        except VmstateError as e:
            one_line(e)
        finally:
            src.close()
    finally:
        os.unlink(p)


@pytest.mark.unit
@settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(
    base=st.sampled_from([_GOOD, _GOOD_EXT]),
    cut=st.one_of(st.none(), st.integers(0, len(_GOOD))),
    flips=st.lists(st.tuples(st.integers(0, len(_GOOD) * 8 - 1)), max_size=6),
    hot=st.lists(st.tuples(st.integers(0, 7 * CS - 1), st.integers(0, 7)), max_size=4),
)
def test_qcow2_fuzz(base, cut, flips, hot):
    data = bytearray(base)
    for (bit,) in flips:
        if bit // 8 < len(data):
            data[bit // 8] ^= 1 << (bit % 8)
    for byte, bit in hot:  # metadata clusters get extra attention
        data[byte] ^= 1 << bit
    if cut is not None:
        data = data[:cut]
    _exercise(bytes(data))


# ---------------------------------------------------------------------------------------------
# real QEMU
# ---------------------------------------------------------------------------------------------

QEMU = "/usr/bin/qemu-system-x86_64"


def _config_bytes(b: bytes) -> bytes:
    """QEVM header and the CONFIGURATION section (x86 has no configuration subsections)."""
    assert b[:8] == QEVM and b[8] == 0x07
    (n,) = struct.unpack(">I", b[9:13])
    end = 13 + n
    assert b[end] != 0x05, "unexpected configuration subsection"
    return b[:end]


def _trailer(b: bytes) -> tuple[int, dict]:
    """Find the JSON trailer: the last 0x06 byte (the JSON is ASCII) whose be32 length ends at EOF."""
    p = b.rfind(b"\x06")
    assert p > 0
    (n,) = struct.unpack(">I", b[p + 1 : p + 5])
    assert p + 5 + n == len(b), "JSON trailer must end exactly at the end of the vmstate"
    assert b[p - 1] == 0x00  # QEMU_VM_EOF just before
    return p, json.loads(b[p + 5 :])


@contextlib.contextmanager
def running_qemu(d, img_opts: str | None = None):
    """Boot SeaBIOS on a fresh 64 MiB qcow2 in ``d``; yield (hmp, qmp, image path). QEMU is killed after."""
    from qemu.qmp.legacy import QEMUMonitorProtocol

    img, sock = d / "d.qcow2", d / "qmp.sock"
    cmd = ["qemu-img", "create", "-f", "qcow2"] + (["-o", img_opts] if img_opts else []) + [str(img), "64M"]
    subprocess.run(cmd, check=True, capture_output=True)
    proc = subprocess.Popen(
        [
            QEMU,
            "-accel",
            "tcg",
            "-M",
            "pc",
            "-m",
            "64",
            "-nographic",
            "-display",
            "none",
            "-monitor",
            "none",
            "-qmp",
            f"unix:{sock},server=on,wait=off",
            "-drive",
            f"file={img},if=ide,format=qcow2",
            "-serial",
            "none",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    qmp = None
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "QEMU did not create its QMP socket"
            time.sleep(0.05)
        while True:  # the socket file appears at bind(), before listen(): retry briefly
            qmp = QEMUMonitorProtocol(str(sock))
            try:
                qmp.connect()
                break
            except Exception:
                qmp = None
                assert proc.poll() is None and time.monotonic() < deadline, "cannot connect to QMP"
                time.sleep(0.05)

        def hmp(line: str) -> str:
            return qmp.cmd("human-monitor-command", **{"command-line": line})

        time.sleep(0.5)  # let SeaBIOS run a little
        yield hmp, qmp, img
        # Quit cleanly: QEMU flushes its refcount cache only on close, so an image read after a
        # SIGKILL shows stale refcounts (seen: refcount 2 and a leaked cluster on qemu-img check).
        try:
            qmp.cmd("quit")
        except Exception:
            pass
        proc.wait(timeout=30)
    finally:
        if qmp is not None:
            try:
                qmp.close()
            except Exception:
                pass
        proc.kill()
        proc.wait(timeout=30)
        proc.stderr.close()


def _qemu_img_info(img) -> dict:
    out = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", str(img)], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out)


def _need_qemu():
    if not (shutil.which("qemu-img") and os.access(QEMU, os.X_OK)):
        pytest.skip("QEMU not installed")


@pytest.fixture(scope="module")
def qemu_snapshots(tmp_path_factory):
    _need_qemu()
    d = tmp_path_factory.mktemp("qemu")
    mig = d / "s.mig"
    with running_qemu(d) as (hmp, qmp, img):
        assert hmp("savevm snap1") == ""
        qmp.cmd("stop")
        # savevm first: after a completed migration QEMU 7.2 has inactivated the disks and savevm
        # fails ("Device 'ide0-hd0' is writable but does not support snapshots"). The VM stays
        # stopped across savevm, so snap2 and the exec stream hold the same stopped state.
        assert hmp("savevm snap2") == ""
        qmp.cmd("migrate", uri=f"exec:cat > {mig}")
        deadline = time.monotonic() + 60
        while True:
            status = qmp.cmd("query-migrate").get("status")
            if status in ("completed", "failed", "cancelled"):
                break
            assert time.monotonic() < deadline, f"migration stuck in {status}"
            time.sleep(0.05)
        assert status == "completed"
    # QEMU has quit here; running_qemu's finally kills it in any case (also on a failed step).
    listing = subprocess.run(
        ["qemu-img", "snapshot", "-l", str(img)], check=True, capture_output=True, text=True
    ).stdout
    check = subprocess.run(["qemu-img", "check", str(img)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    yield {"img": str(img), "mig": str(mig), "info": _qemu_img_info(img), "listing": listing, "dir": d}


@pytest.mark.qemu
def test_qemu_list_snapshots(qemu_snapshots):
    snaps = list_snapshots(qemu_snapshots["img"])
    info = {s["name"]: s for s in qemu_snapshots["info"]["snapshots"]}
    assert [s.name for s in snaps] == ["snap1", "snap2"]
    for s in snaps:
        q = info[s.name]
        assert s.id == q["id"]
        assert s.vm_state_size == q["vm-state-size"] > 0
        assert (s.date_sec, s.date_nsec) == (q["date-sec"], q["date-nsec"])
        assert s.vm_clock_nsec == q["vm-clock-sec"] * 10**9 + q["vm-clock-nsec"]
        assert s.disk_size == qemu_snapshots["info"]["virtual-size"]
        assert s.icount is None
        assert s.name in qemu_snapshots["listing"]


@pytest.mark.qemu
@pytest.mark.parametrize("name", ["snap1", "snap2"])
def test_qemu_vmstate(qemu_snapshots, name):
    with open_source(qemu_snapshots["img"], snapshot=name) as src:
        assert src.kind == "qcow2" and src.snapshot.name == name
        data = src.read(0, src.size)
        assert data[:8] == QEVM
        _trailer(data)
        # 64 MiB disk, 64 KiB clusters: one L1 entry covers 512 MiB, so the vmstate starts there
        assert src.vm_state_offset == 512 << 20
        # QEMU allocates the vmstate clusters in one run: a single extent, served zero-copy
        assert len(src.extents) == 1
        v = src.view()
        assert v is not None and bytes(v[:8]) == QEVM
        del v
        with open(qemu_snapshots["img"], "rb") as f:
            f.seek(src.file_offset(0))
            assert f.read(8) == QEVM
        assert src.refcount(0) == 1 and src.refcount(src.size - 1) == 1
    with open_source(qemu_snapshots["img"]) as src:  # the default is the newest
        assert src.snapshot.name == "snap2"


@pytest.mark.qemu
def test_qemu_snapshot_matches_exec_stream(qemu_snapshots):
    with open_source(qemu_snapshots["mig"]) as mig, open_source(qemu_snapshots["img"], "snap2") as snap:
        assert mig.kind == "stream"
        a, b = mig.read(0, mig.size), snap.read(0, snap.size)
    assert _config_bytes(a) == _config_bytes(b)
    pa, ja = _trailer(a)
    pb, jb = _trailer(b)
    assert [x["name"] for x in ja["devices"]] == [x["name"] for x in jb["devices"]]
    assert [(x["name"], x["instance_id"]) for x in ja["devices"]] == [
        (x["name"], x["instance_id"]) for x in jb["devices"]
    ]
    # the same stopped machine: RAM and device parts have the same length structure
    assert pa == pb and len(a) == len(b)


@pytest.mark.qemu
def test_qemu_libvirt_wrapper_of_real_stream(qemu_snapshots):
    stream = open(qemu_snapshots["mig"], "rb").read()
    p = qemu_snapshots["dir"] / "vm.save"
    p.write_bytes(libvirt_image(stream))
    with open_source(str(p)) as src:
        assert src.kind == "libvirt" and src.size == len(stream)
        assert src.read(0, src.size) == stream
        _trailer(src.read(0, src.size))


@pytest.mark.qemu
def test_qemu_image_bit_flips(qemu_snapshots):
    """Corrupt the real image's metadata: errors only, never a traceback."""
    raw = open(qemu_snapshots["img"], "rb").read()
    img = Qcow2Image(qemu_snapshots["img"])
    snap = img.snapshots[-1]
    meta = [
        0,
        20,
        36,
        40,
        60,
        64,
        snap.entry_offset,
        snap.entry_offset + 8,
        snap.entry_offset + 32,
        snap.entry_offset + 40,
        snap.entry_offset + 48,
        snap.l1_table_offset + 8 * 1,
    ]
    img.close()
    for off in meta:
        for bit in (0, 3, 7):
            data = bytearray(raw)
            data[off] ^= 1 << bit
            _exercise(bytes(data))
    for cut in (0, 10, 100, snap.entry_offset + 20, len(raw) // 2, len(raw) - 1):
        _exercise(raw[:cut])


@pytest.mark.qemu
@pytest.mark.parametrize(
    "opts, version, ext_l2",
    [
        ("compat=0.10", 2, False),  # qcow2 v2
        ("cluster_size=512", 3, False),  # tiny clusters: L2 tables interleave with vmstate data
        ("cluster_size=4096", 3, False),
        ("extended_l2=on,cluster_size=64k", 3, True),
        ("refcount_bits=2", 3, False),  # sub-byte refcount packing
        ("refcount_bits=8", 3, False),
        ("refcount_bits=64", 3, False),
    ],
)
def test_qemu_image_variants(tmp_path, opts, version, ext_l2):
    _need_qemu()
    with running_qemu(tmp_path, opts) as (hmp, qmp, img):
        assert hmp("savevm v1") == ""
        qmp.cmd("stop")
        assert hmp("savevm v2") == ""
    info = _qemu_img_info(img)
    check = subprocess.run(["qemu-img", "check", str(img)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    sizes = {s["name"]: s["vm-state-size"] for s in info["snapshots"]}
    for name in ("v1", "v2"):
        with open_source(str(img), snapshot=name) as src:
            assert src.image.version == version and src.image.extended_l2 == ext_l2
            assert src.size == sizes[name]
            data = src.read(0, src.size)
            assert data[:8] == QEVM
            _trailer(data)
            # the vmstate starts at the first L1 boundary at or after the 64 MiB disk
            shift = src.image.cluster_bits + src.image.l2_bits
            assert src.vm_state_offset == max(64 << 20, 1 << shift)
            assert (src.view() is not None) == (len(src.extents) == 1)
            with open(img, "rb") as f:
                for off in (0, src.size // 3, src.size - 1):
                    f.seek(src.file_offset(off))
                    assert f.read(1) == data[off : off + 1]
            # savevm discards the vmstate from the active L1, so after a clean quit the clusters
            # belong to the snapshot alone (refcount 1: safe to patch in place)
            assert src.refcount(src.size // 2) == 1
            print(
                f"[{opts}] {name}: {src.size} bytes, cluster {src.image.cluster_size}, "  # pytest -s
                f"vm_state_offset {src.vm_state_offset:#x}, {len(src.extents)} extent(s)"
            )


@pytest.mark.unit
def test_a_fifo_is_refused_at_once(tmp_path):
    import os

    from vmstate_gdb.containers import open_source
    from vmstate_gdb.errors import FormatError

    fifo = tmp_path / "snap.fifo"
    os.mkfifo(fifo)
    with pytest.raises(FormatError, match="not a regular file"):
        open_source(str(fifo))


@pytest.mark.unit
def test_libvirt_decompression_progress_on_a_terminal_only(tmp_path, monkeypatch):
    import gzip
    import io

    from vmstate_gdb.progress import Progress

    monkeypatch.setenv("VMSTATE_INDEX_CACHE", "off")
    p = write(tmp_path, "vm.save", libvirt_image(gzip.compress(fake_stream()), compressed=1))

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    shown, batch = Terminal(), io.StringIO()
    for out in (shown, batch):
        progress = Progress("decompressing vm.save", stream=out, min_total=0)
        with open_source(p, progress=progress):
            pass
        progress.done()
    assert "decompressing vm.save: 100%" in shown.getvalue() and batch.getvalue() == ""


@pytest.mark.unit
def test_libvirt_stream_cache_entry_is_reused_and_follows_the_image(tmp_path, monkeypatch):
    import gzip
    import os
    import time

    cache = tmp_path / "cache"
    monkeypatch.setenv("VMSTATE_INDEX_CACHE", str(cache))
    p = write(tmp_path, "vm.save", libvirt_image(gzip.compress(fake_stream()), compressed=1))
    old = time.time() - 3600
    os.utime(p, (old, old))
    with open_source(p) as src:
        first = src.describe()["decompressed_to"]
    with open_source(p) as src:
        assert src.describe()["decompressed_to"] == first and first.startswith(f"cache file {cache}/streams/")
    write(tmp_path, "vm.save", libvirt_image(gzip.compress(fake_stream(2000)), compressed=1))
    os.utime(p, (old + 10, old + 10))
    with open_source(p) as src:  # a changed image: a new entry, never the stale one
        assert src.describe()["decompressed_to"] != first and src.size == len(fake_stream(2000))
    just_written = write(tmp_path, "new.save", libvirt_image(gzip.compress(fake_stream()), compressed=1))
    with open_source(just_written) as src:  # modified seconds ago: not cached (git's racy rule)
        assert src.describe()["decompressed_to"].startswith("temporary file")
