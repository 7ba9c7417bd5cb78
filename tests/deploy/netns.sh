# tests/deploy/netns.sh -- separate "hosts" on one machine: each a network
# namespace with its own address, all cabled to one switch (a bridge in a
# namespace of its own), so the test traffic never touches the machine's own
# network namespace. Sourced by tests/deploy/t_hosts.sh and scripts/bench-link.sh.
#
#   net_up                        the switch (namespace $NET-sw, bridge br0)
#   host_add NAME OCTET           namespace $NET-NAME, eth0 = $SUBNET.OCTET/24,
#                                 cabled to the switch port p-NAME; lo up
#   on_host NAME CMD...           CMD inside NAME's namespace
#   host_ip NAME                  its address
#   link_down NAME / link_up NAME unplug / plug NAME's cable (the switch port)
#   link_shape NAME RATE          tbf on NAME's eth0 egress (e.g. 1gbit)
#   net_down                      stops every process in these namespaces (SIGTERM,
#                                 then SIGKILL after 5 s) and deletes them
#
# Env: NET (name prefix, default pd$$), SUBNET (default 10.231.0: the
# addresses exist only inside these namespaces). Needs root and iproute2.
NET=${NET:-pd$$}
SUBNET=${SUBNET:-10.231.0}
NET_HOSTS=()
declare -A NET_IP

net_up() {
    ip netns add "$NET-sw" || return 1
    ip -n "$NET-sw" link set lo up
    ip -n "$NET-sw" link add br0 type bridge
    ip -n "$NET-sw" link set br0 up
}

host_add() { # NAME OCTET
    local ns=$NET-$1
    ip netns add "$ns" || return 1
    NET_HOSTS+=("$1")
    NET_IP[$1]=$SUBNET.$2
    ip link add eth0 netns "$ns" type veth peer name "p-$1" netns "$NET-sw" || return 1
    ip -n "$NET-sw" link set "p-$1" master br0
    ip -n "$NET-sw" link set "p-$1" up
    ip -n "$ns" addr add "$SUBNET.$2/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
}

on_host() { # NAME CMD...
    local ns=$NET-$1
    shift
    ip netns exec "$ns" "$@"
}

host_ip() { echo "${NET_IP[$1]}"; }
link_down() { ip -n "$NET-sw" link set "p-$1" down; }
link_up() { ip -n "$NET-sw" link set "p-$1" up; }
link_shape() { # NAME RATE: the burst covers a GSO super-packet (64 KiB)
    ip netns exec "$NET-$1" tc qdisc replace dev eth0 root tbf rate "$2" burst 256kb latency 50ms
}

net_down() {
    local h ns pids
    for h in "${NET_HOSTS[@]}" sw; do
        pids=$(ip netns pids "$NET-$h" 2>/dev/null)
        [ -n "$pids" ] && kill -TERM $pids 2>/dev/null
    done
    for _ in $(seq 1 50); do
        pids=""
        for h in "${NET_HOSTS[@]}" sw; do pids+=$(ip netns pids "$NET-$h" 2>/dev/null); done
        [ -z "$pids" ] && break
        sleep 0.1
    done
    for h in "${NET_HOSTS[@]}" sw; do
        pids=$(ip netns pids "$NET-$h" 2>/dev/null)
        [ -n "$pids" ] && kill -KILL $pids 2>/dev/null
        ip netns del "$NET-$h" 2>/dev/null
    done
    NET_HOSTS=()
}

# Namespaces of this NET still present (0 when net_down has run).
net_left() { ip netns list | grep -c "^$NET-" || true; }
