#!/bin/bash
# scripts/run.sh -- a local pdserve cluster in the background (make run / make stop).
#
#   scripts/run.sh start   deps + build + default model, then a router and its
#                          workers on loopback, waits until they are registered,
#                          sends one demo request and returns
#   scripts/run.sh stop    stops what start started (by the pids it recorded)
#                          and waits until they are gone
#   scripts/run.sh status  pd-cli status
#
# Env (or make variables: make run MODEL=... PREFILL=2 DECODE=3):
#   MODEL      model file (default $BUILD/models/llama-110M-f32.gguf, made by
#              scripts/models.sh default when missing)
#   PREFILL    prefill workers (default 1)
#   DECODE     decode workers (default 1)
#   COLOCATED  colocated workers (--role both); when > 0, PREFILL and DECODE
#              are ignored
#   CONFIG     config file (default configs/local.yaml, when present)
#   BUILD      build directory (default build); RUN_DIR (default run)
# Logs: $RUN_DIR/router.log, $RUN_DIR/<worker>.log. Pids: $RUN_DIR/pids.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
BIN=$BUILD/bin
RUN=${RUN_DIR:-run}
PREFILL=${PREFILL:-1}
DECODE=${DECODE:-1}
COLOCATED=${COLOCATED:-0}
CONFIG=${CONFIG:-configs/local.yaml}
READY_TIMEOUT_S=${READY_TIMEOUT_S:-120}

alive_pids() {
    [ -s "$RUN/pids" ] || return 0
    local pid name
    while read -r pid name; do
        # A zombie (exited, not yet reaped by whoever adopted it) is gone.
        case "$(ps -o stat= -p "$pid" 2>/dev/null)" in
        "" | Z*) ;;
        *) echo "$pid $name" ;;
        esac
    done <"$RUN/pids"
}

n_registered() {
    "$BIN/pd-cli" status 2>/dev/null | awk 'NR > 2 && $1 != "(no" { n++ } END { print n + 0 }'
}

start() {
    if [ -n "$(alive_pids)" ]; then
        echo "run: a cluster is already running (pids in $RUN/pids); 'make stop' first" >&2
        exit 1
    fi
    scripts/deps.sh
    make -s BUILD="$BUILD" all
    if [ -z "${MODEL:-}" ]; then
        MODEL=$BUILD/models/llama-110M-f32.gguf
        if [ ! -s "$MODEL" ]; then
            echo "run: making the default model $MODEL"
            BUILD=$BUILD scripts/models.sh default
        fi
    fi
    if [ ! -s "$MODEL" ]; then
        echo "run: model file $MODEL not found" >&2
        exit 1
    fi
    local cfg=()
    [ -f "$CONFIG" ] && cfg=(--config "$CONFIG")
    mkdir -p "$RUN"
    : >"$RUN/pids"
    local t0 n_workers=0
    t0=$(date +%s%N)
    # setsid: the processes outlive this script and the make that ran it.
    setsid "$BIN/pd-router" "${cfg[@]}" --model "$MODEL" --log-file "$RUN/router.log" \
        </dev/null >/dev/null 2>&1 &
    echo "$! router" >>"$RUN/pids"
    spawn() { # BIN ROLE ID
        setsid "$BIN/$1" "${cfg[@]}" --model "$MODEL" --role "$2" --id "$3" \
            --log-file "$RUN/$3.log" </dev/null >/dev/null 2>&1 &
        echo "$! $3" >>"$RUN/pids"
        n_workers=$((n_workers + 1))
    }
    local i
    if [ "$COLOCATED" -gt 0 ]; then
        for ((i = 1; i <= COLOCATED; i++)); do spawn pd-decode both "colocated-$i"; done
    else
        for ((i = 1; i <= PREFILL; i++)); do spawn pd-prefill prefill "prefill-$i"; done
        for ((i = 1; i <= DECODE; i++)); do spawn pd-decode decode "decode-$i"; done
    fi
    local deadline=$((SECONDS + READY_TIMEOUT_S))
    while [ "$(n_registered)" -lt "$n_workers" ]; do
        if [ $SECONDS -ge $deadline ] || [ "$(alive_pids | wc -l)" -lt $((n_workers + 1)) ]; then
            echo "run: the cluster did not come up; logs in $RUN/:" >&2
            tail -n 5 "$RUN"/*.log >&2 || true
            stop
            exit 1
        fi
        sleep 0.05
    done
    local ms=$((($(date +%s%N) - t0) / 1000000))
    echo "run: router + $n_workers workers ready in ${ms} ms (model $MODEL)"
    "$BIN/pd-cli" status
    echo
    echo "run: demo request: pd-cli generate \"Once upon a time\" -n 32"
    "$BIN/pd-cli" generate "Once upon a time" -n 32 || true
    cat <<EOF

The cluster runs in the background (router on tcp://127.0.0.1:5555).
  send more:   $BIN/pd-cli generate "Your prompt" -n 64 [--temp 0.8 --top-p 0.9 --seed 1]
  streams:     $BIN/pd-cli generate "Your prompt" --json
  status:      $BIN/pd-cli status
  logs:        $RUN/*.log
  stop:        make stop
EOF
    # The OpenAI-compatible HTTP front (http.listen in the config; docs/api.md).
    local http
    http=$(awk '/^http:/ { s = 1; next } /^[^ #]/ { s = 0 }
                s && $1 == "listen:" { gsub(/["\047]/, "", $2); print $2; exit }' "$CONFIG" 2>/dev/null || true)
    if [ -n "$http" ]; then
        cat <<EOF
  OpenAI API:  http://$http/v1  (docs/api.md; also /health and /metrics)
    curl -s http://$http/v1/completions -H 'Content-Type: application/json' \\
      -d '{"prompt": "Once upon a time", "max_tokens": 32}'
    curl -sN http://$http/v1/completions -H 'Content-Type: application/json' \\
      -d '{"prompt": "Once upon a time", "max_tokens": 32, "stream": true}'
EOF
    fi
}

stop() {
    if [ ! -s "$RUN/pids" ]; then
        echo "run: nothing to stop ($RUN/pids is empty)"
        return 0
    fi
    local pid name
    # Workers first (they drain and deregister), then the router.
    while read -r pid name; do
        [ "$name" = router ] || kill -TERM "$pid" 2>/dev/null || true
    done <"$RUN/pids"
    for _ in $(seq 1 400); do
        [ "$(alive_pids | grep -vc ' router$' || true)" = 0 ] && break
        sleep 0.1
    done
    while read -r pid name; do kill -TERM "$pid" 2>/dev/null || true; done <"$RUN/pids"
    for _ in $(seq 1 100); do
        [ -z "$(alive_pids)" ] && break
        sleep 0.1
    done
    alive_pids | while read -r pid name; do
        echo "run: $name ($pid) did not stop; killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
    done
    : >"$RUN/pids"
    echo "run: stopped"
}

case "${1:-}" in
start) start ;;
stop) stop ;;
status) "$BIN/pd-cli" status ;;
*)
    echo "usage: scripts/run.sh start|stop|status" >&2
    exit 2
    ;;
esac
