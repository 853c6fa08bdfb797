"""The gdb remote serial protocol server over a :class:`~vmstate_gdb.snapshot.Snapshot`.

``python -m vmstate_gdb.rsp --socket PATH SNAP`` (what `vmstate-open` runs) or ``vmstate serve``.
"""

from .server import SnapshotServer, serve_socket

__all__ = ["SnapshotServer", "serve_socket"]
