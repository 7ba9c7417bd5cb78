#!/bin/bash
# Layer-wise KV streaming (kv.transfer: layer, issue 16) across real
# processes: 1 router, 1 decode worker, prefill workers that stream or not.
#   - 12 concurrent requests (greedy and seeded sampling) with a streaming
#     prefill worker: every stream whole and token-identical to pd-run, and
#     the KV did go layer by layer (the decode worker's kv_layers);
#   - the same 12 with a whole-request prefill worker (kv.transfer: whole):
#     token-identical to pd-run too, so to the streamed run;
#   - the prefill worker (started before the decode worker) learnt the
#     decode worker's KV endpoint from the router (KvPeers) and connected to
#     it ahead of any task: its first streamed request found the socket
#     connected (kv_connected=1) and streamed;
#   - prefix caching with streaming: prompts sharing a ~180-token prefix,
#     one after another, so that each after the first finds the prefill
#     worker's cached blocks and its pass computes only its suffix: the
#     stream must carry the cached blocks too (the decode worker admits only
#     with every layer of every block). Token-identical to pd-run, and so to
#     the same prompts with kv.transfer: whole (also checked); prefix hits
#     counted, every hit request admitted from a stream (the decode
#     worker's kv_in mode=layer), nothing refused (kv_rejected 0), no
#     stream dropped but those of requests that ended at their first token;
#   - kill -9 of a prefill worker midway through a layer stream (each
#     streamed layer is slowed by PD_TEST_LAYER_DELAY_MS, the kill comes
#     after its first layer was sent and before its last): the decode worker
#     drops the partial stream (kv_streams_dropped), the request completes on
#     the other prefill worker token-identical to pd-run, nothing leaks.
. "$(dirname "$0")/lib.sh"
require_model
N=12
plan 21
start_router
start_worker prefill p1 --set kv.transfer=layer --set log.level=debug
P1=$LAST_PID
start_worker decode d1
wait_workers 2
workload $N
refs $N "$T"
mkdir -p "$T/layer" "$T/whole"
for ((i = 0; i < N; i++)); do
    cp "$T/ref_$i.txt" "$T/layer/ref_$i.txt"
    cp "$T/ref_$i.txt" "$T/whole/ref_$i.txt"
done
send_all $N "$T/layer"
check_streams "$T/layer" $N "kv.transfer layer, against pd-run"
layers=$(status_field "s.workers.find(w => w.id === 'd1').counters.kv_layers")
check "the KV came layer by layer: the decode worker took $layers KvLayer messages" \
    test "${layers:-0}" -ge $N
n_task=$(grep -c 'event=prefill_task ' "$T/p1.log")
n_conn=$(grep -c 'event=prefill_task .*kv_connected=1' "$T/p1.log")
first_out=$(grep -m1 'event=kv_out ' "$T/p1.log")
check "p1's tasks found their KV socket connected ($n_conn of $n_task, the first ones too: KvPeers when d1 registered), the first KV out streamed" \
    eval 'test "$n_task" -ge $N -a "$n_conn" = "$n_task" && [[ $first_out == *mode=layer* ]]'

# ---- prefix caching with streaming ----
# prefix_prompts N: PROMPTS[i] = a ~180-token prefix (11 full blocks of 16)
# + 6 words of its own; 24 tokens each, odd i seeded top-p sampling.
PREFIX=""
for ((k = 0; k < 90; k++)); do PREFIX+="${WORDS[$(((k * 7 + k / 3) % ${#WORDS[@]}))]} "; done
prefix_prompts() {
    local n=$1 i k s
    PROMPTS=()
    ARGS=()
    for ((i = 0; i < n; i++)); do
        s=""
        for ((k = 0; k < 6; k++)); do s+=" ${WORDS[$(((i * 5 + k * 11) % ${#WORDS[@]}))]}"; done
        PROMPTS[i]="$PREFIX${s# }"
        ARGS[i]="-n 24 --ignore-eos"
        if ((i % 2)); then ARGS[i]+=" --temp 0.9 --top-p 0.95 --seed $((77 + i))"; fi
    done
}
# send_seq N DIR: one request after another (each finds the blocks of the
# ones before it).
send_seq() {
    local n=$1 dir=$2 i
    for ((i = 0; i < n; i++)); do
        # shellcheck disable=SC2086
        timeout 60 "$PD_BIN/pd-cli" --router "$ROUTER" generate "${PROMPTS[i]}" ${ARGS[i]} \
            --json >"$dir/out_$i.jsonl" 2>"$dir/out_$i.err"
    done
}
# hit_modes PLOG: "H MODES": how many prefills of the prefill worker's log
# PLOG found a cached prefix (event=prefix_hit, debug), and how the decode
# worker admitted those requests' KV (d1.log, event=kv_in mode=: "layer"
# from a stream, "whole" from a whole transfer; "none" for a hit request
# never admitted), e.g. "5 layer".
hit_modes() {
    awk 'function req(l) { match(l, / req=[0-9]+/); return substr(l, RSTART + 5, RLENGTH - 5) }
         FILENAME == ARGV[1] && / event=prefix_hit / { hit[req($0)] = 1; n++ }
         FILENAME == ARGV[2] && / event=kv_in / {
             m = $0; sub(/.* mode=/, "", m); sub(/ .*/, "", m); mode[req($0)] = m }
         END { s = ""
               for (r in hit) { x = (r in mode) ? mode[r] : "none"
                                if (!(x in seen)) { seen[x] = 1; s = s (s == "" ? "" : ",") x } }
               print n + 0, s }' "$1" "$T/d1.log"
}
NP=6
prefix_prompts $NP
mkdir -p "$T/pl" "$T/pw"
refs $NP "$T/pl"
cp "$T"/pl/ref_*.txt "$T/pw/"
send_seq $NP "$T/pl"
check_streams "$T/pl" $NP "shared prefix, kv.transfer layer, against pd-run"
read -r nh modes <<<"$(hit_modes "$T/p1.log")"
check "prefix hits on p1 (>= $(((NP - 1) * 160)) tokens, $nh prefills), every hit request admitted from a stream (modes: ${modes:-?})" \
    eval 'test "$nh" -ge $((NP - 1)) -a "$modes" = layer &&
          wait_status "s.workers.some(w => w.id === \"p1\" && w.counters.prefix_hits >= $(((NP - 1) * 160)))"'

# The same workload with a prefill worker that ships whole requests.
kill -TERM $P1
wait $P1 2>/dev/null
start_worker prefill p2 --set kv.transfer=whole --set log.level=debug
P2=$LAST_PID
wait_workers 2
layers=$(status_field "s.workers.find(w => w.id === 'd1').counters.kv_layers")
workload $N
send_all $N "$T/whole"
check_streams "$T/whole" $N "kv.transfer whole, against pd-run (so equal to the streamed run)"
# The shared prefix again, shipped whole: equal to pd-run, so to the
# streamed run above.
prefix_prompts $NP
send_seq $NP "$T/pw"
check_streams "$T/pw" $NP "shared prefix, kv.transfer whole, against pd-run (so equal to the streamed run)"
read -r nh modes <<<"$(hit_modes "$T/p2.log")"
check "prefix hits on p2 too ($nh prefills), their KV admitted whole (modes: ${modes:-?})" \
    test "$nh" -ge $((NP - 1)) -a "$modes" = whole
layers2=$(status_field "s.workers.find(w => w.id === 'd1').counters.kv_layers")
check "kv.transfer whole streamed nothing (kv_layers stays $layers, is $layers2)" \
    test "${layers2:-x}" = "${layers:-y}"
# A stream is dropped, uncounted in kv_rejected, when its request ends at
# its first token while its layers are on the way (the router's Cancel):
# any other drop or refusal is a fault.
rejected=$(status_field "s.workers.find(w => w.id === \"d1\").counters.kv_rejected")
other_drops=$(grep "event=kv_stream_dropped" "$T/d1.log" | grep -v 'why="cancelled"' | head -3)
[ "${rejected:-x}" = 0 ] || other_drops+=$(grep -E "event=(kv_rejected|bad_kv_message)" "$T/d1.log" | head -3)
check "the decode worker refused no transfer (kv_rejected ${rejected:-?}) and dropped no stream but cancelled ones${other_drops:+ (dropped: $other_drops)}" \
    test "${rejected:-x}" = 0 -a -z "$other_drops"
kill -TERM $P2
wait $P2 2>/dev/null

# kill -9 midway through a stream. Both prefill workers stream slowly (the
# tiny model has 4 layers: ~3 s of stream per prompt); whichever takes the
# request is killed once it has sent a layer of it, and before it commits.
DELAY=700
PD_TEST_LAYER_DELAY_MS=$DELAY start_worker prefill p3 --set kv.transfer=layer --set log.level=debug
P3=$LAST_PID
PD_TEST_LAYER_DELAY_MS=$DELAY start_worker prefill p4 --set kv.transfer=layer --set log.level=debug
P4=$LAST_PID
wait_workers 3
drop0=$(status_field "s.workers.find(w => w.id === 'd1').counters.kv_streams_dropped")
mkdir -p "$T/kill"
w=""
for ((k = 0; k < 120; k++)); do w+="${WORDS[$(((k * 11) % ${#WORDS[@]}))]} "; done
PROMPTS=("${w% }")
ARGS=("-n 24 --ignore-eos")
refs 1 "$T/kill"
send_all 1 "$T/kill" &
sender=$!
victim=""
for _ in $(seq 1 300); do
    for id in p3 p4; do
        grep -q 'event=kv_layer_sent req=' "$T/$id.log" 2>/dev/null && victim=$id
    done
    [ -n "$victim" ] && break
    sleep 0.01
done
vpid=$P3
[ "$victim" = p4 ] && vpid=$P4
committed=0
if [ -n "$victim" ]; then
    kill -9 "$vpid"
    grep -q 'event=kv_stream_committed' "$T/$victim.log" && committed=1
fi
wait $sender
check "a prefill worker ($victim) was killed after streaming a layer, before its commit" \
    test -n "$victim" -a "$committed" = 0
check "its task found its KV socket connected (the KvPeers of its registration, after d1's)" \
    grep -q 'event=prefill_task .*kv_connected=1' "$T/${victim:-none}.log"
check_streams "$T/kill" 1 "killed midway through a layer stream"
check "the kill landed mid-stream: the decode worker dropped a partial stream (kv_streams_dropped ${drop0:-?} -> more)" \
    wait_status "s.workers.find(w => w.id === 'd1').counters.kv_streams_dropped > ${drop0:-0}"
check "the request was re-dispatched (timings.preemptions > 0)" \
    test "$(preempted_streams "$T/kill")" -ge 1
check "no blocks stranded, no request state, the dead worker gone" \
    wait_status 's.workers.every(w => w.free_blocks == w.total_blocks) && s.active_requests == 0 && s.workers.length == 2' 20
exit $FAILED
