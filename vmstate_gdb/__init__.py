"""vmstate_gdb: a frozen QEMU/KVM virtual machine as a gdb target, and back into a snapshot."""

__version__ = "0.1.0"
