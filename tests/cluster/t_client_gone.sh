#!/bin/bash
# A client that disappears (issue 6, mechanism 5) and application heartbeats
# between clients and the router (mechanism 1, Paranoid Pirate):
#   - pd-cli stopped (SIGSTOP) mid-stream: the router notices its silence
#     (event=client_timeout), cancels its request, the decode worker frees
#     it (running 0, free blocks back to total); resumed, pd-cli ends with
#     an error (the router's CANCELLED, or UNAVAILABLE if its connection was
#     lost meanwhile);
#   - controls: normal streams longer than the liveness window complete
#     token-identical to pd-run; a pd-cli held back by a slow stdout reader
#     (its library loop delayed, still running) is not cut; an HTTP stream
#     (the router's in-process bridge declares no heartbeats) is not cut;
#   - the router stopped (SIGSTOP): pd-cli reports UNAVAILABLE ("router ...
#     silent") within its liveness window; resumed, the cluster is idle and
#     serves.
# The tiny model decodes 500 tokens in about 0.2 s, faster than any liveness
# window: a stopped client would simply receive its whole stream into socket
# buffers. So the streams here come from a wider model (dim 512, 8 layers,
# ~100-300 tokens/s on one thread) made with pd-mkmodel, and the router's
# ZMTP heartbeat timeout is raised (worker.liveness on the router: 20 s) so
# what is tested is the application heartbeat, not ZMTP's.
. "$(dirname "$0")/lib.sh"
require_model
RANKS=${PD_GPT2_RANKS:-$BUILD/data/gpt2-ranks.txt}
[ -s "$RANKS" ] || RANKS=build/data/gpt2-ranks.txt # sanitizer builds share the main build's data
[ -x "$PD_BIN/pd-mkmodel" ] || skip_all "$PD_BIN/pd-mkmodel missing (make all)"
plan 23
# The wide model and its speed are this test's input: a pd-mkmodel or pd-run
# that fails is a failure (of the build), never a reason to skip.
if ! PD_GPT2_RANKS=$RANKS "$PD_BIN/pd-mkmodel" -o "$T/wide.gguf" --shape tiny --vocab-kind spm \
    --dim 512 --layers 8 --heads 8 --kv-heads 4 --ffn 1536 --type f16 --seed 7 \
    >"$T/mkmodel.log" 2>&1; then
    not_ok "pd-mkmodel makes the wide model" "$(tail -1 "$T/mkmodel.log")"
    exit 1
fi
MODEL=$T/wide.gguf
# Stream lengths from the model's decode speed in CPU time (a sanitizer
# build is ~10x slower): pd-run -n 1 (load and prompt) against -n 101 gives
# 100 decode steps. CPU time, not wall time: on a loaded machine the wall
# clock of this measurement can be 5x the quiet speed the streams later get
# (control streams of "6 s" then lasted 1.7 s). At the CPU-time speed the
# control streams last at least 5 s (the window is 2 s), longer when the
# machine is loaded; the streams that get stopped about 15 s.
run_ms() {
    local t TIMEFORMAT=%3U+%3S
    t=$({ time "$PD_BIN/pd-run" -m "$MODEL" --threads 1 --tokens -p "river" -n "$1" --ignore-eos \
        >/dev/null 2>"$T/run.err"; } 2>&1) || return 1
    awk -v t="$t" 'BEGIN { split(t, a, "+"); printf "%d\n", (a[1] + a[2]) * 1000 }'
}
if ! m1=$(run_ms 1) || ! m101=$(run_ms 101); then
    not_ok "pd-run runs the wide model" "$(tail -1 "$T/run.err")"
    exit 1
fi
rate=$((100 * 1000 / (m101 > m1 ? m101 - m1 : 1))) # decode tokens per CPU second
clamp() { local v=$1; [ "$v" -lt "$2" ] && v=$2; [ "$v" -gt "$3" ] && v=$3; echo "$v"; }
N_CTRL=$(clamp $((rate * 5)) 40 1500)
N_LONG=$(clamp $((rate * 15)) 100 1800)
echo "# wide model: ~$rate tokens/s; control streams $N_CTRL tokens, stopped streams $N_LONG"
COMMON_SETS+=(--set kv.num_blocks=512)
HB_MS=500
LIVENESS=4 # a 2 s window
# When silence must be noticed, measured from the SIGSTOP: not before the
# window less one beat (the last beat may have left just before the stop),
# and within 2 s after it (the router's and the client's timers tick every
# few ms; the rest is scheduling on a loaded 2-core machine; 6 s under a
# sanitizer). The polls below wait 15 s, far past these bounds, so a bound
# missed is a failure with its time, not a poll giving up.
WINDOW_MS=$((HB_MS * LIVENESS))
LO_MS=$((WINDOW_MS - HB_MS - 250))
HI_MS=$((WINDOW_MS + 2000))
[ -n "$SANITIZER" ] && HI_MS=$((WINDOW_MS + 6000))
in_bounds() { [ "$1" -ge $LO_MS ] && [ "$1" -le $HI_MS ]; }
start_router --set router.client_heartbeat_ms=$HB_MS --set router.client_liveness=$LIVENESS \
    --set worker.liveness=100 --set http.listen=127.0.0.1:0
start_worker prefill p1
start_worker decode d1
wait_workers 2
HTTP=$(grep '^http=' "$T/router.ready" | cut -d= -f2-)
idle='s.workers.every(w => w.free_blocks == w.total_blocks && w.running_seqs == 0) && s.active_requests == 0'
# e2e_ms FILE: the router-side duration of a pd-cli --json stream (final chunk)
e2e_ms() { tail -1 "$1" | sed -n 's/.*"e2e_us":\([0-9]*\).*/\1/p' | awk '{ print int($1 / 1000) }'; }
decode_running='s.workers.filter(w => w.role == "decode").map(w => w.running_seqs).join()'

# ---- Control: normal streams, each longer than the window, are whole and
# token-identical to pd-run (a client that did not beat would be cut).
N=2
PROMPTS=("river mountain cloud" "the quick brown fox jumps")
ARGS=("-n $N_CTRL --ignore-eos" "-n $((N_CTRL * 4 / 5)) --ignore-eos --temp 0.8 --top-p 0.9 --seed 11")
refs $N "$T"
t0=$SECONDS
send_all $N "$T"
check_streams "$T" $N "streams longer than the client window ($((SECONDS - t0)) s)"
check "the streams lasted longer than the window ($(e2e_ms "$T/out_0.jsonl") ms, $(e2e_ms "$T/out_1.jsonl") ms)" \
    bash -c "[ $(e2e_ms "$T/out_0.jsonl") -gt $((HB_MS * LIVENESS)) ] && [ $(e2e_ms "$T/out_1.jsonl") -gt $((HB_MS * LIVENESS)) ]"
check "no client was timed out while heartbeating" bash -c "! grep -q 'event=client_timeout' '$T/router.log'"

# ---- Control: a pd-cli whose stdout drains slowly (a 4 KiB pipe read 128
# bytes per 10 ms): it spends its time blocked in write(), its library loop
# still runs between chunks and keeps beating.
t0=$SECONDS
timeout 120 perl -e '
# perl-base is Essential on Debian: always there. F_SETPIPE_SZ (1031)
# shrinks the pipe before anything is written.
pipe(my $r, my $w) or die "pipe: $!";
fcntl($r, 1031, 4096);
my $pid = fork() // die "fork: $!";
if ($pid == 0) {
    close $r;
    open(STDOUT, ">&", $w) or die;
    open(STDERR, ">", "$ARGV[0].err") or die;
    exec(@ARGV[1 .. $#ARGV]) or die "exec: $!";
}
close $w;
open(my $out, ">", $ARGV[0]) or die;
binmode $out;
while (sysread($r, my $b, 128)) {
    print $out $b;
    select(undef, undef, undef, 0.01);
}
close $out;
waitpid($pid, 0);
exit($? >> 8);
' "$T/slow.jsonl" "$PD_BIN/pd-cli" --router "$ROUTER" generate "silver window thunder" -n $N_CTRL \
    --ignore-eos --json
rc=$?
check "slow reader: pd-cli completes (exit 0) after $((SECONDS - t0)) s" test $rc = 0
check "slow reader: the stream is whole ($N_CTRL tokens, finish length)" bash -c "
    tail -1 '$T/slow.jsonl' | grep -q '\"finish_reason\":\"length\".*\"completion_tokens\":$N_CTRL}'"
check "slow reader: the router streamed for longer than the window" \
    test "$(e2e_ms "$T/slow.jsonl")" -gt $((HB_MS * LIVENESS))
check "slow reader: not cut (no client_timeout)" bash -c "! grep -q 'event=client_timeout' '$T/router.log'"

# ---- Control: an HTTP stream longer than the window (the bridge's ZeroMQ
# identity never declares heartbeats: deadlines alone govern it).
if ! command -v curl >/dev/null; then
    skip "HTTP stream longer than the window completes" "curl missing (scripts/deps.sh)"
    skip "the HTTP bridge is not timed out" "curl missing (scripts/deps.sh)"
elif [ -z "$HTTP" ]; then
    not_ok "the router serves HTTP (http= in its ready file)"
    not_ok "the HTTP bridge is not timed out" "no HTTP address"
else
    t0=$(date +%s%N)
    code=$(curl -s -N -o "$T/http.sse" -w '%{http_code}' --max-time 120 "http://$HTTP/v1/completions" \
        -H 'Content-Type: application/json' \
        -d '{"prompt":"paper engine","max_tokens":'$N_CTRL',"stream":true,"ignore_eos":true}')
    ms=$((($(date +%s%N) - t0) / 1000000))
    check "HTTP stream longer than the window completes (200, [DONE], ${ms} ms)" \
        bash -c "[ $ms -gt $((HB_MS * LIVENESS)) ] && [ '$code' = 200 ] && grep -q '\[DONE\]' '$T/http.sse' && ! grep -q '\"error\"' '$T/http.sse'"
    check "the HTTP bridge is not timed out" bash -c "! grep -q 'event=client_timeout' '$T/router.log'"
fi
check "idle after the controls" wait_status "$idle" 15

# ---- A client stopped mid-stream.
n_done=$(grep -c 'event=request_done' "$T/router.log")
"$PD_BIN/pd-cli" --router "$ROUTER" generate "garden signal orange" -n $N_LONG --ignore-eos --json \
    >"$T/stopped.jsonl" 2>"$T/stopped.err" &
CLI=$!
PIDS+=($CLI)
for _ in $(seq 1 200); do
    grep -q '"index":20,' "$T/stopped.jsonl" 2>/dev/null && break
    sleep 0.05
done
check "the stream runs on the decode worker" wait_status "$decode_running == '1'" 10
kill -STOP $CLI
t0=$(date +%s%N)
fired=0
for _ in $(seq 1 300); do
    grep -q 'event=client_timeout' "$T/router.log" && fired=1 && break
    sleep 0.05
done
ms=$((($(date +%s%N) - t0) / 1000000))
check "router logs client_timeout for the stopped client after ${ms} ms (window $WINDOW_MS ms: within $LO_MS..$HI_MS)" \
    bash -c "[ $fired = 1 ] && $(declare -f in_bounds); LO_MS=$LO_MS HI_MS=$HI_MS in_bounds $ms"
check "client_timeout names the client and its one request" \
    grep -Eq 'event=client_timeout client=[0-9a-f]+ requests=1 ' "$T/router.log"
check "the request was cancelled, not finished (no request_done for it)" \
    test "$(grep -c 'event=request_done' "$T/router.log")" = "$n_done"
check "decode worker: running 0, free blocks back to total, no active request" \
    wait_status "$idle" 15
kill -CONT $CLI
rc=0
for _ in $(seq 1 200); do
    kill -0 $CLI 2>/dev/null || break
    sleep 0.05
done
if kill -0 $CLI 2>/dev/null; then
    kill -KILL $CLI
    not_ok "resumed pd-cli ends" "still running 10 s after SIGCONT"
    not_ok "its stream ends with one final chunk carrying the error" "pd-cli did not end"
else
    wait $CLI
    rc=$?
    sed "s/^/# /" "$T/stopped.err"
    # The router's Error(CANCELLED) is best effort: it is queued on the
    # connection, but the resumed client's own ZMTP heartbeat timer may
    # close that connection before its buffered bytes are read; then the
    # client ends the request itself, the router being silent to it.
    check "resumed pd-cli ends with an error: the router's CANCELLED or, its connection lost, UNAVAILABLE (exit 1)" \
        bash -c "[ $rc = 1 ] && grep -Eq 'CANCELLED: client silent|UNAVAILABLE: (router .* silent|lost the connection to router)' '$T/stopped.err'"
    check "its stream ends with one final chunk carrying the error" \
        bash -c "[ \$(grep -c '\"final\":true' '$T/stopped.jsonl') = 1 ] && tail -1 '$T/stopped.jsonl' | grep -Eq 'CANCELLED|UNAVAILABLE'"
fi
# Tokens, not chunks: a chunk may carry several tokens.
n_got=$(node -e 'let n = 0;
    for (const l of require("fs").readFileSync(process.argv[1], "utf8").split("\n"))
        if (l) n += JSON.parse(l).tokens.length;
    console.log(n);' "$T/stopped.jsonl" 2>/dev/null)
check "it had received part of the stream only ($n_got of $N_LONG tokens, at least the 21 before the stop)" \
    bash -c "[ '${n_got:-0}' -ge 21 ] && [ '${n_got:-0}' -lt $N_LONG ]"

# ---- The router stopped mid-stream: pd-cli notices its silence.
"$PD_BIN/pd-cli" --router "$ROUTER" generate "jovial sphinx" -n $N_LONG --ignore-eos --json \
    >"$T/orphan.jsonl" 2>"$T/orphan.err" &
CLI=$!
PIDS+=($CLI)
for _ in $(seq 1 200); do
    grep -q '"index":20,' "$T/orphan.jsonl" 2>/dev/null && break
    sleep 0.05
done
kill -STOP $ROUTER_PID
t0=$(date +%s%N)
for _ in $(seq 1 300); do
    kill -0 $CLI 2>/dev/null || break
    sleep 0.05
done
ms=$((($(date +%s%N) - t0) / 1000000))
if kill -0 $CLI 2>/dev/null; then
    not_ok "pd-cli gives up on a stopped router" "still waiting after ${ms} ms"
    not_ok "its stream ends with one final chunk carrying the error" "pd-cli did not end"
    kill -KILL $CLI
else
    wait $CLI
    rc=$?
    # Silence is noticed by the application heartbeat ("router ... silent
    # for") or, if the client's ZMTP heartbeat closes the link first, by the
    # socket monitor ("lost the connection"): both are UNAVAILABLE.
    check "pd-cli reports the silent router (UNAVAILABLE, exit 1) after ${ms} ms (window $WINDOW_MS ms: within $LO_MS..$HI_MS)" \
        bash -c "[ $rc = 1 ] && grep -Eq 'UNAVAILABLE: (router .* silent for|lost the connection to router)' '$T/orphan.err' &&
                 $(declare -f in_bounds); LO_MS=$LO_MS HI_MS=$HI_MS in_bounds $ms"
    check "its stream ends with one final chunk carrying the error" \
        bash -c "[ \$(grep -c '\"final\":true' '$T/orphan.jsonl') = 1 ] && tail -1 '$T/orphan.jsonl' | grep -q UNAVAILABLE"
fi
kill -CONT $ROUTER_PID
wait_workers 2
check "after the router resumes: idle (the abandoned request is gone)" wait_status "$idle" 20
check "the cluster still serves" bash -c "timeout 60 '$PD_BIN/pd-cli' --router '$ROUTER' generate hello -n 5 >/dev/null"
exit $FAILED
