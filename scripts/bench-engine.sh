#!/bin/bash
# Engine benchmark: this machine's limits, pd-run --bench and llama.cpp on the
# same files, in one run. Prints each figure as a fraction of its limit and as
# a ratio to llama.cpp.
#   make bench-engine [THREADS="1 2"] [ROUNDS=1] [LLAMA_CPP_DIR=/path/to/llama.cpp]
# llama.cpp is the reference for speed only when it is a native build:
# LLAMA_CPP_DIR names a llama.cpp tree built outside this repository
# (cmake -B build -DGGML_NATIVE=ON ...; its build/bin holds llama-bench and
# llama-batched-bench). Without it the npm package node-llama-cpp (a prebuilt,
# generic build about 2x slower: a correctness referee, not a speed bar) is
# used, and the report says so.
# Each round runs ours, then llama.cpp, then ours again, back to back, per
# model and thread count: the machine is shared, so the report gives the range
# of the ratios over those pairs, never a figure from another moment.
# BEFORE_BIN=/path/to/an/older/pd-run adds that binary to every round (after
# llama.cpp), for before/after tables measured in the same run.
# Env: BUILD, THREADS (list), ROUNDS, BENCH_MODELS (list), LLAMACPP_TIMEOUT (s),
# BEFORE_BIN.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
THREADS=${THREADS:-1 2}
ROUNDS=${ROUNDS:-1}
BENCH_MODELS=${BENCH_MODELS:-llama-110M-f32 tinyllama-1.1B-q8_0 tinyllama-1.1B-q4_0 tinyllama-1.1B-q4_k_m}
LLAMACPP_TIMEOUT=${LLAMACPP_TIMEOUT:-900}
BUILD=$BUILD scripts/models.sh bench >/dev/null
OUT=$BUILD/bench
rm -rf "$OUT"
mkdir -p "$OUT"

LC_BIN=
if [ -n "${LLAMA_CPP_DIR:-}" ]; then
    LC_BIN=$LLAMA_CPP_DIR/build/bin
    for t in llama-bench llama-batched-bench; do
        if [ ! -x "$LC_BIN/$t" ]; then
            echo "bench-engine: LLAMA_CPP_DIR=$LLAMA_CPP_DIR has no $LC_BIN/$t (build it first)" >&2
            exit 2
        fi
    done
    echo "== reference: native llama.cpp at $LLAMA_CPP_DIR ($(git -C "$LLAMA_CPP_DIR" rev-parse --short HEAD 2>/dev/null || echo '?'))"
else
    echo "== reference: llama.cpp from npm (node-llama-cpp prebuilt; NOT a native build, not a speed bar)"
    echo "   set LLAMA_CPP_DIR=/path/to/a/native/llama.cpp build for the real comparison"
fi
echo "== load average: $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$OUT/load-start.txt"

theirs() { # model-file threads out-json
    if [ -n "$LC_BIN" ]; then
        timeout "$LLAMACPP_TIMEOUT" node scripts/bench-llamacpp-native.mjs "$LC_BIN" "$1" "$2" | tee "$3" && return 0
    else
        timeout "$LLAMACPP_TIMEOUT" node tests/oracle/bench-llamacpp.mjs "$1" "$2" | tee "$3" && return 0
    fi
    echo '{"prefill_tok_s":0,"decode_b1_tok_s":0,"decode_b8_tok_s":0,"decode_b32_tok_s":0,"failed":true}' >"$3"
}

for t in $THREADS; do
    d=$OUT/t$t
    mkdir -p "$d"
    echo "== machine limits ($t threads)"
    "$BUILD/bin/pd-kbench" --limits --threads "$t" --json | tee "$d/limits-before.json"
    for r in $(seq 1 "$ROUNDS"); do
        for m in $BENCH_MODELS; do
            f=$BUILD/models/$m.gguf
            echo "== round $r, $m, $t threads: pdserve, llama.cpp, ${BEFORE_BIN:+pdserve before, }pdserve"
            "$BUILD/bin/pd-run" -m "$f" --bench --json --threads "$t" | tee "$d/$m.pd.$r.a.json"
            theirs "$f" "$t" "$d/$m.ref.$r.json"
            if [ -n "${BEFORE_BIN:-}" ]; then
                "$BEFORE_BIN" -m "$f" --bench --json --threads "$t" | tee "$d/$m.before.$r.json"
            fi
            "$BUILD/bin/pd-run" -m "$f" --bench --json --threads "$t" | tee "$d/$m.pd.$r.b.json"
        done
    done
    "$BUILD/bin/pd-kbench" --limits --threads "$t" --json | tee "$d/limits-after.json"
done
echo "== load average: $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$OUT/load-end.txt"
node scripts/bench-report.mjs "$OUT" "${LC_BIN:+native}" | tee "$OUT/report.md"
