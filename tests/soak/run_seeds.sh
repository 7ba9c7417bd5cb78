#!/bin/bash
# run_seeds.sh -- the long soak (make soak): tests/soak/soak.sh once per
# seed, one summary line per seed, a total at the end. Histories go to
# $BUILD/soak/seed-N/ (the client's event log of a clean seed is deleted
# unless SOAK_KEEP=1; a failing seed keeps everything, logs included).
#
#   tests/soak/run_seeds.sh SECONDS SEED...
# Exit status: 0 when every seed had zero violations.
set -u
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build}
SECS=${1:?seconds}
shift
bad=0
for seed in "$@"; do
    out=$BUILD/soak/seed-$seed
    rm -rf "$out"
    mkdir -p "$out"
    t0=$SECONDS
    BUILD=$BUILD bash tests/soak/soak.sh --seed "$seed" --seconds "$SECS" --out "$out" >"$out/run.txt" 2>&1
    rc=$?
    sum=$(grep '^# summary ' "$out/run.txt" | tail -1 | cut -c11-)
    printf 'seed %-3s rc=%d %4ds %s\n' "$seed" "$rc" $((SECONDS - t0)) "${sum:-no summary (see $out/run.txt)}"
    if [ $rc != 0 ]; then
        bad=$((bad + 1))
        grep -E '^(VIOLATION|not ok)' "$out/run.txt" | head -10 | sed 's/^/    /'
    elif [ -z "${SOAK_KEEP:-}" ]; then
        rm -f "$out/client.jsonl"
    fi
done
echo "soak: $# seeds x ${SECS}s, $bad with violations"
[ $bad = 0 ]
