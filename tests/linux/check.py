#!/usr/bin/env python3
"""Boot the Linux test guest once under TCG and check it.

Usage: python3 tests/linux/check.py [-M pc|q35] [-smp N] [--cpu MODEL]
                                    [--kernel vmlinuz|vmlinux] [--ticks N]

Measures the time to "LINUX READY" and to the first TICK, checks that every
NIC ticks with its MAC, and reads linux_banner through the QEMU monitor
(`x/s` on the System.map address) to confirm that nokaslr holds.
"""

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD = os.path.join(HERE, "build")
NICS = [
    ("e1000", "52:54:00:00:00:01"),
    ("rtl8139", "52:54:00:00:00:02"),
    ("virtio-net-pci", "52:54:00:00:00:03"),
]


def qemu_argv(machine, smp, cpu, serial, monitor, kernel="vmlinuz"):
    with open(os.path.join(BUILD, "kernel.cmdline")) as f:
        cmdline = f.read().strip()
    argv = [
        "qemu-system-x86_64",
        "-accel",
        "tcg",
        "-M",
        machine,
        "-m",
        "256",
        "-smp",
        str(smp),
        "-nographic",
        "-no-reboot",
        "-kernel",
        os.path.join(BUILD, kernel),
        "-initrd",
        os.path.join(BUILD, "initrd.img"),
        "-append",
        cmdline,
        "-serial",
        "file:" + serial,
        "-monitor",
        "unix:%s,server,nowait" % monitor,
        "-display",
        "none",
    ]
    if cpu:
        argv += ["-cpu", cpu]
    for i, (dev, mac) in enumerate(NICS):
        argv += ["-netdev", "user,id=n%d" % i, "-device", "%s,netdev=n%d,mac=%s" % (dev, i, mac)]
    return argv


def hmp(path, command):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.settimeout(5)
    buf = b""

    def until_prompt():
        nonlocal buf
        while not buf.endswith(b"(qemu) "):
            buf += s.recv(4096)

    until_prompt()
    buf = b""
    s.sendall(command.encode() + b"\n")
    until_prompt()
    s.close()
    return buf.decode(errors="replace")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-M", default="pc")
    ap.add_argument("-smp", type=int, default=1)
    ap.add_argument("--cpu", default=None)
    ap.add_argument("--kernel", default="vmlinuz", help="vmlinuz or vmlinux (PVH)")
    ap.add_argument("--ticks", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=120)
    a = ap.parse_args()

    banner = None
    with open(os.path.join(BUILD, "System.map")) as f:
        for line in f:
            p = line.split()
            if len(p) == 3 and p[2] == "linux_banner":
                banner = int(p[0], 16)
    assert banner is not None and banner >> 28 == 0xFFFFFFFF8, hex(banner or 0)

    tmp = tempfile.mkdtemp(prefix="vmstate-linux-")
    serial = os.path.join(tmp, "serial.log")
    monitor = os.path.join(tmp, "mon.sock")
    proc = subprocess.Popen(
        qemu_argv(a.M, a.smp, a.cpu, serial, monitor, a.kernel),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    t0 = time.monotonic()
    ready = first_tick = None
    ok = False
    try:
        while time.monotonic() - t0 < a.timeout:
            time.sleep(0.05)
            if proc.poll() is not None:
                break
            try:
                text = open(serial, errors="replace").read()
            except FileNotFoundError:
                continue
            if ready is None and "LINUX READY" in text:
                ready = time.monotonic() - t0
            if first_tick is None and "TICK 1 " in text:
                first_tick = time.monotonic() - t0
            if re.search(r"^TICK %d " % (a.ticks + 1), text, re.M):
                ok = True
                break
        mon = hmp(monitor, "x/24c 0x%x" % banner) if ok else ""
    finally:
        proc.kill()
        proc.wait()
    text = open(serial, errors="replace").read().replace("\r", "")
    for m in re.findall(r"(NIC \S+ \S+ \S*|init: .*|LINUX READY)", text):
        print(m)
    print(
        "kernel=%s machine=%s smp=%d cpu=%s: LINUX READY after %s s, TICK 1 after %s s"
        % (
            a.kernel,
            a.M,
            a.smp,
            a.cpu or "default",
            ready and "%.2f" % ready,
            first_tick and "%.2f" % first_tick,
        )
    )
    if not ok:
        print(text[-3000:])
        sys.exit("FAIL: no TICK %d" % (a.ticks + 1))
    ticks = re.findall(r"^TICK (\d+) (\S+) (\S+)$", text, re.M)
    for n in range(1, a.ticks + 1):
        got = sorted(mac for k, _, mac in ticks if int(k) == n)
        want = sorted(mac for _, mac in NICS)
        assert got == want, (n, got)
    chars = "".join(re.findall(r"'(.)'", mon.replace("\x1b", "")))
    print("monitor x/24c linux_banner: %r" % chars)
    assert chars.startswith("Linux version"), mon
    print("OK")


if __name__ == "__main__":
    main()
