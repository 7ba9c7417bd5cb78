#!/bin/bash
# pd-plan --router: watches a running cluster (status + /metrics) under a
# steady load of identical requests and plans for what it served: the
# observed workers, request rate and lengths become the plan's inputs, and it
# says which service to scale (or to keep) to meet the SLOs. Bad inputs fail
# with a message and exit 2.
. "$(dirname "$0")/lib.sh"
require_model
[ -x "$PD_BIN/pd-plan" ] || skip_all "$PD_BIN/pd-plan missing (make all)"
plan 11
HP=$(node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); })')
start_router --set "http.listen=127.0.0.1:$HP"
start_worker prefill p1
start_worker decode d1
wait_workers 2
PROMPT="the quick brown fox jumps over the lazy dog while seven wizards quietly hex the jovial sphinx"
n_prompt=$(cli generate "$PROMPT" -n 16 --ignore-eos --json | node -e '
    let t = ""; process.stdin.on("data", d => t += d).on("end", () => {
        const f = t.trim().split("\n").map(JSON.parse).find(c => c.final); console.log(f.usage.prompt_tokens); });')
# A steady load for the window: identical requests, one after another,
# bounded in count and time.
( for _ in $(seq 1 400); do
      cli generate "$PROMPT" -n 16 --ignore-eos --json >/dev/null 2>&1 || break
  done ) &
LOAD=$!
PIDS+=($LOAD)
PLAN=("$PD_BIN/pd-plan" --router "$ROUTER" --metrics "http://127.0.0.1:$HP" --window 3
      --profile tests/cluster/profile-tiny.json --ttft-slo 40 --tpot-slo 2 --max-workers 8)
"${PLAN[@]}" --json "$T/live.json" >"$T/live.out" 2>&1
rc=$?
check "pd-plan --router: exit 0, prints what it observed" \
    bash -c "[ $rc = 0 ] && grep -q '^observed over 3\.[0-9] s: ' '$T/live.out'"
checker "pd-plan --router's observations" node -e '
const j = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")), nPrompt = +process.argv[2];
const o = j.observed;
let bad = 0;
const check = (name, cond, why) => { console.log(`${cond ? "ok" : "not ok"} - pd-plan --router: ${name}${cond ? "" : " # " + why}`); bad += !cond; };
check("sees 1 prefill and 1 decode worker taking work", o.prefill_workers === 1 && o.decode_workers === 1, JSON.stringify(o));
check(`requests finished in the window (${o.finished})`, o.finished >= 3 && o.failed === 0, JSON.stringify(o));
check("plans for the observed rate", Math.abs(j.request_rate - o.request_rate) < 1e-9 && Math.abs(o.request_rate - o.finished / o.window_s) < 1e-6, `${j.request_rate} vs ${o.request_rate}`);
check(`plans for the observed lengths (input ${j.input_len} = ${nPrompt} prompt tokens, output ${j.output_len} = 16)`, j.input_len === nPrompt && j.output_len === 16, "");
check("reads the served TTFT and TPOT from the histograms", o.p90_ttft_ms > 0 && o.p90_tpot_ms > 0 && o.ttft_within_slo >= 0 && o.ttft_within_slo <= 1, JSON.stringify(o));
check("reads the workers pass and step times", o.prefill_passes >= 1 && o.prefill_pass_ms > 0 && o.decode_steps >= 1 && o.decode_step_ms > 0, JSON.stringify(o));
process.exit(bad ? 1 : 0);' "$T/live.json" "$n_prompt"
check "at this load 1 + 1 is enough: it says keep" \
    grep -q '^recommendation: keep 1 prefill + 1 decode' "$T/live.out"

# The same cluster planned for 2500 req/s of the observed requests: it says
# which service to scale, to what the plan found smallest.
"${PLAN[@]}" --request-rate 2500 --json "$T/big.json" >"$T/big.out" 2>&1
want=$(node -e '
    const s = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")).smallest;
    const parts = [];
    if (s.prefill !== 1) parts.push(`scale prefill up 1 -> ${s.prefill}`);
    if (s.decode !== 1) parts.push(`scale decode up 1 -> ${s.decode}`);
    console.log(`recommendation: ${s.prefill} prefill + ${s.decode} decode (now 1 + 1): ${parts.join("; ")}`);' "$T/big.json")
check "at 2500 req/s it says which service to scale: '$want'" grep -qxF "$want" "$T/big.out"
kill $LOAD 2>/dev/null

out=$("$PD_BIN/pd-plan" --router "$ROUTER" --profile tests/cluster/profile-tiny.json --ttft-slo 40 --tpot-slo 2 2>&1)
check "--router without --metrics: exit 2, says what is missing" \
    bash -c "[ $? = 2 ] && echo \"\$1\" | grep -q -- '--metrics (with --router) is required'" _ "$out"
dead=$(node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); })')
out=$("$PD_BIN/pd-plan" --router "$ROUTER" --metrics "http://127.0.0.1:$dead" --window 1 \
    --profile tests/cluster/profile-tiny.json --ttft-slo 40 --tpot-slo 2 2>&1)
check "a /metrics nobody serves: exit 2 with the reason" \
    bash -c "[ $? = 2 ] && echo \"\$1\" | grep -q '^pd-plan: '" _ "$out"
