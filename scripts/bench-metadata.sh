#!/usr/bin/env bash
# The metadata server under load: requests per second and latency (wrk --latency) from a namespace
# standing for a VM, against the agent's server (zstack_kvmagent::metadata, run by
# tests/src/bin/zstack-metadata-bench.rs in a namespace standing for the L3 namespace) and against
# lighttpd serving the same answers from files with the original's configuration, in the same
# namespace on the same address and port, one after the other, with the same wrk settings.
# Prints the figures side by side. Needs root, wrk, lighttpd and curl (scripts/install-test-packages.sh);
# makes a bridge and two namespaces, removed on exit.
#   DURATION=10s CONNECTIONS=32 THREADS=2   wrk's settings
#   VMS=1                                   VMs on the L3 (the others are never asked for; lighttpd
#                                           tries one $HTTP["remoteip"] block per VM)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
VMS=${VMS:-1}

if [ "$(id -u)" -ne 0 ]; then
    echo "metadata: skipped, needs root (network namespaces)"
    exit 0
fi
for tool in wrk lighttpd curl ip; do
    if ! command -v "$tool" >/dev/null; then
        echo "metadata: skipped, $tool is missing (scripts/install-test-packages.sh)"
        exit 0
    fi
done
cargo build --release --locked -q -p zstack-tests --bin zstack-metadata-bench

BR=zsmbbr0
NS_L3=zsmb-l3
NS_VM=zsmb-vm
VM_IP=10.89.0.10
MD=169.254.169.254
work=$(mktemp -d)
server_pid=
lighttpd_pid=

sweep() {
    ip netns del "$NS_L3" 2>/dev/null || true
    ip netns del "$NS_VM" 2>/dev/null || true
    ip link del zsmbl3 2>/dev/null || true
    ip link del zsmbvm 2>/dev/null || true
    ip link del "$BR" 2>/dev/null || true
}
stop() { # pid
    if [ -n "$1" ] && kill -0 "$1" 2>/dev/null; then
        kill "$1" 2>/dev/null || true
        wait "$1" 2>/dev/null || true
    fi
}
cleanup() {
    stop "$server_pid"
    stop "$lighttpd_pid"
    sweep
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A namespace on the bridge: name, bridge-side port, addresses.
attach() {
    local ns=$1 port=$2
    shift 2
    ip netns add "$ns"
    ip link add "$port" type veth peer name eth0 netns "$ns"
    ip link set "$port" master "$BR" up
    ip -n "$ns" link set lo up
    ip -n "$ns" link set eth0 up
    for a in "$@"; do ip -n "$ns" addr add "$a" dev eth0; done
}
sweep
ip link add "$BR" type bridge
ip link set "$BR" up
attach "$NS_L3" zsmbl3 10.89.0.2/24 "$MD/32"
attach "$NS_VM" zsmbvm "$VM_IP/24"
ip -n "$NS_VM" route add "$MD/32" via 10.89.0.2

vm_curl() { ip netns exec "$NS_VM" curl -sS --max-time 5 "$@"; }
wait_for() { # what, url
    for _ in $(seq 100); do
        if [ "$(vm_curl -o /dev/null -w '%{http_code}' "$2" 2>/dev/null)" = 200 ]; then return 0; fi
        sleep 0.1
    done
    echo "metadata: $1 does not answer" >&2
    exit 1
}

# Our server.
target/release/zstack-metadata-bench --netns "$NS_L3" --listen "$MD:80" --vm-ip "$VM_IP" \
    --vms "$VMS" --store "$work/store" --lighttpd-dir "$work/lighttpd" >"$work/server.log" 2>&1 &
server_pid=$!
wait_for "the agent's metadata server" "http://$MD/latest/meta-data/instance-id"

# lighttpd's files: what our server answers the VM, crawled as cloud-init does.
html="$work/lighttpd/html/$VM_IP"
crawl() { # directory under meta-data/ ("" or ending with /)
    local dir=$1 entry
    mkdir -p "$html/meta-data/$dir"
    vm_curl -o "$html/meta-data/${dir}index.html" "http://$MD/latest/meta-data/$dir"
    while IFS= read -r entry; do
        case "$entry" in
        "") ;;
        */) crawl "$dir$entry" ;;
        *=*) crawl "$dir${entry%%=*}/" ;;
        *) vm_curl -o "$html/meta-data/$dir$entry" "http://$MD/latest/meta-data/$dir$entry" ;;
        esac
    done <"$html/meta-data/${dir}index.html"
}
crawl ""
vm_curl -o "$html/user-data" "http://$MD/latest/user-data"

PATHS="/latest/meta-data/instance-id /latest/user-data"
declare -A rps p50 p99 bad rss
bench() { # server name, pid
    local path out
    for path in $PATHS; do
        vm_curl -o "$work/$1.$(basename "$path")" "http://$MD$path"
        out=$(ip netns exec "$NS_VM" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "http://$MD$path")
        rps[$1$path]=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
        p50[$1$path]=$(awk '$1 == "50%" {print $2}' <<<"$out")
        p99[$1$path]=$(awk '$1 == "99%" {print $2}' <<<"$out")
        bad[$1$path]=$(awk -F'[ ,]+' '/Non-2xx/ {n += $NF} /Socket errors/ {n += $5 + $7 + $9 + $11} END {print n + 0}' <<<"$out")
    done
    rss[$1]=$(awk '/^VmRSS:/ {print $2 " " $3}' "/proc/$2/status")
}
bench zstack "$server_pid"
stop "$server_pid"
server_pid=

ip netns exec "$NS_L3" lighttpd -D -f "$work/lighttpd/lighttpd.conf" &
lighttpd_pid=$!
wait_for lighttpd "http://$MD/latest/meta-data/instance-id"
bench lighttpd "$lighttpd_pid"
for path in $PATHS; do
    if ! cmp -s "$work/zstack.$(basename "$path")" "$work/lighttpd.$(basename "$path")"; then
        echo "metadata: lighttpd and the agent answer $path differently" >&2
        exit 1
    fi
done

echo "metadata server: wrk -t$THREADS -c$CONNECTIONS -d$DURATION from a VM namespace, $VMS VM(s) on the L3, $(nproc) CPUs"
printf '%-32s %-9s %12s %10s %10s %8s\n' path server requests/s p50 p99 errors
for path in $PATHS; do
    for s in zstack lighttpd; do
        printf '%-32s %-9s %12s %10s %10s %8s\n' "$path" "$s" "${rps[$s$path]}" "${p50[$s$path]}" \
            "${p99[$s$path]}" "${bad[$s$path]}"
    done
done
echo "resident memory after the runs: agent's server (whole bench process) ${rss[zstack]}, lighttpd ${rss[lighttpd]}"
