#!/bin/bash
# Prefix caching end to end (docs/protocol.md "Prefix cache"):
#  A. 1 router + 1 prefill + 1 decode: prompts sharing a long prefix, one
#     after another (greedy and seeded sampling), then one prompt again
#     whole: every stream token-identical to pd-run (which computes every
#     prompt from scratch), the prefill worker's cache served the shared
#     blocks, and the router routed onto the cache it knew of. The worker
#     drops every 3rd KvEvents message (PD_TEST_DROP_KV_EVENTS): the router
#     sees the gaps, asks for snapshots, and its index ends equal to what
#     the worker caches.
#  B. 1 colocated worker with a pool too small for the prompts' prefixes:
#     cached blocks are evicted under pressure, and hits and misses alike
#     answer token-identically to pd-run.
#  C. kv.prefix_caching=false: the same prompts, no cache announced, no hits.
#  D. 2 prefill + 1 decode, router.routing kv_aware: 4 prompts with 4
#     different prefixes, then each again twice: every repeat goes to the
#     prefill worker that caches its prefix.
#  E. A prefix evicted between routing and prefill: prompt A is cached on a
#     prefill worker with 40 blocks; then a 600-token prompt X and A again
#     arrive together (prefill.wait_ms=2000 holds them for one batch, so a
#     slow pd-cli start under load still lands A inside it): the router
#     routes A onto its cache, X's blocks evict most of it before A's turn,
#     and A is computed again, token-identical.
. "$(dirname "$0")/lib.sh"
require_model
plan 25

# prefix_prompts N OFFSET: PROMPTS[i] = a ~180-token prefix + 6 words of its
# own (i + OFFSET picks them), ARGS[i]: 24 tokens, even i greedy, odd i
# seeded top-p sampling (a logit that differs by one bit can change a draw).
PREFIX=""
for ((k = 0; k < 90; k++)); do PREFIX+="${WORDS[$(((k * 7 + k / 3) % ${#WORDS[@]}))]} "; done
prefix_prompts() {
    local n=$1 off=$2 i k s
    PROMPTS=()
    ARGS=()
    for ((i = 0; i < n; i++)); do
        s=""
        for ((k = 0; k < 6; k++)); do s+=" ${WORDS[$((((i + off) * 5 + k * 11) % ${#WORDS[@]}))]}"; done
        PROMPTS[i]="$PREFIX${s# }"
        ARGS[i]="-n 24 --ignore-eos"
        if ((i % 2)); then ARGS[i]+=" --temp 0.9 --top-p 0.95 --seed $((77 + i))"; fi
    done
}

# send_seq N DIR: the workload's requests one after another (so each finds
# the blocks the ones before it left).
send_seq() {
    local n=$1 dir=$2 i
    for ((i = 0; i < n; i++)); do
        # shellcheck disable=SC2086
        timeout 60 "$PD_BIN/pd-cli" --router "$ROUTER" generate "${PROMPTS[i]}" ${ARGS[i]} \
            --json >"$dir/out_$i.jsonl" 2>"$dir/out_$i.err"
    done
}

stop_cluster() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    PIDS=()
}

# ---- A: disaggregated, events with gaps ----
A=$T/a
mkdir -p "$A"
start_router
PD_TEST_DROP_KV_EVENTS=3 start_worker prefill p1
start_worker decode d1
wait_workers 2
check "the prefill worker announces prefix caching, the decode worker not" \
    test "$(status_field 's.workers.map(w => w.id + "=" + w.prefix_caching).sort().join(",")')" = "d1=false,p1=true"
N=7
prefix_prompts $N 0
PROMPTS[6]=${PROMPTS[0]}
ARGS[6]=${ARGS[0]}
refs $N "$A"
send_seq $N "$A"
check_streams "$A" $N "shared prefix, disaggregated"
# The prefix is ~180 tokens: 11 full blocks of 16. Requests 1..6 find them
# (request 6, request 0 again, finds all its full blocks but the last token's).
check "the prefill worker served >= 6 x 160 prompt tokens from its cache" \
    wait_status 's.workers.some(w => w.id == "p1" && w.counters.prefix_hits >= 960)'
check "hit tokens are fewer than those looked up" \
    test "$(status_field 's.workers.filter(w => w.id == "p1").every(w => w.counters.prefix_hits < w.counters.prefix_queries && w.counters.prefix_requests == 7)')" = true
check "the router routed >= 5 requests onto the cache its index knew of" \
    test "$(status_field 's.workers.find(w => w.id == "p1").routed_cached_requests >= 5')" = true
check "KvEvents were lost (test hook) and the router asked for snapshots again" \
    test "$(grep -c 'event=test_kv_events_dropped' "$T/p1.log")" -ge 1 -a \
         "$(status_field 's.workers.find(w => w.id == "p1").kv_resyncs')" -ge 2
check "after the resyncs the router's index holds exactly the worker's cached blocks" \
    wait_status 's.workers.some(w => w.id == "p1" && w.counters.prefix_cached_blocks > 0 && w.prefix_index_blocks == w.counters.prefix_cached_blocks)'
check "pd-cli status prints the prefix cache line of p1" \
    grep -q "p1 *prefix cache: hits" <(cli status)
check "no leaks: every block free or evictable again" \
    wait_status 's.workers.every(w => w.free_blocks == w.total_blocks)'
stop_cluster

# ---- B: colocated, eviction under pressure ----
B=$T/b
mkdir -p "$B"
start_router --set http.listen=127.0.0.1:0
HTTP=$(grep '^http=' "$T/router.ready" | cut -d= -f2-)
# 40 blocks: two prompts' worth (~13 blocks each) plus room to decode;
# 8 different prefixes, each prompt sent twice in a row (the second finds
# the first's blocks), so the older prefixes must be evicted.
start_worker both c1 --set kv.num_blocks=40
wait_workers 1
N=16
prefix_prompts 8 0
for ((i = 7; i >= 0; i--)); do
    PROMPTS[2 * i]="${WORDS[$((i * 3))]} ${WORDS[$((i * 3 + 1))]} ${PROMPTS[i]}"
    PROMPTS[2 * i + 1]=${PROMPTS[2 * i]}
    ARGS[2 * i]=${ARGS[i]}
    ARGS[2 * i + 1]=${ARGS[i]}
done
refs $N "$B"
send_seq $N "$B"
check_streams "$B" $N "prefixes evicted under pressure, colocated"
check "the colocated worker evicted cached blocks" \
    wait_status 's.workers.some(w => w.counters.prefix_evictions > 0)'
check "...and served each repeated prompt's prefix from its cache (8 x 11 blocks)" \
    wait_status 's.workers.some(w => w.counters.prefix_hits >= 8 * 176)'
hits=$(status_field 's.workers[0].counters.prefix_hits')
ev=$(status_field 's.workers[0].counters.prefix_evictions')
curl -s "http://$HTTP/metrics" >"$T/metrics.txt"
metric_is() { # NAME VALUE: c1's series NAME has VALUE in $T/metrics.txt
    grep -q "^pdserve:$1{model_name=\"[^\"]*\",worker=\"c1\"} $2\$" "$T/metrics.txt"
}
check "/metrics: prefix_cache_hits_total and _evictions_total of c1 as in status ($hits, $ev)" \
    eval 'metric_is prefix_cache_hits_total "$hits" && metric_is prefix_cache_evictions_total "$ev"'
stop_cluster

# ---- C: off ----
C=$T/c
mkdir -p "$C"
start_router
start_worker both c2 --set kv.prefix_caching=false
wait_workers 1
N=3
prefix_prompts $N 0
refs $N "$C"
send_seq $N "$C"
check_streams "$C" $N "prefix caching off"
check "off: not announced, nothing looked up, nothing routed onto a cache" \
    test "$(status_field 's.workers.every(w => !w.prefix_caching && w.counters.prefix_queries == 0 && w.routed_cached_requests == 0)')" = true
stop_cluster

# ---- D: KV-aware routing across two prefill workers ----
D=$T/d
mkdir -p "$D"
start_router --set router.routing=kv_aware
start_worker prefill p2
start_worker prefill p3
start_worker decode d2
wait_workers 3
N=12
prefix_prompts 4 0
for ((i = 0; i < 4; i++)); do
    PROMPTS[i]="${WORDS[$((i * 5 + 2))]} ${WORDS[$((i * 5 + 3))]} ${PROMPTS[i]}"
done
for ((i = 4; i < N; i++)); do
    PROMPTS[i]=${PROMPTS[i % 4]}
    ARGS[i]=${ARGS[i % 4]}
done
refs $N "$D"
send_seq $N "$D"
check_streams "$D" $N "4 prefixes over 2 prefill workers"
check "kv_aware: all 8 repeats routed onto the worker caching their prefix" \
    test "$(status_field 's.workers.reduce((a, w) => a + w.routed_cached_requests, 0)')" = 8
# Counters come with heartbeats: a beat or two late (more under load).
check "kv_aware: the 4 prefixes are spread over both prefill workers, each serving hits" \
    wait_status 's.workers.filter(w => w.role == "prefill" && w.counters.prefix_hits > 0).length == 2'
stop_cluster

# ---- E: evicted between routing and prefill ----
E=$T/e
mkdir -p "$E"
start_router
start_worker prefill p4 --set kv.num_blocks=40 --set prefill.wait_ms=2000
start_worker decode d4
wait_workers 2
prefix_prompts 1 3
X=""
for ((k = 0; k < 290; k++)); do X+="${WORDS[$(((k * 13 + k / 7) % ${#WORDS[@]}))]} "; done
PROMPTS[1]="${X% }"
ARGS[1]="-n 1 --ignore-eos"
PROMPTS[2]=${PROMPTS[0]}
ARGS[2]=${ARGS[0]}
refs 3 "$E"
send_seq 1 "$E"   # A, cached after
# shellcheck disable=SC2086
timeout 60 "$PD_BIN/pd-cli" --router "$ROUTER" generate "${PROMPTS[1]}" ${ARGS[1]} --json \
    >"$E/out_1.jsonl" 2>"$E/out_1.err" &
xpid=$!
sleep 0.1
# shellcheck disable=SC2086
timeout 60 "$PD_BIN/pd-cli" --router "$ROUTER" generate "${PROMPTS[2]}" ${ARGS[2]} --json \
    >"$E/out_2.jsonl" 2>"$E/out_2.err"
wait $xpid
check_streams "$E" 3 "a prefix evicted between routing and prefill"
check "A again was routed onto its cache, then found at most 2 of its 11 blocks (the rest evicted)" \
    test "$(status_field 's.workers.filter(w => w.id == "p4").map(w => w.routed_cached_requests + "/" + (w.counters.prefix_hits <= 32) + "/" + (w.counters.prefix_evictions > 0)).join()')" = "1/true/true"
