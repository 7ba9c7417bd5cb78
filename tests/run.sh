#!/bin/bash
# The test runner: every unit test (cmocka), then the self, cli, oracle,
# cluster, deploy and fuzz-regression scripts. Ends with one line:
#   "N passed, N failed, N skipped"
#
# How it counts (docs/operations.md, "How the suite counts"):
# - A script speaks TAP: a plan "1..N" (first or last line), then one
#   "ok - NAME" / "not ok - NAME" per check. A check that did not run is a
#   skip: "ok - NAME # SKIP why" (or the older "ok - SKIP why"); a script that
#   runs nothing at all prints "1..0 # SKIP why". Skips are counted apart,
#   never as passes.
# - A script fails (one failure more than its "not ok" lines) when it has no
#   plan, prints more or fewer results than planned, or exits non-zero
#   without a "not ok" line (a crash, a timeout, an early exit).
# - A cmocka binary's plan is its "Running N test(s)" line: passed + failed +
#   skipped must add up to N, and its exit status must agree.
# - Any skip fails the run unless PD_ALLOW_SKIP=1: where the project's own
#   set-up ran (make test installs the packages, models and npm modules the
#   tests need), a skip means the set-up is broken. The counts line is the
#   same either way; the exit status says whether skips were accepted.
#
#   tests/run.sh [--unit-only | --scripts-only] [FILTER]
# FILTER: an extended regular expression matched against each test's path
# (a plain name matches as a substring: `tests/run.sh t_http`).
# Env: BUILD (build dir, default build), MODELS (model dir, default
# $BUILD/models), PD_ALLOW_SKIP=1 (skips do not fail the run),
# PD_TEST_DIRS (script directories, default "tests/self tests/cli
# tests/oracle tests/cluster tests/deploy tests/fuzz"; the runner's
# self-test points it at doctored scripts), PD_TEST_TIMEOUT (seconds per
# script, default 1200), PD_TEST_LOGDIR (default $BUILD/test-logs).
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
UNITS=1
SCRIPTS=1
FILTER=""
for a in "$@"; do
    case "$a" in
    --unit-only) SCRIPTS=0 ;;
    --scripts-only) UNITS=0 ;;
    *) FILTER="$a" ;;
    esac
done
DIRS=${PD_TEST_DIRS:-tests/self tests/cli tests/oracle tests/cluster tests/deploy tests/fuzz}
TIMEOUT=${PD_TEST_TIMEOUT:-1200}
passed=0
failed=0
skipped=0
failures=()
skips=()
LOGDIR=${PD_TEST_LOGDIR:-$BUILD/test-logs}
mkdir -p "$LOGDIR"

# report NAME P F S SECONDS LOG: the script's line, then what failed or skipped.
report() {
    local name=$1 p=$2 f=$3 s=$4 secs=$5 log=$6
    passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
    printf '%-40s %3d passed %3d failed %3d skipped  (%ds)\n' "$name" "$p" "$f" "$s" "$secs"
    if [ "$f" != 0 ]; then
        failures+=("$name")
        grep -E '^not ok|^#|^\[  (FAILED|ERROR)|^\[   LINE|runner:' "$log" | head -30 | sed 's/^/    /'
    fi
    if [ "$s" != 0 ]; then
        skips+=("$name")
        grep -iE '^ok .*# *skip|^ok( [0-9]+)? - SKIP|^1\.\.0|^\[  SKIPPED \] [^0-9]' "$log" | head -10 | sed 's/^/    /'
    fi
}

run_cmocka() {
    local bin=$1 name log p f s planned why=""
    name=$(basename "$bin")
    log=$LOGDIR/$name.log
    local t0=$SECONDS
    timeout 600 "$bin" >"$log" 2>&1
    local rc=$?
    sum() { grep -E "$1" "$log" | sed -E 's/[^0-9]*([0-9]+).*/\1/' | awk '{ n += $1 } END { print n + 0 }'; }
    planned=$(sum '^\[==========\] Running [0-9]+ test')
    p=$(sum '^\[  PASSED  \] [0-9]+ test')
    f=$(sum '^\[  FAILED  \] [0-9]+ test')
    s=$(sum '^\[  SKIPPED \] [0-9]+ test')
    if [ "$planned" = 0 ]; then
        why="no 'Running N test(s)' line (no plan)"
    elif [ $((p + f + s)) != "$planned" ]; then
        why="planned $planned, reported $((p + f + s)) (exit $rc)"
    elif [ "$rc" != 0 ] && [ "$f" = 0 ]; then
        why="exited $rc with no failed test"
    fi
    if [ -n "$why" ]; then
        f=$((f + 1))
        echo "runner: $name: $why" >>"$log"
    fi
    report "$name" "$p" "$f" "$s" $((SECONDS - t0)) "$log"
}

# tap_count LOG: "PASS FAIL SKIP RESULTS PLANS PLAN SKIPALL" of a TAP log.
tap_count() {
    awk '
        /^1\.\.[0-9]+/ { plans++; split($0, a, /[. ]+/); plan = a[2] + 0;
                         if (plan == 0 && tolower($0) ~ /# *skip/) skipall = 1; next }
        /^not ok( |$)/ { f++; next }
        /^ok( |$)/ { if (tolower($0) ~ /# *skip/ || $0 ~ /^ok( [0-9]+)? - SKIP( |$)/) s++; else p++; next }
        END { printf "%d %d %d %d %d %d %d\n", p, f, s, p + f + s, plans, plan, skipall }' "$1"
}

run_script() {
    local script=$1 name log p f s n plans plan skipall why=""
    name=$(basename "$script")
    log=$LOGDIR/$name.log
    local t0=$SECONDS
    timeout "$TIMEOUT" "$script" >"$log" 2>&1
    local rc=$?
    read -r p f s n plans plan skipall < <(tap_count "$log")
    if [ "$plans" = 0 ]; then
        why="no plan (1..N)"
    elif [ "$plans" != 1 ]; then
        why="$plans plan lines"
    elif [ "$skipall" = 1 ] && [ "$n" = 0 ]; then
        s=1 # the whole script skipped: one skip
    elif [ "$n" != "$plan" ]; then
        why="planned $plan, ran $n"
    fi
    if [ "$rc" = 124 ]; then
        why="${why:+$why; }timed out after ${TIMEOUT}s"
    elif [ "$rc" != 0 ] && [ "$f" = 0 ]; then
        why="${why:+$why; }exited $rc with no 'not ok' line"
    fi
    if [ -n "$why" ]; then
        f=$((f + 1))
        echo "runner: $name: $why" >>"$log"
    fi
    report "$name" "$p" "$f" "$s" $((SECONDS - t0)) "$log"
}

if [ "$UNITS" = 1 ]; then
    for t in "$BUILD"/tests/test_*; do
        [ -x "$t" ] || continue
        [[ $t =~ $FILTER ]] || continue
        run_cmocka "$t"
    done
fi
if [ "$SCRIPTS" = 1 ]; then
    for dir in $DIRS; do
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
verdict=0
[ "$failed" = 0 ] && [ "$passed" -gt 0 ] || verdict=1
if [ ${#skips[@]} -gt 0 ]; then
    if [ "${PD_ALLOW_SKIP:-0}" = 1 ]; then
        echo "skipping: ${skips[*]} (accepted: PD_ALLOW_SKIP=1)"
    else
        echo "skipping: ${skips[*]}: a skip fails the run (the set-up, make deps / make models," \
             "installs what every test needs; PD_ALLOW_SKIP=1 accepts skips)"
        verdict=1
    fi
fi
echo "$passed passed, $failed failed, $skipped skipped"
exit $verdict
