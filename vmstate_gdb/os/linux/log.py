"""The kernel log (the printk ring buffer), as `dmesg` prints it."""

from __future__ import annotations

from dataclasses import dataclass

from .kernel import LinuxKernel


@dataclass
class LogRecord:
    seq: int
    timestamp_ns: int
    level: int
    facility: int
    text: str
    caller: str  # "T<tid>" or "C<cpu>", as printk's caller id

    def line(self) -> str:
        """dmesg's default format: ``[seconds.microseconds] text``."""
        seconds, ns = divmod(self.timestamp_ns, 10**9)
        return f"[{seconds:5d}.{ns // 1000:06d}] {self.text}"

    def as_dict(self) -> dict:
        return {**self.__dict__, "line": self.line()}


def kernel_log(kernel: LinuxKernel) -> list[LogRecord]:
    from drgn.helpers.linux.printk import get_printk_records

    out = []
    for r in get_printk_records(kernel.prog):
        caller = f"T{r.caller_tid}" if r.caller_tid is not None else f"C{r.caller_cpu}"
        out.append(
            LogRecord(r.seq, r.timestamp, r.level, r.facility, r.text.decode(errors="replace"), caller)
        )
    return out
