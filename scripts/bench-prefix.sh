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
#   fast     (FAST=1) the shared and alone runs again at RATE2 req/s, NUM2
#            requests;
#   llama    (LLAMA=1) after the pdserve runs of a workload, the same
#            pd-bench workload against llama.cpp's own server (LLAMA_SERVER,
#            built natively: -t 2 -np 8 -c LLAMA_CTX on 127.0.0.1, its
#            default prompt cache) through --target;
#   chat     (CHAT=1 or only) multi-turn chat on the 1P+1D cluster:
#            CHAT_CONV conversations of CHAT_TURNS turns (CHAT_USER user
#            tokens, CHAT_OUTPUT answer tokens, CHAT_THINK ms think time),
#            caching off, then on (then llama.cpp's server with LLAMA=1).
#
# Env: BIN (build/bin), MODEL (build/models/llama-110M-f32.gguf), LOGS
# (build/bench-prefix), ROUNDS (2), NUM (12), RATE (0.5), PREFIX (480),
# INPUT (32), OUTPUT (16), SLO_MS (1000), ROUTE (0; 1 = also the routing runs;
# only = just them), ROUTE_NUM (48), ROUTE_RATE (0.5), ROUTE_PREFIX (1000),
# ROUTE_PREFIXES (8), ROUTE_BLOCKS (340), TRACE (0; 1 = also the trace runs),
# SHARED_RUNS (1; 0 = skip the shared/alone runs), FAST (0), RATE2 (2), NUM2
# (48), LLAMA (0), LLAMA_SERVER (/work/llama.cpp/build/bin/llama-server),
# LLAMA_CTX (8192), CHAT (0), CHAT_CONV (8), CHAT_TURNS (6), CHAT_USER (64),
# CHAT_OUTPUT (32), CHAT_THINK (0), CORES (split; both = workers unpinned at
# model.threads 2, see below). Prints one line per run and writes
# LOGS/NAME.json (pd-bench --json) for each.
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
FAST=${FAST:-0}
RATE2=${RATE2:-2}
NUM2=${NUM2:-48}
LLAMA=${LLAMA:-0}
LLAMA_SERVER=${LLAMA_SERVER:-/work/llama.cpp/build/bin/llama-server}
LLAMA_CTX=${LLAMA_CTX:-8192}
CHAT=${CHAT:-0}
CHAT_CONV=${CHAT_CONV:-8}
CHAT_TURNS=${CHAT_TURNS:-6}
CHAT_USER=${CHAT_USER:-64}
CHAT_OUTPUT=${CHAT_OUTPUT:-32}
CHAT_THINK=${CHAT_THINK:-0}
mkdir -p "$LOGS"
. scripts/bench-lib.sh
LLAMA_PID=""
llama_stop() {
    [ -n "$LLAMA_PID" ] || return 0
    kill -TERM "$LLAMA_PID" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$LLAMA_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$LLAMA_PID" 2>/dev/null
    wait "$LLAMA_PID" 2>/dev/null
    LLAMA_PID=""
}
trap 'bench_stop; llama_stop' EXIT
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
    "$BIN/pd-bench" --router "$ROUTER" -m "$MODEL" --seed 7 --no-progress \
        --goodput "ttft:$SLO_MS" --json "$LOGS/$name.json" "$@" >"$LOGS/$name.out" 2>&1
    "$BIN/pd-cli" --router "$ROUTER" status --json >"$LOGS/$name.status.json" 2>/dev/null
    bench_stop
    summary "$name"
}

# llama NAME -- PD-BENCH ARGS: llama.cpp's server, fresh, on a free port; one
# pd-bench run through its OpenAI port.
llama() {
    local name=$1 port
    shift 2
    port=$(node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => {
        console.log(s.address().port); s.close(); });')
    mkdir -p "$LOGS/$name"
    "$LLAMA_SERVER" -m "$MODEL" -t 2 -np 8 -c "$LLAMA_CTX" --host 127.0.0.1 --port "$port" \
        >"$LOGS/$name/server.log" 2>&1 &
    LLAMA_PID=$!
    for _ in $(seq 1 600); do
        curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
        sleep 0.1
    done
    "$BIN/pd-bench" --target "http://127.0.0.1:$port" -m "$MODEL" --seed 7 --no-progress \
        --goodput "ttft:$SLO_MS" --json "$LOGS/$name.json" "$@" >"$LOGS/$name.out" 2>&1
    llama_stop
    rm -f "$LOGS/$name.status.json"
    summary "$name"
}

summary() {
    local name=$1
    LOAD=$(cut -d' ' -f1-3 /proc/loadavg) node -e '
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
        const mt = j.multi_turn;
        if (mt)
            extra = ` turns_p50_ms ${mt.turns.map(t => (t.median_ttft_ms ?? NaN).toFixed(0)).join("/")}` +
                    ` ratio_last_first ${(mt.median_ttft_ratio_last_first ?? NaN).toFixed(2)}` + extra;
        console.log(`${name.padEnd(16)} completed ${j.completed} ttft_p50_ms ${j.median_ttft_ms.toFixed(0)} ` +
                    `ttft_p99_ms ${j.p99_ttft_ms.toFixed(0)} goodput_rps ${(j.request_goodput ?? 0).toFixed(3)}` +
                    ` throughput_rps ${j.request_throughput.toFixed(3)}${extra} load ${process.env.LOAD}`);
    ' "$name" "$LOGS/$name.json" "$LOGS/$name.status.json"
}

SHARED=(--num-prompts "$NUM" --request-rate "$RATE" --prefix-len "$PREFIX" --input-len "$INPUT"
        --output-len "$OUTPUT" --ignore-eos)
ALONE=(--num-prompts "$NUM" --request-rate "$RATE" --input-len "$INPUT" --output-len "$OUTPUT"
       --ignore-eos)
SHARED2=(--num-prompts "$NUM2" --request-rate "$RATE2" --prefix-len "$PREFIX" --input-len "$INPUT"
         --output-len "$OUTPUT" --ignore-eos)
ALONE2=(--num-prompts "$NUM2" --request-rate "$RATE2" --input-len "$INPUT" --output-len "$OUTPUT"
        --ignore-eos)
CHATTED=(--dataset multi-turn --num-conversations "$CHAT_CONV" --num-turns "$CHAT_TURNS"
         --user-tokens "$CHAT_USER" --output-len "$CHAT_OUTPUT" --think-time "$CHAT_THINK" --ignore-eos)
ROUTED=(--num-prompts "$ROUTE_NUM" --request-rate "$ROUTE_RATE" --prefix-len "$ROUTE_PREFIX"
        --num-prefixes "$ROUTE_PREFIXES" --input-len "$INPUT" --output-len "$OUTPUT" --ignore-eos)
# On a loaded machine a long uncached prompt can starve a worker past the
# default 2 s liveness (two prefill workers share core 0 in the routing
# runs), and a worker dropped and re-registered loses its cache and its
# counters: the routing and trace runs allow 10 s.
LIVE=(worker.liveness=20 router.liveness=20)
# CORES=split: prefill worker on core 0, decode worker on core 1, one thread
# each; CORES=both: neither pinned, model.threads 2 each (a phase uses both
# cores while the other idles, as llama.cpp's server does with -t 2).
if [ "${CORES:-split}" = both ]; then
    PD=(prefill:- decode:- model.threads=2)
else
    PD=(prefill:0 decode:1)
fi
TRACED=(--dataset mooncake --dataset-path client/bench/traces/mooncake-small.jsonl
        --mooncake-block-size 64 --ignore-eos)
for r in $(seq 1 "$ROUNDS"); do
    if [ "$ROUTE" != only ] && [ "$CHAT" != only ] && [ "${SHARED_RUNS:-1}" = 1 ]; then
        one "shared-off-$r" "${PD[@]}" kv.prefix_caching=false -- "${SHARED[@]}"
        one "shared-on-$r" "${PD[@]}" kv.prefix_caching=true -- "${SHARED[@]}"
        one "alone-$r" "${PD[@]}" -- "${ALONE[@]}"
        [ "$LLAMA" = 1 ] && llama "llama-shared-$r" -- "${SHARED[@]}"
        [ "$LLAMA" = 1 ] && llama "llama-alone-$r" -- "${ALONE[@]}"
    fi
    if [ "$FAST" = 1 ] && [ "$CHAT" != only ]; then
        one "shared2-off-$r" "${PD[@]}" kv.prefix_caching=false -- "${SHARED2[@]}"
        one "shared2-on-$r" "${PD[@]}" kv.prefix_caching=true -- "${SHARED2[@]}"
        one "alone2-$r" "${PD[@]}" -- "${ALONE2[@]}"
        [ "$LLAMA" = 1 ] && llama "llama-shared2-$r" -- "${SHARED2[@]}"
    fi
    if [ "$CHAT" != 0 ]; then
        one "chat-off-$r" "${PD[@]}" kv.prefix_caching=false -- "${CHATTED[@]}"
        one "chat-on-$r" "${PD[@]}" kv.prefix_caching=true -- "${CHATTED[@]}"
        [ "$LLAMA" = 1 ] && llama "llama-chat-$r" -- "${CHATTED[@]}"
    fi
    if [ "${TRACE:-0}" = 1 ]; then
        one "trace-off-$r" "${PD[@]}" kv.prefix_caching=false "${LIVE[@]}" -- "${TRACED[@]}"
        one "trace-on-$r" "${PD[@]}" kv.prefix_caching=true "${LIVE[@]}" -- "${TRACED[@]}"
    fi
    if [ "$ROUTE" != 0 ] && [ "$CHAT" != only ]; then
        one "route-rr-$r" prefill:0 prefill:0 decode:1 router.routing=round_robin "${LIVE[@]}" \
            "kv.num_blocks=$ROUTE_BLOCKS" -- "${ROUTED[@]}"
        one "route-kv-$r" prefill:0 prefill:0 decode:1 router.routing=kv_aware "${LIVE[@]}" \
            "kv.num_blocks=$ROUTE_BLOCKS" -- "${ROUTED[@]}"
    fi
done
