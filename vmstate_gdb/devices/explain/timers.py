"""PC timers: the i8254 PIT, the HPET, the MC146818 RTC/CMOS and kvmclock.

Field names are QEMU's (hw/timer/i8254_common.c, hw/timer/hpet.c, hw/rtc/mc146818rtc.c,
hw/i386/kvm/clock.c); register meanings are Intel's 8254 datasheet, the IA-PC HPET specification
(rev 1.0a, ch. 2.3) and Motorola's MC146818A datasheet. QEMU keeps the HPET main counter only
when the HPET runs (hpet_pre_save), and brings the RTC's time registers up to date before it saves
(rtc_pre_save), so those are the values at the stop.
"""

from __future__ import annotations

import calendar
import datetime as dt

from ...errors import EditError
from . import Explained, bits, flags, register

PIT_HZ = 1193182  # the 8254's input clock
_PIT_MODES = {0: "interrupt on terminal count", 1: "hardware one-shot", 2: "rate generator",
              3: "square wave", 4: "software strobe", 5: "hardware strobe", 6: "rate generator",
              7: "square wave"}  # fmt: skip
_PIT_ACCESS = {0: "count latched (latch command)", 1: "LSB only", 2: "MSB only", 3: "LSB then MSB"}
_PIT_USE = {0: "system timer (IRQ0)", 1: "DRAM refresh", 2: "PC speaker"}


def explain_pit(device, value) -> Explained:
    x = Explained(device.key, "i8254 PIT")
    disabled = value("channels[0].irq_disabled")
    x.add("irq0", disabled, "IRQ0 off (HPET legacy replacement)" if disabled else "IRQ0 on",
          "channels[0].irq_disabled")  # fmt: skip
    for i in range(3):
        ch = f"channels[{i}]"
        count, mode = value(f"{ch}/count"), value(f"{ch}/mode")
        rate = PIT_HZ / count if count else 0.0
        gate = value(f"{ch}/gate")
        text = (f"{_PIT_USE[i]}: mode {mode} ({_PIT_MODES.get(mode, 'reserved')}), reload {count}"
                f" ({rate:.2f} Hz), {_PIT_ACCESS[value(f'{ch}/rw_mode') & 3]}"
                f"{', BCD' if value(f'{ch}/bcd') else ''}, gate {'high' if gate else 'low'}")  # fmt: skip
        x.add(f"ch{i}", count, text, f"{ch}/count")
        x.add(f"ch{i}.mode", mode, _PIT_MODES.get(mode, "reserved"), f"{ch}/mode")
        x.add(f"ch{i}.gate", gate, "counting enabled" if gate else "stopped", f"{ch}/gate")
    return x


HPET_PERIOD_NS = 10  # QEMU's HPET runs at 100 MHz (HPET_CLK_PERIOD, in the capabilities register)
HPET_CONFIG = {0: "ENABLE_CNF", 1: "LEG_RT_CNF"}
HPET_TIMER = {1: "INT_TYPE_CNF(level)", 2: "INT_ENB_CNF", 3: "TYPE_CNF(periodic)", 4: "PER_INT_CAP",
              5: "SIZE_CAP(64-bit)", 6: "VAL_SET_CNF", 8: "32MODE_CNF", 14: "FSB_EN_CNF",
              15: "FSB_INT_DEL_CAP"}  # fmt: skip
HPET_TIMER_BITS = {"level": (1, 1), "enabled": (2, 1), "periodic": (3, 1), "32bit": (8, 1),
                   "route": (9, 5), "fsb": (14, 1)}  # fmt: skip


def explain_hpet(device, value) -> Explained:
    x = Explained(device.key, "HPET")
    config = value("config")
    running = bool(config & 1)
    x.add("config", config, flags(config, HPET_CONFIG) + (" (counting)" if running else " (halted)"),
          "config", bits={"enable": (0, 1), "legacy": (1, 1)})  # fmt: skip
    x.add("isr", value("isr"), "level interrupts pending: " + (
        " ".join(f"T{i}" for i in range(32) if value("isr") >> i & 1) or "none"), "isr")  # fmt: skip
    counter = value("hpet_counter")
    x.add("counter", counter, f"main counter {counter} = {counter * HPET_PERIOD_NS / 1e9:.6f} s"
          + ("" if running else " (kept from when it was halted)"), "hpet_counter")  # fmt: skip
    for i in range(_timer_count(value)):
        t = f"timer[{i}]"
        cfg, cmp, period = value(f"{t}/config"), value(f"{t}/cmp"), value(f"{t}/period")
        route = cfg >> 9 & 0x1F
        wide = cfg >> 5 & 1 and not cfg >> 8 & 1
        if config & 2 and i < 2:  # legacy replacement: T0 takes IRQ0 (IOAPIC pin 2), T1 IRQ8
            where = "IRQ0 (IOAPIC pin 2)" if i == 0 else "IRQ8 (IOAPIC pin 8)"
            routing = f"routed to {where} by LEG_RT_CNF"
        else:
            routing = f"IOAPIC pin {route} (allowed: {_pins(cfg >> 32)})"
        enabled = "interrupt enabled" if cfg >> 2 & 1 else "interrupt disabled (INT_ENB_CNF=0)"
        text = f"{flags(cfg & 0xFFFFFFFF, HPET_TIMER)}; {enabled}; {routing}"
        x.add(f"T{i}.config", cfg, text, f"{t}/config", bits=HPET_TIMER_BITS)
        delta = (cmp - counter) % (1 << (64 if wide else 32))
        if not running:
            when = "the HPET is halted"
        else:
            when = f"matches in {delta * HPET_PERIOD_NS / 1e6:.3f} ms" + (
                "" if cfg >> 2 & 1 else " (its interrupt is disabled)"
            )
        x.add(f"T{i}.cmp", cmp, f"comparator {cmp}: {when}", f"{t}/cmp")
        if cfg >> 3 & 1:
            hz = 1e9 / (period * HPET_PERIOD_NS) if period else 0.0
            x.add(f"T{i}.period", period, f"periodic every {period} ticks ({hz:.2f} Hz)", f"{t}/period")
    return x


def _timer_count(value) -> int:
    try:
        return value("num_timers")
    except EditError:  # QEMU 10 names it for what it is: the count as saved
        return value("num_timers_save")


def _pins(mask: int) -> str:
    pins = [i for i in range(32) if mask >> i & 1]
    return ",".join(map(str, pins)) or "none"


# -- RTC ------------------------------------------------------------------------------------------

_SEC, _MIN, _HOUR, _WDAY, _MDAY, _MON, _YEAR = 0, 2, 4, 6, 7, 8, 9
_ALARM = (1, 3, 5)
REG_A, REG_B, REG_C, REG_D, CENTURY = 0x0A, 0x0B, 0x0C, 0x0D, 0x32
REG_B_FLAGS = {0: "DSE", 1: "24h", 2: "DM(binary)", 3: "SQWE", 4: "UIE", 5: "AIE", 6: "PIE", 7: "SET"}
REG_C_FLAGS = {4: "UF", 5: "AF", 6: "PF", 7: "IRQF"}


class Rtc:
    """The CMOS time registers in the chip's current format (BCD or binary, 12 or 24 hour)."""

    def __init__(self, cmos: bytes):
        self.cmos = bytearray(cmos)
        self.bcd = not cmos[REG_B] & 4
        self.h24 = bool(cmos[REG_B] & 2)

    def _get(self, i: int) -> int:
        v = self.cmos[i]
        return (v >> 4) * 10 + (v & 0xF) if self.bcd else v

    def _put(self, i: int, v: int) -> None:
        self.cmos[i] = (v // 10 << 4 | v % 10) if self.bcd else v

    def hour(self, i: int) -> int:
        raw = self.cmos[i]
        if self.h24:
            return self._get(i)
        pm = raw & 0x80
        self.cmos[i] = raw & 0x7F
        h = self._get(i) % 12 + (12 if pm else 0)
        self.cmos[i] = raw
        return h

    def time(self) -> dt.datetime:
        century = self._get(CENTURY) or 20
        return dt.datetime(century * 100 + self._get(_YEAR), self._get(_MON), self._get(_MDAY),
                           self.hour(_HOUR), self._get(_MIN), self._get(_SEC))  # fmt: skip

    def set_time(self, t: dt.datetime) -> None:
        for i, v in ((_SEC, t.second), (_MIN, t.minute), (_MDAY, t.day), (_MON, t.month),
                     (_YEAR, t.year % 100), (CENTURY, t.year // 100),
                     (_WDAY, t.isoweekday() % 7 + 1)):  # fmt: skip
            self._put(i, v)
        if self.h24:
            self._put(_HOUR, t.hour)
        else:
            self._put(_HOUR, (t.hour - 1) % 12 + 1)
            self.cmos[_HOUR] |= 0x80 if t.hour >= 12 else 0

    def alarm(self) -> str:
        parts = []
        for i in (_ALARM[2], _ALARM[1], _ALARM[0]):
            raw = self.cmos[i]
            parts.append("**" if raw & 0xC0 == 0xC0 else f"{self._get(i):02d}")  # don't care
        return ":".join(parts)


def parse_time(text: str) -> dt.datetime:
    try:
        return dt.datetime.fromisoformat(text.strip().replace("T", " ").rstrip("Z"))
    except ValueError:
        raise EditError(f"{text!r} is not a date and time (YYYY-MM-DD HH:MM:SS)") from None


def explain_rtc(device, value) -> Explained:
    x = Explained(device.key, "MC146818 RTC")
    cmos = value("cmos_data")
    rtc = Rtc(cmos)
    a, b, c, d = cmos[REG_A], cmos[REG_B], cmos[REG_C], cmos[REG_D]
    try:
        now = rtc.time().strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        now = "(the time registers hold no valid date)"
    x.add("time", now, f"the RTC at the stop ({'BCD' if rtc.bcd else 'binary'}, "
          f"{'24' if rtc.h24 else '12'}-hour; UTC or local time, as the guest keeps it)",
          "cmos_data[0..9]", setter=_set_rtc_time)  # fmt: skip
    base = value("base_rtc")
    x.add("base_rtc", base, _utc(base) + " (QEMU's clock base: seconds since 1970)", "base_rtc")
    x.add("alarm", rtc.alarm(), "alarm time hh:mm:ss (** = any)", "cmos_data[1,3,5]", settable=False)
    rate = a & 0xF
    freq = 0 if rate == 0 else 32768 >> (rate - 1) if rate > 2 else 256 if rate == 1 else 128
    x.add("REG_A", a, f"{'UIP ' if a & 0x80 else ''}divider {a >> 4 & 7}, periodic rate {rate} "
          f"({freq} Hz)", "cmos_data[0x0a]")  # fmt: skip
    x.add("REG_B", b, flags(b, REG_B_FLAGS), "cmos_data[0x0b]",
          bits=bits(REG_B_FLAGS))  # fmt: skip
    x.add("REG_C", c, "pending: " + flags(c, REG_C_FLAGS), "cmos_data[0x0c]")
    x.add("REG_D", d, "battery good (VRT)" if d & 0x80 else "battery dead", "cmos_data[0x0d]")
    x.add("period", value("period"), "periodic interrupt period (32 kHz ticks)", "period")
    return x


def _utc(seconds: int) -> str:
    try:
        return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, ValueError, OSError):
        return "out of range"


def _set_rtc_time(device, value, text: str) -> list[tuple[str, int | bytes]]:
    """A new time moves the time registers and QEMU's base by the same amount: QEMU 7.2 and 10
    run the RTC from base_rtc after a load (rtc_post_load keeps it unless the RTC clock is
    rt), and bring the registers up to date from it when the guest reads them."""
    new = parse_time(text)
    cmos = value("cmos_data")
    rtc = Rtc(cmos)
    try:
        old = rtc.time()
    except ValueError:
        raise EditError(f"{device.key}: the time registers hold no valid date to move from") from None
    if not 1970 <= new.year <= 2099:
        raise EditError(f"{text!r}: the RTC holds years 1970..2099")
    delta = calendar.timegm(new.timetuple()) - calendar.timegm(old.timetuple())
    rtc.set_time(new)
    base = value("base_rtc") + delta
    if not 0 <= base < 1 << 64:
        raise EditError(f"{text!r}: out of the RTC's range")
    return [("cmos_data", bytes(rtc.cmos)), ("base_rtc", base)]


def explain_kvmclock(device, value) -> Explained:
    x = Explained(device.key, "kvmclock")
    clock = value("clock")
    x.add("clock", clock, f"{clock / 1e9:.6f} s: the KVM clock at the stop (KVM_GET_CLOCK), which QEMU "
          "sets again on load so guest time does not jump", "clock")  # fmt: skip
    return x


register("i8254", explain_pit)
register("hpet", explain_hpet)
register("mc146818rtc", explain_rtc)
register("kvmclock", explain_kvmclock)
