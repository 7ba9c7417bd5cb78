#!/bin/bash
# model.resident (config.md): a worker with it on (the default) holds the
# weights in a private copy and does not map the file; one with it off maps
# the file; the router always maps it (it reads only the tokenizer and the
# metadata). Both workers serve token-identical to pd-run.
. "$(dirname "$0")/lib.sh"
require_model
plan 5
start_router
start_worker prefill p1
P1=$LAST_PID
start_worker decode d1 --set model.resident=false
D1=$LAST_PID
wait_workers 2
maps_file() { grep -qF -- "$(readlink -f "$MODEL")" "/proc/$1/maps"; }
check "the prefill worker (model.resident: true, the default) does not map the model file" \
    eval '! maps_file $P1'
check "the decode worker (model.resident: false) maps the model file" maps_file "$D1"
check "the router maps the model file (no private copy of the weights)" maps_file "$ROUTER_PID"
N=4
workload $N
refs $N "$T"
send_all $N "$T"
check_streams "$T" $N "resident prefill, mapped decode"
