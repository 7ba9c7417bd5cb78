#!/bin/bash
# Layer-wise KV streaming (kv.transfer: layer, issue 16) across real
# processes: 1 router, 1 decode worker, prefill workers that stream or not.
#   - 12 concurrent requests (greedy and seeded sampling) with a streaming
#     prefill worker: every stream whole and token-identical to pd-run, and
#     the KV did go layer by layer (the decode worker's kv_layers);
#   - the same 12 with a whole-request prefill worker (kv.transfer: whole):
#     token-identical to pd-run too, so to the streamed run;
#   - kill -9 of a prefill worker midway through a layer stream (each
#     streamed layer is slowed by PD_TEST_LAYER_DELAY_MS, the kill comes
#     after its first layer was sent and before its last): the decode worker
#     drops the partial stream (kv_streams_dropped), the request completes on
#     the other prefill worker token-identical to pd-run, nothing leaks.
. "$(dirname "$0")/lib.sh"
require_model
N=12
plan 12
start_router
start_worker prefill p1 --set kv.transfer=layer
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

# The same workload with a prefill worker that ships whole requests.
kill -TERM $P1
wait $P1 2>/dev/null
start_worker prefill p2 --set kv.transfer=whole
P2=$LAST_PID
wait_workers 2
send_all $N "$T/whole"
check_streams "$T/whole" $N "kv.transfer whole, against pd-run (so equal to the streamed run)"
layers2=$(status_field "s.workers.find(w => w.id === 'd1').counters.kv_layers")
check "kv.transfer whole streamed nothing (kv_layers stays $layers, is $layers2)" \
    test "${layers2:-x}" = "${layers:-y}"
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
check_streams "$T/kill" 1 "killed midway through a layer stream"
check "the kill landed mid-stream: the decode worker dropped a partial stream (kv_streams_dropped ${drop0:-?} -> more)" \
    wait_status "s.workers.find(w => w.id === 'd1').counters.kv_streams_dropped > ${drop0:-0}"
check "the request was re-dispatched (timings.preemptions > 0)" \
    test "$(preempted_streams "$T/kill")" -ge 1
check "no blocks stranded, no request state, the dead worker gone" \
    wait_status 's.workers.every(w => w.free_blocks == w.total_blocks) && s.active_requests == 0 && s.workers.length == 2' 20
exit $FAILED
