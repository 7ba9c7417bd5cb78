#!/bin/bash
# pd-bench --target http://...: the same harness against the router's
# OpenAI-compatible HTTP front (streamed POST /v1/completions over plain
# sockets): a 20-request run whose JSON and per-request records obey the
# metric definitions (check_bench.mjs) with exact output lengths, then bad
# URLs (exit 2) and unreachable servers (exit 3) with clear messages.
. "$(dirname "$0")/lib.sh"
require_model
[ -x "$PD_BIN/pd-bench" ] || skip_all "$PD_BIN/pd-bench missing (make all)"
command -v node >/dev/null || skip_all "node missing"
plan 64
BENCH=$PD_BIN/pd-bench

# expect_fail NAME CODE PATTERN ARGS...: pd-bench ARGS exits CODE and says PATTERN.
expect_fail() {
    local name=$1 code=$2 pat=$3
    shift 3
    timeout 20 "$BENCH" "$@" >"$T/bad.out" 2>"$T/bad.err"
    local rc=$?
    if [ $rc = "$code" ] && grep -qiE -- "$pat" "$T/bad.err"; then
        ok "$name"
    else
        not_ok "$name" "exit $rc, stderr: $(head -c 200 "$T/bad.err" | tr '\n' ' ')"
    fi
}

# ---- Bad URLs and unreachable servers (no cluster needed) ----
expect_fail "--target: a non-http URL is refused (exit 2)" 2 "ftp://x.*not an http://HOST:PORT URL" \
    --target ftp://x -m "$MODEL"
expect_fail "--target: https is refused as unsupported (exit 2)" 2 "https is not supported" \
    --target https://127.0.0.1:8000 -m "$MODEL"
expect_fail "--target: a port out of range is refused (exit 2)" 2 "port is not an integer in \[1, 65535\]" \
    --target http://127.0.0.1:70000 -m "$MODEL"
expect_fail "--target: no host is refused (exit 2)" 2 "no host" --target http://:80 -m "$MODEL"
expect_fail "--api-key without --target is refused (exit 2)" 2 "api-key is for --target" \
    --api-key k -m "$MODEL"
expect_fail "--api-key with a newline is refused (exit 2)" 2 "api-key: control character at offset 1" \
    --target http://127.0.0.1:9 --api-key "$(printf 'a\nb')" -m "$MODEL"
expect_fail "--target with --profile is refused (exit 2)" 2 "profile.*--router" \
    --target http://127.0.0.1:9 --profile "$T/p.json" -m "$MODEL"
expect_fail "--target: a refused port is unreachable (exit 3)" 3 \
    "cannot reach the server at http://127.0.0.1:9 within 500 ms: connect: Connection refused" \
    --target http://127.0.0.1:9 -m "$MODEL" --connect-timeout 500 -n 2
# A listener that never answers: the connect timeout bounds the wait.
node -e 'require("net").createServer(() => {}).listen(0, "127.0.0.1", function () {
    require("fs").writeFileSync(process.argv[1], String(this.address().port)); })' "$T/silent.port" &
SILENT_PID=$!
PIDS+=($SILENT_PID)
for _ in $(seq 1 100); do [ -s "$T/silent.port" ] && break; sleep 0.05; done
SP=$(cat "$T/silent.port" 2>/dev/null)
t0=$(date +%s%N)
expect_fail "--target: a server that never answers times out (exit 3)" 3 "within 400 ms: no answer" \
    --target "http://127.0.0.1:$SP" -m "$MODEL" --connect-timeout 400 -n 2
t1=$(date +%s%N)
check "... and gives up within 3 s" test $(((t1 - t0) / 1000000)) -lt 3000

# ---- A misbehaving server (bench_http_mock.mjs): the HTTP client's edge cases ----
node tests/cluster/bench_http_mock.mjs "$T/mock.port" &
PIDS+=($!)
for _ in $(seq 1 100); do [ -s "$T/mock.port" ] && break; sleep 0.05; done
MP=$(cat "$T/mock.port" 2>/dev/null)
printf 'drip\nnousage\nerr500\nnodone\nbighdr\nlongline\nplainjson\n' >"$T/modes.txt"
timeout 60 "$BENCH" --target "http://127.0.0.1:$MP" --dataset file --dataset-path "$T/modes.txt" \
    --max-concurrency 2 --json "$T/m.json" --save-requests "$T/m.jsonl" --no-progress \
    >"$T/m.out" 2>"$T/m.err"
rc=$?
check "mock server: the run completes (exit 0, 2 completed, 5 failed)" \
    bash -c "[ $rc = 0 ] && grep -q '\"completed\":2,\"failed\":5' $T/m.json"
# rec N JS-CONDITION: record N of --save-requests (as q) satisfies the condition.
rec() {
    node -e 'const q = require("fs").readFileSync(process.argv[1], "utf8").trim().split("\n")
                 .map(JSON.parse)[Number(process.argv[2])];
             process.exit(eval(process.argv[3]) ? 0 : 1);' "$T/m.jsonl" "$1" "$2"
}
check "mock: chunked stream delivered 1 byte at a time: ok, output_len from usage (5), 5 token times, 2 ITLs" \
    rec 0 'q.success && q.output_len === 5 && q.token_times_ms.length === 5 && q.itl_ms.length === 2 && q.prompt_len === 2'
check "mock: no usage: output_len = text events (4), Content-Length body" \
    rec 1 'q.success && q.output_len === 4 && q.itl_ms.length === 3'
check "mock: HTTP 500 is a failure carrying the server's message" \
    rec 2 '!q.success && q.finished && q.error === "HTTP 500: mock exploded"'
check "mock: a stream closed without [DONE] is a failure" \
    rec 3 '!q.success && /without data: \[DONE\]/.test(q.error)'
check "mock: response headers over 16 KiB are refused" \
    rec 4 '!q.success && /headers over 16384 bytes/.test(q.error)'
check "mock: an SSE line over 1 MiB is refused" \
    rec 5 '!q.success && /line over 1048576 bytes/.test(q.error)'
check "mock: a 200 that is not an event stream is a failure saying so" \
    rec 6 '!q.success && /not an event stream/.test(q.error)'

# ---- A cluster with the HTTP front ----
KEY=sk-bench-key
start_router --set http.listen=127.0.0.1:0 --set http.api_keys=$KEY
HTTP=$(grep '^http=' "$T/router.ready" | cut -d= -f2-)
if [ -z "$HTTP" ]; then
    not_ok "the router serves HTTP (http= in its ready file)"
    exit 1
fi
start_worker prefill p1
start_worker decode d1
wait_workers 2

expect_fail "--target without the server's API key: GET /v1/models is 401 (exit 3)" 3 \
    "GET http://$HTTP/v1/models: HTTP 401" --target "http://$HTTP" -m "$MODEL" -n 2
expect_fail "--target with a wrong API key is refused the same way" 3 "HTTP 401" \
    --target "http://$HTTP" --api-key wrong -m "$MODEL" -n 2

N=20
timeout 120 "$BENCH" --target "http://$HTTP" --api-key $KEY --num-prompts $N --dataset random -m "$MODEL" \
    --input-len 32 --output-len 16 --ignore-eos --request-rate 50 --seed 3 \
    --goodput ttft:5000 --json "$T/r.json" --save-requests "$T/req.jsonl" --no-progress \
    >"$T/bench.out" 2>"$T/bench.err"
rc=$?
check "pd-bench --target http://HOST:PORT runs (exit 0)" test $rc = 0
[ $rc = 0 ] || sed 's/^/# /' "$T/bench.err" | head -20
check "the summary table is printed" grep -q "Serving Benchmark Result" "$T/bench.out"
checker "check_bench" node tests/cluster/check_bench.mjs "$T/r.json" "$T/req.jsonl" $N http --exact-output
checker "http run" node -e '
    const fs = require("fs");
    const r = JSON.parse(fs.readFileSync(process.argv[1], "utf8").trim().split("\n").pop());
    const q = fs.readFileSync(process.argv[2], "utf8").trim().split("\n").map(JSON.parse);
    const N = Number(process.argv[3]);
    let bad = 0;
    const check = (what, c, why = "") => {
        console.log(`${c ? "ok" : "not ok"} - http: ${what}${c || !why ? "" : " # " + why}`);
        if (!c) bad++;
    };
    check("completed = 20, failed = 0", r.completed === N && r.failed === 0, `${r.completed} ${r.failed}`);
    check("total_output_tokens = 20 * 16", r.total_output_tokens === N * 16, String(r.total_output_tokens));
    check("total_input_tokens = 20 * 32 (+ BOS)", r.total_input_tokens >= N * 32 && r.total_input_tokens <= N * 33,
          String(r.total_input_tokens));
    check("backend is openai, base_url the target", r.backend === "openai" && r.base_url === process.argv[4]);
    check("every record: usage.completion_tokens = output_len = 16",
          q.every((x) => x.router.completion_tokens === 16 && x.output_len === 16));
    check("every record: finish is length", q.every((x) => x.finish === "length"));
    check("every record: TTFT <= E2E", q.every((x) => x.ttft_ms <= x.e2el_ms));
    for (const m of ["ttft", "tpot", "itl", "e2el"])
        check(`${m}: mean and p50 <= p99, all > 0`,
              r[`p50_${m}_ms`] <= r[`p99_${m}_ms`] && r[`mean_${m}_ms`] > 0 && r[`p50_${m}_ms`] > 0);
    check("mean TTFT <= mean E2E", r.mean_ttft_ms <= r.mean_e2el_ms);
    process.exit(bad ? 1 : 0);' "$T/r.json" "$T/req.jsonl" $N "http://$HTTP"

# Text prompts (the file dataset, no tokenizer) through the same path.
printf 'Once upon a time\nThe river\nA small cat\n' >"$T/prompts.txt"
OPENAI_API_KEY=$KEY timeout 60 "$BENCH" --target "http://$HTTP/v1" --dataset file --dataset-path "$T/prompts.txt" \
    --output-len 8 --ignore-eos --json "$T/f.json" --save-requests "$T/f.jsonl" --no-progress \
    >"$T/f.out" 2>"$T/f.err"
check "--dataset file (text prompts), /v1 base URL, key from \$OPENAI_API_KEY: 3 completed, 24 tokens, input from usage" \
    node -e '
        const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8").trim());
        process.exit(r.completed === 3 && r.failed === 0 && r.total_output_tokens === 24 &&
                     r.total_input_tokens > 3 ? 0 : 1);' "$T/f.json"

# A server-side error is a failed request carrying the server's message.
# (The file dataset is not checked against max_model_len client-side.)
timeout 60 "$BENCH" --target "http://$HTTP" --api-key $KEY --dataset file --dataset-path "$T/prompts.txt" \
    --num-prompts 2 --output-len 100000 --json "$T/e.json" --no-progress >"$T/e.out" 2>"$T/e.err"
rc=$?
check "an HTTP 400 is a failed request with the server's message (exit 1, all failed)" \
    bash -c "[ $rc = 1 ] && grep -q 'HTTP 400' $T/e.err && grep -q '\"failed\":2' $T/e.json"
[ $rc = 1 ] || { echo "# exit $rc"; sed 's/^/# /' "$T/e.err" | head -5; }

# Unreachable after start: the cluster's port, closed, mid-run is a failed request
# (covered by the connect tests above); Ctrl-C cancels in-flight requests.
# The signal goes to `timeout`, which passes it on to pd-bench and then to its
# whole process group: pd-bench may see it twice within microseconds, and
# that is still one Ctrl-C (a report, exit 130), not the quit-at-once second
# (test_interrupt checks that deterministically).
# started FILE: waits (up to 30 s) until pd-bench printed its start line.
started() {
    for _ in $(seq 300); do
        grep -q 'max concurrency' "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}
timeout 60 "$BENCH" --target "http://$HTTP" --api-key $KEY -m "$MODEL" --num-prompts 200 --input-len 8 \
    --output-len 400 --ignore-eos --request-rate 20 --no-progress --json "$T/i.json" \
    >"$T/i.out" 2>"$T/i.err" &
BP=$!
started "$T/i.err"
sleep 1
kill -INT $BP
wait $BP
rc=$?
check "Ctrl-C: exit 130 with what finished reported (interrupted: true)" \
    bash -c "[ $rc = 130 ] && grep -q '\"interrupted\":true' $T/i.json"
[ $rc = 130 ] || { echo "# exit $rc"; sed 's/^/# /' "$T/i.err" | head -5; }

# Ctrl-C while still connecting (a port nothing answers on): exit 130, at once.
nc_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 -c 'import socket,time,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1); s.bind(("127.0.0.1",int(sys.argv[1]))); s.listen(8); time.sleep(30)' "$nc_port" &
SILENT=$!
sleep 0.3
t0=$(date +%s%N)
timeout 60 "$BENCH" --target "http://127.0.0.1:$nc_port" --connect-timeout 20000 --num-prompts 2 \
    --input-len 8 --output-len 4 -m "$MODEL" --no-progress >"$T/i3.out" 2>"$T/i3.err" &
BP=$!
sleep 1
kill -INT $BP
wait $BP
rc=$?
el_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
kill $SILENT 2>/dev/null; wait $SILENT 2>/dev/null
check "Ctrl-C while connecting: exit 130 within 5 s, says interrupted" \
    bash -c "[ $rc = 130 ] && [ $el_ms -lt 5000 ] && grep -q 'interrupted' $T/i3.err"
[ $rc = 130 ] || { echo "# exit $rc after $el_ms ms"; sed 's/^/# /' "$T/i3.err" | head -5; }
exit $FAILED
