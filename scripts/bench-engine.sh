#!/bin/bash
# Engine benchmark: this machine's limits, pd-run --bench and llama.cpp
# (node-llama-cpp) on the same files, in one run. Prints each figure as a
# fraction of its limit and as a ratio to llama.cpp.
#   make bench-engine [THREADS=2]
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
THREADS=${THREADS:-2}
BUILD=$BUILD scripts/models.sh bench >/dev/null
OUT=$BUILD/bench
mkdir -p "$OUT"
echo "== machine limits ($THREADS threads)"
"$BUILD/bin/pd-kbench" --limits --threads "$THREADS" --json | tee "$OUT/limits.json"
for m in llama-110M-f32 tinyllama-1.1B-q8_0; do
    f=$BUILD/models/$m.gguf
    echo "== $m: pdserve"
    "$BUILD/bin/pd-run" -m "$f" --bench --json --threads "$THREADS" | tee "$OUT/$m.pd.json"
    echo "== $m: llama.cpp (node-llama-cpp prebuilt)"
    node tests/oracle/bench-llamacpp.mjs "$f" "$THREADS" | tee "$OUT/$m.llamacpp.json"
done
node scripts/bench-report.mjs "$OUT" | tee "$OUT/report.md"
