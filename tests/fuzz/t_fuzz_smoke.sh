#!/bin/bash
# TAP: builds every libFuzzer target (make fuzz-build) and runs each for a
# short while (2000 inputs, at most 15 s each): "ok - the fuzz targets
# build", then one "ok - fuzz_<name>" per target; the plan is 1 + the number
# of targets. A source that does not compile fails the build line (and the
# run: the targets are not run). Without clang (or its libFuzzer runtime)
# nothing runs: "1..0 # SKIP", a skip that fails `make test`
# (scripts/deps.sh installs clang and libclang-rt-14-dev).
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
echo "1..$((1 + ${#targets[@]}))"
FUZZ_BUILD=${FUZZ_BUILD:-build-fuzz}
mkdir -p "$FUZZ_BUILD"
# One fuzz build at a time per build dir (make test and make asan may overlap).
exec 9>"$FUZZ_BUILD/.lock"
flock 9
log=$FUZZ_BUILD/build.log
if ! env -u MAKEFLAGS -u MAKELEVEL nice make --no-print-directory -s -j2 fuzz-build \
    FUZZ_BUILD="$FUZZ_BUILD" >"$log" 2>&1; then
    echo "not ok - the fuzz targets build (make fuzz-build; $log)"
    grep -E 'error' "$log" | head -20 | sed 's/^/# /'
    exit 1
fi
echo "ok - the fuzz targets build (make fuzz-build)"
FUZZ_BUILD=$FUZZ_BUILD FUZZ_RUNS=${FUZZ_RUNS:-2000} FUZZ_MAX_TIME=${FUZZ_MAX_TIME:-15} \
    timeout 300 scripts/fuzz.sh
