#!/bin/bash
# Runs the libFuzzer targets that `make fuzz-build` built (the Makefile
# builds them: tests/fuzz/fuzz_<name>.c, clang, ASan + UBSan) for a fixed
# number of inputs each. `make fuzz` is both. Prints one TAP line per target:
#   ok - fuzz_<name> (N runs)      /      not ok - fuzz_<name> ...
#
#   scripts/fuzz.sh [name ...]     only these targets (e.g. "gguf")
#
# Env:
#   FUZZ_RUNS      inputs per target (default 20000)
#   FUZZ_BUILD     where the targets are (default build-fuzz)
#   FUZZ_MAX_TIME  seconds per target, 0 = no limit (default 0)
#
# Seeds come from tests/fuzz/corpus/<name>/ (read only); new inputs that
# libFuzzer finds go to $FUZZ_BUILD/corpus/<name>/, crashes to
# $FUZZ_BUILD/crashes/. A dictionary tests/fuzz/<name>.dict is used if present.
set -u
cd "$(dirname "$0")/.." || exit 1
OUT=${FUZZ_BUILD:-build-fuzz}
RUNS=${FUZZ_RUNS:-20000}
MAX_TIME=${FUZZ_MAX_TIME:-0}

mkdir -p "$OUT/logs" "$OUT/crashes"
targets=()
if [ $# -gt 0 ]; then
    for n in "$@"; do targets+=("tests/fuzz/fuzz_${n#fuzz_}.c"); done
else
    for f in tests/fuzz/fuzz_*.c; do [ -e "$f" ] && targets+=("$f"); done
fi
if [ ${#targets[@]} -eq 0 ]; then
    echo "fuzz: no targets in tests/fuzz/" >&2
    exit 1
fi

failed=0
for src in "${targets[@]}"; do
    name=$(basename "$src" .c)        # fuzz_gguf
    short=${name#fuzz_}               # gguf
    bin=$OUT/$name
    log=$OUT/logs/$name.log
    if [ ! -x "$bin" ] || [ "$src" -nt "$bin" ]; then
        echo "not ok - $name (not built or out of date: make fuzz-build)"
        failed=$((failed + 1))
        continue
    fi
    mkdir -p "$OUT/corpus/$short"
    dirs=("$OUT/corpus/$short")
    [ -d "tests/fuzz/corpus/$short" ] && dirs+=("tests/fuzz/corpus/$short")
    dict=()
    [ -f "tests/fuzz/$short.dict" ] && dict=("-dict=tests/fuzz/$short.dict")
    t0=$SECONDS
    "$bin" -runs="$RUNS" -max_total_time="$MAX_TIME" -malloc_limit_mb=512 -rss_limit_mb=2048 \
        -timeout=10 -artifact_prefix="$OUT/crashes/$short-" "${dict[@]}" "${dirs[@]}" \
        >"$log" 2>&1
    rc=$?
    if [ $rc -eq 0 ]; then
        echo "ok - $name ($RUNS runs, $((SECONDS - t0))s)"
    else
        echo "not ok - $name (exit $rc; log $log, crashes in $OUT/crashes/)"
        grep -E 'ERROR|SUMMARY|Test unit written' "$log" | head -10 | sed 's/^/# /'
        failed=$((failed + 1))
    fi
done
[ $failed -eq 0 ]
