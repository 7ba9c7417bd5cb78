#!/bin/bash
# Graceful drain while the workers hold live work: SIGTERM to a decode
# worker running streams, `pd-cli drain` of a prefill worker holding
# prompts. They accept nothing new (the router stops sending them work at
# once), finish what they hold (nothing is re-dispatched), deregister and
# exit 0; every stream completes, token-identical to pd-run.
# That the drains hit live work is read from the workers themselves: each
# logs what it holds when its drain begins (event=draining prefill_tasks=N
# decode_seqs=N). The decode worker holds streams because 16 streams of 400
# tokens are running when it gets SIGTERM. A prefill pass of the tiny model
# takes about a millisecond, so the prefill worker is made to hold prompts:
# stopped (SIGSTOP, well inside its 2 s liveness window) while a second wave
# arrives, so the prompts the router sends it wait in its socket; the drain
# is requested and the worker resumed, and it reads those prompts first.
. "$(dirname "$0")/lib.sh"
require_model
plan 14
start_router
start_worker prefill p1
P1=$LAST_PID
start_worker prefill p2
start_worker decode d1
D1=$LAST_PID
start_worker decode d2
wait_workers 4
N=16
PROMPTS=()
ARGS=()
for ((i = 0; i < N; i++)); do
    PROMPTS[i]="${WORDS[*]:i:8}"
    ARGS[i]="-n 400 --ignore-eos"
    ((i % 2)) && ARGS[i]+=" --temp 0.8 --top-p 0.9 --seed $((i + 11))"
done
refs $N "$T"
W1_PROMPTS=("${PROMPTS[@]}") W1_ARGS=("${ARGS[@]}")
# The second wave: 6 prompts of 40 tokens.
M=6
mkdir -p "$T/w2"
PROMPTS=()
ARGS=()
for ((i = 0; i < M; i++)); do
    PROMPTS[i]="${WORDS[*]:i+3:20}"
    ARGS[i]="-n 40 --ignore-eos"
done
refs $M "$T/w2"
W2_PROMPTS=("${PROMPTS[@]}") W2_ARGS=("${ARGS[@]}")

PROMPTS=("${W1_PROMPTS[@]}") ARGS=("${W1_ARGS[@]}")
send_all $N "$T" &
sender=$!
# Every stream has started (each has ~1 s of decode left, half of them on d1).
for _ in $(seq 1 200); do
    [ "$(find "$T" -maxdepth 1 -name 'out_*.jsonl' -size +0 | wc -l)" -ge $N ] && break
    sleep 0.02
done
kill -TERM $D1

kill -STOP $P1
PROMPTS=("${W2_PROMPTS[@]}") ARGS=("${W2_ARGS[@]}")
send_all $M "$T/w2" &
sender2=$!
# The wave has reached the router once p2's share streams.
for _ in $(seq 1 50); do
    [ -n "$(find "$T/w2" -name 'out_*.jsonl' -size +0 2>/dev/null)" ] && break
    sleep 0.02
done
check "pd-cli drain p1 is accepted" bash -c "'$PD_BIN/pd-cli' --router '$ROUTER' drain p1 | grep -q 'draining p1'"
kill -CONT $P1
wait $D1
rc_d=$?
wait $P1
rc_p=$?
wait $sender
wait $sender2
check "drained decode worker exits 0" test $rc_d = 0
check "drained prefill worker exits 0" test $rc_p = 0
held() { sed -n "s/.*event=draining .*$2=\([0-9]*\).*/\1/p" "$T/$1.log" | head -1; }
check "the decode worker held streams when told to drain ($(held d1 decode_seqs) running)" \
    test "$(held d1 decode_seqs)" -ge 1
check "the prefill worker held prompts when told to drain ($(held p1 prefill_tasks) tasks)" \
    test "$(held p1 prefill_tasks)" -ge 1
check "both finished what they held before leaving (idle at exit, not cut by the drain deadline)" \
    bash -c "grep -q 'event=stopped prefill_busy=0 decode_busy=0' $T/d1.log &&
             grep -q 'event=stopped prefill_busy=0 decode_busy=0' $T/p1.log"
check "the decode worker's streams were not taken from it (0 re-dispatched, $(requeued_from d1))" \
    test "$(requeued_from d1)" = 0
# The prefill worker leaves once every KV transfer it made is acknowledged,
# but the router hears of a hand-off only from the decode worker's first
# token: a request whose KV had arrived and whose first decode token had
# not is re-dispatched when p1 leaves (work done twice, output unchanged).
# What must not happen is a prompt left unprefilled (generated=0).
unfinished() {
    awk '/ event=worker_removed worker=p1 / { on = 1; next }
         on && / event=requeue / { if ($0 ~ / generated=0 /) n++; next }
         on && / event=send_failed / { next }
         { on = 0 } END { print n + 0 }' "$T/router.log"
}
check "the prefill worker left no prompt unprefilled ($(requeued_from p1) re-dispatched, $(unfinished) of them not prefilled)" \
    test "$(unfinished)" = 0
check_streams "$T" $N "drain under load (the streams d1 held)"
check_streams "$T/w2" $M "drain under load (the prompts p1 held)"
check "no request failed" test "$(status_field 's.requests_failed')" = 0
check "the router forgot both drained workers" test "$(n_workers)" = 2
