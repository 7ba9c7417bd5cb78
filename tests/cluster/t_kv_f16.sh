#!/bin/bash
# F16 KV (kv.dtype: f16, issue 16) across the cluster: 1 router + 1 prefill
# + 1 decode worker, all with kv.dtype f16.
#   - 12 concurrent requests (greedy and seeded sampling): every stream
#     whole and token-identical to `pd-run --kv-dtype f16` on the same
#     request (the engine with an F16 cache, batch-invariant), whose
#     probabilities are not an F32 cache's;
#   - the blocks shipped are half an F32 block's bytes: kv_sent_bytes is a
#     whole number of F16 blocks, and an F16 block is half the F32 block of
#     the same shape (the workers' block_bytes at load);
#   - a worker with kv.dtype f32 is refused by the router, naming kv.dtype
#     (its KV could not be read by the others);
#   - nothing leaks.
. "$(dirname "$0")/lib.sh"
require_model
N=12
plan 8
COMMON_SETS+=(--set kv.dtype=f16)
start_router
start_worker prefill p1
start_worker decode d1
wait_workers 2
ok "an F16-KV cluster registers (router + prefill + decode)"
workload $N
for ((i = 0; i < N; i++)); do
    # shellcheck disable=SC2086
    ref_tokens "$T/ref_$i.txt" -p "${PROMPTS[i]}" ${ARGS[i]} --kv-dtype f16
    # shellcheck disable=SC2086
    ref_tokens "$T/ref32_$i.txt" -p "${PROMPTS[i]}" ${ARGS[i]}
done
send_all $N "$T"
check_streams "$T" $N "F16 KV 1P+1D, against pd-run --kv-dtype f16"
# The tiny model's tokens come out the same with either cache (n_same of
# N here); its probabilities do not: the references are an F16 cache's.
n_same=0
for ((i = 0; i < N; i++)); do cmp -s "$T/ref_$i.txt" "$T/ref32_$i.txt" && n_same=$((n_same + 1)); done
"$PD_BIN/pd-run" -m "$MODEL" --threads 1 -p "${PROMPTS[3]}" -n 8 --dump-top 5 --kv-dtype f16 >"$T/top16.txt" 2>/dev/null
"$PD_BIN/pd-run" -m "$MODEL" --threads 1 -p "${PROMPTS[3]}" -n 8 --dump-top 5 >"$T/top32.txt" 2>/dev/null
check "the references are an F16 cache's: pd-run's probabilities differ with --kv-dtype f16 ($n_same of $N token streams the same)" \
    bash -c "[ -s '$T/top16.txt' ] && ! cmp -s '$T/top16.txt' '$T/top32.txt'"
b16=$(sed -n 's/.*event=loaded .* block_bytes=\([0-9]*\) .*/\1/p' "$T/p1.log" | head -1)
sent=$(status_field "s.workers.find(w => w.id === 'p1').counters.kv_sent_bytes")
check "kv_sent_bytes ($sent) is a whole number of F16 blocks ($b16 bytes)" \
    bash -c "[ ${sent:-0} -gt 0 ] && [ $((${sent:-0} % ${b16:-1})) = 0 ]"
# An F32 worker: loads (its block size in its log), then is refused.
start_worker decode d32 --set kv.dtype=f32
for _ in $(seq 1 100); do grep -q 'event=worker_refused worker=d32' "$T/router.log" && break; sleep 0.1; done
b32=$(sed -n 's/.*event=loaded .* block_bytes=\([0-9]*\) .*/\1/p' "$T/d32.log" | head -1)
check "an F16 block ($b16 bytes) is half an F32 block ($b32 bytes): half the bytes shipped per token" \
    test "$((2 * ${b16:-0}))" = "${b32:-1}"
check "a worker with kv.dtype f32 is refused, naming kv.dtype" \
    grep -q 'event=worker_refused worker=d32 reason="kv.dtype f32, cluster uses f16"' "$T/router.log"
check "no leaks, the refused worker not registered" \
    wait_status 's.workers.length == 2 && s.workers.every(w => w.free_blocks == w.total_blocks) && s.active_requests == 0'
