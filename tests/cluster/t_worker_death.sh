#!/bin/bash
# A decode worker killed (-9) mid-stream: the router notices it (missed
# heartbeats or the disconnect), re-dispatches its requests (prompt +
# streamed tokens, new epoch) to the surviving decode worker, and every
# client stream completes whole and token-identical to pd-run.
. "$(dirname "$0")/lib.sh"
require_model
plan 6
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
    ARGS[i]="-n 600 --ignore-eos"
    ((i % 2)) && ARGS[i]+=" --temp 0.7 --top-k 40 --seed $((i + 3))"
done
refs $N "$T"
send_all $N "$T" &
sender=$!
# Kill d1 once it is decoding.
for _ in $(seq 1 200); do
    grep -q "\"index\":60," "$T"/out_*.jsonl 2>/dev/null && break
    sleep 0.02
done
kill -9 $D1
wait $sender
check_streams "$T" $N "decode worker killed mid-stream"
check "the router removed the dead worker" grep -q 'event=worker_removed worker=d1' "$T/router.log"
n_requeued=$(requeued_from d1)
check "the requests it held were re-dispatched ($n_requeued, on its removal)" test "$n_requeued" -ge 1
check "clients saw re-dispatched requests (timings.preemptions > 0 in $(preempted_streams "$T") streams)" \
    test "$(preempted_streams "$T")" -ge 1
check "no leaks on the survivors" \
    wait_status 's.workers.every(w => w.free_blocks == w.total_blocks) && s.active_requests == 0 && s.workers.length == 2'
