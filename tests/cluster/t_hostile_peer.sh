#!/bin/bash
# Hostile peer (issue 6, acceptance 5): broken ZMTP on every listening
# ZeroMQ endpoint -- the router's client socket, its worker socket and the
# decode worker's KV socket. Each case (hostile_peer.mjs): a frame
# announcing 4 GiB, a truncated multipart message, a million tiny frames, raw
# non-ZMTP bytes, a handshake never finished. The peer is dropped (huge,
# raw, stall: the server hangs up), every process survives, a legitimate
# request gets pd-run's answer before and after, and no process's RSS grows
# by more than RSS_BUDGET_KB.
. "$(dirname "$0")/lib.sh"
require_model
command -v node >/dev/null || skip_all "node missing"
plan 25
RSS_BUDGET_KB=${RSS_BUDGET_KB:-65536}
NET_SETS=(--set net.handshake_ms=1500)
start_router "${NET_SETS[@]}"
start_worker prefill p1 "${NET_SETS[@]}"
P_PID=$LAST_PID
start_worker decode d1 "${NET_SETS[@]}"
D_PID=$LAST_PID
wait_workers 2

rss() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
# The legitimate request's answer is pd-run's (one process, no cluster):
# an error, or the same wrong text before and after, cannot pass.
check_served "legitimate request before the attacks: pd-run's answer" "The river" -n 12
r0=$(rss "$ROUTER_PID") p0=$(rss "$P_PID") d0=$(rss "$D_PID")

KV=$(status_field 's.workers.find(w => w.role == "decode").kv_endpoint')
for ep_name in client:"$ROUTER" worker:"$ROUTER_W" kv:"$KV"; do
    name=${ep_name%%:*}
    ep=${ep_name#*:}
    if [ -z "$ep" ]; then
        not_ok "$name endpoint known"
        continue
    fi
    for c in huge truncated tiny raw stall; do
        out=$(timeout 20 node tests/cluster/hostile_peer.mjs "$ep" "$c" 2>&1)
        case $c in
        huge | raw | stall)
            if echo "$out" | grep -q '"closedByPeer":true'; then
                ok "$name socket: '$c' peer dropped"
            else
                not_ok "$name socket: '$c' peer dropped" "$out"
            fi
            ;;
        *)
            if echo "$out" | grep -q '"case"'; then
                ok "$name socket: '$c' sent"
            else
                not_ok "$name socket: '$c' sent" "$out"
            fi
            ;;
        esac
    done
    check "$name socket: router, prefill and decode workers survive" kill -0 "$ROUTER_PID" "$P_PID" "$D_PID"
done

check "router, prefill and decode workers all alive" kill -0 "$ROUTER_PID" "$P_PID" "$D_PID"
check "both workers still registered" test "$(n_workers)" = 2
check_served "legitimate request after the attacks: pd-run's answer" "The river" -n 12
for pair in router:"$ROUTER_PID":"$r0" prefill:"$P_PID":"$p0" decode:"$D_PID":"$d0"; do
    IFS=: read -r who pid base <<<"$pair"
    now=$(rss "$pid")
    if [ "$now" -gt 0 ] && [ $((now - base)) -le "$RSS_BUDGET_KB" ]; then
        ok "$who RSS within budget (${base} -> ${now} kB)"
    else
        not_ok "$who RSS within budget" "${base} -> ${now} kB, budget +${RSS_BUDGET_KB} kB"
    fi
done
exit $FAILED
