#!/bin/bash
# The test runner: every unit test (cmocka), then the oracle, cluster and
# fuzz-regression scripts. Each script prints TAP-style lines
# "ok - NAME" / "not ok - NAME"; cmocka binaries report their own counts.
# Ends with one line: "N passed, N failed" (", N skipped" when a script
# printed "ok - SKIP why": a skip is never counted as a pass).
#
#   tests/run.sh [--unit-only] [FILTER]
# FILTER: an extended regular expression matched against each test's path
# (a plain name matches as a substring: `tests/run.sh t_http`).
# Env: BUILD (build dir, default build), MODELS (model dir, default $BUILD/models)
set -u
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
export BUILD
export MODELS=${MODELS:-$BUILD/models}
export PD_BIN=$BUILD/bin
# The GPT-2 ranks (vocabulary source) live beside the models that used them.
if [ -z "${PD_GPT2_RANKS:-}" ]; then
    for r in "$BUILD/data/gpt2-ranks.txt" "$MODELS/../data/gpt2-ranks.txt"; do
        [ -s "$r" ] && { export PD_GPT2_RANKS=$r; break; }
    done
fi
UNIT_ONLY=0
FILTER=""
for a in "$@"; do
    case "$a" in
    --unit-only) UNIT_ONLY=1 ;;
    *) FILTER="$a" ;;
    esac
done
passed=0
failed=0
skipped=0 # "ok - SKIP why" lines (tests/cluster/lib.sh skip_all): not passes
failures=()
LOGDIR=$BUILD/test-logs
mkdir -p "$LOGDIR"

run_cmocka() {
    local bin=$1 name log p f
    name=$(basename "$bin")
    log=$LOGDIR/$name.log
    local t0=$SECONDS
    timeout 600 "$bin" >"$log" 2>&1
    local rc=$?
    p=$(grep -E '^\[  PASSED  \] [0-9]+ test' "$log" | awk '{print $4}' | tail -1)
    f=$(grep -E '^\[  FAILED  \] [0-9]+ test' "$log" | awk '{print $4}' | tail -1)
    p=${p:-0}; f=${f:-0}
    if [ "$rc" != 0 ] && [ "$f" = 0 ]; then f=1; fi
    passed=$((passed + p)); failed=$((failed + f))
    printf '%-40s %3d passed %3d failed  (%ds)\n' "$name" "$p" "$f" $((SECONDS - t0))
    if [ "$f" != 0 ]; then
        failures+=("$name")
        grep -E '^\[  (FAILED|ERROR)|[Ff]ailure|ERROR|error:' "$log" | head -20 | sed 's/^/    /'
    fi
}

run_script() {
    local script=$1 name log p f k
    name=$(basename "$script")
    log=$LOGDIR/$name.log
    local t0=$SECONDS
    timeout 1200 "$script" >"$log" 2>&1
    local rc=$?
    p=$(grep -E '^ok( |$)' "$log" | grep -cv '^ok - SKIP ')
    k=$(grep -c '^ok - SKIP ' "$log")
    f=$(grep -cE '^not ok( |$)' "$log")
    if [ "$rc" != 0 ] && [ "$f" = 0 ]; then f=1; echo "not ok - $name exited $rc" >>"$log"; fi
    passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + k))
    printf '%-40s %3d passed %3d failed  (%ds)%s\n' "$name" "$p" "$f" $((SECONDS - t0)) \
        "$([ "$k" = 0 ] || grep -m1 '^ok - SKIP ' "$log" | sed 's/^ok - SKIP /  skipped: /')"
    if [ "$f" != 0 ]; then
        failures+=("$name")
        grep -E '^not ok|^#' "$log" | head -30 | sed 's/^/    /'
    fi
}

for t in "$BUILD"/tests/test_*; do
    [ -x "$t" ] || continue
    [[ $t =~ $FILTER ]] || continue
    run_cmocka "$t"
done
if [ "$UNIT_ONLY" = 0 ]; then
    for dir in tests/cli tests/oracle tests/cluster tests/deploy tests/fuzz; do
        for s in "$dir"/t_*.sh "$dir"/t_*.mjs; do
            [ -e "$s" ] || continue
            [[ $s =~ $FILTER ]] || continue
            run_script "$s"
        done
    done
fi
if [ ${#failures[@]} -gt 0 ]; then
    echo "failing: ${failures[*]} (logs in $LOGDIR)"
fi
if [ "$skipped" = 0 ]; then
    echo "$passed passed, $failed failed"
else
    echo "$passed passed, $failed failed, $skipped skipped"
fi
[ "$failed" = 0 ] && [ "$passed" -gt 0 ]
