#!/bin/bash
# Preemption under KV pressure: a decode worker with 30 blocks (480
# positions) gets 6 concurrent requests that need ~13 blocks each. It must
# preempt (hand the youngest back to the router, which re-prefills prompt +
# generated tokens), never crash or drop, and every client stream must be
# whole (no gap, no duplicate) and token-identical to pd-run.
. "$(dirname "$0")/lib.sh"
require_model
plan 5
start_router
start_worker prefill p1
start_worker decode d1 --set kv.num_blocks=30
wait_workers 2
N=6
PROMPTS=()
ARGS=()
for ((i = 0; i < N; i++)); do
    PROMPTS[i]="${WORDS[*]:i:10} ${WORDS[*]:0:i}"
    ARGS[i]="-n 180 --ignore-eos"
    ((i % 2)) && ARGS[i]+=" --temp 0.9 --top-p 0.95 --seed $((7 + i))"
done
refs $N "$T"
send_all $N "$T"
check_streams "$T" $N "preemption"
check "the decode worker preempted under block pressure" \
    wait_status 's.workers.find(w => w.role == "decode").counters.preemptions > 0'
check "clients saw re-prefilled requests (timings.preemptions)" \
    bash -c "cat $T/out_*.jsonl | grep -q '\"preemptions\":[1-9]'"
check "no leaks after preemption" \
    wait_status 's.workers.every(w => w.free_blocks == w.total_blocks) && s.active_requests == 0'
