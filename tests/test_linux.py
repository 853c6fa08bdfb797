"""The software inside a Linux guest, with no debug vmlinux: tasks, stacks, log, modules, a
process's maps and files, compared with what the guest itself printed before the stop
(tests/linux/init.sh's report); app cores judged by Debian's gdb; edits judged by QEMU resuming."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from drgn.helpers.linux.pid import for_each_task
from guestinfo import linux_symbols
from linuxinfo import CHILD_GLOBAL, MARKER_BINARY, MARKER_GLOBAL, guest_report, marker_lines

from vmstate_gdb.os.linux.kernel import open_linux
from vmstate_gdb.os.linux.log import kernel_log
from vmstate_gdb.os.linux.modules import list_modules
from vmstate_gdb.os.linux.process import open_files, process_vmas, threads
from vmstate_gdb.os.linux.tasks import kernel_stack, list_tasks
from vmstate_gdb.snapshot import Snapshot

pytestmark = [pytest.mark.qemu, pytest.mark.linux]
ROOT = Path(__file__).resolve().parent.parent
VMSTATE = [sys.executable, "-m", "vmstate_gdb.cli"]
GDB = "/usr/bin/gdb"
#: the report's own short-lived commands, gone by the time of the stop
TRANSIENT = {"cat", "readlink", "dmesg", "tail", "sleep", "sh", "usleep", "ls"}
LINUX_SCENARIOS = ["linux-pc-3nic", "linux-q35-3nic-qemu10", "linux-pc-kaslr-2cpu"]


class Guest:
    """One Linux snapshot opened once: the harness record, the snapshot, its kernel, the guest's report."""

    def __init__(self, meta):
        self.meta = meta
        self.snap = Snapshot.open(meta.path, snapshot=meta.tag)
        self.kernel = open_linux(self.snap)
        self.report = guest_report(meta.console)

    def close(self) -> None:
        self.snap.close()


@pytest.fixture(scope="module", params=LINUX_SCENARIOS)
def guest(request, snapshot):
    if request.param.endswith("qemu10"):
        request.applymarker(pytest.mark.qemu10)
    g = Guest(snapshot(request.param))
    yield g
    g.close()


@pytest.fixture(scope="module")
def nokaslr(snapshot):
    g = Guest(snapshot("linux-pc-3nic"))
    yield g
    g.close()


@pytest.fixture(scope="module")
def kaslr(snapshot):
    g = Guest(snapshot("linux-pc-kaslr-2cpu"))
    yield g
    g.close()


def vmstate(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*VMSTATE, *args], capture_output=True, text=True, timeout=300, cwd=ROOT)
    if check:
        assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def run_gdb(*commands: str, binary: str | None = None, core: str | None = None, timeout: float = 300) -> str:
    argv = [GDB, "-nx", "-batch", "-x", str(ROOT / "vmstate.gdb")]
    for c in commands:
        argv += ["-ex", c]
    argv += [a for a in (binary, core) if a]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd="/")
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out
    return out


def _same_comm(guest_comm: str, ours: str) -> bool:
    # a workqueue worker's name carries its latest work, which may have changed after the report
    # ('+' while it runs one, '-' after: wq_worker_comm)
    return guest_comm == ours or (
        ours.startswith("kworker/") and re.split(r"[-+]", guest_comm)[0] == re.split(r"[-+]", ours)[0]
    )


# -- tasks ----------------------------------------------------------------------------------------


def test_ps_matches_the_guests_proc(guest):
    ours = {r.pid: r for r in list_tasks(guest.kernel)}
    report = guest.report
    missing = []
    for tid, line in report.stat.items():
        row = ours.get(tid)
        if row is None:
            if not (line.comm in TRANSIENT and line.ppid == 1):
                missing.append(line)
            continue
        assert row.ppid == line.ppid and _same_comm(line.comm, row.name), (line, row)
    assert not missing, f"tasks the guest listed but we do not: {missing}"
    for tid in (1, 2, report.parent, report.child):
        line, row = report.stat[tid], ours[tid]
        assert 0 <= row.cpu < len(guest.snap.cpus), (line, row)
    # init and kthreadd may wake after the report (reaping the reporter, spawning a worker): then
    # they are runnable or on a vCPU at the stop, maybe on another CPU; else their state agrees
    for tid in (1, 2):
        line, row = report.stat[tid], ours[tid]
        assert row.state == line.state or row.state == "R" or row.vcpu is not None, (line, row)
    # the marker's two threads stay blocked in pause(): state and CPU cannot change
    for tid in (report.parent, report.child):
        line, row = report.stat[tid], ours[tid]
        assert (row.state, row.cpu) == (line.state, line.processor), (line, row)
    marker = [r for r in ours.values() if r.tgid == report.parent]
    assert len(marker) == 2, marker  # the main thread and the one blocked in pause()


def test_each_vcpu_runs_the_task_we_say(guest):
    rows = list_tasks(guest.kernel)
    for cpu in guest.snap.cpus:
        running = [r for r in rows if r.vcpu == cpu.index]
        assert len(running) == 1, running
        row = running[0]
        # no check of its state: a running task sets S before it looks for a reason to sleep
        # (set_current_state in do_wait, wait_event...), and the vCPU may stop in between
        if cpu.halted:
            assert row.pid == 0 and row.comm.startswith("swapper/"), row
        if cpu["cs.selector"] & 3 == 0:
            # the task whose kernel stack the vCPU is on unwinds from the vCPU's registers: the
            # scheduler's current task, or inside a context switch the one being switched out
            # (on an interrupt stack, no task's stack holds the vCPU's sp: then its current task)
            k = guest.kernel
            tasks = [*k.running().values(), *for_each_task(k.prog)]
            on_stack = {t.value_(): t for t in tasks if k.vcpu_on_stack(t) == cpu.index}
            assert len(on_stack) <= 1, on_stack
            task = next(iter(on_stack.values())) if on_stack else k.running()[cpu.index]
            assert k.task_on_vcpu_stack(cpu.index).value_() == task.value_()
            frames = kernel_stack(k, task)
            assert frames[0].pc == cpu["rip"], (frames[0], hex(cpu["rip"]))


def test_a_switched_out_tasks_saved_frame_unwinds_as_drgn_does(guest):
    """The frame the context switch saved (the fallback for a task still marked on a CPU that
    has left it) gives drgn's own unwinding of sleeping tasks, frame for frame."""
    from drgn import Object

    k = guest.kernel
    regs_type = k.prog.type("struct pt_regs")
    report = guest.report
    asleep = [pid for pid in (1, 2, report.parent, report.child)
              if k.vcpu_running(k.task(pid)) is None and not k.task(pid).on_cpu]  # fmt: skip
    assert len(asleep) >= 2, asleep  # the marker's two threads at least
    for pid in asleep:
        task = k.task(pid)
        data = k.abi.switched_out_pt_regs(k.prog, task, regs_type.size)
        ours = k.prog.stack_trace(Object.from_bytes_(k.prog, regs_type, data))
        assert [f.pc for f in ours] == [f.pc for f in k.prog.stack_trace(task)], pid
        assert len(ours) > 3, ours


def test_kernel_stacks_show_where_the_marker_waits(guest):
    k, report = guest.kernel, guest.report
    for pid in (report.parent, report.child):
        names = [f.function for f in kernel_stack(k, k.task(pid))]
        assert "do_nanosleep" in names and "__x64_sys_clock_nanosleep" in names, names
        assert names[:2] == ["__schedule", "schedule"], names
    pause_thread = [t for t in threads(k, k.task(report.parent)) if t.pid.value_() != report.parent]
    names = [f.function for f in kernel_stack(k, pause_thread[0])]
    assert "__x64_sys_pause" in names, names
    # init (a shell loop) waits for a child to end or for its output ($(cat ...)), or starts one;
    # a vCPU may also be running it
    if k.vcpu_running(k.task(1)) is None:
        init = [f.function for f in kernel_stack(k, k.task(1))]
        assert {"do_wait", "pipe_read", "kernel_clone"} & set(init), init


def test_maps_and_files_match_the_guests_proc(guest):
    k, report = guest.kernel, guest.report
    for pid in (report.parent, report.child):
        task = k.task(pid)
        assert [v.maps_line() for v in process_vmas(k, task)] == report.maps[pid]
        assert {f.fd: f.path for f in open_files(k, task)} == report.fds[pid]


def test_modules_match_proc_modules(guest):
    assert [m.proc_line() for m in list_modules(guest.kernel)] == guest.report.modules


def test_dmesg_holds_the_guests_last_line(guest):
    lines = [r.line() for r in kernel_log(guest.kernel)]
    assert guest.report.dmesg in lines, (guest.report.dmesg, lines[-5:])


# -- KASLR, VMCOREINFO, errors --------------------------------------------------------------------


def test_kaslr_kernel_is_found_where_it_was_moved(kaslr, nokaslr):
    facts = kaslr.kernel.facts
    assert facts.kaslr_offset != 0 and nokaslr.kernel.facts.kaslr_offset == 0
    assert kaslr.kernel.vmcoreinfo.source.startswith("fw_cfg etc/vmcoreinfo")  # -device vmcoreinfo
    system_map = linux_symbols()  # the same kernel's nokaslr addresses, from the guest's /proc/kallsyms
    for name in ("linux_banner", "init_task", "do_nanosleep", "modules"):
        address = kaslr.kernel.prog.symbol(name).address
        assert address - facts.kaslr_offset == system_map[name], name
    banner = kaslr.kernel.prog["linux_banner"].address_
    assert kaslr.kernel.prog.read(banner, 14) == b"Linux version "
    # the direct map moved too (CONFIG_RANDOMIZE_MEMORY): page_offset_base is not the default
    assert kaslr.kernel.prog["page_offset_base"].value_() != 0xFFFF888000000000


def test_a_guest_that_is_not_linux_gets_one_line(snapshot_small_pc_e1000):
    proc = vmstate("linux", snapshot_small_pc_e1000.path, "ps", check=False)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "no Linux kernel found" in proc.stderr, proc.stderr
    assert snapshot_small_pc_e1000.path in proc.stderr


def test_cli_views_and_json(nokaslr):
    path, report = nokaslr.meta.path, nokaslr.report
    rows = json.loads(vmstate("linux", path, "ps", "--json", "-q").stdout)
    assert {r["pid"] for r in rows} >= {0, 1, 2, report.parent, report.child}
    text = vmstate("linux", path, "bt", str(report.parent)).stdout
    assert f"PID {report.parent} (marker)" in text and "do_nanosleep+0x" in text
    maps = vmstate("linux", path, "maps", str(report.child)).stdout.splitlines()
    assert maps == report.maps[report.child]
    modules = json.loads(vmstate("linux", path, "modules", "--json").stdout)
    assert [m["name"] for m in modules] == [line.split()[0] for line in report.modules]
    proc = vmstate("linux", path, "maps", "99999", check=False)
    assert proc.returncode == 1 and "no task with pid 99999" in proc.stderr


# -- app cores ------------------------------------------------------------------------------------


def test_app_core_opens_in_gdb_with_the_program(nokaslr, tmp_path):
    report = nokaslr.report
    parent_core, child_core = str(tmp_path / "parent.core"), str(tmp_path / "child.core")
    out = vmstate("app-core", nokaslr.meta.path, str(report.parent), parent_core).stdout
    assert "2 thread(s)" in out, out
    vmstate("app-core", nokaslr.meta.path, str(report.child), child_core)
    gdb_out = run_gdb(
        "info threads",
        "bt",
        "p/x marker_global",
        "p marker_text",
        "p (char *)marker_mapping",
        "thread 2",
        "bt",
        binary=str(MARKER_BINARY),
        core=parent_core,
    )
    for frame in ("marker_wait", "marker_level3", "marker_level2", "marker_level1", "main"):
        assert f" {frame} (" in gdb_out, gdb_out
    assert f"= {MARKER_GLOBAL:#x}" in gdb_out and '"hello-from-marker"' in gdb_out
    assert '"MARKER-MAPPED-FILE"' in gdb_out  # a MAP_SHARED file page, through the page tables
    assert f"LWP {report.parent}" in gdb_out and "marker_thread (" in gdb_out
    child_out = run_gdb(
        "bt", "p/x marker_global", "info inferiors", binary=str(MARKER_BINARY), core=child_core
    )
    assert f"= {CHILD_GLOBAL:#x}" in child_out and " marker_level1 (" in child_out
    assert f"LWP {report.child}" in run_gdb("info threads", binary=str(MARKER_BINARY), core=child_core)


# -- gdb ------------------------------------------------------------------------------------------


def test_gdb_linux_commands_and_types_without_vmlinux(nokaslr):
    from vmstate_gdb.os.linux.btf import BTF_KIND_STRUCT

    report, k = nokaslr.report, nokaslr.kernel
    out = run_gdb(
        f"vmstate-open {nokaslr.meta.path}",
        "vmstate-ps",
        f"vmstate-bt {report.parent}",
        "vmstate-symbols",
        "info symbol $pc",
        "vmstate-types",
        "ptype/o struct task_struct",
        "p init_task.comm",
        "p/x init_task.pid",
        "vmstate-bt 424242",
    )
    assert f"{report.parent:>7} {report.parent:>7}       1 S" in out and "do_nanosleep+0x" in out, out
    rip = nokaslr.snap.cpu(0)["rip"]
    sym = k.prog.symbol(rip)
    offset = f" + {rip - sym.address}" if rip != sym.address else ""  # gdb omits "+ 0"
    assert f"{_gdb_name(sym.name)}{offset} in section .kernel" in out
    btf = k.btf_types.btf
    task_struct = btf.type(btf.find(BTF_KIND_STRUCT, "task_struct"))
    offsets = {m.name: m.bit_offset // 8 for m in task_struct.members}
    for member in ("pid", "tgid", "comm", "mm", "stack"):
        assert any(
            line.split("|")[0].strip("/* ") == str(offsets[member])
            and re.search(rf"[ *]{member}(\[\d+\])?;$", line)
            for line in out.splitlines()
            if line.startswith("/*")
        ), member
    assert '"swapper/0' in out and "no task with pid 424242" in out


def _gdb_name(symbol: str) -> str:
    """A kallsyms name as gdb prints it: a compiler clone (getname_flags.part.0) without its number."""
    return re.sub(r"\.\d+$", "", symbol)


def _bt_names(out: str, start: str, end: str) -> list[str]:
    section = out.split(start, 1)[1].split(end, 1)[0]
    return re.findall(r"^#\d+\s+(?:0x[0-9a-f]+ in )?(\S+) \(", section, re.M)


def _in_order(names: list[str], wanted: list[str]) -> bool:
    it = iter(names)
    return all(any(n == w for n in it) for w in wanted)


def test_gdb_threads_are_the_guests_tasks_and_bt_goes_on_into_user_frames(kaslr):
    """vmstate-threads tasks: each task the guest listed is a gdb thread (id = pid); `bt` of the
    marker's main thread walks its kernel stack with the kernel's ORC and on into its user frames,
    through the call chain marker.c makes; x/s reads the marker's text through its own page
    tables; back on vCPU threads, a vCPU's `bt` is its running task's kernel stack."""
    from elftools.elf.elffile import ELFFile

    report, k, meta = kaslr.report, kaslr.kernel, kaslr.meta
    parent = report.parent
    text = marker_lines(meta.console)[-1]["text"]
    with open(MARKER_BINARY, "rb") as f:
        text_addr = ELFFile(f).get_section_by_name(".symtab").get_symbol_by_name("marker_text")[0]["st_value"]
    out = run_gdb(
        f"vmstate-open {meta.path}",
        "vmstate-threads tasks",
        "info threads",
        f"python [t.switch() for t in gdb.selected_inferior().threads() if t.ptid[1] == {parent}]",
        f"add-symbol-file {MARKER_BINARY}",
        "echo ==BT==\\n",
        "bt",
        "echo ==END==\\n",
        f"x/s {text_addr:#x}",
        "info registers rip",
        "vmstate-threads vcpus",
        "info threads",
        "thread 2",
        "echo ==VBT==\\n",
        "bt",
        "echo ==VEND==\\n",
    )
    assert "Python Exception" not in out, out
    for tid, line in report.stat.items():
        if line.comm not in TRANSIENT:
            assert re.search(rf"Thread {tid} \(pid {tid} ", out), (tid, line.comm)
    # an idle (halted) vCPU runs its CPU's swapper, an idle task (pid 0, thread id above all pids)
    for cpu in (c for c in k.snap.cpus if c.halted):
        assert re.search(rf"Thread 2684354\d\d \(pid 0 swapper/\d+ on vCPU {cpu.index}\)", out), out
    names = _bt_names(out, "==BT==", "==END==")
    kernel_part = ["schedule", "do_nanosleep", "__x64_sys_clock_nanosleep", "do_syscall_64"]
    user_part = ["entry_SYSCALL_64_after_hwframe", "nanosleep", "marker_wait", "marker_level3"]
    assert _in_order(names, kernel_part + user_part + ["marker_level2", "marker_level1", "main"]), names
    assert f'"{text}"' in out, out
    assert re.search(r"^rip\s+0x[0-9a-f]+\s+0x[0-9a-f]+ <__schedule\+\d+>", out, re.M), out
    assert "2 threads, the vCPUs" in out
    # a user frame (a vCPU stopped in a syscall) is ??; a kernel thread's stack ends at pc 0, also ??
    vcpu1 = [_gdb_name(f.function) if f.function else "??" for f in kernel_stack(k, k.task_on_vcpu_stack(1))
             if not f.inline]  # fmt: skip
    assert _bt_names(out, "==VBT==", "==VEND==") == vcpu1 + ["??"] * (vcpu1[-1] != "??"), out


def test_task_threads_on_a_guest_without_linux_say_so_in_one_line(snapshot):
    out = run_gdb(f"vmstate-open {snapshot('small-pc-e1000').path}", "vmstate-threads tasks", "bt")
    assert "no Linux kernel found" in out and "Python Exception" not in out, out
    assert re.search(r"^#0\s+0x[0-9a-f]+ in ", out, re.M), out


def test_user_memory_edit_in_gdb_resumes(nokaslr, restored, tmp_path):
    """vmstate-task PID, set var on the marker's global, vmstate-save: the resumed guest prints it."""
    import dataclasses

    report, meta = nokaslr.report, nokaslr.meta
    out_file = str(tmp_path / "edited.vmstate")
    new = 0x0DDBA11C0FFEE
    out = run_gdb(
        f"vmstate-open {meta.path}",
        f"vmstate-task {report.parent}",
        f"add-symbol-file {MARKER_BINARY}",
        f"set var marker_global = {new:#x}",
        "set var marker_text[0] = 72",  # "Hello-from-marker"
        f"vmstate-save {out_file}",
    )
    assert "wrote" in out, out
    vm = restored(dataclasses.replace(meta, path=out_file))
    vm.wait_for_line(rf"^MARKER parent pid={report.parent} value={new:#x} text=Hello-from-marker", timeout=60)
    child = marker_lines(vm.wait_for_line(r"^MARKER child ", timeout=60).string, "child")
    assert child and child[-1]["value"] == f"{CHILD_GLOBAL:#x}", child  # the child's copy is untouched


def test_kernel_object_edit_by_drgn_script_resumes(nokaslr, restored, tmp_path):
    """A drgn script edits a kernel object (the UTS host name) and saves; the resumed marker's
    uname() shows it."""
    import dataclasses

    meta = nokaslr.meta
    out_file = str(tmp_path / "hostname.vmstate")
    script = tmp_path / "edit.py"
    script.write_text(
        "import sys\n"
        "name = prog['init_uts_ns'].name.nodename\n"
        "print('was', name.string_().decode())\n"
        "write(name, b'vmstate-edited'.ljust(65, b'\\0'))\n"
        "save(sys.argv[1])\n"
    )
    out = vmstate("drgn", meta.path, str(script), out_file).stdout
    assert "was (none)" in out and "wrote" in out, out
    vm = restored(dataclasses.replace(meta, path=out_file))
    vm.wait_for_line(r"^MARKER parent .* host=vmstate-edited$", timeout=60)


def test_drgn_on_a_vmstate_core_needs_no_vmlinux(nokaslr, tmp_path):
    """The drgn plugin: `drgn -c CORE` finds kallsyms, BTF and ORC in a core written by vmstate."""
    core = str(tmp_path / "guest.core")
    vmstate("core", nokaslr.meta.path, core, "-q")
    pid = nokaslr.report.parent
    code = (
        f"t = find_task(prog, {pid}); print('COMM', t.comm.string_().decode()); "
        "print('\\n'.join(str(f.symbol().name) for f in list(prog.stack_trace(t))[:4]))"
    )
    drgn_cli = os.path.join(os.path.dirname(sys.executable), "drgn")
    proc = subprocess.run([drgn_cli, "-c", core, "-e", code], capture_output=True, text=True, timeout=120)
    assert "COMM marker" in proc.stdout and "do_nanosleep" in proc.stdout, proc.stdout + proc.stderr


# -- with the kernel's debug vmlinux --------------------------------------------------------------

VMLINUX = ROOT / "tests/linux/build/vmlinux.debug"


def test_a_debug_vmlinux_gives_the_same_view(kaslr):
    """--vmlinux (DWARF, Debian's -dbg package) on the KASLR guest: the same tasks, stacks and maps
    as kallsyms + BTF give; the stacks also name the inlined functions."""
    if not VMLINUX.exists():
        pytest.skip(f"{VMLINUX} missing (tests/linux/fetch-vmlinux.sh)")
    dwarf = open_linux(kaslr.snap, vmlinux=str(VMLINUX))
    assert dwarf.facts.types.startswith("DWARF") and kaslr.kernel.facts.types.startswith("BTF")

    def ps(k):
        return [(r.pid, r.ppid, r.state, r.name, r.cpu, r.vcpu) for r in list_tasks(k)]

    assert ps(dwarf) == ps(kaslr.kernel)
    parent = kaslr.report.parent
    btf_frames = [f.function for f in kernel_stack(kaslr.kernel, kaslr.kernel.task(parent))]
    dwarf_frames = kernel_stack(dwarf, dwarf.task(parent))
    named = [f.function for f in dwarf_frames if not f.inline]
    assert len(named) == len(btf_frames)
    for d, b in zip(named, btf_frames, strict=True):
        # an ELF symbol with a size covers the labels kallsyms lists inside it
        # (entry_SYSCALL_64 holds entry_SYSCALL_64_after_hwframe)
        assert d == b or (b or "").startswith(d or "?"), (named, btf_frames)
    assert any(f.inline for f in dwarf_frames)
    assert [v.maps_line() for v in process_vmas(dwarf, dwarf.task(parent))] == kaslr.report.maps[parent]
    proc = vmstate("linux", kaslr.meta.path, "ps", "--vmlinux", "/nonexistent/vmlinux", check=False)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "/nonexistent/vmlinux" in proc.stderr


def test_a_vcpu_on_an_interrupt_stack_unwinds_its_current_task_from_the_vcpu(snapshot):
    """With the vCPU's stack pointer in no task's kernel stack (as on the per-CPU interrupt
    stack), the current task unwinds from the vCPU's registers, not from its stale switch frame.
    The registers are edited in the overlay to put vCPU 0 there."""
    meta = snapshot("linux-pc-3nic")
    with Snapshot.open(meta.path) as snap:
        k = open_linux(snap)
        current = k.running()[0]
        elsewhere = k.prog.symbol("jiffies").address + 0x800  # kernel data: no task's stack
        rip = k.prog.symbol("schedule").address
        snap.set_register(0, "rsp", elsewhere)
        snap.set_register(0, "rip", rip)
        assert k.vcpu_on_stack(current) is None
        assert k.task_on_vcpu_stack(0).value_() == current.value_()
        assert kernel_stack(k, current)[0].pc == rip
