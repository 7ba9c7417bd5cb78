# scripts/bench-lib.sh -- cluster helpers of scripts/bench.sh (sourced).
#
#   bench_start NAME SPEC...     a router + workers on loopback, ephemeral ports;
#                                SPEC is ROLE:CPU (ROLE prefill|decode|both, CPU
#                                a core for taskset -c, or "-" for none);
#                                sets ROUTER (client endpoint). Waits until every
#                                worker is registered (60 s).
#   bench_stop                   stops the current cluster (TERM, then KILL)
#
# Env: BIN, MODEL, LOGS (directory for logs). Every process started is
# recorded in BENCH_PIDS; the caller's EXIT trap must call bench_stop.

BENCH_PIDS=()
# One compute thread per worker (each is pinned to one core). Heartbeats at
# the defaults (500 ms, liveness 4): a worker beats from its own I/O thread,
# so a prefill pass takes up to prefill.max_batch_tokens (2048) whatever its
# length; colocated workers mix decode tokens with prefill chunks of
# prefill.chunk_tokens (BENCH_CHUNK, when set, overrides it for part 2's
# colocated cluster).
BENCH_SETS=(--set model.threads=1 --set router.max_queue=100000 --set router.max_inflight=4096)

bench_stop() {
    local p
    [ ${#BENCH_PIDS[@]} = 0 ] && return 0
    for p in "${BENCH_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for _ in $(seq 1 100); do
        local alive=0
        for p in "${BENCH_PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
        sleep 0.1
    done
    for p in "${BENCH_PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    for p in "${BENCH_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    BENCH_PIDS=()
}

bench_n_workers() {
    "$BIN/pd-cli" --router "$ROUTER" status --json 2>/dev/null | node -e '
        let s = ""; process.stdin.on("data", d => s += d).on("end", () => {
            try { console.log(JSON.parse(s).workers.length); } catch (e) { console.log(0); } });'
}

bench_start() { # NAME SPEC...
    local name=$1 spec role cpu bin i=0 pin
    shift
    bench_stop
    local dir=$LOGS/$name
    mkdir -p "$dir"
    rm -f "$dir/router.ready"
    "$BIN/pd-router" --model "$MODEL" "${BENCH_SETS[@]}" \
        --set router.client_endpoint=tcp://127.0.0.1:0 \
        --set router.worker_endpoint=tcp://127.0.0.1:0 \
        --ready-file "$dir/router.ready" --log-file "$dir/router.log" 2>"$dir/router.stderr" &
    BENCH_PIDS+=($!)
    for _ in $(seq 1 200); do
        [ -s "$dir/router.ready" ] && break
        sleep 0.05
    done
    ROUTER=$(grep '^client=' "$dir/router.ready" 2>/dev/null | cut -d= -f2-)
    local router_w
    router_w=$(grep '^worker=' "$dir/router.ready" 2>/dev/null | cut -d= -f2-)
    if [ -z "$ROUTER" ] || [ -z "$router_w" ]; then
        echo "bench: $name: the router did not start (logs in $dir)" >&2
        return 1
    fi
    for spec in "$@"; do
        role=${spec%%:*}
        cpu=${spec#*:}
        i=$((i + 1))
        bin=pd-decode
        [ "$role" = prefill ] && bin=pd-prefill
        pin=()
        [ "$cpu" != - ] && pin=(taskset -c "$cpu")
        "${pin[@]}" "$BIN/$bin" --role "$role" --id "$role-$i" --model "$MODEL" --router "$router_w" \
            "${BENCH_SETS[@]}" --log-file "$dir/$role-$i.log" 2>"$dir/$role-$i.stderr" &
        BENCH_PIDS+=($!)
    done
    for _ in $(seq 1 600); do
        [ "$(bench_n_workers)" = "$#" ] && return 0
        sleep 0.1
    done
    echo "bench: $name: $# workers did not register within 60 s (logs in $dir)" >&2
    return 1
}
