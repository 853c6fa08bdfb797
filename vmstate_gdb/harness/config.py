"""What VM to start: the guest, machine, vCPUs, memory, NICs and QEMU build, and the argv for it.

A :class:`GuestConfig` is pure data (it round-trips through JSON so a snapshot's ``.meta.json``
can say how it was made); :func:`render_argv` turns it into a qemu-system-x86_64 command line, or a
qemu-system-aarch64 one for the Arm `virt` machine (cortex-a57 under TCG, no firmware).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmstate_gdb.errors import QemuError

#: linux-kaslr: the Linux guest booted without nokaslr (kernel text, modules and the direct map
#: at random addresses, as distribution kernels run)
GUEST_KINDS = ("small", "linux", "linux-kaslr", "dummy", "small-arm64", "linux-arm64")
MACHINES = ("pc", "q35", "virt")
#: machine -> the QEMU target that runs it
MACHINE_TARGET = {"pc": "x86_64", "q35": "x86_64", "virt": "aarch64"}
#: virt: cortex-a57 boots fast under TCG (-cpu max's pointer authentication makes Linux 4x slower)
ARM_CPU = "cortex-a57"
NIC_MODELS = ("e1000", "e1000e", "rtl8139", "virtio-net-pci", "virtio-net-device")
QEMU_GENERATIONS = ("7.2", "10")
#: ``kvm``: the snapshot is written (and resumed) by a QEMU under KVM. The guest still boots under
#: TCG and is live-migrated into the KVM QEMU (see snapshot.migrate_into); KVMs such as PVM
#: cannot run the firmware or a stock kernel's boot, but can take over a booted guest.
ACCELS = ("tcg", "kvm")
KVM_DEVICE = "/dev/kvm"

SYSTEM_QEMU = "/usr/bin/qemu-system-x86_64"
SYSTEM_QEMU_IMG = "/usr/bin/qemu-img"
QEMU10_ENV = "VMSTATE_QEMU10"
QEMU10_DEFAULT = "/opt/vmstate-qemu10/bin/qemu-system-x86_64"
_APT_PACKAGE = {"x86_64": "qemu-system-x86", "aarch64": "qemu-system-arm"}


class QemuUnavailable(QemuError):
    """The QEMU build a scenario needs is not installed (tests skip on this, they do not fail)."""


@dataclass(frozen=True)
class Nic:
    model: str
    mac: str

    def __post_init__(self) -> None:
        if self.model not in NIC_MODELS:
            raise ValueError(f"unknown NIC model {self.model!r}; expected one of {NIC_MODELS}")


@dataclass(frozen=True)
class QemuBinaries:
    """A qemu-system-x86_64 and the qemu-img that belongs with it."""

    generation: str
    system: str
    img: str


def find_qemu(generation: str, target: str = "x86_64") -> QemuBinaries:
    """Locate the QEMU build named "7.2" (the system one) or "10" (beside it, see
    tools/install-qemu10.sh) for ``target`` (x86_64, aarch64); raise :class:`QemuUnavailable`
    saying where it looked."""
    if generation == "7.2":
        system = SYSTEM_QEMU.replace("x86_64", target)
        for path in (system, SYSTEM_QEMU_IMG):
            if not os.access(path, os.X_OK):
                raise QemuUnavailable(
                    f"system QEMU not found at {path} (apt-get install {_APT_PACKAGE.get(target, 'qemu')})"
                )
        return QemuBinaries("7.2", system, SYSTEM_QEMU_IMG)
    if generation == "10":
        system = os.environ.get(QEMU10_ENV) or QEMU10_DEFAULT
        system = str(Path(system).with_name(f"qemu-system-{target}"))
        img = str(Path(system).with_name("qemu-img"))
        if not os.access(system, os.X_OK):
            raise QemuUnavailable(
                f"QEMU 10 not found at {system} (set ${QEMU10_ENV} or run tools/install-qemu10.sh)"
            )
        if not os.access(img, os.X_OK):
            img = shutil.which("qemu-img") or img
        return QemuBinaries("10", system, img)
    raise ValueError(f"unknown QEMU generation {generation!r}; expected one of {QEMU_GENERATIONS}")


@functools.cache
def kvm_unavailable(generation: str = "7.2") -> str | None:
    """Why that QEMU cannot use KVM here, or None if it can: checks /dev/kvm, then starts
    ``qemu-system-x86_64 -accel kvm -M none`` once and asks ``info kvm`` (cached per process)."""
    if not os.path.exists(KVM_DEVICE):
        return f"{KVM_DEVICE} does not exist"
    if not os.access(KVM_DEVICE, os.R_OK | os.W_OK):
        return f"{KVM_DEVICE} is not readable and writable by uid {os.getuid()}"
    try:
        system = find_qemu(generation).system
    except QemuUnavailable as exc:
        return str(exc)
    argv = [system, "-accel", "kvm", "-M", "none", "-nodefaults", "-display", "none", "-monitor", "stdio"]
    try:
        proc = subprocess.run(argv, input="info kvm\nquit\n", capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return f"`{' '.join(argv)}` did not answer within 30 s"
    if proc.returncode != 0 or "kvm support: enabled" not in proc.stdout:
        out = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-3:]
        return f"QEMU {generation} cannot use KVM (exit {proc.returncode}): {' / '.join(out)}"
    return None


def require_kvm(generation: str = "7.2") -> None:
    """Raise :class:`QemuUnavailable` with the reason if that QEMU cannot use KVM here."""
    reason = kvm_unavailable(generation)
    if reason is not None:
        raise QemuUnavailable(f"KVM unusable: {reason}")


@dataclass(frozen=True)
class GuestConfig:
    """One VM's hardware and guest. ``disk_mib`` adds a qcow2 disk (needed for savevm)."""

    kind: str = "small"
    machine: str = "pc"
    cpus: int = 1
    memory_mib: int = 128
    nics: tuple[Nic, ...] = (Nic("e1000", "52:54:00:12:34:56"),)
    qemu: str = "7.2"
    disk_mib: int | None = None
    extra_args: tuple[str, ...] = field(default=())
    accel: str = "tcg"  # one of ACCELS

    def __post_init__(self) -> None:
        if self.kind not in GUEST_KINDS:
            raise ValueError(f"unknown guest kind {self.kind!r}; expected one of {GUEST_KINDS}")
        if self.machine not in MACHINES:
            raise ValueError(f"unknown machine {self.machine!r}; expected one of {MACHINES}")
        if self.cpus not in (1, 2):
            raise ValueError(f"cpus must be 1 or 2, not {self.cpus}")
        if self.qemu not in QEMU_GENERATIONS:
            raise ValueError(f"unknown QEMU generation {self.qemu!r}")
        if self.accel not in ACCELS:
            raise ValueError(f"unknown accelerator {self.accel!r}; expected one of {ACCELS}")
        # Accept lists of (model, mac) pairs as well as Nic objects.
        nics = tuple(n if isinstance(n, Nic) else Nic(*n) for n in self.nics)
        object.__setattr__(self, "nics", nics)
        object.__setattr__(self, "extra_args", tuple(self.extra_args))

    @property
    def target(self) -> str:
        """The QEMU target (x86_64, aarch64) that runs this machine."""
        return MACHINE_TARGET[self.machine]

    @property
    def binaries(self) -> QemuBinaries:
        return find_qemu(self.qemu, self.target)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["nics"] = [[n.model, n.mac] for n in self.nics]
        data["extra_args"] = list(self.extra_args)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GuestConfig:
        data = dict(data)
        data["nics"] = tuple(Nic(m, mac) for m, mac in data.get("nics", ()))
        data["extra_args"] = tuple(data.get("extra_args", ()))
        return cls(**data)


def _nic_device(index: int, nic: Nic) -> str:
    # romfile= leaves out the iPXE option ROM: faster boots, and no ROM RAM block per NIC.
    opts = [nic.model, f"id=nic{index}", f"mac={nic.mac}"]
    if nic.model != "virtio-net-device":  # a virtio-mmio device has no option ROM
        opts.append("romfile=")
    if nic.model == "virtio-net-pci":
        # Transitional device: keeps the legacy I/O BAR that the small guest drives.
        opts.append("disable-legacy=off")
    return ",".join(opts)


def render_argv(
    config: GuestConfig,
    boot_args: list[str],
    *,
    serial: str,
    qmp_socket: str | None,
    disk: str | None = None,
    incoming: str | None = None,
    paused: bool = False,
    loadvm: str | None = None,
) -> list[str]:
    """The full qemu-system-x86_64 argv. ``boot_args`` come from the guest (``-kernel ...``);
    ``serial`` is a QEMU chardev spec (``file:PATH`` or ``stdio``); ``qmp_socket`` None means no QMP."""
    argv = [
        config.binaries.system,
        "-accel",
        config.accel,
        "-machine",
        config.machine,
        *(["-cpu", ARM_CPU] if config.target == "aarch64" else []),
        "-smp",
        str(config.cpus),
        "-m",
        str(config.memory_mib),
        "-nodefaults",
        "-nographic",
        "-display",
        "none",
        "-no-reboot",
        "-monitor",
        "none",
        "-serial",
        serial,
    ]
    if qmp_socket is not None:
        argv += ["-qmp", f"unix:{qmp_socket},server=on,wait=off"]
    argv += boot_args
    for index, nic in enumerate(config.nics):
        argv += ["-device", _nic_device(index, nic)]
    if config.disk_mib is not None:
        if disk is None:
            raise QemuError("this configuration has a qcow2 disk but no disk path was given")
        # Attached to no device: savevm only needs a snapshot-capable block node, and the guest
        # sees no extra PCI function or drive (same on pc and q35).
        argv += ["-drive", f"file={disk},if=none,id=d0,format=qcow2"]
    if paused:
        argv.append("-S")
    if loadvm is not None:
        argv += ["-loadvm", loadvm]
    if incoming is not None:
        argv += ["-incoming", incoming]
    argv += list(config.extra_args)
    return argv
