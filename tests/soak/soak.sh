#!/bin/bash
# soak.sh -- one soak run: a real cluster (router, 2 prefill, 2 decode
# workers) under a seeded open-loop request mix (tests/helpers/soak_load.c)
# while a seeded nemesis kills (-9), pauses (SIGSTOP past the liveness
# window), drains (SIGTERM + a replacement) workers and kills (-9) and
# restarts the router on the same endpoints, each fault aimed at work in
# flight (a worker the router has requests on, a router with requests
# active). Every client-visible event goes to OUT/client.jsonl, every
# nemesis action to OUT/nemesis.jsonl, the idle state before and after to
# OUT/p4.json, what each fault hit (tests/soak/hits.mjs, from the logs) to
# OUT/nemesis.jsonl as "hit" events; tests/soak/check.mjs then checks P1-P4,
# that the load was real and that every fault hit work in flight, over the
# whole history against pd-run references.
#
#   tests/soak/soak.sh --seed S --seconds T --out DIR [--rate R] [--tap]
#
# Exit status: the checker's (0 no violation). References are cached in
# $BUILD/soak-refs/<hash of the spec table and the model>/.
set -u
SEED=1
SECS=60
OUT=""
RATE=""
TAP=""
while [ $# -gt 0 ]; do
    case "$1" in
    --seed) SEED=$2; shift 2 ;;
    --seconds) SECS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --tap) TAP=--tap; shift ;;
    *) echo "soak.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
[ -n "$OUT" ] || { echo "soak.sh: --out DIR is required" >&2; exit 2; }
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
. "$(dirname "$0")/../cluster/lib.sh"
require_model
LOAD=$BUILD/tests/soak_load
[ -x "$LOAD" ] || skip_all "$LOAD missing (make all)"
# The default rate is what 2 prefill + 2 decode workers of the tiny model
# serve within the deadlines (10-20 s); a sanitizer build is slower: 3 req/s
# under ASan (~4x here), 1.5 under TSan (~8x; at 3 req/s long outputs missed
# their deadlines with no fault to blame).
if [ -z "$RATE" ]; then
    case "$SANITIZER" in
    asan) RATE=3 ;;
    tsan) RATE=1.5 ;;
    *) RATE=12 ;;
    esac
fi
NO_RSS=""
[ "$SANITIZER" = asan ] && NO_RSS=--no-rss
rm -f "$OUT"/*.jsonl "$OUT"/p4.json "$OUT"/logs.tar.gz
# Drains are bounded well inside the requests' deadlines.
COMMON_SETS+=(--set worker.drain_timeout_ms=8000)

now() { date +%s.%6N; }
nlog() { # EV KEY=VALUE... (values are JSON already)
    local ev=$1 line
    shift
    line="{\"ev\":\"$ev\",\"t\":$(now)"
    for kv in "$@"; do line+=",\"${kv%%=*}\":${kv#*=}"; done
    echo "$line}" >>"$OUT/nemesis.jsonl"
}
rnd_ms() { echo $(($1 + RANDOM % ($2 - $1 + 1))); } # LO HI (ms)
sleep_ms() { sleep "$(printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)))"; }
forget_pid() { # the process is gone: cleanup must not signal its pid again
    local p keep=()
    for p in "${PIDS[@]}"; do [ "$p" != "$1" ] && keep+=("$p"); done
    PIDS=("${keep[@]}")
}

# ====== References: pd-run's tokens for every spec, cached ======
SPECS=$("$LOAD" --list-specs)
KEY=$( { echo "$SPECS"; sha256sum <"$MODEL"; echo "$MODEL"; } | sha256sum | cut -c1-16)
REFS=$BUILD/soak-refs/$KEY
if [ ! -e "$REFS/complete" ]; then
    mkdir -p "$REFS"
    while IFS=$'\t' read -r k prompt args; do
        # shellcheck disable=SC2086
        "$PD_BIN/pd-run" -m "$MODEL" --threads 1 --tokens -p "$prompt" $args \
            >"$REFS/ref_$k.txt" 2>"$REFS/ref_$k.err" || { not_ok "pd-run reference $k"; exit 1; }
    done <<<"$SPECS"
    touch "$REFS/complete"
fi

# ====== The cluster ======
declare -A WPID WROLE
NEXT_ID=3
start_router
C_PORT=${ROUTER##*:}
W_PORT=${ROUTER_W##*:}
for id in p1 p2 d1 d2; do
    role=prefill
    [ "${id:0:1}" = d ] && role=decode
    start_worker $role $id
    WPID[$id]=$LAST_PID
    WROLE[$id]=$role
done
wait_n_workers() { # N TIMEOUT_S
    local t0=$SECONDS
    while [ $((SECONDS - t0)) -lt "$2" ]; do
        [ "$(n_workers)" = "$1" ] && return 0
        sleep 0.2
    done
    return 1
}
wait_n_workers 4 20 || { not_ok "4 workers register"; exit 1; }

# Process facts: name role pid fds rss_kb, as a JSON object.
proc_json() { # NAME ROLE PID
    local fds rss
    fds=$(ls /proc/"$3"/fd 2>/dev/null | wc -l)
    rss=$(awk '/^VmRSS:/ {print $2}' /proc/"$3"/status 2>/dev/null)
    echo "{\"name\":\"$1\",\"role\":\"$2\",\"pid\":$3,\"fds\":${fds:-0},\"rss_kb\":${rss:-0}}"
}
snapshot() { # LABEL: the idle state -> one JSON line of OUT/p4.json
    local procs="" id status
    procs=$(proc_json router router "$ROUTER_PID")
    for id in "${!WPID[@]}"; do procs+=",$(proc_json "$id" "${WROLE[$id]}" "${WPID[$id]}")"; done
    status=$(cli status --json 2>/dev/null | tr -d '\n')
    local live=""
    for id in "${!WPID[@]}"; do live+="${live:+,}\"$id\""; done
    echo "{\"ev\":\"$1\",\"t\":$(now),\"procs\":[$procs],\"live\":[$live],\"status\":${status:-null}}" \
        >>"$OUT/p4.json"
}
IDLE='s.active_requests == 0 && s.queued_requests == 0 && s.workers.every(w => w.free_blocks == w.total_blocks && w.state == "ready")'

# Warm-up: every worker has served (sockets between prefill and decode
# workers exist, allocators have grown), then the idle baseline.
"$LOAD" --router "$ROUTER" --seed 0 --seconds 3 --rate 20 --cancel-frac 0 \
    --out "$T/warmup.jsonl" 2>"$T/warmup.stderr" || { not_ok "warm-up load"; exit 1; }
wait_status "$IDLE" 30 || { not_ok "idle after warm-up"; exit 1; }
snapshot baseline
declare -A BASE_FDS
nfds() { ls /proc/"$1"/fd 2>/dev/null | wc -l; }
BASE_FDS[router]=$(nfds "$ROUTER_PID")
for id in "${!WPID[@]}"; do
    f=$(nfds "${WPID[$id]}")
    [ "$f" -gt "${BASE_FDS[${WROLE[$id]}]:-0}" ] && BASE_FDS[${WROLE[$id]}]=$f
done
# Descriptors are given back on timers (idle KV egress sockets close after
# 5 s): the final snapshot waits up to 20 s for every process to be back
# within the checker's bound (baseline + 2); the checker judges what it sees.
fds_settled() {
    local id
    [ "$(nfds "$ROUTER_PID")" -le $((BASE_FDS[router] + 2)) ] || return 1
    for id in "${!WPID[@]}"; do
        [ "$(nfds "${WPID[$id]}")" -le $((BASE_FDS[${WROLE[$id]}] + 2)) ] || return 1
    done
}

# ====== Load and nemesis ======
"$LOAD" --router "$ROUTER" --seed "$SEED" --seconds "$SECS" --rate "$RATE" \
    --out "$OUT/client.jsonl" 2>"$OUT/client.stderr" &
LOAD_PID=$!
PIDS+=("$LOAD_PID")

RANDOM=$SEED
DRAINING=() # "id:pid"
reap_drained() { # collects drained workers that have exited
    local e keep=() rc
    for e in "${DRAINING[@]}"; do
        local id=${e%%:*} pid=${e#*:}
        if [ "${1:-}" = wait ]; then # bounded: the drain timeout is 8 s
            for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
            kill -0 "$pid" 2>/dev/null && kill -9 "$pid" # reported: rc 137
        fi
        if kill -0 "$pid" 2>/dev/null; then
            keep+=("$e")
            continue
        fi
        wait "$pid"
        rc=$?
        forget_pid "$pid"
        nlog drain_exit target="\"$id\"" pid="$pid" rc="$rc"
    done
    DRAINING=("${keep[@]}")
}
restart_worker() { # ID ROLE
    start_worker "$2" "$1"
    WPID[$1]=$LAST_PID
    WROLE[$1]=$2
    nlog start target="\"$1\"" role="\"$2\"" pid="$LAST_PID"
}
# Every fault must hit work in flight (tests/soak/hits.mjs and check.mjs
# verify it afterwards from the router's and the workers' logs). So a
# victim is chosen holding work: a random worker is stopped (SIGSTOP), and
# after FREEZE_MS -- what it had handed over has reached its peer, and
# nothing it holds can move while it is stopped -- the router's status says
# how many requests it has on it ("assigned": what losing it re-dispatches).
# None: resumed, another is tried. The stop is far inside the 2 s liveness
# window. Sets VICTIM, VPID, HELD, FROZEN_T; returns 1 when no worker held
# work in 12 tries (the action is then skipped and logged as a miss).
FREEZE_MS=300
[ -n "$SANITIZER" ] && FREEZE_MS=600
# status_num KEY [WORKER]: a number from pd-cli status --json, with awk (node
# starts too slowly on a loaded machine for a victim held stopped meanwhile).
status_num() {
    cli status --json 2>/dev/null | awk -v k="\"$1\":" -v id="${2:-}" '
        $1 == "\"id\":" { cur = $2; gsub(/[",]/, "", cur) }
        $1 == k && cur == id { v = $2; gsub(/,/, "", v); print v; exit }'
}
freeze_victim() {
    local ids try
    for ((try = 0; try < 12; try++)); do
        ids=("${!WPID[@]}")
        VICTIM=${ids[$((RANDOM % ${#ids[@]}))]}
        VPID=${WPID[$VICTIM]}
        FROZEN_T=$(now)
        kill -STOP "$VPID" 2>/dev/null || continue
        sleep_ms $FREEZE_MS
        HELD=$(status_num assigned "$VICTIM")
        [ "${HELD:-0}" -ge 1 ] && return 0
        kill -CONT "$VPID"
        sleep_ms 150
    done
    return 1
}
do_kill_worker() {
    freeze_victim || { nlog miss kind='"kill_worker"'; return; }
    local id=$VICTIM pid=$VPID
    kill -9 "$pid"
    wait "$pid" 2>/dev/null
    forget_pid "$pid"
    N_FAULT=$((N_FAULT + 1))
    nlog fault n=$N_FAULT kind='"kill_worker"' target="\"$id\"" pid="$pid" frozen_t="$FROZEN_T" held="$HELD"
    sleep_ms "$(rnd_ms 200 2000)"
    restart_worker "$id" "${WROLE[$id]}"
}
do_pause_worker() {
    freeze_victim || { nlog miss kind='"pause_worker"'; return; }
    local id=$VICTIM pid=$VPID
    N_FAULT=$((N_FAULT + 1))
    nlog fault n=$N_FAULT kind='"pause_worker"' target="\"$id\"" pid="$pid" frozen_t="$FROZEN_T" held="$HELD"
    sleep_ms "$(rnd_ms 2300 4200)" # stopped 2.6-4.5 s in all: the liveness window is 2 s
    kill -CONT "$pid"
    nlog resume target="\"$id\"" pid="$pid"
}
do_drain_worker() {
    freeze_victim || { nlog miss kind='"drain_worker"'; return; }
    local id=$VICTIM pid=$VPID role nid
    role=${WROLE[$id]}
    # SIGTERM while stopped, then resumed: it reads what waits in its socket
    # and starts draining holding it (event=draining prefill_tasks= decode_seqs=).
    kill -TERM "$pid"
    kill -CONT "$pid"
    N_FAULT=$((N_FAULT + 1))
    nlog fault n=$N_FAULT kind='"drain_worker"' target="\"$id\"" pid="$pid" frozen_t="$FROZEN_T" held="$HELD"
    DRAINING+=("$id:$pid")
    unset "WPID[$id]" "WROLE[$id]"
    nid=${role:0:1}$NEXT_ID
    NEXT_ID=$((NEXT_ID + 1))
    restart_worker "$nid" "$role"
}
do_kill_router() {
    # The kill must hit requests in flight. On the soak's fast model a
    # request lives some 40 ms, less than a status round trip, so a request
    # the status saw could end before the kill (seen). Every worker is
    # stopped first (far inside the 2 s liveness window): after FREEZE_MS
    # what they sent has reached the router and the client, and nothing
    # the status then counts can finish before the kill. None held: thawed,
    # tried again (up to 12 times, as freeze_victim), else a miss.
    local held="" try id
    for ((try = 0; try < 12; try++)); do
        for id in "${!WPID[@]}"; do kill -STOP "${WPID[$id]}" 2>/dev/null; done
        sleep_ms $FREEZE_MS
        held=$(status_num active_requests)
        [ "${held:-0}" -ge 1 ] && break
        for id in "${!WPID[@]}"; do kill -CONT "${WPID[$id]}" 2>/dev/null; done
        sleep_ms 150
    done
    [ "${held:-0}" -ge 1 ] || { nlog miss kind='"kill_router"'; return; }
    # Logged before the kill: clients see the connection drop at once, and
    # the checker's outage window must already be open when they do.
    N_FAULT=$((N_FAULT + 1))
    nlog fault n=$N_FAULT kind='"kill_router"' pid="$ROUTER_PID" held="$held"
    kill -9 "$ROUTER_PID"
    wait "$ROUTER_PID" 2>/dev/null
    forget_pid "$ROUTER_PID"
    for id in "${!WPID[@]}"; do kill -CONT "${WPID[$id]}" 2>/dev/null; done
    sleep_ms "$(rnd_ms 200 1500)"
    rm -f "$T/router.ready"
    "$PD_BIN/pd-router" --model "$MODEL" "${COMMON_SETS[@]}" \
        --set router.client_endpoint=tcp://127.0.0.1:$C_PORT \
        --set router.worker_endpoint=tcp://127.0.0.1:$W_PORT \
        --ready-file "$T/router.ready" --log-file "$T/router.$(now).log" 2>>"$T/router.stderr" &
    ROUTER_PID=$!
    PIDS+=("$ROUTER_PID")
    for _ in $(seq 1 100); do
        [ -s "$T/router.ready" ] && break
        sleep 0.05
    done
    nlog start target='"router"' pid="$ROUTER_PID"
}

KINDS=(kill_worker pause_worker drain_worker kill_router)
# The first faults are one of each kind, in a seeded order (a kind whose
# action found no victim holding work is tried again next).
ORDER=("${KINDS[@]}")
for ((i = 3; i > 0; i--)); do
    j=$((RANDOM % (i + 1)))
    tmp=${ORDER[i]}; ORDER[i]=${ORDER[j]}; ORDER[j]=$tmp
done
T_END=$((SECONDS + SECS - 4))
sleep_ms "$(rnd_ms 1000 3000)"
n_act=0
N_FAULT=0
while [ $SECONDS -lt $T_END ]; do
    if [ ${#ORDER[@]} -gt 0 ]; then
        kind=${ORDER[0]}
    else
        r=$((RANDOM % 100))
        if [ $r -lt 35 ]; then kind=kill_worker
        elif [ $r -lt 60 ]; then kind=pause_worker
        elif [ $r -lt 85 ]; then kind=drain_worker
        else kind=kill_router
        fi
    fi
    n0=$N_FAULT
    "do_$kind"
    [ $N_FAULT -gt $n0 ] && [ ${#ORDER[@]} -gt 0 ] && ORDER=("${ORDER[@]:1}")
    n_act=$((n_act + 1))
    reap_drained
    sleep_ms "$(rnd_ms 500 3000)"
done
nlog nemesis_end actions="$n_act"

# ====== Drain, then the idle state ======
wait "$LOAD_PID"
LOAD_RC=$?
forget_pid "$LOAD_PID"
reap_drained wait
nlog load_exit rc="$LOAD_RC"
N_LIVE=${#WPID[@]}
wait_n_workers "$N_LIVE" 30
wait_status "$IDLE && s.workers.length == $N_LIVE" 30
for _ in $(seq 1 100); do fds_settled && break; sleep 0.2; done
snapshot final
# What each fault hit, from the router's and the workers' logs.
node tests/soak/hits.mjs "$OUT" "$T" || echo "# hits.mjs failed: the checker reports every fault unproven"
echo "# history in $OUT (refs $REFS)"
node tests/soak/check.mjs "$OUT" "$REFS" $TAP $NO_RSS
RC=$?
if [ $RC != 0 ]; then
    FAILED=1
    tar czf "$OUT/logs.tar.gz" -C "$T" . 2>/dev/null
fi
exit $RC
