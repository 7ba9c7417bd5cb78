#!/bin/bash
# Slow reader (issue 6, acceptance 6): a client asks for long streams and
# stops reading (slow_reader.py: a raw ZMTP DEALER with a tiny receive
# buffer). The router's sends hit the high-water mark (net.hwm small); after
# router.stream_stall_ms the stalled streams are cut (event=stream_stalled,
# the requests end and free their workers), the router's RSS stays bounded,
# and other clients are served meanwhile.
. "$(dirname "$0")/lib.sh"
require_model
command -v python3 >/dev/null || skip_all "python3 missing"
RSS_BUDGET_KB=${RSS_BUDGET_KB:-32768}
# net.hwm applies to the worker socket too: dispatches then meet
# back-pressure (EAGAIN) and must be retried, not lost (a lost task would
# leave its request waiting for its deadline).
start_router --set net.hwm=4 --set router.stream_stall_ms=1000 --set router.max_tokens_limit=2000
start_worker prefill p1
start_worker decode d1
wait_workers 2
rss() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
r0=$(rss "$ROUTER_PID")

timeout 40 python3 tests/cluster/slow_reader.py "$ROUTER" 16 1500 12 >"$T/slow.out" 2>&1 &
SLOW=$!
sleep 1
out=$(timeout 30 "$PD_BIN/pd-cli" --router "$ROUTER" generate "The river" -n 8 2>&1)
check "another client is served while one stalls" test -n "$out"
cut=0
for _ in $(seq 1 100); do
    cut=$(grep -c 'event=stream_stalled' "$T/router.log" 2>/dev/null)
    [ "${cut:-0}" -gt 0 ] && break
    sleep 0.1
done
if [ "${cut:-0}" -gt 0 ]; then
    ok "stalled streams are cut after router.stream_stall_ms ($cut cut)"
else
    not_ok "stalled streams are cut after router.stream_stall_ms" "$(cat "$T/slow.out")"
fi
r1=$(rss "$ROUTER_PID")
end=$((SECONDS + 10))
while [ $SECONDS -lt $end ]; do
    [ "$(status_field 's.active_requests || 0')" = 0 ] && break
    sleep 0.5
done
check "every stalled request ends (0 active requests), none waits for its deadline" test "$(status_field 's.active_requests || 0')" = 0
if [ $((r1 - r0)) -le "$RSS_BUDGET_KB" ]; then
    ok "router RSS bounded while stalled (${r0} -> ${r1} kB)"
else
    not_ok "router RSS bounded while stalled" "${r0} -> ${r1} kB, budget +${RSS_BUDGET_KB} kB"
fi
kill "$SLOW" 2>/dev/null
wait "$SLOW" 2>/dev/null
exit $FAILED
