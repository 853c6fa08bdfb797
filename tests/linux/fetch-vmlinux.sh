#!/bin/bash
# The debug vmlinux (DWARF) of the Linux test guest's kernel, for the tests of `--vmlinux`:
# tests/linux/build/vmlinux.debug, taken out of Debian's linux-image-<abi>-amd64-dbg package
# (858 MB; only the one 630 MB file is unpacked, and the .deb is removed again).
# Idempotent: nothing to do when the file matches tests/linux/build/kernel-version.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
B=$HERE/build
OUT=$B/vmlinux.debug
[ -s "$B/kernel-version" ] || { echo "fetch-vmlinux.sh: build the guest first (tests/linux/build.sh)" >&2; exit 1; }
read -r PKG _VER KVER < "$B/kernel-version"
if [ -s "$OUT" ] && [ "$(cat "$OUT.for" 2>/dev/null)" = "$PKG" ]; then
    exit 0
fi
DL=$(mktemp -d "$B/dbg.XXXXXX")
trap 'rm -rf "$DL"' EXIT
echo "fetch-vmlinux.sh: apt-get download $PKG-dbg" >&2
(cd "$DL" && apt-get download -q "$PKG-dbg" 2>&1 | grep -v unsandboxed >&2 || true)
deb=$(ls "$DL"/*.deb 2>/dev/null | head -1 || true)
[ -n "$deb" ] || { echo "fetch-vmlinux.sh: apt-get download $PKG-dbg failed" >&2; exit 1; }
# boot/ comes first in the archive: --occurrence stops tar (and the decompression) once it is out
(cd "$DL" && { dpkg-deb --fsys-tarfile "$deb" 2>/dev/null || true; } |
    tar -x --occurrence=1 "./usr/lib/debug/boot/vmlinux-$KVER" 2>/dev/null || true)
[ -s "$DL/usr/lib/debug/boot/vmlinux-$KVER" ] || { echo "fetch-vmlinux.sh: no vmlinux-$KVER in $deb" >&2; exit 1; }
mv "$DL/usr/lib/debug/boot/vmlinux-$KVER" "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "$PKG" > "$OUT.for"
echo "fetch-vmlinux.sh: $OUT" >&2
