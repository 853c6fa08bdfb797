"""The facade every front end uses: open a snapshot, read its vCPUs, memory and devices, edit them.

Data flows one way: container -> stream index -> devices / vCPUs / address spaces -> edit overlay.
The gdb server, the command line and the exporters all go through a :class:`Snapshot`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from . import index_cache
from .arch import Architecture, Cpu, architecture_for
from .containers import StreamSource, open_source
from .devices import nics as nic_knowledge
from .devices import virtio  # noqa: F401  (registers the virtio blob decoder)
from .devices.fields import not_a_value
from .devices.tree import DeviceTree
from .edits import EditOverlay
from .errors import EditError, FormatError, VmstateError
from .machine import MachineLayout, layout_for
from .memory import GuestRam, PhysicalMemory, VirtualMemory
from .stream.index import StreamIndex, index_stream

Progress = Callable[[int, int], None]


class _SourceBuffer:
    """Sliceable view of a non-contiguous container (a fragmented qcow2 vmstate)."""

    def __init__(self, source: StreamSource):
        self.source = source

    def __len__(self) -> int:
        return self.source.size

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, _ = key.indices(self.source.size)
            return self.source.read(start, max(0, stop - start))
        return self.source.read(key, 1)[0]


class Snapshot:
    def __init__(self, source: StreamSource, index: StreamIndex, buf, max_ram_below_4g: int | None = None):
        self.source = source
        self.path = source.path
        self.index = index
        self.buf = buf
        self.edits = EditOverlay()
        #: the guest architecture, chosen from the stream (cpu sections, machine type)
        self.arch: Architecture = architecture_for(index)
        self.devices = DeviceTree(index, self.read_stream)
        blocks = {name: b.used_length for name, b in index.ram.blocks.items()}
        self.layout: MachineLayout = layout_for(index.machine_type, blocks, max_ram_below_4g)
        self.ram = GuestRam(index.ram.blocks, buf, self.edits)
        self.physical = PhysicalMemory(self.ram, self.layout)
        self._cpus: list[Cpu] | None = None
        self._cpus_generation = -1

    @classmethod
    def open(
        cls,
        path: str,
        snapshot: str | None = None,
        *,
        offset: int | None = None,
        max_ram_below_4g: int | None = None,
        progress: Progress | None = None,
        cache: bool = True,
        decompress_progress: Progress | None = None,
    ) -> Snapshot:
        """``cache``: take the index from, and keep it in, the user's index cache (:mod:`.index_cache`).
        ``decompress_progress``: follows the decompression of a compressed libvirt image."""
        source = open_source(path, snapshot, offset, progress=decompress_progress)
        try:
            view = source.view()
            buf = view if view is not None else _SourceBuffer(source)
            key = index_cache.source_key(source) if cache else None
            index = index_cache.load(key, path)
            if index is None:
                origin = source.file_offset(0)
                # mapped-ram offsets are positions in QEMU's channel: the file for plain streams,
                # the vmstate area for qcow2.
                channel_base = 0 if source.kind == "qcow2" else origin
                pages = index_cache.page_arrays(key, source.size)
                guard = getattr(source, "no_writers", None)
                try:
                    with guard() if guard is not None else contextlib.nullcontext():
                        index = _index(source, buf, path, origin, channel_base, progress, pages)
                except BaseException:
                    if pages is not None:
                        pages.discard()
                    raise
                if pages is not None:
                    pages.finish(key, index)
            # Indexing walked the map; the session reads with checked preads from here on (a file
            # truncated underneath would make a touch of the map SIGBUS the process).
            checked = source.checked_view()
            return cls(source, index, checked if checked is not None else buf, max_ram_below_4g)
        except BaseException:
            source.close()
            raise

    def close(self) -> None:
        self.devices = None  # type: ignore[assignment]
        self.physical = None  # type: ignore[assignment]
        self.ram = None  # type: ignore[assignment]
        self.buf = None
        self.source.close()

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- bytes of the stream, with the overlay's patches ----------------------------------------

    def read_stream(self, offset: int, size: int) -> bytes:
        raw = bytes(self.buf[offset : offset + size])
        if len(raw) != size:
            raise FormatError(
                f"read of {size} bytes at stream offset {offset:#x} runs past the end", self.path, offset
            )
        return self.edits.apply(offset, raw) if self.edits.patches else raw

    # -- vCPUs ----------------------------------------------------------------------------------

    @property
    def cpus(self) -> list[Cpu]:
        if self._cpus is None or self._cpus_generation != self.edits.patch_generation:
            self._cpus = self._decode_cpus()
            self._cpus_generation = self.edits.patch_generation
        return self._cpus

    def _decode_cpus(self) -> list[Cpu]:
        cpus = self.arch.decode_cpus(self)
        cpus.sort(key=lambda c: c.index)
        if [c.index for c in cpus] != list(range(len(cpus))):
            # QEMU numbers the cpu sections by cpu_index, 0..N-1; anything else is corruption
            bad = next(c for i, c in enumerate(cpus) if c.index != i)
            sec = self.index.find("cpu", bad.index)
            raise FormatError(
                f"cpu section with instance id {bad.index:#x}: vCPUs must be numbered 0..{len(cpus) - 1}",
                self.path,
                self.source.file_offset(sec.header_offset) if sec else None,
            )
        return cpus

    def cpu(self, index: int) -> Cpu:
        for c in self.cpus:
            if c.index == index:
                return c
        if not self.cpus:
            raise FormatError(f"no vCPU state: the snapshot has no {self.arch.name} 'cpu' section", self.path)
        raise EditError(f"no vCPU {index}: this snapshot has vCPUs 0..{len(self.cpus) - 1}")

    def set_register(self, cpu_index: int, name: str, value: int) -> list[str]:
        """Change a vCPU register in the overlay; returns the fields written (hflags included)."""
        cpu = self.cpu(cpu_index)
        if name not in cpu.values:
            raise EditError(f"unknown register {name!r} (known: {self.arch.register_examples})")
        written = [name]
        for field, field_value in [(name, value), *self.arch.derived_writes(cpu, name, value)]:
            offset, size = cpu.field_offset(field)
            if not 0 <= field_value < 1 << (8 * size):
                raise EditError(f"value {field_value:#x} does not fit register {field} ({8 * size} bits)")
            what = f"cpu[{cpu_index}] {field}" + (" (derived)" if field != name else "")
            self.edits.patch(offset, field_value.to_bytes(size, "big"), what)
            if field != name:
                written.append(field)
        return written

    # -- memory ---------------------------------------------------------------------------------

    def virtual(self, cpu_index: int = 0, root: int | None = None) -> VirtualMemory:
        """The vCPU's virtual address space; with ``root``, the page tables at that physical address
        walked in the vCPU's paging mode (a guest process's address space)."""
        cpu = self.cpu(cpu_index)
        return VirtualMemory(self.physical, cpu, self.arch.page_walker(cpu, self.physical.read, root))

    # -- devices --------------------------------------------------------------------------------

    def field_value(self, path: str):
        node = self.devices.resolve(path)
        if not node.is_leaf:
            raise EditError(not_a_value(node))
        return node.value(self.read_stream)  # type: ignore[attr-defined]

    def set_field(self, path: str, value: int | bytes) -> str:
        node = self.devices.resolve(path)
        if not node.is_leaf:
            raise EditError(not_a_value(node))
        try:
            data = node.encode(value)  # type: ignore[attr-defined]
        except ValueError as e:
            raise EditError(str(e)) from None
        self.edits.patch(node.offset, data, node.path)
        return node.path

    def nics(self) -> list[nic_knowledge.Nic]:
        return nic_knowledge.find_nics(self)

    # -- facts ----------------------------------------------------------------------------------

    @property
    def ncpus(self) -> int:
        return len(self.cpus)

    def describe(self) -> dict:
        idx = self.index
        return {
            "path": self.path,
            "container": self.source.describe(),
            "machine_type": idx.machine_type,
            "architecture": self.arch.name,
            "page_size": idx.page_size,
            "capabilities": idx.capabilities,
            "commands": [c.name for c in idx.commands],
            "vmdesc": idx.vmdesc is not None,
            "ram_blocks": [
                {"name": b.name, "size": b.used_length, **b.counts()} for b in idx.ram.blocks.values()
            ],
            "layout": [
                {
                    "start": r.start,
                    "size": r.size,
                    "block": r.block,
                    "block_offset": r.block_offset,
                    "kind": r.kind,
                }
                for r in self.layout.ranges
            ],
            "warnings": idx.warnings + self.devices.warnings + self.layout.notes,
        }


def _index(source, buf, path: str, origin: int, channel_base: int, progress, pages) -> StreamIndex:
    return index_stream(
        buf,
        path,
        origin=origin if source.kind != "qcow2" else 0,
        channel_base=channel_base,
        progress=progress,
        release=getattr(source, "release", None),
        allocate=pages,
    )


def open_snapshot(path: str, **kwargs) -> Snapshot:
    """Shorthand for :meth:`Snapshot.open`; every failure is a VmstateError with one clear line."""
    try:
        return Snapshot.open(path, **kwargs)
    except VmstateError:
        raise
    except OSError as e:
        raise FormatError(f"cannot read: {e.strerror or e}", path) from None
