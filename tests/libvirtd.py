"""A private libvirtd for the tests: session mode, every dir under one tmp dir, ended by process group.

Run as an unprivileged user (nobody when the tests run as root) so libvirt really is in session mode:
its sockets, state and logs go under the XDG dirs given, never /run/libvirt. TCG only, no /dev/kvm.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

LIBVIRTD = "/usr/sbin/libvirtd"
NOBODY = 65534


class Libvirtd:
    """One daemon; ``uri`` reaches it over its own socket."""

    def __init__(self, root: Path, qemu_conf: str = "", tcp_port: int | None = None):
        """``tcp_port``: also listen on 127.0.0.1:PORT without auth, so that ``tcp_uri`` reaches
        it as a client reaches a remote host (no fd passing, QEMU's files on "its" host)."""
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        if qemu_conf:  # session mode reads $XDG_CONFIG_HOME/libvirt/qemu.conf
            self._config("qemu.conf", qemu_conf)
        self.tcp_port = tcp_port
        if tcp_port:
            listen = f'listen_tls = 0\nlisten_tcp = 1\ntcp_port = "{tcp_port}"\nlisten_addr = "127.0.0.1"\n'
            self._config("libvirtd.conf", listen + 'auth_tcp = "none"\n')
        self.tcp_uri = f"qemu+tcp://127.0.0.1:{tcp_port}/session" if tcp_port else None
        self.sock = root / "run/libvirt/libvirt-sock"
        self.uri = f"qemu+unix:///session?socket={self.sock}"
        self.log = root / "libvirtd.log"
        self.proc: subprocess.Popen | None = None

    def _config(self, name: str, text: str) -> None:
        conf = self.root / "cfg/libvirt" / name
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(text)
        for d in (self.root / "cfg", conf.parent):
            d.chmod(0o777)  # the daemon (nobody) adds its own dirs here
        conf.chmod(0o644)

    def unusable(self) -> str | None:
        """Why this machine cannot run one, or None."""
        if not os.access(LIBVIRTD, os.X_OK):
            return f"{LIBVIRTD} not installed (libvirt-daemon, libvirt-daemon-driver-qemu)"
        try:
            import libvirt  # noqa: F401
        except ImportError:
            return "no libvirt Python binding (python3-libvirt; tools/bootstrap.sh links it)"
        return None

    def start(self, timeout: float = 30.0) -> None:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.root),
            **{
                f"XDG_{k}": str(self.root / v)
                for k, v in {
                    "CONFIG_HOME": "cfg",
                    "RUNTIME_DIR": "run",
                    "CACHE_HOME": "cache",
                    "DATA_HOME": "state",
                }.items()
            },
        }
        argv = [LIBVIRTD, *(["--listen"] if self.tcp_port else [])]
        if os.geteuid() == 0:
            os.chmod(self.root, 0o777)
            argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while not self.sock.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"libvirtd did not start; log {self.log}:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.1)

    def qemu_pids(self) -> list[int]:
        """The QEMUs this daemon runs, from its pid files (QEMU's argv checked against pid reuse)."""
        pids = []
        for pidfile in (self.root / "run/libvirt/qemu").glob("**/*.pid"):
            try:
                pid = int(pidfile.read_text().strip())
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if b"qemu-system" in f.read().split(b"\0")[0]:
                        pids.append(pid)
            except (OSError, ValueError):
                continue
        return pids

    def stop(self) -> None:
        """End the daemon (its process group) and the QEMUs it started: libvirt puts each QEMU in
        a session of its own, so they are ended by pid."""
        if self.proc is None:
            return
        qemus = self.qemu_pids()
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None
        for pid in qemus:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
