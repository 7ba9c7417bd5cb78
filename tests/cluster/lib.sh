# lib.sh -- shared by tests/cluster/t_*.sh: start real pdserve processes on
# loopback with ephemeral ports, always stop them at exit, print TAP lines.
#
#   . "$(dirname "$0")/lib.sh"
#   start_router [--set k=v ...]        sets ROUTER (client endpoint), ROUTER_W
#   start_worker prefill|decode|both ID [--set k=v ...]
#   wait_workers N                      until N workers are registered (10 s)
#   cli ARGS...                         pd-cli against this cluster
#   plan N                              "1..N": the number of results to come
#   ok NAME / not_ok NAME [why] / check NAME CMD... / skip NAME WHY
#   checker NAME CMD...                 a program's own TAP lines, crash = not ok
#   skip_all WHY                        nothing (more) runs: the rest are skips
#
# Env: BUILD (default build), PD_BIN (default $BUILD/bin), MODELS
# (default $BUILD/models), MODEL (default $MODELS/tiny-llama-spm-f32.gguf).
# Logs stay in $T (printed on failure) until the test exits.
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
BUILD=${BUILD:-build}
PD_BIN=${PD_BIN:-$BUILD/bin}
MODELS=${MODELS:-$BUILD/models}
MODEL=${MODEL:-$MODELS/tiny-llama-spm-f32.gguf}
T=$(mktemp -d /tmp/pdtest.XXXXXX)
PIDS=()
FAILED=0
# Settings every test cluster shares: one compute thread per process (the
# machine has 2 cores), a KV pool sized for the tiny model, quick beats.
# Liveness 10 beats (2 s): sanitizer builds on a loaded machine are slow.
COMMON_SETS=(--set model.threads=1 --set kv.num_blocks=1024 --set worker.heartbeat_ms=200
             --set router.heartbeat_ms=200 --set worker.liveness=10 --set router.liveness=10)
# SANITIZER: "asan" or "tsan" when the binaries under test carry one (tests
# whose bounds are timing or RSS read it: a sanitizer build runs 3-10x
# slower, and ASan's quarantine keeps freed memory resident by design).
SANITIZER=""
case "$(ldd "$PD_BIN/pd-router" 2>/dev/null)" in
*libasan*) SANITIZER=asan ;;
*libtsan*) SANITIZER=tsan ;;
esac

cleanup() {
    local rc=$? p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
    for _ in $(seq 1 50); do
        local alive=0
        for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
        sleep 0.1
    done
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
    wait 2>/dev/null
    sanitizer_scan
    if [ "$FAILED" != 0 ]; then
        for f in "$T"/*.log; do
            [ -e "$f" ] || continue
            echo "# ---- $f (last 15 lines)"
            tail -15 "$f" | sed 's/^/# /'
        done
    fi
    [ -n "${KEEP:-}" ] && echo "# logs kept in $T" || rm -rf "$T"
    # The exit status is the verdict: a crash keeps its own, else any
    # "not ok" (FAILED) makes it 1.
    [ "$rc" != 0 ] && exit "$rc"
    exit "$FAILED"
}
# Every process a test starts writes its stderr to $T/*.stderr or *.err;
# under `make asan` / `make tsan` that is where a sanitizer report lands
# (workers and routers exit through SIGTERM in cleanup, so LeakSanitizer
# runs too). Any report fails the test, whatever its own checks said.
sanitizer_scan() {
    local f hits=() re='ERROR: (Address|Leak)Sanitizer|WARNING: ThreadSanitizer|runtime error:'
    for f in "$T"/*.stderr "$T"/*.err "$T"/*/*.stderr "$T"/*/*.err; do
        [ -s "$f" ] || continue
        grep -qE "$re" "$f" && hits+=("$f")
    done
    [ ${#hits[@]} = 0 ] && return 0
    not_ok "no sanitizer report in any process's stderr" "${#hits[@]} files"
    for f in "${hits[@]}"; do
        echo "# ---- $f"
        grep -m1 -A12 -E "$re" "$f" | sed 's/^/# /'
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ====== TAP: a plan, results, skips (tests/run.sh counts them) ======
# plan N: prints "1..N" once the test knows it can run (after require_*);
# the runner fails a script that prints more or fewer results than that,
# whatever its exit status, so an early exit cannot pass.
PLANNED=""
N_RESULTS=0
plan() {
    PLANNED=$1
    echo "1..$1"
}
ok() {
    N_RESULTS=$((N_RESULTS + 1))
    echo "ok - $1"
}
not_ok() {
    FAILED=1
    N_RESULTS=$((N_RESULTS + 1))
    echo "not ok - $1${2:+ # $2}"
}
check() { # NAME CMD...
    local name=$1
    shift
    if "$@"; then ok "$name"; else not_ok "$name"; fi
}
# skip NAME WHY: a check that did not run. Counted as a skip, never a pass
# (and under `make test` a skip fails the run: see tests/run.sh).
skip() {
    N_RESULTS=$((N_RESULTS + 1))
    echo "ok - $1 # SKIP $2"
}
# skip_all WHY: nothing more runs. Before the plan: "1..0 # SKIP WHY"; after
# it, every planned result not yet printed is printed as a skip.
skip_all() {
    if [ -z "$PLANNED" ]; then
        echo "1..0 # SKIP $1"
    else
        while [ "$N_RESULTS" -lt "$PLANNED" ]; do skip "not run" "$1"; done
    fi
    exit 0
}
# checker NAME CMD...: runs a program that prints TAP result lines (a node
# checker) and passes them on. Its lines count towards the plan; a checker
# that exits non-zero without a "not ok" line (it crashed, or could not
# read its input) adds one, so its lines are never dropped silently.
checker() {
    local name=$1 out rc line
    shift
    out=$("$@" 2>"$T/checker.err")
    rc=$?
    [ -n "$out" ] && while IFS= read -r line; do
        case $line in
        "not ok"*) FAILED=1; N_RESULTS=$((N_RESULTS + 1)) ;;
        "ok"*) N_RESULTS=$((N_RESULTS + 1)) ;;
        esac
        printf '%s\n' "$line"
    done <<<"$out"
    if [ $rc != 0 ] && ! grep -q '^not ok' <<<"$out"; then
        not_ok "$name: the checker exited $rc" "$(tail -c 300 "$T/checker.err" | tr '\n' ' ')"
    fi
    return 0
}

require_model() {
    [ -s "$MODEL" ] || skip_all "model $MODEL missing (make models)"
    for b in pd-router pd-prefill pd-decode pd-cli pd-run; do
        [ -x "$PD_BIN/$b" ] || skip_all "$PD_BIN/$b missing (make all)"
    done
}

start_router() {
    rm -f "$T/router.ready"
    "$PD_BIN/pd-router" --model "$MODEL" "${COMMON_SETS[@]}" \
        --set router.client_endpoint=tcp://127.0.0.1:0 \
        --set router.worker_endpoint=tcp://127.0.0.1:0 \
        --ready-file "$T/router.ready" --log-file "$T/router.log" "$@" 2>"$T/router.stderr" &
    PIDS+=($!)
    ROUTER_PID=$!
    for _ in $(seq 1 100); do
        [ -s "$T/router.ready" ] && break
        sleep 0.05
    done
    ROUTER=$(grep '^client=' "$T/router.ready" 2>/dev/null | cut -d= -f2-)
    ROUTER_W=$(grep '^worker=' "$T/router.ready" 2>/dev/null | cut -d= -f2-)
    if [ -z "$ROUTER" ]; then
        not_ok "router starts"
        exit 1
    fi
}

start_worker() { # ROLE ID [args]
    local role=$1 id=$2
    shift 2
    local bin=pd-decode
    [ "$role" = prefill ] && bin=pd-prefill
    "$PD_BIN/$bin" --role "$role" --id "$id" --model "$MODEL" --router "$ROUTER_W" \
        "${COMMON_SETS[@]}" --log-file "$T/$id.log" "$@" 2>"$T/$id.stderr" &
    PIDS+=($!)
    LAST_PID=$!
}

cli() { "$PD_BIN/pd-cli" --router "$ROUTER" "$@"; }

# Number of registered workers, from pd-cli status --json.
n_workers() {
    cli status --json 2>/dev/null | node -e '
        let s = ""; process.stdin.on("data", d => s += d).on("end", () => {
            try { console.log(JSON.parse(s).workers.length); } catch (e) { console.log(0); } });'
}

wait_workers() { # N
    for _ in $(seq 1 100); do
        [ "$(n_workers)" = "$1" ] && return 0
        sleep 0.1
    done
    not_ok "$1 workers register"
    exit 1
}

# pd-run's token ids for one request: ref_tokens OUTFILE -p PROMPT -n N [flags]
ref_tokens() {
    local out=$1
    shift
    "$PD_BIN/pd-run" -m "$MODEL" --threads 1 --tokens "$@" >"$out" 2>"$out.err"
}

# check_served NAME PROMPT [pd-cli flags]: one request through the cluster
# answers exactly pd-run's text (exit 0, same text, not empty): an error
# message printed by pd-cli is not an answer.
check_served() {
    local name=$1 prompt=$2 want got rc
    shift 2
    want=$("$PD_BIN/pd-run" -m "$MODEL" --threads 1 -p "$prompt" "$@" 2>/dev/null)
    got=$(timeout 30 "$PD_BIN/pd-cli" --router "$ROUTER" generate "$prompt" "$@" 2>"$T/served.err")
    rc=$?
    if [ $rc = 0 ] && [ -n "$want" ] && [ "$got" = "$want" ]; then
        ok "$name"
    else
        not_ok "$name" "exit $rc, got '$(printf %s "${got:0:60}" | tr '\n' ' ')' want '$(printf %s "${want:0:60}" | tr '\n' ' ')': $(head -c 200 "$T/served.err" | tr '\n' ' ')"
    fi
}

# ====== A deterministic workload ======
# workload N: fills PROMPTS[i] (1..~240 words, ~2 tokens each) and ARGS[i]
# (max_tokens 1..200; even i greedy, odd i seeded top-p sampling; half with
# --ignore-eos).
WORDS=(the quick brown fox jumps over lazy dog while seven wizards quietly hex jovial
       sphinx pack my box with five dozen liquor jugs how vexingly daft zebras jump
       river mountain cloud signal garden silver window thunder paper engine orange)
workload() {
    local n=$1 i k w nw
    PROMPTS=()
    ARGS=()
    for ((i = 0; i < n; i++)); do
        nw=$((1 + (i * 113) % 240))
        w=""
        for ((k = 0; k < nw; k++)); do
            w+="${WORDS[$(((i * 31 + k * 7 + k / 5) % ${#WORDS[@]}))]} "
        done
        PROMPTS[i]="${w% }"
        local a="-n $((1 + (i * 37) % 200))"
        if ((i % 2)); then a+=" --temp 0.8 --top-p 0.9 --seed $((1000 + i))"; fi
        if ((i % 4 < 2)); then a+=" --ignore-eos"; fi
        ARGS[i]=$a
    done
}

# refs N DIR: pd-run's tokens for every request of the workload, into DIR/ref_i.txt.
refs() {
    local n=$1 dir=$2 i
    for ((i = 0; i < n; i++)); do
        # shellcheck disable=SC2086
        ref_tokens "$dir/ref_$i.txt" -p "${PROMPTS[i]}" ${ARGS[i]}
    done
}

# send_all N DIR: every request of the workload at once, one pd-cli each;
# waits for all (bounded by a 120 s timeout each).
send_all() {
    local n=$1 dir=$2 i pids=()
    for ((i = 0; i < n; i++)); do
        # shellcheck disable=SC2086
        timeout 120 "$PD_BIN/pd-cli" --router "$ROUTER" generate "${PROMPTS[i]}" ${ARGS[i]} \
            --json >"$dir/out_$i.jsonl" 2>"$dir/out_$i.err" &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p"; done
}

# check_streams DIR N LABEL: check_streams.mjs's two results (whole streams,
# token-identical to pd-run) for the workload's outputs in DIR.
check_streams() {
    checker "$3" node tests/cluster/check_streams.mjs "$1" "$2" "$3"
}

# requeued_from ID [LOG]: how many requests the router re-dispatched when it
# removed worker ID (rt_worker_drop logs "event=worker_removed worker=ID
# why=W", then one "event=requeue ... why=W" per request the worker held,
# each maybe followed by the failed send of its cancel to the dead worker).
# Every removal of ID in LOG (default $T/router.log) counts.
requeued_from() {
    awk -v id="$1" '
        / event=worker_removed / {
            on = index($0, " worker=" id " ") > 0
            if (on) { why = $0; sub(/.* why=/, "", why) }
            next }
        on && / event=requeue / { w = $0; sub(/.* why=/, "", w); if (w == why) { n++; next } }
        on && index($0, " event=send_failed worker=" id " ") > 0 { next }
        { on = 0 }
        END { print n + 0 }' "${2:-$T/router.log}"
}

# preempted_streams DIR: how many of DIR/out_*.jsonl (pd-cli --json) ended
# with timings.preemptions > 0: the router re-dispatched them at least once.
preempted_streams() {
    cat "$1"/out_*.jsonl 2>/dev/null | grep -c '"preemptions":[1-9]'
}

# JSON field of pd-cli status --json: status_field 'expr' (a JS expression on s)
status_field() {
    cli status --json 2>/dev/null | node -e '
        let t = ""; process.stdin.on("data", d => t += d).on("end", () => {
            const s = JSON.parse(t); console.log(eval(process.argv[1])); });' "$1"
}

# Polls `pd-cli status --json` until the JS expression on s is true (workers
# report free blocks in heartbeats, so a state lags by up to a beat or two;
# under CPU load, more). wait_status 'expr' [timeout_s, default 10]
wait_status() {
    local expr=$1 limit=${2:-10} t0=$SECONDS
    while [ $((SECONDS - t0)) -lt "$limit" ]; do
        [ "$(status_field "$expr")" = true ] && return 0
        sleep 0.2
    done
    return 1
}
