"""The catalogue of named snapshot scenarios, and building one (boot, wait, capture).

A scenario is data: a :class:`GuestConfig`, a capture method and how many TICKs to wait for before
stopping. :func:`build_snapshot` makes its snapshot in a directory, or reuses one already there
whose ``.meta.json`` matches (so a cache directory can be shared across runs).

:data:`KVM_SCENARIOS` are kept apart from :data:`SCENARIOS` (which must all work on TCG alone):
their guests boot under TCG, hop into a QEMU under KVM (``-accel kvm``) by live migration, and
that QEMU writes the snapshot; they need a usable /dev/kvm (config.kvm_unavailable says why not).
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from vmstate_gdb.harness.config import GuestConfig, Nic, find_qemu, require_kvm
from vmstate_gdb.harness.guests import fingerprint, guest_image
from vmstate_gdb.harness.machine import QemuVM
from vmstate_gdb.harness.snapshot import Snapshot, capture, migrate_into

MAC_E1000 = "52:54:00:12:34:56"
MAC_RTL8139 = "52:54:00:ab:cd:02"
MAC_VIRTIO = "52:54:00:ab:cd:03"
MAC_VIRTIO_MMIO = "52:54:00:ab:cd:04"
MAC_E1000E = "52:54:00:ab:cd:05"
THREE_NICS = (Nic("e1000", MAC_E1000), Nic("rtl8139", MAC_RTL8139), Nic("virtio-net-pci", MAC_VIRTIO))
VIRTIO_NULL_DISK = (
    "-blockdev",
    "driver=null-co,node-name=disk0,size=67108864,read-zeroes=on",
    "-device",
    "virtio-blk-pci,drive=disk0,id=blk0",
)
IDE_READ_SECTOR = 12345  # the guest reads it at boot (init.sh, opt/vmstate/ideread)
IDE_NULL_DISK = (
    "-blockdev",
    "driver=null-co,node-name=idedisk0,size=67108864,read-zeroes=on",
    "-device",
    "ide-hd,drive=idedisk0,bus=ide.0,unit=0",
    "-fw_cfg",
    f"name=opt/vmstate/ideread,string={IDE_READ_SECTOR}",
)


@dataclass(frozen=True)
class Scenario:
    name: str
    config: GuestConfig
    method: str = "exec"
    #: distinct TICK numbers to see before stopping (>= 2 so "continues" is meaningful)
    ticks_before: int = 2
    #: accel="kvm" only: distinct TICK numbers to see under KVM after the hop, before the capture
    #: (0: capture at once, without running the guest under KVM)
    kvm_ticks: int = 2

    @property
    def markers(self) -> tuple[str, ...]:
        marks = ["qemu"]
        if self.config.qemu == "10":
            marks.append("qemu10")
        if self.config.accel == "kvm":
            marks.append("kvm")
        if self.config.kind.startswith("linux"):
            marks.append("linux")
        if self.config.target == "aarch64":
            marks.append("aarch64")
        return tuple(marks)


def _catalogue(*scenarios: Scenario) -> dict[str, Scenario]:
    return {s.name: s for s in scenarios}


SCENARIOS: dict[str, Scenario] = _catalogue(
    Scenario("small-pc-e1000", GuestConfig("small", "pc", 1, 128, (Nic("e1000", MAC_E1000),))),
    Scenario(
        "small-q35-virtio-2cpu", GuestConfig("small", "q35", 2, 128, (Nic("virtio-net-pci", MAC_VIRTIO),))
    ),
    Scenario("small-pc-rtl8139-2cpu", GuestConfig("small", "pc", 2, 128, (Nic("rtl8139", MAC_RTL8139),))),
    # 3700 MiB on pc: 3 GiB below the PCI hole (pc splits at 0xc0000000 when RAM > 3.5 GiB)
    # and the rest above 4 GiB.
    Scenario("small-pc-bigmem", GuestConfig("small", "pc", 1, 3700, (Nic("e1000", MAC_E1000),))),
    # q35 splits at 2 GiB once RAM reaches 2.75 GiB; QEMU 10 as well, so both generations are covered.
    Scenario(
        "small-q35-bigmem-qemu10", GuestConfig("small", "q35", 1, 3700, (Nic("e1000", MAC_E1000),), qemu="10")
    ),
    Scenario(
        "small-q35-e1000-savevm",
        GuestConfig("small", "q35", 1, 128, (Nic("e1000", MAC_E1000),), disk_mib=64),
        "savevm",
    ),
    Scenario(
        "small-pc-e1000-qemu10-file",
        GuestConfig("small", "pc", 1, 128, (Nic("e1000", MAC_E1000),), qemu="10"),
        "file",
    ),
    Scenario(
        "small-pc-e1000-qemu10-mapped",
        GuestConfig("small", "pc", 1, 128, (Nic("e1000", MAC_E1000),), qemu="10"),
        "mapped-ram",
    ),
    Scenario(
        "small-q35-virtio-qemu10-savevm",
        GuestConfig("small", "q35", 1, 128, (Nic("virtio-net-pci", MAC_VIRTIO),), qemu="10", disk_mib=64),
        "savevm",
    ),
    # with an IDE disk (PIIX, null block driver) and the sector the guest reads from it at boot
    Scenario("linux-pc-3nic", GuestConfig("linux", "pc", 1, 256, THREE_NICS, extra_args=IDE_NULL_DISK)),
    # with a virtio disk of QEMU's null block driver (reads give zeros; no file to keep)
    Scenario(
        "linux-q35-3nic-qemu10",
        GuestConfig("linux", "q35", 1, 256, THREE_NICS, qemu="10", extra_args=VIRTIO_NULL_DISK),
    ),
    # the 82574 (e1000e) on its own: its register file is one array in the stream
    Scenario("linux-q35-e1000e", GuestConfig("linux", "q35", 1, 256, (Nic("e1000e", MAC_E1000E),))),
    # KASLR on (text, modules and the direct map at random addresses), 2 vCPUs, and QEMU's
    # vmcoreinfo device, which the guest's qemu_fw_cfg driver fills with its VMCOREINFO address.
    Scenario(
        "linux-pc-kaslr-2cpu",
        GuestConfig(
            "linux-kaslr", "pc", 2, 256, (Nic("e1000", MAC_E1000),), extra_args=("-device", "vmcoreinfo")
        ),
    ),
    # The harness's own guest: needs only binutils, so the harness is tested even when the real
    # guests are not built. Its TICK lines carry zero MACs. (One is enough: the real guests cover
    # the machine/NIC/method matrix.)
    Scenario("dummy-pc-exec", GuestConfig("dummy", "pc", 1, 64, (Nic("e1000", MAC_E1000),))),
)


#: aarch64 `virt` guests under TCG (apart from SCENARIOS, whose tests are x86 guests'): the small
#: guest with 2 vCPUs (vCPU 1 parked in wfi with known registers) and a virtio-mmio NIC, on QEMU
#: 7.2 and 10, and Debian's arm64 kernel with the same NIC.
ARM_SCENARIOS: dict[str, Scenario] = _catalogue(
    Scenario(
        "arm64-virt-2cpu",
        GuestConfig("small-arm64", "virt", 2, 128, (Nic("virtio-net-device", MAC_VIRTIO_MMIO),)),
    ),
    Scenario(
        "arm64-virt-2cpu-qemu10",
        GuestConfig("small-arm64", "virt", 2, 128, (Nic("virtio-net-device", MAC_VIRTIO_MMIO),), qemu="10"),
        "file",
    ),
    # suppress-vmdesc: no VMDESCRIPTION, the cpu section is decoded from its fixed layout alone
    Scenario(
        "arm64-virt-novmdesc",
        GuestConfig(
            "small-arm64",
            "virt",
            2,
            128,
            (Nic("virtio-net-device", MAC_VIRTIO_MMIO),),
            extra_args=("-machine", "suppress-vmdesc=on"),
        ),
    ),
    Scenario(
        "arm64-virt-savevm",
        GuestConfig("small-arm64", "virt", 1, 128, (Nic("virtio-net-device", MAC_VIRTIO_MMIO),), disk_mib=64),
        "savevm",
    ),
    Scenario(
        "linux-arm64-virt",
        GuestConfig("linux-arm64", "virt", 1, 256, (Nic("virtio-net-device", MAC_VIRTIO_MMIO),)),
    ),
    Scenario(
        "linux-arm64-virt-qemu10",
        GuestConfig("linux-arm64", "virt", 2, 256, (Nic("virtio-net-device", MAC_VIRTIO_MMIO),), qemu="10"),
        "file",
    ),
)


#: Made under KVM (not in SCENARIOS: they need /dev/kvm). Written by the QEMU under KVM, so the
#: stream has a kvmclock section and the cpu subsections only KVM fills (tsc_khz, ...). The CPU
#: model is QEMU's default (qemu64) on both sides. The small guest runs on under KVM only with an
#: I/O-port NIC: its e1000 MMIO read goes through a 1 GiB page, and a KVM whose CPUID lacks
#: pdpe1gb (PVM) faults on it. The Linux guest is saved straight after the hop (kvm_ticks=0):
#: PVM stops it with "KVM internal error ... emulation failure" soon after cont.
KVM_SCENARIOS: dict[str, Scenario] = _catalogue(
    Scenario(
        "small-pc-rtl8139-kvm",
        GuestConfig("small", "pc", 1, 128, (Nic("rtl8139", MAC_RTL8139),), accel="kvm"),
    ),
    Scenario(
        "small-pc-rtl8139-kvm-qemu10",
        GuestConfig("small", "pc", 1, 128, (Nic("rtl8139", MAC_RTL8139),), qemu="10", accel="kvm"),
    ),
    Scenario("linux-pc-3nic-kvm", GuestConfig("linux", "pc", 1, 256, THREE_NICS, accel="kvm"), kvm_ticks=0),
)


def check_available(scenario: Scenario, work_dir: Path) -> None:
    """Raise QemuUnavailable / GuestUnavailable (both QemuError) if the scenario cannot run here;
    builds the guest if its files are missing."""
    find_qemu(scenario.config.qemu, scenario.config.target)
    if scenario.config.accel == "kvm":
        require_kvm(scenario.config.qemu)
    guest_image(scenario.config.kind, work_dir)


def qemu_version(config: GuestConfig) -> str:
    """``qemu-system-x86_64 --version``'s number, without starting a VM."""
    out = subprocess.run(
        [config.binaries.system, "--version"], capture_output=True, text=True, timeout=30
    ).stdout
    m = re.search(r"version (\d+\.\d+\.\d+)", out)
    return m.group(1) if m else out.strip()


def snapshot_file(scenario: Scenario, directory: Path) -> Path:
    if scenario.method == "savevm":
        return directory / f"{scenario.name}.qcow2"
    return directory / f"{scenario.name}.vmstate"


def _has_device_records(snapshot: Snapshot) -> bool:
    """Snapshots cached before the harness recorded QEMU's device view are made again."""
    return snapshot.config.target == "aarch64" or bool(snapshot.state.lapic_text)


def build_snapshot(scenario: Scenario, directory: str | Path, reuse: bool = True) -> Snapshot:
    """Boot the scenario's VM, wait for READY and ``ticks_before`` TICKs, capture, kill.

    With ``reuse``, a snapshot already in ``directory`` made from the same config and method is
    returned as is (its ``.meta.json`` is the proof)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = snapshot_file(scenario, directory)
    meta = Path(str(path) + ".meta.json")
    guest = guest_image(scenario.config.kind, directory)
    if reuse and path.exists() and meta.exists():
        try:
            old = Snapshot.load(path)
            if (
                (old.config, old.method, old.guest_fingerprint)
                == (
                    scenario.config,
                    scenario.method,
                    fingerprint(guest),
                )
                and old.qemu_version == qemu_version(scenario.config)
                and _has_device_records(old)
            ):
                return old
        except (KeyError, TypeError, ValueError, json.JSONDecodeError):
            pass
    for stale in (path, meta):
        stale.unlink(missing_ok=True)
    config = scenario.config
    if config.accel == "kvm":
        require_kvm(config.qemu)
        if scenario.method == "savevm":
            raise ValueError(
                f"{scenario.name}: savevm needs the disk on the booting QEMU; use a stream method"
            )
    t0 = time.monotonic()
    disk = path if scenario.method == "savevm" else None
    boot_config = dataclasses.replace(config, accel="tcg")
    timings: dict[str, float] = {}
    with QemuVM(boot_config, directory, name=scenario.name, disk=disk, guest=guest) as vm:
        vm.wait_ready()
        t_ready = time.monotonic()
        vm.wait_for_ticks(scenario.ticks_before, timeout=30.0)
        t_ticks = time.monotonic()
        if config.accel == "tcg":
            snapshot = capture(vm, path, scenario.method, name=scenario.name)
        else:
            ticks = vm.ticks()
            with migrate_into(vm, config, name=f"{scenario.name}-kvm") as kvm_vm:
                vm.close()
                timings["hop_s"] = time.monotonic() - t_ticks
                if scenario.kvm_ticks:
                    kvm_vm.qmp("cont")
                    kvm_vm.wait_for_ticks(scenario.kvm_ticks, timeout=30.0)
                snapshot = capture(kvm_vm, path, scenario.method, name=scenario.name)
            if snapshot.last_tick is None and ticks:  # not run under KVM: the last TICK under TCG
                snapshot.last_tick = ticks[-1]
    snapshot.timings.update(
        timings,
        boot_to_ready_s=t_ready - t0,
        ready_to_ticks_s=t_ticks - t_ready,
        total_s=time.monotonic() - t0,
    )
    snapshot.save()
    return snapshot
