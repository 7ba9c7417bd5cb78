#!/bin/bash
# A prefill worker's death drops its entries from the router's prefix index
# (router/prefix.c, docs/protocol.md "Prefix cache"). 1 router (kv_aware,
# /metrics on) + 2 prefill + 1 decode; four prompts with four different
# ~180-token prefixes, one after another: kv_aware spreads them over both
# prefill workers, each caching its own, and the index holds both's blocks.
# Then p6 is killed with SIGKILL (no goodbye: the router notices the missed
# heartbeats and removes it):
#  - the router's index (status prefix_index_hashes, /metrics
#    pdserve:prefix_index_hashes) falls to exactly the live worker's entries;
#  - the four prompts again all go to the live worker (routed onto a cache
#    only for the prefixes it holds itself) and answer token-identically to
#    pd-run (which computes every prompt from scratch);
#  - the index then holds exactly what the live worker caches, the dead
#    worker's prefixes included, now computed there.
. "$(dirname "$0")/lib.sh"
require_model
command -v curl >/dev/null || skip_all "curl missing"
plan 10

# PROMPTS[i], i < 4: two words of their own + a ~180-token prefix shared by
# nothing else + 6 words (as t_prefix.sh D); ARGS[i]: 24 tokens, odd i
# seeded top-p sampling.
PREFIX=""
for ((k = 0; k < 90; k++)); do PREFIX+="${WORDS[$(((k * 7 + k / 3) % ${#WORDS[@]}))]} "; done
PROMPTS=()
ARGS=()
for ((i = 0; i < 4; i++)); do
    s=""
    for ((k = 0; k < 6; k++)); do s+=" ${WORDS[$(((i * 5 + k * 11) % ${#WORDS[@]}))]}"; done
    PROMPTS[i]="${WORDS[$((i * 5 + 2))]} ${WORDS[$((i * 5 + 3))]} $PREFIX${s# }"
    ARGS[i]="-n 24 --ignore-eos"
    if ((i % 2)); then ARGS[i]+=" --temp 0.9 --top-p 0.95 --seed $((77 + i))"; fi
done
N=4

send_seq() { # DIR: the four requests one after another
    local i
    for ((i = 0; i < N; i++)); do
        # shellcheck disable=SC2086
        timeout 60 "$PD_BIN/pd-cli" --router "$ROUTER" generate "${PROMPTS[i]}" ${ARGS[i]} \
            --json >"$1/out_$i.jsonl" 2>"$1/out_$i.err"
    done
}
metric_hashes() { # the router's /metrics pdserve:prefix_index_hashes
    curl -s "http://$HTTP/metrics" | awk '/^pdserve:prefix_index_hashes\{/ { print $2 }'
}
W5='s.workers.find(w => w.id == "p5")'

start_router --set router.routing=kv_aware --set http.listen=127.0.0.1:0
HTTP=$(grep '^http=' "$T/router.ready" | cut -d= -f2-)
start_worker prefill p5
start_worker prefill p6
P6=$LAST_PID
start_worker decode d5
wait_workers 3

mkdir -p "$T/one" "$T/two"
refs $N "$T/one"
refs $N "$T/two"
send_seq "$T/one"
check_streams "$T/one" $N "4 prefixes over 2 prefill workers"
# Counters come with heartbeats, KvEvents right after each pass: wait for both.
check "both prefill workers cache prefixes; the index holds exactly their blocks" \
    wait_status 'const p = s.workers.filter(w => w.role == "prefill");
        p.length == 2 && p.every(w => w.prefix_index_blocks > 0 &&
            w.prefix_index_blocks == w.counters.prefix_cached_blocks) &&
        s.prefix_index_hashes == p[0].prefix_index_blocks + p[1].prefix_index_blocks'
H0=$(status_field 's.prefix_index_hashes')
V=$(status_field 's.workers.find(w => w.id == "p6").prefix_index_blocks')
K5=$(status_field "$W5.counters.prefix_requests")      # first-round prompts p5 prefilled
R5=$(status_field "$W5.routed_cached_requests")

kill -KILL "$P6"
{ wait "$P6"; } 2>/dev/null # reaped here, quietly (SIGKILL is the point)
check "p6 killed (SIGKILL) is removed by the router" \
    eval 'wait_status "!s.workers.some(w => w.id == \"p6\")" 15 &&
          grep -q "event=worker_removed worker=p6 " "$T/router.log"'
H1=$(status_field 's.prefix_index_hashes')
check "the index dropped p6's $V entries: it holds p5's alone ($H0 -> $H1)" \
    test "$(status_field "s.prefix_index_hashes == $W5.prefix_index_blocks && $H0 - s.prefix_index_hashes == $V")" = true
check "/metrics pdserve:prefix_index_hashes says the same: p5's alone ($H1)" \
    eval 'test "$(metric_hashes)" = "$H1" -a "$H1" = "$(status_field "$W5.prefix_index_blocks")"'

send_seq "$T/two"
check_streams "$T/two" $N "the 4 prompts again, p6 dead"
check "all 4 went to p5, routed onto a cache only for its own $K5 prefixes" \
    wait_status "$W5.counters.prefix_requests == $K5 + $N && $W5.routed_cached_requests == $R5 + $K5"
check "the index then holds exactly p5's cached blocks, p6's prefixes included (> $H1)" \
    wait_status "s.prefix_index_hashes == $W5.prefix_index_blocks &&
        $W5.prefix_index_blocks == $W5.counters.prefix_cached_blocks && s.prefix_index_hashes > $H1"
