"""What every page-table walk returns: the translation and the walk, level by level, so
`vmstate translate` can show it whatever the architecture."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class WalkStep:
    level: str  # "PML4".."PT" on x86, "L0".."L3" on aarch64
    entry_address: int  # physical address of the entry
    entry: int
    index: int


@dataclass
class Translation:
    virtual: int
    physical: int
    page_size: int
    steps: list[WalkStep]
    writable: bool = True
    user: bool = False

    @property
    def page_base(self) -> int:
        return self.physical & ~(self.page_size - 1)
