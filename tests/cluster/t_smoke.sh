#!/bin/bash
# Smoke: 1 router + 1 prefill + 1 decode worker, 8 concurrent requests;
# every stream is whole and token-identical to pd-run on the same request.
. "$(dirname "$0")/lib.sh"
require_model
plan 4
start_router
start_worker prefill p1
start_worker decode d1
wait_workers 2
ok "cluster registers (router + prefill + decode)"
N=8
workload $N
refs $N "$T"
send_all $N "$T"
check_streams "$T" $N "smoke 1P+1D"
check "router holds no request state afterwards" \
    test "$(status_field 's.active_requests + s.queued_requests')" = 0
