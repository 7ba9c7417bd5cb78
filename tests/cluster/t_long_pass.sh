#!/bin/bash
# Heartbeats apart from compute (issue 16): a worker's router link runs on
# its own I/O thread, so a pass is as long as its size asks.
#   1. A prompt of 512+ tokens sent to an idle prefill worker is prefilled
#      in one pass (the worker's counters: one more pass, all its tokens),
#      not cut to fit half a heartbeat.
#   2. A pass planted to last 4 s (PD_TEST_STALL, twice the router's 2 s
#      liveness window) does not cost the worker its registration: the
#      router hears its beats during the pass (compute_busy_ms grows in
#      them), removes nobody, and the request completes token-identical to
#      pd-run.
. "$(dirname "$0")/lib.sh"
require_model
plan 11
start_router
export PD_TEST_STALL=2:4000 # the prefill worker's 2nd pass stalls 4 s
start_worker prefill p1
unset PD_TEST_STALL
start_worker decode d1
wait_workers 2

# 1. One pass for a 512+ token prompt.
counter() { status_field "s.workers.find(w => w.id === 'p1').counters.$1"; }
b0=$(counter prefill_batches)
t0=$(counter prefill_tokens)
P1=$(for i in $(seq 1 130); do printf 'river mountain '; done)
PROMPTS=("$P1")
ARGS=("-n 8 --ignore-eos")
refs 1 "$T"
send_all 1 "$T"
check_streams "$T" 1 "512+ token prompt"
n_prompt=$(node -e '
    const l = require("fs").readFileSync(process.argv[1], "utf8").trim().split("\n");
    console.log(JSON.parse(l[l.length - 1]).usage.prompt_tokens);' "$T/out_0.jsonl")
check "the prompt has at least 512 tokens ($n_prompt)" test "${n_prompt:-0}" -ge 512
wait_status "s.workers.find(w => w.id === 'p1').counters.prefill_tokens >= $t0 + $n_prompt" 5
b1=$(counter prefill_batches)
t1=$(counter prefill_tokens)
check "prefilled in one pass on an idle worker ($((b1 - b0)) passes, $((t1 - t0)) tokens)" \
    test $((b1 - b0)) = 1 -a $((t1 - t0)) = "$n_prompt"

# 2. A 4 s pass keeps the registration.
mkdir -p "$T/long"
PROMPTS=("${WORDS[*]:3:12}")
ARGS=("-n 40 --ignore-eos --temp 0.7 --seed 5")
refs 1 "$T/long"
send_all 1 "$T/long" &
sender=$!
max_busy=0
seen_p1=1
for _ in $(seq 1 80); do
    s=$(status_field "(w => w ? w.counters.compute_busy_ms : -1)(s.workers.find(w => w.id === 'p1'))")
    [ "$s" = -1 ] && seen_p1=0
    [ "${s:-0}" -gt "$max_busy" ] 2>/dev/null && max_busy=$s
    kill -0 $sender 2>/dev/null || break
    sleep 0.1
done
wait $sender
check "the stalled pass happened" grep -q 'event=test_stall pass=2 ms=4000' "$T/p1.log"
check "beats during the pass: compute_busy_ms reached $max_busy ms (>= 2000)" test "$max_busy" -ge 2000
check "the worker stayed registered throughout" test $seen_p1 = 1
check "the router removed no worker" bash -c "! grep -q 'event=worker_removed' '$T/router.log'"
check_streams "$T/long" 1 "request through a 4 s pass"
check "no leaks" wait_status 's.workers.every(w => w.free_blocks == w.total_blocks) && s.active_requests == 0'
