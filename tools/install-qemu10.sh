#!/bin/bash
# install-qemu10.sh [PREFIX]
#
# Installs QEMU 10.x (Debian bookworm-backports build) BESIDE the system QEMU
# (Debian 12's 7.2 in /usr/bin), without replacing it: the .deb packages are
# fetched with `apt-get download` and unpacked with `dpkg -x` into PREFIX
# (default /opt/vmstate-qemu10).  Wrapper scripts in PREFIX/bin run the
# unpacked binaries with QEMU 10's own firmware, keymaps and modules.
#
#   PREFIX/bin/qemu-system-x86_64   (also qemu-system-i386)
#   PREFIX/bin/qemu-system-aarch64  (from qemu-system-arm; `virt` guests boot with -kernel, no firmware)
#   PREFIX/bin/qemu-img             (also qemu-io, qemu-nbd, qemu-storage-daemon)
#
# Idempotent: a stamp file PREFIX/.vmstate-qemu10.stamp records the installed
# package versions; when it is present and the wrappers work, the script exits
# at once without touching apt.  VMSTATE_QEMU10_FORCE=1 reinstalls.
#
# Needs root only when it has to install (apt source, apt-get update, missing
# shared libraries).  Exits non-zero with a message on any failure.
set -euo pipefail

PREFIX="${1:-/opt/vmstate-qemu10}"
case "$PREFIX" in
    /*) ;;
    *) PREFIX="$(pwd)/$PREFIX" ;;
esac
PREFIX="${PREFIX%/}"
STAMP="$PREFIX/.vmstate-qemu10.stamp"
BPO_LIST=/etc/apt/sources.list.d/vmstate-bookworm-backports.list
MIRROR="http://deb.debian.org/debian"
ARCH_TRIPLET=x86_64-linux-gnu
# Bump when the package set / wrapper layout changes: older installs are redone. (The aarch64
# wrapper did not bump it: wrappers_ok asks for it, so an install without it is redone, while
# older checkouts sharing the prefix keep accepting the fuller install instead of redoing it.)
LAYOUT=1

log() { printf 'install-qemu10: %s\n' "$*"; }
die() { printf 'install-qemu10: ERROR: %s\n' "$*" >&2; exit 1; }
trap 'rc=$?; [ $rc -eq 0 ] || printf "install-qemu10: FAILED (exit %s) at line %s: %s\n" "$rc" "$LINENO" "$BASH_COMMAND" >&2' ERR

# ---------------------------------------------------------------------------
# Fast path: already installed?
# ---------------------------------------------------------------------------
stamp_ok() { [ -f "$STAMP" ] && grep -qx "layout=$LAYOUT" "$STAMP"; }
wrappers_ok() {
    [ -x "$PREFIX/bin/qemu-system-x86_64" ] && [ -x "$PREFIX/bin/qemu-img" ] || return 1
    [ -x "$PREFIX/bin/qemu-system-aarch64" ] || return 1
    "$PREFIX/bin/qemu-system-x86_64" --version 2>/dev/null | grep -q '^QEMU emulator version 10\.' || return 1
    "$PREFIX/bin/qemu-system-aarch64" --version 2>/dev/null | grep -q '^QEMU emulator version 10\.' || return 1
    "$PREFIX/bin/qemu-img" --version 2>/dev/null | grep -q '^qemu-img version 10\.' || return 1
}

if stamp_ok && [ "${VMSTATE_QEMU10_FORCE:-0}" != 1 ] && wrappers_ok; then
    log "already installed in $PREFIX ($(sed -n 's/^qemu-system-x86=//p' "$STAMP")); nothing to do"
    log "set VMSTATE_QEMU10_FORCE=1 to reinstall"
    exit 0
fi

START=$(date +%s)
[ "$(uname -m)" = x86_64 ] || die "only x86_64 (amd64) hosts are supported, not $(uname -m)"
[ -r /etc/os-release ] || die "/etc/os-release missing: not a Debian system?"
. /etc/os-release
CODENAME="${VERSION_CODENAME:-}"
case "$CODENAME" in
    bookworm) SUITE=bookworm-backports ;;    # QEMU 10 comes from backports
    trixie|forky|sid) SUITE="" ;;            # QEMU 10 is the default candidate there
    *) die "unsupported distribution '${ID:-?} ${CODENAME:-?}': needs Debian 12 (bookworm) or newer" ;;
esac
for tool in apt-get apt-cache dpkg dpkg-deb dpkg-query ldd flock; do
    command -v "$tool" >/dev/null || die "required tool '$tool' not found"
done
if [ "$(id -u)" != 0 ]; then
    die "not installed in $PREFIX yet (or stamp/wrappers broken) and installing needs root (apt); run as root"
fi

# One installer at a time per prefix.
mkdir -p "$(dirname "$PREFIX")"
exec 9>"$PREFIX.lock"
flock -w 600 9 || die "another install into $PREFIX is running (lock $PREFIX.lock)"
# Another run may have finished while we waited for the lock.
if stamp_ok && [ "${VMSTATE_QEMU10_FORCE:-0}" != 1 ] && wrappers_ok; then
    log "already installed in $PREFIX by a concurrent run; nothing to do"
    exit 0
fi

# ---------------------------------------------------------------------------
# apt source for bookworm-backports (idempotent); apt-get update only when the
# backports index is missing.
# ---------------------------------------------------------------------------
apt_updated=0
apt_update() {
    log "running apt-get update"
    apt-get update -qq -o DPkg::Lock::Timeout=300 || die "apt-get update failed"
    apt_updated=1
}
if [ -n "$SUITE" ]; then
    if ! grep -qsE '^[^#]*\b'"$SUITE"'\b' /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; then
        log "adding apt source $BPO_LIST ($SUITE main)"
        echo "deb $MIRROR $SUITE main" > "$BPO_LIST"
        apt_update
    elif ! ls /var/lib/apt/lists/*_dists_"${SUITE}"_main_binary-amd64_Packages* >/dev/null 2>&1; then
        log "apt source for $SUITE present but its package index is missing"
        apt_update
    else
        log "apt source and index for $SUITE already present"
    fi
elif ! ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1; then
    apt_update
fi

# Version of PKG to use: the $SUITE one if there is one, else apt's candidate.
pick_version() {
    local pkg=$1 v=""
    if [ -n "$SUITE" ]; then
        v=$(apt-cache madison "$pkg" 2>/dev/null | awk -F'|' -v s=" $SUITE/" 'index($3, s) {gsub(/ /, "", $2); print $2; exit}')
    fi
    if [ -z "$v" ]; then
        v=$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ {print $2; exit}')
        [ "$v" = "(none)" ] && v=""
    fi
    printf '%s' "$v"
}

# The module packages (gui, modules-spice, modules-opengl, block-extra) are
# unpacked too, although their libraries are not installed: QEMU always also
# searches the compiled-in module dir /usr/lib/x86_64-linux-gnu/qemu, where the
# system 7.2 keeps ITS modules; any module name QEMU 10 probes (audio-pa,
# ui-opengl, ... even for -display none) that is missing from PREFIX would be
# found there, be rejected ("Only modules from the same build can be loaded")
# and then abort QEMU 10 on an assertion.  With all of QEMU 10's modules in
# PREFIX, the search stops there.
QEMU_PKGS=(qemu-system-x86 qemu-system-arm qemu-system-common qemu-system-data qemu-utils qemu-block-extra
           qemu-system-gui qemu-system-modules-opengl qemu-system-modules-spice)
FW_PKGS=(seabios ipxe-qemu)
declare -A VER
for p in "${QEMU_PKGS[@]}" "${FW_PKGS[@]}"; do
    VER[$p]=$(pick_version "$p")
    [ -n "${VER[$p]}" ] || die "no installable version of $p found in apt (suite ${SUITE:-default})"
done
case "${VER[qemu-system-x86]}" in
    1:10.*) ;;
    *) die "qemu-system-x86 version from ${SUITE:-apt} is ${VER[qemu-system-x86]}, not 10.x" ;;
esac
for p in "${QEMU_PKGS[@]}"; do
    [ "${VER[$p]}" = "${VER[qemu-system-x86]}" ] || die "version skew: $p ${VER[$p]} vs qemu-system-x86 ${VER[qemu-system-x86]}"
done
log "QEMU packages: ${VER[qemu-system-x86]}; seabios ${VER[seabios]}; ipxe-qemu ${VER[ipxe-qemu]}"

# ---------------------------------------------------------------------------
# Download.
# ---------------------------------------------------------------------------
WORK=$(mktemp -d /tmp/install-qemu10.XXXXXX)
cleanup() { rm -rf "$WORK" "$PREFIX.new" "$PREFIX.old"; }
trap cleanup EXIT
chmod 755 "$WORK"
mkdir "$WORK/debs"
chown _apt "$WORK/debs" 2>/dev/null || chmod 777 "$WORK/debs"

download() {    # download pkg=version ...
    (cd "$WORK/debs" && apt-get download -q "$@" 2>&1 | { grep -v '^W: Download is performed unsandboxed' || true; })
}
SPECS=()
for p in "${QEMU_PKGS[@]}" "${FW_PKGS[@]}"; do SPECS+=("$p=${VER[$p]}"); done
log "downloading ${#SPECS[@]} packages"
if ! download "${SPECS[@]}"; then
    # A stale index (package superseded on the mirror) gives 404: refresh once.
    [ "$apt_updated" = 1 ] && die "apt-get download failed"
    log "download failed; refreshing the index once and retrying"
    apt_update
    for p in "${QEMU_PKGS[@]}" "${FW_PKGS[@]}"; do VER[$p]=$(pick_version "$p"); done
    SPECS=(); for p in "${QEMU_PKGS[@]}" "${FW_PKGS[@]}"; do SPECS+=("$p=${VER[$p]}"); done
    download "${SPECS[@]}" || die "apt-get download failed for: ${SPECS[*]}"
fi
deb_of() { ls "$WORK"/debs/"$1"_*.deb 2>/dev/null | head -n1; }
for p in "${QEMU_PKGS[@]}" "${FW_PKGS[@]}"; do
    [ -n "$(deb_of "$p")" ] || die "downloaded .deb for $p not found"
done

# ---------------------------------------------------------------------------
# Shared libraries: every lib Depends of the QEMU packages must be satisfied.
# Missing ones whose bookworm version is new enough are apt-get installed
# (plain libraries, no QEMU); ones that need a newer version than the system
# offers are taken from $SUITE and unpacked into PREFIX (LD_LIBRARY_PATH).
# The module packages' deps (ceph, gluster, iscsi, nfs, curl, ssh, gtk, sdl,
# pulse, spice, virgl, ...) are for optional modules and are not installed.
# ---------------------------------------------------------------------------
satisfied_by_installed() {   # name op ver
    local st
    st=$(dpkg-query -W -f='${db:Status-Abbrev}|${Version}' "$1" 2>/dev/null) || return 1
    case "$st" in ii*) ;; *) return 1 ;; esac
    [ -z "$2" ] && return 0
    dpkg --compare-versions "${st#*|}" "$2" "$3"
}
version_ok() {  # have op want
    [ -n "$1" ] || return 1
    [ -z "$2" ] && return 0
    dpkg --compare-versions "$1" "$2" "$3"
}
APT_INSTALL=()
UNPACK_LIBS=()
for p in qemu-system-x86 qemu-system-arm qemu-system-common qemu-utils; do
    deps=$(dpkg-deb -f "$(deb_of "$p")" Depends)
    IFS=',' read -ra items <<< "$deps"
    for item in "${items[@]}"; do
        ok=0; first=""
        IFS='|' read -ra alts <<< "$item"
        for alt in "${alts[@]}"; do
            alt=$(echo "$alt" | xargs)
            name=${alt%% *}; name=${name%%:*}
            op=""; want=""
            if [[ "$alt" =~ \(([<>=]+)\ *([^\)]+)\) ]]; then op=${BASH_REMATCH[1]}; want=${BASH_REMATCH[2]}; fi
            [ -z "$first" ] && first="$name|$op|$want"
            case "$name" in qemu-*|seabios|ipxe-qemu) ok=1; break ;; esac   # provided by us
            if satisfied_by_installed "$name" "$op" "$want"; then ok=1; break; fi
        done
        [ "$ok" = 1 ] && continue
        IFS='|' read -r name op want <<< "$first"
        cand=$(apt-cache policy "$name" 2>/dev/null | awk '/Candidate:/ {print $2; exit}')
        bpo=$(pick_version "$name")
        if [ "$cand" != "(none)" ] && version_ok "$cand" "$op" "$want"; then
            APT_INSTALL+=("$name")
        elif version_ok "$bpo" "$op" "$want"; then
            UNPACK_LIBS+=("$name=$bpo")
        else
            die "dependency '$item' of $p cannot be satisfied (system candidate '${cand}', ${SUITE:-apt} '${bpo}')"
        fi
    done
done
if [ ${#APT_INSTALL[@]} -gt 0 ]; then
    # shellcheck disable=SC2207
    APT_INSTALL=($(printf '%s\n' "${APT_INSTALL[@]}" | sort -u))
    log "installing missing shared libraries from the system suite: ${APT_INSTALL[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=300 --no-install-recommends "${APT_INSTALL[@]}" >"$WORK/apt-install.log" 2>&1 \
        || { tail -n 20 "$WORK/apt-install.log" >&2; die "apt-get install of libraries failed"; }
else
    log "all shared-library dependencies are already installed"
fi
if [ ${#UNPACK_LIBS[@]} -gt 0 ]; then
    # shellcheck disable=SC2207
    UNPACK_LIBS=($(printf '%s\n' "${UNPACK_LIBS[@]}" | sort -u))
    log "system libraries too old, unpacking from ${SUITE}: ${UNPACK_LIBS[*]}"
    download "${UNPACK_LIBS[@]}" || die "apt-get download failed for: ${UNPACK_LIBS[*]}"
fi

# ---------------------------------------------------------------------------
# Unpack into a staging dir, write wrappers, check, then swap into place.
# ---------------------------------------------------------------------------
STAGE="$PREFIX.new"
rm -rf "$STAGE"
mkdir -p "$STAGE/bin"
for deb in "$WORK"/debs/*.deb; do
    log "unpacking $(basename "$deb")"
    dpkg -x "$deb" "$STAGE" || die "dpkg -x $deb failed"
done
rm -rf "$STAGE/usr/share/doc" "$STAGE/usr/share/man" "$STAGE/usr/share/lintian"

LIBDIR_EXTRA=""
[ ${#UNPACK_LIBS[@]} -gt 0 ] && LIBDIR_EXTRA="$PREFIX/usr/lib/$ARCH_TRIPLET:$PREFIX/lib/$ARCH_TRIPLET"

write_wrapper() {   # name binary with_L
    local name=$1 bin=$2 with_l=$3 f="$STAGE/bin/$1"
    {
        echo '#!/bin/sh'
        echo "# Generated by tools/install-qemu10.sh: runs QEMU ${VER[qemu-system-x86]} unpacked in $PREFIX"
        echo "P='$PREFIX'"
        if [ -n "$LIBDIR_EXTRA" ]; then
            echo "LD_LIBRARY_PATH=\"$LIBDIR_EXTRA\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}\""
            echo 'export LD_LIBRARY_PATH'
        fi
        echo "# QEMU 10's own loadable modules, not 7.2's in /usr/lib/$ARCH_TRIPLET/qemu"
        echo "QEMU_MODULE_DIR=\"\$P/usr/lib/$ARCH_TRIPLET/qemu\""
        echo 'export QEMU_MODULE_DIR'
        if [ "$with_l" = 1 ]; then
            echo '# -L dirs are searched before the compiled-in /usr/share/qemu, /usr/share/seabios,'
            echo "# /usr/lib/ipxe/qemu (7.2's): firmware, option ROMs and keymaps come from \$P."
            echo "exec \"\$P/usr/bin/$bin\" -L \"\$P/usr/share/qemu\" -L \"\$P/usr/share/seabios\" -L \"\$P/usr/lib/ipxe/qemu\" \"\$@\""
        else
            echo "exec \"\$P/usr/bin/$bin\" \"\$@\""
        fi
    } > "$f"
    chmod 755 "$f"
}
write_wrapper qemu-system-x86_64 qemu-system-x86_64 1
write_wrapper qemu-system-i386 qemu-system-i386 1
write_wrapper qemu-system-aarch64 qemu-system-aarch64 1
for t in qemu-img qemu-io qemu-nbd qemu-storage-daemon; do
    [ -x "$STAGE/usr/bin/$t" ] && write_wrapper "$t" "$t" 0
done

# Libraries resolve?  (run against the staged tree)
export LD_LIBRARY_PATH_CHECK="$STAGE/usr/lib/$ARCH_TRIPLET:$STAGE/lib/$ARCH_TRIPLET"
for b in qemu-system-x86_64 qemu-system-aarch64 qemu-img; do
    missing=$( ( [ -n "$LIBDIR_EXTRA" ] && export LD_LIBRARY_PATH="$LD_LIBRARY_PATH_CHECK"; ldd "$STAGE/usr/bin/$b" ) | grep 'not found' || true)
    [ -z "$missing" ] || die "$b: unresolved shared libraries:
$missing"
done
# A module whose libraries are missing would print "failed to open module"
# whenever QEMU probes it (e.g. audio-pipewire at every start).  If the system
# QEMU has no module of that name, drop ours: QEMU then treats the driver as
# not installed, silently.  If the system has one, keep ours, so that 7.2's is
# never picked up (that one would abort QEMU 10).
SYS_MODDIR="/usr/lib/$ARCH_TRIPLET/qemu"
DROPPED_MODULES=()
for m in "$STAGE/usr/lib/$ARCH_TRIPLET/qemu/"*.so; do
    missing=$( ( [ -n "$LIBDIR_EXTRA" ] && export LD_LIBRARY_PATH="$LD_LIBRARY_PATH_CHECK"; ldd "$m" ) | awk '/not found/ {print $1}' | xargs || true)
    [ -n "$missing" ] || continue
    if [ -e "$SYS_MODDIR/$(basename "$m")" ]; then
        log "note: optional module $(basename "$m") cannot load (missing: $missing); kept to shadow the system's"
    else
        log "note: optional module $(basename "$m") dropped (missing: $missing)"
        DROPPED_MODULES+=("$(basename "$m" .so)")
        rm -f "$m"
    fi
done

# Swap into place.
if [ -e "$PREFIX" ]; then
    rm -rf "$PREFIX.old"
    mv "$PREFIX" "$PREFIX.old"
fi
mv "$STAGE" "$PREFIX"
rm -rf "$PREFIX.old"

wrappers_ok || die "installed, but the wrappers in $PREFIX/bin do not report QEMU 10.x"
{
    echo "# written by tools/install-qemu10.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "layout=$LAYOUT"
    for p in "${QEMU_PKGS[@]}" "${FW_PKGS[@]}"; do echo "$p=${VER[$p]}"; done
    for l in ${UNPACK_LIBS[@]+"${UNPACK_LIBS[@]}"}; do echo "unpacked-lib:$l"; done
    for l in ${APT_INSTALL[@]+"${APT_INSTALL[@]}"}; do echo "apt-installed-lib:$l"; done
    for l in ${DROPPED_MODULES[@]+"${DROPPED_MODULES[@]}"}; do echo "dropped-module:$l"; done
} > "$STAMP"

log "installed QEMU ${VER[qemu-system-x86]} into $PREFIX in $(( $(date +%s) - START ))s"
log "  $("$PREFIX/bin/qemu-system-x86_64" --version | head -n1)"
log "  wrappers: $PREFIX/bin/qemu-system-x86_64, $PREFIX/bin/qemu-img"
if [ -x /usr/bin/qemu-system-x86_64 ]; then
    log "  system QEMU untouched: $(/usr/bin/qemu-system-x86_64 --version | head -n1)"
fi
