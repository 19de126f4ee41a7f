#!/usr/bin/env bash
# Makes DEST a Debian bookworm root filesystem that boots with systemd as PID 1 under
# systemd-nspawn, with the system tools ZStack's preflight requires. The debootstrap'd tree is
# cached as a tarball under /var/cache/zstack-tests (keyed by suite and package list), so only
# the first run downloads packages; later runs unpack it in seconds.
#   scripts/debian-systemd-rootfs.sh DEST
set -euo pipefail
DEST=${1:?usage: $0 DEST}
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PACKAGES=systemd,systemd-sysv,dbus,libpam-systemd,cron,iproute2,procps,openssh-server,qemu-utils,qemu-system-x86,libvirt-daemon-system,libvirt-clients,dnsmasq-base,nftables,iputils-arping,curl,ca-certificates
CACHE=/var/cache/zstack-tests
key=$(printf '%s %s' "$SUITE" "$PACKAGES" | sha256sum | cut -c1-16)
tarball=$CACHE/$SUITE-systemd-$key.tar

mkdir -p "$CACHE"
if [ ! -s "$tarball" ]; then
    echo "building the $SUITE rootfs (first run only; cached as $tarball)"
    build=$(mktemp -d "$CACHE/build.XXXXXX")
    trap 'rm -rf "$build" "$tarball.partial"' EXIT
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$build/root" "$MIRROR" >"$build/debootstrap.log" 2>&1 || {
        tail -20 "$build/debootstrap.log" >&2
        echo "debootstrap failed; see the lines above" >&2
        exit 1
    }
    # No login prompt on the console, and no getty waiting on it.
    ln -sf /dev/null "$build/root/etc/systemd/system/console-getty.service"
    echo zstack-systemd-test >"$build/root/etc/hostname"
    tar -C "$build/root" -cf "$tarball.partial" .
    mv "$tarball.partial" "$tarball"
    rm -rf "$build"
    trap - EXIT
fi
mkdir -p "$DEST"
tar -C "$DEST" -xf "$tarball"
echo "rootfs ready in $DEST"
