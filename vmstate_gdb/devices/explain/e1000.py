"""Intel 8254x (QEMU's e1000) and 82574 (QEMU's e1000e): the registers a stuck NIC is read by,
flags named as in Intel's PCI/PCI-X Family of Gigabit Ethernet Controllers Software Developer's
Manual (ch. 13) and the 82574 GbE Controller Datasheet (ch. 10), and the descriptor rings' state:
where each ring lives and how many descriptors each side holds.

e1000 saves its registers one field each (``mac_reg[RCTL]``); e1000e saves the whole register file
as one array (``core.mac``, indexed by register offset / 4), so its registers are found by offset.
"""

from __future__ import annotations

from collections.abc import Callable

from . import Explained, bits, flags, register

CTRL = {0: "FD", 3: "LRST", 5: "ASDE", 6: "SLU", 7: "ILOS", 11: "FRCSPD", 12: "FRCDPLX", 26: "RST",
        27: "RFCE", 28: "TFCE", 30: "VME", 31: "PHY_RST"}  # fmt: skip
STATUS = {0: "FD", 1: "LU", 4: "TXOFF", 5: "TBIMODE", 12: "PCIX_MODE"}
_SPEED = {0: "10 Mb/s", 1: "100 Mb/s", 2: "1000 Mb/s", 3: "1000 Mb/s"}
RCTL = {1: "EN", 2: "SBP", 3: "UPE", 4: "MPE", 5: "LPE", 15: "BAM", 18: "VFE", 22: "DPF", 23: "PMCF",
        25: "BSEX", 26: "SECRC"}  # fmt: skip
TCTL = {1: "EN", 3: "PSP", 22: "SWXOFF", 24: "RTLC"}
INTERRUPTS = {0: "TXDW", 1: "TXQE", 2: "LSC", 3: "RXSEQ", 4: "RXDMT0", 6: "RXO", 7: "RXT0", 9: "MDAC",
              15: "TXD_LOW", 16: "SRPD"}  # fmt: skip
# the 82574's causes (datasheet 10.2.4.1): the 8254x's but RXSEQ (reserved), and per queue for MSI-X
INTERRUPTS_82574 = {**{b: n for b, n in INTERRUPTS.items() if b != 3}, 17: "ACK", 18: "MNG", 20: "RXQ0",
                    21: "RXQ1", 22: "TXQ0", 23: "TXQ1", 24: "OTHER", 31: "INT_ASSERTED"}  # fmt: skip
CTRL_EXT = {7: "SDP3_DATA", 13: "EE_RST", 17: "RO_DIS", 24: "EIAME", 27: "IAME", 28: "DRV_LOAD",
            29: "INT_TIMER_CLR", 31: "PBA_CLR"}  # fmt: skip
RFCTL = {6: "NFSW_DIS", 7: "NFSR_DIS", 10: "IPV6_DIS", 11: "IPV6_XSUM_DIS", 12: "ACK_DIS", 13: "ACKD_DIS",
         14: "IPFRSP_DIS", 15: "EXSTEN", 16: "IPV6_EX_DIS", 17: "NEW_IPV6_EXT_DIS"}  # fmt: skip
_DTYP = {0: "legacy", 1: "packet split", 2: "reserved", 3: "reserved"}
DESCRIPTOR = 16  # bytes: legacy and extended descriptors alike (packet-split RX ones are 32)

#: 82574 register offsets (datasheet table 10-2; QEMU hw/net/e1000_regs.h)
E1000E_OFFSETS = {
    "CTRL": 0x00000, "STATUS": 0x00008, "CTRL_EXT": 0x00018, "ICR": 0x000C0, "ITR": 0x000C4,
    "IMS": 0x000D0, "IAM": 0x000E0, "IVAR": 0x000E4, "RCTL": 0x00100, "TCTL": 0x00400,
    "RDBAL": 0x02800, "RDBAH": 0x02804, "RDLEN": 0x02808, "RDH": 0x02810, "RDT": 0x02818,
    "RDBAL1": 0x02900, "RDBAH1": 0x02904, "RDLEN1": 0x02908, "RDH1": 0x02910, "RDT1": 0x02918,
    "TDBAL": 0x03800, "TDBAH": 0x03804, "TDLEN": 0x03808, "TDH": 0x03810, "TDT": 0x03818,
    "TDBAL1": 0x03900, "TDBAH1": 0x03904, "TDLEN1": 0x03908, "TDH1": 0x03910, "TDT1": 0x03918,
    "MPC": 0x04010, "GPRC": 0x04074, "GPTC": 0x04080, "TOTL": 0x040C8, "TPR": 0x040D0, "TPT": 0x040D4,
    "RXCSUM": 0x05000, "RFCTL": 0x05008, "RAL": 0x05400, "RAH": 0x05404,
}  # fmt: skip


def rx_buffer_size(rctl: int) -> int:
    bsize = rctl >> 16 & 3
    return (2048 >> bsize) * (16 if rctl >> 25 & 1 and bsize else 1)


def ring(base: int, length: int, head: int, tail: int, descriptor: int = DESCRIPTOR) -> dict:
    count = length // descriptor
    return {
        "base": base,
        "descriptors": count,
        "head": head,
        "tail": tail,
        # descriptors between head and tail: the hardware's to use (RX: empty buffers; TX: to send)
        "owned_by_device": (tail - head) % count if count else 0,
    }


Reg = Callable[[str], int]  # register name -> value
Src = Callable[[str], str]  # register name -> the raw field it is in


def _common(x: Explained, reg: Reg, src: Src, causes: dict[int, str]) -> None:
    """What the 8254x and the 82574 share: control, status, interrupt causes and masks."""
    ctrl, status = reg("CTRL"), reg("STATUS")
    x.add("CTRL", ctrl, flags(ctrl, CTRL), src("CTRL"), bits=bits(CTRL))
    x.add("STATUS", status, f"{flags(status, STATUS)} speed {_SPEED[status >> 6 & 3]}", src("STATUS"),
          bits={**bits(STATUS), "SPEED": (6, 2)})  # fmt: skip
    rctl, tctl = reg("RCTL"), reg("TCTL")
    x.add("RCTL", rctl, f"{flags(rctl, RCTL)} buffers {rx_buffer_size(rctl)} bytes, "
          f"{_DTYP[rctl >> 10 & 3]} descriptors", src("RCTL"),
          bits={**bits(RCTL), "BSIZE": (16, 2), "DTYP": (10, 2)})  # fmt: skip
    x.add("TCTL", tctl, flags(tctl, TCTL), src("TCTL"), bits=bits(TCTL))
    ims, icr = reg("IMS"), reg("ICR")
    x.add("IMS", ims, "enabled: " + flags(ims, causes), src("IMS"), bits=bits(causes))
    x.add("ICR", icr, "pending: " + flags(icr, causes), src("ICR"))


def _ring(x: Explained, reg: Reg, src: Src, side: str, prefix: str, suffix: str = "", descriptor: int = 16):
    names = {part: f"{prefix}{part}{suffix}" for part in ("BAL", "BAH", "LEN", "H", "T")}
    r = ring(reg(names["BAH"]) << 32 | reg(names["BAL"]), reg(names["LEN"]), reg(names["H"]), reg(names["T"]),
             descriptor)  # fmt: skip
    what = "empty buffers posted" if side == "RX" else "descriptors waiting to be sent"
    label = f"{side} ring{suffix}"
    x.add(label, r["base"],
          f"{r['descriptors']} descriptors of {descriptor} bytes at {r['base']:#x}, head {r['head']} "
          f"tail {r['tail']}: {r['owned_by_device']} {what}", src(names["BAL"]), settable=False)  # fmt: skip
    count = r["descriptors"]
    for part, what in (("H", "head (next descriptor the device uses)"),
                       ("T", "tail (one past the last the driver gave)")):  # fmt: skip
        name = names[part]
        index = reg(name)
        bad = f" BEYOND THE RING of {count}" if count and index >= count else ""
        x.add(name, index, f"{label} {what}{bad}", src(name), limit=max(count - 1, 0))
    length = names["LEN"]
    x.add(length, reg(length), f"{label} length in bytes ({count} descriptors)", src(length), limit=0xFFF80)


def explain_e1000(device, value) -> Explained:
    x = Explained(device.key, "e1000 registers")

    def reg(name: str) -> int:
        return value(f"mac_reg[{name}]")

    def src(name: str) -> str:
        return f"mac_reg[{name}]"

    _common(x, reg, src, INTERRUPTS)
    _ring(x, reg, src, "RX", "RD")
    _ring(x, reg, src, "TX", "TD")
    for name in ("GPRC", "GPTC", "TOTL", "TPT", "TPR", "MPC"):
        x.add(name, reg(name), "statistics counter", src(name))
    return x


def explain_e1000e(device, value) -> Explained:
    x = Explained(device.key, "e1000e registers")

    def src(name: str) -> str:
        return f"core.mac[{E1000E_OFFSETS[name] >> 2}]"

    def reg(name: str) -> int:
        return value(src(name))

    _common(x, reg, src, INTERRUPTS_82574)
    ext, rfctl = reg("CTRL_EXT"), reg("RFCTL")
    x.add("CTRL_EXT", ext, flags(ext, CTRL_EXT), src("CTRL_EXT"), bits=bits(CTRL_EXT))
    x.add("RFCTL", rfctl, flags(rfctl, RFCTL), src("RFCTL"), bits=bits(RFCTL))
    ivar = reg("IVAR")
    routes = ", ".join(
        f"{cause} -> vector {ivar >> shift & 7}" if ivar >> shift & 8 else f"{cause} off"
        for cause, shift in (("RxQ0", 0), ("RxQ1", 4), ("TxQ0", 8), ("TxQ1", 12), ("other", 16))
    )
    x.add("IVAR", ivar, f"MSI-X routing: {routes}", src("IVAR"))
    x.add("ITR", reg("ITR"), f"interrupt throttling interval {reg('ITR') & 0xFFFF} x 256 ns", src("ITR"))
    ral, rah = reg("RAL"), reg("RAH")
    mac = ":".join(f"{b:02x}" for b in (ral | (rah & 0xFFFF) << 32).to_bytes(6, "little"))
    x.add("RA0", mac, f"receive address 0{' (valid)' if rah >> 31 else ' (not valid)'}", src("RAL"),
          settable=False, hint="the MAC has several copies: change it with --mac / vmstate-mac")  # fmt: skip
    # QEMU keeps the RX descriptor size it derived from RCTL.DTYP and RFCTL.EXSTEN (e1000e_core.c)
    rx_desc = value("core.rx_desc_len") or DESCRIPTOR
    for suffix in ("", "1"):
        _ring(x, reg, src, "RX", "RD", suffix, rx_desc)
        _ring(x, reg, src, "TX", "TD", suffix)
    for name in ("GPRC", "GPTC", "TOTL", "TPT", "TPR", "MPC"):
        x.add(name, reg(name), "statistics counter", src(name))
    return x


register("e1000", explain_e1000)
register("e1000e", explain_e1000e)
