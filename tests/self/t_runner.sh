#!/bin/bash
# The runner (tests/run.sh) and lib.sh's TAP helpers count honestly: fake
# scripts and a fake cmocka binary, each with one known defect, are fed to
# tests/run.sh, and its verdict (the counts line and the exit status) is
# checked. Then a copy of every real cluster test with an early `exit 0`
# planted right after its plan must fail the runner too (the plan is what
# catches it: the copy exits 0 having printed no result).
set -u
cd "$(dirname "$0")/../.." || exit 1
ROOT=$PWD
# Absolute paths: the doctored copies run from other directories.
abs() { case $1 in /*) echo "$1" ;; *) echo "$ROOT/$1" ;; esac; }
BUILD=$(abs "${BUILD:-build}")
export MODELS
MODELS=$(abs "${MODELS:-$BUILD/models}")
[ -n "${PD_GPT2_RANKS:-}" ] && export PD_GPT2_RANKS=$(abs "$PD_GPT2_RANKS")
unset PD_BIN # tests/run.sh sets it from BUILD
# `make asan` runs the suite with PD_ALLOW_SKIP=1; the fake runs below must
# not inherit it (the ones about it set it themselves).
unset PD_ALLOW_SKIP
W=$(mktemp -d /tmp/pdrunner.XXXXXX)
trap 'rm -rf "$W"' EXIT
CLUSTER_TESTS=(tests/cluster/t_*.sh)
N_CASES=18 # 13 fake scripts, 3 lib.sh cases, 2 cmocka cases
echo "1..$((N_CASES + ${#CLUSTER_TESTS[@]}))"
bad=0
ok() { echo "ok - $1"; }
not_ok() { bad=$((bad + 1)); echo "not ok - $1${2:+ # $2}"; }

# runner NAME [ENV=V...] -- [run.sh args]: runs tests/run.sh on $W/NAME/;
# sets LAST (its last line) and RC.
runner() {
    local name=$1 envs=()
    shift
    while [ $# -gt 0 ] && [ "$1" != -- ]; do envs+=("$1"); shift; done
    shift
    env "${envs[@]}" PD_TEST_DIRS="$W/$name" PD_TEST_LOGDIR="$W/logs-$name" BUILD="$BUILD" \
        tests/run.sh --scripts-only "$@" >"$W/$name.out" 2>&1
    RC=$?
    LAST=$(tail -1 "$W/$name.out")
}
# expect NAME WANT_LAST WANT_RC WHAT [ENV=V...]: one fake script $W/NAME/t_x.sh
expect() {
    local name=$1 want=$2 want_rc=$3 what=$4
    shift 4
    runner "$name" "$@" --
    if [ "$LAST" = "$want" ] && [ "$RC" = "$want_rc" ]; then
        ok "runner: $what ($want, exit $RC)"
    else
        not_ok "runner: $what" "got '$LAST' exit $RC, want '$want' exit $want_rc: $(grep -E 'runner:|^    ' "$W/$name.out" | head -3 | tr '\n' ' ')"
    fi
}
# fake NAME: the script body on stdin becomes $W/NAME/t_x.sh
fake() {
    mkdir -p "$W/$1"
    { echo '#!/bin/bash'; cat; } >"$W/$1/t_x.sh"
    chmod +x "$W/$1/t_x.sh"
}

fake pass <<<'echo 1..2; echo "ok - a"; echo "ok 2 - b"'
expect pass "2 passed, 0 failed, 0 skipped" 0 "a plan and its results pass"
fake early <<<'echo 1..3; echo "ok - a"; exit 0; echo "ok - b"; echo "ok - c"'
expect early "1 passed, 1 failed, 0 skipped" 1 "an early exit 0 (fewer results than planned) fails"
fake noplan <<<'echo "ok - a"; echo "ok - b"'
expect noplan "2 passed, 1 failed, 0 skipped" 1 "results without a plan fail"
fake silent <<<'exit 0'
expect silent "0 passed, 1 failed, 0 skipped" 1 "a script that prints nothing and exits 0 fails"
fake status <<<'echo 1..1; echo "ok - a"; exit 3'
expect status "1 passed, 1 failed, 0 skipped" 1 "a non-zero exit with every result ok fails"
fake more <<<'echo 1..1; echo "ok - a"; echo "ok - b"'
expect more "2 passed, 1 failed, 0 skipped" 1 "more results than planned fail"
fake notok0 <<<'echo 1..2; echo "ok - a"; echo "not ok - b"; exit 0'
expect notok0 "1 passed, 1 failed, 0 skipped" 1 "a not ok counts even when the script exits 0"
fake tee <<<'echo 1..2; echo "ok - a"; node -e "throw new Error(\"checker crashed\")" | tee /dev/null'
expect tee "1 passed, 1 failed, 0 skipped" 1 "a checker crashing inside node | tee (its line dropped) fails by the plan"
fake hang <<<'echo 1..1; exec sleep 30'
expect hang "0 passed, 1 failed, 0 skipped" 1 "a script past its time limit fails" PD_TEST_TIMEOUT=1
fake skip <<<'echo 1..2; echo "ok - a"; echo "ok - b # SKIP no tcpdump"'
expect skip "1 passed, 0 failed, 1 skipped" 1 "a skip is counted as a skip, not a pass, and fails the run"
expect skip "1 passed, 0 failed, 1 skipped" 0 "... unless PD_ALLOW_SKIP=1" PD_ALLOW_SKIP=1
fake oldskip <<<'echo 1..2; echo "ok - a"; echo "ok - SKIP HTTP control (no curl)"'
expect oldskip "1 passed, 0 failed, 1 skipped" 1 "the older 'ok - SKIP ...' form is a skip too"
fake skipall <<<'echo "1..0 # SKIP clang not found"'
expect skipall "0 passed, 0 failed, 1 skipped" 1 "a script that skips everything (a 1..0 plan with a skip directive) is one skip"

# lib.sh's helpers, in a fake cluster test: checker turns a crash into a
# not ok; skip_all after the plan skips what was not run.
mkdir -p "$W/lib/tests/cluster"
cp tests/cluster/lib.sh "$W/lib/tests/cluster/"
cat >"$W/lib/tests/cluster/t_x.sh" <<'EOF'
#!/bin/bash
. "$(dirname "$0")/lib.sh"
plan 3
ok "a"
checker "a node checker" node -e 'console.log("ok - b1"); throw new Error("checker crashed")'
skip_all "the rest cannot run"
EOF
chmod +x "$W/lib/tests/cluster/t_x.sh"
LAST=$(PD_TEST_DIRS="$W/lib/tests/cluster" PD_TEST_LOGDIR="$W/logs-lib" BUILD="$BUILD" \
    tests/run.sh --scripts-only 2>&1 | tee "$W/lib.out" | tail -1)
# ok a, ok b1, not ok (the crash): 3 results, the plan is met; skip_all adds none.
if [ "$LAST" = "2 passed, 1 failed, 0 skipped" ] && grep -q 'not ok - a node checker: the checker exited 1' "$W/logs-lib/t_x.sh.log"; then
    ok "lib.sh: checker reports a crashing checker as not ok (its printed lines kept)"
else
    not_ok "lib.sh: checker reports a crashing checker as not ok" "got '$LAST'"
fi
cat >"$W/lib/tests/cluster/t_x.sh" <<'EOF'
#!/bin/bash
. "$(dirname "$0")/lib.sh"
plan 3
ok "a"
skip_all "the rest cannot run"
EOF
LAST=$(PD_TEST_DIRS="$W/lib/tests/cluster" PD_TEST_LOGDIR="$W/logs-lib" BUILD="$BUILD" PD_ALLOW_SKIP=1 \
    tests/run.sh --scripts-only 2>&1 | tail -1)
check_last() { if [ "$LAST" = "$1" ]; then ok "$2 ($1)"; else not_ok "$2" "got '$LAST'"; fi; }
check_last "1 passed, 0 failed, 2 skipped" "lib.sh: skip_all after the plan counts every result not run as a skip"
cat >"$W/lib/tests/cluster/t_x.sh" <<'EOF'
#!/bin/bash
. "$(dirname "$0")/lib.sh"
plan 2
ok "a"
not_ok "b"
echo "ok - c: not counted by the script"
EOF
LAST=$(PD_TEST_DIRS="$W/lib/tests/cluster" PD_TEST_LOGDIR="$W/logs-lib" BUILD="$BUILD" \
    tests/run.sh --scripts-only 2>&1 | tail -1)
check_last "2 passed, 2 failed, 0 skipped" "lib.sh: a result printed past the plan fails the script"

# cmocka: a skip is a skip; a binary that stops before its summary fails.
if cc -x c - -o "$W/cm-skip" -lcmocka 2>"$W/cc.err" <<'EOF'
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <cmocka.h>
static void a(void **s) { (void)s; }
static void b(void **s) { (void)s; if (getenv("CM_EXIT")) exit(0); skip(); }
static void c(void **s) { (void)s; }
int main(void)
{
    const struct CMUnitTest t[] = { cmocka_unit_test(a), cmocka_unit_test(b), cmocka_unit_test(c) };
    return cmocka_run_group_tests(t, NULL, NULL);
}
EOF
then
    mkdir -p "$W/cm/tests"
    cp "$W/cm-skip" "$W/cm/tests/test_fake"
    LAST=$(BUILD="$W/cm" PD_TEST_LOGDIR="$W/logs-cm" tests/run.sh --unit-only 2>&1 | tail -1)
    check_last "2 passed, 0 failed, 1 skipped" "runner: a cmocka skip() is counted as a skip"
    LAST=$(CM_EXIT=1 BUILD="$W/cm" PD_TEST_LOGDIR="$W/logs-cm" tests/run.sh --unit-only 2>&1 | tail -1)
    check_last "0 passed, 1 failed, 0 skipped" "runner: a cmocka binary that exits 0 before its summary fails (no plan met)"
else
    not_ok "runner: a cmocka skip() is counted as a skip" "cc -lcmocka failed: $(head -c 200 "$W/cc.err")"
    not_ok "runner: a cmocka binary that exits 0 before its summary fails" "not built"
fi

# Every real cluster test, with `exit 0` planted right after its plan line
# (a test whose plan comes from the program it execs, like t_soak_check.sh:
# right before that exec): the runner must fail each, and each must declare
# its plan before it starts anything.
mkdir -p "$W/early/tests/cluster"
cp tests/cluster/lib.sh "$W/early/tests/cluster/"
for t in "${CLUSTER_TESTS[@]}"; do
    name=$(basename "$t")
    d=$W/early/tests/cluster
    rm -f "$d"/t_*.sh
    if grep -qE '^plan ' "$t"; then
        sed '0,/^plan /{/^plan /a exit 0
}' "$t" >"$d/$name"
    elif grep -qE '^exec node ' "$t"; then
        sed '0,/^exec node /{/^exec node /i exit 0
}' "$t" >"$d/$name"
    else
        not_ok "early exit 0 in $name fails the run" "no 'plan N' line (nor an exec of a program printing one)"
        continue
    fi
    chmod +x "$d/$name"
    LAST=$(PD_TEST_DIRS="$d" PD_TEST_LOGDIR="$W/logs-early" BUILD="$BUILD" tests/run.sh --scripts-only 2>&1 | tail -1)
    case $LAST in
    *" 1 failed, 0 skipped") ok "early exit 0 in $name fails the run ($LAST)" ;;
    *) not_ok "early exit 0 in $name fails the run" "got '$LAST': $(grep runner: "$W/logs-early/$name.log")" ;;
    esac
done
[ $bad = 0 ]
