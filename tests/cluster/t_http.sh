#!/bin/bash
# The OpenAI-compatible HTTP front (router/http.c): the official openai npm
# client (http_openai.mjs) against a local cluster, then curl for every
# error status, limits (body size, slowloris idle timeout, API keys) and
# /health before and after the workers join.
. "$(dirname "$0")/lib.sh"
require_model
plan 41
command -v curl >/dev/null || skip_all "curl missing"
[ -f tests/http/node_modules/.pd-installed ] || scripts/http-deps.sh >/dev/null 2>&1 ||
    skip_all "tests/http npm dependencies missing (scripts/http-deps.sh)"

KEY=sk-test-key
# max_inflight 1 + max_queue 1: a third concurrent request is refused (429).
start_router --set http.listen=127.0.0.1:0 --set http.chat_template=chatml \
    --set http.api_keys=$KEY --set http.max_body_bytes=65536 --set http.idle_timeout_s=2 \
    --set router.max_inflight=1 --set router.max_queue=1
HTTP=$(grep '^http=' "$T/router.ready" | cut -d= -f2-)
if [ -z "$HTTP" ]; then
    not_ok "the router serves HTTP (http= in its ready file)"
    exit 1
fi
AUTH=(-H "Authorization: Bearer $KEY")

# status BODY_FILE CURL_ARGS...: prints the HTTP status, body into BODY_FILE.
status() {
    local out=$1
    shift
    curl -s -o "$out" -w '%{http_code}' --max-time 30 "$@"
}
# is_error FILE CODE: the body is OpenAI's error shape (message, type, param, code).
is_error() {
    node -e '
        const e = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")).error;
        process.exit(e && typeof e.message === "string" && typeof e.type === "string" &&
                     "param" in e && "code" in e ? 0 : 1);' "$1"
}

st=$(status "$T/h0" "http://$HTTP/health")
check "GET /health is 503 before workers join" bash -c "[ $st = 503 ] && grep -q 'not ready' $T/h0"
st=$(status "$T/g0" "${AUTH[@]}" "http://$HTTP/v1/completions" -d '{"prompt":"hi","max_tokens":2}')
check "a completion before workers join is 503 (UNAVAILABLE)" bash -c "[ $st = 503 ] && grep -q unavailable $T/g0"

start_worker prefill p1
start_worker decode d1
wait_workers 2
st=$(status "$T/h1" "http://$HTTP/health")
check "GET /health is 200 once a prefill and a decode worker are registered" test "$st" = 200

# ---- the openai client ----
HTTP=$HTTP API_KEY=$KEY ROUTER=$ROUTER PD_BIN=$PD_BIN checker "http_openai.mjs" \
    timeout 300 node tests/cluster/http_openai.mjs

# ---- curl: every error status ----
st=$(status "$T/e400" "${AUTH[@]}" "http://$HTTP/v1/completions" -d '{"prompt":"hi","bogus_param":1}')
check "400: an unknown parameter, named, in OpenAI's error shape" \
    bash -c "[ $st = 400 ] && grep -q bogus_param $T/e400 && $(declare -f is_error); is_error $T/e400"
st=$(status "$T/e400b" "${AUTH[@]}" "http://$HTTP/v1/completions" -d '{"prompt":"hi","logprobs":3}')
check "400: logprobs named as not supported" bash -c "[ $st = 400 ] && grep -q 'logprobs' $T/e400b"
st=$(status "$T/e400c" "${AUTH[@]}" "http://$HTTP/v1/chat/completions" -d '{"messages":[{"role":"robot","content":"x"}]}')
check "400: a bad chat role is named" bash -c "[ $st = 400 ] && grep -q 'messages\[0\].role' $T/e400c"
st=$(status "$T/e401" -H "Authorization: Bearer nope" "http://$HTTP/v1/models")
check "401: a wrong API key" bash -c "[ $st = 401 ] && grep -q invalid_api_key $T/e401"
st=$(status "$T/e401b" "http://$HTTP/v1/completions" -d '{"prompt":"hi"}')
check "401: no API key" test "$st" = 401
st=$(status "$T/e404" "${AUTH[@]}" "http://$HTTP/v1/nothing")
check "404: an unknown path" bash -c "[ $st = 404 ] && grep -q not_found $T/e404"
head -c 100000 /dev/zero | tr '\0' a >"$T/big.txt"
st=$(status "$T/e413" "${AUTH[@]}" "http://$HTTP/v1/completions" --data-binary @"$T/big.txt")
check "413: a body over http.max_body_bytes" bash -c "[ $st = 413 ] && grep -q request_too_large $T/e413"
st=$(status "$T/e504" "${AUTH[@]}" "http://$HTTP/v1/completions" \
    -d '{"prompt":"river","max_tokens":4000,"ignore_eos":true,"deadline_ms":30}')
check "504: a request past its deadline_ms" bash -c "[ $st = 504 ] && grep -q deadline_exceeded $T/e504"

# 429: one request running, one queued, the third refused.
long='{"prompt":"river mountain","max_tokens":4000,"ignore_eos":true,"stream":true}'
curl -s -N --max-time 60 "${AUTH[@]}" "http://$HTTP/v1/completions" -d "$long" >"$T/l1" &
c1=$!
for _ in $(seq 1 100); do [ -s "$T/l1" ] && break; sleep 0.05; done
curl -s -N --max-time 60 "${AUTH[@]}" "http://$HTTP/v1/completions" -d "$long" >"$T/l2" &
c2=$!
for _ in $(seq 1 100); do
    [ "$(status_field 's.queued_requests')" = 1 ] && break
    sleep 0.05
done
st=$(status "$T/e429" "${AUTH[@]}" "http://$HTTP/v1/completions" -d '{"prompt":"hi","max_tokens":2}')
check "429: the router's queue is full (RESOURCE_EXHAUSTED)" \
    bash -c "[ $st = 429 ] && grep -q resource_exhausted $T/e429"
# Hanging up both streams cancels both requests.
kill $c1 $c2 2>/dev/null
wait $c1 $c2 2>/dev/null
idle=false
for _ in $(seq 1 60); do
    idle=$(status_field 's.active_requests == 0 && s.workers.every(w => w.running_seqs == 0)')
    [ "$idle" = true ] && break
    sleep 0.1
done
check "closing HTTP connections cancels their requests (router and workers idle)" test "$idle" = true
# The same for a non-streamed request: the client gives up after 0.1 s,
# long before its 4000 tokens; the request ends "abort", not "length". (The
# context caps it at 2043 tokens, which a quiet Zen 4 core decodes in
# 0.5 s: a 0.5 s client raced the end of the request and once lost.)
aborts() {
    curl -s "http://$HTTP/metrics" |
        sed -n 's/^pdserve:request_success_total{.*finished_reason="abort"} //p'
}
a0=$(aborts)
curl -s --max-time 0.1 "${AUTH[@]}" "http://$HTTP/v1/completions" \
    -d '{"prompt":"river mountain","max_tokens":4000,"ignore_eos":true}' >/dev/null
idle=false
for _ in $(seq 1 60); do
    idle=$(status_field 's.active_requests == 0 && s.workers.every(w => w.running_seqs == 0)')
    [ "$idle" = true ] && break
    sleep 0.1
done
a1=$(aborts)
if [ "$idle" = true ] && [ $((a0 + 1)) = "$a1" ]; then
    ok "a non-streamed request whose client hangs up is cancelled (aborts $a0 -> $a1)"
else
    not_ok "a non-streamed request whose client hangs up is cancelled (aborts $a0 -> $a1)" \
        "its end: $(grep 'event=request_done' "$T/router.log" | tail -1 | sed 's/.*event=//')"
fi
check "the router logs http_client_gone" grep -q 'event=http_client_gone' "$T/router.log"

# Slowloris: a client that never finishes its headers is cut after
# http.idle_timeout_s (2 s) and does not block others meanwhile.
node -e '
    const s = require("net").connect(+process.argv[1], "127.0.0.1", () =>
        s.write("POST /v1/completions HTTP/1.1\r\nHost: x\r\n"));
    const t0 = Date.now();
    s.on("close", () => { console.log(Date.now() - t0); process.exit(0); });
    s.on("error", () => {});
    setTimeout(() => { console.log(99999); process.exit(0); }, 8000);' "${HTTP##*:}" >"$T/slow" &
slow=$!
sleep 0.3
st=$(status "$T/h2" "http://$HTTP/health")
check "a slow client does not block others" test "$st" = 200
wait $slow
ms=$(cat "$T/slow")
check "a slowloris connection is closed after the idle timeout (${ms} ms)" \
    bash -c "[ ${ms:-99999} -ge 1500 ] && [ ${ms:-99999} -le 6000 ]"

st=$(status "$T/m" "http://$HTTP/metrics")
check "GET /metrics needs no API key and is Prometheus text" \
    bash -c "[ $st = 200 ] && grep -q '^# TYPE pdserve:e2e_request_latency_seconds histogram' $T/m"
