"""Realtek RTL8139C(+) (QEMU's rtl8139, hw/net/rtl8139.c): registers by the datasheet's names, and
the receive and transmit state of both of its modes: the classic ring buffer with four transmit
slots (8139too), and C+ mode's descriptor rings (8139cp: CpCmd's TxEnb/RxEnb)."""

from __future__ import annotations

import struct

from ...errors import VmstateError
from . import Explained, bits, flags, register

CHIP_CMD = {0: "BUFE", 2: "TE", 3: "RE", 4: "RST"}
# bit 4 is RxOverflow (RxBufOvw) in classic mode and RDU (no free RX descriptor) in C+ mode; bit 7
# TDU (no TX descriptor) in C+ mode
INTR = {0: "ROK", 1: "RER", 2: "TOK", 3: "TER", 4: "RxOverflow/RDU", 5: "LinkChg", 6: "RxFIFOOver",
        7: "TDU", 13: "LenChg", 14: "TimeOut", 15: "SERR"}  # fmt: skip
RX_CONFIG = {0: "AAP", 1: "APM", 2: "AM", 3: "AB", 4: "AR", 5: "AER", 7: "WRAP"}
CP_CMD = {0: "CPlusTxEnb", 1: "CPlusRxEnb", 3: "PCIMulRW", 4: "PCIDAC", 5: "RxChkSum", 6: "RxVLAN"}
TSD = {13: "OWN", 14: "TUN", 15: "TOK", 30: "TABT", 31: "CRS"}
BMSR_LINK = 1 << 2
CP_DESC = 16  # C+ descriptor: opts1 (OWN bit 31, EOR bit 30, length), opts2, buffer address
CP_RING_MAX = 1024  # QEMU follows a ring to its EOR descriptor; 8139cp's rings have 64


def explain_rtl8139(device, value) -> Explained:
    x = Explained(device.key, "RTL8139 registers")
    mac = value("phys")
    copies = "its copies (phys, conf.macaddr, EEPROM) change together with --mac or vmstate-mac"
    x.add("IDR", mac.hex(":"), "station address", "phys", settable=False, hint=copies)
    cmd = value("bChipCmdState")
    x.add("ChipCmd", cmd, flags(cmd, CHIP_CMD), "bChipCmdState", bits=bits(CHIP_CMD))
    imr, isr = value("IntrMask"), value("IntrStatus")
    x.add("IMR", imr, "enabled: " + flags(imr, INTR), "IntrMask", bits=bits(INTR))
    x.add("ISR", isr, "pending: " + flags(isr, INTR), "IntrStatus")
    rcr = value("RxConfig")
    rx_len = 8192 << (rcr >> 11 & 3)
    x.add("RCR", rcr, f"accept: {flags(rcr, RX_CONFIG)}; ring {rx_len // 1024} KiB", "RxConfig",
          bits=bits(RX_CONFIG))  # fmt: skip
    x.add("TCR", value("TxConfig"), f"max DMA burst {16 << (value('TxConfig') >> 8 & 7)} bytes", "TxConfig")
    bmsr = value("BasicModeStatus")
    x.add("BMSR", bmsr, "link up" if bmsr & BMSR_LINK else "link down", "BasicModeStatus")
    x.add("BMCR", value("BasicModeCtrl"), "PHY control", "BasicModeCtrl")
    cp = value("CpCmd")
    x.add("CpCmd", cp, flags(cp, CP_CMD), "CpCmd", bits=bits(CP_CMD))
    if cp & 3:  # C+ mode: descriptor rings
        tx_base = value("TxAddr[1]") << 32 | value("TxAddr[0]")
        rx_base = value("RxRingAddrHI") << 32 | value("RxRingAddrLO")
        for side, base, cur, on in (("RX", rx_base, value("currCPlusRxDesc"), cp & 2),
                                    ("TX", tx_base, value("currCPlusTxDesc"), cp & 1)):  # fmt: skip
            text = f"C+ {side} descriptors at {base:#x}, next {cur}" + ("" if on else " (disabled)")
            ring = _cp_ring(value.memory, base)
            if ring is not None:
                owned = sum(1 for opts1 in ring if opts1 >> 31 & 1)
                what = "empty buffers posted" if side == "RX" else "descriptors waiting to be sent"
                text += f"; {len(ring)} in the ring (EOR), {owned} owned by the NIC: {owned} {what}"
            src = "RxRingAddrLO" if side == "RX" else "TxAddr[0]"
            x.add(f"{side} ring", base, text, src, settable=False)
    else:
        x.add("RBSTART", value("RxBuf"), f"receive ring at {value('RxBuf'):#x}, {rx_len} bytes", "RxBuf")
        x.add("CAPR", value("RxBufPtr"), "driver's read pointer", "RxBufPtr")
        x.add("CBR", value("RxBufAddr"), "NIC's write pointer", "RxBufAddr")
        for i in range(4):
            tsd = value(f"TxStatus[{i}]")
            x.add(f"TSD{i}", tsd, f"{flags(tsd, TSD)}, {tsd & 0x1FFF} bytes from {value(f'TxAddr[{i}]'):#x}",
                  f"TxStatus[{i}]")  # fmt: skip
    x.add("RxMissed", value("RxMissed"), "missed packets counter", "RxMissed")
    return x


def _cp_ring(memory, base: int) -> list[int] | None:
    """opts1 of each descriptor from ``base`` up to the one marked EOR, or None if unreadable."""
    if memory is None or not base:
        return None
    out = []
    try:
        for i in range(CP_RING_MAX):
            opts1 = struct.unpack("<I", memory(base + CP_DESC * i, 4))[0]
            out.append(opts1)
            if opts1 >> 30 & 1:
                return out
    except VmstateError:  # outside RAM
        return None
    return None


register("rtl8139", explain_rtl8139)
