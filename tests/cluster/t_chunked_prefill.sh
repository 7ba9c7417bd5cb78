#!/bin/bash
# Chunked prefill in a colocated worker (issue 16, SARATHI-style): while
# streams decode, long prompts are prefilled in chunks that share each
# forward pass with the running decode tokens, every such pass within
# prefill.chunk_tokens rows (or the decode batch + a quarter of it); and
# every stream -- decoding beside the chunks, or prefilled in them -- is
# token-identical to pd-run (batch invariance). One worker, so that the
# long prompts must meet the running streams.
. "$(dirname "$0")/lib.sh"
require_model
plan 6
BUDGET=24
start_router
start_worker both c1 --set prefill.chunk_tokens=$BUDGET --set log.level=debug
wait_workers 1
N=12
PROMPTS=()
ARGS=()
LONG=$(for i in $(seq 1 60); do printf 'silver window thunder paper '; done)
for ((i = 0; i < N; i++)); do
    if ((i < 4)); then # streams that decode while the long prompts come
        PROMPTS[i]="${WORDS[*]:i:5}"
        ARGS[i]="-n 800 --ignore-eos"
    else # long prompts (~480 tokens), short answers
        PROMPTS[i]="${WORDS[i]} $LONG ${WORDS[i + 1]}"
        ARGS[i]="-n 8 --ignore-eos"
    fi
    ((i % 2)) && ARGS[i]+=" --temp 0.8 --top-p 0.9 --seed $((i + 11))"
done
refs $N "$T"
pids=()
for ((i = 0; i < N; i++)); do
    # shellcheck disable=SC2086
    timeout 120 "$PD_BIN/pd-cli" --router "$ROUTER" generate "${PROMPTS[i]}" ${ARGS[i]} \
        --json >"$T/out_$i.jsonl" 2>"$T/out_$i.err" &
    pids+=($!)
    # the long prompts come once the streams are decoding
    if ((i == 3)); then
        for _ in $(seq 1 100); do grep -q '"index":20,' "$T"/out_0.jsonl 2>/dev/null && break; sleep 0.02; done
    fi
done
for p in "${pids[@]}"; do wait "$p"; done
check_streams "$T" $N "long prompts meet running streams, chunked"
checker "mixed passes" node -e '
const budget = Number(process.argv[2]);
const lines = require("fs").readFileSync(process.argv[1], "utf8").split("\n");
let mixed = 0, over = [], rowsPre = 0;
for (const l of lines) {
    const m = /event=mixed_step decode_rows=(\d+) prefill_rows=(\d+) budget=(\d+)/.exec(l);
    if (!m) continue;
    const d = +m[1], p = +m[2];
    if (d > 0 && p > 0) mixed++;
    rowsPre += p;
    if (d + p > Math.max(budget, d + Math.floor(budget / 4))) over.push(`${d}+${p}`);
}
const ok = (c, name, why) => console.log(`${c ? "ok" : "not ok"} - ${name}${c ? "" : " # " + why}`);
ok(mixed >= 20, `prompts went in chunks beside the decode tokens (${mixed} mixed passes, ${rowsPre} prompt tokens in them)`, `${mixed}`);
ok(over.length === 0, `every mixed pass within its budget of ${budget} rows`, over.slice(0, 5).join(" "));
' "$T/c1.log" $BUDGET
check "the worker counts its mixed steps" \
    test "$(status_field 's.workers[0].counters.mixed_steps > 0')" = true
check "no leaks" wait_status 's.workers.every(w => w.free_blocks == w.total_blocks) && s.active_requests == 0'
