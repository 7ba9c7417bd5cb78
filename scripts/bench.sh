#!/bin/bash
# scripts/bench.sh -- the benchmark suite (make bench): measures llama-110M-f32
# on local clusters and regenerates the suite's section of docs/benchmarks.md
# (between <!-- bench:begin --> and <!-- bench:end -->) and docs/img/*.png.
#
#   scripts/bench.sh           the full suite (under 20 minutes on 2 cores)
#   scripts/bench.sh --quick   every part shortened (~1 minute each), for
#                              iterating; writes $BUILD/bench-suite/benchmarks.md
#                              and $BUILD/bench-suite/img/ instead of docs/
#
# Parts: 1. rate sweep (1 prefill + 1 decode), 2. disaggregated vs colocated
# on the same 2 cores, 3. P:D ratio (measured, and pd-plan's prediction from a
# pd-bench --profile of the 1:1 cluster), 4. the llm-serving seed workload
# (1500 requests at 6 req/s). Raw results (pd-bench JSON, per-request
# records, profile, plans, logs) stay in $BUILD/bench-suite/.
#
# Env: BUILD (default build). SEED_IN / SEED_OUT: the seed workload's lengths
# (default 32 / 16). Clusters use ephemeral loopback ports and are always
# stopped at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
BIN=$BUILD/bin
QUICK=0
case "${1:-}" in
--quick) QUICK=1 ;;
"") ;;
*)
    echo "usage: scripts/bench.sh [--quick]" >&2
    exit 2
    ;;
esac
for b in pd-router pd-prefill pd-decode pd-cli pd-bench pd-plan; do
    [ -x "$BIN/$b" ] || {
        echo "bench: $BIN/$b missing (make BUILD=$BUILD all)" >&2
        exit 1
    }
done
command -v gnuplot >/dev/null || {
    echo "bench: gnuplot not found" >&2
    exit 1
}
BUILD=$BUILD scripts/models.sh default >/dev/null
MODEL=$BUILD/models/llama-110M-f32.gguf
OUT=$BUILD/bench-suite
rm -rf "$OUT"
mkdir -p "$OUT"
LOGS=$OUT/logs
if [ $QUICK = 1 ]; then
    DOC=$OUT/benchmarks.md
    cp docs/benchmarks.md "$DOC"
    IMG=$OUT/img
else
    DOC=docs/benchmarks.md
    IMG=docs/img
fi
mkdir -p "$IMG" "$LOGS"

. scripts/bench-lib.sh
trap bench_stop EXIT
trap 'exit 130' INT TERM

# ---- parameters (full / quick)
SEED=1
BAL_IN=128 BAL_OUT=64        # balanced workload: parts 1 and 3
PRE_IN=512 PRE_OUT=64        # prefill-heavy: part 2
DEC_IN=32 DEC_OUT=128        # decode-heavy: part 2
SEED_IN=${SEED_IN:-32} SEED_OUT=${SEED_OUT:-16}
# RATIO_RATE must be one of RATES (the 1:1 run of part 3 is that sweep run).
# Sized for ~15 minutes on 2 shared cores, the seed workload taking half.
if [ $QUICK = 1 ]; then
    N_UNLOADED=2
    RATES="0.5 1"
    REPEAT_RATES="0.5"
    SWEEP_S=8 # requests per rate = rate * SWEEP_S (at least 6)
    PROFILE_ARGS=(--profile-max-context 64 --profile-max-batch 2)
    PRE_RATE=0.7 PRE_N=6
    DEC_RATE=0.6 DEC_N=6
    RATIO_RATE=1
    SEED_N=30 SEED_RATE=6
else
    N_UNLOADED=3
    RATES="0.5 0.75 1 1.5 2"
    # measured a second time after the sweep: how much the same rate moves
    # between runs on this machine, beside pd-plan's error
    REPEAT_RATES="0.5 0.75 1"
    SWEEP_S=40
    PROFILE_ARGS=(--profile-max-context 128 --profile-max-batch 8)
    # Rates that load the single-phase core of the disaggregated cluster
    # (one 513-token prompt is ~1.5 s of prefill on one core) without
    # saturating it, so interference, not capacity, decides the TPOT tail.
    PRE_RATE=0.45 PRE_N=16
    DEC_RATE=1.2 DEC_N=24
    RATIO_RATE=1
    SEED_N=1500 SEED_RATE=6
fi
# requests for a run at RATE: RATE x SWEEP_S, at least 6
nreq() { awk -v r="$1" -v s=$SWEEP_S 'BEGIN { n = int(r * s + 0.5); print (n < 6 ? 6 : n) }'; }
RATIO_N=$(nreq "$RATIO_RATE")

T_START=$SECONDS
meta() { echo "$1=$2" >>"$OUT/meta.env"; }
meta quick $QUICK
meta date "$(date -u '+%Y-%m-%d %H:%M UTC')"
meta cpu "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
meta cores "$(nproc)"
meta load_start "$(cut -d' ' -f1-3 /proc/loadavg)"
meta model "$(basename "$MODEL" .gguf)"
meta seed $SEED
meta bal "$BAL_IN $BAL_OUT"
meta pre "$PRE_IN $PRE_OUT $PRE_RATE $PRE_N"
meta dec "$DEC_IN $DEC_OUT $DEC_RATE $DEC_N"
meta rates "$RATES"
meta repeat_rates "$REPEAT_RATES"
meta ratio "$RATIO_RATE $RATIO_N"
meta seedwl "$SEED_IN $SEED_OUT $SEED_RATE $SEED_N"
meta sets "${BENCH_SETS[*]}"

# Commands, as the docs show them: build dir as "build", the router as $ROUTER.
cmdlog() { # PART TEXT
    echo "$1	$2" >>"$OUT/commands.tsv"
}
show() { # args... -> one shell-quoted line, build dir shown as build/
    local s
    s=$(printf '%q ' "$@")
    s=${s% }
    s=${s//$BUILD\//build/}
    s=${s//$ROUTER/\$ROUTER}
    printf '%s' "$s"
}
# cluster PART NAME SPEC...: start a cluster and log how.
cluster() {
    local part=$1 name=$2 s desc=""
    shift 2
    for s in "$@"; do
        local role=${s%%:*} cpu=${s#*:} bin=pd-decode
        [ "$role" = prefill ] && bin=pd-prefill
        [ -n "$desc" ] && desc+=" & "
        [ "$cpu" != - ] && desc+="taskset -c $cpu "
        desc+="build/bin/$bin --role $role"
    done
    cmdlog "$part" "# cluster $name: build/bin/pd-router & $desc"
    echo "bench: [$((SECONDS - T_START)) s] cluster $name: $*"
    bench_start "$name" "$@"
}
# bench PART NAME ARGS...: one pd-bench run -> $OUT/NAME.json, NAME.req.jsonl
bench() {
    local part=$1 name=$2
    shift 2
    local cmd=("$BIN/pd-bench" --router "$ROUTER" -m "$MODEL" --seed $SEED --ignore-eos --no-progress
        --json "$OUT/$name.json" --save-requests "$OUT/$name.req.jsonl" "$@")
    cmdlog "$part" "$(show "${cmd[@]}")"
    echo "bench: [$((SECONDS - T_START)) s] $name: pd-bench $*"
    "${cmd[@]}" >"$LOGS/$name.txt" 2>&1 || {
        echo "bench: $name: pd-bench failed (exit $?):" >&2
        tail -5 "$LOGS/$name.txt" >&2
        return 1
    }
    # the workers' counters (cumulative over the cluster's life) after the run
    "$BIN/pd-cli" --router "$ROUTER" status --json >"$OUT/$name.status.json" 2>/dev/null || true
}
# unloaded PART NAME IN OUT: single requests one at a time.
unloaded() {
    bench "$1" "$2" --num-prompts $N_UNLOADED --max-concurrency 1 --request-rate inf \
        --input-len "$3" --output-len "$4"
}
# slo NAME KTTFT KTPOT: "TTFT_MS TPOT_MS" = KTTFT x median TTFT, KTPOT x median TPOT of NAME.json
slo() {
    node -e 'const j = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
        console.log((+process.argv[2] * j.median_ttft_ms).toFixed(1), (+process.argv[3] * j.median_tpot_ms).toFixed(2));' \
        "$OUT/$1.json" "$2" "$3"
}

# ---- 1 + 3: the balanced workload on 1 prefill + 1 decode (one core each)
cluster sweep sweep-1p1d prefill:0 decode:1
unloaded sweep unl_bal $BAL_IN $BAL_OUT
read -r BAL_TTFT BAL_TPOT < <(slo unl_bal 3 2)
meta bal_slo "$BAL_TTFT $BAL_TPOT"
cmd=("$BIN/pd-bench" --router "$ROUTER" -m "$MODEL" --profile "$OUT/profile.json" "${PROFILE_ARGS[@]}")
cmdlog ratio "$(show "${cmd[@]}")"
echo "bench: [$((SECONDS - T_START)) s] profile: pd-bench --profile ${PROFILE_ARGS[*]}"
"${cmd[@]}" >"$LOGS/profile.txt" 2>&1
for r in $RATES; do
    bench sweep "sweep_$r" --num-prompts "$(nreq "$r")" --request-rate "$r" --input-len $BAL_IN \
        --output-len $BAL_OUT --goodput ttft:$BAL_TTFT tpot:$BAL_TPOT
done
for r in $REPEAT_RATES; do
    bench sweep "sweep_${r}_b" --num-prompts "$(nreq "$r")" --request-rate "$r" --input-len $BAL_IN \
        --output-len $BAL_OUT --goodput ttft:$BAL_TTFT tpot:$BAL_TPOT
done
# pd-plan's prediction for every swept run (1:1 measured above) and 2:1 / 1:2.
# --arrivals: the simulation replays the measured run's submit times, so
# prediction and measurement see the same arrivals (no sampling noise).
for run in $RATES $(printf '%s_b ' $REPEAT_RATES); do
    r=${run%_b}
    cmd=("$BIN/pd-plan" --profile "$OUT/profile.json" --request-rate "$r" --input-len $BAL_IN
        --output-len $BAL_OUT --ttft-slo "$BAL_TTFT" --tpot-slo "$BAL_TPOT" --max-workers 3
        --arrivals "$OUT/sweep_$run.req.jsonl" --json "$OUT/plan_$run.json")
    cmdlog ratio "$(show "${cmd[@]}")"
    "${cmd[@]}" >"$LOGS/plan_$run.txt" 2>&1 || true # exit 1: no config meets the SLOs
    # the same without the measured interference between the phases
    cmd=("${cmd[@]/$OUT\/plan_$run.json/$OUT/plan_${run}_noint.json}" --no-interference)
    cmdlog ratio "$(show "${cmd[@]}")"
    "${cmd[@]}" >"$LOGS/plan_${run}_noint.txt" 2>&1 || true
done
cp "$LOGS/plan_$RATIO_RATE.txt" "$OUT/plan_ratio.txt" 2>/dev/null || true

# ---- 3: 2:1 and 1:2 (three single-thread workers on 2 cores: oversubscribed)
cluster ratio ratio-2p1d prefill:- prefill:- decode:-
bench ratio ratio_2p1d --num-prompts $RATIO_N --request-rate $RATIO_RATE --input-len $BAL_IN \
    --output-len $BAL_OUT --goodput ttft:$BAL_TTFT tpot:$BAL_TPOT
cluster ratio ratio-1p2d prefill:- decode:- decode:-
bench ratio ratio_1p2d --num-prompts $RATIO_N --request-rate $RATIO_RATE --input-len $BAL_IN \
    --output-len $BAL_OUT --goodput ttft:$BAL_TTFT tpot:$BAL_TPOT
if [ ! -s "$OUT/plan_$RATIO_RATE.json" ]; then
    cmd=("$BIN/pd-plan" --profile "$OUT/profile.json" --request-rate "$RATIO_RATE" --input-len $BAL_IN
        --output-len $BAL_OUT --ttft-slo "$BAL_TTFT" --tpot-slo "$BAL_TPOT" --max-workers 3
        --num-requests "$RATIO_N" --seed $SEED --json "$OUT/plan_$RATIO_RATE.json")
    cmdlog ratio "$(show "${cmd[@]}")"
    "${cmd[@]}" >"$OUT/plan_ratio.txt" 2>&1 || true
fi

# ---- 2: disaggregated vs colocated, same 2 cores, prefill- and decode-heavy
for cfg in disagg coloc; do
    if [ $cfg = disagg ]; then
        cluster cmp cmp-1p1d prefill:0 decode:1
    else
        cluster cmp cmp-2both both:0 both:1
    fi
    unloaded cmp "unl_pre_$cfg" $PRE_IN $PRE_OUT
    unloaded cmp "unl_dec_$cfg" $DEC_IN $DEC_OUT
    if [ $cfg = disagg ]; then
        read -r PRE_TTFT PRE_TPOT < <(slo unl_pre_disagg 3 1.5)
        read -r DEC_TTFT DEC_TPOT < <(slo unl_dec_disagg 3 1.5)
        meta pre_slo "$PRE_TTFT $PRE_TPOT"
        meta dec_slo "$DEC_TTFT $DEC_TPOT"
    fi
    bench cmp "cmp_pre_$cfg" --num-prompts $PRE_N --request-rate $PRE_RATE --input-len $PRE_IN \
        --output-len $PRE_OUT --goodput ttft:$PRE_TTFT tpot:$PRE_TPOT
    bench cmp "cmp_dec_$cfg" --num-prompts $DEC_N --request-rate $DEC_RATE --input-len $DEC_IN \
        --output-len $DEC_OUT --goodput ttft:$DEC_TTFT tpot:$DEC_TPOT
done

# ---- 4: the llm-serving seed workload on the `make run` layout (1P + 1D)
cluster seed seed-1p1d prefill:0 decode:1
bench seed seed --num-prompts $SEED_N --request-rate $SEED_RATE --input-len $SEED_IN \
    --output-len $SEED_OUT --request-timeout 3600000 --plot "$IMG/seed"
bench_stop

meta load_end "$(cut -d' ' -f1-3 /proc/loadavg)"
meta elapsed_s $((SECONDS - T_START))
echo "bench: [$((SECONDS - T_START)) s] rendering"
node scripts/bench-render.mjs "$OUT" "$IMG" "$DOC"
echo "bench: done in $((SECONDS - T_START)) s: $DOC, $IMG/"
