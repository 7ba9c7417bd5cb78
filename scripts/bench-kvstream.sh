#!/bin/bash
# scripts/bench-kvstream.sh -- KV exposed after prefill, streamed against
# whole (kv.transfer: layer vs whole, issue 16): for each request, the time
# from the prefill worker computing its last layer (its log: event=kv_out
# last_layer_us) to the decode worker handing the sequence, its whole KV in
# place and checked, to its batcher (event=kv_in t_us). Both are
# CLOCK_MONOTONIC, one clock for every process of the machine (network
# namespaces too). One router and decode worker; a prefill worker per
# (round, mode), modes alternating so that the ratios come from one run.
# One request at a time, 2 output tokens. Prints a markdown table; then
# what streaming costs the prefill pass itself: each request's forward time
# on the prefill worker (its prefill_us counter, before and after), in both
# modes, and the time the per-layer hook spent in it (event=kv_out
# stream_us: the layers' checksums and sends, on the compute thread).
#
#   scripts/bench-kvstream.sh                 loopback
#   sudo LINK=1gbit scripts/bench-kvstream.sh the prefill host's egress shaped
#       (network namespaces, tests/deploy/netns.sh; tc tbf rate LINK burst
#       128kb latency 50ms)
# Env: MODEL (default $BUILD/models/llama-110M-f32.gguf), LENS (prompt
# tokens, default "512 2040": the model's context is 2048), REPS (requests
# per row and round, default 3), ROUNDS (default 2), THREADS (1).
set -u
cd "$(dirname "$0")/.."
export BUILD=${BUILD:-build}
PD_BIN=$BUILD/bin
MODEL=${MODEL:-$BUILD/models/llama-110M-f32.gguf}
LENS=${LENS:-512 2040}
REPS=${REPS:-3}
ROUNDS=${ROUNDS:-2}
THREADS=${THREADS:-1}
LINK=${LINK:-loopback}
[ -s "$MODEL" ] || { echo "bench-kvstream: $MODEL missing" >&2; exit 1; }
COMMON=(--model "$MODEL" --set model.threads="$THREADS" --set kv.memory_mb=1024
        --set worker.heartbeat_ms=200 --set router.heartbeat_ms=200)

if [ "$LINK" = loopback ]; then
    T=$(mktemp -d /tmp/pd-bench-kvs.XXXXXX)
    PIDS=()
    trap 'for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done; wait; rm -rf "$T"' EXIT
    "$PD_BIN/pd-router" "${COMMON[@]}" --set router.client_endpoint=tcp://127.0.0.1:0 \
        --set router.worker_endpoint=tcp://127.0.0.1:0 --ready-file "$T/router.ready" \
        --log-file "$T/router.log" 2>"$T/router.err" &
    PIDS+=($!)
    for _ in $(seq 1 100); do [ -s "$T/router.ready" ] && break; sleep 0.05; done
    RC=$(grep '^client=' "$T/router.ready" | cut -d= -f2-)
    RW=$(grep '^worker=' "$T/router.ready" | cut -d= -f2-)
    run_prefill() { "$PD_BIN/pd-prefill" "${COMMON[@]}" --router "$RW" "$@" >/dev/null & PPID_LAST=$!; }
    "$PD_BIN/pd-decode" "${COMMON[@]}" --id d1 --router "$RW" --log-file "$T/d1.log" 2>"$T/d1.err" &
    PIDS+=($!)
    cli() { "$PD_BIN/pd-cli" --router "$RC" "$@"; }
else
    [ "$(id -u)" = 0 ] || { echo "bench-kvstream: LINK=$LINK needs root (namespaces)" >&2; exit 1; }
    . tests/deploy/netns.sh
    T=$(mktemp -d /tmp/pd-bench-kvs.XXXXXX)
    trap 'net_down; rm -rf "$T"' EXIT
    net_up
    host_add router 1
    host_add p1 11
    host_add d1 21
    host_add client 100
    RIP=$(host_ip router)
    on_host router "$PD_BIN/pd-router" "${COMMON[@]}" --set router.client_endpoint=tcp://0.0.0.0:5555 \
        --set router.worker_endpoint=tcp://0.0.0.0:5556 --log-file "$T/router.log" 2>"$T/router.err" &
    # ip netns exec execs the worker: $! is its pid (on_host, a function,
    # would put a subshell between).
    run_prefill() { ip netns exec "$NET-p1" "$PD_BIN/pd-prefill" "${COMMON[@]}" --router "tcp://$RIP:5556" "$@" >/dev/null & PPID_LAST=$!; }
    on_host d1 "$PD_BIN/pd-decode" "${COMMON[@]}" --id d1 --router "tcp://$RIP:5556" \
        --set decode.kv_endpoint=tcp://0.0.0.0:7000 --log-file "$T/d1.log" 2>"$T/d1.err" &
    ip netns exec "$NET-p1" tc qdisc replace dev eth0 root tbf rate "$LINK" burst 128kb latency 50ms
    cli() { on_host client "$PD_BIN/pd-cli" --router "tcp://$RIP:5555" "$@"; }
fi

n_workers() {
    cli status --json 2>/dev/null | node -e 'let t="";process.stdin.on("data",d=>t+=d).on("end",()=>{try{console.log(JSON.parse(t).workers.length)}catch(e){console.log(0)}})'
}
wait_n() { for _ in $(seq 1 600); do [ "$(n_workers)" = "$1" ] && return 0; sleep 0.1; done; echo "bench-kvstream: workers did not register ($1 expected)" >&2; tail -n 3 "$T"/*.err "$T"/*.log >&2; exit 1; }
# tokens K LEN: prompt number K, LEN ids; each K starts with another id, so
# that no prompt finds another's blocks cached (kv.prefix_caching is on by
# default: a hit would leave the pass nearly empty).
tokens() { seq $((100 + $1 * 37)) $((99 + $1 * 37 + $2)) | paste -sd, -; }
K=0
wait_n 1

# exposure PLOG REQ: us from REQ's last layer (PLOG) to its kv_in (d1.log).
exposure() {
    local a b
    for _ in $(seq 1 100); do
        a=$(sed -n "s/.*event=kv_out req=$2 .*last_layer_us=\([0-9]*\).*/\1/p" "$1" | tail -1)
        b=$(sed -n "s/.*event=kv_in req=$2 .*t_us=\([0-9]*\).*/\1/p" "$T/d1.log" | tail -1)
        [ -n "$a" ] && [ -n "$b" ] && { echo $((b - a)); return; }
        sleep 0.05
    done
    echo -
}

# prefill_us ID: worker ID's summed prefill forward time (us), as its last
# heartbeat reported it.
prefill_us() {
    cli status --json 2>/dev/null | node -e 'let t="";process.stdin.on("data",d=>t+=d).on("end",()=>{try{const w=JSON.parse(t).workers.find(w=>w.id===process.argv[1]);console.log(w?w.counters.prefill_us||0:"-")}catch(e){console.log("-")}})' "$1"
}
# pass_us ID BEFORE: the forward time since BEFORE, once a heartbeat
# carries it (the request's prefill was done when its tokens came).
pass_us() {
    local now
    for _ in $(seq 1 50); do
        sleep 0.1
        now=$(prefill_us "$1")
        [ "$now" != - ] && [ "$now" -gt "$2" ] && { echo $((now - $2)); return; }
    done
    echo -
}

: >"$T/samples"
for ((round = 1; round <= ROUNDS; round++)); do
    for mode in whole layer; do
        id=p_${mode}_$round
        run_prefill --id "$id" --set kv.transfer=$mode --log-file "$T/$id.log" 2>"$T/$id.err"
        pid=$PPID_LAST
        wait_n 2
        K=$((K + 1))
        cli generate --tokens "$(tokens $K 64)" -n 2 >/dev/null # warm-up
        for len in $LENS; do
            for ((r = 0; r < REPS; r++)); do
                sleep 0.5 # the last request's counters in a heartbeat
                us0=$(prefill_us "$id")
                K=$((K + 1))
                cli generate --tokens "$(tokens $K "$len")" -n 2 --ignore-eos >/dev/null
                req=$(sed -n 's/.*event=kv_out req=\([0-9]*\) .*/\1/p' "$T/$id.log" | tail -1)
                hook=$(sed -n "s/.*event=kv_out req=$req .*stream_us=\([0-9]*\).*/\1/p" "$T/$id.log" | tail -1)
                echo "$mode $len $(exposure "$T/$id.log" "$req") $(pass_us "$id" "$us0") ${hook:--}" >>"$T/samples"
            done
        done
        kill -TERM "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
        wait_n 1
    done
done
echo "link: $LINK; model: $MODEL; $ROUNDS rounds x $REPS requests per row, modes alternating"
echo
echo "| prompt tokens | whole: exposure ms (median) | layer: exposure ms (median) | layer / whole |"
echo "|---:|---:|---:|---:|"
node -e '
    const rows = require("fs").readFileSync(process.argv[1], "utf8").trim().split("\n").map(l => l.split(" "));
    const med = a => { a = a.slice().sort((x, y) => x - y); return a.length ? a[(a.length - 1) >> 1] : NaN; };
    for (const len of process.argv[2].split(" ")) {
        const get = m => rows.filter(r => r[0] == m && r[1] == len && r[2] != "-").map(r => Number(r[2]) / 1000);
        const w = med(get("whole")), l = med(get("layer"));
        console.log(`| ${len} | ${w.toFixed(1)} | ${l.toFixed(1)} | ${(l / w).toFixed(3)} |`);
    }' "$T/samples" "$LENS"
echo
echo "| prompt tokens | whole: prefill pass ms (median) | layer: prefill pass ms (median) | layer / whole | layer: in the hook ms (median) |"
echo "|---:|---:|---:|---:|---:|"
node -e '
    const rows = require("fs").readFileSync(process.argv[1], "utf8").trim().split("\n").map(l => l.split(" "));
    const med = a => { a = a.slice().sort((x, y) => x - y); return a.length ? a[(a.length - 1) >> 1] : NaN; };
    for (const len of process.argv[2].split(" ")) {
        const get = (m, c) => rows.filter(r => r[0] == m && r[1] == len && r[c] != "-").map(r => Number(r[c]) / 1000);
        const w = med(get("whole", 3)), l = med(get("layer", 3)), h = med(get("layer", 4));
        console.log(`| ${len} | ${w.toFixed(1)} | ${l.toFixed(1)} | ${(l / w).toFixed(3)} | ${h.toFixed(2)} |`);
    }' "$T/samples" "$LENS"
echo
echo "samples (mode, tokens, exposure us, pass us, hook us): $(tr '\n' ';' <"$T/samples")"
