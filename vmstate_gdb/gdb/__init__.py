"""The gdb side of vmstate_gdb: commands and convenience functions, loaded inside gdb by vmstate.gdb.

Importing this package registers everything; it needs gdb's embedded Python (the `gdb` module).
"""

from __future__ import annotations

import gdb  # type: ignore[import-not-found]

from .commands import COMMANDS
from .functions import FUNCTIONS
from .linux import COMMANDS as LINUX_COMMANDS
from .session import SESSION
from .unwinder import install as install_unwinder


def _register() -> None:
    for cls in COMMANDS + LINUX_COMMANDS + FUNCTIONS:
        cls()
    install_unwinder()

    def _on_exit(_event=None) -> None:
        SESSION.close()

    if hasattr(gdb.events, "gdb_exiting"):
        gdb.events.gdb_exiting.connect(_on_exit)
    import atexit

    atexit.register(_on_exit)


_register()
