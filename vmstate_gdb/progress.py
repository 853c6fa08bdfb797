"""Progress on long work (open, save, export), on stderr, only where a person watches it."""

from __future__ import annotations

import sys
import time


class Progress:
    """Callable(done, total) printing 'label: 42% (1.2 of 4.0 GiB)' at most a few times a second."""

    def __init__(self, label: str, stream=None, enabled: bool | None = None, min_total: int = 64 << 20):
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.min_total = min_total
        self._last = 0.0
        self._shown = False
        self._finished = False  # 100% was shown: a second report of the end prints nothing

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total < self.min_total or self._finished:
            return
        now = time.monotonic()
        if done < total and now - self._last < 0.25:
            return
        self._last = now
        pct = 100 * done // max(total, 1)
        self.stream.write(f"\r{self.label}: {pct:3d}% ({done / 2**30:.1f} of {total / 2**30:.1f} GiB)")
        self._shown = True
        if done >= total:
            self.stream.write("\n")
            self._shown = False
            self._finished = True
        self.stream.flush()

    def done(self) -> None:
        if self._shown:
            self.stream.write("\n")
            self._shown = False


class ProgressLines:
    """Callable(done, total) writing ``progress DONE TOTAL`` lines, a few a second: how the snapshot
    server tells gdb's side how far an open or a save is, for gdb to show (or not, in batch mode)."""

    def __init__(self, write, min_total: int = 64 << 20):
        self.write = write
        self.min_total = min_total
        self._last = 0.0

    def __call__(self, done: int, total: int) -> None:
        if total < self.min_total:
            return
        now = time.monotonic()
        if done < total and now - self._last < 0.25:
            return
        self._last = now
        self.write(done, total)
