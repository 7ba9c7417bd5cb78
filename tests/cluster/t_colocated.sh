#!/bin/bash
# Colocated mode: 1 router + 2 workers with --role both (one started as
# pd-decode, one as pd-prefill): 64 concurrent requests, every stream whole
# and token-identical to pd-run, no KV shipped, no leaks.
. "$(dirname "$0")/lib.sh"
require_model
plan 8
# 64 clients start at once: under a sanitizer their start-up alone starves
# the workers of CPU for seconds, past the 2 s liveness window (seen under
# ASan: workers dropped as dead while idle). The window is not under test here.
[ -n "$SANITIZER" ] && COMMON_SETS+=(--set worker.liveness=50 --set router.liveness=50)
start_router
start_worker both c1
"$PD_BIN/pd-prefill" --role both --id c2 --model "$MODEL" --router "$ROUTER_W" \
    "${COMMON_SETS[@]}" --log-file "$T/c2.log" 2>"$T/c2.stderr" &
PIDS+=($!)
wait_workers 2
ok "two colocated workers register"
N=64
workload $N
refs $N "$T"
send_all $N "$T"
check_streams "$T" $N "64 requests, 2 colocated"
check "both colocated workers served requests" \
    wait_status 's.workers.filter(w => w.counters.prefill_batches > 0 && w.counters.steps > 0).length == 2'
check "continuous batching in colocated workers" \
    test "$(status_field 's.workers.some(w => w.counters.multi_seq_steps > 0 && w.counters.joins_while_running > 0)')" = true
check "no KV shipped between colocated workers" \
    test "$(status_field 's.workers.reduce((a, w) => a + w.counters.kv_sent_bytes + w.counters.kv_recv_bytes, 0)')" = 0
check "no leaks: free blocks back to total" \
    wait_status 's.workers.every(w => w.free_blocks == w.total_blocks)'
check "no leaks: router holds no request state" \
    test "$(status_field 's.active_requests + s.queued_requests')" = 0
