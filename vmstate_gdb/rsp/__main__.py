"""``python -m vmstate_gdb.rsp``: serve one snapshot to gdb over a Unix socket or TCP."""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import socket
import sys

from ..errors import VmstateError

PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """The server started by gdb must not outlive it (Linux: a signal when the parent exits)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        sys.exit(0)


def listen(args) -> socket.socket:
    if args.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if os.path.exists(args.socket):
            os.unlink(args.socket)
        old = os.umask(0o077)
        try:
            sock.bind(args.socket)
        finally:
            os.umask(old)
    else:
        host, _, port = args.listen.rpartition(":")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host or "127.0.0.1", int(port)))
    sock.listen(1)
    return sock


def _side_listener(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o077)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    sock.listen(1)
    return sock


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("snap", metavar="SNAPSHOT", help="migration stream, libvirt save file or qcow2 image")
    p.add_argument(
        "--snapshot", metavar="NAME", help="internal snapshot of a qcow2 image (default: the only one)"
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--socket", metavar="PATH", help="listen on a Unix socket (gdb: target remote PATH)")
    where.add_argument(
        "--listen",
        metavar="[HOST:]PORT",
        default="127.0.0.1:1234",
        help="listen on TCP (default 127.0.0.1:1234)",
    )
    p.add_argument("--once", action="store_true", help="exit when the first client disconnects")
    p.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    p.add_argument("--accept-timeout", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--log", action="store_true", help="log every packet to stderr")
    p.add_argument("--side-socket", help=argparse.SUPPRESS)  # qvmstate operations as JSON lines
    p.add_argument("--progress", action="store_true", help=argparse.SUPPRESS)  # "progress D T" lines


def run(args) -> int:
    from ..snapshot import open_snapshot
    from .server import _stderr_log, serve_socket

    if args.parent_pid:
        _die_with_parent(args.parent_pid)
    progress = None
    if args.progress:
        from ..progress import ProgressLines

        progress = ProgressLines(lambda done, total: print(f"progress {done} {total}", flush=True))
    try:
        snap = open_snapshot(
            args.snap, snapshot=args.snapshot, progress=progress, decompress_progress=progress
        )
        if not snap.cpus:  # decoded now, so a corrupt vCPU is this one clear line, not a crash later
            snap.cpu(0)
    except VmstateError as e:
        print(f"error: {e}", flush=True)
        return 1
    try:
        try:
            sock = listen(args)
        except OSError as e:
            print(f"error: cannot listen on {args.socket or args.listen}: {e.strerror or e}", flush=True)
            return 1
        where = args.socket or "{}:{}".format(*sock.getsockname()[:2])
        arch = snap.arch
        print(
            f"ready {where} vcpus={snap.ncpus} arch={arch.gdb_architecture} gdb={arch.gdb_program}",
            flush=True,
        )
        if args.accept_timeout:
            sock.settimeout(args.accept_timeout)
        side = _side_listener(args.side_socket) if args.side_socket else None
        try:
            serve_socket(snap, sock, once=args.once, log=_stderr_log if args.log else None, side=side)
        except TimeoutError:
            return 1
        except KeyboardInterrupt:
            return 130
        finally:
            sock.close()
            for path in (args.socket, args.side_socket):
                if path and os.path.exists(path):
                    os.unlink(path)
    finally:
        snap.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vmstate_gdb.rsp", description=__doc__)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
