#!/bin/bash
# Set up everything vmstate_gdb's demo and tests need, on a fresh Debian 12 machine or an old one:
#   apt packages (QEMU 7.2 for x86_64 and aarch64, qemu-utils, gdb, gdb-multiarch, the aarch64 cross
#   gcc/binutils, busybox-static, ...), QEMU 10 beside it (backports),
#   a virtualenv made with the system python3 (the interpreter Debian's gdb embeds) holding the
#   package and its test extras, and the two test guests.
# Idempotent and quick when everything is there. Needs root (or sudo) only to install packages.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VMSTATE_VENV:-$ROOT/.venv}
log() { printf 'bootstrap: %s\n' "$*" >&2; }

# bpftool: BTF -> C for gdb's vmstate-types; libc6-dev: the Linux guest's static marker program
# xfsprogs: the reflink save test and benchmark make an XFS on a loop image
# libvirt-*, python3-libvirt: the libvirt tests run their own daemon (issue 12); the binding is
# Debian's (built against the same libvirt as the daemon), linked into the venv below
# gzip bzip2 lzop zstd: the compressors of save_image_format (xz-utils above); lzop and zstd are also
# the decompressors vmstate uses for those images (Python has modules only for gzip, bzip2, xz)
APT_PACKAGES="qemu-system-x86 qemu-system-arm qemu-utils gdb gdb-multiarch busybox-static python3-venv python3-pip gcc libc6-dev make binutils gcc-aarch64-linux-gnu binutils-aarch64-linux-gnu xz-utils cpio bpftool xfsprogs libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients python3-libvirt gzip bzip2 lzop zstd"
missing=""
for p in $APT_PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    log "installing:$missing"
    $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq $missing >/dev/null
fi

if [ "${VMSTATE_SKIP_QEMU10:-0}" != 1 ]; then
    bash "$ROOT/tools/install-qemu10.sh" >&2
fi

# gdb's embedded Python is /usr/bin/python3; the venv must be made with that same interpreter.
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys; sys.exit(sys.base_prefix != "/usr")'; then
    log "creating $VENV with /usr/bin/python3"
    rm -rf "$VENV"
    /usr/bin/python3 -m venv "$VENV"
fi
stamp="$VENV/.vmstate-installed"
if [ ! -f "$stamp" ] || [ "$ROOT/setup.py" -nt "$stamp" ]; then
    log "installing vmstate_gdb into $VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -e "$ROOT[test]"
    touch "$stamp"
fi

# The libvirt binding: Debian's python3-libvirt, not libvirt-python from PyPI (that one compiles
# against libvirt-dev and must match the daemon's version anyway). Only its modules are linked into
# a directory on the venv's path (a .pth), so the rest of dist-packages does not leak into the venv.
SYSLIB="$VENV/system-libvirt"
mkdir -p "$SYSLIB"
for f in /usr/lib/python3/dist-packages/libvirt*.py /usr/lib/python3/dist-packages/libvirtmod*.so; do
    [ -e "$f" ] && ln -sf "$f" "$SYSLIB/"
done
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$SYSLIB" > "$site/vmstate-system-libvirt.pth"

log "building the small test guests (x86_64, aarch64)"
make -s -C "$ROOT/tests/guest" >&2
make -s -C "$ROOT/tests/guest-arm64" >&2
if [ "${VMSTATE_SKIP_LINUX:-0}" != 1 ]; then
    log "building the Linux test guests (x86_64, aarch64)"
    bash "$ROOT/tests/linux/build.sh" >/dev/null
    bash "$ROOT/tests/linux-arm64/build.sh" >/dev/null
    if [ "${VMSTATE_SKIP_VMLINUX:-0}" != 1 ]; then
        # the guest kernel's debug vmlinux, for the tests of --vmlinux (a 860 MB download, ~15 s)
        bash "$ROOT/tests/linux/fetch-vmlinux.sh"
    fi
fi
log "ready: $VENV/bin/vmstate, gdb -x $ROOT/vmstate.gdb"
