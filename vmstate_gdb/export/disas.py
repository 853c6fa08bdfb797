"""A capstone listing of guest code in the vCPU's own mode (x86: 16, 32 or 64 bit; aarch64: A64),
by default around the program counter.

Variable-length code (x86) cannot be decoded backwards; the lines before pc come from the earliest
start in the 32 bytes before it whose decoding lands exactly on pc (as gdb's `x/i $pc-N` users do
by hand). They are marked as a guess by the caller's output when no such start is found. Fixed-width
code (aarch64) is simply read from ``before`` instructions back.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..arch import Architecture, Cpu, Instruction
from ..errors import AddressError
from ..snapshot import Snapshot

LOOKBACK = 32


@dataclass
class Listing:
    cpu: int
    bits: int
    space: str  # "virtual" or "physical"
    current: int | None  # the vCPU's next instruction, when it is in the listing
    instructions: list[Instruction]

    def lines(self, symbols: dict[int, str] | None = None) -> list[str]:
        out = []
        for insn in self.instructions:
            mark = "=>" if insn.address == self.current else "  "
            sym = _symbolize(insn.address, symbols) if symbols else ""
            out.append(f"{mark} {insn.address:#018x}{sym}:  {insn.raw.hex(' '):<24} {insn.text}")
        return out

    def to_plain(self) -> dict:
        return {
            "cpu": self.cpu,
            "bits": self.bits,
            "space": self.space,
            "current": self.current,
            "instructions": [
                {"address": i.address, "size": i.size, "bytes": i.raw.hex(), "text": i.text}
                for i in self.instructions
            ],
        }


def _symbolize(address: int, symbols: dict[int, str]) -> str:
    best = None
    for addr, name in symbols.items():
        if addr <= address and (best is None or addr > best[0]):
            best = (addr, name)
    if best is None or address - best[0] > 1 << 20:
        return ""
    return f" <{best[1]}+{address - best[0]}>"


def _reader(snap: Snapshot, cpu_index: int, physical: bool):
    cpu = snap.cpu(cpu_index)
    if physical or cpu.paging_mode == "none":
        return snap.physical.readable_prefix, "physical"
    vm = snap.virtual(cpu_index)

    def read(address: int, size: int) -> bytes:
        out = b""
        while len(out) < size:  # stop at the first unmapped page
            try:
                t = vm.translate(address + len(out))
            except AddressError:
                break
            n = min(size - len(out), t.page_size - (t.physical & (t.page_size - 1)))
            chunk = snap.physical.readable_prefix(t.physical, n)
            out += chunk
            if len(chunk) < n:
                break
        return out

    return read, "virtual"


def instruction_at(snap: Snapshot, cpu_index: int) -> Instruction | None:
    """The vCPU's next instruction (None when its bytes do not decode); AddressError when unreadable."""
    cpu = snap.cpu(cpu_index)
    read, space = _reader(snap, cpu_index, False)
    address = snap.arch.code_address(cpu)
    code = read(address, snap.arch.max_instruction_size)
    if not code:
        raise AddressError(f"{space} address {address:#x} is not readable on vCPU {cpu_index}", address)
    insns = snap.arch.disassemble(code, address, cpu, 1)
    return insns[0] if insns else None


def listing(
    snap: Snapshot,
    address: int | None = None,
    cpu_index: int = 0,
    count: int = 10,
    physical: bool = False,
    before: int | None = None,
) -> Listing:
    arch = snap.arch
    cpu = snap.cpu(cpu_index)
    read, space = _reader(snap, cpu_index, physical)
    pc = arch.code_address(cpu)
    if address is None:
        address = pc
        before = 3 if before is None else before
    current = pc if not physical else None
    instructions: list[Instruction] = []
    if before:
        instructions = _lead_in(arch, cpu, read, address, before)
    code = read(address, arch.max_instruction_size * count)
    if not code and not instructions:
        raise AddressError(f"{space} address {address:#x} is not readable on vCPU {cpu_index}", address)
    instructions += arch.disassemble(code, address, cpu, count)
    return Listing(cpu_index, cpu.bits, space, current, instructions)


def _lead_in(arch: Architecture, cpu: Cpu, read, address: int, want: int) -> list[Instruction]:
    if arch.instruction_size:
        back = arch.instruction_size * want
        start = address - back
        code = read(start, back) if start >= 0 else b""
        return arch.disassemble(code, start, cpu, want) if len(code) == back else []
    for back in range(LOOKBACK, 0, -1):
        start = address - back
        if start < 0:
            continue
        code = read(start, back)
        if len(code) < back:
            continue
        insns = arch.disassemble(code, start, cpu, back)
        if insns and insns[-1].address + insns[-1].size == address:
            return insns[-want:]
    return []
