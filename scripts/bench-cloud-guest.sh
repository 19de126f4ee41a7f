#!/usr/bin/env bash
# The cloud-init guest under TCG: builds (or finds cached) the Debian cloud image of
# scripts/build-cloud-guest-image.sh and prints its size and, when it was built now, its build
# time; then boots it as a ZStack VM with tests/tests/cloud_init_guest.rs (all-in-one install on
# this host, VM with a #cloud-config and an ssh key, checked over SSH through its EIP) and prints
# that test's figures: from CreateVmInstance to the first SSH login with the VM's key, to the
# user data's runcmd done, and the guest's uptime when runcmd ran.
# Needs root, libvirt and qemu; installs on this host and removes it afterwards; skipped when
# ZStack is already installed here.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "cloud-init guest: skipped, needs root (libvirt, loop devices, namespaces)"
    exit 0
fi
if [ -e /usr/local/zstack/current ] || [ -e /etc/zstack ]; then
    echo "cloud-init guest: skipped, ZStack is already installed on this host"
    exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

started=$(date +%s)
bash scripts/build-cloud-guest-image.sh >"$work/build" 2>&1 || { cat "$work/build" >&2; exit 1; }
elapsed=$(($(date +%s) - started))
if grep -q '^built in' "$work/build"; then
    echo "cloud-init guest: image built in $elapsed s ($(grep '^built in' "$work/build" | cut -d: -f2-))"
else
    echo "cloud-init guest: image cached (rebuilt when scripts/build-cloud-guest-image.sh changes)"
fi
sed -n 's/^cloud guest image: /cloud-init guest: image /p' "$work/build"

cargo test --locked -q -p zstack-tests --test cloud_init_guest -- --include-ignored \
    --test-threads=1 --nocapture >"$work/test" 2>&1 || { cat "$work/test" >&2; exit 1; }
# The test's figures; the harness may print on the same line before the first one.
grep -o 'cloud-init guest: .*' "$work/test"
