#!/bin/bash
# pdserve -- the container entrypoint (deploy/Dockerfile): one image, every role.
#
#   pdserve router|prefill|decode|both [FLAGS...]   a cluster process
#   pdserve cli|bench|plan|run|mkmodel [ARGS...]    pd-cli, pd-bench, pd-plan, pd-run, pd-mkmodel
#   pdserve keygen                                  pd-cli keygen (a CURVE key pair)
#   pdserve health                                  exit 0 when this container's process is alive
#   pdserve ready                                   exit 0 when it is alive and serving
#                                                   (a worker: registered, not draining)
#   pdserve drain                                   drain this container's worker and wait
#                                                   until it has left (Kubernetes preStop)
#
# A cluster process is started as (later items override earlier ones):
#   --config $PD_CONFIG          default /etc/pdserve/config.yaml (deploy/config.yaml)
#   --config FILE                for each file in $PD_CONFIG_EXTRA (space-separated), e.g.
#                                the CURVE keys mounted as a secret
#   --model /models/$PD_MODEL    when PD_MODEL is a bare file name; PD_MODEL=/path as is
#   --router $PD_WORKER_ROUTER   workers: the router's worker endpoint
#   --advertise $PD_ADVERTISE    decode/both: the KV address peers should use
#   --id $PD_ID                  workers; default the container's host name, with
#                                "-ROLE-XXXXXX" (random) added when PD_UNIQUE_ID=1 (host
#                                networking: every container has the host's name)
#   --log-level $PD_LOG_LEVEL
#   --set section.key=VALUE      for every PD_CFG_SECTION_KEY=VALUE variable: the section
#                                is the first word, the key the rest, lower-cased
#                                (PD_CFG_PREFILL_MAX_BATCH_TOKENS=4096 is
#                                --set prefill.max_batch_tokens=4096)
#   FLAGS...                     the command's own arguments
# Every value is checked by the process itself (docs/config.md); a bad one
# stops it with an error naming the key. Logs go to stderr (docker logs).
set -euo pipefail

HEALTH_FILE=${PD_HEALTH_FILE:-/tmp/pdserve.health}
HEALTH_MAX_AGE_S=${PD_HEALTH_MAX_AGE_S:-30}

die() {
    echo "pdserve: $*" >&2
    exit 2
}

# The process's health file: rewritten every heartbeat while its event loop
# runs (state=serving|registered|registering|draining).
health() { # want_ready
    [ -f "$HEALTH_FILE" ] || { echo "pdserve: no health file $HEALTH_FILE yet"; return 1; }
    local age=$(($(date +%s) - $(stat -c %Y "$HEALTH_FILE")))
    local state
    state=$(sed -n 's/^state=//p' "$HEALTH_FILE")
    if [ "$age" -gt "$HEALTH_MAX_AGE_S" ]; then
        echo "pdserve: health file not refreshed for ${age}s (state=$state): event loop stuck"
        return 1
    fi
    if [ "$1" = 1 ] && [ "$state" != serving ] && [ "$state" != registered ]; then
        echo "pdserve: not ready: state=$state"
        return 1
    fi
    echo "pdserve: state=$state age=${age}s"
}

# PID 1 is the process (exec below): SIGTERM makes a worker drain (finish what
# it holds, take nothing new, deregister, exit 0). Waits until it has gone.
drain_self() {
    kill -TERM 1 2>/dev/null || return 0
    while kill -0 1 2>/dev/null; do sleep 1; done
}

process() { # BIN ROLE ARGS...
    local bin=$1 role=$2
    shift 2
    local a=() cfg=${PD_CONFIG:-/etc/pdserve/config.yaml} f
    [ -f "$cfg" ] || die "config file $cfg not found (PD_CONFIG)"
    a+=(--config "$cfg")
    for f in ${PD_CONFIG_EXTRA:-}; do
        [ -f "$f" ] || die "config file $f not found (PD_CONFIG_EXTRA)"
        a+=(--config "$f")
    done
    if [ -n "${PD_MODEL:-}" ]; then
        case "$PD_MODEL" in
        /*) a+=(--model "$PD_MODEL") ;;
        */* | . | ..) die "PD_MODEL: a file name in /models or an absolute path, got '$PD_MODEL'" ;;
        *) a+=(--model "/models/$PD_MODEL") ;;
        esac
    fi
    [ -n "${PD_LOG_LEVEL:-}" ] && a+=(--log-level "$PD_LOG_LEVEL")
    if [ "$role" != router ]; then
        local id=${PD_ID:-$(hostname)}
        [ -z "${PD_ID:-}" ] && [ "${PD_UNIQUE_ID:-0}" = 1 ] &&
            id=$id-$role-$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
        a+=(--role "$role" --id "$id")
        [ -n "${PD_WORKER_ROUTER:-}" ] && a+=(--router "$PD_WORKER_ROUTER")
        [ "$role" != prefill ] && [ -n "${PD_ADVERTISE:-}" ] && a+=(--advertise "$PD_ADVERTISE")
    fi
    local v name key
    while IFS= read -r v; do
        name=${v%%=*}
        key=${name#PD_CFG_}
        [[ $key =~ ^[A-Z0-9]+_[A-Z0-9_]+$ ]] || die "$name: expected PD_CFG_SECTION_KEY"
        key=${key,,}
        a+=(--set "${key%%_*}.${key#*_}=${v#*=}")
    done < <(env | grep -E '^PD_CFG_[A-Za-z0-9_]*=' | sort)
    rm -f "$HEALTH_FILE"
    exec "/usr/local/bin/$bin" "${a[@]}" --health-file "$HEALTH_FILE" "$@"
}

cmd=${1:-router}
[ $# -gt 0 ] && shift
case "$cmd" in
router) process pd-router router "$@" ;;
prefill) process pd-prefill prefill "$@" ;;
decode) process pd-decode decode "$@" ;;
both) process pd-decode both "$@" ;;
cli) exec pd-cli "$@" ;;
bench) exec pd-bench "$@" ;;
plan) exec pd-plan "$@" ;;
run) exec pd-run "$@" ;;
mkmodel) exec pd-mkmodel "$@" ;;
keygen) exec pd-cli keygen ;;
health) health 0 ;;
ready) health 1 ;;
drain) drain_self ;;
-h | --help | help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' ;;
*) die "unknown command '$cmd' (router, prefill, decode, both, cli, bench, plan, run, mkmodel, keygen, health, ready, drain)" ;;
esac
