#!/usr/bin/env bash
# Scale of one management node: 10,000 CreateVmInstance calls on 100 simulator hosts, 1,000 in
# flight, with a reader timing QueryVmInstance through the storm; prints VMs/s, the query's p99
# and the server's memory. Installs on this host and removes it afterwards; skipped when ZStack is
# already installed here. Needs build/zstack-installer-1.2.0.bin.
set -euo pipefail
cd "$(dirname "$0")/.."
VMS=${VMS:-10000}
HOSTS=${HOSTS:-100}
IN_FLIGHT=${IN_FLIGHT:-1000}
if [ -e /usr/local/zstack/current ] || [ -e /etc/zstack ]; then
    echo "scale: skipped, ZStack is already installed on this host"
    exit 0
fi
cargo build --release --locked -q -p zstack-tests --bin zstack-scale-bench
work=$(mktemp -d)
cleanup() {
    bash scripts/uninstall-from-host.sh
    rm -rf "$work"
}
trap cleanup EXIT

password=$(bash build/zstack-installer-1.2.0.bin -I 127.0.0.1 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["admin_password"])')
pid=$(zstack-ctl status --json | python3 -c 'import json,sys; print(next(s["pid"] for s in json.load(sys.stdin)["services"] if s["service"] == "zstack-server"))')
qemu-img create -q -f qcow2 "$work/tiny.qcow2" 64M
# 1,000 client threads and as many server connections.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
target/release/zstack-scale-bench --password "$password" --vms "$VMS" --hosts "$HOSTS" \
    --in-flight "$IN_FLIGHT" --server-pid "$pid" --image "$work/tiny.qcow2" --backup-storage "$work/bs"
