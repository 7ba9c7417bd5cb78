#!/bin/bash
# The prefill worker's first token never reaches the router (test hook
# PD_TEST_LOSE_FIRST_TOKEN: as if it stalled or died between shipping the KV
# and streaming the token). The decode worker echoes that token with its
# first step, so every stream is still whole and token-identical to pd-run;
# before the echo, the router stashed 16 early tokens and then failed the
# request with "token index 17 but 0 expected (gap)".
. "$(dirname "$0")/lib.sh"
require_model
plan 4
start_router
PD_TEST_LOSE_FIRST_TOKEN=1 start_worker prefill p1
start_worker decode d1
wait_workers 2
N=8
workload $N
refs $N "$T"
send_all $N "$T"
check_streams "$T" $N "with the prefill worker's first tokens lost"
lost=$(grep -c 'event=test_first_token_lost' "$T/p1.log")
check "the hook dropped first tokens (lost $lost)" test "$lost" -ge 1
check "no request failed with a gap" bash -c "! grep -q 'gap' $T/router.log $T/out_*.err"
