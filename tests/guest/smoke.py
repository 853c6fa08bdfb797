#!/usr/bin/env python3
"""Boot build/guest.elf under QEMU (TCG) for each machine/NIC and check the
serial output.  Usage: smoke.py [--qemu PATH] [--smp N] [--mem MiB]"""
import argparse, os, re, subprocess, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
ELF = os.path.join(HERE, "build", "guest.elf")
TICK = re.compile(r"^TICK (\d+) sw=([0-9a-f:]{17}) hw=([0-9a-f:]{17}|none) r12=(0x[0-9a-f]+) note=(.*)$")
NICS = {
    "e1000":   ("e1000", "52:54:00:12:34:56", "-device e1000,netdev=n0,mac={mac}"),
    "rtl8139": ("rtl8139", "52:54:00:ab:cd:ef", "-device rtl8139,netdev=n0,mac={mac}"),
    "virtio":  ("virtio-net", "02:11:22:33:44:55",
                "-device virtio-net-pci,disable-legacy=off,netdev=n0,mac={mac}"),
    "none":    ("none", "00:00:00:00:00:00", None),
}

def run(qemu, machine, nic, smp, mem, seconds=3.5):
    name, mac, dev = NICS[nic]
    with tempfile.TemporaryDirectory() as d:
        log = os.path.join(d, "serial.log")
        cmd = [qemu, "-accel", "tcg", "-M", machine, "-smp", str(smp), "-m", str(mem),
               "-display", "none", "-no-reboot", "-monitor", "none",
               "-kernel", ELF, "-serial", "file:" + log]
        cmd += ["-netdev", "user,id=n0"] + dev.format(mac=mac).split() if dev else ["-nic", "none"]
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
        try:
            time.sleep(seconds)
        finally:
            p.kill()
            p.wait()
        lines = open(log, "rb").read().decode("latin-1").splitlines()
    ready = [l for l in lines if l.startswith("GUEST READY ")]
    ticks = [TICK.match(l) for l in lines if l.startswith("TICK ")]
    ok = (len(ready) == 1 and ready[0].startswith("GUEST READY nic=%s bar=0x" % name)
          and len(ticks) >= 2 and all(ticks)
          and [int(t.group(1)) for t in ticks] == list(range(1, len(ticks) + 1))
          and all(t.group(2) == mac and t.group(3) == (mac if dev else "none")
                  and t.group(4) == "0x1" and t.group(5) == "" for t in ticks))
    print("%-4s %-4s %-8s smp=%d m=%-5d %s  %s" % ("ok" if ok else "FAIL", machine, nic, smp, mem,
          ready[0] if ready else "-", lines[-1] if lines else "-"))
    return ok

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--qemu", default="qemu-system-x86_64")
    ap.add_argument("--smp", type=int, default=1)
    ap.add_argument("--mem", type=int, default=128)
    a = ap.parse_args()
    res = [run(a.qemu, m, n, a.smp, a.mem) for m in ("pc", "q35") for n in NICS]
    sys.exit(0 if all(res) else 1)

if __name__ == "__main__":
    main()
