#!/usr/bin/env bash
# Downtime of the management API during an upgrade 1.1.0 -> 1.2.0 with a DB of 10,000 VMs: a poller
# asks GET /health every 5 ms through the upgrade and prints the longest stretch without an answer.
# Installs on this host and removes it afterwards; skipped when ZStack is already installed here.
# Needs build/zstack-installer-1.1.0.bin and -1.2.0.bin.
set -euo pipefail
cd "$(dirname "$0")/.."
VMS=${VMS:-10000}
if [ -e /usr/local/zstack/current ] || [ -e /etc/zstack ]; then
    echo "upgrade downtime: skipped, ZStack is already installed on this host"
    exit 0
fi
work=$(mktemp -d)
cleanup() {
    bash scripts/uninstall-from-host.sh
    rm -rf "$work"
}
trap cleanup EXIT

bash build/zstack-installer-1.1.0.bin -q -I 127.0.0.1 >/dev/null 2>&1
zstack-ctl stop --service zstack-server >/dev/null
sqlite3 /var/lib/zstack/zstack.db <<SQL
INSERT INTO zone VALUES ('zone0', 'zone0', NULL, 'Enabled', 'x', 'x');
INSERT INTO cluster VALUES ('cluster0', 'zone0', 'cluster0', NULL, 'KVM', 'Enabled', 'x', 'x');
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $VMS)
INSERT INTO vm_instance (uuid, name, zone_uuid, cluster_uuid, cpu_num, memory_size, state, create_date, last_op_date)
SELECT lower(hex(randomblob(16))), 'vm-' || i, 'zone0', 'cluster0', 1 + i % 4, 1073741824, 'Running', 'x', 'x' FROM n;
SQL
zstack-ctl start --service zstack-server >/dev/null
echo "1.1.0 installed with $(sqlite3 /var/lib/zstack/zstack.db 'SELECT count(*) FROM vm_instance') VMs; upgrading to 1.2.0"

python3 - "$work/gaps" <<'PY' &
import sys, time, urllib.request
out = open(sys.argv[1], "w")
last_ok = time.monotonic(); worst = 0.0; down_since = None; seen_down = False
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    try:
        v = urllib.request.urlopen("http://127.0.0.1:8080/health", timeout=1).read()
        now = time.monotonic()
        if down_since is not None:
            worst = max(worst, now - last_ok); down_since = None
        last_ok = now
        if seen_down and b'"1.2.0"' in v:
            break
    except Exception:
        seen_down = True
        if down_since is None:
            down_since = time.monotonic()
    time.sleep(0.005)
out.write(f"{worst:.3f}\n"); out.close()
PY
poller=$!
sleep 0.5
t0=$(date +%s%N)
bash build/zstack-installer-1.2.0.bin -u -q >/dev/null
t1=$(date +%s%N)
wait $poller
echo "upgrade 1.1.0 -> 1.2.0 with $VMS VMs: whole run $(( (t1 - t0) / 1000000 )) ms;" \
     "API downtime (longest gap between answers of GET /health) $(awk '{printf "%.0f", $1 * 1000}' "$work/gaps") ms (target < 2000 ms)"
