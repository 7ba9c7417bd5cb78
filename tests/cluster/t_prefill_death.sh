#!/bin/bash
# A prefill worker killed (-9) while it holds prompts (queued, in a pass, or
# with KV shipped but not yet acknowledged): the router re-dispatches what it
# had not handed over to a decode worker, the decode workers drop transfers
# that will never come, and every stream completes whole and token-identical
# to pd-run; no blocks are stranded on the survivors.
. "$(dirname "$0")/lib.sh"
require_model
plan 6
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
# The kill must find p1 holding prompts. A 400-token prompt is ~80 ms of
# prefill here, so a kill timed on the clients' output can come after p1 has
# shipped everything (it did, in about one run of three). So p1 is stopped
# (SIGSTOP, inside its 2 s liveness window) while the burst arrives: the
# router sends it about half the prompts, which wait in its socket. Once
# p2's share streams, p1 resumes, and 100 ms into its backlog (about a
# second of prefill) it is killed: prompts queued, one in a pass, KV shipped
# and not yet acknowledged.
kill -STOP $P1
send_all $N "$T" &
sender=$!
for _ in $(seq 1 60); do
    [ "$(find "$T" -name 'out_*.jsonl' -size +0 | wc -l)" -ge $((N / 3)) ] && break
    sleep 0.02
done
kill -CONT $P1
sleep 0.1
kill -9 $P1
wait $sender
check_streams "$T" $N "prefill worker killed"
check "the router removed the dead prefill worker" \
    grep -q 'event=worker_removed worker=p1' "$T/router.log"
n_requeued=$(requeued_from p1)
check "the kill hit prompts it held: the router re-dispatched $n_requeued on its removal" \
    test "$n_requeued" -ge 1
check "clients saw re-dispatched requests (timings.preemptions > 0 in $(preempted_streams "$T") streams)" \
    test "$(preempted_streams "$T")" -ge 1
check "no blocks stranded on the survivors, no request state" \
    wait_status 's.workers.every(w => w.free_blocks == w.total_blocks) && s.active_requests == 0 && s.workers.length == 3'
