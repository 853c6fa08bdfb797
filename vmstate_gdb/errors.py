"""One error hierarchy: every error names the file and, where it applies, the byte offset.

The gdb side and the command line print ``str(error)`` as the single line a user sees, so the
message must stand alone.
"""

from __future__ import annotations


class VmstateError(Exception):
    """Base of every error this package raises on purpose."""

    def __init__(self, message: str, path: str | None = None, offset: int | None = None):
        self.message = message
        self.path = path
        self.offset = offset
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = ""
        if self.path is not None:
            where = f"{self.path}: "
            if self.offset is not None:
                where = f"{self.path}: at byte {self.offset:#x}: "
        elif self.offset is not None:
            where = f"at byte {self.offset:#x}: "
        return where + self.message


class FormatError(VmstateError):
    """The file is not what it should be: truncated, corrupted, or of a kind we do not read."""


class UnsupportedError(VmstateError):
    """A valid snapshot that uses a feature this build does not handle (xbzrle, multifd, ...)."""


class AddressError(VmstateError):
    """A guest address that is not mapped, in the physical or a virtual address space."""

    def __init__(self, message: str, address: int, path: str | None = None):
        self.address = address
        super().__init__(message, path)


class EditError(VmstateError):
    """An edit that cannot be applied: unknown path, wrong size, value out of range."""


class SaveError(VmstateError):
    """Writing a new snapshot failed; nothing was left behind."""


class QemuError(VmstateError):
    """Talking to or running QEMU failed (harness, capture, resume helpers)."""
