"""The gdb remote serial protocol server over a :class:`~vmstate_gdb.snapshot.Snapshot`.

``python -m vmstate_gdb.rsp --socket PATH SNAP`` (what `vmstate-open` runs) or ``vmstate serve``.
"""

__all__ = ["SnapshotServer", "serve_socket"]


def __getattr__(name: str):
    """Loaded on first use, so that `vmstate --help` does not pay for the server."""
    if name in __all__:
        from . import server

        return getattr(server, name)
    raise AttributeError(name)
