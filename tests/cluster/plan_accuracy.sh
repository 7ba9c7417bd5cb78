# plan_accuracy.sh -- sourced by t_plan_accuracy.sh (PREFIX_LEN=0) and
# t_plan_prefix.sh (PREFIX_LEN=448) after lib.sh and their plan: measured
# runs against pd-plan's predictions (the bounds, and why, in
# t_plan_accuracy.sh). Results: the profile, the SLOs, per rate the goodput
# and the latency check, the regime, the gate: 2 + 2 x 3 + 2 = 10; with a
# prefix 3 more (the profile's cached points, the second gate, the hits).
#
# With PREFIX_LEN=P the workload is a shared prefix: every prompt is the
# same P tokens + 32 of its own (pd-bench --prefix-len P --num-prefixes 1,
# the same prefix in every run: same seed), the prefill worker serves the
# prefix from its cache after the first, and pd-plan is told (--prefix-len P
# --input-len P+32); the profile, measured up to 512 tokens, then also has
# its cached-prefix points (passes after a cached prefix). Same rates, SLOs
# and bounds. A second gate: pd-plan told nothing of the prefix (every
# prompt computed whole) must fail at least one check per rate, so the check
# sees the cache in the model. The measured runs must really have been
# served from the cache (>= 90 % of their prefix's full blocks).
RATES=(5 10 20)
IN=64 OUT=32 DUR=6
GOODPUT_BOUND=0.15 LATENCY_FACTOR=2.5
MAX_CTX=128 GATES=slow PFX=() PLAN_IN=$IN
if [ "$PREFIX_LEN" -gt 0 ]; then
    IN=32 MAX_CTX=512 GATES="slow noprefix"
    PFX=(--prefix-len "$PREFIX_LEN" --num-prefixes 1)
    PLAN_IN=$((PREFIX_LEN + IN))
fi
start_router
start_worker prefill p1
start_worker decode d1
wait_workers 2
BENCH=("$PD_BIN/pd-bench" --router "$ROUTER" -m "$MODEL" --seed 3 --ignore-eos --no-progress
       --input-len $IN --output-len $OUT "${PFX[@]}")
t0=$SECONDS
"${BENCH[@]}" --num-prompts 5 --max-concurrency 1 --request-rate inf --json "$T/unl.json" >"$T/unl.out" 2>&1
# The profile is measured twice and each cost taken from the faster
# measurement: other jobs on the machine only ever add time, and one
# disturbed profile (a decode step measured 2.5x slower than the runs later
# saw) made every prediction fail. Each interference ratio is taken from the
# profile where it is nearer 1 (a disturbed "alone" run pushes it below 1, a
# disturbed "beside" run above); still outside pd-plan's [0.5, 10], the
# ratios are dropped (said in the result: pd-plan then simulates no
# interference, a few percent of TTFT here).
accepted() {
    "$PD_BIN/pd-plan" --profile "$T/prof.json" --request-rate 1 --input-len $PLAN_IN --output-len $OUT \
        --ttft-slo 1000 --tpot-slo 100 --max-workers 2 >"$T/accept.out" 2>&1
    [ $? != 2 ]
}
for k in 1 2; do
    "${BENCH[@]}" --profile "$T/prof$k.json" --profile-max-context $MAX_CTX --profile-max-batch 8 >"$T/prof$k.out" 2>&1
done
NOTE=$(node -e '
    const fs = require("fs"), [a, b] = [process.argv[1], process.argv[2]].map((f) => JSON.parse(fs.readFileSync(f, "utf8")));
    for (const k of ["prefill", "decode", "kv_transfer"])
        a[k].forEach((x, i) => { for (const f of ["ms", "ttft_ms"]) if (f in x) x[f] = Math.min(x[f], b[k][i][f]); });
    a.overhead_ms = Math.min(a.overhead_ms, b.overhead_ms);
    let note = "";
    if (a.interference && b.interference) {
        for (const f of ["decode", "prefill"]) {
            const near = (v) => Math.abs(Math.log(v));
            if (near(b.interference[f]) < near(a.interference[f])) a.interference[f] = b.interference[f];
        }
        const ok = (v) => v >= 0.5 && v <= 10;
        if (!ok(a.interference.decode) || !ok(a.interference.prefill)) {
            note = `, interference ratios ${a.interference.decode.toFixed(2)} / ${a.interference.prefill.toFixed(2)} dropped as noise`;
            delete a.interference;
        }
    }
    fs.writeFileSync(process.argv[3], JSON.stringify(a));
    console.log(note);' "$T/prof1.json" "$T/prof2.json" "$T/prof.json" 2>"$T/merge.err")
check "pd-bench --profile measures the 1P+1D cluster, pd-plan takes it$NOTE ($((SECONDS - t0)) s)" accepted
read -r TTFT_SLO TPOT_SLO < <(node -e 'const j = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
    console.log((3 * j.median_ttft_ms).toFixed(2), (2 * j.median_tpot_ms).toFixed(3));' "$T/unl.json" 2>/dev/null)
if [ "$PREFIX_LEN" -gt 0 ]; then
    NC=$(node -e 'const p = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
        console.log(p.prefill.filter((x) => x.cached > 0).length);' "$T/prof.json" 2>/dev/null)
    check "the profile measured passes after a cached prefix (${NC:-?} points)" test "${NC:-0}" -ge 2
fi
check "SLOs from the unloaded medians (TTFT ${TTFT_SLO:-?} ms, TPOT ${TPOT_SLO:-?} ms)" \
    test -n "$TTFT_SLO" -a -n "$TPOT_SLO"
for r in "${RATES[@]}"; do
    n=$((r * DUR))
    for run in a b; do
        "${BENCH[@]}" --num-prompts $n --request-rate "$r" --goodput "ttft:$TTFT_SLO" "tpot:$TPOT_SLO" \
            --json "$T/m_${r}_$run.json" --save-requests "$T/m_${r}_$run.jsonl" >"$T/m_${r}_$run.out" 2>&1
    done
    for prof in prof $GATES; do
        args=("${PFX[@]}")
        [ $prof = noprefix ] && args=() # the gate: the cache left out of the model
        [ $prof = slow ] && node -e '
            // The gate can fail: the same profile with every cost 4x (a cost model gone wrong).
            const fs = require("fs"), p = JSON.parse(fs.readFileSync(process.argv[1], "utf8"));
            for (const k of ["prefill", "decode", "kv_transfer"]) for (const x of p[k]) x.ms *= 4;
            fs.writeFileSync(process.argv[2], JSON.stringify(p));' "$T/prof.json" "$T/slow.json"
        "$PD_BIN/pd-plan" --profile "$T/${prof/noprefix/prof}.json" --request-rate "$r" --input-len $PLAN_IN \
            --output-len $OUT --ttft-slo "$TTFT_SLO" --tpot-slo "$TPOT_SLO" --max-workers 2 \
            --arrivals "$T/m_${r}_a.jsonl" "${args[@]}" \
            --json "$T/${prof}_$r.pred.json" >"$T/${prof}_$r.pred.out" 2>&1
    done
done
# One node judges all rates: per rate, the goodput and latency results, and
# finally how many rates were in the regime.
checker "pd-plan vs measured" node -e '
const fs = require("fs");
const [dir, rates, gb, lf, gates] = [process.argv[1], process.argv[2].split(" "), +process.argv[3], +process.argv[4],
                                     process.argv[5].split(" ")];
const last = (f) => JSON.parse(fs.readFileSync(f, "utf8").trim().split("\n").pop());
function judge(prof, quiet) {
let outside = 0, failed = 0;
const line = (ok, what, why) => {
    if (!ok) failed++;
    if (!quiet) console.log(`${ok ? "ok" : "not ok"} - ${what}${ok || !why ? "" : " # " + why}`);
};
for (const r of rates) {
    const runs = ["a", "b"].map((k) => last(`${dir}/m_${r}_${k}.json`));
    const att = (m) => (m.completed ? (m.request_goodput * m.duration) / m.num_prompts : 0);
    const m = runs.reduce((x, y) => (att(y) > att(x) ? y : x));
    const p = JSON.parse(fs.readFileSync(`${dir}/${prof}_${r}.pred.json`, "utf8")).configs.find((c) => c.prefill === 1 && c.decode === 1);
    const e = (a, b) => (a - b) / b;
    const pc = (x) => `${x >= 0 ? "+" : ""}${(100 * x).toFixed(0)} %`;
    if (!quiet) console.log(`# ${r} req/s: measured goodput ${runs.map((x) => x.request_goodput.toFixed(2)).join(" / ")} ` +
        `(attainment ${runs.map((x) => att(x).toFixed(2)).join(" / ")}), predicted ${p.goodput.toFixed(2)} (${p.attainment.toFixed(2)}); ` +
        `mean TTFT ${runs.map((x) => x.mean_ttft_ms.toFixed(1)).join(" / ")} vs ${p.mean_ttft_ms.toFixed(1)} ms, ` +
        `mean TPOT ${runs.map((x) => x.mean_tpot_ms.toFixed(2)).join(" / ")} vs ${p.mean_tpot_ms.toFixed(2)} ms` +
        (p.prefix_hit_rate ? `; predicted prefix hit rate ${p.prefix_hit_rate.toFixed(3)}` : ""));
    const g = e(p.goodput, m.request_goodput);
    if (att(m) < 0.9) {
        // Disturbed by other jobs: the measurement is only a lower bound.
        outside++;
        line(g >= -gb, `${r} req/s (outside the SLO-meeting regime here, attainment ${att(m).toFixed(2)}): ` +
             `predicted goodput not below the measured by more than ${100 * gb} % (${pc(g)})`,
             `predicted ${p.goodput.toFixed(2)}, measured ${m.request_goodput.toFixed(2)}`);
    } else {
        line(Math.abs(g) <= gb, `${r} req/s: predicted goodput within ${100 * gb} % of the measured (${pc(g)})`,
             `predicted ${p.goodput.toFixed(2)}, measured ${m.request_goodput.toFixed(2)}`);
    }
    // Latency: the lower of the two runs (load only adds to it); outside the
    // regime it is only an upper bound, so only a prediction above it by more
    // than the factor fails there.
    const disturbed = att(m) < 0.9;
    const within = (a, b) => a <= b * lf && (disturbed || b <= a * lf);
    const ttft = Math.min(...runs.map((x) => x.mean_ttft_ms)), tpot = Math.min(...runs.map((x) => x.mean_tpot_ms));
    line(within(p.mean_ttft_ms, ttft) && within(p.mean_tpot_ms, tpot),
         `${r} req/s: predicted mean TTFT and TPOT ${disturbed ? "not above" : "within"} a factor ${lf} of the measured ` +
         `(${pc(e(p.mean_ttft_ms, ttft))}, ${pc(e(p.mean_tpot_ms, tpot))})`);
}
line(outside <= 1, `the SLO-meeting regime held at ${rates.length - outside} of ${rates.length} rates (at least ${rates.length - 1})`,
     "the machine was too loaded to measure pd-plan against");
return failed;
}
judge("prof", false);
const what = { slow: "fed the same profile with every cost 4x",
               noprefix: "told nothing of the shared prefix (every prompt computed whole)" };
for (const g of gates) {
    const n = judge(g, true);
    console.log(`${n >= rates.length ? "ok" : "not ok"} - the gate fails pd-plan ${what[g]} ` +
        `(${n} of ${2 * rates.length + 1} checks fail)`);
}
' "$T" "${RATES[*]}" $GOODPUT_BOUND $LATENCY_FACTOR "$GATES"
if [ "$PREFIX_LEN" -gt 0 ]; then
    # Each measured request finds its prefix's full blocks ([BOS] + P tokens) cached.
    NREQ=0
    for r in "${RATES[@]}"; do NREQ=$((NREQ + 2 * r * DUR)); done
    check "the measured runs were served from the prefix cache (p1: >= 90 % of $NREQ prefixes' full blocks)" \
        wait_status "s.workers.find(w => w.id == \"p1\").counters.prefix_hits >=
            0.9 * $NREQ * Math.floor((1 + $PREFIX_LEN) / s.block_size) * s.block_size"
fi
echo "# $((SECONDS - t0)) s"
