"""How to resume a snapshot: QEMU's command line from the `.meta.json` written beside snapshots by
`vmstate capture` and the test harness, with the incoming source and any new MAC substituted."""

from __future__ import annotations

import json
import os
import re
import shlex

META_SUFFIX = ".meta.json"


def meta_path(snapshot_path: str) -> str:
    return snapshot_path + META_SUFFIX


def load_meta(snapshot_path: str) -> dict | None:
    try:
        with open(meta_path(snapshot_path)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_meta(snapshot_path: str, meta: dict) -> None:
    tmp = meta_path(snapshot_path) + ".tmp"
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(tmp, meta_path(snapshot_path))


_DROP_WITH_VALUE = {
    "-incoming",
    "-loadvm",
    "-qmp",
    "-monitor",
    "-serial",
    "-chardev",
    "-mon",
    "-pidfile",
    "-daemonize",
}


def _source_argv(meta: dict) -> list[str] | None:
    for key in ("source_argv", "argv", "command_line"):
        argv = meta.get(key)
        if isinstance(argv, list) and argv:
            return list(argv)
        if isinstance(argv, str) and argv:
            return shlex.split(argv)
    return None


def resume_argv(
    meta: dict,
    snapshot_path: str,
    kind: str,
    tag: str | None = None,
    mac_changes: dict[str, str] | None = None,
    original_image: str | None = None,
    mapped_ram: bool = False,
    machine_type: str | None = None,
) -> list[str] | None:
    """QEMU argv that resumes ``snapshot_path``; None if the meta has no command line.

    The console and the monitor go to stdio; ``machine_type`` (the versioned name the
    stream records, e.g. pc-i440fx-7.2) replaces an alias such as ``-M pc``, which a newer QEMU
    would resolve to a newer machine that refuses the stream."""
    argv = _source_argv(meta)
    if argv is None:
        return None
    machine_type = machine_type or meta.get("machine_type")
    out: list[str] = []
    skip = False
    for i, a in enumerate(argv):
        if skip:
            skip = False
            continue
        if a in _DROP_WITH_VALUE and i + 1 < len(argv):
            skip = True
            continue
        if a == "-S":
            continue
        if machine_type and i > 0 and argv[i - 1] in ("-M", "-machine"):
            name, sep, opts = a.partition(",")
            if "=" not in name and name and not name.startswith(machine_type):
                a = machine_type + sep + opts
        if mac_changes:
            for old, new in mac_changes.items():
                a = re.sub(f"mac={re.escape(old)}", f"mac={new}", a, flags=re.IGNORECASE)
        if kind == "qcow2" and original_image:
            a = a.replace(f"file={original_image}", f"file={snapshot_path}")
        out.append(a)
    # The console and the monitor share stdio (Ctrl-a c switches), so the user can `cont`:
    # -nographic without -nodefaults does that already; anything else needs it said.
    if "-nographic" not in out or "-nodefaults" in out:
        out += ["-serial", "mon:stdio"]
    if "-nographic" not in out and "-display" not in out:
        out += ["-display", "none"]
    if kind == "qcow2":
        out += ["-loadvm", tag or "snap1"]
    elif mapped_ram:
        out += ["-incoming", "defer"]
    else:
        out += ["-incoming", f"exec:cat {shlex.quote(os.path.abspath(snapshot_path))}"]
    return out


def resume_text(argv: list[str] | None, kind: str, mapped_ram: bool, snapshot_path: str) -> str:
    if argv is None:
        how = (
            f"start QEMU with the VM's own options plus -loadvm TAG on {snapshot_path}"
            if kind == "qcow2"
            else f'start QEMU with the VM\'s own options plus -incoming "exec:cat {snapshot_path}"'
        )
        return f"to resume: {how}, then 'cont' in the monitor"
    text = "to resume:\n  " + shlex.join(argv)
    if mapped_ram:
        text += (
            "\n  then over QMP: migrate-set-capabilities mapped-ram=on, "
            f'migrate-incoming {{"uri": "file:{os.path.abspath(snapshot_path)}"}}'
        )
    text += "\n  then press Ctrl-a c and type 'cont': the VM was stopped when it was saved (Ctrl-a x quits)"
    return text
