#!/bin/bash
# The short soak: 70 s of mixed load (greedy and seeded top-p, some
# --ignore-eos, client cancels) while the nemesis kills -9, pauses past the
# liveness window and drains workers and kills -9 and restarts the router
# (at least one of each, seed 7); tests/soak/check.mjs then checks P1-P4
# over every client-visible event. The long run is `make soak`.
cd "$(dirname "$0")/../.."
OUT=$(mktemp -d /tmp/pdsoak.XXXXXX)
bash tests/soak/soak.sh --seed 7 --seconds 70 --out "$OUT" --tap
rc=$?
kinds=$(grep -o '"kind":"[a-z_]*"' "$OUT/nemesis.jsonl" 2>/dev/null | sort -u | wc -l)
if [ "$kinds" -ge 4 ]; then echo "ok - every fault kind injected"; else echo "not ok - every fault kind injected # $kinds kinds"; fi
if [ $rc = 0 ] && [ -z "${KEEP:-}" ]; then rm -rf "$OUT"; else echo "# history kept in $OUT"; fi
exit 0
