"""qSearch:memory over a vCPU's virtual address space, so gdb's `find` need not read everything.

Where the page tables are cheap to enumerate, the present mappings are enumerated once and only
mapped bytes are scanned; a match may straddle pages that are contiguous virtually but not
physically.
"""

from __future__ import annotations

from ..errors import AddressError
from ..memory import VirtualMemory

CHUNK = 1 << 20
MASK64 = (1 << 64) - 1


def _mapped_runs(vm: VirtualMemory, start: int, end: int):
    """(virtual, physical, size) pieces of [start, end) that are mapped, in address order."""
    mode = vm.cpu.paging_mode
    if mode != "none" and vm.walker.enumerable:
        for va, pa, size, _w, _u in vm.walker.mappings():
            lo, hi = max(va, start), min(va + size, end)
            if lo < hi:
                yield lo, pa + (lo - va), hi - lo
        return
    if mode == "none":
        yield start, start, end - start
        return
    address = start
    while address < end:  # tables not worth enumerating (x86 32-bit and PAE): page by page
        n = min(end - address, 0x1000 - (address & 0xFFF))
        try:
            yield address, vm.translate(address).physical, n
        except AddressError:
            pass
        address += n


def search_virtual(vm: VirtualMemory, pattern: bytes, start: int, end: int) -> int | None:
    if not pattern:
        return start
    end = min(end, MASK64 + 1)
    if vm.cpu.paging_mode == "none":
        return vm.physical.search(pattern, start, end)
    overlap = len(pattern) - 1
    carry, carry_va = b"", None  # tail of the previous piece, and the virtual address it ends at
    for va, pa, size in _mapped_runs(vm, start, end):
        if carry_va != va:
            carry = b""
        done = 0
        while done < size:
            n = min(CHUNK, size - done)
            try:
                data = vm.physical.read(pa + done, n)
            except AddressError:  # mapped to MMIO or beyond RAM: nothing to find there
                carry, carry_va = b"", None
                done += n
                continue
            window = carry + data
            i = window.find(pattern)
            if i != -1:
                return va + done - len(carry) + i
            carry = window[-overlap:] if overlap else b""
            done += n
        carry_va = va + size
    return None
