# vmstate_gdb for gdb: `gdb -x /path/to/vmstate.gdb`, or `source /path/to/vmstate.gdb` in ~/.gdbinit.
# Then: vmstate-open SNAPSHOT   (`help vmstate` lists the commands)
#
# gdb embeds the system Python; the package lives in a virtualenv made with that same interpreter
# (REPO/.venv beside this file, or $VMSTATE_GDB_VENV), whose site-packages are added to gdb's
# sys.path here.
python
def _vmstate_gdb_setup():
    import glob, os, sys

    def this_script():
        # gdb does not tell a sourced script its own name, but the file is open while it runs.
        for fd in glob.glob("/proc/self/fd/*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.endswith(".gdb") and os.path.isfile(target):
                try:
                    with open(target, errors="replace") as f:
                        if "_vmstate_gdb_setup" in f.read(4096):
                            return target
                except OSError:
                    pass
        return None

    script = this_script()
    here = os.path.dirname(script) if script else os.getcwd()
    venv = os.environ.get("VMSTATE_GDB_VENV") or os.path.join(here, ".venv")
    version = "python%d.%d" % sys.version_info[:2]
    site_dir = os.path.join(venv, "lib", version, "site-packages")
    if not os.path.isdir(site_dir):
        other = glob.glob(os.path.join(venv, "lib", "python*", "site-packages"))
        if other:
            gdb.write("vmstate.gdb: warning: %s was made for another Python than gdb's (%s)\n"
                      % (venv, version), gdb.STDERR)
            site_dir = other[0]
    if os.path.isdir(site_dir):
        import site
        site.addsitedir(site_dir)  # also runs the .pth file of an editable install
        os.environ["VMSTATE_GDB_VENV"] = venv
    elif os.path.isdir(os.path.join(here, "vmstate_gdb")) and here not in sys.path:
        sys.path.insert(0, here)  # a source checkout without a venv (its dependencies must be there)
    try:
        import vmstate_gdb.gdb  # noqa: F401  (registers the commands)
    except ImportError as e:
        gdb.write("vmstate.gdb: cannot load vmstate_gdb (%s). Set it up with:\n"
                  "  /usr/bin/python3 -m venv %s && %s/bin/pip install -e %s\n" % (e, venv, venv, here),
                  gdb.STDERR)

_vmstate_gdb_setup()
del _vmstate_gdb_setup
end

# A `monitor` command may change what memory reads return (`monitor phys on`, an edit made by the
# server): gdb's memory cache of the snapshot is dropped after each one.
define hookpost-monitor
maintenance flush dcache
end
