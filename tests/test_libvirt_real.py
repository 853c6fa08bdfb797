"""Real libvirt (issue 12): a private libvirtd runs the suite's small guest under TCG; its serial
console goes to a file, so the guest's own TICK lines prove it runs."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

from guestinfo import SMALL_ELF

DOMAIN_XML = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{kernel}</kernel></os>
  <on_reboot>destroy</on_reboot>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <serial type='file'><source path='{console}'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>"""


def small_domain_xml(daemon, name: str) -> tuple[str, Path]:
    """The XML of the small guest as a libvirt domain, and its console file."""
    kernel = daemon.root / "guest.elf"
    shutil.copyfile(SMALL_ELF, kernel)
    kernel.chmod(0o644)
    console = daemon.root / f"{name}.console"
    return DOMAIN_XML.format(name=name, kernel=kernel, console=console), console


def wait_for(console: Path, pattern: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = console.read_text(errors="replace") if console.exists() else ""
        if re.search(pattern, text, re.M):
            return text
        assert time.monotonic() < deadline, f"no {pattern!r} on the console:\n{text[-2000:]}"
        time.sleep(0.2)


def test_small_guest_runs_under_private_libvirtd(libvirtd):
    import libvirt

    conn = libvirt.open(libvirtd.uri)
    try:
        xml, console = small_domain_xml(libvirtd, "small-run")
        dom = conn.defineXML(xml)
        dom.create()
        try:
            wait_for(console, r"^TICK 2 ")
            assert dom.isActive()
        finally:
            dom.destroy()
            dom.undefine()
    finally:
        conn.close()
