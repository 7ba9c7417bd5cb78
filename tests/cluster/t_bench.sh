#!/bin/bash
# pd-bench against a small local cluster (1 router + 1 prefill + 1 decode):
# a 30-request run whose JSON obeys the metric definitions (check_bench.mjs),
# --append, the file and sharegpt datasets, --plot, Ctrl-C, and every bad
# option failing with a clear message and its exit code.
. "$(dirname "$0")/lib.sh"
require_model
for b in pd-bench pd-tokenize pd-plan; do
    [ -x "$PD_BIN/$b" ] || skip_all "$PD_BIN/$b missing (make all)"
done
plan 57
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
NOWHERE=tcp://127.0.0.1:9 # discard port: nothing answers
expect_fail "bad option: --request-rate 0 refused" 2 "request-rate.*> 0" --router $NOWHERE --request-rate 0
expect_fail "bad option: --request-rate -3 refused" 2 "request-rate" --router $NOWHERE --request-rate -3
expect_fail "bad option: --request-rate abc refused" 2 "request-rate.*not a number" --request-rate abc
expect_fail "bad option: unknown dataset refused" 2 "unknown dataset 'nope'" --dataset nope
expect_fail "bad option: unreadable dataset file refused" 2 "/nonexistent/prompts.txt.*No such file" \
    --dataset file --dataset-path /nonexistent/prompts.txt
expect_fail "bad option: --num-prompts 0 refused" 2 "num-prompts" --num-prompts 0
expect_fail "bad option: --goodput with an unknown metric refused" 2 "unknown metric 'foo'" --goodput foo:3
expect_fail "bad option: random dataset without a tokenizer refused" 2 "needs the model's tokenizer" \
    --router $NOWHERE
expect_fail "bad option: --target with a non-http URL refused" 2 "not an http://HOST:PORT URL" \
    --target ftp://x -m "$MODEL"
expect_fail "missing server: clear error, exit 3" 3 "cannot reach the router at $NOWHERE" \
    --router $NOWHERE -m "$MODEL" --connect-timeout 500 --num-prompts 2
expect_fail "bad option: unknown flag refused" 2 "unknown option '--frobnicate'" --frobnicate
expect_fail "bad option: unwritable --json refused before running" 2 "--json /nonexistent/dir/r.json" \
    --router $NOWHERE -m "$MODEL" --json /nonexistent/dir/r.json
expect_fail "bad option: unwritable --plot directory refused" 2 "--plot /nonexistent/dir/p" \
    --router $NOWHERE -m "$MODEL" --plot /nonexistent/dir/p

# ---- A cluster ----
start_router
start_worker prefill p1
start_worker decode d1
wait_workers 2

N=30
t0=$SECONDS
"$BENCH" --router "$ROUTER" -m "$MODEL" --num-prompts $N --request-rate 40 --burstiness 0.5 \
    --input-len 24 --output-len 12 --range-ratio 0.5 --prefix-len 8 --ignore-eos --seed 7 \
    --goodput ttft:5000 tpot:1000 --json "$T/r.json" --save-requests "$T/req.jsonl" \
    --plot "$T/plot" --no-progress >"$T/bench.out" 2>"$T/bench.err"
rc=$?
check "pd-bench 30 requests: exit 0 (took $((SECONDS - t0)) s)" test $rc = 0
check "pd-bench prints the summary table" grep -q "^Successful requests: *$N" "$T/bench.out"
checker "check_bench" node tests/cluster/check_bench.mjs "$T/r.json" "$T/req.jsonl" $N "30 random requests" \
    --exact-output
check "--plot writes the latency CDF and throughput PNGs" \
    test -s "$T/plot_latency_cdf.png" -a -s "$T/plot_throughput.png"

# A tight SLO nobody meets: goodput 0 while throughput is not; --append adds a line.
"$BENCH" --router "$ROUTER" -m "$MODEL" --num-prompts 6 --max-concurrency 2 --input-len 8 \
    --output-len 4 --goodput ttft:0.001 --json "$T/r.json" --append --save-requests "$T/req2.jsonl" \
    --no-progress >"$T/bench2.out" 2>&1
check "--append: the JSON file has two result lines" test "$(wc -l <"$T/r.json")" = 2
check "--goodput ttft:0.001: goodput 0, throughput > 0" node -e '
    const l = require("fs").readFileSync(process.argv[1], "utf8").trim().split("\n");
    const r = JSON.parse(l[1]);
    process.exit(r.request_goodput === 0 && r.request_throughput > 0 && r.completed === 6
                 && r.max_concurrent_requests <= 2 ? 0 : 1);' "$T/r.json"

# The file dataset (text prompts, lengths from the router's usage without -m).
printf 'the quick brown fox\n\njumps over the lazy dog\nseven wizards hex\n' >"$T/prompts.txt"
"$BENCH" --router "$ROUTER" --dataset file --dataset-path "$T/prompts.txt" --output-len 5 \
    --json "$T/f.json" --save-requests "$T/f.jsonl" --no-progress >"$T/bench3.out" 2>&1
check "--dataset file: every non-empty line is one request" node -e '
    const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
    process.exit(r.completed === 3 && r.total_input_tokens > 3 ? 0 : 1);' "$T/f.json"

# The ShareGPT layout: the reply's token length is the output length.
cat >"$T/sharegpt.json" <<'EOF'
[{"id": "a", "conversations": [{"from": "human", "value": "Tell me a story about a quick brown fox please"},
                               {"from": "gpt", "value": "Once upon a time a fox jumped over the lazy dog and ran away"}]},
 {"id": "b", "conversations": [{"from": "system", "value": "be brief"},
                               {"from": "human", "value": "What do seven wizards do on a quiet day"},
                               {"from": "gpt", "value": "They hex jovial sphinxes and pack boxes with liquor jugs"}]},
 {"id": "c", "conversations": [{"from": "human", "value": "only one turn"}]},
 {"id": "d"}]
EOF
"$BENCH" --router "$ROUTER" -m "$MODEL" --dataset sharegpt --dataset-path "$T/sharegpt.json" \
    --ignore-eos --json "$T/s.json" --save-requests "$T/s.jsonl" --no-progress >"$T/bench4.out" 2>&1
# The expected output lengths: pd-tokenize's count of each reply (no BOS).
REPLY_LENS=$(for r in "Once upon a time a fox jumped over the lazy dog and ran away" \
                      "They hex jovial sphinxes and pack boxes with liquor jugs"; do
                 printf '%s' "$r" | od -An -tx1 | tr -d ' \n'; echo
             done | "$PD_BIN/pd-tokenize" -m "$MODEL" --no-special | awk '{print NF}' | sort -n | xargs)
check "--dataset sharegpt: 2 usable conversations, output = the reply's token length ($REPLY_LENS)" node -e '
    const fs = require("fs");
    const r = JSON.parse(fs.readFileSync(process.argv[1], "utf8"));
    const q = fs.readFileSync(process.argv[2], "utf8").trim().split("\n").map(JSON.parse);
    const lens = q.map(x => x.expected_output_len).sort((a, b) => a - b).join(" ");
    process.exit(r.completed === 2 && lens === process.argv[3]
                 && q.every(x => x.output_len === x.expected_output_len) ? 0 : 1);' \
    "$T/s.json" "$T/s.jsonl" "$REPLY_LENS"
echo '[{"conversations": [' >"$T/broken.json"
expect_fail "bad option: malformed ShareGPT file refused" 2 "broken.json: line" --router "$ROUTER" \
    -m "$MODEL" --dataset sharegpt --dataset-path "$T/broken.json"

# --profile: measured costs that pd-plan accepts.
"$BENCH" --router "$ROUTER" -m "$MODEL" --profile "$T/prof.json" --profile-max-context 64 \
    --profile-max-batch 4 >"$T/prof.out" 2>&1
check "--profile: exit 0" test $? = 0
check "--profile: prefill, KV transfer and decode points, all positive" node -e '
    const p = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
    const pos = (a, ks) => a.every(x => ks.every(k => typeof x[k] === "number" && x[k] > 0));
    process.exit(p.prefill.filter(x => !("cached" in x)).length === 6 && pos(p.prefill, ["tokens", "batch", "ms", "ttft_ms"])
                 && p.prefill.every(x => x.tokens <= 65) && p.decode.every(x => x.context <= 64 + 1 + 16)
                 && p.kv_transfer.length === 3 && p.decode.length === 6
                 && pos(p.decode, ["batch", "context", "ms"]) && p.n_prefill_workers === 1
                 && p.n_decode_workers === 1 && p.overhead_ms >= 0 ? 0 : 1);' "$T/prof.json"
check "--profile: interference factors measured on the 1P+1D cluster (decode step, prefill pass; 0.5..10)" node -e '
    const i = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")).interference || {};
    console.log(`# interference ${JSON.stringify(i)}`);
    const r = (x) => typeof x === "number" && x >= 0.5 && x <= 10;
    process.exit(r(i.decode) && r(i.prefill) && i.decode_batch === 4 && i.prefill_tokens === 64 ? 0 : 1);' "$T/prof.json"
# Passes after a cached prefix: [BOS] + K = 16 and 32 shared tokens + 16 of
# their own; the worker reuses the prefix's whole blocks (16, 32 tokens) and
# computes the other 17.
check "--profile: passes after a cached prefix (K 16 and 32, 16 own tokens): 17 computed after 16 and 32 cached" node -e '
    const p = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
    const c = p.prefill.filter(x => "cached" in x);
    console.log(`# cached points ${JSON.stringify(c)}; prefill_kv_blocks ${p.prefill_kv_blocks}`);
    process.exit(c.map(x => x.tokens + "/" + x.cached).join(" ") === "17/16 17/32" &&
                 c.every(x => x.ms > 0 && x.batch === 1) && p.prefill_kv_blocks === 1024 ? 0 : 1);' "$T/prof.json"
"$PD_BIN/pd-plan" --profile "$T/prof.json" --request-rate 5 --input-len 32 --output-len 16 \
    --ttft-slo 1000 --tpot-slo 100 --max-workers 3 >"$T/plan.out" 2>&1
check "pd-plan accepts the measured profile" test $? = 0
expect_fail "bad option: --profile without a tokenizer refused" 2 "--profile needs" \
    --router "$ROUTER" --profile "$T/x.json"

# Ctrl-C: what finished is reported, the rest is cancelled, exit 130.
"$BENCH" --router "$ROUTER" -m "$MODEL" --num-prompts 400 --request-rate 20 --input-len 16 \
    --output-len 64 --json "$T/int.json" --no-progress >"$T/int.out" 2>&1 &
BP=$!
sleep 1.5
kill -INT $BP
wait $BP
rc=$?
check "Ctrl-C: exit 130" test $rc = 130
check "Ctrl-C: the summary is printed and the JSON says interrupted" node -e '
    const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
    process.exit(r.interrupted === true && r.completed > 0 && r.num_prompts < 400
                 && r.completed + r.failed + r.unfinished === r.num_prompts ? 0 : 1);' "$T/int.json"
check "Ctrl-C: the summary table was printed" grep -q "Serving Benchmark Result" "$T/int.out"
for _ in $(seq 1 20); do
    [ "$(status_field 's.active_requests + s.queued_requests')" = 0 ] && break
    sleep 0.1
done
check "router holds no request state afterwards" \
    test "$(status_field 's.active_requests + s.queued_requests')" = 0
