#!/usr/bin/env bash
# The dashboard with 10,000 VMs in the DB: the VM list and the overview loaded in headless Chromium
# (chromium, chromium-driver); prints the time to first render, the server's time to first byte and
# the bytes sent. Installs on this host and removes it afterwards; skipped when ZStack is already
# installed here. Needs build/zstack-installer-1.2.0.bin.
set -euo pipefail
cd "$(dirname "$0")/.."
VMS=${VMS:-10000}
HOSTS=${HOSTS:-100}
if [ -e /usr/local/zstack/current ] || [ -e /etc/zstack ]; then
    echo "dashboard: skipped, ZStack is already installed on this host"
    exit 0
fi
cargo build --release --locked -q -p zstack-tests --bin zstack-dashboard-bench
work=$(mktemp -d)
cleanup() {
    bash scripts/uninstall-from-host.sh
    rm -rf "$work"
}
trap cleanup EXIT

password=$(bash build/zstack-installer-1.2.0.bin -I 127.0.0.1 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["admin_password"])')
qemu-img create -q -f qcow2 "$work/tiny.qcow2" 64M
target/release/zstack-dashboard-bench --password "$password" --vms "$VMS" --hosts "$HOSTS" \
    --image "$work/tiny.qcow2" --backup-storage "$work/bs" --out "$work"
