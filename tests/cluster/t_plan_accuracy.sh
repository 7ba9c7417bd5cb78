#!/bin/bash
# pd-plan's accuracy, gated (the steps: plan_accuracy.sh, shared with
# t_plan_prefix.sh): a measured run against pd-plan's prediction from
# the same cluster's profile (the long form is part 3 of `make bench`, on
# llama-110M; docs/benchmarks.md). One router, one prefill and one decode
# worker on the tiny model; pd-bench --profile measures the costs; three
# request rates below the knee (5, 10, 20 req/s of 64-token prompts and
# 32-token answers), each measured twice with the same seed (the same
# requests at the same moments); pd-plan simulates each rate replaying
# those arrival times (--arrivals). SLOs as in `make bench`: TTFT 3x and
# TPOT 2x the unloaded medians measured first.
#
# The bounds, and why (measured on the shared 2-core machine, load average
# 12-16 from other jobs, 2026-12-06):
# - goodput, in the SLO-meeting regime: within 15 % of the less disturbed
#   of the two runs (the one with the higher attainment). In calm runs the
#   error was 3-16 % (docs/benchmarks.md reports the same 15 % on
#   llama-110M). Other jobs' bursts only ever slow a run, and one of two
#   runs 6 s apart was disturbed in about one rate in three (attainment
#   0.55-0.87 where the other had 0.92-0.97, goodput off by 40-130 %): the
#   second run is the noise allowance. A rate where neither run meets the
#   SLOs (attainment < 0.9) is outside this check's regime: there the
#   measurement is only a lower bound, and the prediction must not fall
#   below it by more than 15 %; at most one of the three rates may be
#   outside (more: the machine was too loaded to measure, a failure).
# - mean TTFT and mean TPOT, the lower of the two runs (load only adds to
#   them): within a factor of 2.5 of pd-plan's (outside the regime, where
#   both runs were disturbed, only an upper bound: pd-plan's must not be
#   above it by more than 2.5x).
#   Calm runs: TTFT predicted 14-44 % low (the profile's overhead term
#   misses some router and client time), TPOT 9-26 % low. Goodput below the
#   knee cannot see an optimistic model; these catch a cost model or a
#   simulation grossly off (a term dropped, a unit wrong).
# The gate is shown to fail: pd-plan fed the same profile with every cost
# 4x must fail at least one check per rate.
# About 80 s here (two profiles of 16 s, six runs of 6 s).
. "$(dirname "$0")/lib.sh"
require_model
for b in pd-bench pd-plan; do
    [ -x "$PD_BIN/$b" ] || skip_all "$PD_BIN/$b missing (make all)"
done
# shellcheck disable=SC2034 # read by plan_accuracy.sh
PREFIX_LEN=0
plan 10 # 2 + 2 per rate + 2: see plan_accuracy.sh
# Timing: under a sanitizer the cluster runs at a speed unrelated to what
# its profile measured moments before (make asan/tsan allow the skip).
[ -n "$SANITIZER" ] && skip_all "pd-plan's accuracy is timing; the binaries carry $SANITIZER"
. "$(dirname "$0")/plan_accuracy.sh"
