#!/bin/bash
# A prefill worker killed (-9) while it holds prompts (queued, in a pass, or
# with KV shipped but not yet acknowledged): the router re-dispatches what it
# had not handed over to a decode worker, the decode workers drop transfers
# that will never come, and every stream completes whole and token-identical
# to pd-run; no blocks are stranded on the survivors.
. "$(dirname "$0")/lib.sh"
require_model
start_router
start_worker prefill p1
P1=$LAST_PID
start_worker prefill p2
start_worker decode d1
start_worker decode d2
wait_workers 4
N=24
PROMPTS=()
ARGS=()
for ((i = 0; i < N; i++)); do
    w=""
    for ((k = 0; k < 150 + i * 4; k++)); do w+="${WORDS[$(((i * 13 + k * 3) % ${#WORDS[@]}))]} "; done
    PROMPTS[i]="${w% }"
    ARGS[i]="-n 40 --ignore-eos"
    ((i % 2)) && ARGS[i]+=" --temp 0.8 --top-p 0.9 --seed $((i + 5))"
done
refs $N "$T"
send_all $N "$T" &
sender=$!
# Kill p1 as soon as it has started prefilling.
for _ in $(seq 1 400); do
    grep -q 'event=registered' "$T/p1.log" && [ -s "$T/out_0.jsonl" ] && break
    sleep 0.005
done
kill -9 $P1
wait $sender
node tests/cluster/check_streams.mjs "$T" $N "prefill worker killed" | tee "$T/check.txt"
grep -q '^not ok' "$T/check.txt" && FAILED=1
check "the router removed the dead prefill worker" \
    grep -q 'event=worker_removed worker=p1' "$T/router.log"
check "no blocks stranded on the survivors, no request state" \
    wait_status 's.workers.every(w => w.free_blocks == w.total_blocks) && s.active_requests == 0 && s.workers.length == 3'
