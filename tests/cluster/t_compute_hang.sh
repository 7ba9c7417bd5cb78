#!/bin/bash
# A worker whose compute thread hangs is still detected (issue 16): its I/O
# thread keeps the router link, so the router's missed-heartbeat rule
# cannot see the hang; the link's watchdog does. Decode worker d1's compute
# thread stalls for 6 s at its 40th step (PD_TEST_STALL), mid-stream, with
# worker.compute_timeout_ms = 1000: its link declares the worker stalled,
# tells the router it leaves (Drain with the reason), and the router
# re-dispatches its requests to d2: every stream completes whole and
# token-identical to pd-run. When the stall ends, d1 drops what it held
# (re-dispatched long ago), registers again and serves new requests; no
# KV block leaks anywhere.
. "$(dirname "$0")/lib.sh"
require_model
plan 14
COMMON_SETS+=(--set worker.compute_timeout_ms=1000)
start_router
start_worker prefill p1
export PD_TEST_STALL=40:6000
start_worker decode d1
unset PD_TEST_STALL
start_worker decode d2
wait_workers 3
N=8
PROMPTS=()
ARGS=()
for ((i = 0; i < N; i++)); do
    PROMPTS[i]="${WORDS[*]:i:6}"
    ARGS[i]="-n 300 --ignore-eos"
    ((i % 2)) && ARGS[i]+=" --temp 0.7 --top-k 40 --seed $((i + 3))"
done
refs $N "$T"
t0=$(date +%s%N)
send_all $N "$T"
t1=$(date +%s%N)
check_streams "$T" $N "decode worker's compute thread hung"
check "d1's compute thread stalled at its 40th step" grep -q 'event=test_stall pass=40 ms=6000' "$T/d1.log"
check "d1's link declared the stall (event=compute_stalled)" grep -q 'event=compute_stalled' "$T/d1.log"
check "the router removed d1 for the stall it reported" \
    grep -q 'event=worker_removed worker=d1 why="left (compute thread stalled' "$T/router.log"
check "not for missed heartbeats: the link beat until it declared the stall" \
    bash -c "! grep -q 'event=worker_removed worker=d1 why=\"missed heartbeats\"' '$T/router.log'"
n_requeued=$(requeued_from d1)
check "the requests d1 held were re-dispatched ($n_requeued)" test "$n_requeued" -ge 1
echo "# 8 streams of 300 tokens took $(((t1 - t0) / 1000000)) ms"
# The stall ends 6 s after it began: d1 recovers and registers again.
for _ in $(seq 1 100); do grep -q 'event=compute_recovered' "$T/d1.log" && break; sleep 0.1; done
check "d1 recovered after the stall (event=compute_recovered)" grep -q 'event=compute_recovered' "$T/d1.log"
check "d1 dropped the work it held" grep -q 'event=dropped_orphans why=compute_stalled' "$T/d1.log"
for _ in $(seq 1 50); do [ "$(n_workers)" = 3 ] && break; sleep 0.1; done
check "d1 registered again" test "$(n_workers)" = 3
check "d1 registered twice in all" test "$(grep -c 'event=registered' "$T/d1.log")" = 2
N=4
workload $N
mkdir -p "$T/after"
refs $N "$T/after"
send_all $N "$T/after"
check_streams "$T/after" $N "served after the stall"
check "no leaks" \
    wait_status 's.workers.every(w => w.free_blocks == w.total_blocks) && s.active_requests == 0 && s.workers.length == 3'
