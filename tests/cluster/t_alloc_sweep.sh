#!/bin/bash
# Allocation-failure sweep (issue 6, acceptance item 9; docs/operations.md
# "Allocation-failure sweep"). The PD_FAULT_ALLOC test hook (common/base/fault.h)
# fails, for k = 1, 2, 3, ..., the k-th allocation of the k-th request on
# the router's request path (router.request), then on the decode worker's
# admission path (decode.admit), until a request gets through with fewer
# allocations than k. One cluster runs both sweeps, one request at a time:
#   - every request ends in a clean terminal state: success, or an Error
#     saying RESOURCE_EXHAUSTED / out of memory (no deadline, no hang);
#   - every process stays up, and the request that ends a sweep succeeds;
#   - the hook really swept: one injection per armed allocation, at
#     allocation n = k of request k, as many as the last request made;
#   - afterwards nothing is held: no router request, every KV block free on
#     both workers, and the router's counters add up (accepted - failed =
#     successes the client saw);
#   - at SIGTERM every process exits 0; under ASan, lib.sh's
#     sanitizer_scan then fails the test on any LeakSanitizer,
#     AddressSanitizer or UBSan report in their stderr.
# Under ASan: BUILD=build-asan MODELS=build/models bash tests/cluster/t_alloc_sweep.sh
. "$(dirname "$0")/lib.sh"
require_model
plan 10

PROMPT="the quick brown fox jumps"
MAX_REQUESTS=80   # a sweep longer than this is a bug (the paths make ~15-25 allocations)
MIN_ALLOCS=8      # fewer armed allocations than this: the hook is not wired

# The prefill worker gets its blocks back within a second if an ack is lost
# (a failed KvAck send is one of the decode path's allocations).
PD_FAULT_ALLOC=router.request:sweep start_router
R_PID=$ROUTER_PID
PD_FAULT_ALLOC= start_worker prefill p1 --set worker.lease_ms=1000
P_PID=$LAST_PID
PD_FAULT_ALLOC= start_worker decode d1
D1_PID=$LAST_PID
wait_workers 2

alive() { # PID...
    local p
    for p in "$@"; do kill -0 "$p" 2>/dev/null || return 1; done
}

# sweep SITE LOG PID...: sends one request at a time until LOG shows the
# sweep of SITE done; sets N_SENT, N_OK, N_ERR, LAST_RC, BAD (why, or "").
sweep() {
    local site=$1 log=$2
    shift 2
    N_SENT=0 N_OK=0 N_ERR=0 LAST_RC=-1 BAD=""
    local i out rc
    for ((i = 1; i <= MAX_REQUESTS; i++)); do
        out=$(timeout 60 "$PD_BIN/pd-cli" --router "$ROUTER" generate "$PROMPT" -n 4 \
            --stop "zebra" --timeout 30000 2>&1 >/dev/null)
        rc=$?
        N_SENT=$((N_SENT + 1))
        LAST_RC=$rc
        if [ $rc = 0 ]; then
            N_OK=$((N_OK + 1))
        elif [ $rc = 1 ] && echo "$out" | grep -Eq "RESOURCE_EXHAUSTED|out of memory" &&
            ! echo "$out" | grep -Eq "DEADLINE_EXCEEDED|INVALID_ARGUMENT|UNAVAILABLE"; then
            N_ERR=$((N_ERR + 1))
        else
            BAD+="request $i: rc=$rc ${out:0:200}; "
        fi
        if ! alive "$@"; then
            BAD+="a process died at request $i; "
            return
        fi
        grep -q "event=fault_sweep_done site=$site" "$log" && return
    done
    BAD+="no fault_sweep_done after $MAX_REQUESTS requests; "
}

# check_injections SITE LOG: one injection per armed allocation, n = k.
check_injections() {
    local site=$1 log=$2 done_line inj allocs n_lines seq_ok
    done_line=$(grep "event=fault_sweep_done site=$site" "$log" | head -1)
    inj=$(echo "$done_line" | sed -n 's/.* injected=\([0-9]*\).*/\1/p')
    allocs=$(echo "$done_line" | sed -n 's/.* allocations=\([0-9]*\).*/\1/p')
    n_lines=$(grep -c "event=fault_injected site=$site" "$log")
    # Line j must read k=j n=j: request j of the sweep failed its j-th allocation.
    seq_ok=$(grep "event=fault_injected site=$site" "$log" |
        sed -n 's/.* k=\([0-9]*\) n=\([0-9]*\) .*/\1 \2/p' |
        awk '{ if ($1 != NR || $2 != NR) bad = 1 } END { print bad ? "no" : "yes" }')
    echo "# $site: $n_lines injections, last request made ${allocs:-?} armed allocations," \
        "$N_SENT requests ($N_OK ok, $N_ERR clean errors)"
    if [ -n "$inj" ] && [ "$inj" = "$n_lines" ] && [ "$inj" = "$allocs" ] &&
        [ "$inj" -ge "$MIN_ALLOCS" ] && [ "$seq_ok" = yes ] &&
        [ "$N_SENT" = $((inj + 2)) ]; then
        ok "$site: one injection per armed allocation ($inj), request k failed allocation k"
    else
        not_ok "$site: injections match armed allocations" \
            "injected=$inj lines=$n_lines allocations=$allocs in_order=$seq_ok sent=$N_SENT"
    fi
}

# ====== Router: a GenerateRequest from receipt to dispatch ======
sweep router.request "$T/router.log" "$R_PID" "$P_PID" "$D1_PID"
check "router.request: every request ended cleanly, every process alive" test -z "$BAD"
[ -n "$BAD" ] && echo "# $BAD"
check "router.request: the request that ended the sweep succeeded" test "$LAST_RC" = 0
check_injections router.request "$T/router.log"
R_SENT=$N_SENT R_OK=$N_OK
check "router.request: router idle, every KV block back, counters add up" wait_status "
    s.active_requests == 0 && s.queued_requests == 0 &&
    s.workers.every(w => w.free_blocks == w.total_blocks && w.running_seqs == 0) &&
    s.requests_total - s.requests_failed == $R_OK" 20

# ====== Decode worker: a DecodeTask and its KV through admission ======
kill -TERM "$D1_PID"
wait "$D1_PID"
D1_RC=$?
PD_FAULT_ALLOC=decode.admit:sweep start_worker decode d2
D2_PID=$LAST_PID
wait_status 's.workers.length == 2 && s.workers.some(w => w.id == "d2")' 20 ||
    { not_ok "d2 registers"; exit 1; }
BASE_TOTAL=$(status_field s.requests_total)
BASE_FAILED=$(status_field s.requests_failed)
sweep decode.admit "$T/d2.log" "$R_PID" "$P_PID" "$D2_PID"
check "decode.admit: every request ended cleanly, every process alive" test -z "$BAD"
[ -n "$BAD" ] && echo "# $BAD"
check "decode.admit: the request that ended the sweep succeeded" test "$LAST_RC" = 0
check_injections decode.admit "$T/d2.log"
check "decode.admit: router idle, every KV block back, counters add up" wait_status "
    s.active_requests == 0 && s.queued_requests == 0 &&
    s.workers.every(w => w.free_blocks == w.total_blocks && w.running_seqs == 0) &&
    (s.requests_total - $BASE_TOTAL) == $N_SENT &&
    (s.requests_total - $BASE_TOTAL) - (s.requests_failed - $BASE_FAILED) == $N_OK" 20

# ====== Afterwards: still serving, clean exits ======
check_served "the cluster still serves after both sweeps: pd-run's answer" "$PROMPT" -n 8
STOP_RC=0
for p in "$R_PID" "$P_PID" "$D2_PID"; do
    kill -TERM "$p"
    wait "$p" || STOP_RC=$?
done
check "SIGTERM: every process exits 0 (d1 $D1_RC, others $STOP_RC)" test "$D1_RC$STOP_RC" = 00
# (A sanitizer report in any process's stderr fails the test in lib.sh's
# cleanup, sanitizer_scan, under `make asan` / `make tsan`.)
exit $FAILED
