"""AHCI SATA controllers (QEMU's ich9_ahci, hw/ide/ahci.c): the HBA's generic host control and each
port's registers by the AHCI 1.3.1 specification's names (3.1 and 3.3), as Linux's ahci driver
prints them at probe ("AHCI 0001.0000 32 slots 6 ports 1.5 Gbps 0x3f impl", "SStatus 0 SControl
300")."""

from __future__ import annotations

from . import Explained, bits, flags, register

# each with the word Linux's ahci_print_info uses for it ("flags: 64bit ncq only")
CAP = {31: "S64A(64bit)", 30: "SNCQ(ncq)", 29: "SSNTF(sntf)", 28: "SMPS(ilck)", 27: "SSS(stag)",
       26: "SALP(pm)", 25: "SAL(led)", 24: "SCLO(clo)", 18: "SAM(only)", 17: "SPM(pmp)",
       16: "FBSS(fbs)", 15: "PMD(pio)", 14: "SSC(slum)", 13: "PSC(part)", 7: "CCCS(ccc)", 6: "EMS(ems)",
       5: "SXS(sxs)"}  # fmt: skip
GHC = {31: "AE", 1: "IE", 0: "HR"}
PORT_CMD = {0: "ST", 1: "SUD", 2: "POD", 3: "CLO", 4: "FRE", 14: "FR", 15: "CR", 16: "CPS", 17: "PMA",
            18: "HPCP", 19: "MPSP", 20: "CPD", 21: "ESP", 22: "FBSCP", 23: "APSTE", 24: "ATAPI",
            25: "DLAE", 26: "ALPE", 27: "ASP"}  # fmt: skip
PORT_IS = {0: "DHRS", 1: "PSS", 2: "DSS", 3: "SDBS", 4: "UFS", 5: "DPS", 6: "PCS", 7: "DMPS",
           22: "PRCS", 23: "IPMS", 24: "OFS", 26: "INFS", 27: "IFS", 28: "HBDS", 29: "HBFS",
           30: "TFES", 31: "CPDS"}  # fmt: skip
_DET = {0: "no device", 1: "device, no PHY", 3: "device and PHY up", 4: "PHY offline"}
_SPEED = {0: "no speed", 1: "1.5 Gbps", 2: "3 Gbps", 3: "6 Gbps"}
_IPM = {0: "not present", 1: "active", 2: "partial", 6: "slumber", 8: "devsleep"}
_SIGNATURES = {
    0x00000101: "ATA disk",
    0xEB140101: "ATAPI",
    0xC33C0101: "enclosure",
    0x96690101: "port multiplier",
}


def cap_text(cap: int) -> str:
    """As Linux prints it: slots, ports, speed, then the flags."""
    slots, ports = (cap >> 8 & 0x1F) + 1, (cap & 0x1F) + 1
    return f"{slots} slots {ports} ports {_SPEED.get(cap >> 20 & 0xF, 'reserved')}; {flags(cap, CAP)}"


def sstatus_text(raw: int) -> str:
    det, spd, ipm = raw & 0xF, raw >> 4 & 0xF, raw >> 8 & 0xF
    return f"{_DET.get(det, f'DET {det}')}, {_SPEED.get(spd, 'reserved')}, {_IPM.get(ipm, f'IPM {ipm}')}"


def explain_ahci(device, value) -> Explained:
    x = Explained(device.key, "AHCI HBA")
    r = "ahci/control_regs."
    cap, ghc, vs = value(r + "cap"), value(r + "ghc"), value(r + "version")
    x.add("CAP", cap, cap_text(cap), r + "cap")
    x.add("GHC", ghc, flags(ghc, GHC), r + "ghc", bits=bits(GHC))
    irqs = value(r + "irqstatus")
    pending = " ".join(str(i) for i in range(32) if irqs >> i & 1) or "none"
    x.add("IS", irqs, "ports interrupting: " + pending, r + "irqstatus")
    impl = value(r + "impl")
    x.add("PI", impl, f"ports implemented {impl:#x}", r + "impl")
    x.add("VS", vs, f"AHCI {vs >> 16:04x}.{vs & 0xFFFF:04x}", r + "version")
    for i in range(value("ahci/ports")):
        if not impl >> i & 1:
            continue
        p = f"ahci/dev[{i}]/port_regs."
        clb = value(p + "lst_addr_hi") << 32 | value(p + "lst_addr")
        fb = value(p + "fis_addr_hi") << 32 | value(p + "fis_addr")
        x.add(f"P{i}CLB", clb, f"port {i} command list at {clb:#x}", p + "lst_addr", settable=False)
        x.add(f"P{i}FB", fb, f"port {i} received FIS area at {fb:#x}", p + "fis_addr", settable=False)
        cmd = value(p + "cmd")
        x.add(f"P{i}CMD", cmd, flags(cmd, PORT_CMD), p + "cmd", bits=bits(PORT_CMD))
        x.add(f"P{i}IS", value(p + "irq_stat"), "pending: " + flags(value(p + "irq_stat"), PORT_IS),
              p + "irq_stat")  # fmt: skip
        x.add(f"P{i}IE", value(p + "irq_mask"), "enabled: " + flags(value(p + "irq_mask"), PORT_IS),
              p + "irq_mask", bits=bits(PORT_IS))  # fmt: skip
        tfd = value(p + "tfdata")
        x.add(f"P{i}TFD", tfd, f"status {tfd & 0xFF:#04x} error {tfd >> 8 & 0xFF:#04x}", p + "tfdata")
        sig = value(p + "sig")
        x.add(f"P{i}SIG", sig, _SIGNATURES.get(sig, "no device signature"), p + "sig")
        x.add(f"P{i}SSTS", value(p + "scr_stat"), sstatus_text(value(p + "scr_stat")), p + "scr_stat")
        x.add(f"P{i}SCTL", value(p + "scr_ctl"), "SControl", p + "scr_ctl")
        x.add(f"P{i}SERR", value(p + "scr_err"), "SError", p + "scr_err")
        ci, sact = value(p + "cmd_issue"), value(p + "scr_act")
        x.add(f"P{i}CI", ci, "commands issued: " + (" ".join(str(s) for s in range(32) if ci >> s & 1)
              or "none"), p + "cmd_issue")  # fmt: skip
        x.add(f"P{i}SACT", sact, "NCQ tags active: " + (" ".join(str(s) for s in range(32) if sact >> s & 1)
              or "none"), p + "scr_act")  # fmt: skip
    return x


register("ich9_ahci", explain_ahci)
register("ahci", explain_ahci)
