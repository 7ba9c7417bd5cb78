#!/bin/bash
# TAP: builds every libFuzzer target (scripts/fuzz.sh) and runs each for a
# short while (2000 inputs, at most 15 s each): one "ok - fuzz_<name>" per
# target, the plan being the number of targets. Without clang (or its
# libFuzzer runtime) nothing runs: "1..0 # SKIP", a skip that fails
# `make test` (scripts/deps.sh installs clang and libclang-rt-14-dev).
set -u
cd "$(dirname "$0")/../.." || exit 1
if ! command -v clang >/dev/null 2>&1; then
    echo "1..0 # SKIP clang not found (apt-get install clang libclang-rt-14-dev)"
    exit 0
fi
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
echo 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { (void)d; (void)n; return 0; }' >"$probe/p.c"
if ! clang -fsanitize=fuzzer,address,undefined "$probe/p.c" -o "$probe/p" 2>/dev/null; then
    echo "1..0 # SKIP clang cannot link -fsanitize=fuzzer (apt-get install libclang-rt-14-dev)"
    exit 0
fi
targets=(tests/fuzz/fuzz_*.c)
echo "1..${#targets[@]}"
FUZZ_RUNS=${FUZZ_RUNS:-2000} FUZZ_MAX_TIME=${FUZZ_MAX_TIME:-15} timeout 300 scripts/fuzz.sh
