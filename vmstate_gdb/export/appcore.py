"""An ELF core of one user process inside a Linux guest, as the kernel's coredump writes one.

Layout as fs/binfmt_elf.c makes it: PT_NOTE first, then PT_LOADs in VMA order. Notes: per
thread NT_PRSTATUS then NT_PRFPREG (its FXSAVE image), with NT_PRPSINFO, NT_AUXV and NT_FILE after
the first thread's NT_PRSTATUS; the thread the user named comes first (gdb's current thread).

Memory is read through the process's own page tables. Where the kernel would fault pages in, we
have only what guest RAM held: present pages are written, untouched pages of anonymous mappings
are zeros (holes in a sparse file, as the kernel leaves them), and pages that are not in RAM
(file pages never read, swapped-out pages) are left out of every PT_LOAD and counted, so gdb reads
file-backed ones from the program and reports the rest as unavailable instead of showing zeros.
Mappings the kernel never dumps (VM_IO, VM_DONTDUMP: [vvar]) get an empty PT_LOAD, as there.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from drgn import Object

from ..errors import AddressError, SaveError
from ..os.linux import process as P
from ..os.linux.kernel import LinuxKernel
from ..os.linux.tasks import comm
from .elf import (
    EHDR,
    NT_AUXV,
    NT_FILE,
    NT_PRFPREG,
    NT_PRPSINFO,
    NT_PRSTATUS,
    PF_R,
    PF_W,
    PF_X,
    PHDR,
    PT_LOAD,
    PT_NOTE,
    ProgramHeader,
    align,
    core_headers,
    make_note,
)

PAGE = 4096
VM_IO, VM_DONTDUMP = 0x00004000, 0x04000000  # include/linux/mm.h
ELF_PRARGSZ = 80
# struct elf_prstatus (include/linux/elfcore.h) on 64-bit: 112 bytes of common fields, pr_reg
# (the architecture's user_regs_struct), pr_fpvalid, padded to 8 bytes
PRSTATUS = struct.Struct("<iii h2x QQ iiii qqqqqqqq")  # siginfo, cursig, sigpend, sighold, ids, times
PRSTATUS_REGS_OFFSET = 112
# struct elf_prpsinfo on 64-bit, 136 bytes
PRPSINFO = struct.Struct("<bcbb4xQIIiiii16s80s")


@dataclass
class Segment:
    vaddr: int
    size: int
    flags: int
    pages: list[tuple[int, int]] = field(default_factory=list)  # (offset in segment, physical)
    offset: int = 0  # in the file, set by the layout


@dataclass
class AppCoreResult:
    path: str
    pid: int
    comm: str
    threads: int
    segments: int
    data_pages: int
    zero_pages: int
    absent_pages: int
    notes: list[str]

    def summary(self) -> str:
        return (
            f"wrote {self.path}: ELF core of pid {self.pid} ({self.comm}), {self.threads} thread(s), "
            f"{self.segments} PT_LOAD; {self.data_pages} pages from guest RAM, {self.zero_pages} never "
            f"touched (zeros), {self.absent_pages} not in guest RAM (left out); " + "; ".join(self.notes)
        )


def _segment_flags(vma: P.Vma) -> int:
    return (
        (PF_R if vma.flags & P.VM_READ else 0)
        | (PF_W if vma.flags & P.VM_WRITE else 0)
        | (PF_X if vma.flags & P.VM_EXEC else 0)
    )


def _timeval(ns: int) -> tuple[int, int]:
    return ns // 10**9, ns % 10**9 // 1000


def _ids(kernel: LinuxKernel, task: Object) -> tuple[int, int, int, int]:
    """(pid, ppid, pgrp, sid) as the task's own pid namespace sees them (task_pid_vnr & co)."""
    pid = task.pid.value_()
    parent = task.real_parent
    ppid = parent.tgid.value_() if parent and parent.value_() != task.value_() else 0
    pgrp = sid = 0
    prog = kernel.prog
    try:
        pids = task.signal.pids
        pgrp = pids[prog["PIDTYPE_PGID"].value_()].numbers[0].nr.value_()
        sid = pids[prog["PIDTYPE_SID"].value_()].numbers[0].nr.value_()
    except (AttributeError, LookupError):
        pass
    return pid, ppid, pgrp, sid


def prstatus(kernel: LinuxKernel, task: Object, regs: P.UserRegisters) -> bytes:
    pid, ppid, pgrp, sid = _ids(kernel, task)
    signal = task.signal
    times = [*_timeval(task.utime.value_()), *_timeval(task.stime.value_())]
    try:
        times += [*_timeval(signal.cutime.value_()), *_timeval(signal.cstime.value_())]
    except AttributeError:
        times += [0, 0, 0, 0]
    sigpend = task.pending.signal.sig[0].value_()
    sighold = task.blocked.sig[0].value_()
    names = kernel.abi.user_regs
    fpvalid_offset = PRSTATUS_REGS_OFFSET + 8 * len(names)
    desc = bytearray(align(fpvalid_offset + 4, 8))
    PRSTATUS.pack_into(desc, 0, 0, 0, 0, 0, sigpend, sighold, pid, ppid, pgrp, sid, *times)
    values = [regs.values[name] & 0xFFFFFFFFFFFFFFFF for name in names]
    struct.pack_into(f"<{len(names)}Q", desc, PRSTATUS_REGS_OFFSET, *values)
    struct.pack_into("<i", desc, fpvalid_offset, 1 if regs.fp else 0)
    return make_note(b"CORE", NT_PRSTATUS, bytes(desc))


def prpsinfo(kernel: LinuxKernel, leader: Object) -> bytes:
    """fill_psinfo(): the state letter from the lowest set bit of __state (RSDTZW), the ids of the
    group leader, comm and the argument string (NULs as spaces, 80 bytes at most)."""
    try:
        state = leader.__state.value_()
    except AttributeError:
        state = leader.state.value_()
    i = (state & -state).bit_length() if state else 0
    sname = "RSDTZW"[i] if i <= 5 else "."
    pid, ppid, pgrp, sid = _ids(kernel, leader)
    cred = leader.cred
    try:
        uid, gid = cred.uid.val.value_(), cred.gid.val.value_()
    except AttributeError:
        uid, gid = cred.uid.value_(), cred.gid.value_()
    args = P.command_line(kernel, leader).encode()[:ELF_PRARGSZ]
    nice = leader.static_prio.value_() - 120  # task_nice(): static_prio - MAX_RT_PRIO - 20
    desc = PRPSINFO.pack(
        i,
        sname.encode(),
        int(sname == "Z"),
        nice,
        leader.flags.value_(),
        uid,
        gid,
        pid,
        ppid,
        pgrp,
        sid,
        comm(leader).encode()[:16],
        args,
    )
    return make_note(b"CORE", NT_PRPSINFO, desc)


def auxv_note(kernel: LinuxKernel, task: Object) -> bytes:
    pairs = P.auxv(kernel, task)
    return make_note(b"CORE", NT_AUXV, b"".join(struct.pack("<QQ", k, v) for k, v in pairs))


def file_note(vmas: list[P.Vma]) -> bytes:
    """NT_FILE: count, page size, (start, end, file offset in pages) per file mapping, then the
    names (fill_files_note)."""
    files = [v for v in vmas if v.file_backed]
    body = struct.pack("<QQ", len(files), PAGE)
    body += b"".join(struct.pack("<QQQ", v.start, v.end, v.offset // PAGE) for v in files)
    body += b"".join(v.name.encode() + b"\0" for v in files)
    return make_note(b"CORE", NT_FILE, body)


def write_app_core(
    kernel: LinuxKernel, pid: int, out: str, progress: Callable[[int, int], None] | None = None
) -> AppCoreResult:
    from ..writer import check_output_path
    from ..writer.emit import AtomicOutput

    snap = kernel.snap
    check_output_path(snap, out)
    task = kernel.task(pid)
    space = kernel.user_space(task)
    vmas = P.process_vmas(kernel, task)
    group = P.threads(kernel, task)
    group.sort(key=lambda t: t.value_() != task.value_())  # the named thread first

    notes, text = b"", []
    for n, thread in enumerate(group):
        regs = P.user_registers(kernel, thread)
        notes += prstatus(kernel, thread, regs)
        if n == 0:
            notes += prpsinfo(kernel, task.group_leader) + auxv_note(kernel, task) + file_note(vmas)
        if regs.fp:
            notes += make_note(b"CORE", NT_PRFPREG, regs.fp)
        if regs.source != "pt_regs":
            text.append(f"thread {thread.pid.value_()}: registers of {regs.source} (running in user mode)")

    segments: list[Segment] = []
    data = zero = absent = 0
    for vma in vmas:
        flags = _segment_flags(vma)
        if vma.flags & (VM_IO | VM_DONTDUMP):
            segments.append(Segment(vma.start, 0, flags))
            continue
        kept = 0
        for run in P.vma_pages(kernel, space, vma):
            pages = (run.end - run.start) // PAGE
            if run.state == "absent":
                absent += pages
                continue
            seg = Segment(run.start, run.end - run.start, flags)
            if run.state == "present":
                seg.pages = [(i * PAGE, phys) for i, phys in enumerate(run.physical or ())]
            else:
                zero += pages
            if segments and kept and segments[-1].vaddr + segments[-1].size == seg.vaddr:
                last = segments[-1]  # a zero run and a present run of one mapping: one PT_LOAD
                last.pages += [(last.size + off, phys) for off, phys in seg.pages]
                last.size += seg.size
            else:
                segments.append(seg)
            kept += 1
        if not kept:
            segments.append(Segment(vma.start, 0, flags))

    phnum = 1 + len(segments)
    notes_offset = EHDR.size + PHDR.size * phnum
    pos = align(notes_offset + len(notes), PAGE)
    for seg in segments:
        seg.offset = pos if seg.size else 0
        pos += seg.size
    phdrs = [ProgramHeader(PT_NOTE, notes_offset, 0, 0, len(notes), len(notes))]
    for seg in segments:
        memsz = seg.size or _vma_size(vmas, seg.vaddr)
        phdrs.append(ProgramHeader(PT_LOAD, seg.offset, seg.vaddr, 0, seg.size, memsz, seg.flags, PAGE))
    total = sum(len(s.pages) for s in segments) * PAGE
    done = 0
    try:
        with AtomicOutput(out) as f:
            f.write(core_headers(snap.arch.elf_machine, phdrs))
            f.write(notes)
            for seg in segments:
                for offset, phys in seg.pages:
                    try:
                        page = snap.physical.read(phys, PAGE)
                    except AddressError:  # device memory mapped into the process
                        absent += 1
                        continue
                    data += 1
                    if any(page):
                        f.seek(seg.offset + offset)
                        f.write(page)
                    done += PAGE
                    if progress and not done % (16 << 20):
                        progress(done, total)
            f.truncate(pos)
    except OSError as e:
        raise SaveError(f"cannot write: {e.strerror or e}", out) from None
    if progress:
        progress(total, total)
    return AppCoreResult(out, pid, comm(task), len(group), len(segments), data, zero, absent, text)


def _vma_size(vmas: list[P.Vma], start: int) -> int:
    """An empty PT_LOAD keeps its mapping's size in p_memsz, as the kernel's coredump does."""
    for v in vmas:
        if v.start <= start < v.end:
            return v.end - start
    return 0
