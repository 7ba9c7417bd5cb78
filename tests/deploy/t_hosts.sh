#!/bin/bash
# Hosts: the cluster spread over separate network stacks (tests/deploy/netns.sh:
# one namespace per host, each with its own address, cabled to one bridge),
# CURVE on every link, every process binding 0.0.0.0 and the decode workers
# announcing their own address (decode.kv_advertise, by route):
#   1. router, 2 prefill, 2 decode and a client host: 50 requests
#      token-identical to pd-run; a plain-text client is refused;
#   2. while long streams flow: a decode worker added on a new host, another
#      drained (pd-cli drain): it exits 0, nothing fails;
#   3. a decode host's cable pulled for twice the liveness window and
#      plugged back: the router re-dispatches its streams (operations.md:
#      P1-P4), the worker registers again, every stream whole and
#      token-identical, KV blocks back to their idle baseline;
#   4. the prefill hosts' links shaped to 1 Gbit/s with tc tbf: the KV goes
#      through the shapers (their counters), no transfer beats the wire rate,
#      streams still identical; transfer times unshaped and shaped are
#      printed (scripts/bench-link.sh measures the same on the 110M model for
#      docs/benchmarks.md).
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/netns.sh"
require_model
[ "$(id -u)" = 0 ] || skip_all "network namespaces need root"
command -v tc >/dev/null && command -v ip >/dev/null || scripts/docker-deps.sh >/dev/null 2>&1
command -v tc >/dev/null || skip_all "tc missing (iproute2)"
on_exit net_down
net_up || skip_all "cannot create network namespaces here"
plan 25
for h in router:1 p1:11 p2:12 d1:21 d2:22 d3:23 client:100; do
    host_add "${h%%:*}" "${h#*:}" || { not_ok "host ${h%%:*} created"; exit 1; }
done
ok "8 namespaces on one bridge: router, p1, p2, d1, d2, d3, client ($SUBNET.0/24)"

pair() { local k; k=$("$PD_BIN/pd-cli" keygen); PUB=$(echo "$k" | sed -n 's/^public_key: "\(.*\)"$/\1/p'); SEC=$(echo "$k" | sed -n 's/^secret_key: "\(.*\)"$/\1/p'); }
pair; SPUB=$PUB; SSEC=$SEC
pair; WPUB=$PUB; WSEC=$SEC
pair; CPUB=$PUB; CSEC=$SEC
SERVER=(--set security.curve=true --set "security.server_public_key=$SPUB"
        --set "security.server_secret_key=$SSEC" --set "security.allowed_keys=$WPUB,$CPUB")
WORKER=(--set security.curve=true --set "security.server_public_key=$SPUB"
        --set "security.client_public_key=$WPUB" --set "security.client_secret_key=$WSEC")
DECODE=(--set decode.kv_endpoint=tcp://0.0.0.0:7000 --set "security.server_secret_key=$SSEC"
        --set "security.allowed_keys=$WPUB")
export PD_CURVE_SERVER_KEY=$SPUB PD_CURVE_PUBLIC_KEY=$CPUB PD_CURVE_SECRET_KEY=$CSEC

RIP=$(host_ip router)
ROUTER=tcp://$RIP:5555
ROUTER_W=tcp://$RIP:5556
cli() { on_host client "$PD_BIN/pd-cli" --router "$ROUTER" "$@"; }
run_on() { # HOST NAME BIN ARGS...: a process on HOST, logs $T/NAME.*
    local h=$1 name=$2 bin=$3
    shift 3
    on_host "$h" "$PD_BIN/$bin" --model "$MODEL" "${COMMON_SETS[@]}" --log-file "$T/$name.log" \
        "$@" 2>"$T/$name.stderr" &
    PIDS+=($!)
    LAST_PID=$!
}
worker_on() { # HOST ROLE
    local extra=()
    [ "$2" = decode ] && extra=("${DECODE[@]}")
    run_on "$1" "$1" "pd-$2" --role "$2" --id "$1" --router "$ROUTER_W" "${WORKER[@]}" "${extra[@]}"
}
run_on router router pd-router --set router.client_endpoint=tcp://0.0.0.0:5555 \
    --set router.worker_endpoint=tcp://0.0.0.0:5556 "${SERVER[@]}"
worker_on p1 prefill
worker_on p2 prefill
worker_on d1 decode
D1=$LAST_PID
worker_on d2 decode
wait_workers 4
ok "4 workers on 4 hosts register with the router over CURVE"
want="tcp://$(host_ip d1):7000 tcp://$(host_ip d2):7000"
got=$(status_field 's.workers.filter(w => w.role == "decode").map(w => w.kv_endpoint).sort().join(" ")')
check "decode workers bound 0.0.0.0 and announce their own host's address ($got)" test "$got" = "$want"

# ---- 1. 50 requests from the client host ----
t0=$SECONDS
send_ns() { # N DIR: every request of the workload at once, from the client host
    local n=$1 dir=$2 i pids=()
    for ((i = 0; i < n; i++)); do
        # shellcheck disable=SC2086
        timeout 120 ip netns exec "$NET-client" "$PD_BIN/pd-cli" --router "$ROUTER" generate \
            "${PROMPTS[i]}" ${ARGS[i]} --json >"$dir/out_$i.jsonl" 2>"$dir/out_$i.err" &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p"; done
}
N=50
workload $N
refs $N "$T"
send_ns $N "$T"
check_streams "$T" $N "50 requests across 5 hosts over CURVE"
out=$(env -u PD_CURVE_SERVER_KEY timeout 20 ip netns exec "$NET-client" "$PD_BIN/pd-cli" \
    --router "$ROUTER" generate hello -n 4 --timeout 1500 2>&1)
check "a plain-text client on the client host is not served" test $? = 1
echo "# phase 1: $(since $t0) s"

# Long streams for the phases below (the same 10 requests each time).
N2=10
PROMPTS=()
ARGS=()
for ((i = 0; i < N2; i++)); do
    PROMPTS[i]="${WORDS[*]:i:8}"
    ARGS[i]="-n 1200 --ignore-eos"
    ((i % 2)) && ARGS[i]+=" --temp 0.7 --top-k 40 --seed $((i + 11))"
done
mkdir -p "$T/refs2"
refs $N2 "$T/refs2"
batch() { mkdir -p "$T/$1"; cp "$T"/refs2/ref_* "$T/$1/"; send_ns $N2 "$T/$1"; }
mid_stream() { # DIR: until some stream has passed index 100
    for _ in $(seq 1 400); do
        grep -q '"index":1[0-9][0-9],' "$T/$1"/out_*.jsonl 2>/dev/null && return 0
        sleep 0.05
    done
    return 1
}

# ---- 2. a worker added, another drained, while streams flow ----
t0=$SECONDS
batch add &
sender=$!
mid_stream add
worker_on d3 decode
check "decode worker d3 on a new host joins while streams flow" \
    wait_status 's.workers.some(w => w.id == "d3" && w.state == "ready")'
held=$(status_field '(s.workers.find(w => w.id == "d1") || {}).assigned')
cli drain d1 >/dev/null
check "pd-cli drain d1 while it holds $held streams" true
wait $D1
rc=$?
check "the drained worker finished what it held and exited 0" test "$rc" = 0
wait $sender
check_streams "$T/add" $N2 "worker added + worker drained"
check "d1 has left the router's table, d3 is in it" \
    wait_status '!s.workers.some(w => w.id == "d1") && s.workers.some(w => w.id == "d3")'
echo "# phase 2: $(since $t0) s"

# ---- 3. a decode host's cable pulled and plugged back ----
t0=$SECONDS
cutdir=cut
batch $cutdir &
sender=$!
mid_stream $cutdir
# The victim: a decode host the router still counts streams on once its
# cable is out (on a loaded machine the streams picked may end first: then
# plug it back and try again with a new batch).
cut_one() {
    victim=$(status_field 's.workers.filter(w => w.role == "decode" && w.assigned > 0).map(w => w.id)[0] || ""')
    [ -n "$victim" ] && link_down "$victim" || return 1
    held=$(status_field "(s.workers.find(w => w.id == '$victim') || {}).assigned")
    [ "${held:-0}" -gt 0 ] && return 0
    link_up "$victim"
    return 1
}
for try in 1 2 3; do
    cut_one && break
    wait $sender
    echo "# try $try: no stream left on a decode host at the cut; again"
    cutdir=cut$try
    batch $cutdir &
    sender=$!
    mid_stream $cutdir
done
if [ "${held:-0}" -gt 0 ]; then
    ok "cable of $victim pulled while it holds $held streams"
else
    not_ok "a decode host holding streams is cut off" "victim '$victim'"
fi
# Liveness is 10 beats of 200 ms (lib.sh): 2 s. Out for twice that.
sleep 4
link_up "$victim"
wait $sender
check_streams "$T/$cutdir" $N2 "link cut and restored"
check "the router declared $victim dead and re-dispatched its streams" \
    bash -c "grep -q 'event=worker_removed worker=$victim' '$T/router.log' && grep -q 'event=requeue' '$T/router.log'"
check "$victim registers again once its link is back" \
    wait_status "s.workers.some(w => w.id == '$victim' && w.state == 'ready')" 15
check "no request failed" test "$(status_field 's.requests_failed')" = 0
check "idle baseline: every worker's KV blocks free, no request held" \
    wait_status 's.workers.every(w => w.free_blocks == w.total_blocks) && s.active_requests == 0' 20
echo "# phase 3: $(since $t0) s"

# ---- 4. KV shipping over 1 Gbit/s links ----
# Long prompts, 2 output tokens, one request at a time (so a transfer's time
# is the link's, not a queue's): first unshaped, then with the prefill
# hosts' egress shaped to 1 Gbit/s.
t0=$SECONDS
kv_sum() { # sent bytes, transfers, transfer us over the prefill workers
    status_field 's.workers.filter(w => w.role == "prefill").reduce((a, w) =>
        [a[0] + w.counters.kv_sent_bytes, a[1] + w.counters.kv_transfers, a[2] + w.counters.kv_transfer_us],
        [0, 0, 0]).join(" ")'
}
N4=6
PROMPTS=()
ARGS=()
for ((i = 0; i < N4; i++)); do
    w=""
    for ((k = 0; k < 230 + 3 * i; k++)); do w+="${WORDS[$(((i * 7 + k * 3) % ${#WORDS[@]}))]} "; done
    PROMPTS[i]="${w% }"
    ARGS[i]="-n 2"
done
mkdir -p "$T/plain" "$T/shaped"
refs $N4 "$T/plain"
cp "$T"/plain/ref_* "$T/shaped/"
one_by_one() { # DIR
    local i
    for ((i = 0; i < N4; i++)); do
        timeout 60 ip netns exec "$NET-client" "$PD_BIN/pd-cli" --router "$ROUTER" generate \
            "${PROMPTS[i]}" ${ARGS[i]} --json >"$1/out_$i.jsonl" 2>"$1/out_$i.err"
    done
}
kv_after() { # N: kv_sum once the workers' heartbeats report N transfers
    local v
    for _ in $(seq 1 50); do
        v=$(kv_sum)
        [ "$(echo "$v" | cut -d' ' -f2)" -ge "$1" ] && break
        sleep 0.1
    done
    echo "$v"
}
read -r b0 n0 u0 <<<"$(kv_sum)"
one_by_one "$T/plain"
read -r b1 n1 u1 <<<"$(kv_after $((n0 + N4)))"
link_shape p1 1gbit && link_shape p2 1gbit
one_by_one "$T/shaped"
read -r b2 n2 u2 <<<"$(kv_after $((n1 + N4)))"
check_streams "$T/shaped" $N4 "through 1 Gbit/s links"
tc_stat() { on_host "$1" tc -s qdisc show dev eth0 | sed -n "s/.*$2 \([0-9]*\).*/\1/p" | head -1; }
shaped_bytes=$(($(tc_stat p1 Sent) + $(tc_stat p2 Sent)))
over=$(($(tc_stat p1 overlimits) + $(tc_stat p2 overlimits)))
check "the KV went through the 1 Gbit/s shapers ($shaped_bytes bytes via tbf, $((b2 - b1)) of KV)" \
    test "$shaped_bytes" -ge "$((b2 - b1))" -a "$((n2 - n1))" = "$N4"
check "the shapers held packets back (overlimits $over)" test "$over" -gt 0
# What the shaper allows: each transfer's first 256 KiB (tbf's burst, refilled
# between requests) at line rate, the rest at 1 Gbit/s.
check "shaped transfers are no faster than the shaper allows ($((u2 - u1)) us for $((b2 - b1)) bytes)" \
    test "$((u2 - u1))" -ge "$(((b2 - b1 - N4 * 262144) * 8 / 1000))"
awk -v b="$((b1 - b0))" -v n="$((n1 - n0))" -v u="$((u1 - u0))" -v B="$((b2 - b1))" -v N="$((n2 - n1))" -v U="$((u2 - u1))" 'BEGIN {
    printf "# KV per request %.2f MB; ship-to-ack unshaped %.2f ms (%.2f Gbit/s), at 1 Gbit/s %.2f ms (%.2f Gbit/s)\n",
        b / n / 1e6, u / n / 1000, b * 8 / u / 1000, U / N / 1000, B * 8 / U / 1000 }'
echo "# phase 4: $(since $t0) s"

# ---- teardown, checked ----
net_down
check "every namespace, bridge and veth removed" test "$(net_left)" = 0
