#!/bin/bash
# Cancel and deadlines: Ctrl-C in pd-cli cancels its request (final chunk
# "cancelled", exit 130); a request past its deadline ends with
# DEADLINE_EXCEEDED; either way the workers free the request's blocks and
# the router forgets it.
. "$(dirname "$0")/lib.sh"
require_model
plan 5
start_router
start_worker prefill p1
start_worker decode d1
wait_workers 2

"$PD_BIN/pd-cli" --router "$ROUTER" generate "river mountain" -n 4000 --ignore-eos --json \
    >"$T/cancel.jsonl" 2>"$T/cancel.err" &
cli_pid=$!
# Cancel once tokens are flowing.
for _ in $(seq 1 100); do
    [ -s "$T/cancel.jsonl" ] && break
    sleep 0.02
done
kill -INT $cli_pid
wait $cli_pid
rc=$?
check "Ctrl-C: pd-cli exits 130" test $rc = 130
check "Ctrl-C: the stream ends with one final chunk, finish_reason cancelled" \
    bash -c "[ \$(grep -c '\"final\":true' $T/cancel.jsonl) = 1 ] && tail -1 $T/cancel.jsonl | grep -q '\"finish_reason\":\"cancelled\"'"

out=$(timeout 20 "$PD_BIN/pd-cli" --router "$ROUTER" generate "river" -n 4000 --ignore-eos \
    --timeout 100 2>&1 >/dev/null)
rc=$?
check "deadline: DEADLINE_EXCEEDED after --timeout 100" \
    bash -c "[ $rc = 1 ] && echo '$out' | grep -q DEADLINE_EXCEEDED"
check "cancel and deadline leave no blocks and no request state" \
    wait_status 's.workers.every(w => w.free_blocks == w.total_blocks && w.running_seqs == 0) && s.active_requests == 0'
check "the cluster still serves" \
    bash -c "'$PD_BIN/pd-cli' --router '$ROUTER' generate hello -n 5 >/dev/null"
