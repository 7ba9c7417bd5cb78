#!/bin/bash
# The advertised KV address (decode.kv_advertise, common/addr.h): a decode
# worker that binds a wildcard announces an address its peers can reach,
# never 0.0.0.0: by default the source address of its route to the router
# (127.0.0.1 here), or the host given with --advertise. Prefill workers ship
# KV to what was announced, so the streams are token-identical to pd-run.
# A bad advertise value stops the worker at start with the key named.
. "$(dirname "$0")/lib.sh"
require_model
plan 8
start_router
start_worker prefill p1
start_worker decode d1 --set decode.kv_endpoint=tcp://0.0.0.0:0
start_worker decode d2 --set decode.kv_endpoint=tcp://0.0.0.0:0 --advertise localhost
wait_workers 3
ep() { status_field "s.workers.find(w => w.id == '$1').kv_endpoint"; }
E1=$(ep d1)
E2=$(ep d2)
check "a wildcard bind is announced as the address facing the router ($E1)" \
    bash -c "[[ '$E1' =~ ^tcp://127\.0\.0\.1:[0-9]+$ ]]"
check "--advertise HOST replaces the host, keeps the bound port ($E2)" \
    bash -c "[[ '$E2' =~ ^tcp://localhost:[0-9]+$ ]]"
check "the worker logs what it bound and what it announces" \
    grep -q "event=kv_advertise bound=tcp://0.0.0.0:[0-9]* kv=$E1 from=route" "$T/d1.log"
N=8
workload $N
refs $N "$T"
send_all $N "$T"
check_streams "$T" $N "KV shipped to advertised addresses"
check "both decode workers received KV" \
    wait_status 's.workers.filter(w => w.role == "decode" && w.counters.kv_recv_bytes > 0).length == 2'

out=$("$PD_BIN/pd-decode" --model "$MODEL" --router "$ROUTER_W" --advertise 0.0.0.0 2>&1)
rc=$?
check "--advertise 0.0.0.0 is refused at start, naming the key" \
    bash -c "[ $rc = 2 ] && echo \"\$1\" | grep -q 'decode.kv_advertise: a wildcard address cannot be reached'" _ "$out"
out=$("$PD_BIN/pd-decode" --model "$MODEL" --router "$ROUTER_W" --advertise 'evil;rm -rf' 2>&1)
rc=$?
check "--advertise with hostile bytes is refused at start" \
    bash -c "[ $rc = 2 ] && echo \"\$1\" | grep -q 'decode.kv_advertise: a host has only letters'" _ "$out"
