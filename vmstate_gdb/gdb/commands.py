"""gdb commands over the open snapshot. Each is one gdb.Command; its docstring is its `help`.

Every failure is one gdb error line (gdb.GdbError), never a traceback; gdb stays usable.
"""

from __future__ import annotations

import functools
import os
import shlex

import gdb  # type: ignore[import-not-found]

from .session import SESSION

OVERVIEW = """The vmstate_gdb commands: a QEMU snapshot as a gdb target.

  vmstate-open SNAPSHOT [--snapshot NAME]   open a migration stream, libvirt save or qcow2 savevm
  vmstate-close                             end the session (the file is never written)
  info vmstate                              file, vCPUs, memory mode and pending edits
  vmstate-devices [PATH] [--explain]        device tree, a device, a subtree or one field
  vmstate-set PATH VALUE                    edit a device field or register (e1000.RCTL.EN 0)
  vmstate-mac [NIC] [NEW_MAC] [--memory]    show a NIC's MAC, or change every copy of it
  vmstate-revert                            drop every pending edit
  vmstate-save OUT                          write a new snapshot with the edits
  vmstate-dump FILE START END [--phys]      guest memory to a file, at disk speed
  set vmstate-cache on|off                  gdb caches the frozen memory (on: few round trips)

The software inside a Linux guest (from its own kallsyms, BTF and ORC; no vmlinux needed):
  vmstate-ps, vmstate-dmesg, vmstate-modules   tasks, kernel log, modules
  vmstate-bt [PID|all]                      kernel stacks
  vmstate-maps PID, vmstate-files PID       a process's memory map and open files
  vmstate-task [PID]                        memory accesses through a process's page tables
  vmstate-threads tasks|vcpus               gdb's threads: the guest's tasks (as kgdb) or vCPUs
  vmstate-symbols, vmstate-types            the kernel's symbols and types for gdb itself

  $vmstate_dev("PATH"), $vmstate_dev_str("PATH")   a device field as a value / as text
  $vmstate_ncpus, $vmstate_nics, $vmstate_mac0...  set on open
  monitor help                              the server's monitor commands (info registers,
                                            info mem, info version, phys on|off)

vCPU N is thread N+1 (`info threads`, `thread 2`); memory goes through the selected vCPU's page
tables, or is guest-physical after `monitor phys on`. On a Linux guest `bt` unwinds kernel stacks
with the kernel's ORC tables (and goes on into a syscall's user frames). Registers and memory are
edited with the usual gdb commands (set var, set $rax = ..., restore FILE binary ADDR); edits stay
in an overlay."""


def _one_line_errors(invoke):
    @functools.wraps(invoke)
    def wrapper(self, arg, from_tty):
        try:
            return invoke(self, arg, from_tty)
        except gdb.GdbError:
            raise
        except gdb.error as e:
            raise gdb.GdbError(str(e)) from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise gdb.GdbError(f"{self.__class__.command_name}: {e}") from None

    return wrapper


def _argv(arg: str) -> list[str]:
    try:
        return shlex.split(arg)
    except ValueError as e:
        raise gdb.GdbError(f"cannot parse arguments: {e}") from None


class _GdbTerminal:
    """gdb's own output as a stream for :class:`~vmstate_gdb.progress.Progress`."""

    def write(self, text: str) -> None:
        gdb.write(text)

    def flush(self) -> None:
        gdb.flush()

    def isatty(self) -> bool:
        return True


def _progress(label: str, from_tty: bool):
    """A progress display for a command typed at a terminal; None in batch mode and in scripts."""
    if not from_tty or not os.isatty(1):
        return None
    from ..progress import Progress

    return Progress(label, stream=_GdbTerminal(), enabled=True)


def _flush_gdb_caches() -> None:
    """After the server changed state behind gdb's back (device edits, MAC in RAM, revert)."""
    from .unwinder import UNWINDER

    UNWINDER.reset()
    for command in ("maintenance flush register-cache", "maintenance flush dcache"):
        try:
            gdb.execute(command, to_string=True)
        except gdb.error:
            pass


def set_convenience_variables(facts: dict) -> None:
    gdb.set_convenience_variable("vmstate_file", facts.get("path", ""))
    gdb.set_convenience_variable("vmstate_ncpus", int(facts.get("ncpus", 0)))
    nics = facts.get("nics", [])
    gdb.set_convenience_variable("vmstate_nics", len(nics))
    for i, nic in enumerate(nics):
        gdb.set_convenience_variable(f"vmstate_mac{i}", nic["mac"])
        gdb.set_convenience_variable(f"vmstate_nic{i}", nic["name"])


class VmstateHelp(gdb.Command):
    __doc__ = OVERVIEW
    command_name = "vmstate"

    def __init__(self):
        super().__init__(self.command_name, gdb.COMMAND_USER)

    def invoke(self, arg, from_tty):
        gdb.write(OVERVIEW + "\n")


def _take_option(args: list[str], names: tuple[str, ...], command: str) -> str | None:
    """Remove ``--name VALUE`` (or ``--name=VALUE``) from ``args``; return VALUE."""
    for i, a in enumerate(args):
        for name in names:
            if a == name:
                if i + 1 >= len(args):
                    raise gdb.GdbError(f"{command}: {name} needs a value")
                value = args[i + 1]
                del args[i : i + 2]
                return value
            if a.startswith(name + "=") and name.startswith("--"):
                del args[i]
                return a.split("=", 1)[1]
    return None


class VmstateOpen(gdb.Command):
    """Open a QEMU snapshot as the gdb target: vmstate-open SNAPSHOT [--snapshot NAME]

    SNAPSHOT is a migration stream (migrate to exec:/file:), a libvirt save image or a qcow2 image
    with internal snapshots (--snapshot NAME picks one). A snapshot server is started and gdb is
    connected to it; a snapshot already open is closed first."""

    command_name = "vmstate-open"

    def __init__(self):
        super().__init__(self.command_name, gdb.COMMAND_RUNNING, gdb.COMPLETE_FILENAME)

    @_one_line_errors
    def invoke(self, arg, from_tty):
        args = _argv(arg)
        name = _take_option(args, ("--snapshot", "-s"), "vmstate-open")
        if len(args) != 1:
            raise gdb.GdbError("usage: vmstate-open SNAPSHOT [--snapshot|-s NAME]")
        if SESSION.facts:
            try:
                before = SESSION.request("describe")
            except gdb.GdbError:
                before = {}
            if before.get("unsaved"):
                gdb.write(
                    f"vmstate: discarding the unsaved edits of {SESSION.facts.get('path')} "
                    f"({before['pages']} page(s), {len(before['fields'])} field(s))\n"
                )
        from .unwinder import UNWINDER

        # the stop gdb reports on connecting needs only frame 0's pc: not yet the kernel's
        # stacks, whose first view costs the kernel's symbols and types
        UNWINDER.suspended = True
        progress = _progress(f"indexing {args[0]}", from_tty)
        try:
            SESSION.open(args[0], name, progress=progress)
        finally:
            UNWINDER.suspended = False
            if progress is not None:
                progress.done()
        UNWINDER.forget_guest()
        _flush_gdb_caches()  # frame 0 again, this time with the kernel unwinder
        facts = SESSION.facts
        set_convenience_variables(facts)
        macs = ", ".join(f"{n['name']} {n['mac']}" for n in facts.get("nics", []))
        gdb.write(
            f"vmstate: {facts['path']}: {facts['ncpus']} vCPU(s) as threads 1..{facts['ncpus']}"
            + (f"; NICs: {macs}" if macs else "")
            + "\n"
        )


class VmstateClose(gdb.Command):
    """End the snapshot session: detach gdb and stop the snapshot server. Unsaved edits are lost."""

    command_name = "vmstate-close"

    def __init__(self):
        super().__init__(self.command_name, gdb.COMMAND_RUNNING, gdb.COMPLETE_NONE)

    @_one_line_errors
    def invoke(self, arg, from_tty):
        was = SESSION.path
        SESSION.close()
        gdb.write(f"vmstate: closed {was}\n" if was else "vmstate: no snapshot was open\n")


class InfoVmstate(gdb.Command):
    """Show the open snapshot: file, vCPUs (mode, paging, pc), memory mode, NICs, pending edits."""

    command_name = "info vmstate"

    def __init__(self):
        super().__init__(self.command_name, gdb.COMMAND_STATUS, gdb.COMPLETE_NONE)

    @_one_line_errors
    def invoke(self, arg, from_tty):
        _select_server_thread()
        gdb.write(SESSION.request("describe")["text"])


def _select_server_thread() -> None:
    """Tell the server which vCPU gdb has selected (it follows Hg), so `info vmstate` marks it."""
    thread = gdb.selected_thread()
    if thread is not None:
        try:
            gdb.selected_inferior().connection.send_packet(f"Hg{thread.ptid[1]:x}")
        except (gdb.error, AttributeError):
            pass


class DevicePathCompletion:
    def complete(self, text, word):
        try:
            paths = SESSION.request("complete", prefix=text.split()[-1] if text.split() else "")
        except gdb.GdbError:
            return []
        cut = len(text.split()[-1]) - len(word) if text.split() and word is not None else 0
        return [p[cut:] for p in paths]


class VmstateDevices(DevicePathCompletion, gdb.Command):
    """Print the device tree, or a device, subtree or field: vmstate-devices [PATH] [--depth N] [--explain]

    Paths are as QEMU names the state: e.g. `vmstate-devices e1000`, `vmstate-devices
    e1000/mac_reg[0]`, `vmstate-devices 0000:00:03.0/e1000/full_mac_state`. Tab completes paths.
    --explain shows the device as hardware: registers by name, flags decoded (PCI config space,
    local APICs, IOAPIC, i8259s, e1000)."""

    command_name = "vmstate-devices"

    def __init__(self):
        super().__init__(self.command_name, gdb.COMMAND_DATA)

    @_one_line_errors
    def invoke(self, arg, from_tty):
        args = _argv(arg)
        depth = 8
        if "--depth" in args:
            i = args.index("--depth")
            depth = int(args[i + 1])
            del args[i : i + 2]
        explain = "--explain" in args
        args = [a for a in args if a != "--explain"]
        gdb.write(SESSION.request("devices", path=" ".join(args), depth=depth, explain=explain)["text"])


class VmstateSet(DevicePathCompletion, gdb.Command):
    """Edit one device field, or a register by name: vmstate-set PATH VALUE

    PATH is a raw field (e1000/mac_reg[RCTL], see vmstate-devices) or DEVICE.REGISTER[.PART] as
    vmstate-devices --explain names them (e1000.RCTL.EN, apic.LVTT.masked, ioapic.pin4.masked,
    mc146818rtc.time). VALUE is an integer (42, 0x2a, -1, on/off) for integer fields and parts,
    aa:bb:cc:dd:ee:ff for a 6-byte MAC buffer, hex bytes for other buffers, a date and time for
    the RTC; it must fit. The edit is kept in the overlay until vmstate-save or vmstate-revert."""

    command_name = "vmstate-set"

    def __init__(self):
        super().__init__(self.command_name, gdb.COMMAND_DATA)

    @_one_line_errors
    def invoke(self, arg, from_tty):
        args = _argv(arg)
        if len(args) == 1 and "=" in args[0]:  # the --set form, PATH=VALUE
            args = args[0].split("=", 1)
        if len(args) > 2:  # a value with spaces, e.g. a date and time
            args = [args[0], " ".join(args[1:])]
        if len(args) != 2:
            raise gdb.GdbError("usage: vmstate-set PATH VALUE (e.g. vmstate-set e1000.RCTL.EN 0)")
        gdb.write(SESSION.request("set", path=args[0], value=args[1])["text"])
        _flush_gdb_caches()


class VmstateMac(gdb.Command):
    """Show or change a NIC's MAC: vmstate-mac [NIC] [NEW_MAC] [--memory]

    Without NEW_MAC, print the MAC of each NIC (or of NIC). With it, change every copy the device
    keeps (virtio-net: mac and the config space; e1000: RA registers, full_mac_state and the EEPROM
    with its checksum; rtl8139: phys, conf.macaddr, EEPROM; e1000e likewise). --memory also replaces
    every occurrence of the old MAC in guest RAM, listed as they are patched."""

    command_name = "vmstate-mac"

    def __init__(self):
        super().__init__(self.command_name, gdb.COMMAND_DATA, gdb.COMPLETE_NONE)

    @_one_line_errors
    def invoke(self, arg, from_tty):
        args = _argv(arg)
        memory = "--memory" in args
        args = [a for a in args if a != "--memory"]
        unknown = [a for a in args if a.startswith("--")]
        if unknown:
            raise gdb.GdbError(f"vmstate-mac: unknown option {unknown[0]} (only --memory)")
        nic = new = None
        if len(args) == 1:
            (nic, new) = (
                (None, args[0]) if args[0].count(":") == 5 or args[0].count("-") == 5 else (args[0], None)
            )
        elif len(args) == 2:
            nic, new = args
        elif args:
            raise gdb.GdbError("usage: vmstate-mac [NIC] [NEW_MAC] [--memory]")
        if memory and new is None:
            raise gdb.GdbError("vmstate-mac: --memory goes with a NEW_MAC")
        reply = SESSION.request("mac", nic=nic, new=new, memory=memory)
        gdb.write(reply["text"])
        if new is not None:
            _flush_gdb_caches()
            set_convenience_variables(SESSION.request("facts"))


class VmstateRevert(gdb.Command):
    """Drop every pending edit (RAM pages, registers, device fields): the snapshot as on disk."""

    command_name = "vmstate-revert"

    def __init__(self):
        super().__init__(self.command_name, gdb.COMMAND_DATA, gdb.COMPLETE_NONE)

    @_one_line_errors
    def invoke(self, arg, from_tty):
        gdb.write(SESSION.request("revert")["text"])
        _flush_gdb_caches()
        set_convenience_variables(SESSION.request("facts"))


class VmstateSave(gdb.Command):
    """Write a new snapshot with the pending edits: vmstate-save OUT [--format stream|qcow2|libvirt]

    OUT is of the same kind as the input (stream, qcow2 or libvirt save image, written uncompressed
    with its XML's MACs updated) unless --format says otherwise (a qcow2 snapshot's or a libvirt
    image's state as a standalone stream); the input file is never written."""

    command_name = "vmstate-save"

    def __init__(self):
        super().__init__(self.command_name, gdb.COMMAND_DATA, gdb.COMPLETE_FILENAME)

    @_one_line_errors
    def invoke(self, arg, from_tty):
        args = _argv(arg)
        fmt = _take_option(args, ("--format", "-f"), "vmstate-save")
        if len(args) != 1 or fmt not in (None, "stream", "qcow2", "libvirt"):
            raise gdb.GdbError("usage: vmstate-save OUT [--format stream|qcow2|libvirt]")
        out = os.path.abspath(os.path.expanduser(args[0]))
        shown = _progress(f"saving {args[0]}", from_tty)
        # over the side channel, whose progress lines also keep a many-GiB save's connection alive
        reply = SESSION.side_request("save", progress=shown or (lambda done, total: None), out=out, fmt=fmt)
        if shown is not None:
            shown.done()
        gdb.write(reply["text"])


class VmstateDump(gdb.Command):
    """Write guest memory to a file: vmstate-dump FILE START END [--phys]

    As `dump binary memory FILE START END` (START and END are expressions; END is not included),
    but the server writes the file itself, at the disk's speed rather than at gdb's hex-parsing
    speed: for dumping much memory. The addresses are the current thread's (a vCPU's, or a task's
    with vmstate-threads tasks), or guest-physical with --phys or `monitor phys on`. An address that
    is not mapped stops the dump and nothing is written."""

    command_name = "vmstate-dump"

    def __init__(self):
        super().__init__(self.command_name, gdb.COMMAND_DATA, gdb.COMPLETE_FILENAME)

    @_one_line_errors
    def invoke(self, arg, from_tty):
        args = _argv(arg)
        physical = "--phys" in args
        args = [a for a in args if a != "--phys"]
        if len(args) != 3:
            raise gdb.GdbError("usage: vmstate-dump FILE START END [--phys]")
        out = os.path.abspath(os.path.expanduser(args[0]))
        start, end = (int(gdb.parse_and_eval(a)) & 0xFFFFFFFFFFFFFFFF for a in args[1:])
        shown = _progress(f"dumping to {args[0]}", from_tty)
        reply = SESSION.side_request(
            "dump",
            progress=shown or (lambda done, total: None),
            out=out,
            start=start,
            end=end,
            physical=physical,
        )
        if shown is not None:
            shown.done()
        gdb.write(reply["text"])


class VmstateCache(gdb.Parameter):
    """Whether gdb caches the snapshot's memory (on by default).

    On, gdb reads 128 KiB at a time and keeps what it read: `x/100000x`, `bt` and struct printing
    make few round trips. Off, every read goes to the server: `dump binary memory` of RAM the guest
    never touched is then about 1.5x faster; for bulk reads `vmstate-dump` is 20x faster than
    either (gdb 13 parses hex replies a character at a time). Edits, `monitor` commands and thread
    switches drop the cache either way."""

    set_doc = "Set whether gdb caches the snapshot's memory."
    show_doc = "Show whether gdb caches the snapshot's memory."
    command_name = "vmstate-cache"

    def __init__(self):
        super().__init__(self.command_name, gdb.COMMAND_DATA, gdb.PARAM_BOOLEAN)
        self.value = True

    def get_set_string(self):
        SESSION.set_cache(bool(self.value))
        return ""

    def get_show_string(self, svalue):
        return f"gdb caches the snapshot's memory: {svalue}"


COMMANDS = (
    VmstateCache,
    VmstateHelp,
    VmstateOpen,
    VmstateClose,
    InfoVmstate,
    VmstateDevices,
    VmstateSet,
    VmstateMac,
    VmstateRevert,
    VmstateSave,
    VmstateDump,
)
