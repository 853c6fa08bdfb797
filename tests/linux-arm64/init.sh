#!/bin/busybox sh
# /init of the vmstate_gdb aarch64 Linux test guest: NIC modules, then a TICK line per NIC and
# second, in the format of the x86 Linux guest (tests/linux/init.sh).
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
load() {
    while read -r m; do
        [ -d "/sys/module/$m" ] || insmod "/lib/modules/$m.ko" 2>/dev/null || echo "init: insmod $m failed"
    done < "$1"
}
if grep -qw dumpsyms /proc/cmdline; then  # build.sh: /proc/kallsyms to the raw disk, power off
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
    echo "NIC $i $(cat "$d/address")"
done
echo "LINUX READY $(uname -r)"
n=0
while :; do
    n=$((n + 1))
    for d in /sys/class/net/*; do
        i=${d##*/}
        [ "$i" = lo ] && continue
        read -r mac < "$d/address"
        echo "TICK $n $i $mac"
    done
    sleep 1
done
