#!/bin/bash
# pd-plan on a recorded profile (tests/cluster/profile-tiny.json, measured by
# `pd-bench --profile` on a 1 prefill + 1 decode tiny-model cluster): goodput
# rises with workers, SLO attainment stays within [0, 1], the reported
# smallest cluster meets the SLOs in its own simulation and no smaller one
# does, the search for large clusters agrees with the exhaustive one, and bad
# options or a malformed profile fail with a clear message and exit 2.
. "$(dirname "$0")/lib.sh"
[ -x "$PD_BIN/pd-plan" ] || skip_all "$PD_BIN/pd-plan missing (make all)"
plan 34
PLAN=$PD_BIN/pd-plan
PROF=tests/cluster/profile-tiny.json
ARGS=(--profile $PROF --request-rate 200 --input-len 128 --output-len 64 --ttft-slo 40 --tpot-slo 2)

"$PLAN" "${ARGS[@]}" --max-workers 7 --json "$T/p.json" >"$T/p.out" 2>&1
check "pd-plan: a cluster meets the SLOs (exit 0)" test $? = 0
check "pd-plan: prints the smallest cluster" grep -q "^smallest cluster meeting the SLOs at 200 req/s" "$T/p.out"
checker "pd-plan's plan" node -e '
const j = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
const R = j.request_rate, tol = 0.02 * R;
let bad = 0;
function check(name, cond, why = "") {
    console.log(`${cond ? "ok" : "not ok"} - pd-plan: ${name}${cond || !why ? "" : " # " + why}`);
    if (!cond) bad++;
}
const at = (P, D) => j.configs.find((c) => c.prefill === P && c.decode === D);
check("every P:D with P + D <= 7 was tried", j.configs.length === 21, `${j.configs.length}`);
let mono = true, why = "";
for (const c of j.configs) {
    const up = [at(c.prefill + 1, c.decode), at(c.prefill, c.decode + 1)].filter(Boolean);
    for (const u of up)
        if (u.goodput < c.goodput - tol) { mono = false; why = `${c.prefill}:${c.decode} -> ${u.prefill}:${u.decode}`; }
}
check("goodput rises with workers (adding a prefill or a decode worker never loses goodput)", mono, why);
const best = (w) => Math.max(...j.configs.filter((c) => c.workers === w).map((c) => c.goodput));
let bestMono = true;
for (let w = 3; w <= 7; w++) if (best(w) < best(w - 1) - tol) bestMono = false;
check("the best goodput at W workers rises with W", bestMono);
check("best goodput grows from 2 to 7 workers", best(7) > best(2) * 2, `${best(2)} -> ${best(7)}`);
check("SLO attainment is within [0, 1] everywhere", j.configs.every((c) => c.attainment >= 0 && c.attainment <= 1));
const s = j.smallest;
check("the smallest cluster meets the SLOs in its own simulation",
      s && s.attainment >= j.attainment_target && s.meets && at(s.prefill, s.decode).attainment === s.attainment);
check("no smaller cluster meets the SLOs", s && j.configs.every((c) => c.workers >= s.workers || !c.meets));
console.log(`# smallest ${s.prefill}P+${s.decode}D goodput ${s.goodput.toFixed(2)} attainment ${s.attainment}`);
process.exit(bad ? 1 : 0);' "$T/p.json"

"$PLAN" "${ARGS[@]}" --max-workers 7 --json "$T/p2.json" >/dev/null 2>&1
check "pd-plan: the same inputs give the same plan" cmp -s "$T/p.json" "$T/p2.json"
"$PLAN" "${ARGS[@]}" --max-workers 60 --json "$T/big.json" >"$T/big.out" 2>&1
check "pd-plan: the search over 60 workers finds the same smallest cluster" node -e '
    const fs = require("fs");
    const a = JSON.parse(fs.readFileSync(process.argv[1], "utf8")).smallest;
    const b = JSON.parse(fs.readFileSync(process.argv[2], "utf8")).smallest;
    process.exit(a && b && a.workers === b.workers ? 0 : 1);' "$T/p.json" "$T/big.json"
"$PLAN" --profile $PROF --request-rate 200 --input-len 128 --output-len 64 --ttft-slo 0.001 \
    --tpot-slo 2 --max-workers 4 >"$T/none.out" 2>&1
rc=$?
check "pd-plan: unreachable SLOs: exit 1 and says so" \
    test $rc = 1 -a -n "$(grep 'no cluster of at most 4 workers meets the SLOs' "$T/none.out")"

expect_fail() { # NAME PATTERN ARGS...: exit 2 with PATTERN on stderr
    local name=$1 pat=$2
    shift 2
    "$PLAN" "$@" >"$T/bad.out" 2>"$T/bad.err"
    local rc=$?
    if [ $rc = 2 ] && grep -qE -- "$pat" "$T/bad.err"; then ok "$name"; else
        not_ok "$name" "exit $rc: $(head -c 200 "$T/bad.err")"; fi
}
head -c 300 $PROF >"$T/trunc.json"
expect_fail "pd-plan: truncated profile refused" "trunc.json: line [0-9]+ column" \
    --profile "$T/trunc.json" --request-rate 1 --input-len 8 --output-len 8 --ttft-slo 1 --tpot-slo 1
node -e '
    const fs = require("fs"), p = JSON.parse(fs.readFileSync(process.argv[1], "utf8"));
    delete p.prefill[1].ms; fs.writeFileSync(process.argv[2], JSON.stringify(p));
    p.prefill[1].ms = -3; fs.writeFileSync(process.argv[3], JSON.stringify(p));
    p.prefill = [p.prefill[0]]; fs.writeFileSync(process.argv[4], JSON.stringify(p));' \
    $PROF "$T/nofield.json" "$T/neg.json" "$T/short.json"
expect_fail "pd-plan: profile without prefill[1].ms refused, naming it" "prefill\[1\]\.ms: missing" \
    --profile "$T/nofield.json" --request-rate 1 --input-len 8 --output-len 8 --ttft-slo 1 --tpot-slo 1
expect_fail "pd-plan: negative time in the profile refused" "prefill\[1\]\.ms" \
    --profile "$T/neg.json" --request-rate 1 --input-len 8 --output-len 8 --ttft-slo 1 --tpot-slo 1
expect_fail "pd-plan: one prefill point refused" "prefill: needs an array of at least 2" \
    --profile "$T/short.json" --request-rate 1 --input-len 8 --output-len 8 --ttft-slo 1 --tpot-slo 1
expect_fail "pd-plan: missing profile file refused" "no-such.json" \
    --profile "$T/no-such.json" --request-rate 1 --input-len 8 --output-len 8 --ttft-slo 1 --tpot-slo 1
expect_fail "pd-plan: --request-rate 0 refused" "request-rate.*> 0" \
    --profile $PROF --request-rate 0 --input-len 8 --output-len 8 --ttft-slo 1 --tpot-slo 1
# Prompts longer than a pass: with a 32-token budget (the workers'
# prefill.max_batch_tokens) a 129-token prompt takes 5 passes; their
# attention work adds up to the whole prompt's, so alone (rate far below
# capacity) each request's TTFT grows by exactly 4 pass intercepts.
LOW=(--profile $PROF --request-rate 0.5 --input-len 128 --output-len 8 --ttft-slo 1000 --tpot-slo 100
     --max-workers 2 --num-requests 50)
"$PLAN" "${LOW[@]}" --json "$T/nocap.json" >/dev/null 2>&1
"$PLAN" "${LOW[@]}" --prefill-batch-tokens 32 --json "$T/cap.json" >/dev/null 2>&1
check "pd-plan: a 32-token pass budget adds 4 pass intercepts to every TTFT (prompts cut into passes)" node -e '
    const fs = require("fs");
    const a = JSON.parse(fs.readFileSync(process.argv[1], "utf8")), b = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
    const x = a.configs.find((c) => c.prefill === 1 && c.decode === 1), y = b.configs.find((c) => c.prefill === 1 && c.decode === 1);
    const want = 4 * a.cost_model.prefill[0], got = y.mean_ttft_ms - x.mean_ttft_ms;
    console.log(`# intercept ${a.cost_model.prefill[0].toFixed(3)} ms: TTFT ${x.mean_ttft_ms.toFixed(3)} -> ${y.mean_ttft_ms.toFixed(3)} ms`);
    process.exit(b.prefill_batch_tokens === 32 && a.prefill_batch_tokens === 2048 && want > 0 &&
                 Math.abs(got - want) < 0.01 * want ? 0 : 1);' "$T/nocap.json" "$T/cap.json"
node -e '
    const fs = require("fs"), p = JSON.parse(fs.readFileSync(process.argv[1], "utf8"));
    p.prefill_pass_tokens = 32; p.prefill[0].batch = 0.25; fs.writeFileSync(process.argv[2], JSON.stringify(p));
    p.prefill[0].batch = 0; fs.writeFileSync(process.argv[3], JSON.stringify(p));' $PROF "$T/chunked.json" "$T/zero.json"
"$PLAN" "${LOW[@]/$PROF/$T/chunked.json}" --json "$T/chunked.out.json" >/dev/null 2>&1
check "pd-plan: an older profile of chunked passes (batch < 1) is taken, its pass cap ignored" node -e '
    const j = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
    process.exit(j.prefill_batch_tokens === 2048 && !("prefill_pass_tokens" in j) &&
                 j.configs.length > 0 ? 0 : 1);' "$T/chunked.out.json"
expect_fail "pd-plan: prefill[0].batch 0 refused, naming it" "prefill\[0\]\.batch" \
    --profile "$T/zero.json" --request-rate 1 --input-len 8 --output-len 8 --ttft-slo 1 --tpot-slo 1

# A noisy grid can fit a negative attention term; pd-plan drops it (steps
# at contexts beyond the grid would otherwise get cheaper than measured).
node -e '
    const fs = require("fs"), p = JSON.parse(fs.readFileSync(process.argv[1], "utf8"));
    for (const d of p.decode) d.ms = 10 + 1 * d.batch - 0.001 * d.batch * d.context;
    fs.writeFileSync(process.argv[2], JSON.stringify(p));' $PROF "$T/negc.json"
"$PLAN" "${LOW[@]/$PROF/$T/negc.json}" --json "$T/negc.out.json" >/dev/null 2>&1
check "pd-plan: a negative fitted attention term of decode steps is dropped (c = 0, a + b*B refitted)" node -e '
    const j = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")), d = j.cost_model.decode;
    console.log(`# decode fit ${d.map((v) => v.toFixed(4)).join(", ")}`);
    process.exit(d[2] === 0 && d[1] > 0 ? 0 : 1);' "$T/negc.out.json"

# Interference: a profile's measured factors slow a decode step in
# proportion to the busy prefill workers (and a prefill pass to the busy
# decode workers); --no-interference ignores them.
node -e '
    const fs = require("fs"), p = JSON.parse(fs.readFileSync(process.argv[1], "utf8"));
    p.interference = { decode: 2, prefill: 1.5, decode_batch: 4, prefill_tokens: 128 };
    fs.writeFileSync(process.argv[2], JSON.stringify(p));
    p.interference.decode = 0.1; fs.writeFileSync(process.argv[3], JSON.stringify(p));
    p.interference = "x"; fs.writeFileSync(process.argv[4], JSON.stringify(p));' \
    $PROF "$T/inf.json" "$T/inf-low.json" "$T/inf-str.json"
BUSY=(--request-rate 100 --input-len 128 --output-len 64 --ttft-slo 1000 --tpot-slo 100 --max-workers 2
      --num-requests 400)
"$PLAN" --profile $PROF "${BUSY[@]}" --json "$T/inf0.json" >/dev/null 2>&1
"$PLAN" --profile "$T/inf.json" "${BUSY[@]}" --json "$T/inf1.json" >"$T/inf1.out" 2>&1
"$PLAN" --profile "$T/inf.json" "${BUSY[@]}" --no-interference --json "$T/inf2.json" >/dev/null 2>&1
check "pd-plan: the profile's interference factors are taken and printed" bash -c "
    grep -q 'interference: decode step x2, prefill pass x1.5' '$T/inf1.out' &&
    node -e 'const j = JSON.parse(require(\"fs\").readFileSync(process.argv[1], \"utf8\"));
             process.exit(j.cost_model.interference.decode === 2 && j.cost_model.interference.prefill === 1.5 ? 0 : 1)' '$T/inf1.json'"
check "pd-plan: with interference, decode steps beside busy prefill are slower (mean TPOT and TTFT rise)" node -e '
    const fs = require("fs"), rd = (f) => JSON.parse(fs.readFileSync(f, "utf8"));
    const a = rd(process.argv[1]).configs.find((c) => c.prefill === 1 && c.decode === 1);
    const b = rd(process.argv[2]).configs.find((c) => c.prefill === 1 && c.decode === 1);
    console.log(`# 1:1 at 100 req/s: TPOT ${a.mean_tpot_ms.toFixed(3)} -> ${b.mean_tpot_ms.toFixed(3)} ms, TTFT ${a.mean_ttft_ms.toFixed(2)} -> ${b.mean_ttft_ms.toFixed(2)} ms`);
    process.exit(b.mean_tpot_ms > a.mean_tpot_ms * 1.05 && b.mean_ttft_ms > a.mean_ttft_ms ? 0 : 1);' "$T/inf0.json" "$T/inf1.json"
check "pd-plan: --no-interference gives the plan of a profile without the factors" node -e '
    const fs = require("fs"), rd = (f) => JSON.parse(fs.readFileSync(f, "utf8"));
    process.exit(JSON.stringify(rd(process.argv[1]).configs) === JSON.stringify(rd(process.argv[2]).configs) ? 0 : 1);' \
    "$T/inf0.json" "$T/inf2.json"
expect_fail "pd-plan: an interference factor out of range refused" "interference factors 0.1 / 1.5 are not in" \
    --profile "$T/inf-low.json" --request-rate 1 --input-len 8 --output-len 8 --ttft-slo 1 --tpot-slo 1
expect_fail "pd-plan: interference that is not an object refused" "inf-str.json: interference: not an object" \
    --profile "$T/inf-str.json" --request-rate 1 --input-len 8 --output-len 8 --ttft-slo 1 --tpot-slo 1

# --arrivals replays pd-bench --save-requests submit times.
printf '%s\n' '{"index":0,"start_ms":1000.5}' '{"index":1,"start_ms":0}' '{"index":2,"start_ms":6000}' >"$T/arr.jsonl"
"$PLAN" --profile $PROF --input-len 128 --output-len 8 --ttft-slo 1000 --tpot-slo 100 --max-workers 2 \
    --arrivals "$T/arr.jsonl" --json "$T/arr.json" >"$T/arr.out" 2>&1
check "pd-plan: --arrivals simulates exactly those 3 requests over their 6 s" node -e '
    const j = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
    const c = j.configs.find((c) => c.prefill === 1 && c.decode === 1);
    process.exit(j.num_requests === 3 && Math.abs(j.request_rate - 2 / 6) < 1e-9 && c.duration_s > 6 && c.duration_s < 7 ? 0 : 1);' "$T/arr.json"
printf '%s\n' '{"index":0,"start_ms":0}' '{"index":1}' >"$T/badarr.jsonl"
expect_fail "pd-plan: an arrivals record without start_ms refused, naming its line" "badarr.jsonl: line 2" \
    --profile $PROF --input-len 8 --output-len 8 --ttft-slo 1 --tpot-slo 1 --arrivals "$T/badarr.jsonl"
expect_fail "pd-plan: missing --tpot-slo refused" "tpot-slo is required" \
    --profile $PROF --request-rate 3 --input-len 8 --output-len 8 --ttft-slo 1

# Prefix caching (plan_sim.h): one shared 96-token prefix, requests far apart:
# every request but the first finds its 6 leading blocks (96 of 129 tokens,
# BOS included) cached, so its pass computes 33 tokens at offset 96: TTFT
# falls by exactly the difference of the two passes' fitted costs.
P1=(--profile $PROF --request-rate 0.5 --input-len 128 --output-len 8 --ttft-slo 1000 --tpot-slo 100
    --max-workers 2 --num-requests 50)
"$PLAN" "${P1[@]}" --json "$T/nopfx.json" >/dev/null 2>&1
"$PLAN" "${P1[@]}" --prefix-len 96 --json "$T/pfx.json" >"$T/pfx.out" 2>&1
check "pd-plan: a cached prefix saves exactly the fitted cost of its tokens (49 of 50 requests hit)" node -e '
    const fs = require("fs"), rd = (f) => JSON.parse(fs.readFileSync(f, "utf8"));
    const a = rd(process.argv[1]), b = rd(process.argv[2]);
    const x = a.configs.find((c) => c.prefill === 1), y = b.configs.find((c) => c.prefill === 1);
    const [p0, p1, p2] = a.cost_model.prefill, cost = (T, K) => p0 + p1 * T + p2 * T * (2 * K + T);
    const want = (49 / 50) * (cost(129, 0) - cost(33, 96)), got = x.mean_ttft_ms - y.mean_ttft_ms;
    console.log(`# TTFT ${x.mean_ttft_ms.toFixed(3)} -> ${y.mean_ttft_ms.toFixed(3)} ms, saved ${got.toFixed(3)}, expected ${want.toFixed(3)}; hit rate ${y.prefix_hit_rate.toFixed(3)}`);
    process.exit(Math.abs(got - want) < 0.01 * want && Math.abs(y.prefix_hit_rate - 49 * 96 / (50 * 129)) < 1e-9 ? 0 : 1);' \
    "$T/nopfx.json" "$T/pfx.json"
# Eight prefixes, two prefill workers whose caches hold five each: routing by
# cache partitions them, round robin thrashes.
P8=(--profile $PROF --request-rate 100 --input-len 128 --output-len 8 --ttft-slo 1000 --tpot-slo 100
    --max-workers 3 --num-requests 400 --prefix-len 96 --num-prefixes 8 --prefix-cache-blocks 30)
"$PLAN" "${P8[@]}" --routing kv_aware --json "$T/kva.json" >/dev/null 2>&1
"$PLAN" "${P8[@]}" --routing round_robin --json "$T/rr.json" >/dev/null 2>&1
check "pd-plan: with 2 prefill workers, kv_aware routing finds more cached prefixes than round_robin" node -e '
    const fs = require("fs"), rd = (f) => JSON.parse(fs.readFileSync(f, "utf8"));
    const a = rd(process.argv[1]).configs.find((c) => c.prefill === 2);
    const b = rd(process.argv[2]).configs.find((c) => c.prefill === 2);
    console.log(`# hit rate kv_aware ${a.prefix_hit_rate.toFixed(3)}, round_robin ${b.prefix_hit_rate.toFixed(3)}`);
    process.exit(a.prefix_hit_rate > b.prefix_hit_rate + 0.1 ? 0 : 1);' "$T/kva.json" "$T/rr.json"
expect_fail "pd-plan: an unknown --routing refused" "routing: 'random' is not kv_aware" \
    --profile $PROF --request-rate 1 --input-len 8 --output-len 8 --ttft-slo 1 --tpot-slo 1 --routing random
expect_fail "pd-plan: a prefix longer than the prompt refused" "prefix-len 9 is longer than --input-len 8" \
    --profile $PROF --request-rate 1 --input-len 8 --output-len 8 --ttft-slo 1 --tpot-slo 1 --prefix-len 9
