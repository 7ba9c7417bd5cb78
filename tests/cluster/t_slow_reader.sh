#!/bin/bash
# Slow reader (issue 6, acceptance 6): a client asks for long streams and
# stops reading (slow_reader.mjs: a raw ZMTP DEALER that reads nothing after
# its requests). Its socket buffers fill, the router's sends hit the
# high-water mark, and after router.stream_stall_ms the stalled streams are
# cut (event=stream_stalled; the requests end and free their workers); the
# router's RSS stays bounded and other clients are served meanwhile. A
# control client with as many streams that keeps reading is not cut.
#
# Why the setup looks like this:
# - The clients connect over ipc://: a Unix stream socket queues at most the
#   sender's SO_SNDBUF (about 200 kB), so a reader that stops reading
#   back-pressures the router within a few hundred chunks. Over loopback TCP
#   the kernel autotunes the router's send buffer to tcp_wmem's maximum (4 MB)
#   and, as node cannot lock SO_RCVBUF, the reader's receive buffer towards
#   tcp_rmem's maximum: minutes of this model's streams before any EAGAIN.
# - router.liveness x router.heartbeat_ms (50 s here; 2 s by default and in
#   lib.sh) is raised so the ZMTP heartbeat on the client socket does not cut
#   the reader first: a peer that reads nothing never answers a PING, so
#   libzmq drops it as dead (event=client_gone) -- the other, usual way a
#   stuck client ends, and not what this test is about.
# - It runs twice. With net.hwm 64 (above the 16 chunks one decode step
#   sends one client) a client that keeps up never meets back-pressure. With
#   net.hwm 4 it meets it every step even though it reads promptly: the
#   router must then judge the connection, not each stream (a stream is cut
#   only when the whole connection made no progress for
#   router.stream_stall_ms), and retry the held streams fairly, so none
#   starves while the others take the room.
# - Then once more (run_deadline_case) with the streams held past their
#   deadline: they end with DEADLINE_EXCEEDED and free their workers at once.
. "$(dirname "$0")/lib.sh"
require_model
command -v node >/dev/null || skip_all "node missing"
# 7 results per net.hwm case, 6 in the deadline case.
set -- ${HWMS:-64 4}
plan $((7 * $# + 6))
RSS_BUDGET_KB=${RSS_BUDGET_KB:-32768}
N=16
# Long enough (several seconds) that a stream starved by its siblings would
# outlast router.stream_stall_ms.
CONTROL_TOKENS=1500
# The deadline case's timing: the reader's connection must fill before the
# deadline, and the held Errors wait for the stall cut.
DL_MS=3000 DL_STALL_MS=10000 DL_HOLD_S=40 DL_WAIT=15
# A sanitizer build decodes ~10x slower: 1500-token control streams would
# outlast the reading client, and within 3 s the slow reader's connection
# would not fill (nothing would be held at the deadline).
if [ -n "$SANITIZER" ]; then
    CONTROL_TOKENS=300
    DL_MS=12000 DL_STALL_MS=25000 DL_HOLD_S=80 DL_WAIT=40
fi
rss() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
done_count() { grep -c 'event=request_done' "$T/router.log" 2>/dev/null; }
stalled_count() { grep -c 'event=stream_stalled' "$T/router.log" 2>/dev/null; }

# One cluster with net.hwm=$1 on the router: the reading control, then the
# slow reader. Its router log is kept as router-hwm$1.log.
run_case() {
    local hwm=$1 r0 r1 out cut c0 end p1 d1
    start_router --set "net.hwm=$hwm" --set router.stream_stall_ms=1000 --set router.max_tokens_limit=2000 \
        --set router.heartbeat_ms=500 --set router.liveness=100 --set "router.client_endpoint=ipc://$T/client-$hwm.sock"
    start_worker prefill p1
    p1=$LAST_PID
    start_worker decode d1
    d1=$LAST_PID
    wait_workers 2

    # The control: N streams of CONTROL_TOKENS tokens on one connection, read as they come.
    timeout 120 node tests/cluster/slow_reader.mjs "$ROUTER" "$N" "$CONTROL_TOKENS" 110 read >"$T/fast.out" 2>&1 &
    FAST=$!
    for _ in $(seq 1 1200); do
        [ $(($(done_count) + $(stalled_count))) -ge "$N" ] && break
        sleep 0.1
    done
    check "[net.hwm=$hwm] a client that keeps reading gets all $N streams ($(done_count) done)" test "$(done_count)" -ge "$N"
    check "[net.hwm=$hwm] none of its streams is cut ($(stalled_count) cut as stalled)" \
        test "$(grep -c 'event=stream_stalled\|event=client_gone' "$T/router.log")" = 0
    kill "$FAST" 2>/dev/null
    wait "$FAST" 2>/dev/null

    r0=$(rss "$ROUTER_PID")
    c0=$(stalled_count)
    timeout 60 node tests/cluster/slow_reader.mjs "$ROUTER" "$N" 1500 30 >"$T/slow.out" 2>&1 &
    SLOW=$!
    sleep 1
    check_served "[net.hwm=$hwm] another client is served while one stalls: pd-run's answer" "The river" -n 8
    cut=0
    for _ in $(seq 1 300); do
        cut=$(($(stalled_count) - c0))
        [ "${cut:-0}" -ge "$N" ] && break
        sleep 0.1
    done
    if [ "${cut:-0}" -ge "$N" ]; then
        ok "[net.hwm=$hwm] stalled streams are cut after router.stream_stall_ms ($cut of $N cut)"
    else
        not_ok "[net.hwm=$hwm] stalled streams are cut after router.stream_stall_ms" "$cut of $N cut; $(cat "$T/slow.out")"
    fi
    check "[net.hwm=$hwm] no stalled stream ends any other way" test "$(grep -c 'event=client_gone' "$T/router.log")" = 0
    r1=$(rss "$ROUTER_PID")
    end=$((SECONDS + 10))
    while [ $SECONDS -lt $end ]; do
        [ "$(status_field 's.active_requests || 0')" = 0 ] && break
        sleep 0.5
    done
    check "[net.hwm=$hwm] every stalled request ends (0 active requests), none waits for its deadline" test "$(status_field 's.active_requests || 0')" = 0
    if [ $((r1 - r0)) -le "$RSS_BUDGET_KB" ]; then
        ok "[net.hwm=$hwm] router RSS bounded while stalled (${r0} -> ${r1} kB)"
    else
        not_ok "[net.hwm=$hwm] router RSS bounded while stalled" "${r0} -> ${r1} kB, budget +${RSS_BUDGET_KB} kB"
    fi
    kill "$SLOW" 2>/dev/null
    wait "$SLOW" 2>/dev/null
    kill "$ROUTER_PID" "$p1" "$d1" 2>/dev/null
    wait "$ROUTER_PID" "$p1" "$d1" 2>/dev/null
    mv "$T/router.log" "$T/router-hwm$hwm.log"
}

# Held past the deadline: a stream whose output is held (its client stopped
# reading) still ends at its deadline, with DEADLINE_EXCEEDED: its workers
# drop it and free its blocks at once, though the Error itself waits in
# line (here for good: the connection takes nothing more) until the held
# streams are cut after router.stream_stall_ms. Each such request counts
# once as failed, not again when it is cut. Sizes: the reader's connection
# fills after a few thousand chunks (well under a second here), the 16
# streams of 2000 tokens need several times the 3 s deadline, so at the
# deadline every stream is running and held; net.hwm 64 lets the router's
# 16 Cancels to the decode worker through at once (at net.hwm 4 a burst of
# them meets the worker socket's own high-water mark).
run_deadline_case() {
    local n_dl held p1 d1
    start_router --set net.hwm=64 --set router.stream_stall_ms=$DL_STALL_MS --set router.request_timeout_ms=$DL_MS \
        --set router.max_tokens_limit=2000 --set router.heartbeat_ms=500 --set router.liveness=100 \
        --set "router.client_endpoint=ipc://$T/client-deadline.sock"
    start_worker prefill p1
    p1=$LAST_PID
    start_worker decode d1 --set kv.num_blocks=2560
    d1=$LAST_PID
    wait_workers 2
    timeout $((DL_HOLD_S + 20)) node tests/cluster/slow_reader.mjs "$ROUTER" "$N" 2000 $DL_HOLD_S >"$T/slow-deadline.out" 2>&1 &
    SLOW=$!
    for _ in $(seq 1 $((DL_WAIT * 10))); do
        [ "$(grep -c 'event=request_failed.*code=4 ' "$T/router.log")" -ge "$N" ] && break
        sleep 0.1
    done
    n_dl=$(grep -c 'event=request_failed.*code=4 msg="deadline' "$T/router.log")
    check "[held] every held stream ends at its deadline with DEADLINE_EXCEEDED ($n_dl of $N; $(stalled_count) cut as stalled, $(done_count) done)" \
        bash -c "[ $n_dl = $N ] && [ $(stalled_count) = 0 ] && [ $(done_count) = 0 ]"
    check "[held] the workers let go at once (no sequence running, every block free) while the Errors wait" \
        wait_status "s.workers.every(w => w.running_seqs == 0 && w.free_blocks == w.total_blocks)" 5
    held=$(status_field 's.active_requests')
    # The fewest tokens a stream got by its deadline: on a loaded machine
    # the decode can be too slow for the connection to fill within DL_MS
    # (seen: 155 and 248 tokens a stream failed, 372 and more passed), and
    # the Errors then go out at once. The name says so when it fails.
    dl_tok=$(grep -o 'exceeded after [0-9]* tokens' "$T/router.log" | awk '{ print $3 }' | sort -n | head -1)
    check "[held] the Errors are held, not sent (active $held of $N, $(stalled_count) cut yet; ${dl_tok:-?} tokens a stream by the deadline)" \
        bash -c "[ '$held' = $N ] && [ $(stalled_count) = 0 ]"
    check "[held] after router.stream_stall_ms the held requests are cut (0 active)" wait_status 's.active_requests == 0' $((DL_STALL_MS / 1000 + 10))
    check "[held] each counts once as failed (requests_failed $(status_field 's.requests_failed'), $N requests)" \
        test "$(status_field 's.requests_failed')" = "$N"
    check "[held] no request ends any other way (no client_gone, no request_done)" \
        bash -c "! grep -q 'event=client_gone\|event=request_done' '$T/router.log'"
    kill "$SLOW" 2>/dev/null
    wait "$SLOW" 2>/dev/null
    kill "$ROUTER_PID" "$p1" "$d1" 2>/dev/null
    wait "$ROUTER_PID" "$p1" "$d1" 2>/dev/null
    mv "$T/router.log" "$T/router-deadline.log"
}

for hwm in ${HWMS:-64 4}; do
    run_case "$hwm"
done
run_deadline_case
exit $FAILED
