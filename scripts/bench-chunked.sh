#!/bin/bash
# scripts/bench-chunked.sh -- chunked prefill in colocated workers (issue 16),
# off against on, beside the disaggregated cluster: part 2 of the benchmark
# suite (scripts/bench.sh) on its own, repeated. llama-110M-f32 on the same
# two cores: disaggregated = 1 prefill worker on core 0 + 1 decode worker on
# core 1; with SHARED=1 (the default) also disaggregated with both workers
# unpinned at model.threads 2 (each phase may use both cores while the other
# idles), and with COSHARED=1 (default 0) colocated the same way (unpinned,
# model.threads 2, the last of CHUNKS); colocated = 2 `--role both` workers on cores 0 and 1, with
# prefill.chunk_tokens = each of CHUNKS (0: off, whole prefill passes between
# decode steps). Workloads as part 2: prefill-heavy (512 -> 64 tokens, 0.45
# req/s, 16 requests) and decode-heavy (32 -> 128, 1.2 req/s, 24 requests),
# each after unloaded single requests; SLOs from the disaggregated cluster's
# unloaded latencies of the same round (TTFT 3x, TPOT 1.5x, as part 2).
#
#   scripts/bench-chunked.sh        REPEAT rounds (default 2), every config each round
#
# Env: BUILD (default build), REPEAT, CHUNKS (default "0 32"), SHARED (1), COSHARED (0). Results: pd-bench
# JSON in $BUILD/bench-chunked/, a markdown table on stdout (and in
# $BUILD/bench-chunked/table.md).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
BIN=$BUILD/bin
REPEAT=${REPEAT:-2}
CHUNKS=${CHUNKS:-"0 32"}
SHARED=${SHARED:-1}
SHARED_CFG=$([ "$SHARED" = 1 ] && echo shared || true)
COSHARED=${COSHARED:-0}
COSHARED_CFG=$([ "$COSHARED" = 1 ] && echo coshared || true)
BUILD=$BUILD scripts/models.sh default >/dev/null
MODEL=$BUILD/models/llama-110M-f32.gguf
OUT=$BUILD/bench-chunked
rm -rf "$OUT"
mkdir -p "$OUT"
LOGS=$OUT/logs
. scripts/bench-lib.sh
trap bench_stop EXIT
trap 'exit 130' INT TERM
BASE_SETS=("${BENCH_SETS[@]}")
SEED=1
PRE_IN=512 PRE_OUT=64 PRE_RATE=0.45 PRE_N=16
DEC_IN=32 DEC_OUT=128 DEC_RATE=1.2 DEC_N=24
echo "load_start $(cut -d' ' -f1-3 /proc/loadavg)" >"$OUT/meta.txt"

run() { # NAME ARGS...
    local name=$1
    shift
    "$BIN/pd-bench" --router "$ROUTER" -m "$MODEL" --seed $SEED --ignore-eos --no-progress \
        --json "$OUT/$name.json" "$@" >"$LOGS/$name.txt" 2>&1 || {
        echo "bench-chunked: $name failed" >&2
        tail -5 "$LOGS/$name.txt" >&2
        return 1
    }
    "$BIN/pd-cli" --router "$ROUTER" status --json >"$OUT/$name.status.json" 2>/dev/null || true
}
slo() { # NAME KTTFT KTPOT
    node -e 'const j = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
        console.log((+process.argv[2] * j.median_ttft_ms).toFixed(1), (+process.argv[3] * j.median_tpot_ms).toFixed(2));' \
        "$OUT/$1.json" "$2" "$3"
}

for ((r = 1; r <= REPEAT; r++)); do
    for cfg in disagg $SHARED_CFG $(printf 'chunk%s ' $CHUNKS) $COSHARED_CFG; do
        BENCH_SETS=("${BASE_SETS[@]}")
        if [ $cfg = disagg ]; then
            echo "bench-chunked: round $r: disaggregated"
            bench_start "r$r-$cfg" prefill:0 decode:1
        elif [ $cfg = shared ]; then
            BENCH_SETS+=(--set model.threads=2)
            echo "bench-chunked: round $r: disaggregated, both workers on both cores (model.threads 2, unpinned)"
            bench_start "r$r-$cfg" prefill:- decode:-
        elif [ $cfg = coshared ]; then
            BENCH_SETS+=(--set model.threads=2 --set "prefill.chunk_tokens=${CHUNKS##* }")
            echo "bench-chunked: round $r: colocated, both workers on both cores (model.threads 2, unpinned), prefill.chunk_tokens=${CHUNKS##* }"
            bench_start "r$r-$cfg" both:- both:-
        else
            BENCH_SETS+=(--set "prefill.chunk_tokens=${cfg#chunk}")
            echo "bench-chunked: round $r: colocated, prefill.chunk_tokens=${cfg#chunk}"
            bench_start "r$r-$cfg" both:0 both:1
        fi
        run "r${r}_${cfg}_unl_pre" --num-prompts 3 --max-concurrency 1 --request-rate inf \
            --input-len $PRE_IN --output-len $PRE_OUT
        run "r${r}_${cfg}_unl_dec" --num-prompts 3 --max-concurrency 1 --request-rate inf \
            --input-len $DEC_IN --output-len $DEC_OUT
        if [ $cfg = disagg ]; then
            read -r PRE_TTFT PRE_TPOT < <(slo "r${r}_disagg_unl_pre" 3 1.5)
            read -r DEC_TTFT DEC_TPOT < <(slo "r${r}_disagg_unl_dec" 3 1.5)
            echo "r$r slo pre $PRE_TTFT $PRE_TPOT dec $DEC_TTFT $DEC_TPOT" >>"$OUT/meta.txt"
        fi
        run "r${r}_${cfg}_pre" --num-prompts $PRE_N --request-rate $PRE_RATE --input-len $PRE_IN \
            --output-len $PRE_OUT --goodput ttft:$PRE_TTFT tpot:$PRE_TPOT
        run "r${r}_${cfg}_dec" --num-prompts $DEC_N --request-rate $DEC_RATE --input-len $DEC_IN \
            --output-len $DEC_OUT --goodput ttft:$DEC_TTFT tpot:$DEC_TPOT
        bench_stop
    done
done
echo "load_end $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/meta.txt"

node - "$OUT" "$REPEAT" "$CHUNKS" "$SHARED_CFG" "$COSHARED_CFG" <<'EOF' | tee "$OUT/table.md"
const fs = require("fs");
const [out, repeat, chunks] = [process.argv[2], +process.argv[3], process.argv[4].split(" ")];
const J = (n) => JSON.parse(fs.readFileSync(`${out}/${n}.json`, "utf8"));
const f = (x, d = 1) => (x === undefined || x === null || !isFinite(x) ? "–" : x.toFixed(d));
const cfgs = ["disagg", ...(process.argv[5] ? [process.argv[5]] : []), ...chunks.map((c) => `chunk${c}`),
  ...(process.argv[6] ? [process.argv[6]] : [])];
const label = (c) => c === "disagg" ? "disaggregated" : c === "shared" ? "disaggregated, both workers on both cores" :
  c === "coshared" ? `colocated, both workers on both cores, chunk_tokens ${chunks[chunks.length - 1]}` : c === "chunk0" ? "colocated, chunked prefill off" : `colocated, chunk_tokens ${c.slice(5)}`;
console.log(fs.readFileSync(`${out}/meta.txt`, "utf8").trim().split("\n").map((l) => `    ${l}`).join("\n"));
console.log("");
console.log("| round | workload | config | unloaded TPOT (ms) | TTFT p50 / p99 (ms) | TPOT p50 / p99 (ms) | TPOT p99 / own unloaded | goodput (req/s) |");
console.log("|---|---|---|---|---|---|---|---|");
for (let r = 1; r <= repeat; r++)
  for (const w of ["pre", "dec"])
    for (const c of cfgs) {
      const u = J(`r${r}_${c}_unl_${w}`), l = J(`r${r}_${c}_${w}`);
      console.log(`| ${r} | ${w === "pre" ? "prefill-heavy" : "decode-heavy"} | ${label(c)} | ${f(u.median_tpot_ms)} | ` +
        `${f(l.median_ttft_ms, 0)} / ${f(l.p99_ttft_ms, 0)} | ${f(l.median_tpot_ms)} / ${f(l.p99_tpot_ms)} | ` +
        `${f(l.p99_tpot_ms / u.median_tpot_ms, 2)} | ${f(l.request_goodput, 2)} |`);
    }
EOF
