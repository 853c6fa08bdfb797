"""A tiny multiboot kernel for testing the harness itself, assembled with binutils on demand.

It prints ``GUEST READY`` and then, each time the RTC's seconds register changes, ``TICK <n> ...``
in the small guest's format (MACs all zero: it drives no NIC). The counter lives in guest RAM, so
it continues across a snapshot and resume.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

from vmstate_gdb.harness.guests import GuestUnavailable

_SOURCE = r"""
.code32
.section .text
.align 4
multiboot_header:
    .long 0x1BADB002            /* multiboot 1 magic, no flags: QEMU loads the ELF itself */
    .long 0
    .long -0x1BADB002
.globl _start
_start:
    mov $stack_top, %esp
    mov $msg_ready, %esi
    call puts
next_tick:
    call wait_second
    incl counter
    mov $msg_tick, %esi
    call puts
    mov counter, %eax
    call putdec
    mov $msg_tail, %esi
    call puts
    jmp next_tick
wait_second:                    /* spin until CMOS RTC register 0 (seconds) changes */
    call rtc_seconds
    mov %al, %bl
1:  pause
    call rtc_seconds
    cmp %al, %bl
    je 1b
    ret
rtc_seconds:
    mov $0, %al
    out %al, $0x70
    in $0x71, %al
    ret
putc:                           /* COM1: wait for THR empty (LSR bit 5), then write */
    push %eax
    mov $0x3fd, %dx
1:  in %dx, %al
    test $0x20, %al
    jz 1b
    pop %eax
    mov $0x3f8, %dx
    out %al, %dx
    ret
puts:
    lodsb
    test %al, %al
    jz 1f
    call putc
    jmp puts
1:  ret
putdec:
    mov $10, %ecx
    xor %edi, %edi
1:  xor %edx, %edx
    div %ecx
    push %edx
    inc %edi
    test %eax, %eax
    jnz 1b
2:  pop %eax
    add $'0', %al
    call putc
    dec %edi
    jnz 2b
    ret
.section .data
msg_ready: .asciz "GUEST READY nic=none bar=0x0 note=dummy\r\n"
msg_tick:  .asciz "TICK "
msg_tail:  .asciz " sw=00:00:00:00:00:00 hw=00:00:00:00:00:00 r12=0x0 note=dummy\r\n"
counter:   .long 0
.section .bss
.align 16
    .space 4096
stack_top:
"""


def build_dummy_guest(directory: Path) -> Path:
    """Assemble and link the dummy kernel into ``directory`` (once per source version)."""
    for tool in ("as", "ld"):
        if shutil.which(tool) is None:
            raise GuestUnavailable(f"dummy guest needs binutils ({tool} not found)")
    digest = hashlib.sha256(_SOURCE.encode()).hexdigest()[:12]
    directory.mkdir(parents=True, exist_ok=True)
    elf = directory / f"dummy-guest-{digest}.elf"
    if elf.exists():
        return elf
    source = directory / f"dummy-guest-{digest}.S"
    obj = source.with_suffix(".o")
    source.write_text(_SOURCE)
    tmp = elf.with_suffix(".tmp")
    for argv in (
        ["as", "--32", "-o", str(obj), str(source)],
        ["ld", "-m", "elf_i386", "-Ttext=0x100000", "-e", "_start", "-o", str(tmp), str(obj)],
    ):
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise GuestUnavailable(f"building the dummy guest: {' '.join(argv)} failed: {proc.stderr}")
    tmp.rename(elf)
    return elf
