"""`vmstate linux SNAP ps|dmesg|modules|bt|maps|files`, `vmstate drgn SNAP [SCRIPT]` and
`vmstate app-core SNAP PID OUT`: the software inside a Linux guest, with no debug vmlinux."""

from __future__ import annotations

import argparse

from ...errors import VmstateError

VIEWS = ("ps", "dmesg", "modules", "bt", "maps", "files")


def _kernel(snap, args):
    from .kernel import open_linux

    return open_linux(snap, vmlinux=args.vmlinux, use_cache=not args.no_cache)


def _task_arg(args, kernel, view: str):
    if args.pid is None:
        raise VmstateError(f"`linux {view}` needs a PID (see `vmstate linux SNAP ps`)")
    try:
        pid = int(args.pid, 0)
    except ValueError:
        raise VmstateError(f"PID {args.pid!r} is not a number") from None
    return kernel.task(pid)


def cmd_linux(args) -> int:
    from ...cli import _emit, _open
    from .kernel import kernel_errors

    with _open(args) as snap, kernel_errors(snap.path):
        kernel = _kernel(snap, args)
        data, text = RENDER[args.view](args, kernel)
        _emit(args, data, text)
    return 0


def render_ps(args, kernel) -> tuple[list[dict], str]:
    from .tasks import list_tasks

    rows = list_tasks(kernel)
    lines = [f"{'PID':>7} {'TGID':>7} {'PPID':>7} S {'CPU':>3} {'VCPU':>4} {'UID':>5} COMM"]
    for r in rows:
        vcpu = "-" if r.vcpu is None else str(r.vcpu)
        name = f"[{r.comm}]" if r.kernel_thread else r.comm
        lines.append(f"{r.pid:>7} {r.tgid:>7} {r.ppid:>7} {r.state} {r.cpu:>3} {vcpu:>4} {r.uid:>5} {name}")
    return [r.as_dict() for r in rows], "\n".join(lines)


def render_dmesg(args, kernel) -> tuple[list[dict], str]:
    from .log import kernel_log

    records = kernel_log(kernel)
    return [r.as_dict() for r in records], "\n".join(r.line() for r in records) or "(the kernel log is empty)"


def render_modules(args, kernel) -> tuple[list[dict], str]:
    from .modules import list_modules

    rows = list_modules(kernel)
    return [r.as_dict() for r in rows], "\n".join(r.proc_line() for r in rows) or "(no modules loaded)"


def render_bt(args, kernel) -> tuple[list[dict], str]:
    from .tasks import all_tasks, kernel_stack, list_tasks

    if args.pid in (None, "all"):
        rows = list_tasks(kernel)
        tasks = all_tasks(kernel)
    else:
        task = _task_arg(args, kernel, "bt")
        rows = [r for r in list_tasks(kernel) if r.address == task.value_()]
        tasks = [task]
    data, lines = [], []
    for row, task in zip(rows, tasks, strict=True):
        try:
            frames = kernel_stack(kernel, task)
            error = None
        except (ValueError, LookupError) as e:  # drgn: no stack (a zombie, a task being created)
            frames, error = [], str(e)
        where = f"running on vCPU {row.vcpu}" if row.vcpu is not None else f"state {row.state}"
        lines.append(f"PID {row.pid} ({row.comm}) {where}, CPU {row.cpu}")
        lines.extend("  " + f.text() for f in frames)
        if error:
            lines.append(f"  (no stack: {error})")
        lines.append("")
        data.append({"task": row.as_dict(), "frames": [f.as_dict() for f in frames], "error": error})
    return data, "\n".join(lines).rstrip()


def render_maps(args, kernel) -> tuple[list[dict], str]:
    from .process import process_vmas

    vmas = process_vmas(kernel, _task_arg(args, kernel, "maps"))
    return [v.as_dict() for v in vmas], "\n".join(v.maps_line() for v in vmas)


def render_files(args, kernel) -> tuple[list[dict], str]:
    from .process import open_files

    files = open_files(kernel, _task_arg(args, kernel, "files"))
    return [f.as_dict() for f in files], "\n".join(f"{f.fd:>4} {f.path}" for f in files) or "(no open files)"


RENDER = {
    "ps": render_ps,
    "dmesg": render_dmesg,
    "modules": render_modules,
    "bt": render_bt,
    "maps": render_maps,
    "files": render_files,
}


def cmd_drgn(args) -> int:
    from ...cli import _open
    from .kernel import kernel_errors
    from .shell import run_script, run_shell

    with _open(args) as snap, kernel_errors(snap.path):
        kernel = _kernel(snap, args)
        if args.script:
            run_script(kernel, args.script, args.script_args)
        else:
            run_shell(kernel)
    return 0


def cmd_app_core(args) -> int:
    from ...cli import _open
    from ...export.appcore import write_app_core
    from ...progress import Progress
    from .kernel import kernel_errors

    with _open(args) as snap, kernel_errors(snap.path):
        kernel = _kernel(snap, args)
        progress = Progress(
            f"writing {args.out}", enabled=None if not args.quiet else False, min_total=16 << 20
        )
        result = write_app_core(kernel, args.pid, args.out, progress=progress)
        progress.done()
        print(result.summary())
    return 0


def _linux_options(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--vmlinux", help="the kernel's debug vmlinux (DWARF), where kallsyms/BTF do not suffice")
    sp.add_argument("--no-cache", action="store_true", help="do not use or write the per-kernel symbol cache")


def register(sub) -> None:
    from ...cli import add_snapshot_arguments

    sp = sub.add_parser(
        "linux",
        help="a Linux guest's tasks, kernel log, modules, stacks, memory maps and open files",
        description="The software inside a Linux guest, read from the kernel's own kallsyms, BTF, "
        "VMCOREINFO and ORC tables in the snapshot (no debug vmlinux needed; Linux 6.0+ with "
        "CONFIG_DEBUG_INFO_BTF). Views: ps, dmesg, modules, bt [PID|all], maps PID, files PID.",
    )
    add_snapshot_arguments(sp)
    sp.add_argument("view", choices=VIEWS, metavar="VIEW", help=", ".join(VIEWS))
    sp.add_argument("pid", nargs="?", metavar="PID", help="the task (bt: a PID or 'all', the default)")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    _linux_options(sp)
    sp.set_defaults(func=cmd_linux)

    sp = sub.add_parser(
        "drgn",
        help="drgn's interactive shell, or a drgn script, on a Linux guest's kernel",
        description="drgn on the snapshot's kernel, with no vmlinux: `prog` is the kernel; `snap` the "
        "snapshot; write(obj_or_address, value) edits guest memory and save(OUT) writes a new snapshot.",
    )
    add_snapshot_arguments(sp)
    sp.add_argument("script", nargs="?", help="a drgn script to run (omit for the interactive shell)")
    sp.add_argument("script_args", nargs=argparse.REMAINDER, help="arguments for the script (sys.argv[1:])")
    _linux_options(sp)
    sp.set_defaults(func=cmd_drgn)

    sp = sub.add_parser(
        "app-core",
        help="an ELF core of one user process of a Linux guest (gdb PROGRAM CORE)",
        description="Write an ELF core of process PID as the kernel's own coredump would: a PT_LOAD per "
        "mapping (what guest RAM holds of it), NT_PRSTATUS and NT_FPREGSET per thread, NT_PRPSINFO, "
        "NT_AUXV, NT_FILE.",
    )
    add_snapshot_arguments(sp)
    sp.add_argument("pid", type=int, metavar="PID")
    sp.add_argument("out", metavar="OUT", help="the core file to write")
    _linux_options(sp)
    sp.set_defaults(func=cmd_app_core)
