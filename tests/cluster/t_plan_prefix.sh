#!/bin/bash
# pd-plan's accuracy on a shared-prefix workload, gated: as
# t_plan_accuracy.sh (same cluster, rates, SLOs and bounds; the steps in
# plan_accuracy.sh), with every prompt the same 448 tokens + 32 of its own,
# which the prefill worker serves from its prefix cache after the first.
# The profile has its cached-prefix points (pd-bench measures a pass after a
# cached prefix); pd-plan is told the prefix (--prefix-len 448) and must be
# within the bounds; told nothing of it (every prompt computed whole), it
# must fail at least one check per rate. About 110 s here.
. "$(dirname "$0")/lib.sh"
require_model
for b in pd-bench pd-plan; do
    [ -x "$PD_BIN/$b" ] || skip_all "$PD_BIN/$b missing (make all)"
done
# shellcheck disable=SC2034 # read by plan_accuracy.sh
PREFIX_LEN=448
plan 13 # 2 + 2 per rate + 2, + the cached points, the second gate, the hits
# Timing: under a sanitizer the cluster runs at a speed unrelated to what
# its profile measured moments before (make asan/tsan allow the skip).
[ -n "$SANITIZER" ] && skip_all "pd-plan's accuracy is timing; the binaries carry $SANITIZER"
. "$(dirname "$0")/plan_accuracy.sh"
