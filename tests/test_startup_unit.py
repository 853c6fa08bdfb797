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


def test_the_command_table_names_what_each_module_registers():
    """cli.COMMAND_MODULES lets a call import only its command's module: it must say exactly what
    each module registers, or a command would be missing when typed."""
    import argparse
    import importlib

    from vmstate_gdb import cli

    for module, commands in cli.COMMAND_MODULES.items():
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(module).register(sub)
        assert tuple(sub.choices) == commands, module
    full = set(cli.build_parser()._subparsers._group_actions[0].choices)
    assert full >= {c for commands in cli.COMMAND_MODULES.values() for c in commands} | {"info", "snapshots"}


def test_a_built_in_command_imports_no_other_commands_module(tmp_path):
    code = f"import vmstate_gdb.cli as c\nc.main(['info', {str(tmp_path / 'none')!r}])"
    loaded = "sorted(m for m in sys.modules if m.endswith(('.cli', '.learn')))"
    probe = code + f"\nimport json, sys; print(json.dumps({loaded}))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["vmstate_gdb.cli"]
