"""qcow2 output: a copy of the image whose internal snapshot holds the edited vmstate.

The disk clusters, the other snapshots and the snapshot's own disk state are copied as they are.
The vmstate is rewritten from the first changed byte through the snapshot's own L2 table; when
new PAGE records make it longer, clusters are appended to the file with refcount 1 and the
snapshot's `vm_state_size` grows. A cluster or L2 table that is shared (refcount > 1: after savevm
QEMU leaves the vmstate's L2 table shared with the active image) is copied first, as qcow2's own
copy-on-write does, so no other snapshot or the active image changes.
"""

from __future__ import annotations

import os
import tempfile

from ..containers.qcow2 import OFFSET_MASK, REFT_OFFSET_MASK, Qcow2Image
from ..errors import FormatError, SaveError, UnsupportedError
from ..snapshot import Snapshot
from .emit import AtomicOutput, copy_range
from .plan import Plan

OFLAG_COPIED = 1 << 63


class _ImageWriter:
    """Cluster-level writes into the output copy, with the input's parsed structure."""

    def __init__(self, fd: int, image: Qcow2Image, out: str):
        self.fd = fd
        self.img = image
        self.out = out
        self.cs = image.cluster_size
        self.end = (os.fstat(fd).st_size + self.cs - 1) // self.cs * self.cs
        rt = image.refcount_table_offset
        self.pointer(rt, "the refcount table offset", 48, image.refcount_table_clusters * self.cs)

    def pointer(self, host: int, what: str, at: int, length: int | None = None) -> int:
        """``host``, read from the image's own tables, if it is a cluster of the image: a corrupt
        table would otherwise make the writer read or write anywhere (a FormatError instead)."""
        length = self.cs if length is None else length
        if host % self.cs or host + length > self.end:
            raise FormatError(
                f"{what} ({host:#x}) is not a cluster of the image ({self.end:#x} bytes): its tables are "
                "corrupt; save with --format stream instead",
                self.img.path,
                at,
            )
        return host

    def _u64(self, offset: int) -> int:
        return int.from_bytes(os.pread(self.fd, 8, offset), "big")

    def _put64(self, offset: int, value: int) -> None:
        os.pwrite(self.fd, value.to_bytes(8, "big"), offset)

    # refcounts ---------------------------------------------------------------------------------

    def _refcount_slot(self, cluster: int, allocate: bool) -> tuple[int, int] | None:
        img = self.img
        block_bits = img.cluster_bits + 3 - img.refcount_order
        t_idx, b_idx = cluster >> block_bits, cluster & ((1 << block_bits) - 1)
        if t_idx >= img.refcount_table_clusters * self.cs // 8:
            raise UnsupportedError(
                f"its refcount table does not cover cluster {cluster:#x} (full, or the header is corrupt); "
                "save with --format stream instead",
                img.path,
                48,
            )
        t_off = img.refcount_table_offset + 8 * t_idx
        block = self._u64(t_off) & REFT_OFFSET_MASK
        if block:
            self.pointer(block, f"refcount table entry {t_idx}", t_off)
        if block == 0:
            if not allocate:
                return None
            block = self.end
            self.end += self.cs
            os.pwrite(self.fd, bytes(self.cs), block)
            self._put64(t_off, block)
            self.set_refcount(block // self.cs, 1)
        return block, b_idx

    def refcount(self, cluster: int) -> int:
        slot = self._refcount_slot(cluster, allocate=False)
        if slot is None:
            return 0
        block, idx = slot
        bits = self.img.refcount_bits
        if bits >= 8:
            n = bits // 8
            return int.from_bytes(os.pread(self.fd, n, block + idx * n), "big")
        byte = os.pread(self.fd, 1, block + idx * bits // 8)[0]
        return byte >> (idx * bits % 8) & ((1 << bits) - 1)

    def set_refcount(self, cluster: int, value: int) -> None:
        block, idx = self._refcount_slot(cluster, allocate=True)  # type: ignore[misc]
        bits = self.img.refcount_bits
        if bits >= 8:
            n = bits // 8
            os.pwrite(self.fd, value.to_bytes(n, "big"), block + idx * n)
            return
        at = block + idx * bits // 8
        byte = os.pread(self.fd, 1, at)[0]
        shift = idx * bits % 8
        mask = ((1 << bits) - 1) << shift
        os.pwrite(self.fd, bytes([(byte & ~mask) | (value << shift & mask)]), at)

    def allocate(self) -> int:
        host = self.end
        self.end += self.cs
        os.pwrite(self.fd, bytes(self.cs), host)
        self.set_refcount(host // self.cs, 1)
        return host

    def own_cluster(self, host: int) -> int:
        """Copy-on-write, as qcow2 does: a cluster shared with the active image or another snapshot
        is copied to a new one that only our snapshot refers to; returns where to write."""
        rc = self.refcount(host // self.cs)
        if rc <= 1:
            return host
        new = self.allocate()
        os.pwrite(self.fd, os.pread(self.fd, self.cs, host), new)
        self.set_refcount(host // self.cs, rc - 1)
        return new

    def own_l2_table(self, l1e_at: int, l2: int) -> int:
        """An L2 table shared with the active L1 (QEMU leaves the vmstate's table shared after
        savevm) is copied. Data-cluster refcounts already count one reference per L1 path, so
        the copy changes none of them."""
        if self.refcount(l2 // self.cs) <= 1:
            return l2
        new = self.own_cluster(l2)
        old_flags = self._u64(l1e_at) & ~OFFSET_MASK
        self._put64(l1e_at, new | old_flags | OFLAG_COPIED)
        return new

    def fix_copied_flags(self, l1_index: int) -> None:
        """The active image's OFLAG_COPIED bits must say "refcount is 1" exactly; copying shared
        clusters away can make the active image the sole owner of what it had shared."""
        img = self.img
        if l1_index >= img.l1_size:
            return
        at = img.l1_table_offset + 8 * l1_index
        size = img.file.size
        if img.l1_table_offset % self.cs or at + 8 > size:
            raise FormatError(
                f"the active L1 table at {img.l1_table_offset:#x} is outside the file", img.path, 40
            )
        l1e = self._u64(at)
        l2 = l1e & OFFSET_MASK
        if not l2:
            return
        if l2 % self.cs or l2 + self.cs > size:
            raise FormatError(f"active L1 entry {l1_index} points outside the file ({l2:#x})", img.path, at)
        self._set_copied(at, l1e, self.refcount(l2 // self.cs) == 1)
        table = os.pread(self.fd, self.cs, l2)
        for k in range(0, self.cs, img.l2_entry_size):
            entry = int.from_bytes(table[k : k + 8], "big")
            host = entry & OFFSET_MASK
            if host:
                self._set_copied(l2 + k, entry, self.refcount(host // self.cs) == 1)

    def _set_copied(self, at: int, entry: int, copied: bool) -> None:
        new = entry | OFLAG_COPIED if copied else entry & ~OFLAG_COPIED
        if new != entry:
            self._put64(at, new)


def save_qcow2(snap: Snapshot, plan: Plan, out: str, new_name: str | None, progress) -> tuple[str, int]:
    source = snap.source
    image: Qcow2Image = source.image  # type: ignore[attr-defined]
    info = source.snapshot  # type: ignore[attr-defined]
    if image.dirty:
        raise UnsupportedError(
            "the qcow2 image is marked dirty (open in QEMU, or QEMU was killed): its "
            "refcounts cannot be trusted; close QEMU or run 'qemu-img check -r all' first",
            snap.path,
            72,
        )
    if image.extended_l2 and plan.size_delta:
        raise UnsupportedError(
            "growing a vmstate in an extended-L2 qcow2 image is not supported; save with "
            "--format stream instead",
            snap.path,
            72,
        )
    if new_name is not None and len(new_name.encode()) != len(info.name.encode()):
        raise SaveError("renaming the snapshot is only possible to a name of the same length", out)
    stream_size = source.size + plan.size_delta
    first_change = min(
        [o for o, _ in plan.patches] + ([plan.insert_at] if plan.insert_at is not None else []), default=None
    )
    out_dir = os.path.dirname(os.path.abspath(out))
    with source.open_file() as src, AtomicOutput(out) as dst:
        total = os.fstat(src.fileno()).st_size
        copy_range(src.fileno(), dst, 0, total, progress, 0, total)
        dst.flush()
        if first_change is None and new_name is None:
            source.check_unchanged()
            return info.name, total
        w = _ImageWriter(dst.fileno(), image, out)
        if first_change is not None:
            with tempfile.TemporaryFile(dir=out_dir) as tmp:
                from . import write_edited_stream

                write_edited_stream(snap, plan, tmp)
                tmp.flush()
                _rewrite_vmstate(
                    w, image, info, image.vm_state_offset(info), tmp.fileno(), first_change, stream_size
                )
        if stream_size != info.vm_state_size:
            _set_vm_state_size(w, info, stream_size)
        if new_name is not None:
            name_at = info.entry_offset + 40 + len(info.extra_data) + len(info.id.encode())
            os.pwrite(w.fd, new_name.encode(), name_at)
        size = max(w.end, os.fstat(w.fd).st_size)
        os.ftruncate(w.fd, size)
        os.lseek(w.fd, 0, os.SEEK_END)
        source.check_unchanged()  # truncated or rewritten while we copied: no output
    return new_name or info.name, size


def _rewrite_vmstate(
    w: _ImageWriter, image: Qcow2Image, info, base: int, new_fd: int, start: int, size: int
) -> None:
    cs = w.cs
    l2_mask = (1 << image.l2_bits) - 1
    l1_shift = image.cluster_bits + image.l2_bits
    pos = start
    owned_l2: set[int] = set()
    while pos < size:
        vpos = base + pos
        within = vpos & (cs - 1)
        n = min(cs - within, size - pos)
        l1_idx = vpos >> l1_shift
        if l1_idx >= info.l1_size:
            raise UnsupportedError(
                "the grown vmstate needs a larger L1 table; save with --format stream",
                image.path,
                info.entry_offset,
            )
        l1e_at = info.l1_table_offset + 8 * l1_idx
        l2 = w._u64(l1e_at) & OFFSET_MASK
        if l2:
            w.pointer(l2, f"snapshot L1 entry {l1_idx}", l1e_at)
        if l2 == 0:  # the grown vmstate crosses into a range no L2 table covers yet
            l2 = w.allocate()
            w._put64(l1e_at, l2 | OFLAG_COPIED)
            owned_l2.add(l2)
        if l2 not in owned_l2:
            l2 = w.own_l2_table(l1e_at, l2)
            owned_l2.add(l2)
        l2e_at = l2 + ((vpos >> image.cluster_bits) & l2_mask) * image.l2_entry_size
        l2e = w._u64(l2e_at)
        host = l2e & OFFSET_MASK
        if host:
            w.pointer(host, "an L2 entry of the vmstate", l2e_at)
        if host == 0:
            host = w.allocate()
            w._put64(l2e_at, host | OFLAG_COPIED)
        elif within == 0 or pos == start:
            owned = w.own_cluster(host)
            if owned != host:
                w._put64(l2e_at, owned | (l2e & ~OFFSET_MASK) | OFLAG_COPIED)
                host = owned
        data = os.pread(new_fd, n, pos)
        os.pwrite(w.fd, data, host + within)
        pos += n
    for l1_index in range(base >> l1_shift, ((base + size - 1) >> l1_shift) + 1):
        w.fix_copied_flags(l1_index)


def _set_vm_state_size(w: _ImageWriter, info, size: int) -> None:
    entry = info.entry_offset
    os.pwrite(w.fd, (size if size < 1 << 32 else 0).to_bytes(4, "big"), entry + 32)
    if len(info.extra_data) >= 8:
        os.pwrite(w.fd, size.to_bytes(8, "big"), entry + 40)
