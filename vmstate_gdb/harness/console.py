"""The guests' serial console: TICK lines in the small guest's and the Linux guest's format.

small: ``TICK <n> sw=<mac> hw=<mac> r12=<hex> note=<text>`` (one a second; the aarch64 guest
prints its fixed register as ``x18=``, kept in the same field)
linux: ``TICK <n> <iface> <mac>`` (one a second per NIC, all with the same ``n``)
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

_SMALL = re.compile(
    r"^TICK (?P<n>\d+) sw=(?P<sw>[0-9a-fA-F:]+) hw=(?P<hw>[0-9a-fA-F:]+) "
    r"(?:r12|x18)=(?P<r12>(?:0x)?[0-9a-fA-F]+)(?: note=(?P<note>.*))?$"
)
_LINUX = re.compile(r"^TICK (?P<n>\d+) (?P<iface>\S+) (?P<mac>[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5})$")


@dataclass(frozen=True)
class Tick:
    n: int
    line: str
    sw_mac: str | None = None
    hw_mac: str | None = None
    r12: int | None = None
    note: str | None = None
    iface: str | None = None
    mac: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Tick | None:
        return None if data is None else cls(**data)


def parse_tick(line: str) -> Tick | None:
    line = line.strip().replace("\r", "")
    m = _SMALL.match(line)
    if m:
        return Tick(
            int(m["n"]),
            line,
            sw_mac=m["sw"].lower(),
            hw_mac=m["hw"].lower(),
            r12=int(m["r12"], 16),
            note=m["note"],
        )
    m = _LINUX.match(line)
    if m:
        return Tick(int(m["n"]), line, iface=m["iface"], mac=m["mac"].lower())
    return None


def parse_ticks(text: str) -> list[Tick]:
    """Every TICK line in ``text``, in order; other lines (firmware, kernel log) are skipped, and
    so is a last line the guest is still printing (its note or NIC may be yet to come)."""
    ticks = []
    lines = text.splitlines()
    if lines and not text.endswith(("\n", "\r")):
        lines.pop()
    for line in lines:
        # A line may carry firmware escape noise before TICK: look from the last "TICK ".
        at = line.rfind("TICK ")
        if at >= 0:
            tick = parse_tick(line[at:])
            if tick is not None:
                ticks.append(tick)
    return ticks


def tick_continues(before: Tick, after: Tick) -> bool:
    """True if ``after`` is a later console line than ``before`` of the same counter: a higher
    number, or (Linux, one line per NIC) the same number for an interface printed later
    (the guest prints them in /sys/class/net order)."""
    if after.n > before.n:
        return True
    return (
        after.n == before.n
        and after.iface is not None
        and before.iface is not None
        and after.iface > before.iface
    )
