#!/bin/bash
# Build the aarch64 Linux test guest for vmstate_gdb into tests/linux-arm64/build/:
#   vmlinuz (gzip'ed arm64 Image, which QEMU's -kernel unpacks), vmlinux (when the package has
#   none: the Image itself is enough for symbols from System.map), initrd.img, System.map,
#   kernel.cmdline, kernel-version
#
# Debian bookworm's own arm64 cloud kernel and busybox-static:arm64 (apt-get download + dpkg -x,
# never installed; needs `dpkg --add-architecture arm64`, done here once) and a tiny /init
# (init.sh). The guest boots on QEMU's `virt` machine without firmware. The package's System.map
# is a stub, so, as for the x86 guest, System.map comes from the guest itself: booted once with
# "nokaslr dumpsyms", its init copies /proc/kallsyms to a raw virtio disk.
#
# Usage: tests/linux-arm64/build.sh [--force]    Idempotent.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
B=$HERE/build
DL=$B/dl
OUTPUTS="vmlinuz initrd.img System.map kernel.cmdline kernel-version"
QEMU=${QEMU:-qemu-system-aarch64}
CMDLINE="console=ttyAMA0 nokaslr quiet loglevel=1 panic=-1 mitigations=off audit=0 apparmor=0 nowatchdog noresume cryptomgr.notests"
NIC_MODULES="virtio_mmio virtio_net"
DUMP_MODULES="virtio_mmio virtio_blk"

log() { echo "build.sh: $*" >&2; }
stamp() { cat "$HERE/build.sh" "$HERE/init.sh" | sha256sum | cut -d' ' -f1; }
report() {
    echo "aarch64 Linux test guest ($(cat "$B/kernel-version")):"
    for f in $OUTPUTS; do echo "  $B/$f"; done
    echo "  cmdline: $(cat "$B/kernel.cmdline")"
}

FORCE=0
[ "${1:-}" = "--force" ] && FORCE=1
mkdir -p "$B"
exec 9>"$B/.lock"
flock 9
complete=1
for f in $OUTPUTS .stamp; do [ -s "$B/$f" ] || complete=0; done
if [ $complete = 1 ] && [ $FORCE = 0 ] && [ "$(cat "$B/.stamp")" = "$(stamp)" ]; then
    report
    exit 0
fi
mkdir -p "$DL"
rm -f "$B/.stamp"

APT="apt-get -o DPkg::Lock::Timeout=600"
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    log "dpkg --add-architecture arm64"
    dpkg --add-architecture arm64
    $APT update -qq
fi
resolve_pkg() {
    apt-cache depends linux-image-cloud-arm64:arm64 2>/dev/null |
        awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { sub(/:arm64$/, "", $2); print $2; exit }'
}
PKG=${LINUX_IMAGE_PKG:-$(resolve_pkg || true)}
if [ -z "$PKG" ]; then
    $APT update -qq
    PKG=$(resolve_pkg)
fi
[ -n "$PKG" ] || { log "cannot resolve linux-image-cloud-arm64's kernel package"; exit 1; }
PKGVER=$(apt-cache policy "$PKG:arm64" | awk '/Candidate:/ { print $2 }')
log "kernel package $PKG:arm64 $PKGVER"

fetch_pkg() {  # name dir
    local name=$1 dir=$2 deb
    deb=$(ls "$DL"/"${name}"_*_arm64.deb 2>/dev/null | head -1 || true)
    if [ -z "$deb" ]; then
        (cd "$DL" && apt-get download -q "$name:arm64" 2>&1 | grep -v 'unsandboxed' >&2 || true)
        deb=$(ls "$DL"/"${name}"_*_arm64.deb 2>/dev/null | head -1 || true)
        [ -n "$deb" ] || { log "apt-get download $name:arm64 failed"; exit 1; }
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
BUSYBOX=$DL/busybox/bin/busybox
[ -f "$BUSYBOX" ] || { log "no bin/busybox in busybox-static:arm64"; exit 1; }

STAGE=$B/initrd.d
rm -rf "$STAGE"
mkdir -p "$STAGE"/{bin,dev,proc,sys,tmp,etc,lib/modules}
cp "$BUSYBOX" "$STAGE/bin/busybox"
ln -s busybox "$STAGE/bin/sh"
cp "$HERE/init.sh" "$STAGE/init"
chmod 755 "$STAGE/init" "$STAGE/bin/busybox"
if [ "$(id -u)" = 0 ]; then
    mknod -m 600 "$STAGE/dev/console" c 5 1
    mknod -m 666 "$STAGE/dev/null" c 1 3
fi

modfile() {
    local n=$1
    find "$MODDIR/kernel" \( -name "$n.ko*" -o -name "$(echo "$n" | tr _ -).ko*" \) | head -1
}
modcat() {
    case $1 in
        *.ko.xz) xz -dc "$1" ;;
        *.ko.zst) zstd -dc "$1" ;;
        *.ko.gz) gzip -dc "$1" ;;
        *) cat "$1" ;;
    esac
}
declare -A SEEN=()
ORDER=()
add_module() {  # dependencies first
    local n=${1//-/_} f deps d
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
modlist() {
    ORDER=(); SEEN=()
    local m
    for m in "$@"; do add_module "$m"; done
    printf '%s\n' ${ORDER[@]+"${ORDER[@]}"}
}
modlist $NIC_MODULES > "$STAGE/etc/modules"
modlist $DUMP_MODULES > "$STAGE/etc/modules.dumpsyms"
log "boot modules: $(tr '\n' ' ' < "$STAGE/etc/modules")"

# busybox for x86 packs the archive: the arm64 binary cannot run here
(cd "$STAGE" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | gzip -9 -n > "$B/initrd.img.tmp"
mv "$B/initrd.img.tmp" "$B/initrd.img"
echo "$CMDLINE" > "$B/kernel.cmdline"
DISK=$B/kallsyms.raw
rm -f "$DISK"
truncate -s 64M "$DISK"
log "booting the guest once (TCG) to dump /proc/kallsyms"
set +e
timeout -k 5 300 "$QEMU" -accel tcg -M virt -cpu cortex-a57 -m 256 -smp 1 -nographic -no-reboot \
    -kernel "$B/vmlinuz" -initrd "$B/initrd.img" -append "$CMDLINE dumpsyms" \
    -serial "file:$B/dumpsyms.log" -monitor none -display none -nodefaults \
    -drive "file=$DISK,format=raw,if=none,id=d0" -device virtio-blk-device,drive=d0 </dev/null
rc=$?
set -e
tr -d '\0' < "$DISK" | tr -d '\r' |
    awk '/^KALLSYMS-END$/ { end = 1; exit } on { print } /^KALLSYMS-BEGIN$/ { on = 1 } END { exit !end }' \
    > "$B/kallsyms.txt" || { log "no kallsyms dump (qemu rc=$rc), see $B/dumpsyms.log"; exit 1; }
awk 'NF == 3' "$B/kallsyms.txt" > "$B/System.map.tmp"
# The cloud kernel has no CONFIG_KALLSYMS_ALL, so data symbols such as linux_banner are not in
# kallsyms. The Image is the kernel from _text on, byte for byte, and nokaslr loads it at _text:
# linux_banner is _text plus the offset of its text ("Linux version <release> ") in the Image.
# _text itself is not in kallsyms either; the Image header's second word is `b primary_entry`
# (Documentation/arm64/booting.rst), and primary_entry is: _text = primary_entry - 4 - 4 * imm26.
if ! awk '$3 == "linux_banner"' "$B/System.map.tmp" | grep -q .; then
    entry=$(awk '$3 == "primary_entry" { print $1; exit }' "$B/System.map.tmp")
    word=$(od -An -t u4 -j 4 -N 4 "$B/vmlinuz" | tr -d ' ')
    [ $((word >> 26)) = 5 ] && [ -n "$entry" ] || { log "Image header: no 'b primary_entry' ($word)"; exit 1; }
    imm=$((word & 0x3ffffff)); [ $imm -ge $((1 << 25)) ] && imm=$((imm - (1 << 26)))
    text=$(printf '%x' $((0x$entry - 4 - 4 * imm)))
    off=$(grep -obaF "Linux version $KVER " "$B/vmlinuz" | head -1 | cut -d: -f1)
    [ -n "$text" ] && [ -n "$off" ] || { log "cannot locate linux_banner (_text '$text', offset '$off')"; exit 1; }
    printf '%016x D linux_banner\n' $((0x$text + off)) >> "$B/System.map.tmp"
fi
LC_ALL=C sort -s -k1,1 -o "$B/System.map.tmp" "$B/System.map.tmp"
banner=$(awk '$3 == "linux_banner" { print $1 }' "$B/System.map.tmp")
case $banner in
    ffff8000*) ;;
    *) log "linux_banner address '$banner' is not a nokaslr arm64 kernel address"; exit 1 ;;
esac
mv "$B/System.map.tmp" "$B/System.map"
rm -f "$DISK" "$B/kallsyms.txt"
rm -rf "$DL/kernel"
echo "$PKG $PKGVER $KVER" > "$B/kernel-version"
stamp > "$B/.stamp"
log "linux_banner at 0x$banner"
report
