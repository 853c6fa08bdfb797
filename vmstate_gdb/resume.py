"""How to resume a snapshot: QEMU's command line from the `.meta.json` written beside snapshots by
`vmstate capture` and the test harness, with the incoming source and any new MAC substituted."""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass, field

META_SUFFIX = ".meta.json"


def meta_path(snapshot_path: str) -> str:
    return snapshot_path + META_SUFFIX


def load_meta(snapshot_path: str) -> dict | None:
    try:
        with open(meta_path(snapshot_path)) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def write_meta(snapshot_path: str, meta: dict) -> None:
    """Atomic like a save (two saves racing to one output each write a whole file; a kill leaves
    no temporary); a failure is a SaveError naming the .meta.json."""
    from .errors import SaveError
    from .writer.emit import AtomicOutput

    path = meta_path(snapshot_path)
    try:
        with AtomicOutput(path) as f:
            f.write(json.dumps(meta, indent=1).encode())
    except OSError as e:
        raise SaveError(f"cannot write: {e.strerror or e}", path) from None


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
        if kind == "qcow2":
            # the image the command line named (the meta may have been copied with the image)
            for image in {original_image, meta.get("path")} - {None}:
                a = a.replace(f"file={image},", f"file={os.path.abspath(snapshot_path)},")
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


@dataclass
class ResumePlan:
    """How to resume a snapshot: the command line, what to type in its monitor, and caveats."""

    argv: list[str] | None
    monitor: list[str] = field(default_factory=list)  # HMP commands, typed after Ctrl-a c
    notes: list[str] = field(default_factory=list)
    runs_at_once: bool = False

    def text(self, kind: str, snapshot_path: str) -> str:
        if kind == "libvirt" and self.argv is not None:
            lines = ["to resume (libvirt builds QEMU's command line from the image's XML):"]
            lines += ["  " + shlex.join(self.argv)]
            lines += [f"  note: {n}" for n in self.notes]
            return "\n".join(lines)
        if self.argv is None:
            how = (
                f"start QEMU with the VM's own options plus -loadvm TAG on {snapshot_path}"
                if kind == "qcow2"
                else f'start QEMU with the VM\'s own options plus -incoming "exec:cat {snapshot_path}"'
            )
            lines = [f"to resume: {how}"]
        else:
            lines = ["to resume:", "  " + shlex.join(self.argv)]
        if self.monitor:
            lines.append("  then press Ctrl-a c (the monitor) and type: " + "; ".join(self.monitor))
        if self.runs_at_once:
            lines.append("  the VM runs on as soon as it is loaded")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def plan_libvirt_restore(snapshot_path: str, was_running: bool, name: str | None = None) -> ResumePlan:
    """A libvirt save image is resumed by libvirt, which builds QEMU's command line from the XML in
    the image's header (``virsh restore``); QEMU's own command line does not apply."""
    path = os.path.abspath(snapshot_path)
    if (
        os.path.basename(os.path.dirname(path)) == "save"
        and name
        and os.path.basename(path) == f"{name}.save"
    ):
        # libvirt's managed save (…/qemu/save/NAME.save): starting the domain resumes it, and libvirt
        # removes the image; a `virsh restore` of it would leave libvirt's record of it behind
        return ResumePlan(
            ["virsh", "start", name],
            runs_at_once=was_running,
            notes=["a managed save image: starting the domain resumes it (add -c URI for its daemon)"],
        )
    plan = ResumePlan(["virsh", "restore", path], runs_at_once=was_running)
    if not was_running:
        plan.notes.append(
            "the domain was paused when saved: it stays paused; continue it with "
            f"'virsh resume {name or 'DOMAIN'}'"
        )
    plan.notes.append("add -c URI to reach the daemon that should run it (default: virsh's own)")
    plan.notes.append("a domain of the same name and UUID must not be running already")
    return plan


def plan_resume(
    meta: dict,
    snapshot_path: str,
    kind: str,
    tag: str | None,
    *,
    mapped_ram: bool,
    running: bool,
    machine_type: str | None = None,
) -> ResumePlan:
    argv = (
        resume_argv(
            meta,
            snapshot_path,
            kind,
            tag or meta.get("tag"),
            meta.get("mac_changes"),
            meta.get("original_image"),
            mapped_ram,
            machine_type,
        )
        if meta
        else None
    )
    # -loadvm at startup starts the VM afterwards (no -S); -incoming does so only when the stream's
    # globalstate says it was running (process_incoming_migration_bh in migration/migration.c).
    running = running or kind == "qcow2"
    plan = ResumePlan(argv, runs_at_once=running)
    if mapped_ram:
        plan.monitor += [
            "migrate_set_capability mapped-ram on",
            f"migrate_incoming file:{os.path.abspath(snapshot_path)}",
        ]
    if not running:
        plan.monitor.append("cont")
    original = meta.get("original_image") or ""
    if kind != "qcow2" and (meta.get("format") == "qcow2" or original.endswith(".qcow2")) and original:
        snap_tag = tag or meta.get("tag") or "TAG"
        plan.notes.append(
            f"the VM's disk must be in the snapshot's state, not {original} as it is: resume with a copy, "
            f"'cp {original} disk.qcow2 && qemu-img snapshot -a {snap_tag} disk.qcow2', "
            "and point -drive at disk.qcow2"
        )
    return plan
