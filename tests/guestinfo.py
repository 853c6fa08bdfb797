"""What the test guests are: symbols of the small guest's ELF and the Linux guest's System.map."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from vmstate_gdb.symbols import load_symbols

ROOT = Path(__file__).resolve().parent.parent
SMALL_ELF = ROOT / "tests/guest/build/guest.elf"
LINUX_MAP = ROOT / "tests/linux/build/System.map"
HIGHER_HALF = 0xFFFFFFFF80000000


@cache
def small_symbols() -> dict[str, int]:
    return load_symbols(str(SMALL_ELF))


@cache
def linux_symbols() -> dict[str, int]:
    return load_symbols(str(LINUX_MAP))


def expected_macs(meta) -> dict[str, str]:
    """NIC model (as our reader names it) -> MAC the VM was started with."""
    names = {"virtio-net-pci": "virtio-net"}
    return {names.get(n.model, n.model): n.mac for n in meta.config.nics}
