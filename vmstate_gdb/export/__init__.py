"""Snapshots as files for other tools, and back: device state as XML/JSON, guest memory and vCPUs as
an ELF core (like QEMU's dump-guest-memory), re-injection of edited files, diffs and disassembly.

One module per job: ``devices_xml`` (export/import of device state), ``elfcore`` (write a core),
``inject`` (a core back into a snapshot), ``diff`` (two snapshots), ``disas`` (capstone listing),
``cli`` (the `vmstate` subcommands).
"""
