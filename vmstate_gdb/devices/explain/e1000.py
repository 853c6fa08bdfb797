"""Intel 8254x (QEMU's e1000): the registers a stuck NIC is read by, flags named as in Intel's
PCI/PCI-X Family of Gigabit Ethernet Controllers Software Developer's Manual (ch. 13), and the
descriptor rings' state (ch. 3): where each ring lives and how many descriptors each side holds.
"""

from __future__ import annotations

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
DESCRIPTOR = 16  # bytes, legacy and extended descriptors alike


def rx_buffer_size(rctl: int) -> int:
    bsize = rctl >> 16 & 3
    return (2048 >> bsize) * (16 if rctl >> 25 & 1 and bsize else 1)


def ring(base: int, length: int, head: int, tail: int) -> dict:
    count = length // DESCRIPTOR
    return {
        "base": base,
        "descriptors": count,
        "head": head,
        "tail": tail,
        # descriptors between head and tail: the hardware's to use (RX: empty buffers; TX: to send)
        "owned_by_device": (tail - head) % count if count else 0,
    }


def explain_e1000(device, value) -> Explained:
    x = Explained(device.key, "e1000 registers")

    def reg(name: str) -> int:
        return value(f"mac_reg[{name}]")

    ctrl, status = reg("CTRL"), reg("STATUS")
    x.add("CTRL", ctrl, flags(ctrl, CTRL), "mac_reg[CTRL]", bits=bits(CTRL))
    x.add("STATUS", status, f"{flags(status, STATUS)} speed {_SPEED[status >> 6 & 3]}", "mac_reg[STATUS]",
          bits={**bits(STATUS), "SPEED": (6, 2)})  # fmt: skip
    rctl, tctl = reg("RCTL"), reg("TCTL")
    x.add("RCTL", rctl, f"{flags(rctl, RCTL)} buffers {rx_buffer_size(rctl)} bytes", "mac_reg[RCTL]",
          bits={**bits(RCTL), "BSIZE": (16, 2)})  # fmt: skip
    x.add("TCTL", tctl, flags(tctl, TCTL), "mac_reg[TCTL]", bits=bits(TCTL))
    ims, icr = reg("IMS"), reg("ICR")
    x.add("IMS", ims, "enabled: " + flags(ims, INTERRUPTS), "mac_reg[IMS]", bits=bits(INTERRUPTS))
    x.add("ICR", icr, "pending: " + flags(icr, INTERRUPTS), "mac_reg[ICR]")
    for side, prefix in (("RX", "RD"), ("TX", "TD")):
        r = ring(reg(f"{prefix}BAH") << 32 | reg(f"{prefix}BAL"), reg(f"{prefix}LEN"), reg(f"{prefix}H"),
                 reg(f"{prefix}T"))  # fmt: skip
        what = "empty buffers posted" if side == "RX" else "descriptors waiting to be sent"
        x.add(f"{side} ring", r["base"],
              f"{r['descriptors']} descriptors at {r['base']:#x}, head {r['head']} tail {r['tail']}: "
              f"{r['owned_by_device']} {what}", f"mac_reg[{prefix}BAL]", settable=False)  # fmt: skip
        count = reg(f"{prefix}LEN") // DESCRIPTOR
        for part, what in (("H", "head (next descriptor the device uses)"),
                           ("T", "tail (one past the last the driver gave)")):  # fmt: skip
            name = prefix + part
            index = reg(name)
            bad = f" BEYOND THE RING of {count}" if count and index >= count else ""
            x.add(name, index, f"{side} ring {what}{bad}", f"mac_reg[{name}]", limit=max(count - 1, 0))
        x.add(f"{prefix}LEN", reg(f"{prefix}LEN"), f"{side} ring length in bytes ({count} descriptors)",
              f"mac_reg[{prefix}LEN]", limit=0xFFF80)  # fmt: skip
    for name in ("GPRC", "GPTC", "TOTL", "TPT", "TPR", "MPC"):
        x.add(name, reg(name), "statistics counter", f"mac_reg[{name}]")
    return x


register("e1000", explain_e1000)
