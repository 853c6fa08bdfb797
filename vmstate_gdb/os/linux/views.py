"""The Linux views as text and JSON-able data, the same for `vmstate linux` and the gdb commands:
(data, text) = VIEWS[name](kernel, pid)."""

from __future__ import annotations

from ...errors import VmstateError


def _task_arg(pid: str | None, kernel, view: str):
    if pid is None:
        raise VmstateError(f"`{view}` needs a PID (see the task list: ps)")
    try:
        number = int(pid, 0)
    except ValueError:
        raise VmstateError(f"PID {pid!r} is not a number") from None
    return kernel.task(number)


def render_ps(kernel, pid: str | None = None) -> tuple[list[dict], str]:
    from .tasks import list_tasks

    rows = list_tasks(kernel)
    lines = [f"{'PID':>7} {'TGID':>7} {'PPID':>7} S {'CPU':>3} {'VCPU':>4} {'UID':>5} COMM"]
    for r in rows:
        vcpu = "-" if r.vcpu is None else str(r.vcpu)
        name = f"[{r.name}]" if r.kernel_thread else r.name
        lines.append(f"{r.pid:>7} {r.tgid:>7} {r.ppid:>7} {r.state} {r.cpu:>3} {vcpu:>4} {r.uid:>5} {name}")
    return [r.as_dict() for r in rows], "\n".join(lines)


def render_dmesg(kernel, pid: str | None = None) -> tuple[list[dict], str]:
    from .log import kernel_log

    records = kernel_log(kernel)
    return [r.as_dict() for r in records], "\n".join(r.line() for r in records) or "(the kernel log is empty)"


def render_modules(kernel, pid: str | None = None) -> tuple[list[dict], str]:
    from .modules import list_modules

    rows = list_modules(kernel)
    return [r.as_dict() for r in rows], "\n".join(r.proc_line() for r in rows) or "(no modules loaded)"


def render_bt(kernel, pid: str | None = None) -> tuple[list[dict], str]:
    from .tasks import all_tasks, kernel_stack, list_tasks

    if pid in (None, "all"):
        rows = list_tasks(kernel)
        tasks = all_tasks(kernel)
    else:
        task = _task_arg(pid, kernel, "bt")
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


def render_maps(kernel, pid: str | None = None) -> tuple[list[dict], str]:
    from .process import process_vmas

    vmas = process_vmas(kernel, _task_arg(pid, kernel, "maps"))
    return [v.as_dict() for v in vmas], "\n".join(v.maps_line() for v in vmas)


def render_files(kernel, pid: str | None = None) -> tuple[list[dict], str]:
    from .process import open_files

    files = open_files(kernel, _task_arg(pid, kernel, "files"))
    return [f.as_dict() for f in files], "\n".join(f"{f.fd:>4} {f.path}" for f in files) or "(no open files)"


VIEWS = {
    "ps": render_ps,
    "dmesg": render_dmesg,
    "modules": render_modules,
    "bt": render_bt,
    "maps": render_maps,
    "files": render_files,
}
