#!/bin/bash
# scripts/bench-prefix.sh -- prefix caching off vs on, back to back in one run
# (docs/benchmarks.md "Prefix caching"). Each round runs, on fresh clusters:
#
#   shared   1 prefill (core 0) + 1 decode (core 1): NUM prompts of a shared
#            PREFIX-token prefix plus INPUT tokens of their own, RATE req/s,
#            kv.prefix_caching false, then true;
#   alone    the same cluster, caching on: the INPUT-token prompts alone
#            (what a shared prompt costs when its prefix is free);
#   trace    (TRACE=1) the same 1P+1D cluster replaying our Mooncake-format
#            trace (client/bench/traces/mooncake-small.jsonl, blocks of 64
#            tokens: chat sessions sharing a system prompt, each turn
#            extending the last) with caching off, then on;
#   route    (ROUTE=1 or only) 2 prefill (core 0) + 1 decode (core 1), KV pools of
#            ROUTE_BLOCKS blocks, ROUTE_PREFIXES distinct ROUTE_PREFIX-token
#            prefixes in random order: router.routing round_robin, then
#            kv_aware.
#
# Env: BIN (build/bin), MODEL (build/models/llama-110M-f32.gguf), LOGS
# (build/bench-prefix), ROUNDS (2), NUM (12), RATE (0.5), PREFIX (480),
# INPUT (32), OUTPUT (16), SLO_MS (1000), ROUTE (0; 1 = also the routing runs;
# only = just them), ROUTE_NUM (48), ROUTE_RATE (0.5), ROUTE_PREFIX (1000),
# ROUTE_PREFIXES (8), ROUTE_BLOCKS (340), TRACE (0; 1 = also the trace runs),
# SHARED_RUNS (1; 0 = skip the shared/alone runs). Prints one line per run
# and writes LOGS/NAME.json (pd-bench --json) for each.
set -u
cd "$(dirname "$0")/.."
BIN=${BIN:-build/bin}
MODEL=${MODEL:-build/models/llama-110M-f32.gguf}
LOGS=${LOGS:-build/bench-prefix}
ROUNDS=${ROUNDS:-2}
NUM=${NUM:-12}
RATE=${RATE:-0.5}
PREFIX=${PREFIX:-480}
INPUT=${INPUT:-32}
OUTPUT=${OUTPUT:-16}
SLO_MS=${SLO_MS:-1000}
ROUTE=${ROUTE:-0}
ROUTE_NUM=${ROUTE_NUM:-48}
ROUTE_RATE=${ROUTE_RATE:-0.5}
ROUTE_PREFIX=${ROUTE_PREFIX:-1000}
ROUTE_PREFIXES=${ROUTE_PREFIXES:-8}
ROUTE_BLOCKS=${ROUTE_BLOCKS:-340}
mkdir -p "$LOGS"
. scripts/bench-lib.sh
trap bench_stop EXIT
BASE_SETS=("${BENCH_SETS[@]}")

# one NAME SETS -- PD-BENCH ARGS: a fresh cluster with SETS, one pd-bench run.
one() {
    local name=$1 sets=() spec=()
    shift
    while [ "$1" != -- ]; do
        case $1 in
        *:*) spec+=("$1") ;;
        *) sets+=(--set "$1") ;;
        esac
        shift
    done
    shift
    BENCH_SETS=("${BASE_SETS[@]}" "${sets[@]}")
    bench_start "$name" "${spec[@]}" || return 1
    "$BIN/pd-bench" --router "$ROUTER" -m "$MODEL" --dataset random --seed 7 --no-progress \
        --goodput "ttft:$SLO_MS" --json "$LOGS/$name.json" "$@" >"$LOGS/$name.out" 2>&1
    "$BIN/pd-cli" --router "$ROUTER" status --json >"$LOGS/$name.status.json" 2>/dev/null
    bench_stop
    node -e '
        const fs = require("fs");
        const [name, file, stf] = process.argv.slice(1);
        const j = JSON.parse(fs.readFileSync(file, "utf8"));
        let extra = "";
        try {
            const s = JSON.parse(fs.readFileSync(stf, "utf8"));
            const p = s.workers.filter(w => w.prefix_caching);
            const q = p.reduce((a, w) => a + w.counters.prefix_queries, 0);
            const h = p.reduce((a, w) => a + w.counters.prefix_hits, 0);
            const r = p.reduce((a, w) => a + w.routed_cached_requests, 0);
            const e = p.reduce((a, w) => a + w.counters.prefix_evictions, 0);
            extra = ` hit_tokens ${h}/${q} routed_onto_cache ${r} evicted_blocks ${e}`;
        } catch (e) {}
        console.log(`${name.padEnd(16)} completed ${j.completed} ttft_p50_ms ${j.median_ttft_ms.toFixed(0)} ` +
                    `ttft_p99_ms ${j.p99_ttft_ms.toFixed(0)} goodput_rps ${(j.request_goodput ?? 0).toFixed(3)}` +
                    ` throughput_rps ${j.request_throughput.toFixed(3)}${extra}`);
    ' "$name" "$LOGS/$name.json" "$LOGS/$name.status.json"
}

SHARED=(--num-prompts "$NUM" --request-rate "$RATE" --prefix-len "$PREFIX" --input-len "$INPUT"
        --output-len "$OUTPUT" --ignore-eos)
ALONE=(--num-prompts "$NUM" --request-rate "$RATE" --input-len "$INPUT" --output-len "$OUTPUT"
       --ignore-eos)
ROUTED=(--num-prompts "$ROUTE_NUM" --request-rate "$ROUTE_RATE" --prefix-len "$ROUTE_PREFIX"
        --num-prefixes "$ROUTE_PREFIXES" --input-len "$INPUT" --output-len "$OUTPUT" --ignore-eos)
# On a loaded machine a long uncached prompt can starve a worker past the
# default 2 s liveness (two prefill workers share core 0 in the routing
# runs), and a worker dropped and re-registered loses its cache and its
# counters: the routing and trace runs allow 10 s.
LIVE=(worker.liveness=20 router.liveness=20)
TRACED=(--dataset mooncake --dataset-path client/bench/traces/mooncake-small.jsonl
        --mooncake-block-size 64 --ignore-eos)
for r in $(seq 1 "$ROUNDS"); do
    if [ "$ROUTE" != only ] && [ "${SHARED_RUNS:-1}" = 1 ]; then
        one "shared-off-$r" prefill:0 decode:1 kv.prefix_caching=false -- "${SHARED[@]}"
        one "shared-on-$r" prefill:0 decode:1 kv.prefix_caching=true -- "${SHARED[@]}"
        one "alone-$r" prefill:0 decode:1 -- "${ALONE[@]}"
    fi
    if [ "${TRACE:-0}" = 1 ]; then
        one "trace-off-$r" prefill:0 decode:1 kv.prefix_caching=false "${LIVE[@]}" -- "${TRACED[@]}"
        one "trace-on-$r" prefill:0 decode:1 kv.prefix_caching=true "${LIVE[@]}" -- "${TRACED[@]}"
    fi
    if [ "$ROUTE" != 0 ]; then
        one "route-rr-$r" prefill:0 prefill:0 decode:1 router.routing=round_robin "${LIVE[@]}" \
            "kv.num_blocks=$ROUTE_BLOCKS" -- "${ROUTED[@]}"
        one "route-kv-$r" prefill:0 prefill:0 decode:1 router.routing=kv_aware "${LIVE[@]}" \
            "kv.num_blocks=$ROUTE_BLOCKS" -- "${ROUTED[@]}"
    fi
done
