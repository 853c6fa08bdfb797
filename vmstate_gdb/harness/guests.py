"""The guests the harness boots: where their files are, how to build them, how QEMU boots them.

* ``small``: the test kernel of tests/guest (``make -C tests/guest`` -> build/guest.elf).
* ``linux``: the Debian kernel + busybox initramfs of tests/linux (``tests/linux/build.sh``).
* ``small-arm64``: the aarch64 test kernel of tests/guest-arm64 (``make -C tests/guest-arm64``).
* ``linux-arm64``: Debian's arm64 kernel + busybox initramfs of tests/linux-arm64 (its build.sh).
* ``dummy``: a 40-instruction multiboot kernel assembled here (see :mod:`.dummy_guest`), which
  prints the small guest's console format with zero MACs; it lets the harness test itself
  without the other guests.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from vmstate_gdb.errors import QemuError

REPO_ROOT_ENV = "VMSTATE_REPO_ROOT"


class GuestUnavailable(QemuError):
    """A guest's files are missing and could not be built (tests skip on this)."""


@dataclass(frozen=True)
class GuestImage:
    """How to boot one guest: QEMU arguments, and the console line that says it is up."""

    kind: str
    boot_args: tuple[str, ...]
    ready_pattern: str
    ready_timeout: float


def repo_root() -> Path:
    """The source checkout holding tests/guest and tests/linux (``$VMSTATE_REPO_ROOT`` overrides)."""
    if os.environ.get(REPO_ROOT_ENV):
        return Path(os.environ[REPO_ROOT_ENV])
    return Path(__file__).resolve().parents[2]


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _run_build(argv: list[str], cwd: Path, timeout: float, what: str) -> None:
    try:
        proc = subprocess.run(
            argv,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise GuestUnavailable(f"{what}: `{' '.join(argv)}` took longer than {timeout:.0f} s") from exc
    if proc.returncode != 0:
        raise GuestUnavailable(
            f"{what}: `{' '.join(argv)}` failed with exit code {proc.returncode}:\n{_tail(proc.stdout)}"
        )


def _linux_dir(kind: str) -> str:
    """tests/<dir> of a Linux guest kind: linux-kaslr is the x86 guest booted without nokaslr."""
    return "linux-arm64" if kind == "linux-arm64" else "linux"


def build_guest(kind: str, root: Path | None = None) -> None:
    """Run the guest's own build (``make -C tests/guest`` / ``tests/linux/build.sh``); both are
    incremental, so this is cheap when the outputs are up to date. The dummy needs no build here."""
    root = root or repo_root()
    if kind == "small":
        if not (root / "tests/guest/Makefile").exists():
            raise GuestUnavailable(f"tests/guest/Makefile is missing under {root}")
        _run_build(["make", "-C", str(root / "tests/guest")], root, 600, "building the small guest")
    elif kind == "small-arm64":
        if not (root / "tests/guest-arm64/Makefile").exists():
            raise GuestUnavailable(f"tests/guest-arm64/Makefile is missing under {root}")
        _run_build(["make", "-C", str(root / "tests/guest-arm64")], root, 600, "building the aarch64 guest")
    elif kind in ("linux", "linux-kaslr", "linux-arm64"):
        script = root / f"tests/{_linux_dir(kind)}/build.sh"
        if not script.exists():
            raise GuestUnavailable(f"{script} is missing")
        _run_build(["bash", str(script)], root, 1800, f"building the {kind} guest")


def fingerprint(image: GuestImage) -> str:
    """A digest of the guest's boot files and arguments: a cached snapshot of another build of
    the guest must not be reused."""
    digest = hashlib.sha256()
    for arg in image.boot_args:
        digest.update(arg.encode() + b"\0")
        path = Path(arg)
        if path.is_absolute() and path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def small_guest(root: Path | None = None, build: bool = True) -> GuestImage:
    root = root or repo_root()
    elf = root / "tests/guest/build/guest.elf"
    if not elf.exists() and build:
        build_guest("small", root)
    if not elf.exists():
        raise GuestUnavailable(f"small guest {elf} does not exist (run `make -C tests/guest`)")
    return GuestImage("small", ("-kernel", str(elf)), r"GUEST READY", 30.0)


def small_arm64_guest(root: Path | None = None, build: bool = True) -> GuestImage:
    root = root or repo_root()
    elf = root / "tests/guest-arm64/build/guest.elf"
    if not elf.exists() and build:
        build_guest("small-arm64", root)
    if not elf.exists():
        raise GuestUnavailable(f"aarch64 guest {elf} does not exist (run `make -C tests/guest-arm64`)")
    return GuestImage("small-arm64", ("-kernel", str(elf)), r"GUEST READY", 30.0)


def linux_guest(
    root: Path | None = None, build: bool = True, kind: str = "linux", kaslr: bool = False
) -> GuestImage:
    """``kind``: linux, linux-kaslr (or ``kaslr=True``), linux-arm64."""
    root = root or repo_root()
    kind = "linux-kaslr" if kaslr else kind
    kaslr = kind == "linux-kaslr"
    out = root / f"tests/{_linux_dir(kind)}/build"
    files = [out / "vmlinuz", out / "initrd.img", out / "kernel.cmdline"]
    if not all(f.exists() for f in files) and build:
        build_guest(kind, root)
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise GuestUnavailable(
            f"{kind} guest files missing: {', '.join(missing)} (run tests/{_linux_dir(kind)}/build.sh)"
        )
    cmdline = (out / "kernel.cmdline").read_text().strip()
    if kaslr:
        # the bzImage's decompressor picks the random offsets, so boot vmlinuz (not the PVH vmlinux)
        cmdline = " ".join(w for w in cmdline.split() if w != "nokaslr")
    return GuestImage(
        kind,
        ("-kernel", str(out / "vmlinuz"), "-initrd", str(out / "initrd.img"), "-append", cmdline),
        r"LINUX READY",
        180.0,
    )


def dummy_guest(directory: Path) -> GuestImage:
    from vmstate_gdb.harness.dummy_guest import build_dummy_guest

    elf = build_dummy_guest(directory)
    return GuestImage("dummy", ("-kernel", str(elf)), r"GUEST READY", 30.0)


def guest_image(kind: str, work_dir: Path, build: bool = True) -> GuestImage:
    """The :class:`GuestImage` for ``kind``, building it first if its files are missing."""
    if kind == "small":
        return small_guest(build=build)
    if kind in ("linux", "linux-kaslr", "linux-arm64"):
        return linux_guest(build=build, kind=kind)
    if kind == "small-arm64":
        return small_arm64_guest(build=build)
    if kind == "dummy":
        return dummy_guest(work_dir)
    raise ValueError(f"unknown guest kind {kind!r}")
