"""The one open snapshot of a gdb session: its server process, socket and the packets to it.

The server runs in its own process (the package's own Python, not gdb's) on a Unix socket in a
private directory; gdb is its only client (`target remote SOCKET`). The gdb side never reads the
snapshot itself: everything goes through ``qvmstate.*`` packets whose replies are hex JSON.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import gdb  # type: ignore[import-not-found]

READY_TIMEOUT = 600.0  # indexing a many-GiB stream can take a while
SIDE_TIMEOUT = 300.0  # a side request may first build the kernel view (seconds on a loaded host)


class SessionError(gdb.GdbError):
    pass


def _python() -> list[str]:
    """The interpreter for the server: $VMSTATE_GDB_PYTHON, the venv's python, or python3 with gdb's
    sys.path (which vmstate.gdb extended with the venv's site-packages)."""
    explicit = os.environ.get("VMSTATE_GDB_PYTHON")
    if explicit:
        return [explicit]
    venv = os.environ.get("VMSTATE_GDB_VENV")
    if venv and os.path.exists(os.path.join(venv, "bin", "python")):
        return [os.path.join(venv, "bin", "python")]
    return [shutil.which("python3") or "/usr/bin/python3"]


class Session:
    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.directory: str | None = None
        self.socket: str | None = None
        self.path: str | None = None
        self.side_path: str | None = None
        self.side = None  # the side channel's file object, connected on first use
        self.facts: dict = {}
        self.cached = False  # our `mem` region that lets gdb cache the snapshot's memory is set
        self.cache_wanted = True  # `set vmstate-cache off`: every read goes to the server

    # -- lifetime -----------------------------------------------------------------------------

    def open(self, path: str, snapshot: str | None = None, progress=None) -> None:
        """``progress(done, total)``: called while the server indexes a big snapshot."""
        self.close()
        path = os.path.abspath(os.path.expanduser(path))
        if not os.path.exists(path):
            raise SessionError(f"{path}: no such file")
        self.directory = tempfile.mkdtemp(prefix="vmstate-gdb-")
        os.chmod(self.directory, 0o700)
        self.socket = os.path.join(self.directory, "gdb.sock")
        self.side_path = os.path.join(self.directory, "side.sock")
        argv = _python() + [
            "-m",
            "vmstate_gdb.rsp",
            "--socket",
            self.socket,
            "--once",
            "--parent-pid",
            str(os.getpid()),
            "--accept-timeout",
            "120",
            "--side-socket",
            self.side_path,
        ]
        if snapshot:
            argv += ["--snapshot", snapshot]
        if progress is not None:
            argv.append("--progress")
        argv.append(path)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        log = open(os.path.join(self.directory, "server.log"), "wb")
        try:
            # Own session: a Ctrl-C typed at gdb must not reach the server.
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
                start_new_session=True,
            )
        except OSError as e:
            self.close()
            raise SessionError(f"cannot start the snapshot server ({argv[0]}): {e.strerror or e}") from None
        finally:
            log.close()
        line = self._first_line(progress)
        if not line.startswith("ready"):
            self.close()
            raise SessionError(line.removeprefix("error: ") or "the snapshot server did not start")
        self.path = path
        fields = dict(w.split("=", 1) for w in line.split() if "=" in w)
        wanted = fields.get("arch")
        names = getattr(gdb, "architecture_names", None)  # gdb >= 12
        if wanted and names is not None and wanted not in names():
            self.close()
            raise SessionError(
                f"this snapshot's guest is {wanted}, which this gdb cannot debug "
                f"(use {fields.get('gdb', 'gdb-multiarch')})"
            )
        try:
            gdb.execute(f"target remote {self.socket}", to_string=True)
        except gdb.error as e:
            self.close()
            raise SessionError(f"cannot connect to the snapshot server: {e}") from None
        self._cache_memory()
        self.facts = self.request("facts")

    def _cache_memory(self) -> None:
        """A frozen VM's memory changes only by our own edits, so gdb may keep what it read: one
        `x/100000x` is then 4 reads of 128 KiB (what one m reply holds), not 100,000 round trips of
        4 bytes. gdb drops the
        cache when the thread (a task's address space) changes; a write through gdb updates it;
        edits made by the server (vmstate-* commands, `monitor` ones) flush it
        (_flush_gdb_caches, and vmstate.gdb's hookpost-monitor)."""
        self._uncache_memory()
        if not self.cache_wanted:
            return
        try:
            for command in ("mem 0 0 cache", "set dcache line-size 131072", "set dcache size 256"):
                gdb.execute(command, to_string=True)
            self.cached = True
        except gdb.error:
            pass

    def set_cache(self, wanted: bool) -> None:
        self.cache_wanted = wanted
        if self.connected():
            self._cache_memory()
        else:
            self._uncache_memory()

    def _uncache_memory(self) -> None:
        if self.cached:
            try:
                gdb.execute("delete mem", to_string=True)
            except gdb.error:
                pass
        self.cached = False

    def _first_line(self, progress=None) -> str:
        """The server's first line that is not a ``progress DONE TOTAL`` line (those go to
        ``progress``)."""
        assert self.process is not None and self.process.stdout is not None
        out = self.process.stdout
        deadline = time.monotonic() + READY_TIMEOUT
        buf = b""
        while time.monotonic() < deadline:
            while buf.startswith(b"progress ") and b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if progress is not None:
                    _, done, total = line.split()
                    progress(int(done), int(total))
            if b"\n" in buf:
                break
            ready, _, _ = select.select([out], [], [], 0.5)
            if ready:
                chunk = os.read(out.fileno(), 4096)
                if not chunk:
                    break
                buf += chunk
            elif self.process.poll() is not None:
                break
        text = buf.decode(errors="replace").strip()
        if not text:
            tail = self.server_log()[-300:].strip().splitlines()
            return "error: the snapshot server exited" + (f": {tail[-1]}" if tail else "")
        return text.splitlines()[0]

    def server_log(self) -> str:
        try:
            with open(os.path.join(self.directory or "", "server.log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def connected(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            return False
        conn = gdb.selected_inferior().connection
        return conn is not None and getattr(conn, "type", "") in ("remote", "extended-remote")

    def close(self) -> None:
        """Detach gdb (if attached to our server), end the server, remove the socket directory."""
        self._close_side()
        self._uncache_memory()
        if self.process is not None:
            try:
                if self.connected():
                    gdb.execute("detach", to_string=True)
            except gdb.error:
                pass
            try:
                self.process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.process.terminate()
                try:
                    self.process.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            if self.process.stdout:
                self.process.stdout.close()
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)
        self.process = self.directory = self.socket = self.path = None
        self.facts = {}

    # -- requests -----------------------------------------------------------------------------

    def side_request(self, op: str, progress=None, **args):
        """A request over the side channel, for code that runs while gdb talks to the target
        (frame unwinders), where a remote packet would re-enter gdb, and for long operations
        that report ``progress(done, total)`` as they go."""
        if not self.connected():
            raise SessionError("no snapshot is open (vmstate-open SNAPSHOT)")
        try:
            if self.side is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(SIDE_TIMEOUT)
                sock.connect(self.side_path)
                self.side = sock.makefile("rwb")
                sock.close()  # the file object keeps the connection
            request = {"op": op, "args": args, **({"progress": True} if progress else {})}
            self.side.write(json.dumps(request).encode() + b"\n")
            self.side.flush()
            line = self.side.readline()
            while line.startswith(b'{"progress"'):
                progress(*json.loads(line)["progress"])
                line = self.side.readline()
        except OSError as e:
            self._close_side()
            raise SessionError(f"the snapshot server's side channel failed: {e}") from None
        try:
            reply = json.loads(line)
        except ValueError:
            self._close_side()
            raise SessionError("the snapshot server's side channel closed") from None
        if "error" in reply:
            raise SessionError(reply["error"])
        return reply["result"]

    def _close_side(self) -> None:
        if self.side is not None:
            try:
                self.side.close()
            except OSError:
                pass
            self.side = None

    def request(self, op: str, **args):
        if not self.connected():
            if self.process is not None and self.process.poll() is not None:
                raise SessionError("the snapshot server has exited; vmstate-open the snapshot again")
            raise SessionError("no snapshot is open (vmstate-open SNAPSHOT)")
        conn = gdb.selected_inferior().connection
        packet = f"qvmstate.{op}"
        if args:
            packet += ":" + json.dumps(args).encode().hex()
        try:
            raw = conn.send_packet(packet)
        except gdb.error as e:
            raise SessionError(f"the snapshot server did not answer: {e}") from None
        if isinstance(raw, str):
            raw = raw.encode()
        try:
            reply = json.loads(bytes.fromhex(raw.decode()))
        except ValueError:
            raise SessionError(f"unexpected reply from the snapshot server: {raw[:80]!r}") from None
        if "error" in reply:
            raise SessionError(reply["error"])
        return reply["result"]


SESSION = Session()
