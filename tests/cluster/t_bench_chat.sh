#!/bin/bash
# pd-bench --dataset multi-turn against a small cluster (1 router with its
# HTTP front + 1 prefill + 1 decode, prefix caching on): 3 conversations of
# 4 turns over ZeroMQ, then 2 of 3 over HTTP (--target), each checked by
# check_chat.mjs from the --save-requests records: every turn's prompt is
# the previous prompt + the answer the server returned + a new user
# message, the server saw that prompt, turns wait for the previous answer
# and the think time, the per-turn TTFT table agrees. Then every bad
# multi-turn option fails with a clear message (exit 2).
. "$(dirname "$0")/lib.sh"
require_model
for b in pd-bench pd-tokenize; do
    [ -x "$PD_BIN/$b" ] || skip_all "$PD_BIN/$b missing (make all)"
done
command -v node >/dev/null || skip_all "node missing"
plan 38
BENCH=$PD_BIN/pd-bench

# expect_fail NAME CODE PATTERN ARGS...: pd-bench ARGS exits CODE and says PATTERN.
expect_fail() {
    local name=$1 code=$2 pat=$3
    shift 3
    timeout 20 "$BENCH" "$@" >"$T/bad.out" 2>"$T/bad.err"
    local rc=$?
    if [ $rc = "$code" ] && grep -qiE -- "$pat" "$T/bad.err"; then
        ok "$name"
    else
        not_ok "$name" "exit $rc, stderr: $(head -c 200 "$T/bad.err" | tr '\n' ' ')"
    fi
}

# ---- Bad options (no cluster needed) ----
NOWHERE=tcp://127.0.0.1:9
MT=(--router $NOWHERE -m "$MODEL" --dataset multi-turn)
expect_fail "--num-turns 0 refused" 2 "num-turns" "${MT[@]}" --num-turns 0
expect_fail "--num-turns 1001 refused" 2 "num-turns" "${MT[@]}" --num-turns 1001
expect_fail "--num-conversations 0 refused" 2 "num-conversations" "${MT[@]}" --num-conversations 0
expect_fail "--num-conversations 100001 refused" 2 "num-conversations" "${MT[@]}" --num-conversations 100001
expect_fail "--user-tokens 0 refused" 2 "user-tokens" "${MT[@]}" --user-tokens 0
expect_fail "--think-time -1 refused" 2 "think-time" "${MT[@]}" --think-time -1
expect_fail "--think-time 3600001 refused" 2 "think-time" "${MT[@]}" --think-time 3600001
expect_fail "--num-turns x refused" 2 "num-turns" "${MT[@]}" --num-turns x
expect_fail "multi-turn with --num-prompts refused" 2 "not with --num-prompts" "${MT[@]}" --num-prompts 5
expect_fail "multi-turn with --duration refused" 2 "not with --num-prompts, --duration" "${MT[@]}" --duration 5
expect_fail "--num-turns without multi-turn refused" 2 "are for --dataset multi-turn" \
    --router $NOWHERE -m "$MODEL" --num-turns 3
expect_fail "--think-time without multi-turn refused" 2 "are for --dataset multi-turn" \
    --router $NOWHERE -m "$MODEL" --think-time 3
expect_fail "multi-turn without a tokenizer refused" 2 "needs the model's tokenizer" \
    --router $NOWHERE --dataset multi-turn
expect_fail "multi-turn: unreachable router, exit 3" 3 "cannot reach the router" "${MT[@]}" \
    --connect-timeout 300

# ---- A cluster ----
start_router --set http.listen=127.0.0.1:0
HTTP=$(grep '^http=' "$T/router.ready" | cut -d= -f2-)
start_worker prefill p1
start_worker decode d1
wait_workers 2

expect_fail "multi-turn longer than the context refused before sending" 2 \
    "multi-turn: .* exceed the server's context" \
    --router "$ROUTER" -m "$MODEL" --dataset multi-turn --num-turns 1000 --user-tokens 900

N=3 TT=4 U=12 P=16 O=6 THINK=40
"$BENCH" --router "$ROUTER" -m "$MODEL" --dataset multi-turn --num-conversations $N --num-turns $TT \
    --user-tokens $U --prefix-len $P --output-len $O --think-time $THINK --ignore-eos --seed 3 \
    --json "$T/chat.json" --save-requests "$T/chat.jsonl" --no-progress >"$T/chat.out" 2>"$T/chat.err"
rc=$?
check "multi-turn over ZeroMQ: exit 0" test $rc = 0
check "the summary has the per-turn TTFT table and the turn $TT / turn 1 ratio" \
    grep -q "^Median TTFT turn $TT / turn 1:" "$T/chat.out"
checker "check_chat zmq" node tests/cluster/check_chat.mjs "$T/chat.json" "$T/chat.jsonl" "zmq" \
    $N $TT $U $P $O $THINK
# The prefix cache served the turns: every later turn reuses its conversation.
hits=$(cli status --json | node -e '
    let s = ""; process.stdin.on("data", d => s += d).on("end", () => {
        const j = JSON.parse(s);
        console.log(j.workers.reduce((a, w) => a + ((w.counters || {}).prefix_hits || 0), 0)); });')
check "later turns hit the prefix cache (prefix_hits $hits > 0)" test "${hits:-0}" -gt 0

N2=2 T2=3
"$BENCH" --target "http://$HTTP" -m "$MODEL" --dataset multi-turn --num-conversations $N2 --num-turns $T2 \
    --user-tokens $U --prefix-len $P --output-len $O --think-time 0 --ignore-eos --seed 4 \
    --json "$T/chat2.json" --save-requests "$T/chat2.jsonl" --no-progress >"$T/chat2.out" 2>"$T/chat2.err"
rc=$?
check "multi-turn over HTTP (--target): exit 0" test $rc = 0
checker "check_chat http" node tests/cluster/check_chat.mjs "$T/chat2.json" "$T/chat2.jsonl" "http" \
    $N2 $T2 $U $P $O 0 --http "$PD_BIN/pd-tokenize" "$MODEL"
check "no conversation stopped early (ZeroMQ or HTTP)" \
    bash -c '! grep -h "stops at turn" "$1" "$2"' _ "$T/chat.err" "$T/chat2.err"
