#!/bin/bash
# scripts/bench-kv.sh -- KV shipping, measured: for prompts of several
# lengths, the bytes shipped per request, the transfer time (prefill worker:
# KV sent -> KvAck received) against the prefill time, the achieved GB/s,
# and raw ZeroMQ loopback GB/s for messages of the same shape measured in the
# same run (pd-cli bench-zmq). Prints a markdown table.
#
#   scripts/bench-kv.sh            (MODEL=..., BUILD=..., REQS=10 per length)
# Needs a built tree (make all) and the model (scripts/models.sh default).
set -u
cd "$(dirname "$0")/.."
export BUILD=${BUILD:-build}
export MODEL=${MODEL:-$BUILD/models/llama-110M-f32.gguf}
REQS=${REQS:-10}
LENGTHS=${LENGTHS:-"16 128 512 1024"}
. tests/cluster/lib.sh
[ -s "$MODEL" ] || { echo "bench-kv: $MODEL missing (scripts/models.sh default)" >&2; exit 1; }
COMMON_SETS=(--set model.threads=1 --set worker.heartbeat_ms=100 --set router.heartbeat_ms=200)
start_router
start_worker prefill p1
start_worker decode d1
wait_workers 2 >/dev/null

counters() { # prints: sent_bytes transfers transfer_us prefill_us prefill_batches
    cli status --json | node -e '
        let t = ""; process.stdin.on("data", d => t += d).on("end", () => {
            const s = JSON.parse(t), p = s.workers.find(w => w.role == "prefill").counters;
            console.log([p.kv_sent_bytes, p.kv_transfers, p.kv_transfer_us, p.prefill_us,
                         p.prefill_batches].join(" ")); });'
}
BB=$(sed -n 's/.*block_bytes=\([0-9]*\).*/\1/p' "$T/d1.log" | head -1)
BS=$(status_field 's.block_size')
echo "model: $MODEL, block: $BS tokens = $BB bytes, $REQS requests per length, one at a time"
echo
echo "| prompt tokens | KV bytes / request | prefill ms | KV transfer ms | transfer / prefill | KV GB/s | raw ZeroMQ GB/s (same shape) |"
echo "|---:|---:|---:|---:|---:|---:|---:|"
for L in $LENGTHS; do
    toks=$(seq -s, 100 $((100 + L - 1)))
    sleep 0.3
    read -r b0 n0 u0 p0 k0 <<<"$(counters)"
    for ((i = 0; i < REQS; i++)); do
        cli generate --tokens "$toks" -n 2 --ignore-eos >/dev/null
    done
    sleep 0.3 # one heartbeat
    read -r b1 n1 u1 p1 k1 <<<"$(counters)"
    nb=$(((L + BS - 1) / BS))
    raw=$("$PD_BIN/pd-cli" bench-zmq --block-bytes "$BB" --blocks "$nb" --messages 200 |
        node -e 'let t="";process.stdin.on("data",d=>t+=d).on("end",()=>console.log(JSON.parse(t).gb_per_s))')
    node -e '
        const [L, b0, n0, u0, p0, k0, b1, n1, u1, p1, k1, raw] = process.argv.slice(1).map(Number);
        const n = n1 - n0, bytes = (b1 - b0) / n, tr = (u1 - u0) / n / 1000, pf = (p1 - p0) / (k1 - k0) / 1000;
        console.log(`| ${L} | ${Math.round(bytes)} | ${pf.toFixed(2)} | ${tr.toFixed(2)} | ` +
            `${(tr / pf).toFixed(2)} | ${(bytes / (tr / 1000) / 1e9).toFixed(2)} | ${raw} |`);
    ' "$L" "$b0" "$n0" "$u0" "$p0" "$k0" "$b1" "$n1" "$u1" "$p1" "$k1" "$raw"
done
