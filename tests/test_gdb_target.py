"""Real Debian gdb (/usr/bin/gdb, its embedded system Python) on the harness's snapshots, loaded the
README way: `gdb -x vmstate.gdb`, which finds the package in REPO/.venv.

The oracle is what QEMU said at stop time (`info registers`, the NIC MACs it was started with) and
the guests' own symbols.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from guestinfo import SMALL_ELF, expected_macs, linux_symbols

ROOT = Path(__file__).resolve().parent.parent
GDB = "/usr/bin/gdb"
pytestmark = pytest.mark.skipif(
    not Path(GDB).exists() or not (ROOT / ".venv").is_dir(),
    reason="needs /usr/bin/gdb and the REPO/.venv install",
)


def run_gdb(*commands: str, timeout: float = 120, interleaved: bool = False) -> str:
    """gdb's output; ``interleaved``: stderr where it came, not after stdout."""
    argv = [GDB, "-nx", "-batch", "-x", str(ROOT / "vmstate.gdb")]
    for c in commands:
        argv += ["-ex", c]
    err = subprocess.STDOUT if interleaved else subprocess.PIPE
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=err, text=True, timeout=timeout, cwd="/")
    out = proc.stdout + (proc.stderr or "")
    assert "Traceback" not in out, out
    return out


def _registers(out: str) -> dict[str, int]:
    return {m[1]: int(m[2], 16) for m in re.finditer(r"^(\w+)\s+0x([0-9a-f]+)", out, re.M)}


def test_registers_equal_qemu_for_each_vcpu(snapshot_small_q35_virtio_2cpu):
    snap = snapshot_small_q35_virtio_2cpu
    names = (
        "rax rbx rcx rdx rsi rdi rbp rsp rip eflags cs ss ds es fs gs fs_base gs_base cr0 cr2 cr3 cr4 efer"
    )
    commands = [f"vmstate-open {snap.path}", "info threads"]
    for i in range(len(snap.state.registers)):
        commands += [f"thread {i + 1}", "echo ==regs==\\n", f"info registers {names}"]
    out = run_gdb(*commands)
    assert re.search(r"^\* 1\s+Thread 1 \(CPU#0", out, re.M) and re.search(
        r"^  2\s+Thread 2 \(CPU#1", out, re.M
    )
    chunks = out.split("==regs==")[1:]
    assert len(chunks) == len(snap.state.registers) == 2
    for chunk, qemu in zip(chunks, snap.state.registers, strict=True):
        ours = _registers(chunk)
        for name in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "rip"):
            assert ours[name] == qemu[name.upper()], name
        assert ours["eflags"] == qemu["RFL"]
        for name in ("cs", "ss", "ds", "es", "fs", "gs", "cr0", "cr2", "cr3", "cr4", "efer"):
            assert ours[name] == qemu[name.upper()], name
        assert ours["fs_base"] == qemu["FS_BASE"] and ours["gs_base"] == qemu["GS_BASE"]


def test_symbols_find_devices_and_edits_small_guest(snapshot_small_pc_e1000):
    snap = snapshot_small_pc_e1000
    mac = expected_macs(snap)["e1000"]
    mac_bytes = ", ".join(f"0x{b}" for b in mac.split(":"))
    out = run_gdb(
        f"vmstate-open {snap.path}",
        f"file {SMALL_ELF}",
        "echo ==tick==\\n",
        "p tick",
        "echo ==mac==\\n",
        "p/x guest_mac",
        "echo ==vars==\\n",
        "p $vmstate_ncpus",
        "p $vmstate_nics",
        "p $vmstate_mac0",
        'p $vmstate_dev_str("e1000/mac_reg[0][0]")',
        'p/x $vmstate_dev("e1000/mac_reg[0][0]")',
        "vmstate-mac",
        "echo ==find==\\n",
        "monitor phys on",
        f"find /b 0, +0x7000000, {mac_bytes}",
        "p/x *(unsigned char (*)[6]) $_",
        "monitor phys off",
        "echo ==edit==\\n",
        "set var tick = 4242",
        "p tick",
        "set $rax = 0x1234",
        "p/x $rax",
        "set *(char *)&guest_note = 0x41",
        "p guest_note[0]",
        "info vmstate",
        "echo ==revert==\\n",
        "vmstate-revert",
        "p tick",
        "p/x $rax",
        "echo ==help==\\n",
        "help vmstate",
        "help vmstate-mac",
        "vmstate-close",
    )
    tick = int(re.search(r"==tick==\s*\$\d+ = (\d+)", out)[1])
    assert tick >= snap.last_tick.n
    want = "{" + ", ".join(f"0x{int(b, 16):x}" for b in mac.split(":")) + "}"
    assert re.search(r"==mac==\s*\$\d+ = " + re.escape(want), out)
    vars_ = out.split("==vars==")[1]
    assert "= 1\n" in vars_ and f'"{mac}"' in vars_
    ral = int.from_bytes(bytes.fromhex(mac.replace(":", ""))[:4], "little")
    assert f"= {ral:#x}" in vars_ and f"e1000 (e1000): {mac}" in vars_
    find = out.split("==find==")[1].split("==edit==")[0]
    assert re.search(r"\d+ patterns? found", find) and want in find
    edit = out.split("==edit==")[1].split("==revert==")[0]
    assert "= 4242" in edit and "= 0x1234" in edit and "65 'A'" in edit
    assert "pending edits:" in edit and "cpu[0] rax" in edit and "RAM page(s)" in edit
    revert = out.split("==revert==")[1]
    assert f"= {tick}\n" in revert and "= 0x1234" not in revert.split("==help==")[0]
    assert "vmstate-open SNAPSHOT" in revert and "--memory" in revert


def test_virtio_mac_through_vmstate_dev(snapshot_small_q35_virtio_2cpu):
    snap = snapshot_small_q35_virtio_2cpu
    out = run_gdb(
        f"vmstate-open {snap.path}",
        'p $vmstate_dev_str("virtio-net/virtio/device/mac")',
        'p/x $vmstate_dev("virtio-net/virtio/device/mac")',
        "vmstate-devices virtio-net/virtio/device",
    )
    mac = expected_macs(snap)["virtio-net"]
    assert f'"{mac}"' in out
    assert "{" + ", ".join(f"0x{int(b, 16):x}" for b in mac.split(":")) + "}" in out
    assert f"mac = {mac}" in out


def test_linux_banner_at_system_map_address(snapshot_linux_pc_3nic):
    address = linux_symbols()["linux_banner"]
    out = run_gdb(
        f"vmstate-open {snapshot_linux_pc_3nic.path}", f"x/s {address:#x}", "info threads", "monitor info mem"
    )
    assert re.search(rf"{address:#x}[^\n]*\"Linux version 6\.", out), out
    assert "ffffffff8" in out  # kernel text mapping listed by info mem


def test_continue_and_step_say_the_snapshot_cannot_run(snapshot_small_pc_e1000):
    out = run_gdb(
        f"vmstate-open {snapshot_small_pc_e1000.path}",
        f"file {SMALL_ELF}",
        "continue",
        "step",
        "stepi",
        "p 1 + 1",
        timeout=60,
    )
    # (a `step` at an inlined call site may only move gdb's virtual frame, without resuming)
    assert out.count("a snapshot cannot run") >= 2 and "Program stopped." in out
    assert "$1 = 2" in out


def test_errors_are_one_line_and_gdb_survives_the_server(snapshot_small_pc_e1000, tmp_path):
    out = run_gdb(
        "vmstate-open /nonexistent/snap",
        "info vmstate",
        f"vmstate-open {snapshot_small_pc_e1000.path}",
        "vmstate-set nosuch/field 1",
        "vmstate-set e1000/mac_reg[0][0] 0x1ffffffff",
        "vmstate-mac zz:zz:zz:zz:zz:zz",
        "x/x 0x7fff00000000",
        'p $vmstate_dev("e1000")',
        "python import os, signal; from vmstate_gdb.gdb.session import SESSION; "
        "os.kill(SESSION.process.pid, signal.SIGKILL); SESSION.process.wait()",
        "info vmstate",
        "p 6 * 7",
        f"vmstate-open {snapshot_small_pc_e1000.path}",
        "p $vmstate_ncpus",
        "vmstate-close",
    )
    assert "/nonexistent/snap: no such file" in out
    assert "no snapshot is open" in out
    assert "no device 'nosuch'" in out
    assert "out of range" in out
    assert "is not a MAC address" in out
    assert "Cannot access memory at address 0x7fff00000000" in out
    assert "is a group of" in out
    assert "the snapshot server has exited" in out or "no snapshot is open" in out
    assert "$1 = 42" in out and "$2 = 1" in out


def test_reopen_replaces_and_close_ends_the_server(snapshot_small_pc_e1000, snapshot_small_q35_virtio_2cpu):
    out = run_gdb(
        f"vmstate-open {snapshot_small_pc_e1000.path}",
        "python import vmstate_gdb.gdb.session as s; "
        "gdb.set_convenience_variable('pid1', s.SESSION.process.pid)",
        f"vmstate-open {snapshot_small_q35_virtio_2cpu.path}",
        "p $vmstate_ncpus",
        "python import os\ntry: os.kill(int(gdb.convenience_variable('pid1')), 0)\n"
        "except ProcessLookupError: print('first server gone')",
        "vmstate-close",
        "info vmstate",
    )
    assert "$1 = 2" in out
    assert "first server gone" in out
    assert "no snapshot is open" in out


@pytest.mark.skipif(shutil.which("pip") is None and not (ROOT / ".venv/bin/pip").exists(), reason="no pip")
def test_gdb_python_is_the_system_python_and_finds_the_venv():
    out = run_gdb("python import sys, vmstate_gdb; print(sys.version_info[:2], vmstate_gdb.__file__)")
    assert "(3, 11)" in out and "vmstate_gdb/__init__.py" in out


def _gdb_on_a_terminal(*commands: str, env: dict, timeout: float = 120) -> str:
    """gdb as a person runs it: not batch mode, its output a terminal (a pty)."""
    import os
    import pty
    import select
    import time

    argv = [GDB, "-nx", "-q", "-x", str(ROOT / "vmstate.gdb")]
    for c in commands:
        argv += ["-ex", c]
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    # a real terminal has a size; a pty without one makes gdb page after a few wrapped lines
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, cwd="/", env=env)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the pty closed: gdb exited
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
    finally:
        exited = proc.poll() is not None or _exits_soon(proc)
        proc.kill()
        proc.wait()
        os.close(master)
    text = out.decode(errors="replace")
    assert exited, f"gdb did not quit within {timeout} s: {text[-2000:]}"
    return text


def _exits_soon(proc: subprocess.Popen) -> bool:
    try:
        proc.wait(timeout=2)
    except subprocess.TimeoutExpired:
        return False
    return True


def test_open_and_save_show_progress_on_a_terminal_and_nothing_in_batch(snapshot_linux_pc_3nic, tmp_path):
    import os

    snap = snapshot_linux_pc_3nic
    env = dict(os.environ, VMSTATE_INDEX_CACHE="off")  # a scan, not a cached index: there is progress
    out = tmp_path / "progress.vmstate"
    commands = (f"vmstate-open {snap.path}", f"vmstate-save {out}", "vmstate-close", "quit")
    text = _gdb_on_a_terminal(*commands, env=env)
    assert re.search(r"indexing \S+: 100% \(0\.\d of 0\.\d GiB\)", text), text[-2000:]
    assert re.search(r"saving \S+: 100%", text), text[-2000:]
    assert out.stat().st_size == Path(snap.path).stat().st_size
    batch = run_gdb(f"vmstate-open {snap.path}", f"vmstate-save {tmp_path / 'batch.vmstate'}")
    assert "%" not in batch and "wrote" in batch, batch


def test_gdb_caches_memory_but_never_serves_a_stale_view(snapshot_small_pc_e1000):
    """vmstate-open lets gdb cache memory (one x/N is a few 128 KiB reads); a `monitor` command
    that changes the view (physical mode) and the server's own edits must drop that cache."""
    kernel = 0xFFFFFFFF80100000  # the small guest's kernel: physical 0x100000
    out = run_gdb(
        f"vmstate-open {snapshot_small_pc_e1000.path}",
        "info mem",
        f"x/2gx {kernel:#x}",
        "monitor phys on",
        f"x/2gx {kernel:#x}",
        "x/2gx 0x100000",
        "monitor phys off",
        f"x/2gx {kernel:#x}",
        f"set {{unsigned int}}{kernel:#x} = 0xdeadbeef",
        f"x/1wx {kernel:#x}",
        "vmstate-revert",
        f"x/1wx {kernel:#x}",
        interleaved=True,
    )
    assert re.search(r"0x0+ 0x10+ rw cache", out), out
    virt = re.findall(rf"^{kernel:#x}:\s+(0x[0-9a-f]+)\s+(0x[0-9a-f]+)", out, re.M)
    phys = re.findall(r"^0x100000:\s+(0x[0-9a-f]+)\s+(0x[0-9a-f]+)", out, re.M)
    assert len(virt) == 2 and virt[0] == virt[1] == phys[0], out
    assert f"Cannot access memory at address {kernel:#x}" in out, (
        "physical mode served the cached virtual view"
    )
    words = re.findall(rf"^{kernel:#x}:\s+(0x[0-9a-f]{{8}})$", out, re.M)
    assert words[0] == "0xdeadbeef", out  # the write, through the cache
    assert words[1] == f"{int(virt[0][0], 16) & 0xFFFFFFFF:#010x}", out  # reverted by the server


def test_vmstate_dump_writes_what_dump_binary_memory_does(snapshot_linux_pc_3nic, tmp_path):
    """vmstate-dump: the server writes the file, byte for byte what gdb's own `dump binary memory`
    writes (virtual) and what `vmstate read --phys --raw` gives (physical); an unmapped address or
    the input as output is one line and leaves no file."""
    snap = snapshot_linux_pc_3nic.path
    virt, ours, phys, bad = (tmp_path / n for n in ("gdb.bin", "ours.bin", "phys.bin", "bad.bin"))
    text = 0xFFFFFFFF81000000  # the nokaslr kernel's text
    out = run_gdb(
        f"vmstate-open {snap}",
        f"dump binary memory {virt} {text:#x} {text + 0x40000:#x}",
        f"vmstate-dump {ours} {text:#x} {text:#x}+0x40000",
        f"vmstate-dump {phys} 0x100000 0x900000 --phys",
        f"vmstate-dump {bad} 0x1000 0x2000",
        f"vmstate-dump {snap} 0 0x1000 --phys",
        interleaved=True,
    )
    assert ours.read_bytes() == virt.read_bytes() and len(virt.read_bytes()) == 0x40000, out
    cli = [sys.executable, "-m", "vmstate_gdb", "read", "--phys", "--raw", snap, "0x100000", "0x800000"]
    raw = subprocess.run(cli, capture_output=True, timeout=120).stdout
    assert phys.read_bytes() == raw, out
    assert "cannot read memory at 0x1000" in out and not bad.exists(), out
    assert "refusing to overwrite the input snapshot" in out and "Traceback" not in out, out
