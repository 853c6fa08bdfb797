"""`vmstate linux SNAP ps|dmesg|modules|bt|maps|files`, `vmstate drgn SNAP [SCRIPT]` and
`vmstate app-core SNAP PID OUT`: the software inside a Linux guest, with no debug vmlinux."""

from __future__ import annotations

import argparse

VIEW_NAMES = ("ps", "dmesg", "modules", "bt", "maps", "files")


def _kernel(snap, args, plugins: bool = False):
    from .kernel import open_linux

    return open_linux(snap, vmlinux=args.vmlinux, use_cache=not args.no_cache, plugins=plugins)


def cmd_linux(args) -> int:
    from ...cli import _emit, _open
    from .kernel import kernel_errors
    from .views import VIEWS

    with _open(args) as snap, kernel_errors(snap.path):
        kernel = _kernel(snap, args)
        data, text = VIEWS[args.view](kernel, args.pid)
        _emit(args, data, text)
    return 0


def cmd_drgn(args) -> int:
    from ...cli import _open
    from .kernel import kernel_errors
    from .shell import run_script, run_shell

    with _open(args) as snap, kernel_errors(snap.path):
        kernel = _kernel(snap, args, plugins=True)
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
    sp.add_argument("view", choices=VIEW_NAMES, metavar="VIEW", help=", ".join(VIEW_NAMES))
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
    sp.passes_rest_on = True

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
