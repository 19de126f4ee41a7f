#!/usr/bin/env bash
# AddKVMHost over SSH, from the call to the host Connected: a Debian container booted with systemd
# (scripts/debian-systemd-rootfs.sh) on a test bridge stands for a new host; the stack is installed
# on this machine with the management node on the bridge's address. Times the first join (login,
# key, check, copy of the release, install, certificate, start, connect), then, after DeleteHost, a
# re-add that only renews the certificate. Prints both. Needs root, systemd-nspawn, debootstrap and
# build/zstack-installer-1.2.0.bin; skipped when ZStack is already installed here. Removes the
# container, the bridge and the install on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
# The host in turn with the test binaries (the lock held by flock itself, so no daemon started
# below inherits it).
if [ -z "${ZSTACK_HOST_LOCKED:-}" ] && [ "$(id -u)" -eq 0 ]; then
    exec env ZSTACK_HOST_LOCKED=1 flock -o /run/lock/zstack-tests-on-this-host.lock bash "$0" "$@"
fi
BR=zsbjoin0
NODE_IP=10.254.0.1
HOST_IP=10.254.0.21
PASSWORD=zstack-bench-root
if [ "$(id -u)" -ne 0 ]; then
    echo "join: skipped, needs root (containers)"
    exit 0
fi
if [ -e /usr/local/zstack/current ] || [ -e /etc/zstack ]; then
    echo "join: skipped, ZStack is already installed on this host"
    exit 0
fi
work=$(mktemp -d /var/tmp/zstack-bench-join.XXXXXX)
nspawn_pid=
cleanup() {
    if [ -n "$nspawn_pid" ]; then
        kill "$nspawn_pid" 2>/dev/null || true
        wait "$nspawn_pid" 2>/dev/null || true
    fi
    ip link del "$BR" 2>/dev/null || true
    bash scripts/uninstall-from-host.sh >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

bash scripts/debian-systemd-rootfs.sh "$work/root" >/dev/null
printf 'PermitRootLogin yes\nPasswordAuthentication yes\n' >"$work/root/etc/ssh/sshd_config.d/zstack-bench.conf"
ip link add "$BR" type bridge
ip addr add "$NODE_IP/24" dev "$BR"
ip link set "$BR" up
systemd-nspawn --boot --register=no --keep-unit --quiet --network-bridge="$BR" \
    --machine="zsbjoin-$$" -D "$work/root" </dev/null >"$work/nspawn.log" 2>&1 &
nspawn_pid=$!
pid1=
for _ in $(seq 600); do
    pid1=$(pgrep -P "$nspawn_pid" -x systemd || true)
    [ -n "$pid1" ] && break
    sleep 0.1
done
[ -n "$pid1" ] || { echo "join: the container's systemd did not start" >&2; exit 1; }
inside() { nsenter -t "$pid1" -m -u -i -n -p -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }
for _ in $(seq 240); do
    state=$(inside systemctl is-system-running 2>/dev/null || true)
    case "$state" in running | degraded) break ;; esac
    sleep 0.5
done
inside sh -c "echo root:$PASSWORD | chpasswd && ip addr add $HOST_IP/24 dev host0 && ip link set host0 up && systemctl start ssh"
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/$HOST_IP/22") 2>/dev/null && break
    sleep 0.2
done

password=$(bash build/zstack-installer-1.2.0.bin -I "$NODE_IP" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["admin_password"])')
export HOME=$work
zstack-cli LogInByAccount accountName=admin "password=$password" >/dev/null
zone=$(zstack-cli CreateZone name=bench | python3 -c 'import json,sys; print(json.load(sys.stdin)["inventory"]["uuid"])')
cluster=$(zstack-cli CreateCluster name=kvm "zoneUuid=$zone" hypervisorType=KVM | python3 -c 'import json,sys; print(json.load(sys.stdin)["inventory"]["uuid"])')

add() {
    local started ended out
    started=$(date +%s.%N)
    out=$(zstack-cli AddKVMHost name=joined "managementIp=$HOST_IP" "clusterUuid=$cluster" username=root "password=$PASSWORD" 2>/dev/null)
    ended=$(date +%s.%N)
    python3 -c 'import json,sys; v=json.loads(sys.argv[1]); assert v["inventory"]["status"]=="Connected", v; print(sys.argv[4], "%.1f s," % (float(sys.argv[3]) - float(sys.argv[2])), "changes:", ",".join(v["deployment"]["changes"]) or "none")' \
        "$out" "$started" "$ended" "$1"
    echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["inventory"]["uuid"])' >"$work/host"
}
echo "join: AddKVMHost over SSH, call to Connected (release tree $(du -sh /usr/local/zstack/current/ | cut -f1) copied)"
add "  new host:                 "
zstack-cli DeleteHost "uuid=$(cat "$work/host")" >/dev/null
add "  re-add after DeleteHost:  "
