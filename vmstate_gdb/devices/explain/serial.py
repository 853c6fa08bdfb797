"""The 16550A UART (QEMU's `serial`, hw/char/serial.c): line settings, interrupts, modem lines and
the FIFOs' contents. QEMU's clock gives 115200 baud at divisor 1 (baudbase)."""

from __future__ import annotations

from ...errors import VmstateError
from . import Explained, bits, flags, register

BAUDBASE = 115200
IER = {0: "ERBFI(rx data)", 1: "ETBEI(tx empty)", 2: "ELSI(line status)", 3: "EDSSI(modem status)"}
_IIR_ID = {0x0: "modem status", 0x2: "THR empty", 0x4: "rx data", 0x6: "line status", 0xC: "rx timeout"}
LSR = {0: "DR", 1: "OE", 2: "PE", 3: "FE", 4: "BI", 5: "THRE", 6: "TEMT", 7: "RXFE"}
MCR = {0: "DTR", 1: "RTS", 2: "OUT1", 3: "OUT2(irq enable)", 4: "LOOP"}
MSR = {0: "DCTS", 1: "DDSR", 2: "TERI", 3: "DDCD", 4: "CTS", 5: "DSR", 6: "RI", 7: "DCD"}
_PARITY = {0: "none", 1: "odd", 3: "even", 5: "mark", 7: "space"}
_TRIGGER = (1, 4, 8, 14)
LCR_BITS = {"wordlen": (0, 2), "stop": (2, 1), "parity": (3, 3), "break": (6, 1), "dlab": (7, 1)}


def line_settings(divider: int, lcr: int) -> str:
    """'9600 8N1' as stty and terminal programs say it."""
    baud = BAUDBASE // divider if divider else 0
    parity = _PARITY.get(lcr >> 3 & 7, "none") if lcr & 8 else "none"
    return f"{baud} {5 + (lcr & 3)}{parity[0].upper()}{2 if lcr & 4 else 1}"


def explain_serial(device, value) -> Explained:
    x = Explained(device.key, "16550A UART")
    divider, lcr = value("state/divider"), value("state/lcr")
    x.add("divisor", divider, f"{line_settings(divider, lcr)} (baud {BAUDBASE // divider if divider else 0})",
          "state/divider")  # fmt: skip
    x.add("LCR", lcr, f"{5 + (lcr & 3)} data bits, {'2' if lcr & 4 else '1'} stop, parity "
          f"{_PARITY.get(lcr >> 3 & 7, 'none') if lcr & 8 else 'none'}{', break' if lcr & 0x40 else ''}"
          f"{', DLAB' if lcr & 0x80 else ''}", "state/lcr", bits=LCR_BITS)  # fmt: skip
    ier = value("state/ier")
    x.add("IER", ier, "enabled: " + flags(ier, IER), "state/ier", bits=bits(IER))
    iir = value("state/iir")
    pending = "none pending" if iir & 1 else f"pending: {_IIR_ID.get(iir & 0xE, 'reserved')}"
    x.add("IIR", iir, pending + (", FIFOs on" if iir & 0xC0 == 0xC0 else ""), "state/iir")
    fcr = value("state/fcr_vmstate")
    x.add("FCR", fcr, (f"FIFOs on, rx trigger {_TRIGGER[fcr >> 6]} bytes" if fcr & 1 else "FIFOs off"),
          "state/fcr_vmstate")  # fmt: skip
    mcr = value("state/mcr")
    x.add("MCR", mcr, flags(mcr, MCR), "state/mcr", bits=bits(MCR))
    x.add("LSR", value("state/lsr"), flags(value("state/lsr"), LSR), "state/lsr")
    x.add("MSR", value("state/msr"), flags(value("state/msr"), MSR), "state/msr")
    x.add("SCR", value("state/scr"), "scratch", "state/scr", bits={})
    for fifo in ("recv_fifo", "xmit_fifo"):
        text = _fifo_text(value, fifo)
        if text is not None:
            x.add(fifo, text, f"{len(text)} bytes queued", fifo, settable=False)
    return x


def _fifo_text(value, name: str) -> str | None:
    """A FIFO's queued bytes (Fifo8: a ring of ``data`` from ``head``, ``num`` long), when its
    subsection is in the stream (QEMU sends it only while bytes wait)."""
    try:
        data = value(f"state/{name}/{name}/data")
        head, num = value(f"state/{name}/{name}/head"), value(f"state/{name}/{name}/num")
    except VmstateError:  # the subsection is absent: the FIFO is empty
        return None
    if not isinstance(data, bytes) or not data:
        return None
    raw = bytes(data[(head + i) % len(data)] for i in range(min(num, len(data))))
    return raw.decode("latin-1")


register("serial", explain_serial)
