#!/bin/bash
# pd-run and pd-mkmodel on hostile input: each case must end with a clear
# error on stderr naming the problem, a non-zero exit, and no sanitizer
# report (this script also runs under `make asan`, where a leak or an
# invalid access prints an AddressSanitizer/LeakSanitizer report).
set -u
BIN=${PD_BIN:-build/bin}
MODELS=${MODELS:-build/models}
M=$MODELS/tiny-llama-spm-f32.gguf
T=$(mktemp -d /tmp/pdcli.XXXXXX)
trap 'rm -rf "$T"' EXIT
n=0 bad=0
# The plan: one result per expect_fail line below, the truncated K-quant
# file, one per test model, and the happy path.
N_MODELS=$(find "$MODELS" -maxdepth 1 -name '*.gguf' | wc -l)
echo "1..$(($(grep -c '^expect_fail ' "$0") + 1 + N_MODELS + 1))"

# expect_fail NAME PATTERN CMD... : non-zero exit, stderr matches PATTERN, no sanitizer report
expect_fail() {
    local name=$1 pat=$2; shift 2
    n=$((n + 1))
    "$@" >"$T/out" 2>"$T/err"
    local rc=$?
    if [ $rc -eq 0 ]; then
        bad=$((bad + 1)); echo "not ok - $name: exit 0"; return
    fi
    if grep -qE "Sanitizer|runtime error:" "$T/err"; then
        bad=$((bad + 1)); echo "not ok - $name: sanitizer report"; sed 's/^/# /' "$T/err" | head -20; return
    fi
    if [ $rc -gt 128 ]; then
        bad=$((bad + 1)); echo "not ok - $name: killed by signal $((rc - 128))"; return
    fi
    if ! grep -qE -- "$pat" "$T/err"; then
        bad=$((bad + 1)); echo "not ok - $name: stderr does not match /$pat/"; sed 's/^/# /' "$T/err" | head -5; return
    fi
    echo "ok - $name (exit $rc: $(head -c 160 "$T/err" | tr '\n' ' '))"
}

size=$(stat -c %s "$M")
head -c 100 "$M" >"$T/trunc-header.gguf"
head -c $((size / 2)) "$M" >"$T/trunc-data.gguf"
expect_fail "truncated in the header" "gguf: .*(truncat|end of|past the end|cannot fit|bytes left)" "$BIN/pd-run" -m "$T/trunc-header.gguf" -p hi
expect_fail "truncated in the tensor data" "gguf: .*(past the end|truncat|data section)" "$BIN/pd-run" -m "$T/trunc-data.gguf" -p hi
{ printf 'GGUX'; tail -c +5 "$M"; } >"$T/magic.gguf"
expect_fail "wrong magic" "gguf: .*magic" "$BIN/pd-run" -m "$T/magic.gguf" -p hi
{ head -c 4 "$M"; printf '\x09\x00\x00\x00'; tail -c +9 "$M"; } >"$T/version.gguf"
expect_fail "unsupported version 9" "gguf: .*version" "$BIN/pd-run" -m "$T/version.gguf" -p hi
# n_tensors (bytes 8..15) = 2^63
{ head -c 8 "$M"; printf '\x00\x00\x00\x00\x00\x00\x00\x80'; tail -c +17 "$M"; } >"$T/count.gguf"
expect_fail "huge tensor count" "gguf: .*(n_tensors|count|tensor)" "$BIN/pd-run" -m "$T/count.gguf" -p hi
# general.architecture = "gpt99" (same length, so every offset stays valid)
perl -0777 -pe 's/(general\.architecture\x08\x00\x00\x00\x05\x00{7})llama/${1}gpt99/' "$M" >"$T/arch.gguf"
expect_fail "unknown architecture" "unsupported architecture 'gpt99'" "$BIN/pd-run" -m "$T/arch.gguf" -p hi
expect_fail "missing file" "(No such file|cannot open|open)" "$BIN/pd-run" -m "$T/none.gguf" -p hi
long=$(for i in $(seq 1 1500); do printf 'word%d ' "$i"; done)
expect_fail "prompt longer than the context" "exceeds the context length" "$BIN/pd-run" -m "$M" -p "$long" -n 8
expect_fail "invalid UTF-8 prompt" "(UTF-8|utf-8)" "$BIN/pd-run" -m "$M" -p $'abc\xff\xfedef'
expect_fail "empty prompt" "empty prompt" "$BIN/pd-run" -m "$M" -p ""
expect_fail "negative temperature" "temp" "$BIN/pd-run" -m "$M" -p hi --temp -1
expect_fail "top-p out of range" "top-p" "$BIN/pd-run" -m "$M" -p hi --top-p 1.5
expect_fail "unknown flag" "unknown option" "$BIN/pd-run" -m "$M" -p hi --frobnicate
expect_fail "pd-mkmodel bad type" "--type" "$BIN/pd-mkmodel" -o "$T/x.gguf" --type q5_0
expect_fail "pd-mkmodel bad mix" "--mix: expected one of q2_k" "$BIN/pd-mkmodel" -o "$T/x.gguf" --mix q4_k_x
expect_fail "pd-mkmodel K-quant rows not a multiple of 256" "rows of 128 are not a multiple of 256.*q5_0" \
    "$BIN/pd-mkmodel" -o "$T/x.gguf" --shape tiny --type q4_k
expect_fail "pd-mkmodel bad shape" "unknown shape" "$BIN/pd-mkmodel" -o "$T/x.gguf" --shape huge
expect_fail "pd-mkmodel float flag with trailing junk" "--rope-base: '1x' is not a number" "$BIN/pd-mkmodel" -o "$T/x.gguf" --rope-base 1x
expect_fail "pd-mkmodel zero dimension" "--dim: '0' is not an integer" "$BIN/pd-mkmodel" -o "$T/x.gguf" --dim 0
expect_fail "pd-mkmodel negative seed" "--seed: '-3' is not an unsigned integer" "$BIN/pd-mkmodel" -o "$T/x.gguf" --seed -3
expect_fail "pd-run negative seed" "--seed: '-3' is not an unsigned integer" "$BIN/pd-run" -m "$M" -p hi --seed -3

# A K-quant file cut inside its last super-block.
K=$MODELS/tiny-k-llama-spm-mix-q4_k_m.gguf
if [ -f "$K" ]; then
    head -c $(($(stat -c %s "$K") - 100)) "$K" >"$T/trunc-k.gguf"
    expect_fail "K-quant file truncated in a super-block" "gguf: .*past the end of the data section" \
        "$BIN/pd-run" -m "$T/trunc-k.gguf" -p hi
else
    bad=$((bad + 1)); echo "not ok - $K exists (scripts/models.sh makes it)"
fi

# Every test model loads and generates (the loader's deny-by-default checks
# refuse none of the files pd-mkmodel writes).
for f in "$MODELS"/*.gguf; do
    n=$((n + 1))
    if "$BIN/pd-run" -m "$f" -p "Hello" -n 2 --ignore-eos >/dev/null 2>"$T/err"; then
        echo "ok - $(basename "$f") loads and generates"
    else
        bad=$((bad + 1)); echo "not ok - $(basename "$f") loads and generates"; sed 's/^/# /' "$T/err" | head -3
    fi
done

# And the happy path still works (so the cases above failed for their reason).
n=$((n + 1))
if out=$("$BIN/pd-run" -m "$M" -p "Hello" -n 8 --ignore-eos 2>"$T/err") && [ -n "$out" ]; then
    echo "ok - valid model and prompt generate text"
else
    bad=$((bad + 1)); echo "not ok - valid model and prompt generate text"; sed 's/^/# /' "$T/err" | head
fi
[ "$bad" = 0 ]
