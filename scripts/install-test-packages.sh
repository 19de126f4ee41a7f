#!/bin/sh
# Installs every Debian 12 package the test suite and `make install` need on a fresh machine.
# Used by .ci/run; safe to run again.
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update -q

# Some machines carry qemu-utils from bookworm-backports, which Breaks bookworm's qemu-system-common.
# Pin the qemu packages to one suite so they always agree.
QEMU_SUITE=bookworm
if dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null | grep -q bpo; then
    # Downgrade to the bookworm build so qemu-system-x86 can be installed beside it.
    QEMU_PIN="qemu-utils/$QEMU_SUITE qemu-block-extra/$QEMU_SUITE"
else
    QEMU_PIN="qemu-utils"
fi

# shellcheck disable=SC2086
apt-get install -y -q --no-install-recommends --allow-downgrades \
    $QEMU_PIN \
    qemu-system-x86 \
    libvirt-daemon-system libvirt-clients \
    dnsmasq-base \
    nftables iptables iproute2 \
    cron \
    sqlite3 \
    makeself \
    systemd systemd-container debootstrap \
    util-linux e2fsprogs procps psmisc kmod \
    curl ca-certificates gzip zstd xz-utils
