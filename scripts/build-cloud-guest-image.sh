#!/usr/bin/env bash
# Builds a guest disk image of real Debian 12 the way a cloud image is: debootstrap (minbase)
# with Debian's cloud kernel, systemd, ifupdown + isc-dhcp-client, openssh-server and Debian's
# own cloud-init package, unmodified and with its default datasource list. The disk has an MBR
# partition table, one ext4 root partition and extlinux as its bootloader, so it boots from the
# disk like any cloud image. Converted to a compressed qcow2.
#
#   scripts/build-cloud-guest-image.sh [--force] [OUTPUT]
#       default OUTPUT: build/guest/zstack-cloud-guest.qcow2
#   scripts/build-cloud-guest-image.sh --print-packages   the host packages this script needs
#
# Host packages it needs (installed here if missing):
#   debootstrap extlinux syslinux-common fdisk e2fsprogs qemu-utils mount
# The guest's packages come from the Debian mirror the host's apt uses (deb.debian.org unless
# DEBIAN_MIRROR says otherwise); debootstrap keeps the .debs it downloads in
# /var/cache/zstack-tests/cloud-guest-debs, so a rebuild downloads nothing again.
#
# Cached: OUTPUT.sha256 holds the sha256 of this script the image was built by; when it matches,
# nothing is rebuilt. --force rebuilds anyway.
set -euo pipefail

HOST_PACKAGES="debootstrap extlinux syslinux-common fdisk e2fsprogs qemu-utils mount"
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# What a cloud image of Debian holds, and no more: the cloud kernel (virtio drivers, small),
# systemd as init, networking that cloud-init configures (ifupdown, DHCP by isc-dhcp-client),
# sshd, and cloud-init itself. sudo: cloud-init gives its default user a sudo rule.
GUEST_PACKAGES="linux-image-cloud-amd64 systemd-sysv udev ifupdown isc-dhcp-client iproute2 netbase
    openssh-server cloud-init sudo"
# No CPU-bug mitigations: they only cost time under TCG. The serial console is where libvirt
# logs the VM's console.
CMDLINE="console=ttyS0 mitigations=off"
# Free room on the root filesystem beyond what the packages take.
FREE_MB=400

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SELF=$ROOT/scripts/build-cloud-guest-image.sh
DEB_CACHE=/var/cache/zstack-tests/cloud-guest-debs

usage() {
    echo "usage: $0 [--force] [OUTPUT]    (default OUTPUT: build/guest/zstack-cloud-guest.qcow2)" >&2
    echo "       $0 --print-packages" >&2
    exit 2
}

force=0
out=
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        --print-packages) echo "packages: $HOST_PACKAGES"; exit 0 ;;
        -h|--help) usage ;;
        -*) echo "unknown option: $arg" >&2; usage ;;
        *) [ -z "$out" ] || usage; out=$arg ;;
    esac
done
out=${out:-$ROOT/build/guest/zstack-cloud-guest.qcow2}
case "$out" in /*) ;; *) out=$PWD/$out ;; esac
key=$(sha256sum "$SELF" | cut -d' ' -f1)

report() {
    local bytes virtual
    bytes=$(stat -c %s "$out")
    virtual=$(qemu-img info -U --output=json "$out" | sed -n 's/.*"virtual-size": *\([0-9]*\).*/\1/p')
    echo "cloud guest image: $out ($bytes bytes, $(numfmt --to=iec "$bytes"); disk $(numfmt --to=iec "$virtual"))"
}

# --- up to date? ----------------------------------------------------------------------------
if [ "$force" = 0 ] && [ -s "$out" ] && [ "$(cat "$out.sha256" 2>/dev/null)" = "$key" ]; then
    report
    exit 0
fi
[ "$(id -u)" = 0 ] || { echo "$0 must run as root (debootstrap, loop devices)" >&2; exit 1; }

# --- host tools -----------------------------------------------------------------------------
export DEBIAN_FRONTEND=noninteractive
missing=()
for p in $HOST_PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing missing packages: ${missing[*]}"
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
MBR=/usr/lib/syslinux/mbr/mbr.bin
[ -f "$MBR" ] || { echo "no $MBR: install syslinux-common" >&2; exit 1; }

started=$(date +%s)
work=$(mktemp -d "${TMPDIR:-/var/tmp}/zstack-cloud-guest.XXXXXX")
mnt=$work/mnt
loop=
cleanup() {
    mountpoint -q "$mnt" 2>/dev/null && umount "$mnt"
    [ -n "$loop" ] && losetup -d "$loop" 2>/dev/null
    for m in var/cache/apt/archives dev/pts dev sys proc; do
        mountpoint -q "$work/root/$m" 2>/dev/null && umount -l "$work/root/$m"
    done
    rm -rf "$work"
}
trap cleanup EXIT

# --- the root filesystem --------------------------------------------------------------------
# debootstrap makes the base; apt inside it installs the rest, so virtual packages and
# alternatives resolve as on any Debian system. The .debs stay in $DEB_CACHE for the next build.
mkdir -p "$DEB_CACHE/partial"
r=$work/root
echo "debootstrap $SUITE (minbase) from $MIRROR"
debootstrap --variant=minbase --cache-dir="$DEB_CACHE" "$SUITE" "$r" "$MIRROR" \
    >"$work/debootstrap.log" 2>&1 || {
    tail -n 40 "$work/debootstrap.log" "$r/debootstrap/debootstrap.log" >&2 2>/dev/null
    exit 1
}
mount -t proc proc "$r/proc"
mount -t sysfs sys "$r/sys"
mount --bind /dev "$r/dev"
mount --bind /dev/pts "$r/dev/pts"
mount --bind "$DEB_CACHE" "$r/var/cache/apt/archives"
# No daemon of the guest's starts on the build host.
printf '#!/bin/sh\nexit 101\n' >"$r/usr/sbin/policy-rc.d"
chmod 755 "$r/usr/sbin/policy-rc.d"
echo "installing into the guest: $GUEST_PACKAGES"
in_guest() { chroot "$r" env DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 "$@"; }
in_guest apt-get update -q >"$work/apt.log" 2>&1 || { cat "$work/apt.log" >&2; exit 1; }
# shellcheck disable=SC2086 # a list of package names
in_guest apt-get install -y -q --no-install-recommends $GUEST_PACKAGES >>"$work/apt.log" 2>&1 \
    || { tail -n 40 "$work/apt.log" >&2; exit 1; }
rm -f "$r/usr/sbin/policy-rc.d"
for m in var/cache/apt/archives dev/pts dev sys proc; do umount "$r/$m"; done
kver=$(ls "$r/lib/modules")
[ -f "$r/boot/vmlinuz-$kver" ] && [ -f "$r/boot/initrd.img-$kver" ] \
    || { echo "no kernel or initramfs for $kver in the guest's /boot" >&2; exit 1; }

uuid=$(cat /proc/sys/kernel/random/uuid)
echo "UUID=$uuid / ext4 defaults,errors=remount-ro 0 1" >"$r/etc/fstab"
# Every VM gets its own identity at first boot: systemd makes a machine-id, cloud-init sets the
# hostname and makes the ssh host keys.
: >"$r/etc/machine-id"
rm -f "$r/var/lib/dbus/machine-id" "$r"/etc/ssh/ssh_host_*
echo localhost >"$r/etc/hostname"
# The system's locale is C.UTF-8, which needs no generating (the image has no locales
# package); cloud-init's locale module then leaves it as it is.
echo 'LANG=C.UTF-8' >"$r/etc/default/locale"
# The build host's resolver is no business of the VM's: DHCP writes its own.
rm -f "$r/etc/resolv.conf"
printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n' >"$r/etc/hosts"
# ifupdown brings up what cloud-init writes into interfaces.d (its fallback: DHCP on the
# first NIC).
if ! grep -q '^source /etc/network/interfaces.d' "$r/etc/network/interfaces" 2>/dev/null; then
    printf 'auto lo\niface lo inet loopback\n\nsource /etc/network/interfaces.d/*\n' \
        >"$r/etc/network/interfaces"
fi
mkdir -p "$r/etc/network/interfaces.d"

mkdir -p "$r/boot/extlinux"
cat >"$r/boot/extlinux/extlinux.conf" <<EOF
DEFAULT debian
PROMPT 0
TIMEOUT 0
LABEL debian
  LINUX /boot/vmlinuz-$kver
  INITRD /boot/initrd.img-$kver
  APPEND root=UUID=$uuid ro $CMDLINE
EOF

# What only the build needed, and what a VM never reads.
rm -rf "$r"/var/cache/apt/*.bin "$r"/var/lib/apt/lists/* \
    "$r"/usr/share/doc/* "$r"/usr/share/man/* "$r"/usr/share/info/* "$r"/var/log/*.log \
    "$r/debootstrap"
find "$r/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name 'locale.alias' -exec rm -rf {} +

# --- the disk: MBR, one bootable ext4 partition, extlinux -----------------------------------
used_mb=$(du -smx "$r" | cut -f1)
part_mb=$((used_mb + FREE_MB))
disk_mb=$((part_mb + 1))
raw=$work/disk.raw
part=$work/root.ext4
truncate -s "${part_mb}M" "$part"
# No 64bit feature: extlinux reads the filesystem itself and wants the classic layout.
mkfs.ext4 -q -F -L root -U "$uuid" -O ^64bit -d "$r" "$part"
truncate -s "${disk_mb}M" "$raw"
echo 'start=2048, type=83, bootable' | sfdisk -q "$raw"
dd if="$part" of="$raw" bs=1M seek=1 conv=notrunc,sparse status=none
rm -f "$part"
loop=$(losetup -f --show -o $((1 << 20)) --sizelimit $((part_mb << 20)) "$raw")
mkdir -p "$mnt"
mount "$loop" "$mnt"
extlinux --install "$mnt/boot/extlinux" >/dev/null
umount "$mnt"
losetup -d "$loop"
loop=
dd if="$MBR" of="$raw" bs=440 count=1 conv=notrunc status=none

# --- qcow2 ----------------------------------------------------------------------------------
mkdir -p "$(dirname "$out")"
qemu-img convert -q -c -f raw -O qcow2 "$raw" "$out.partial"
mv "$out.partial" "$out"
echo "$key" >"$out.sha256"
echo "built in $(($(date +%s) - started)) s: Debian $SUITE, kernel $kver," \
    "cloud-init $(cat "$r/usr/lib/python3/dist-packages/cloudinit/version.py" 2>/dev/null \
        | sed -n 's/^__VERSION__ = "\(.*\)"/\1/p'), root filesystem ${used_mb} MiB used"
report
