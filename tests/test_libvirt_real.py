"""Real libvirt (issue 12): a private libvirtd runs the suite's small guest under TCG; its serial
console goes to a file, so the guest's own TICK lines prove it runs."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest
from guestinfo import SMALL_ELF

DOMAIN_XML = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{kernel}</kernel></os>
  <on_reboot>destroy</on_reboot>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <serial type='file'><source path='{console}'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>"""


def small_domain_xml(daemon, name: str) -> tuple[str, Path]:
    """The XML of the small guest as a libvirt domain, and its console file."""
    kernel = daemon.root / "guest.elf"
    shutil.copyfile(SMALL_ELF, kernel)
    kernel.chmod(0o644)
    console = daemon.root / f"{name}.console"
    return DOMAIN_XML.format(name=name, kernel=kernel, console=console), console


def wait_for(console: Path, pattern: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = console.read_text(errors="replace") if console.exists() else ""
        if re.search(pattern, text, re.M):
            return text
        assert time.monotonic() < deadline, f"no {pattern!r} on the console:\n{text[-2000:]}"
        time.sleep(0.2)


def test_small_guest_runs_under_private_libvirtd(libvirtd):
    import libvirt

    conn = libvirt.open(libvirtd.uri)
    try:
        xml, console = small_domain_xml(libvirtd, "small-run")
        dom = conn.defineXML(xml)
        dom.create()
        try:
            wait_for(console, r"^TICK 2 ")
            assert dom.isActive()
        finally:
            dom.destroy()
            dom.undefine()
    finally:
        conn.close()


def _save_running_domain(daemon, name: str, flags: int = 0) -> Path:
    """Boot the small guest as domain ``name``, wait for its TICKs, save it as libvirt does."""
    import libvirt

    conn = libvirt.open(daemon.uri)
    try:
        xml, console = small_domain_xml(daemon, name)
        dom = conn.defineXML(xml)
        dom.create()
        try:
            wait_for(console, r"^TICK 2 ")
            image = daemon.root / f"{name}.save"
            dom.saveFlags(str(image), None, flags)
        finally:
            if dom.isActive():
                dom.destroy()
            dom.undefine()
    finally:
        conn.close()
    return image


def _vmstate_info(image: Path):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "vmstate_gdb.cli", "info", str(image)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("bypass_cache", [False, True], ids=["plain", "bypass-cache"])
def test_virsh_save_image_opens(libvirtd, bypass_cache):
    """A save image (virDomain.saveFlags, what ``virsh save [--bypass-cache]`` calls): ``vmstate info``
    reads it as a libvirt container with the guest's RAM and vCPU."""
    import libvirt

    flags = libvirt.VIR_DOMAIN_SAVE_BYPASS_CACHE if bypass_cache else 0
    out = _vmstate_info(_save_running_domain(libvirtd, f"small-save-{int(bypass_cache)}", flags))
    assert out.returncode == 0, out.stderr
    assert "QEMU snapshot (libvirt)" in out.stdout, out.stdout
    assert re.search(r"pc\.ram\s+64\.0 MiB", out.stdout), out.stdout
    assert re.search(r"vCPUs\s+1\n", out.stdout), out.stdout


# libvirt 9.0 offers these; zstd (format 5) came later, so its image is made from a raw one below
LIBVIRT_FORMATS = {"gzip": "gzip", "bzip2": "bzip2", "xz": "xz", "lzop": "lzop"}
_DECOMPRESSORS = {"gzip": "gzip", "bzip2": "bzip2", "xz": "xz", "lzop": "lzop", "zstd": "zstd"}


def _run_vmstate(*args: str, env: dict | None = None):
    import os
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "vmstate_gdb.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module", params=list(LIBVIRT_FORMATS))
def compressed_image(request, tmp_path_factory):
    """A real image saved by a daemon whose qemu.conf sets save_image_format, copied out of its dir;
    its modification time set back so the stream cache takes it (a just-written file is not cached)."""
    import os
    import tempfile

    from libvirtd import Libvirtd

    fmt = request.param
    if shutil.which(LIBVIRT_FORMATS[fmt]) is None:
        pytest.skip(f"{LIBVIRT_FORMATS[fmt]} not installed (tools/bootstrap.sh installs it)")
    daemon = Libvirtd(Path(tempfile.mkdtemp(prefix="vmstate-libvirtd-")), f'save_image_format = "{fmt}"\n')
    reason = daemon.unusable()
    if reason:
        pytest.skip(reason)
    try:
        daemon.start()
        saved = _save_running_domain(daemon, f"small-{fmt}")
        image = tmp_path_factory.mktemp(f"lv-{fmt}") / f"{fmt}.save"
        shutil.copyfile(saved, image)
    finally:
        daemon.cleanup()
    old = time.time() - 3600
    os.utime(image, (old, old))
    return fmt, image


def _payload(image: Path) -> tuple[int, int]:
    """(header format code, byte where the compressed stream starts)."""
    import struct

    head = image.read_bytes()[:92]
    data_len, _, compressed = struct.unpack_from("<3I", head, 20)
    return compressed, 92 + data_len


def _oracle_stream(image: Path, fmt: str) -> bytes:
    """The stream as the compressor's own program decompresses it."""
    import subprocess

    _, start = _payload(image)
    data = image.read_bytes()[start:]
    return subprocess.run([_DECOMPRESSORS[fmt], "-dc"], input=data, capture_output=True, check=True).stdout


def test_compressed_save_image_opens(compressed_image, tmp_path):
    """save_image_format in the daemon's qemu.conf: vmstate info/devices/read read the image; the
    decompressed stream in the cache is byte for byte what the compressor's program gives."""
    fmt, image = compressed_image
    code, _ = _payload(image)
    assert code == {"gzip": 1, "bzip2": 2, "xz": 3, "lzop": 4}[fmt]
    cache = tmp_path / "cache"
    env = {"VMSTATE_INDEX_CACHE": str(cache)}
    out = _run_vmstate("info", str(image), env=env)
    assert out.returncode == 0, out.stderr
    assert re.search(r"pc\.ram\s+64\.0 MiB", out.stdout), out.stdout
    assert f"{fmt}; stream decompressed to cache file {cache}/streams/" in out.stdout, out.stdout
    entries = list((cache / "streams").glob("*.stream"))
    assert len(entries) == 1 and entries[0].read_bytes() == _oracle_stream(image, fmt)
    again = _run_vmstate("info", str(image), "--json", env=env)
    assert again.returncode == 0 and str(entries[0]) in again.stdout  # served from the cache
    assert list((cache / "streams").iterdir()) == entries
    devices = _run_vmstate("devices", str(image), env=env)
    assert devices.returncode == 0 and "cpu" in devices.stdout, devices.stderr
    from guestinfo import small_symbols

    magic = small_symbols()["guest_magic"]
    read = _run_vmstate("read", str(image), hex(magic), "8", "--raw", env=env)
    assert read.returncode == 0, read.stderr
    assert read.stdout == "SGMEMSAV", read.stdout  # guest_magic 0x5641534d454d4753, little-endian


def test_compressed_image_without_cache_uses_a_temporary_file(compressed_image, tmp_path):
    fmt, image = compressed_image
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = _run_vmstate("info", str(image), env={"VMSTATE_INDEX_CACHE": "off", "TMPDIR": str(tmp)})
    assert out.returncode == 0, out.stderr
    assert f"decompressed to temporary file in {tmp} (removed at close)" in out.stdout, out.stdout
    assert list(tmp.iterdir()) == []


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_damaged_compressed_image_is_one_line_and_leaves_nothing(compressed_image, tmp_path, damage):
    import os

    fmt, image = compressed_image
    _, start = _payload(image)
    data = bytearray(image.read_bytes())
    if damage == "truncated":
        data = data[: start + (len(data) - start) // 2]
    else:
        for i in range(start + 2000, start + 2400):
            data[i] ^= 0x5A
    bad = tmp_path / f"{damage}.save"
    bad.write_bytes(bytes(data))
    old = time.time() - 3600
    os.utime(bad, (old, old))
    cache = tmp_path / "cache"
    out = _run_vmstate("info", str(bad), env={"VMSTATE_INDEX_CACHE": str(cache)})
    assert out.returncode == 1, out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert lines[0].startswith(f"vmstate: {bad}: ") and fmt in lines[0], lines[0]
    assert re.search("truncated|corrupt", lines[0]), lines[0]
    assert not any((cache / "streams").iterdir()) if (cache / "streams").exists() else True


def test_zstd_image_opens(libvirtd, tmp_path):
    """libvirt 9.0 refuses save_image_format "zstd" (format 5 came in a later libvirt), so a real raw
    image is turned into one: its stream through the zstd program, the header's format set to 5."""
    import struct
    import subprocess

    if shutil.which("zstd") is None:
        pytest.skip("zstd not installed (tools/bootstrap.sh installs it)")
    raw = _save_running_domain(libvirtd, "small-zstd").read_bytes()
    _, start = struct.unpack_from("<2I", raw, 16)[0], 92 + struct.unpack_from("<I", raw, 20)[0]
    packed = subprocess.run(["zstd", "-c"], input=raw[start:], capture_output=True, check=True).stdout
    image = tmp_path / "zstd.save"
    image.write_bytes(raw[:28] + struct.pack("<I", 5) + raw[32:start] + packed)
    out = _run_vmstate("info", str(image), env={"VMSTATE_INDEX_CACHE": "off"})
    assert out.returncode == 0, out.stderr
    assert "zstd; stream decompressed to temporary file" in out.stdout, out.stdout
    assert re.search(r"pc\.ram\s+64\.0 MiB", out.stdout), out.stdout
    cut = tmp_path / "zstd-cut.save"
    cut.write_bytes(image.read_bytes()[: start + len(packed) // 2])
    out = _run_vmstate("info", str(cut), env={"VMSTATE_INDEX_CACHE": "off"})
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and str(cut) in out.stderr, out.stderr


def test_gdb_opens_a_compressed_image(compressed_image):
    import subprocess

    from guestinfo import ROOT, small_symbols

    fmt, image = compressed_image
    if fmt != "gzip":
        pytest.skip("one format is enough for gdb: the container is the same for all")
    magic = small_symbols()["guest_magic"]
    proc = subprocess.run(
        [
            "/usr/bin/gdb",
            "-nx",
            "-batch",
            "-x",
            str(ROOT / "vmstate.gdb"),
            "-ex",
            f"vmstate-open {image}",
            "-ex",
            f"x/gx {magic:#x}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
    )
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out and "0x5641534d454d4753" in out, out


NIC_XML = (
    "<interface type='user'><mac address='{mac}'/><model type='e1000'/></interface>\n"
    "    <memballoon model='none'/>"
)


def test_patched_image_restores_with_new_mac_and_memory_edit(libvirtd):
    """Save a domain with an e1000, change its MAC and write guest memory, write a libvirt image
    again: libvirt's own reader (save-image-dumpxml) shows the new MAC, conn.restore runs it, and the
    guest's TICK lines show the new MAC in the NIC's registers and the edited note."""
    import struct
    import subprocess

    import libvirt
    from guestinfo import small_symbols

    old_mac, new_mac = "52:54:00:12:34:56", "52:54:00:ab:cd:ef"
    conn = libvirt.open(libvirtd.uri)
    try:
        xml, console = small_domain_xml(libvirtd, "small-nic")
        xml = xml.replace("<memballoon model='none'/>", NIC_XML.format(mac=old_mac))
        dom = conn.defineXML(xml)
        try:
            dom.create()
            wait_for(console, rf"^TICK 2 .*hw={old_mac}")
            image = libvirtd.root / "small-nic.save"
            dom.save(str(image))
            before = image.read_bytes()
            out = libvirtd.root / "small-nic-edited.save"
            note = small_symbols()["guest_note"]
            patch = _run_vmstate(
                "patch",
                str(image),
                str(out),
                "--mac",
                new_mac,
                "--write",
                f"{note:#x}={b'libvirt edit'.hex()}00",
                env={"VMSTATE_INDEX_CACHE": "off"},
            )
            assert patch.returncode == 0, patch.stderr
            assert "virsh restore " + str(out) in patch.stdout, patch.stdout
            assert image.read_bytes() == before  # the input is never written
            data = out.read_bytes()
            version, data_len, was_running, compressed, cookie = struct.unpack_from("<5I", data, 16)
            assert data[:16] == b"LibvirtQemudSave" and compressed == 0 and was_running == 1
            assert data[92 + data_len : 92 + data_len + 4] == b"QEVM"
            assert data[92 + cookie : 92 + cookie + 8] == b"<cookie>"
            dumped = subprocess.run(
                ["virsh", "-c", libvirtd.uri, "save-image-dumpxml", str(out)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert dumped.returncode == 0, dumped.stderr
            assert f"<mac address='{new_mac}'/>" in dumped.stdout and old_mac not in dumped.stdout
            last = max(map(int, re.findall(r"^TICK (\d+) ", console.read_text(errors="replace"), re.M)))
            conn.restore(str(out))  # libvirt reopens (truncates) the console file
            text = wait_for(console, rf"^TICK \d+ .*hw={new_mac}.*note=libvirt edit", timeout=60)
            first = int(re.search(r"^TICK (\d+) ", text, re.M)[1])
            assert first > last  # the guest went on counting where it was saved, not rebooted
            dom = conn.lookupByName("small-nic")
            assert dom.isActive()
            live = dom.XMLDesc()
            assert f"<mac address='{new_mac}'/>" in live
        finally:
            if dom.isActive():
                dom.destroy()
            dom.undefine()
    finally:
        conn.close()


def test_resume_cmd_of_a_libvirt_image_is_virsh_restore(tmp_path):
    image = tmp_path / "vm.save"
    from test_containers import fake_stream, libvirt_image  # synthetic: only the header is read

    image.write_bytes(libvirt_image(fake_stream(), compressed=1))
    out = _run_vmstate("resume-cmd", str(image))
    assert out.returncode == 0, out.stderr
    assert f"  virsh restore {image}\n" in out.stdout, out.stdout
    js = _run_vmstate("resume-cmd", str(image), "--json")
    assert '"virsh",' in js.stdout and '"restore",' in js.stdout, js.stdout


def test_gdb_save_of_a_compressed_image_writes_a_raw_libvirt_image(compressed_image, tmp_path):
    """vmstate-save in gdb after a memory write: a libvirt image with compressed 0, the edit in it."""
    import struct
    import subprocess

    from guestinfo import ROOT, small_symbols

    fmt, image = compressed_image
    if fmt != "gzip":
        pytest.skip("one format is enough: the writer takes the decompressed stream of every format")
    note = small_symbols()["guest_note"]
    out = tmp_path / "edited.save"
    proc = subprocess.run(
        [
            "/usr/bin/gdb", "-nx", "-batch", "-x", str(ROOT / "vmstate.gdb"),
            "-ex", f"vmstate-open {image}",
            "-ex", f"set {{char[9]}} {note:#x} = \"from gdb\"",
            "-ex", f"vmstate-save {out}",
        ],
        capture_output=True, text=True, timeout=120, cwd="/",
    )  # fmt: skip
    text = proc.stdout + proc.stderr
    assert "Traceback" not in text and f"wrote {out} (libvirt" in text, text
    data = out.read_bytes()
    assert data[:16] == b"LibvirtQemudSave" and struct.unpack_from("<I", data, 28)[0] == 0
    assert image.read_bytes()[92:1000] == data[92:1000]  # the same XML
    read = _run_vmstate("read", str(out), hex(note), "9", "--raw")
    assert read.returncode == 0 and read.stdout == "from gdb\0", read.stderr


def test_managed_save_opens(libvirtd):
    """virDomain.managedSave (virsh managedsave): the image lands in the daemon's save dir as
    NAME.save; vmstate info reads it; starting the domain again resumes it (TICKs go on)."""
    import libvirt

    conn = libvirt.open(libvirtd.uri)
    try:
        xml, console = small_domain_xml(libvirtd, "small-managed")
        dom = conn.defineXML(xml)
        try:
            dom.create()
            wait_for(console, r"^TICK 2 ")
            last = max(map(int, re.findall(r"^TICK (\d+) ", console.read_text(errors="replace"), re.M)))
            dom.managedSave(0)
            assert not dom.isActive() and dom.hasManagedSaveImage(0)
            found = list(libvirtd.root.glob("**/qemu/save/small-managed.save"))
            assert len(found) == 1, list(libvirtd.root.glob("**/*.save"))
            out = _run_vmstate("info", str(found[0]), env={"VMSTATE_INDEX_CACHE": "off"})
            assert out.returncode == 0, out.stderr
            assert "QEMU snapshot (libvirt)" in out.stdout and "pc.ram" in out.stdout, out.stdout
            assert "<name>small-managed</name>" in _run_vmstate("info", str(found[0]), "--json").stdout
            cmd = _run_vmstate("resume-cmd", str(found[0]))
            assert "  virsh start small-managed\n" in cmd.stdout, cmd.stdout + cmd.stderr
            dom.create()  # from the managed save image
            text = wait_for(console, r"^TICK \d+ ", timeout=60)
            assert int(re.search(r"^TICK (\d+) ", text, re.M)[1]) > last
        finally:
            if dom.isActive():
                dom.destroy()
            if dom.hasManagedSaveImage(0):
                dom.managedSaveRemove(0)
            dom.undefine()
    finally:
        conn.close()


DISK_XML = (
    "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
    "<source file='{disk}'/><target dev='vda' bus='virtio'/></disk>\n"
    "    <memballoon model='none'/>"
)


def test_internal_snapshot_of_a_qcow2_domain_lists_and_opens(libvirtd):
    """snapshot-create-as on a running domain with a qcow2 disk (libvirt's internal snapshot: QEMU's
    savevm into the disk): vmstate snapshots lists what libvirt lists, vmstate info opens it."""
    import json
    import subprocess

    import libvirt

    disk = libvirtd.root / "small-snap.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    disk.chmod(0o666)
    conn = libvirt.open(libvirtd.uri)
    try:
        xml, console = small_domain_xml(libvirtd, "small-snap")
        dom = conn.defineXML(xml.replace("<memballoon model='none'/>", DISK_XML.format(disk=disk)))
        try:
            dom.create()
            wait_for(console, r"^TICK 2 ")
            for name in ("first", "second"):
                dom.snapshotCreateXML(f"<domainsnapshot><name>{name}</name></domainsnapshot>", 0)
            assert sorted(dom.snapshotListNames(0)) == ["first", "second"]
            dom.destroy()  # QEMU lets go of the image: its snapshot table is final
            listed = _run_vmstate("snapshots", str(disk), "--json")
            assert listed.returncode == 0, listed.stderr
            rows = json.loads(listed.stdout)
            assert [r["name"] for r in rows] == ["first", "second"], rows
            info = _run_vmstate("info", str(disk), "-s", "first", env={"VMSTATE_INDEX_CACHE": "off"})
            assert info.returncode == 0, info.stderr
            assert "QEMU snapshot (qcow2)" in info.stdout and "pc.ram" in info.stdout, info.stdout
            by_domain = _run_vmstate("snapshots", "--connect", libvirtd.uri, "small-snap", "--json")
            assert by_domain.returncode == 0, by_domain.stderr
            got = json.loads(by_domain.stdout)
            assert got["libvirt_snapshots"] == ["first", "second"]
            assert [(d["target"], d["path"]) for d in got["disks"]] == [("vda", str(disk))]
            assert [r["name"] for r in got["disks"][0]["snapshots"]] == ["first", "second"]
            text = _run_vmstate("snapshots", "-c", libvirtd.uri, "small-snap").stdout
            assert "libvirt snapshots first, second" in text and f"vda: {disk}" in text, text
            missing = _run_vmstate("snapshots", "-c", libvirtd.uri, "no-such-domain")
            assert missing.returncode == 1 and missing.stderr.count("\n") == 1, missing.stderr
            assert "no-such-domain" in missing.stderr and "Traceback" not in missing.stderr
        finally:
            if dom.isActive():
                dom.destroy()
            for snap in dom.listAllSnapshots(0):
                snap.delete(libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)
            dom.undefine()
    finally:
        conn.close()
