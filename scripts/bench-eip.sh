#!/usr/bin/env bash
# EIPs at scale on one KVM host (as root): applies 1,000 EIPs (EIPS=N for another count) one after
# the other with the agent's code (tests/src/bin/zstack-eip-bench.rs: zstack_kvmagent::eip with the
# real tools and this tree's templates), then removes them; then does the same with ZStack 1.x's
# way (scripts/bench-eip-baseline.sh: one ip/iptables/ebtables command per step). Prints one line
# per figure, both side by side, in milliseconds. No VM is needed. Everything it makes is named
# *zsb* / eip5eb* / zs-eip-5eb* and removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${EIPS:-1000}
if [ "$(id -u)" != 0 ]; then
    echo "eip: skipped, needs root (network namespaces, bridges, nftables)"
    exit 0
fi
for tool in nft arping ebtables iptables nsenter; do
    if ! command -v "$tool" >/dev/null; then
        echo "eip: skipped, $tool is missing (scripts/install-test-packages.sh installs it)"
        exit 0
    fi
done
cargo build --release --locked -q -p zstack-tests --bin zstack-eip-bench
work=$(mktemp -d)

# shellcheck disable=SC2317 # run by the trap
cleanup() {
    set +e
    ip netns list | awk '$1 ~ /^zs-eip-5eb/ { print $1 }' | xargs -r -n1 ip netns delete
    ip -o link show | awk -F': ' '{ split($2, n, "@"); if (n[1] ~ /^eip5eb/) print n[1] }' |
        xargs -r -n1 ip link delete
    ip link delete br_zsbpub 2>/dev/null
    ip link delete br_zsbprv 2>/dev/null
    # The host's EIP table goes with its last EIP namespace; a run that failed may leave it.
    if ! ip netns list | grep -q '^zs-eip-'; then
        nft delete table bridge zstack_eip 2>/dev/null
    fi
    rm -rf "$work"
}
trap cleanup EXIT

for br in br_zsbpub br_zsbprv; do
    ip link add name "$br" type bridge
    ip link set dev "$br" up
done

target/release/zstack-eip-bench --count "$COUNT" --templates templates \
    --public zsbpub --private zsbprv >"$work/zstack"
bash scripts/bench-eip-baseline.sh "$COUNT" br_zsbpub br_zsbprv >"$work/baseline"

figure() { awk -v k="$1" '$1 == k { print $2 }' "$2"; }
row() {
    local ours theirs
    ours=$(figure "$2" "$work/zstack")
    theirs=$(figure "$2" "$work/baseline")
    [ -n "$ours$theirs" ] && printf 'eip: %-44s %12s %12s\n' "$1" "$ours" "$theirs"
    return 0
}
printf 'eip: %-44s %12s %12s\n' "$COUNT EIPs on one host, ms" "zstack 1.2" "1.x script"
row "apply #1" apply.1
row "apply #100" apply.100
row "apply #$COUNT" "apply.$COUNT"
row "apply, median of #1-#10" apply.first10
row "apply, median of the last 10" apply.last10
row "apply, all $COUNT" apply.total
row "remove #1 (of $COUNT)" remove.1
row "remove #100" remove.100
row "remove #$COUNT (the last)" "remove.$COUNT"
row "remove, all $COUNT" remove.total
for n in 1 100 "$COUNT"; do
    dad=$(figure "dad.$n" "$work/zstack")
    [ -n "$dad" ] && printf 'eip: %-44s %12s %12s\n' "duplicate-VIP probe of #$n (not above)" "$dad" "none"
done
exit 0
