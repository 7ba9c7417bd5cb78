#!/bin/bash
# TAP: builds every libFuzzer target (scripts/fuzz.sh) and runs each for a
# short while (2000 inputs, at most 15 s each). Prints "ok - fuzz_<name>"
# per target. Skips (no TAP line) when clang cannot build fuzzers.
set -u
cd "$(dirname "$0")/../.." || exit 1
if ! command -v clang >/dev/null 2>&1; then
    echo "# skip: clang not found (apt-get install clang libclang-rt-14-dev)"
    exit 0
fi
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
echo 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { (void)d; (void)n; return 0; }' >"$probe/p.c"
if ! clang -fsanitize=fuzzer,address,undefined "$probe/p.c" -o "$probe/p" 2>/dev/null; then
    echo "# skip: clang cannot link -fsanitize=fuzzer (apt-get install libclang-rt-14-dev)"
    exit 0
fi
FUZZ_RUNS=${FUZZ_RUNS:-2000} FUZZ_MAX_TIME=${FUZZ_MAX_TIME:-15} timeout 300 scripts/fuzz.sh
