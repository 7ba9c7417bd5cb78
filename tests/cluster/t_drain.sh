#!/bin/bash
# Graceful drain: SIGTERM to a decode worker, `pd-cli drain` of a prefill
# worker, while they
# hold live streams. They accept nothing new (the router stops sending them
# work at once), finish what they hold, deregister and exit 0; every stream
# completes, token-identical to pd-run.
. "$(dirname "$0")/lib.sh"
require_model
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
send_all $N "$T" &
sender=$!
for _ in $(seq 1 200); do
    grep -q '"index":20,' "$T"/out_*.jsonl 2>/dev/null && break
    sleep 0.02
done
kill -TERM $D1
check "pd-cli drain p1 is accepted" bash -c "'$PD_BIN/pd-cli' --router '$ROUTER' drain p1 | grep -q 'draining p1'"
wait $D1
rc_d=$?
wait $P1
rc_p=$?
wait $sender
check "drained decode worker exits 0" test $rc_d = 0
check "drained prefill worker exits 0" test $rc_p = 0
check "the decode worker was holding streams when told to drain" \
    bash -c "grep -q 'event=stopped' $T/d1.log && ! grep -q 'event=stopped prefill_busy=0 decode_busy=1' $T/d1.log"
node tests/cluster/check_streams.mjs "$T" $N "drain under load" | tee "$T/check.txt"
grep -q '^not ok' "$T/check.txt" && FAILED=1
check "no request failed" test "$(status_field 's.requests_failed')" = 0
check "the router forgot both drained workers" test "$(n_workers)" = 2
