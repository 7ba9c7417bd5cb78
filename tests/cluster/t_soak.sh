#!/bin/bash
# The short soak: 70 s of mixed load (greedy and seeded top-p, some
# --ignore-eos, client cancels) while the nemesis kills -9, pauses past the
# liveness window and drains workers and kills -9 and restarts the router
# (at least one of each, seed 7), every fault aimed at work in flight;
# tests/soak/check.mjs then checks P1-P4, that the load was real and that
# every fault hit work in flight (7 results), over every client-visible
# event. The long run is `make soak`. The exit status is the verdict.
. "$(dirname "$0")/lib.sh"
require_model
[ -x "$BUILD/tests/soak_load" ] || skip_all "$BUILD/tests/soak_load missing (make all)"
plan 8
OUT=$(mktemp -d /tmp/pdsoak.XXXXXX)
# soak.sh prints the checker's 7 results (and a not ok if it cannot start).
bash tests/soak/soak.sh --seed 7 --seconds 70 --out "$OUT" --tap
rc=$?
kinds=$(grep '"ev":"fault"' "$OUT/nemesis.jsonl" 2>/dev/null | grep -o '"kind":"[a-z_]*"' | sort -u | wc -l)
check "every fault kind injected ($kinds of 4)" test "$kinds" -ge 4
[ $rc = 0 ] || FAILED=1
if [ $rc = 0 ] && [ "$FAILED" = 0 ] && [ -z "${KEEP:-}" ]; then rm -rf "$OUT"; else echo "# history kept in $OUT"; fi
exit $FAILED
