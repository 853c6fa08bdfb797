"""A small tmpfs for the tests of full disks and read-only directories. Mounting needs
CAP_SYS_ADMIN: without it the test skips with the reason."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def tmpfs(path: Path, size: int | str, mode: str | None = None) -> Iterator[Path]:
    """``path`` (made if missing) as a tmpfs of ``size`` bytes ("256k" works too), unmounted at
    the end, also on failure."""
    path.mkdir(exist_ok=True)
    options = f"size={size}" + (f",mode={mode}" if mode else "")
    argv = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)]
    run = subprocess.run(argv, capture_output=True, text=True)
    if run.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {run.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
