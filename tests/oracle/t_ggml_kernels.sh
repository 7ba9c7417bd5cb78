#!/bin/bash
# Our K-quant and IQ4_NL code against llama.cpp's own functions, bit for bit
# (quantizers, dequantization, activation quantizers, dot products): the
# referee's ggml libraries (node-llama-cpp, the haswell/AVX2 variant pinned
# by scripts/referee.sh) are loaded by build/tests/ggml_kcheck with dlopen.
# Prints TAP: its plan, then one line per check (tests/helpers/ggml_kcheck.c).
set -u
BUILD=${BUILD:-build}
LIBS=tests/oracle/avx2/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64
if [ ! -f "$LIBS/libggml-cpu-haswell.so" ]; then
    echo "1..1"
    echo "not ok - llama.cpp's ggml libraries in $LIBS (run scripts/referee.sh)"
    exit 1
fi
exec "$BUILD/tests/ggml_kcheck" "$LIBS"
