#!/bin/bash
# Engine benchmark: this machine's limits, pd-run --bench and llama.cpp
# (node-llama-cpp) on the same files, in one run. Prints each figure as a
# fraction of its limit and as a ratio to llama.cpp.
#   make bench-engine [THREADS=2]
# The machine is shared: compare the ratios measured in one run.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
THREADS=${THREADS:-2}
LLAMACPP_TIMEOUT=${LLAMACPP_TIMEOUT:-600}
BUILD=$BUILD scripts/models.sh bench >/dev/null
OUT=$BUILD/bench
mkdir -p "$OUT"
echo "== machine limits ($THREADS threads)"
"$BUILD/bin/pd-kbench" --limits --threads "$THREADS" --json | tee "$OUT/limits.json"
for m in llama-110M-f32 tinyllama-1.1B-q8_0; do
    f=$BUILD/models/$m.gguf
    echo "== $m: pdserve (default: batch-invariant for float weights)"
    "$BUILD/bin/pd-run" -m "$f" --bench --json --threads "$THREADS" | tee "$OUT/$m.pd.json"
    echo "== $m: pdserve --no-batch-invariant (sgemm prefill)"
    "$BUILD/bin/pd-run" -m "$f" --bench --json --threads "$THREADS" --no-batch-invariant | tee "$OUT/$m.pd-sgemm.json"
    echo "== $m: llama.cpp (node-llama-cpp prebuilt)"
    timeout "$LLAMACPP_TIMEOUT" node tests/oracle/bench-llamacpp.mjs "$f" "$THREADS" | tee "$OUT/$m.llamacpp.json" ||
        echo '{"prefill_tok_s":0,"decode_b1_tok_s":0,"decode_b8_tok_s":0,"decode_b32_tok_s":0,"timed_out":true}' >"$OUT/$m.llamacpp.json"
done
node scripts/bench-report.mjs "$OUT" | tee "$OUT/report.md"
