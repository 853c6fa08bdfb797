"""A gdb frame unwinder for the guest kernel: `bt` in gdb walks a kernel stack as drgn does with
the kernel's own ORC tables (asked of the snapshot server), since a distribution kernel has no
frame pointers and gdb has no CFI for it. Frames it does not know (user code, non-Linux guests)
are left to gdb's own unwinders."""

from __future__ import annotations

import gdb  # type: ignore[import-not-found]
from gdb.unwinder import Unwinder, register_unwinder  # type: ignore[import-not-found]

from .session import SESSION, SessionError


class _FrameId:
    """What create_unwind_info takes: ``sp`` and ``pc`` as gdb.Values."""

    def __init__(self, sp, pc):
        self.sp, self.pc = sp, pc


#: A kernel frame's id carries its stack address in the low 40 bits only: gdb stops a backtrace
#: whose next frame's stack address is below the last one's ("inner"), and the user stack of a
#: syscall's caller is below every kernel stack; so mapped, the kernel frames sit below user
#: stacks (kernel stacks are 16 KiB aligned, so their order within a stack holds) and gdb goes on
#: from the syscall entry into the user frames, with the program's own CFI if it has them.
ID_STACK_MASK = (1 << 40) - 1


class KernelUnwinder(Unwinder):
    def __init__(self):
        super().__init__("vmstate-linux")
        self.frames: dict[int, list[dict]] = {}  # gdb thread id (the server's) -> drgn's frames
        self.unavailable = False  # not a Linux guest (or no snapshot): stop asking
        self.suspended = False  # while vmstate-open connects

    def reset(self, *_args) -> None:
        self.frames.clear()

    def forget_guest(self) -> None:
        """A new snapshot: ask again whether it is a Linux guest."""
        self.frames.clear()
        self.unavailable = False

    def _frames(self, tid: int) -> list[dict]:
        frames = self.frames.get(tid)
        if frames is None:
            try:
                frames = SESSION.side_request("linux_unwind", thread=tid)
            except SessionError:
                self.unavailable = True
                frames = []
            self.frames[tid] = frames
        return frames

    def __call__(self, pending_frame):
        if self.unavailable or self.suspended or not SESSION.connected():
            return None
        thread = gdb.selected_thread()
        if thread is None:
            return None
        frames = self._frames(thread.ptid[1] or thread.ptid[2])
        if len(frames) < 2:
            return None
        pc_value, sp_value = pending_frame.read_register("pc"), pending_frame.read_register("sp")
        pc, sp = int(pc_value), int(sp_value)
        i = next((i for i, f in enumerate(frames) if f["pc"] == pc and f["sp"] == sp), None)
        if i is None:
            return None
        if i + 1 < len(frames):
            caller = frames[i + 1]["regs"]
        elif frames[i]["kernel"]:
            caller = {"pc": 0, "sp": sp}  # the bottom of a kernel stack: gdb stops at pc 0
        else:
            return None  # a user frame: gdb's own unwinders (and the program's CFI, if loaded)
        info = pending_frame.create_unwind_info(_FrameId(_id_stack(sp_value), pc_value))
        for name, value in caller.items():
            try:
                reg_type = pending_frame.read_register(name).type
            except (ValueError, gdb.error):
                continue  # a register gdb's target description does not have
            size = reg_type.sizeof
            raw = (value % (1 << 8 * size)).to_bytes(size, "little")
            info.add_saved_register(name, gdb.Value(raw, reg_type))
        return info


def _id_stack(sp_value):
    return gdb.Value(int(sp_value) & ID_STACK_MASK).cast(sp_value.type)


UNWINDER = KernelUnwinder()


def install() -> None:
    register_unwinder(None, UNWINDER, replace=True)
    for event in ("memory_changed", "register_changed"):
        getattr(gdb.events, event).connect(UNWINDER.reset)
