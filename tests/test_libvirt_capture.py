"""`vmstate capture` through libvirt, several hosts at one instant (issue 12).

Two private daemons (tests/libvirtd.py, separate roots and sockets) stand for two hosts: the
small guest runs once on the first and twice on the second, each with an e1000 of its own MAC.
The capture goes through the CLI and libvirt's remote protocol; libvirt's own state and the
guests' TICK lines on their serial consoles prove they run again afterwards.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mounts import tmpfs
from test_libvirt_real import NIC_XML, small_domain_xml

ROOT = Path(__file__).resolve().parent.parent
VMSTATE = ROOT / ".venv/bin/vmstate"
HOSTS = {
    "h1": {"lv-a": "52:54:00:00:0a:01"},
    "h2": {"lv-b": "52:54:00:00:0b:02", "lv-c": "52:54:00:00:0c:03"},
}
TICK = re.compile(r"^TICK (\d+) ", re.M)


class Host:
    """A private libvirtd with its domains (name -> (libvirt.virDomain, console path, MAC))."""

    def __init__(self, root: Path):
        from libvirtd import Libvirtd

        self.daemon = Libvirtd(root)
        self.conn = None
        self.domains: dict[str, tuple[object, Path, str]] = {}

    @property
    def uri(self) -> str:
        return self.daemon.uri

    def start(self, domains: dict[str, str], defined_only: tuple[str, ...] = ()) -> None:
        import libvirt

        self.daemon.start()
        self.conn = libvirt.open(self.uri)
        for name, mac in domains.items():
            xml, console = small_domain_xml(self.daemon, name)
            dom = self.conn.defineXML(xml.replace("<memballoon model='none'/>", NIC_XML.format(mac=mac)))
            dom.create()
            self.domains[name] = (dom, console, mac)
        for name in defined_only:  # known to libvirt but shut off: --all-running must skip it
            self.conn.defineXML(small_domain_xml(self.daemon, name)[0])

    def wait_ticking(self) -> dict[str, int]:
        """Each guest's last TICK once it has printed one."""
        return {name: last_tick(console) for name, (_, console, _) in self.domains.items()}

    def close(self) -> None:
        """Destroy the domains, end the daemon (by its process group) and the QEMUs it left
        (libvirt starts each QEMU in a session of its own, so they are ended by pid)."""
        if self.conn is not None:
            for dom, _, _ in self.domains.values():
                try:
                    dom.destroy()
                except Exception:  # the daemon is gone (a fault test killed it)
                    break
            try:
                self.conn.close()
            except Exception:
                pass
        self.daemon.cleanup()


def last_tick(console: Path, after: int = -1, timeout: float = 30.0) -> int:
    """The guest's last TICK number, waiting until it is above ``after``."""
    deadline = time.monotonic() + timeout
    while True:
        ticks = (
            [int(n) for n in TICK.findall(console.read_text(errors="replace"))] if console.exists() else []
        )
        if ticks and ticks[-1] > after:
            return ticks[-1]
        assert time.monotonic() < deadline, f"{console}: no TICK above {after}: {ticks[-5:]}"
        time.sleep(0.1)


def _new_root(prefix: str) -> Path:
    """Outside pytest's tmp (0700, root's): each daemon runs as nobody."""
    return Path(tempfile.mkdtemp(prefix=prefix))


def _host(prefix: str, domains: dict[str, str], defined_only: tuple[str, ...] = ()) -> Host:
    host = Host(_new_root(prefix))
    reason = host.daemon.unusable()
    if reason:
        pytest.skip(reason)
    try:
        host.start(domains, defined_only)
    except BaseException:
        host.close()
        raise
    return host


@pytest.fixture(scope="module", autouse=True)
def _quiet_libvirt() -> None:
    """libvirt prints each error to stderr as well; a daemon killed on purpose makes some."""
    try:
        import libvirt
    except ImportError:  # the daemon tests skip with the reason; the unit tests need no binding
        return
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


@pytest.fixture(scope="module")
def hosts() -> Iterator[dict[str, Host]]:
    made: dict[str, Host] = {}
    try:
        made["h1"] = _host("vmcap-h1-", HOSTS["h1"])
        made["h2"] = _host("vmcap-h2-", HOSTS["h2"], defined_only=("lv-off",))
        for host in made.values():
            host.wait_ticking()
        yield made
    finally:
        for host in made.values():
            host.close()


@pytest.fixture
def out_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="vmcap-out-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def vmstate(*args: str, env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VMSTATE), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        **kw,
    )


def assert_all_running(hosts: dict[str, Host], before: dict[str, int]) -> None:
    """libvirt says running and each guest's TICK counter went on past ``before``."""
    import libvirt

    for host in hosts.values():
        for name, (dom, console, _) in host.domains.items():
            assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING, (name, dom.state())
            last_tick(console, after=before[name])


def ticks_now(hosts: dict[str, Host]) -> dict[str, int]:
    return {name: n for host in hosts.values() for name, n in host.wait_ticking().items()}


def captured(out_dir: Path) -> list[str]:
    """The domain names of the snapshots in ``out_dir`` (NAME-YYYYmmdd-HHMMSS.vmstate)."""
    return sorted(re.sub(r"-\d{8}-\d{6}\.vmstate$", "", p.name) for p in out_dir.glob("*.vmstate"))


def info_json(path: str) -> dict:
    proc = vmstate("info", path, "--json", env={"VMSTATE_INDEX_CACHE": "off"})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_two_hosts_one_instant(hosts, out_dir: Path) -> None:
    """--libvirt URI --domain per host: three domains stopped together, each file opens with its
    own MAC, skew per domain in the report, all running again."""
    h1, h2 = hosts["h1"], hosts["h2"]
    before = ticks_now(hosts)
    proc = vmstate(
        "capture", "--libvirt", h1.uri, "--domain", "lv-a", "--libvirt", h2.uri, "--domain", "lv-b,lv-c",
        "-o", str(out_dir), "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    vms = {v["name"]: v for v in report["vms"]}
    assert sorted(vms) == ["lv-a", "lv-b", "lv-c"]
    print(
        f"libvirt, 2 daemons: reply skew {report['reply_skew_s'] * 1e3:.2f} ms, "
        f"STOP events {report['event_skew_s'] * 1e3:.2f} ms; "
        + ", ".join(
            f"{n} +{v['stop_offset_s'] * 1e3:.2f} ms {v['size']} B {v['duration_s']:.3f} s"
            for n, v in vms.items()
        )
    )
    assert 0 <= report["reply_skew_s"] < 0.5
    assert report["event_skew_s"] is not None and 0 <= report["event_skew_s"] < 0.5  # QEMU's STOP events
    for name, v in vms.items():
        host = h1 if name == "lv-a" else h2
        assert v["ok"] and v["resumed"] and v["stopped_by_us"] and v["host"] == host.uri, v
        assert v["method"] == "fd" and 0 <= v["stop_offset_s"] <= report["reply_skew_s"]
        assert os.path.getsize(v["path"]) == v["size"] > 0
        meta = json.loads(Path(v["meta_path"]).read_text())
        assert meta["name"] == name and meta["format"] == "stream"
        info = info_json(v["path"])
        assert host.domains[name][2] in json.dumps(info).lower(), info
    assert captured(out_dir) == ["lv-a", "lv-b", "lv-c"]
    assert_all_running(hosts, before)


def test_all_running_and_text_report(hosts, out_dir: Path) -> None:
    """--all-running takes every running domain of its URI (not the shut-off lv-off); the old
    ``--connect URI --libvirt DOMAIN`` form still names domains too."""
    h1, h2 = hosts["h1"], hosts["h2"]
    before = ticks_now(hosts)
    proc = vmstate(
        "capture",
        "--connect",
        h1.uri,
        "--libvirt",
        "lv-a",
        "--libvirt",
        h2.uri,
        "--all-running",
        "-o",
        str(out_dir),
    )
    assert proc.returncode == 0, proc.stderr
    print(proc.stdout)
    assert re.search(
        r"^stopped 3 VMs: stop skew \d+\.\d\d ms between replies, \d+\.\d\d ms between QEMU's STOP events$",
        proc.stdout,
        re.M,
    ), proc.stdout
    offsets = re.search(r"^stop replies after the first: (.*)$", proc.stdout, re.M)
    assert offsets and len(re.findall(r"lv-[abc] \(qemu\+unix://[^)]+\) \+\d+\.\d\d ms", offsets[1])) == 3
    for name, host in (("lv-a", h1), ("lv-b", h2), ("lv-c", h2)):
        line = (
            rf"^{name} \({re.escape(host.uri)}\): \S+\.vmstate  [\d.]+ [KM]iB in [\d.]+ s \(fd:\), resumed$"
        )
        assert re.search(line, proc.stdout, re.M), (name, proc.stdout)
    assert "lv-off" not in proc.stdout and "3 of 3 VMs captured" in proc.stdout
    assert_all_running(hosts, before)


def test_unknown_domain_stops_nothing(hosts, out_dir: Path) -> None:
    """A name that is not there is refused before any VM is stopped: a capture is for one instant
    of the whole set, and a set with a typo in it is not the one asked for."""
    h1, h2 = hosts["h1"], hosts["h2"]
    proc = vmstate(
        "capture", "--libvirt", h2.uri, "--all-running", "--libvirt", h1.uri, "--domain", "lv-a,no-such",
        "-o", str(out_dir), "--json",
    )  # fmt: skip
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"vmstate: {h1.uri}: no-such: "), proc.stderr
    assert "Domain not found" in lines[0], lines[0]
    assert list(out_dir.iterdir()) == []
    import libvirt

    for host in hosts.values():
        for name, (dom, _, _) in host.domains.items():
            assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING, name  # never paused


def test_unreachable_daemon_stops_nothing(hosts, out_dir: Path) -> None:
    dead = f"qemu+unix:///session?socket={out_dir}/no-daemon-sock"
    proc = vmstate(
        "capture",
        "--libvirt",
        hosts["h1"].uri,
        "--all-running",
        "--libvirt",
        dead,
        "--domain",
        "x",
        "-o",
        str(out_dir),
    )
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"vmstate: {dead}: cannot connect: ") and "Traceback" not in proc.stderr
    assert list(out_dir.iterdir()) == []


@pytest.mark.parametrize("fault", ["killed", "hung"])
def test_daemon_lost_mid_capture(hosts, out_dir: Path, fault: str) -> None:
    """A third daemon is killed, or hung (SIGSTOP: a cut network looks the same), while its domain
    is stopped and before it is saved: one line names that URI and domain (the hung one after the
    keepalive gives up); the other host's domains are saved and resumed; no file of the lost one."""
    import libvirt

    victim = _host("vmcap-h3-", {"lv-v": "52:54:00:00:0d:04"})
    proc = None
    try:
        victim.wait_ticking()
        before = ticks_now(hosts)
        dom = victim.domains["lv-v"][0]
        proc = subprocess.Popen(
            [str(VMSTATE), "capture", "--libvirt", victim.uri, "--domain", "lv-v", "--libvirt",
             hosts["h2"].uri, "--all-running", "-o", str(out_dir), "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "VMSTATE_TEST_HOLD_STOPPED": "3", "VMSTATE_LIBVIRT_KEEPALIVE": "1,2"},
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while dom.state()[0] != libvirt.VIR_DOMAIN_PAUSED:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        os.killpg(victim.daemon.proc.pid, signal.SIGKILL if fault == "killed" else signal.SIGSTOP)
        lost = time.monotonic()
        out, err = proc.communicate(timeout=60)
        print(f"{fault}: capture ended {time.monotonic() - lost:.1f} s later: {err}")
        assert proc.returncode == 1, (out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"vmstate: {victim.uri}: lv-v: "), err
        assert "cannot resume" in lines[0] and "connection to libvirt lost" in lines[0], err
        if fault == "hung":  # libvirt says which, depending on whether a call was waiting then
            assert "keepalive timeout" in lines[0] or "client socket is closed" in lines[0], err
        assert "Traceback" not in err
        report = {v["name"]: v for v in json.loads(out)["vms"]}
        assert not report["lv-v"]["ok"] and not report["lv-v"]["resumed"]
        assert report["lv-b"]["ok"] and report["lv-c"]["ok"]
        assert captured(out_dir) == ["lv-b", "lv-c"]
        assert_all_running({"h2": hosts["h2"]}, before)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        if fault == "hung":
            os.killpg(victim.daemon.proc.pid, signal.SIGCONT)  # so that it can be ended
        victim.close()


def test_output_full(hosts, out_dir: Path) -> None:
    """-o on a 256 KiB tmpfs: every stream fails, no file is left, every domain runs on, and each
    failure is one line with its URI and domain."""
    full = out_dir / "tiny"
    with tmpfs(full, "256k", mode="0755"):
        before = ticks_now(hosts)
        args = ["capture", "--libvirt", hosts["h1"].uri, "--all-running", "--libvirt", hosts["h2"].uri]
        proc = vmstate(*args, "--domain", "lv-b,lv-c", "-o", str(full), "--json")
        assert proc.returncode == 1, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 3 and "Traceback" not in proc.stderr, proc.stderr
        for host in hosts.values():
            for name in host.domains:
                assert sum(line.startswith(f"vmstate: {host.uri}: {name}: ") for line in lines) == 1, lines
        for v in json.loads(proc.stdout)["vms"]:
            assert not v["ok"] and v["resumed"] and f"({full} is full: " in v["error"], v
        assert list(full.iterdir()) == []
        assert_all_running(hosts, before)


@pytest.mark.unit
def test_targets_from_arguments() -> None:
    from vmstate_gdb.capture.cli import libvirt_targets
    from vmstate_gdb.errors import QemuError

    spec = [("libvirt", "a,b"), ("libvirt", "qemu+ssh://h1/system"), ("domain", "c"), ("all_running", []),
            ("libvirt", "qemu+ssh://h2/system"), ("domain", "d,e"), ("domain", "e")]  # fmt: skip
    got = [(t.uri, t.domains, t.all_running) for t in libvirt_targets(spec, "qemu:///system")]
    assert got == [
        ("qemu:///system", ["a", "b"], False),
        ("qemu+ssh://h1/system", ["c"], True),
        ("qemu+ssh://h2/system", ["d", "e"], False),
    ]
    assert [(t.uri, t.domains) for t in libvirt_targets([("domain", "x")], None)] == [(None, ["x"])]
    with pytest.raises(QemuError, match="qemu:///x: name its domains"):
        libvirt_targets([("libvirt", "qemu:///x")], None)


SHMEM_XML = (
    "<shmem name='vmcap-blocker'><model type='ivshmem-plain'/><size unit='M'>1</size></shmem>\n"
    "    <memballoon model='none'/>"
)


def test_blocked_domain_is_named_and_not_stopped(hosts, out_dir: Path) -> None:
    """A domain QEMU will not migrate (an ivshmem device: a migration blocker) is refused before the
    stop, on one line with its URI; the others are captured and resumed."""
    import libvirt

    h1 = hosts["h1"]
    xml, console = small_domain_xml(h1.daemon, "lv-blocked")
    dom = h1.conn.defineXML(xml.replace("<memballoon model='none'/>", SHMEM_XML))
    try:
        dom.create()
        last_tick(console)
        before = ticks_now(hosts)
        proc = vmstate(
            "capture", "--libvirt", h1.uri, "--all-running", "--libvirt", hosts["h2"].uri, "--domain", "lv-b",
            "-o", str(out_dir), "--json",
        )  # fmt: skip
        assert proc.returncode == 1, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"vmstate: {h1.uri}: lv-blocked: migration blocked: ")
        report = {v["name"]: v for v in json.loads(proc.stdout)["vms"]}
        assert sorted(report) == ["lv-a", "lv-b", "lv-blocked"]
        assert report["lv-a"]["ok"] and report["lv-b"]["ok"] and not report["lv-blocked"]["stop_sent"]
        assert captured(out_dir) == ["lv-a", "lv-b"]
        assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        assert_all_running(hosts, before)
    finally:
        dom.destroy()
        dom.undefine()


@pytest.mark.unit
def test_remote_old_qemu_is_refused_before_the_stop(monkeypatch) -> None:
    """No fd passing over ssh, and exec: would get QEMU killed by libvirt's sandbox: refused."""
    from vmstate_gdb.capture.libvirt import EXEC_ALLOWED, LibvirtMonitor

    remote = LibvirtMonitor("web", "qemu+ssh://h1/system")
    assert not remote.local and remote.host == "qemu+ssh://h1/system"
    assert "seccomp" in remote.capture_blocker(file_uri=False)
    assert remote.capture_blocker(file_uri=True) is None  # QEMU >= 8.2 writes file: itself
    monkeypatch.setenv(EXEC_ALLOWED, "1")
    assert remote.capture_blocker(file_uri=False) is None


PANIC_XML = """<serial type='unix'><source mode='bind' path='{sock}'/><log file='{console}'/></serial>"""


def test_watch_guest_panic_through_libvirt(hosts, out_dir: Path) -> None:
    """QEMU's GUEST_PANICKED reaches ``watch`` through libvirt's QMP event API: the guest writes its
    pvpanic port ('p' typed on its console socket) and the domains of both hosts are captured;
    ``<on_crash>preserve</on_crash>`` keeps libvirt from destroying the panicked one first."""
    import socket

    h1 = hosts["h1"]
    xml, console = small_domain_xml(h1.daemon, "lv-panic")
    sock = h1.daemon.root / "lv-panic.sock"
    xml = xml.replace(
        f"<serial type='file'><source path='{console}'/></serial>",
        PANIC_XML.format(sock=sock, console=console),
    )
    xml = xml.replace("<on_reboot>", "<on_crash>preserve</on_crash>\n  <on_reboot>")
    xml = xml.replace("<memballoon model='none'/>", "<panic model='isa'/>\n    <memballoon model='none'/>")
    dom = h1.conn.defineXML(xml)
    try:
        dom.create()
        last_tick(console)
        before = ticks_now(hosts)
        watch = subprocess.Popen(
            [str(VMSTATE), "watch", "--libvirt", h1.uri, "--domain", "lv-panic", "--libvirt", hosts["h2"].uri,
             "--domain", "lv-b", "--on", "guest-panic", "-o", str(out_dir), "--json", "--wait", "30"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            line = watch.stderr.readline()
            assert line.startswith("vmstate watch: watching 2 VM(s)"), line + watch.stderr.read()
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(sock))
                s.sendall(b"p")
                out, err = watch.communicate(timeout=30)
        finally:
            watch.kill()
        assert watch.returncode == 0, err
        report = json.loads(out)
        print(report["trigger"])
        assert re.match(
            r"lv-panic: GUEST_PANICKED \(action \w+\) \(VMs stopped [\d.]+ ms later\)", report["trigger"]
        )
        vms = {v["name"]: v for v in report["vms"]}
        assert vms["lv-panic"]["ok"] and vms["lv-b"]["ok"] and vms["lv-b"]["resumed"]
        assert "GUEST PANIC" in console.read_text(errors="replace")
        assert_all_running({"h2": hosts["h2"]}, before)
    finally:
        dom.destroy()
        dom.undefine()


QEMU10 = Path("/opt/vmstate-qemu10/bin/qemu-system-x86_64")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_remote_host_over_tcp(hosts) -> None:
    """A daemon reached over TCP (qemu+tcp://127.0.0.1:PORT, as a remote host is): no fd passing
    there, so QEMU 10 writes its own file (file:, as QEMU's user) and QEMU 7.2 is refused before
    anything stops (exec: would get it killed by libvirt's sandbox); the local domain goes on."""
    import libvirt
    from libvirtd import Libvirtd

    if not QEMU10.exists():
        pytest.skip("QEMU 10 not installed (tools/install-qemu10.sh)")
    daemon = Libvirtd(_new_root("vmcap-tcp-"), tcp_port=_free_port())
    out = Path(tempfile.mkdtemp(prefix="vmcap-out-"))
    out.chmod(0o777)  # QEMU (nobody) writes here itself
    try:
        daemon.start()
        conn = libvirt.open(daemon.uri)
        consoles = {}
        for name, emulator in (("lv-old", None), ("lv-new", QEMU10)):
            xml, consoles[name] = small_domain_xml(daemon, name)
            if emulator:
                xml = xml.replace("/usr/bin/qemu-system-x86_64", str(emulator))
                # without <acpi/>, libvirt 9.0 passes -no-acpi, which QEMU 9 removed
                xml = xml.replace("</os>", "</os>\n  <features><acpi/></features>")
            conn.defineXML(xml).create()
        for console in consoles.values():
            last_tick(console)
        before = ticks_now(hosts)
        proc = vmstate(
            "capture", "--libvirt", daemon.tcp_uri, "--all-running",
            "--libvirt", hosts["h2"].uri, "--domain", "lv-b", "-o", str(out), "--json",
        )  # fmt: skip
        print(proc.stderr)
        assert proc.returncode == 1, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(
            f"vmstate: {daemon.tcp_uri}: lv-old: QEMU < 8.2 on a remote"
        )
        vms = {v["name"]: v for v in json.loads(proc.stdout)["vms"]}
        assert not vms["lv-old"]["stop_sent"] and vms["lv-old"]["qemu_version"].startswith("7.2")
        assert vms["lv-new"]["ok"] and vms["lv-new"]["method"] == "file" and vms["lv-new"]["resumed"]
        assert vms["lv-b"]["ok"] and vms["lv-b"]["method"] == "fd"
        info = info_json(vms["lv-new"]["path"])
        assert "pc-i440fx-10" in json.dumps(info), info
        for name, console in consoles.items():
            assert conn.lookupByName(name).state()[0] == libvirt.VIR_DOMAIN_RUNNING
            last_tick(console, after=last_tick(console))
        assert_all_running({"h2": hosts["h2"]}, before)
        # a full disk on "that host": this process cannot remove QEMU's partial file, so it says so
        full = out / "tiny"
        with tmpfs(full, "256k", mode="0777"):
            proc = vmstate("capture", "--libvirt", daemon.tcp_uri, "--domain", "lv-new", "-o", str(full))
            lines = proc.stderr.strip().splitlines()
            assert proc.returncode == 1 and len(lines) == 1, proc.stderr
            assert lines[0].startswith(f"vmstate: {daemon.tcp_uri}: lv-new: migration failed: "), lines
            assert "may be left on the VM's host" in lines[0], lines
            assert conn.lookupByName("lv-new").state()[0] == libvirt.VIR_DOMAIN_RUNNING
        conn.close()
    finally:
        daemon.cleanup()
        shutil.rmtree(out, ignore_errors=True)
