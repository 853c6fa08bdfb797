#!/usr/bin/env python3
"""Boot build/guest.elf under QEMU (TCG) for each machine/NIC and check the
serial output, the GUEST MEM line and the high-memory markers (read back with
HMP `xp` over a monitor socket); then, per machine, type 'p' on the serial
port with -device pvpanic and check the GUEST_PANICKED event over QMP.
Usage: smoke.py [--qemu PATH] [--smp N] [--mem MiB] [--no-pvpanic]"""

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ELF = os.path.join(HERE, "build", "guest.elf")
MEM = re.compile(r"^GUEST MEM below=(0x[0-9a-f]+) above=(0x[0-9a-f]+)$")
TICK = re.compile(r"^TICK (\d+) sw=([0-9a-f:]{17}) hw=([0-9a-f:]{17}|none) r12=(0x[0-9a-f]+) note=(.*)$")
NICS = {
    "e1000": ("e1000", "52:54:00:12:34:56", "-device e1000,netdev=n0,mac={mac}"),
    "rtl8139": ("rtl8139", "52:54:00:ab:cd:ef", "-device rtl8139,netdev=n0,mac={mac}"),
    "virtio": (
        "virtio-net",
        "02:11:22:33:44:55",
        "-device virtio-net-pci,disable-legacy=off,netdev=n0,mac={mac}",
    ),
    "none": ("none", "00:00:00:00:00:00", None),
}


def ram_split(machine, mem):
    """QEMU's below/above-4G RAM split (what GUEST MEM should report)."""
    ram = mem << 20
    if machine == "q35":
        low = 0x80000000 if ram >= 0xB0000000 else ram  # q35: 2 GiB once RAM >= 2.75 GiB
    else:
        low = 0xC0000000 if ram >= 0xE0000000 else ram  # pc: 3 GiB once RAM >= 3.5 GiB
    return low, ram - low


def expected_markers(machine, mem):
    low, high = ram_split(machine, mem)
    m = [low - 0x1000]  # (c) page under the split
    if high:
        m += [0x100000000, 0x100000000 + high - 0x1000]  # (a), (b)
    return m


def connect(path, tries=100):
    for _ in range(tries):
        try:
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            return s
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("cannot connect to " + path)


def hmp_xp(sock_path, addrs):
    """Return {addr: first 64 bytes as text} read with HMP xp /64c."""
    s = connect(sock_path)
    s.settimeout(0.5)

    def drain():
        b = b""
        try:
            while True:
                c = s.recv(65536)
                if not c:
                    break
                b += c
        except TimeoutError:
            pass
        return b.decode("latin-1")

    drain()
    res = {}
    for a in addrs:
        s.sendall(("xp /64c 0x%x\n" % a).encode())
        txt = drain()
        chars = re.findall(r"'(\\x[0-9a-f]{2}|\\.|.)'", txt)
        res[a] = "".join(c for c in chars if len(c) == 1)
    s.close()
    return res


def run(qemu, machine, nic, smp, mem, seconds=3.5):
    name, mac, dev = NICS[nic]
    with tempfile.TemporaryDirectory() as d:
        log = os.path.join(d, "serial.log")
        mon = os.path.join(d, "mon.sock")
        cmd = [
            qemu,
            "-accel",
            "tcg",
            "-M",
            machine,
            "-smp",
            str(smp),
            "-m",
            str(mem),
            "-display",
            "none",
            "-no-reboot",
            "-monitor",
            "unix:%s,server=on,wait=off" % mon,
            "-kernel",
            ELF,
            "-serial",
            "file:" + log,
        ]
        cmd += ["-netdev", "user,id=n0"] + dev.format(mac=mac).split() if dev else ["-nic", "none"]
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
        try:
            time.sleep(seconds)
            marks = hmp_xp(mon, expected_markers(machine, mem))
        finally:
            p.kill()
            p.wait()
        lines = open(log, "rb").read().decode("latin-1").splitlines()
    ready = [i for i, l in enumerate(lines) if l.startswith("GUEST READY ")]
    memm = MEM.match(lines[ready[0] + 1]) if len(ready) == 1 and len(lines) > ready[0] + 1 else None
    ticks = [TICK.match(l) for l in lines if l.startswith("TICK ")]
    low, high = ram_split(machine, mem)
    marks_ok = all(v == "VMSTATE-HIGHMEM 0x%x" % a for a, v in marks.items())
    ok = (
        len(ready) == 1
        and lines[ready[0]].startswith("GUEST READY nic=%s bar=0x" % name)
        and memm is not None
        and int(memm.group(1), 16) == low
        and int(memm.group(2), 16) == high
        and marks_ok
        and len(ticks) >= 2
        and all(ticks)
        and [int(t.group(1)) for t in ticks] == list(range(1, len(ticks) + 1))
        and all(
            t.group(2) == mac
            and t.group(3) == (mac if dev else "none")
            and t.group(4) == "0x1"
            and t.group(5) == ""
            for t in ticks
        )
    )
    print(
        "%-4s %-4s %-8s smp=%d m=%-5d %s | %s | markers %s%s  %s"
        % (
            "ok" if ok else "FAIL",
            machine,
            nic,
            smp,
            mem,
            lines[ready[0]] if ready else "-",
            memm.group(0) if memm else "no GUEST MEM",
            " ".join("0x%x" % a for a in marks),
            "" if marks_ok else " (BAD: %r)" % marks,
            lines[-1] if lines else "-",
        )
    )
    return ok


def run_pvpanic(qemu, machine, mem):
    """-device pvpanic -action panic=none: 'p' on COM1 -> GUEST PANIC line and a
    GUEST_PANICKED event (action run); the guest keeps ticking."""
    with tempfile.TemporaryDirectory() as d:
        ser_path, qmp_path = os.path.join(d, "serial.sock"), os.path.join(d, "qmp.sock")
        cmd = [
            qemu,
            "-accel",
            "tcg",
            "-M",
            machine,
            "-m",
            str(mem),
            "-display",
            "none",
            "-no-reboot",
            "-monitor",
            "none",
            "-nic",
            "none",
            "-kernel",
            ELF,
            "-device",
            "pvpanic",
            "-action",
            "panic=none",
            "-serial",
            "unix:%s,server=on,wait=off" % ser_path,
            "-qmp",
            "unix:%s,server=on,wait=off" % qmp_path,
        ]
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
        out, events, status = b"", [], None
        try:
            ser, q = connect(ser_path), connect(qmp_path)
            ser.settimeout(0.1)
            qbuf = [b""]

            def qmsg(timeout):
                q.settimeout(timeout)
                while b"\n" not in qbuf[0]:
                    try:
                        c = q.recv(65536)
                    except TimeoutError:
                        return None
                    if not c:
                        return None
                    qbuf[0] += c
                line, qbuf[0] = qbuf[0].split(b"\n", 1)
                return json.loads(line)

            def pump_until(pred, timeout):
                nonlocal out
                end = time.time() + timeout
                while time.time() < end and not pred():
                    try:
                        out += ser.recv(4096)
                    except TimeoutError:
                        pass

            qmsg(5)  # greeting
            q.sendall(b'{"execute": "qmp_capabilities"}\n')
            qmsg(5)
            pump_until(lambda: b"TICK 2 " in out, 8)
            ser.sendall(b"p")
            pump_until(lambda: b"GUEST PANIC" in out, 5)
            n = out.count(b"TICK ")
            pump_until(lambda: out.count(b"TICK ") >= n + 2, 5)
            q.sendall(b'{"execute": "query-status"}\n')
            while True:
                m = qmsg(5)
                if m is None:
                    break
                if "event" in m:
                    events.append(m)
                elif "return" in m:
                    status = m["return"].get("status")
                    break
        finally:
            p.kill()
            p.wait()
    panics = [e for e in events if e["event"] == "GUEST_PANICKED"]
    lines = out.decode("latin-1").splitlines()
    ok = (
        len(panics) == 1
        and panics[0].get("data", {}).get("action") == "run"
        and status == "running"
        and lines.count("GUEST PANIC") == 1
        and lines.index("GUEST PANIC") < len(lines) - 2
    )
    print(
        "%-4s %-4s pvpanic  m=%-5d events=%s status=%s  %s"
        % (
            "ok" if ok else "FAIL",
            machine,
            mem,
            [e["event"] for e in events],
            status,
            lines[-1] if lines else "-",
        )
    )
    return ok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--qemu", default="qemu-system-x86_64")
    ap.add_argument("--smp", type=int, default=1)
    ap.add_argument("--mem", type=int, default=128)
    ap.add_argument("--no-pvpanic", action="store_true", help="skip the pvpanic check")
    a = ap.parse_args()
    res = [run(a.qemu, m, n, a.smp, a.mem) for m in ("pc", "q35") for n in NICS]
    if not a.no_pvpanic:
        res += [run_pvpanic(a.qemu, m, a.mem) for m in ("pc", "q35")]
    sys.exit(0 if all(res) else 1)


if __name__ == "__main__":
    main()
