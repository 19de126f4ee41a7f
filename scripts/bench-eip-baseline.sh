#!/usr/bin/env bash
# The baseline of scripts/bench-eip.sh: the same EIPs applied the way ZStack 1.x's KVM agent did
# (kvmagent/plugins/deip.py renders one bash script per EIP): one `ip`/`iptables`/`ebtables`
# command per step, each step checked first by listing and grepping (`ip link | grep -w`,
# `iptables-save | grep`, `ebtables -L | grep`), commands in the namespace through
# `ip netns exec`, the VM's gateway ARP answered by an ebtables arpreply rule per NIC in the host's
# PREROUTING chain, and its `arping -q -U -c 1 -I <public side> <VIP gateway>` per EIP (run as it
# was: with -U, arping sends from the address it is given, which the namespace does not hold, so
# it fails at once and the script went on; 1.x had no duplicate-VIP check). brctl (bridge-utils)
# is replaced by its `ip link` equivalents.
#
# Usage: bench-eip-baseline.sh COUNT PUBLIC_BRIDGE PRIVATE_BRIDGE
# Prints `<figure> <milliseconds>` lines like zstack-eip-bench: apply.<n> (the 1st, 100th and last),
# apply.first10 and apply.last10 (medians), apply.total, remove.<n>, remove.total.
# The bridges must exist; everything else it makes is removed on exit.
set -uo pipefail
COUNT=${1:-1000}
PUB_BR=${2:-br_zsbpub}
PRI_BR=${3:-br_zsbprv}

now() { date +%s%N; }
ms() { awk -v n="$1" 'BEGIN { printf "%.1f", n / 1000000 }'; }
watched() { [ "$1" -eq 1 ] || [ "$1" -eq 100 ] || [ "$1" -eq "$COUNT" ]; }

# ebtables (nft backend) makes the host's `bridge nat` table on first use; drop it at the end
# unless it was there before.
nat_existed=no
nft list table bridge nat >/dev/null 2>&1 && nat_existed=yes

eip_vars() {
    local i=$1
    local hi=$((1 + (i - 1) / 250)) lo=$((1 + (i - 1) % 250)) base
    base=$(printf 'b%07x_0' "$((i - 1))")
    NIC_NAME=$(printf 'vnicb%07x.0' "$((i - 1))")
    PUB_ODEV=${base}_eo
    PUB_IDEV=${base}_ei
    PRI_ODEV=${base}_o
    PRI_IDEV=${base}_i
    VIP=172.30.$hi.$lo
    VIP_NETMASK=16
    VIP_GW=172.30.0.1
    NIC_IP=10.30.$hi.$lo
    NIC_GATEWAY=10.30.0.1
    NIC_NETMASK=16
    NS_NAME=${PUB_BR}_${VIP//./_}
    NS="ip netns exec $NS_NAME"
}

# The steps of deip.py's create_eip_cmd, in its order.
apply_eip() {
    $NS ip link show >/dev/null 2>&1 || ip netns add "$NS_NAME" || return 1

    $NS ip link | grep -w "$PUB_IDEV" >/dev/null || ip link del "$PUB_ODEV" >/dev/null 2>&1
    $NS ip link | grep -w "$PRI_IDEV" >/dev/null || ip link del "$PRI_ODEV" >/dev/null 2>&1

    local o i
    for pair in "$PUB_ODEV:$PUB_IDEV" "$PRI_ODEV:$PRI_IDEV"; do
        o=${pair%%:*} i=${pair##*:}
        ip link | grep -w "$o" >/dev/null || ip link add "$o" type veth peer name "$i" || return 1
        ip link set "$o" up || return 1
    done

    ip link show master "$PUB_BR" | grep -w "$PUB_ODEV" >/dev/null || ip link set "$PUB_ODEV" master "$PUB_BR" || return 1
    ip link show master "$PRI_BR" | grep -w "$PRI_ODEV" >/dev/null || ip link set "$PRI_ODEV" master "$PRI_BR" || return 1

    $NS ip link | grep -w "$PUB_IDEV" >/dev/null || ip link set "$PUB_IDEV" netns "$NS_NAME" || return 1
    $NS ip link | grep -w "$PRI_IDEV" >/dev/null || ip link set "$PRI_IDEV" netns "$NS_NAME" || return 1

    for pair in "$PUB_IDEV:$VIP:$VIP_NETMASK" "$PRI_IDEV:$NIC_GATEWAY:$NIC_NETMASK"; do
        IFS=: read -r dev ip mask <<<"$pair"
        if ! $NS ip addr show "$dev" | grep -w "$ip" >/dev/null; then
            $NS ip addr flush dev "$dev" || return 1
            $NS ip addr add "$ip/$mask" dev "$dev" || return 1
        fi
        $NS ip link set "$dev" up || return 1
    done

    # "ping VIP gateway"
    $NS arping -q -U -c 1 -I "$PUB_IDEV" "$VIP_GW" >/dev/null 2>&1

    # set_gateway_arp_if_needed ($rule is split into words on purpose, as in the original)
    local chain=$NIC_NAME-gw rule gateway
    ebtables -t nat -L "$chain" >/dev/null 2>&1 || ebtables -t nat -N "$chain" || return 1
    rule="-i $NIC_NAME -j $chain"
    # shellcheck disable=SC2086
    ebtables -t nat -L PREROUTING | grep -- "$rule" >/dev/null 2>&1 || ebtables -t nat -I PREROUTING $rule || return 1
    gateway=$($NS ip link | grep -w "$PRI_IDEV" -A 1 | awk '/link\/ether/{print $2}')
    rule="-p ARP --arp-op Request --arp-ip-dst $NIC_GATEWAY -j arpreply --arpreply-mac $gateway"
    # shellcheck disable=SC2086
    ebtables -t nat -L "$chain" | grep -- "$rule" >/dev/null 2>&1 || ebtables -t nat -A "$chain" $rule || return 1

    # set_eip_rules
    local dnat=DNAT-$VIP fwd=FWD-$VIP snat=SNAT-$VIP
    # shellcheck disable=SC2086
    rule_if_needed() { $NS iptables-save | grep -- "$2" >/dev/null || $NS iptables $1 $2; }
    $NS iptables-save | grep -w ":$dnat" >/dev/null || $NS iptables -t nat -N "$dnat" || return 1
    rule_if_needed "-t nat" "-A PREROUTING -d $VIP/32 -j $dnat" || return 1
    rule_if_needed "-t nat" "-A $dnat -j DNAT --to-destination $NIC_IP" || return 1
    $NS iptables-save | grep -w ":$fwd" >/dev/null || $NS iptables -N "$fwd" || return 1
    rule_if_needed "-t filter" "-A FORWARD -i $PRI_IDEV -o $PUB_IDEV -j $fwd" || return 1
    rule_if_needed "-t filter" "-A FORWARD -i $PUB_IDEV -o $PRI_IDEV -j $fwd" || return 1
    rule_if_needed "-t filter" "-A $fwd -j ACCEPT" || return 1
    $NS iptables-save | grep -w ":$snat" >/dev/null || $NS iptables -t nat -N "$snat" || return 1
    rule_if_needed "-t nat" "-A POSTROUTING -s $NIC_IP/32 -j $snat" || return 1
    rule_if_needed "-t nat" "-A $snat -j SNAT --to-source $VIP" || return 1

    # set_default_route_if_needed
    $NS ip route | grep -w default >/dev/null || $NS ip route add default via "$VIP_GW" || return 1
}

# deip.py's delete_eip_cmd.
remove_eip() {
    ip netns | grep -w "$NS_NAME" >/dev/null && ip netns delete "$NS_NAME"
    ip link | grep -w "$PUB_ODEV" >/dev/null && ip link del "$PUB_ODEV"
    local chain=$NIC_NAME-gw rule
    if ebtables -t nat -L "$chain" >/dev/null 2>&1; then
        rule="-i $NIC_NAME -j $chain"
        # shellcheck disable=SC2086
        ebtables -t nat -L PREROUTING | grep -- "$rule" >/dev/null && ebtables -t nat -D PREROUTING $rule
        ebtables -t nat -F "$chain"
        ebtables -t nat -X "$chain"
    fi
    return 0
}

applied=0
log=$(mktemp)
cleanup() {
    for i in $(seq 1 "$applied"); do
        eip_vars "$i"
        ip netns delete "$NS_NAME" 2>/dev/null
        ip link del "$PUB_ODEV" 2>/dev/null
        ip link del "$PRI_ODEV" 2>/dev/null
    done
    if [ "$nat_existed" = no ]; then
        nft delete table bridge nat 2>/dev/null
    fi
    rm -f "$log"
}
trap cleanup EXIT

median() { sort -n | awk '{ v[NR] = $1 } END { print v[int(NR / 2) + 1] }'; }

total=0
times=()
for i in $(seq 1 "$COUNT"); do
    eip_vars "$i"
    t0=$(now)
    applied=$i
    # Its listings complain when links change under them ("Dump was interrupted"): kept apart.
    if ! apply_eip >/dev/null 2>>"$log"; then
        echo "baseline: applying EIP #$i failed:" >&2
        tail -5 "$log" >&2
        exit 1
    fi
    spent=$(($(now) - t0))
    total=$((total + spent))
    times+=("$spent")
    watched "$i" && echo "apply.$i $(ms "$spent")"
done
first=$((COUNT < 10 ? COUNT : 10))
echo "apply.first10 $(ms "$(printf '%s\n' "${times[@]:0:first}" | median)")"
echo "apply.last10 $(ms "$(printf '%s\n' "${times[@]: -first}" | median)")"
echo "apply.total $(ms "$total")"

total=0
for i in $(seq 1 "$COUNT"); do
    eip_vars "$i"
    t0=$(now)
    remove_eip >/dev/null 2>&1
    spent=$(($(now) - t0))
    total=$((total + spent))
    watched "$i" && echo "remove.$i $(ms "$spent")"
done
echo "remove.total $(ms "$total")"
