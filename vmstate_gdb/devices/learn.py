"""``vmstate learn``: add the device layouts of a QEMU build to the description library.

From a QEMU binary: start it paused (``-S``, no guest needed) with the user's machine and device
options, migrate to a temporary file and keep that stream's VMDESCRIPTION. From a snapshot that has
a VMDESCRIPTION: keep its layouts (a running guest's stream also carries the subsections a fresh
VM does not send). Either way the result is one file in the user's description directory.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from ..errors import VmstateError

QEMU_TIMEOUT = 60.0


class LearnError(VmstateError):
    pass


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:120] or "layouts"


def qemu_version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        raise LearnError(f"{binary}: cannot run it: {e}") from None
    m = re.search(r"version (\d+\.\d+\.\d+)", out)
    if not m:
        raise LearnError(f"{binary}: not a QEMU system emulator (--version printed {out.strip()[:80]!r})")
    return m.group(1)


def vmdesc_from_qemu(binary: str, args: list[str], run_s: float = 0.0) -> tuple[dict, str]:
    """Start ``binary`` paused with ``args``, migrate it to a file, return (VMDESCRIPTION, source).

    ``run_s``: let the VM run that long first, so its firmware has driven the devices (SeaBIOS
    identifies IDE and AHCI disks, and an identified drive's state has fields a fresh one lacks)."""
    from qemu.qmp.legacy import QEMUMonitorProtocol

    from ..stream.vmdesc import locate_trailer

    version = qemu_version(binary)
    tmp = Path(tempfile.mkdtemp(prefix="vmstate-learn-"))
    sock, stream, log = tmp / "qmp.sock", tmp / "stream", tmp / "stderr"
    qmp = QEMUMonitorProtocol(str(sock), server=True)
    proc: subprocess.Popen | None = None
    try:
        argv = [binary, "-S", "-display", "none", "-monitor", "none", "-serial", "null",
                "-qmp", f"unix:{sock}", *args]  # fmt: skip
        with open(log, "wb") as err:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True
            )
        try:
            qmp.accept(timeout=QEMU_TIMEOUT)
        except Exception:
            proc.poll()
            raise LearnError(f"{binary} did not start: {_tail(log)}") from None
        machine = _machine(qmp)
        if run_s:
            qmp.cmd("cont")
            time.sleep(run_s)
            qmp.cmd("stop")
        qmp.cmd("migrate", uri=f"exec:cat > {stream}")
        deadline = time.monotonic() + QEMU_TIMEOUT
        while True:
            info = qmp.cmd("query-migrate")
            status = info.get("status") if isinstance(info, dict) else None
            if status == "completed":
                break
            if status in ("failed", "cancelled") or time.monotonic() > deadline:
                raise LearnError(f"{binary}: migration to a file {status or 'timed out'}: {info}")
            time.sleep(0.05)
        raw = stream.read_bytes()
        found = locate_trailer(raw, len(raw))
        if found is None:
            raise LearnError(
                f"{binary}: its stream has no VMDESCRIPTION (is suppress-vmdesc=on among the options?)"
            )
        return found[1], f"QEMU {version} {machine}" + (" (after its firmware ran)" if run_s else "")
    finally:
        try:
            qmp.close()
        except Exception:
            pass
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def _machine(qmp) -> str:
    try:
        return str(qmp.cmd("qom-get", path="/machine", property="type")).removesuffix("-machine")
    except Exception:
        return "?"


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no output"
    return lines[-1] if lines else "no output"


def save_layouts(vmdesc: dict, source: str, directory: Path | None = None) -> tuple[Path, int]:
    """Add ``vmdesc``'s layouts to the user's file for ``source`` (written atomically); returns
    (that file, how many layouts the whole library did not know before)."""
    from . import library

    probe = library.Library()
    probe.merge_json(library.load().to_json())
    new = probe.add_vmdesc(vmdesc, source)
    directory = directory or library.user_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{_slug(source)}.json.gz"
    lib = library.Library()
    if path.exists():
        try:
            lib.merge_json(library.read_file(path))
        except (OSError, ValueError, EOFError):
            pass  # a damaged file of ours: replaced by this one
    lib.add_vmdesc(vmdesc, source)
    fd, tmpname = tempfile.mkstemp(dir=directory, prefix=".learn-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(gzip.compress(json.dumps(lib.to_json(), separators=(",", ":")).encode(), mtime=0))
        os.replace(tmpname, path)
    except BaseException:
        try:
            os.unlink(tmpname)
        except FileNotFoundError:
            pass
        raise
    return path, new


def cmd_learn(args) -> int:
    from . import library

    source = args.source
    if os.path.isfile(source) and os.access(source, os.X_OK) and not source.endswith((".vmstate", ".img")):
        vmdesc, label = vmdesc_from_qemu(source, args.qemu_args)
    else:
        if args.qemu_args:
            raise LearnError(f"{source}: QEMU options are only for learning from a QEMU binary")
        from ..snapshot import Snapshot

        with Snapshot.open(source) as snap:
            if snap.index.vmdesc is None:
                raise LearnError("has no VMDESCRIPTION to learn from", source)
            machine = snap.index.machine_type or "?"
            vmdesc, label = snap.index.vmdesc, f"{machine} stream {Path(source).name}"
    path, new = save_layouts(vmdesc, label)
    n = len(library.device_entries(vmdesc))
    print(f"learned {new} new layouts from {label} ({n} devices) -> {path}")
    return 0


def register(sub) -> None:
    sp = sub.add_parser(
        "learn",
        help="learn device layouts from a QEMU binary or a stream, for streams without VMDESCRIPTION",
        description="Add the device layouts of a QEMU build to the description library, so that "
        "streams written with suppress-vmdesc=on decode by name. SOURCE is a QEMU system emulator "
        "(started paused with the options after it, e.g. -machine q35 -device e1000e; no guest "
        "is needed) or a snapshot that carries a VMDESCRIPTION. Layouts go to "
        "$VMSTATE_DESCRIPTIONS or ~/.local/share/vmstate_gdb/descriptions.",
    )
    sp.add_argument("source", metavar="SOURCE", help="qemu-system-* binary, or a snapshot file")
    sp.add_argument("qemu_args", nargs=argparse.REMAINDER, help="QEMU options (machine, devices)")
    sp.passes_rest_on = True
    sp.set_defaults(func=cmd_learn)
