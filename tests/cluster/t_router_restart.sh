#!/bin/bash
# The router killed (-9) and restarted on the same endpoints: workers notice
# the silence (or the "register first" answer), drop what they held,
# register again, and new requests are served correctly within 5 s.
. "$(dirname "$0")/lib.sh"
require_model
plan 3
start_router
start_worker prefill p1
start_worker decode d1
wait_workers 2
cli generate "river mountain" -n 30 --ignore-eos >/dev/null
kill -9 $ROUTER_PID
wait $ROUTER_PID 2>/dev/null
C=${ROUTER##*:}
W=${ROUTER_W##*:}
t0=$SECONDS
"$PD_BIN/pd-router" --model "$MODEL" "${COMMON_SETS[@]}" \
    --set router.client_endpoint=tcp://127.0.0.1:$C --set router.worker_endpoint=tcp://127.0.0.1:$W \
    --log-file "$T/router2.log" 2>"$T/router2.stderr" &
PIDS+=($!)
wait_workers 2
check "workers re-registered within 5 s of the restart" test $((SECONDS - t0)) -le 5
N=4
workload $N
refs $N "$T"
send_all $N "$T"
check_streams "$T" $N "after a router restart"
