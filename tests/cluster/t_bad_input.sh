#!/bin/bash
# Bad input: every bad request is answered with an Error naming the problem
# (or, for garbage between workers, logged and dropped), and the cluster
# keeps serving correct answers afterwards.
. "$(dirname "$0")/lib.sh"
require_model
plan 26
start_router --set router.max_tokens_limit=1000
start_worker prefill p1 --set worker.lease_ms=1000
start_worker decode d1 --set worker.lease_ms=1000
wait_workers 2

expect_error() { # NAME PATTERN pd-cli-args...
    local name=$1 pat=$2
    shift 2
    local out
    out=$(timeout 20 "$PD_BIN/pd-cli" --router "$ROUTER" "$@" 2>&1 >/dev/null)
    local rc=$?
    if [ $rc = 1 ] && echo "$out" | grep -q -- "$pat"; then
        ok "$name"
    else
        not_ok "$name" "rc=$rc: $out"
    fi
}
expect_error "empty prompt -> INVALID_ARGUMENT naming the prompt" \
    "INVALID_ARGUMENT: prompt: empty" generate ""
long=$(printf 'river %.0s' $(seq 1 2100))
expect_error "prompt over the context -> INVALID_ARGUMENT" \
    "INVALID_ARGUMENT: prompt: .* over the context of 2048" generate "$long"
expect_error "max_tokens 0 -> INVALID_ARGUMENT" \
    "INVALID_ARGUMENT: max_tokens: must be at least 1" generate "hello" -n 0
expect_error "max_tokens over the limit -> INVALID_ARGUMENT" \
    "INVALID_ARGUMENT: max_tokens: 5000 over the limit of 1000" generate "hello" -n 5000
expect_error "negative temperature -> INVALID_ARGUMENT" \
    "INVALID_ARGUMENT: sampling.temperature: must be >= 0" generate "hello" --temp -1
expect_error "top_p 0 -> INVALID_ARGUMENT" \
    "INVALID_ARGUMENT: sampling.top_p: must be in (0, 1]" generate "hello" --top-p 0
expect_error "top_p 1.5 -> INVALID_ARGUMENT" \
    "INVALID_ARGUMENT: sampling.top_p: must be in (0, 1]" generate "hello" --top-p 1.5
expect_error "token id outside the vocabulary -> INVALID_ARGUMENT" \
    "INVALID_ARGUMENT: prompt_tokens\[1\]: id 999999" generate --tokens 1,999999

expect_error "drain of an unknown worker id -> INVALID_ARGUMENT naming it" \
    "INVALID_ARGUMENT: unknown worker id 'nosuch'" drain nosuch

expect_reply() { # NAME PATTERN pd-cli-args...
    local name=$1 pat=$2
    shift 2
    local out
    out=$(timeout 20 "$PD_BIN/pd-cli" "$@" 2>&1)
    if echo "$out" | grep -q -- "$pat"; then ok "$name"; else not_ok "$name" "$out"; fi
}
expect_reply "malformed protobuf -> INVALID_ARGUMENT" \
    "error INVALID_ARGUMENT: malformed protobuf" --router "$ROUTER" debug-send ffffffffff
expect_reply "unknown message type -> INVALID_ARGUMENT" \
    "error INVALID_ARGUMENT: message .* has no known body type" --router "$ROUTER" debug-send 9a0600
expect_reply "worker message on the client socket -> INVALID_ARGUMENT" \
    "error INVALID_ARGUMENT: message type 'register' is not accepted on the client socket" \
    --router "$ROUTER" debug-send 5200
expect_reply "message from an unknown worker -> UNAVAILABLE: register first" \
    "error UNAVAILABLE: unknown worker: register first" --router "$ROUTER_W" debug-send 6200
expect_reply "malformed protobuf on the worker socket -> INVALID_ARGUMENT" \
    "error INVALID_ARGUMENT: malformed protobuf" --router "$ROUTER_W" debug-send ffffffffff
# Register with protocol version 99: refused, with the reason in the router log.
"$PD_BIN/pd-cli" --router "$ROUTER_W" debug-send 52020863 >/dev/null 2>&1
check "another protocol version is refused with a clear log line" \
    grep -q 'event=worker_refused .*protocol version 99' "$T/router.log"

# A decode worker announcing a KV endpoint no peer can use (a wildcard, or
# hostile bytes): refused at registration, the reason in the log.
register_hex() { # ID KV_ENDPOINT: a Register (protocol 1, decode, this model)
    node -e '
        const [id, ep, ident] = process.argv.slice(1);
        const str = (f, s) => { const b = Buffer.from(s); return Buffer.concat([Buffer.from([f << 3 | 2, b.length]), b]); };
        const f64 = Buffer.alloc(8); f64.writeBigUInt64LE(BigInt("0x" + ident));
        const reg = Buffer.concat([Buffer.from([0x08, 1]), str(2, id), Buffer.from([0x18, 2]), str(4, ep),
            Buffer.from([0x29]), f64, Buffer.from([0x38, 16, 0x40, 64])]);
        console.log(Buffer.concat([Buffer.from([0x52, reg.length]), reg]).toString("hex"));' \
        "$1" "$2" "$(status_field 's.model_identity')"
}
"$PD_BIN/pd-cli" --router "$ROUTER_W" debug-send "$(register_hex wild tcp://0.0.0.0:7000)" >/dev/null 2>&1
check "a decode worker announcing a wildcard KV address is refused, the log says why" \
    grep -q 'event=worker_refused worker=wild reason="kv_endpoint: a wildcard address cannot be reached' "$T/router.log"
"$PD_BIN/pd-cli" --router "$ROUTER_W" debug-send "$(register_hex junk $'tcp://a\nb";x:7000')" >/dev/null 2>&1
check "a decode worker announcing hostile bytes as its KV address is refused, not echoed" \
    bash -c "grep -q 'event=worker_refused worker=junk reason=\"kv_endpoint: a host has only' '$T/router.log' &&
             ! grep -q 'x:7000' '$T/router.log'"
check "neither registered" test "$(status_field 's.workers.filter(w => w.id == "wild" || w.id == "junk").length')" = 0

# KV ingress: a transfer for a request nobody announced.
KV=$(status_field 's.workers.find(w => w.role == "decode").kv_endpoint')
IDENT=$(status_field 's.model_identity')
BB=$(sed -n 's/.*block_bytes=\([0-9]*\).*/\1/p' "$T/d1.log" | head -1)
expect_reply "KV transfer for an unknown request -> refused (KvAck)" \
    "kv_ack ok=0 reason=unknown request" debug-kv "$KV" --req 424242 --tokens 20 \
    --identity "$IDENT" --block-size 16 --block-bytes "$BB"
expect_reply "KV transfer with a bad checksum -> refused" \
    "kv_ack ok=0 reason=block 0: checksum mismatch" debug-kv "$KV" --req 424243 --tokens 20 \
    --identity "$IDENT" --block-size 16 --block-bytes "$BB" --corrupt
expect_reply "KV transfer from another model -> refused" \
    "kv_ack ok=0 reason=model identity differs" debug-kv "$KV" --req 424244 --tokens 20 \
    --identity 1234 --block-size 16 --block-bytes "$BB"
# Raw garbage on the KV socket is logged and dropped (no reply).
"$PD_BIN/pd-cli" --router "$KV" debug-send ffffffff >/dev/null 2>&1
check "garbage on the KV socket is logged" grep -q 'event=bad_kv_message' "$T/d1.log"

# Another model: the worker is refused and exits 1 with the reason logged.
OTHER=$MODELS/tiny-qwen2-bpe-f32.gguf
if [ -s "$OTHER" ]; then
    timeout 20 "$PD_BIN/pd-decode" --id wrong --model "$OTHER" --router "$ROUTER_W" \
        "${COMMON_SETS[@]}" --log-file "$T/wrong.log" 2>/dev/null
    rc=$?
    check "a worker with another model is refused and exits 1" \
        bash -c "[ $rc = 1 ] && grep -q 'event=refused_by_router.*model identity' '$T/wrong.log'"
else
    skip "a worker with another model is refused and exits 1" "$OTHER missing (make models)"
fi

# The cluster still serves, correctly.
N=4
workload $N
refs $N "$T"
send_all $N "$T"
check_streams "$T" $N "still serving after bad input"
check "no leaks after bad input" \
    wait_status 's.workers.every(w => w.free_blocks == w.total_blocks) && s.active_requests == 0'
