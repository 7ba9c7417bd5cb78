#!/bin/bash
# A decode worker paused (SIGSTOP) for 3x the liveness window, then resumed:
# the router declares it dead and migrates its requests; what it sends after
# waking is rejected (no duplicate reaches a client); it registers again and
# serves new requests. Every stream completes token-identical to pd-run.
. "$(dirname "$0")/lib.sh"
require_model
plan 7
COMMON_SETS+=(--set router.liveness=3 --set worker.liveness=3) # 600 ms windows
start_router
start_worker prefill p1
start_worker decode d1
D1=$LAST_PID
start_worker decode d2
wait_workers 3
N=8
PROMPTS=()
ARGS=()
for ((i = 0; i < N; i++)); do
    PROMPTS[i]="${WORDS[*]:i:6}"
    ARGS[i]="-n 500 --ignore-eos"
    ((i % 2)) && ARGS[i]+=" --temp 0.7 --top-k 40 --seed $((i + 3))"
done
refs $N "$T"
send_all $N "$T" &
sender=$!
for _ in $(seq 1 200); do
    grep -q '"index":40,' "$T"/out_*.jsonl 2>/dev/null && break
    sleep 0.02
done
kill -STOP $D1
sleep 1.8
kill -CONT $D1
wait $sender
check_streams "$T" $N "decode worker paused"
n_requeued=$(requeued_from d1)
check "the paused worker was declared dead and the requests it held migrated ($n_requeued re-dispatched)" \
    bash -c "grep -q 'event=worker_removed worker=d1' $T/router.log && [ $n_requeued -ge 1 ]"
for _ in $(seq 1 50); do [ "$(n_workers)" = 3 ] && break; sleep 0.1; done
check "it registered again after waking" test "$(n_workers)" = 3
N=2
workload $N
mkdir -p "$T/after"
refs $N "$T/after"
send_all $N "$T/after"
check_streams "$T/after" $N "served after the pause"
check "no leaks after the pause" \
    wait_status 's.workers.every(w => w.free_blocks == w.total_blocks) && s.active_requests == 0'
