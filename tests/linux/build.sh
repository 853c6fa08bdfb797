#!/bin/bash
# Build the real Linux test guest for vmstate_gdb into tests/linux/build/:
#   vmlinuz, initrd.img, System.map, kernel.cmdline, kernel-version
#
# Debian bookworm's own kernel (apt-get download + dpkg -x, never installed),
# busybox-static, a tiny /init (see init.sh).  System.map is taken from the
# guest itself: it is booted once with "nokaslr dumpsyms" and its init copies
# /proc/kallsyms to a raw virtio disk.
#
# Usage: tests/linux/build.sh [--force]
# Idempotent: when everything is built by this same script it only prints
# where things are.  Env: LINUX_IMAGE_PKG=linux-image-...  pins the package.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
B=$HERE/build
DL=$B/dl
QEMU=${QEMU:-qemu-system-x86_64}
OUTPUTS="vmlinuz vmlinux initrd.img System.map kernel.cmdline kernel-version marker"

# Command line the harness must use.  nokaslr: System.map addresses are real.
CMDLINE="console=ttyS0 nokaslr quiet loglevel=1 panic=-1 mitigations=off no_timer_check tsc=unstable i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd cryptomgr.notests random.trust_cpu=on audit=0 apparmor=0 nowatchdog noresume"

# Modules loaded at boot, in this order (the iface names follow it: e1000
# gets eth0, rtl8139 eth1, virtio-net eth2 when each is present once).
# qemu_fw_cfg writes the kernel's VMCOREINFO address to QEMU's vmcoreinfo
# device, where a VM has one.
NIC_MODULES="e1000 e1000e 8139cp 8139too virtio_pci virtio_net qemu_fw_cfg virtio_blk ahci ata_piix sd_mod"
DUMP_MODULES="virtio_pci virtio_blk"

log() { echo "build.sh: $*" >&2; }

stamp() {
    cat "$HERE/build.sh" "$HERE/init.sh" "$HERE/marker.c" | sha256sum | cut -d' ' -f1
}

report() {
    echo "Linux test guest ($(cat "$B/kernel-version")):"
    for f in $OUTPUTS; do echo "  $B/$f"; done
    echo "  cmdline: $(cat "$B/kernel.cmdline")"
}

FORCE=0
[ "${1:-}" = "--force" ] && FORCE=1

mkdir -p "$B"
exec 9>"$B/.lock"
flock 9   # concurrent test runs wait for one build

complete=1
for f in $OUTPUTS .stamp; do [ -s "$B/$f" ] || complete=0; done
if [ $complete = 1 ] && [ $FORCE = 0 ] && [ "$(cat "$B/.stamp")" = "$(stamp)" ]; then
    report
    exit 0
fi

mkdir -p "$DL"
rm -f "$B/.stamp"

APT_UPDATED=0
apt_update() { [ $APT_UPDATED = 1 ] || { log "apt-get update"; apt-get update -qq; APT_UPDATED=1; }; }
need() {  # command debian-package
    command -v "$1" >/dev/null && return 0
    log "installing $2 (for $1)"
    apt_update
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}
need xz xz-utils
need gzip gzip
need "$QEMU" qemu-system-x86

# ---------------------------------------------------------------- packages
resolve_pkg() {
    apt-cache depends linux-image-amd64 2>/dev/null |
        awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }'
}
PKG=${LINUX_IMAGE_PKG:-$(resolve_pkg || true)}
if [ -z "$PKG" ] || [ -z "$(apt-cache policy busybox-static 2>/dev/null | awk '/Candidate:/ && $2 != "(none)"')" ]; then
    apt_update
    PKG=${LINUX_IMAGE_PKG:-$(resolve_pkg)}
fi
[ -n "$PKG" ] || { log "cannot resolve the linux-image package"; exit 1; }
PKGVER=$(apt-cache policy "$PKG" | awk '/Candidate:/ { print $2 }')
log "kernel package $PKG $PKGVER"

fetch_pkg() {  # name dir
    local name=$1 dir=$2 deb
    deb=$(ls "$DL"/"${name}"_*.deb 2>/dev/null | head -1 || true)
    if [ -z "$deb" ]; then
        (cd "$DL" && apt-get download -q "$name" 2>&1 | grep -v 'unsandboxed' >&2 || true)
        deb=$(ls "$DL"/"${name}"_*.deb 2>/dev/null | head -1 || true)
        [ -n "$deb" ] || { log "apt-get download $name failed"; exit 1; }
    fi
    if [ ! -e "$dir/.extracted" ] || [ "$(cat "$dir/.extracted")" != "$(basename "$deb")" ]; then
        rm -rf "$dir"; mkdir -p "$dir"
        dpkg -x "$deb" "$dir"
        basename "$deb" > "$dir/.extracted"
    fi
}
fetch_pkg "$PKG" "$DL/kernel"
fetch_pkg busybox-static "$DL/busybox"

KVER=$(ls "$DL/kernel/lib/modules" | head -1)
MODDIR=$DL/kernel/lib/modules/$KVER
cp "$DL/kernel/boot/vmlinuz-$KVER" "$B/vmlinuz"

# vmlinux: the same kernel uncompressed (ELF with a PVH entry note), which
# QEMU's -kernel boots directly; it saves the decompression (~7 s of xz
# under TCG).  Payload location from the bzImage header (boot protocol 2.08+).
le32() { od -An -t u4 -j "$2" -N 4 "$1" | tr -d ' '; }
setup_sects=$(od -An -t u1 -j $((0x1f1)) -N 1 "$B/vmlinuz" | tr -d ' ')
payload_off=$(( (setup_sects + 1) * 512 + $(le32 "$B/vmlinuz" $((0x248))) ))
payload_len=$(le32 "$B/vmlinuz" $((0x24c)))
magic=$(od -An -t x1 -j "$payload_off" -N 4 "$B/vmlinuz" | tr -d ' ')
case $magic in
    fd377a58) unpack="xz -dc --single-stream" ;;
    1f8b*) unpack="gzip -dc" ;;
    28b52ffd) unpack="zstd -dc" ;;
    *) log "unknown bzImage payload magic $magic"; exit 1 ;;
esac
tail -c +$((payload_off + 1)) "$B/vmlinuz" | head -c "$payload_len" | $unpack > "$B/vmlinux.tmp" 2>/dev/null || true
[ "$(od -An -t x1 -N 4 "$B/vmlinux.tmp" | tr -d ' ')" = 7f454c46 ] || { log "vmlinux extraction failed"; exit 1; }
mv "$B/vmlinux.tmp" "$B/vmlinux"
BUSYBOX=$DL/busybox/bin/busybox
[ -x "$BUSYBOX" ] || { log "no bin/busybox in busybox-static"; exit 1; }

# ---------------------------------------------------------------- initramfs
STAGE=$B/initrd.d
rm -rf "$STAGE"
mkdir -p "$STAGE"/{bin,dev,proc,sys,tmp,etc,lib/modules}
cp "$BUSYBOX" "$STAGE/bin/busybox"
ln -s busybox "$STAGE/bin/sh"
cp "$HERE/init.sh" "$STAGE/init"
chmod 755 "$STAGE/init" "$STAGE/bin/busybox"
# marker: the test process with known state (marker.c); static, non-PIE, with debug info, so
# `gdb build/marker app.core` needs nothing else.
need gcc gcc
gcc -static -no-pie -g -O1 -fno-omit-frame-pointer -pthread -o "$B/marker" "$HERE/marker.c"
cp "$B/marker" "$STAGE/bin/marker"
if [ "$(id -u)" = 0 ]; then
    mknod -m 600 "$STAGE/dev/console" c 5 1
    mknod -m 666 "$STAGE/dev/null" c 1 3
fi

modfile() {  # module name -> path of its .ko[.xz|.zst|.gz] (empty if none)
    local n=$1 alt
    alt=$(echo "$n" | tr _ -)
    find "$MODDIR/kernel" \( -name "$n.ko*" -o -name "$alt.ko*" \) | head -1
}
modcat() {  # decompress a module file to stdout
    case $1 in
        *.ko.xz) xz -dc "$1" ;;
        *.ko.zst) zstd -dc "$1" ;;
        *.ko.gz) gzip -dc "$1" ;;
        *) cat "$1" ;;
    esac
}
declare -A SEEN=()
ORDER=()
add_module() {  # depth-first: dependencies first
    local n=$1 f deps d
    n=${n//-/_}
    [ -n "${SEEN[$n]:-}" ] && return 0
    SEEN[$n]=1
    f=$(modfile "$n")
    if [ -z "$f" ]; then
        if grep -Eq "/${n}\.ko$|/$(echo "$n" | tr _ -)\.ko$" "$MODDIR/modules.builtin"; then
            log "module $n is built in"; return 0
        fi
        log "module $n not found in $PKG"; exit 1
    fi
    modcat "$f" > "$STAGE/lib/modules/$n.ko"
    deps=$(tr '\0' '\n' < "$STAGE/lib/modules/$n.ko" | sed -n 's/^depends=//p' | head -1)
    for d in ${deps//,/ }; do add_module "$d"; done
    ORDER+=("$n")
}
modlist() {  # list of top modules -> ordered load list (with deps)
    ORDER=(); SEEN=()
    local m
    for m in "$@"; do add_module "$m"; done
    printf '%s\n' "${ORDER[@]}"
}
modlist $NIC_MODULES > "$STAGE/etc/modules"
modlist $DUMP_MODULES > "$STAGE/etc/modules.dumpsyms"
log "boot modules: $(tr '\n' ' ' < "$STAGE/etc/modules")"

(cd "$STAGE" && find . | LC_ALL=C sort | "$BUSYBOX" cpio -o -H newc -R 0:0 2>/dev/null) |
    gzip -9 -n > "$B/initrd.img.tmp"
mv "$B/initrd.img.tmp" "$B/initrd.img"
echo "$CMDLINE" > "$B/kernel.cmdline"

# ---------------------------------------------------------------- System.map
# Boot once with dumpsyms; init writes /proc/kallsyms between marker lines to
# the raw virtio disk and powers off.
DISK=$B/kallsyms.raw
rm -f "$DISK"
truncate -s 64M "$DISK"
log "booting the guest once (TCG) to dump /proc/kallsyms"
set +e
timeout -k 5 300 "$QEMU" -accel tcg -M pc -m 256 -smp 1 -nographic -no-reboot \
    -kernel "$B/vmlinuz" -initrd "$B/initrd.img" -append "$CMDLINE dumpsyms" \
    -serial "file:$B/dumpsyms.log" -monitor none -display none -nodefaults \
    -drive "file=$DISK,format=raw,if=virtio" </dev/null
rc=$?
set -e
tr -d '\0' < "$DISK" | tr -d '\r' |
    awk '/^KALLSYMS-END$/ { end = 1; exit } on { print } /^KALLSYMS-BEGIN$/ { on = 1 } END { exit !end }' \
    > "$B/kallsyms.txt" || { log "no kallsyms dump (qemu rc=$rc), see $B/dumpsyms.log"; exit 1; }
# Core-kernel symbols only (module symbols carry a [module] column).
awk 'NF == 3' "$B/kallsyms.txt" | LC_ALL=C sort -s -k1,1 > "$B/System.map.tmp"
banner=$(awk '$3 == "linux_banner" { print $1 }' "$B/System.map.tmp")
case $banner in
    ffffffff8*) ;;
    *) log "linux_banner address '$banner' is not a nokaslr kernel address"; exit 1 ;;
esac
mv "$B/System.map.tmp" "$B/System.map"
rm -f "$DISK" "$B/kallsyms.txt"

rm -rf "$DL/kernel"   # 400 MB of modules; the .deb stays in build/dl
echo "$PKG $PKGVER $KVER" > "$B/kernel-version"
stamp > "$B/.stamp"
log "linux_banner at 0x$banner, $(wc -l < "$B/System.map") symbols"
report
