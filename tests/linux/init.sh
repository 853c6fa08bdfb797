#!/bin/busybox sh
# /init of the vmstate_gdb Linux test guest (see README.md).
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1

load() {  # list file
    while read -r m; do
        [ -d "/sys/module/$m" ] || insmod "/lib/modules/$m.ko" 2>/dev/null ||
            echo "init: insmod $m failed"
    done < "$1"
}

if grep -qw dumpsyms /proc/cmdline; then
    load /etc/modules.dumpsyms
    echo 0 > /proc/sys/kernel/kptr_restrict
    i=0
    while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do usleep 100000; i=$((i + 1)); done
    { echo KALLSYMS-BEGIN; cat /proc/kallsyms; echo KALLSYMS-END; } > /tmp/k
    dd if=/tmp/k of=/dev/vda bs=1M conv=fsync 2>/dev/null
    sync
    echo "KALLSYMS DUMPED $(wc -l < /tmp/k)"
    poweroff -f
fi

load /etc/modules
for d in /sys/class/net/*; do
    i=${d##*/}
    ip link set "$i" up
    [ "$i" = lo ] && continue
    # one frame out of every NIC (a gratuitous ARP): each transmit ring has moved by the stop,
    # whatever the kernel's own IPv6 timers have sent yet. Once the link is up: e1000e turns its
    # transmitter on only then (its watchdog, after autonegotiation)
    n=0
    while [ "$(cat "$d/carrier" 2>/dev/null)" != 1 ] && [ $n -lt 50 ]; do usleep 100000; n=$((n + 1)); done
    arping -q -U -c 1 -I "$i" 169.254.7.1 2>/dev/null
    drv=$(readlink "$d/device/driver")
    echo "NIC $i $(cat "$d/address") ${drv##*/}"
done

# The harness may name a sector of an IDE disk (fw_cfg opt/vmstate/ideread): one read of it (the
# kernel may read its page), so the drive's task file holds a known address at the stop (IDE test)
sector=/sys/firmware/qemu_fw_cfg/by_name/opt/vmstate/ideread/raw
if [ -r "$sector" ]; then
    n=0
    while [ ! -b /dev/sda ] && [ $n -lt 100 ]; do usleep 100000; n=$((n + 1)); done
    s=$(cat "$sector")
    dd if=/dev/sda of=/dev/null bs=512 skip="$s" count=1 iflag=direct 2>/dev/null && echo "IDEREAD $s"
fi

# The marker process (marker.c) and what the guest itself sees of it, for the tests of
# `vmstate linux`: every task's /proc stat line, the marker's maps and open files, the modules
# and the last kernel log line, between GUEST-REPORT-BEGIN and GUEST-REPORT-END.
report() {  # parent-pid child-pid
    echo "GUEST-REPORT-BEGIN"
    echo "@stat"
    for t in /proc/[0-9]*/task/[0-9]*; do cat "$t/stat" 2>/dev/null; done
    for p in "$@"; do
        echo "@maps $p"
        cat "/proc/$p/maps"
        echo "@fd $p"
        for f in /proc/$p/fd/*; do echo "${f##*/} $(readlink "$f")"; done
    done
    echo "@modules"
    cat /proc/modules
    echo "@rtc"  # the RTC as the kernel's rtc driver reads it from the chip
    cat /proc/driver/rtc 2>/dev/null
    echo "@tty"  # the console UART's line settings (x86: the 16550 at ttyS0)
    [ -c /dev/ttyS0 ] && stty -F /dev/ttyS0 2>/dev/null
    echo "@interrupts"
    cat /proc/interrupts
    echo "@ata"  # what the ahci driver found at probe (q35's AHCI controller)
    dmesg | grep -E ' (ahci [0-9a-f:.]+|ata[0-9]+): '
    echo "vmstate-marker: guest report" > /dev/kmsg
    echo "@dmesg"
    dmesg | tail -n 1
    echo "GUEST-REPORT-END"
}
if [ -x /bin/marker ]; then
    /bin/marker &
    i=0
    while [ ! -s /tmp/marker.pids ] && [ $i -lt 200 ]; do usleep 50000; i=$((i + 1)); done
    read -r mparent mchild < /tmp/marker.pids
    report "$mparent" "$mchild"
fi
echo "LINUX READY"

n=0
while :; do
    n=$((n + 1))
    for d in /sys/class/net/*; do
        i=${d##*/}
        [ "$i" = lo ] && continue
        read -r mac < "$d/address"
        echo "TICK $n $i $mac"
    done
    # a virtio disk (QEMU's null-co in the q35 scenario): one 4 KiB direct read a second, so its
    # queue holds real requests; the line says which sector it asked for
    if [ -b /dev/vda ]; then
        k=$((n % 1000))
        dd if=/dev/vda of=/dev/null bs=4096 count=1 skip=$k iflag=direct 2>/dev/null &&
            echo "BLKREAD $n sector $((k * 8))"
    fi
    # the guest's RTC, read from the chip each second: an edited RTC shows here after a resume
    [ -r /sys/class/rtc/rtc0/time ] &&
        echo "CLOCK $n $(cat /sys/class/rtc/rtc0/date) $(cat /sys/class/rtc/rtc0/time)"
    sleep 1
done
