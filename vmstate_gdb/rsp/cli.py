"""`vmstate serve`: the protocol server for any gdb-remote client (gdb, lldb, IDE debuggers)."""

from __future__ import annotations

from .__main__ import add_arguments, run


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve a snapshot over the gdb remote protocol (TCP or Unix socket)")
    add_arguments(p)
    p.set_defaults(func=run)
