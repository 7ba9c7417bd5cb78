#!/bin/bash
# scripts/bench-link.sh -- KV shipping over a real-world link: a router, a
# prefill host, a decode host and a client host, each in its own network
# namespace (tests/deploy/netns.sh), the prefill host's link unshaped, then
# shaped with tc tbf to each RATE. For each prompt length, REPS requests one
# at a time (2 output tokens): KV bytes per request, ship-to-ack time of the
# transfer (the prefill worker's counters), TTFT and the time from the first
# token to the second (pd-cli's timings: e2e - ttft). The first token comes
# from the prefill worker, so the KV transfer delays the second one.
# Prints a markdown table (docs/benchmarks.md, "KV shipping over a shaped link").
#
#   sudo scripts/bench-link.sh
# Env: MODEL (default $BUILD/models/llama-110M-f32.gguf: scripts/models.sh
# default), LENS (prompt tokens, default "128 512 1024"), RATES (default
# "10gbit 1gbit"), REPS (default 3), THREADS (compute threads per worker, 1),
# CURVE=1 to encrypt every link (default off: the link alone).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
PD_BIN=$BUILD/bin
MODEL=${MODEL:-$BUILD/models/llama-110M-f32.gguf}
LENS=${LENS:-128 512 1024}
RATES=${RATES:-10gbit 1gbit}
REPS=${REPS:-3}
THREADS=${THREADS:-1}
[ "$(id -u)" = 0 ] || { echo "bench-link: network namespaces need root" >&2; exit 1; }
[ -s "$MODEL" ] || { echo "bench-link: $MODEL missing (scripts/models.sh default)" >&2; exit 1; }
. tests/deploy/netns.sh
T=$(mktemp -d /tmp/pd-bench-link.XXXXXX)
trap 'net_down; rm -rf "$T"' EXIT
net_up
host_add router 1
host_add p1 11
host_add d1 21
host_add client 100
SEC=()
if [ "${CURVE:-0}" = 1 ]; then
    k=$("$PD_BIN/pd-cli" keygen); SPUB=$(echo "$k" | sed -n 's/^public_key: "\(.*\)"$/\1/p'); SSEC=$(echo "$k" | sed -n 's/^secret_key: "\(.*\)"$/\1/p')
    SEC=(--set security.curve=true --set "security.server_public_key=$SPUB" --set "security.server_secret_key=$SSEC")
    k=$("$PD_BIN/pd-cli" keygen); CPUB=$(echo "$k" | sed -n 's/^public_key: "\(.*\)"$/\1/p'); CSEC=$(echo "$k" | sed -n 's/^secret_key: "\(.*\)"$/\1/p')
    SEC+=(--set "security.client_public_key=$CPUB" --set "security.client_secret_key=$CSEC")
    export PD_CURVE_SERVER_KEY=$SPUB PD_CURVE_PUBLIC_KEY=$CPUB PD_CURVE_SECRET_KEY=$CSEC
fi
COMMON=(--model "$MODEL" --set model.threads="$THREADS" --set kv.memory_mb=1024 "${SEC[@]}")
RIP=$(host_ip router)
on_host router "$PD_BIN/pd-router" "${COMMON[@]}" --set router.client_endpoint=tcp://0.0.0.0:5555 \
    --set router.worker_endpoint=tcp://0.0.0.0:5556 --log-file "$T/router.log" 2>"$T/router.err" &
on_host p1 "$PD_BIN/pd-prefill" "${COMMON[@]}" --id p1 --router "tcp://$RIP:5556" \
    --log-file "$T/p1.log" 2>"$T/p1.err" &
on_host d1 "$PD_BIN/pd-decode" "${COMMON[@]}" --id d1 --router "tcp://$RIP:5556" \
    --set decode.kv_endpoint=tcp://0.0.0.0:7000 --log-file "$T/d1.log" 2>"$T/d1.err" &
cli() { on_host client "$PD_BIN/pd-cli" --router "tcp://$RIP:5555" "$@"; }
for _ in $(seq 1 600); do
    [ "$(cli status --json 2>/dev/null | node -e 'let t="";process.stdin.on("data",d=>t+=d).on("end",()=>{try{console.log(JSON.parse(t).workers.length)}catch(e){console.log(0)}})')" = 2 ] && break
    sleep 0.1
done
kv() { # sent bytes, transfers, transfer us of p1
    cli status --json | node -e 'let t="";process.stdin.on("data",d=>t+=d).on("end",()=>{
        const w=JSON.parse(t).workers.find(w=>w.id=="p1"); console.log(w.counters.kv_sent_bytes, w.counters.kv_transfers, w.counters.kv_transfer_us)})'
}
kv_after() { # N: kv once p1 reports N transfers
    local v
    for _ in $(seq 1 100); do v=$(kv); [ "$(echo "$v" | cut -d' ' -f2)" -ge "$1" ] && break; sleep 0.1; done
    echo "$v"
}
tokens() { seq 100 $((99 + $1)) | paste -sd, -; }
echo "| link (prefill host egress) | prompt tokens | KV per request (MB) | ship-to-ack (ms) | effective (Gbit/s) | TTFT (ms, median) | 1st to 2nd token (ms, median) |"
echo "|---|---|---|---|---|---|---|"
cli generate --tokens "$(tokens 16)" -n 2 >/dev/null # warm-up
kv_after 1 >/dev/null
for rate in unshaped $RATES; do
    [ "$rate" = unshaped ] || link_shape p1 "$rate"
    for len in $LENS; do
        read -r b0 n0 u0 <<<"$(kv)"
        ttfts=()
        seconds=()
        for ((r = 0; r < REPS; r++)); do
            read -r t s < <(cli generate --tokens "$(tokens "$len")" -n 2 --json | node -e '
                let t="";process.stdin.on("data",d=>t+=d).on("end",()=>{
                const f=t.trim().split("\n").filter(l=>l).map(JSON.parse).find(c=>c.final&&c.timings);
                console.log(f?(f.timings.ttft_us/1000).toFixed(1):"-", f?((f.timings.e2e_us-f.timings.ttft_us)/1000).toFixed(1):"-")})')
            [ "$t" = - ] && { echo "bench-link: a request failed (see above); the machine may be overloaded" >&2; exit 1; }
            ttfts+=("$t")
            seconds+=("$s")
        done
        read -r b1 n1 u1 <<<"$(kv_after $((n0 + REPS)))"
        mid=$(((REPS + 1) / 2))
        med=$(printf '%s\n' "${ttfts[@]}" | sort -n | sed -n "${mid}p")
        med2=$(printf '%s\n' "${seconds[@]}" | sort -n | sed -n "${mid}p")
        awk -v rate="$rate" -v len="$len" -v b=$((b1 - b0)) -v n=$((n1 - n0)) -v u=$((u1 - u0)) -v ttft="$med" -v s2="$med2" \
            'BEGIN { printf "| %s | %d | %.1f | %.1f | %.2f | %s | %s |\n", rate, len, b / n / 1e6, u / n / 1000, b * 8 / u / 1000, ttft, s2 }'
    done
done
