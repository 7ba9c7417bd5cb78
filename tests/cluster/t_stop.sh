#!/bin/bash
# Stop strings (applied by the router on text: the stop string and what
# follows are not sent, and text that could begin a stop string is held
# back, never withdrawn), stop token ids, non-streaming requests, and a
# worker leaving the cluster cleanly.
. "$(dirname "$0")/lib.sh"
require_model
plan 6
start_router
start_worker prefill p1
start_worker decode d1
wait_workers 2
P="river mountain cloud signal"
"$PD_BIN/pd-run" -m "$MODEL" --threads 1 -p "$P" -n 60 --ignore-eos >"$T/ref.txt" 2>/dev/null
# A stop string from the middle of the reference text.
STOP=$(node -e 'const t = require("fs").readFileSync(process.argv[1], "utf8");
    const s = t.slice(Math.floor(t.length / 2), Math.floor(t.length / 2) + 4);
    process.stdout.write(s);' "$T/ref.txt")
cli generate "$P" -n 60 --ignore-eos --stop "$STOP" --json >"$T/stop.jsonl" 2>"$T/stop.err"
checker "stop string" node -e '
    const fs = require("fs");
    const ref = fs.readFileSync(process.argv[1], "utf8"), stop = process.argv[3];
    const chunks = fs.readFileSync(process.argv[2], "utf8").split("\n").filter(l => l).map(JSON.parse);
    const text = chunks.map(c => c.text).join("");
    const want = ref.slice(0, ref.indexOf(stop));
    const fin = chunks[chunks.length - 1];
    const ok = stop.length === 4 && ref.indexOf(stop) > 0 && text === want && fin.final &&
        fin.finish_reason === "stop";
    console.log((ok ? "ok" : "not ok") + " - stop string: text cut before it, finish_reason stop" +
        (ok ? "" : ` # got ${JSON.stringify(text)} want ${JSON.stringify(want)} finish ${fin.finish_reason}`));
' "$T/ref.txt" "$T/stop.jsonl" "$STOP"

# Stop token id: the 5th token pd-run produces. The stream ends at its first
# occurrence in pd-run's output (maybe earlier than the 5th), that token
# included.
ref_tokens "$T/ids.txt" -p "$P" -n 20 --ignore-eos
SID=$(awk '{print $5}' "$T/ids.txt")
WANT_N=$(awk -v s="$SID" '{ for (i = 1; i <= NF; i++) if ($i == s) { print i; exit } }' "$T/ids.txt")
n=$(cli generate "$P" -n 20 --ignore-eos --stop-id "$SID" --json | tail -1 |
    node -e 'let t="";process.stdin.on("data",d=>t+=d).on("end",()=>{const c=JSON.parse(t);
        console.log(c.finish_reason + " " + c.usage.completion_tokens);});')
check "stop token id $SID ends the stream at its first occurrence (finish stop_id, $WANT_N tokens; got $n)" \
    test "$n" = "stop_id ${WANT_N:-?}"

# Non-streaming: one final chunk carrying everything.
cli generate "$P" -n 20 --ignore-eos --no-stream --json >"$T/ns.jsonl"
check "--no-stream: exactly one chunk, final, with all 20 tokens" \
    bash -c "[ \$(wc -l <$T/ns.jsonl) = 1 ] && node -e 'const c=JSON.parse(require(\"fs\").readFileSync(\"$T/ns.jsonl\",\"utf8\")); process.exit(c.final && c.tokens.length==20 && c.index==0 ? 0 : 1)'"

# Text mode prints exactly pd-run's text.
cli generate "$P" -n 60 --ignore-eos >"$T/text.txt"
check "pd-cli text output equals pd-run's" bash -c "diff <(cat $T/ref.txt; echo) $T/text.txt >/dev/null"

# A worker leaving (SIGTERM) is forgotten by the router at once.
start_worker decode d2
wait_workers 3
kill -TERM $LAST_PID
wait $LAST_PID
rc=$?
check "SIGTERM: an idle worker exits 0" test $rc = 0
sleep 0.2
check "the router forgets a worker that left" test "$(n_workers)" = 2
