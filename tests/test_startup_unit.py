"""The command line starts without loading what only some commands need.

`vmstate --help`, `snapshots` and `resume-cmd` are typed often and read no stream index: their start
is Python's own plus argparse. A module that imports the reader, the writer, asyncio or drgn at the
top of a `register()` module makes every call pay for it; this catches that.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

HEAVY = (
    "asyncio",
    "drgn",
    "qemu.qmp",
    "vmstate_gdb.snapshot",
    "vmstate_gdb.stream.index",
    "vmstate_gdb.devices.tree",
    "vmstate_gdb.rsp.server",
    "vmstate_gdb.capture.monitor",
    "vmstate_gdb.os.linux.kernel",
)


def _loaded_after(code: str) -> list[str]:
    probe = code + f"\nimport json, sys; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_parser_loads_no_heavy_module():
    assert _loaded_after("import vmstate_gdb.cli as c; c.build_parser()") == []


def test_help_loads_no_heavy_module():
    code = "import vmstate_gdb.cli as c\ntry:\n    c.main(['--help'])\nexcept SystemExit:\n    pass"
    assert _loaded_after(code) == []


def test_resume_cmd_of_missing_file_loads_no_heavy_module(tmp_path):
    code = f"import vmstate_gdb.cli as c\nc.main(['resume-cmd', {str(tmp_path / 'none')!r}])"
    assert _loaded_after(code) == []
