"""The QEMU migration stream: constants, section walker, RAM page index, VMDESCRIPTION trailer.

Knows bytes and QEMU's format only; nothing here knows about gdb, machines or devices.
"""
