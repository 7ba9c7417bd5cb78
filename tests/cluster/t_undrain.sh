#!/bin/bash
# Cordon and resume (pd-cli drain --keep / undrain): a cordoned worker gets no
# new work, finishes what it holds and stays registered; undrain gives it work
# again. A worker draining to leave (pd-cli drain, SIGTERM) cannot be kept or
# resumed. Streams stay whole and token-identical throughout.
. "$(dirname "$0")/lib.sh"
require_model
plan 19
start_router
start_worker prefill p1
start_worker decode d1
start_worker decode d2
D2=$LAST_PID
wait_workers 3
N=8
PROMPTS=()
ARGS=()
for ((i = 0; i < N; i++)); do
    PROMPTS[i]="${WORDS[*]:i:6}"
    ARGS[i]="-n 600 --ignore-eos"
    ((i % 2)) && ARGS[i]+=" --temp 0.7 --top-k 40 --seed $((i + 5))"
done
mkdir -p "$T/a" "$T/b" "$T/c"
refs $N "$T/a"
cp "$T"/a/ref_* "$T/b/"
cp "$T"/a/ref_* "$T/c/"
state() { status_field "(s.workers.find(w => w.id == '$1') || {state: 'gone'}).state"; }
recv() { status_field "s.workers.find(w => w.id == '$1').counters.kv_recv_bytes"; }

send_all $N "$T/a" &
sender=$!
for _ in $(seq 1 200); do grep -q '"index":50,' "$T"/a/out_*.jsonl 2>/dev/null && break; sleep 0.02; done
held=$(status_field 's.workers.find(w => w.id == "d1").assigned')
out=$(cli drain d1 --keep 2>&1)
check "pd-cli drain d1 --keep while it holds $held streams: cordoned" \
    bash -c "echo \"\$1\" | grep -q '^cordoned d1' && [ \"\$2\" = cordoned ]" _ "$out" "$(state d1)"
check "pd-cli status shows it cordoned" bash -c "'$PD_BIN/pd-cli' --router '$ROUTER' status | grep -q '^d1 .*cordoned'"
wait $sender
check_streams "$T/a" $N "streams of the cordoned worker finish"
check "the cordoned worker finished what it held and stays registered" \
    wait_status 's.workers.some(w => w.id == "d1" && w.state == "cordoned" && w.assigned == 0 && w.free_blocks == w.total_blocks)'

r0=$(recv d1)
send_all $N "$T/b"
check_streams "$T/b" $N "requests while d1 is cordoned"
check "a cordoned worker gets no new work (d1 received no KV: $r0 -> $(recv d1) bytes)" test "$(recv d1)" = "$r0"

out=$(cli undrain d1 2>&1)
check "pd-cli undrain d1: ready again" \
    bash -c "echo \"\$1\" | grep -q '^resumed d1' && [ \"\$2\" = ready ]" _ "$out" "$(state d1)"
send_all $N "$T/c"
check_streams "$T/c" $N "requests after undrain"
check "the resumed worker gets work again (d1 received $(($(recv d1) - r0)) bytes of KV)" \
    test "$(recv d1)" -gt "$r0"

# d2 holding streams (d1 cordoned again, so all of them): drained to leave,
# it cannot be kept or resumed while it finishes them.
mkdir -p "$T/d"
cp "$T"/a/ref_* "$T/d/"
cli drain d1 --keep >/dev/null
send_all $N "$T/d" &
sender=$!
for _ in $(seq 1 200); do grep -q '"index":50,' "$T"/d/out_*.jsonl 2>/dev/null && break; sleep 0.02; done
cli drain d2 >/dev/null
out=$(cli undrain d2 2>&1)
check "undrain of a worker draining to leave is refused, saying why" \
    bash -c "echo \"\$1\" | grep -q \"INVALID_ARGUMENT: worker 'd2' is draining to leave\"" _ "$out"
out=$(cli drain d2 --keep 2>&1)
check "so is drain --keep" bash -c "echo \"\$1\" | grep -q 'is draining to leave'" _ "$out"
wait $sender
check_streams "$T/d" $N "streams of the worker draining to leave"
wait $D2
check "d2 left as drained (exit $?)" test $? = 0
cli undrain d1 >/dev/null
out=$(cli undrain nosuch 2>&1)
check "undrain of an unknown worker id names it" \
    bash -c "echo \"\$1\" | grep -q \"INVALID_ARGUMENT: unknown worker id 'nosuch'\"" _ "$out"
check "no request failed" test "$(status_field 's.requests_failed')" = 0
