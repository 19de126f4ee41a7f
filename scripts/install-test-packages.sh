#!/bin/sh
# Installs the Debian 12 packages ZStack needs on this host.
#   scripts/install-test-packages.sh runtime   what the stack runs on (qemu, libvirt, dnsmasq, nftables, ...)
#   scripts/install-test-packages.sh           that, plus what the test suite and benchmarks use
# Used by `make install` (runtime) and .ci/run (all). Safe to run again.
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update -q

# Some machines carry qemu-utils from bookworm-backports, which Breaks bookworm's
# qemu-system-common: pin both to bookworm so they always agree.
if dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null | grep -q bpo; then
    QEMU_UTILS="qemu-utils/bookworm qemu-block-extra/bookworm"
else
    QEMU_UTILS="qemu-utils"
fi

RUNTIME="$QEMU_UTILS qemu-system-x86 libvirt-daemon-system libvirt-clients dnsmasq-base
    nftables iptables iproute2 iputils-arping util-linux cron sqlite3 procps ca-certificates"
TEST="makeself hyperfine systemd systemd-container debootstrap util-linux e2fsprogs psmisc kmod
    curl gzip zstd xz-utils python3 isolinux syslinux-common xorriso cpio extlinux fdisk
    iputils-ping isc-dhcp-client cloud-init lighttpd wrk chromium chromium-driver"

case "${1:-all}" in
    runtime) PACKAGES=$RUNTIME ;;
    all) PACKAGES="$RUNTIME $TEST" ;;
    *) echo "usage: $0 [runtime|all]" >&2; exit 2 ;;
esac

# shellcheck disable=SC2086
apt-get install -y -q --no-install-recommends --allow-downgrades $PACKAGES
