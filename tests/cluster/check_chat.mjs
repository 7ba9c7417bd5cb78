// check_chat.mjs RESULT.json REQUESTS.jsonl NAME N T U P O THINK_MS [--http PD_TOKENIZE MODEL]
// Checks one pd-bench --dataset multi-turn run (N conversations of T turns,
// U user tokens, P prefix tokens, O output tokens, --ignore-eos,
// --range-ratio 0) from its --json result and --save-requests records:
// every turn's prompt is the previous prompt + the answer the server
// returned (its ids from the router; with --http the text, encoded by
// pd-tokenize, cut to O tokens) + U new tokens; the server saw exactly that prompt; a turn
// is sent only after the previous answer completed and the think time
// passed; the per-turn TTFT table agrees with the records. 9 TAP lines.
import { readFileSync } from "node:fs";
import { spawnSync } from "node:child_process";

const [resultPath, reqPath, name, ...rest] = process.argv.slice(2);
const [N, T, U, P, O, THINK] = rest.slice(0, 6).map(Number);
const http = rest[6] === "--http" ? { tok: rest[7], model: rest[8] } : null;
const lines = readFileSync(resultPath, "utf8").trim().split("\n");
const r = JSON.parse(lines[lines.length - 1]);
const reqs = readFileSync(reqPath, "utf8").trim().split("\n").map((l) => JSON.parse(l));

function check(what, cond, why = "") {
    console.log(`${cond ? "ok" : "not ok"} - ${name}: ${what}${!cond && why ? " # " + why : ""}`);
}
function pct(v, p) {
    const s = [...v].sort((a, b) => a - b), pos = (p / 100) * (s.length - 1);
    const lo = Math.floor(pos), hi = Math.ceil(pos);
    return s[lo] + (s[hi] - s[lo]) * (pos - lo);
}
const close = (a, b) => Math.abs(a - b) <= 1e-6 * Math.max(1, Math.abs(a), Math.abs(b));
const same = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);

// conv[c][t - 1] = the record of conversation c's turn t
const conv = [];
for (const q of reqs) {
    (conv[q.conversation] ??= [])[q.turn - 1] = q;
}
const complete = conv.length === N && conv.every((c) => c && c.length === T && c.every(Boolean));
check(`${N} x ${T} turns, every one completed`,
      complete && reqs.length === N * T && r.completed === N * T && r.failed === 0 &&
      reqs.every((q) => q.success),
      `records ${reqs.length}, completed ${r.completed}, failed ${r.failed}`);
if (!complete) process.exit(1);

// The answers as ids: the router's, or the text through pd-tokenize.
const answer = new Map();
if (http) {
    const texts = reqs.map((q) => Buffer.from(q.output_text, "utf8").toString("hex"));
    const out = spawnSync(http.tok, ["-m", http.model, "--no-special"],
                          { input: texts.join("\n") + "\n", encoding: "utf8" });
    const rows = out.stdout.trim().split("\n");
    // pd-bench cuts an answer that encodes to more than its max_tokens (O)
    reqs.forEach((q, i) => answer.set(q, (rows[i] ?? "").trim().split(/\s+/).filter(Boolean).map(Number).slice(0, O)));
} else {
    for (const q of reqs) answer.set(q, q.output_ids);
}

let why = "";
const head = conv[0][0].prompt_ids.slice(0, 1 + P);
let firstOk = true;
for (const c of conv) {
    const p = c[0].prompt_ids;
    if (p.length !== 1 + P + U || !same(p.slice(0, 1 + P), head)) {
        firstOk = false;
        why ||= `conversation ${c[0].conversation} turn 1: ${p.length} tokens`;
    }
}
check(`turn 1: BOS + the shared ${P}-token prefix + ${U} user tokens`, firstOk, why);

why = "";
let extendOk = true;
for (const c of conv)
    for (let t = 1; t < T && extendOk; t++) {
        const prev = c[t - 1].prompt_ids, ans = answer.get(c[t - 1]), cur = c[t].prompt_ids;
        const want = [...prev, ...ans];
        if ((!http && ans.length === 0) || cur.length !== want.length + U || !same(cur.slice(0, want.length), want)) {
            extendOk = false;
            why = `conversation ${c[t].conversation} turn ${t + 1}: ${cur.length} tokens, ` +
                  `previous prompt ${prev.length} + answer ${ans.length} + ${U}`;
        }
    }
check("every turn's prompt = the previous prompt + the answer returned + the new user message",
      extendOk, why);

check(`every answer has ${O} tokens`,
      reqs.every((q) => q.output_len === O && (http || q.output_ids.length === O)),
      reqs.map((q) => q.output_len).join(","));
check("the server counted each prompt as sent (usage prompt_tokens)",
      reqs.every((q) => q.router.prompt_tokens === q.prompt_ids.length && q.prompt_len === q.prompt_ids.length));

why = "";
let orderOk = true;
for (const c of conv)
    for (let t = 1; t < T; t++) {
        const done = c[t - 1].start_ms + c[t - 1].e2el_ms + THINK;
        if (c[t].start_ms < done - 1) {
            orderOk = false;
            why = `conversation ${c[t].conversation} turn ${t + 1} sent at ${c[t].start_ms} ms, ` +
                  `turn ${t} done at ${c[t - 1].start_ms + c[t - 1].e2el_ms} ms`;
        }
    }
check(`each turn is sent after the previous answer completed + ${THINK} ms`, orderOk, why);
const overlap = reqs.some((a) => reqs.some((b) => a.conversation !== b.conversation &&
    a.start_ms < b.start_ms + b.e2el_ms && b.start_ms < a.start_ms + a.e2el_ms));
check("conversations run concurrently (turns of different conversations overlap)", overlap);

const mt = r.multi_turn ?? {};
why = "";
let tableOk = Array.isArray(mt.turns) && mt.turns.length === T && mt.num_conversations === N &&
              mt.num_turns === T && mt.think_time_ms === THINK;
for (let t = 1; tableOk && t <= T; t++) {
    const v = conv.map((c) => c[t - 1].ttft_ms), e = mt.turns[t - 1];
    if (e.turn !== t || e.completed !== N || !close(e.median_ttft_ms, pct(v, 50)) ||
        !close(e.p90_ttft_ms, pct(v, 90))) {
        tableOk = false;
        why = `turn ${t}: ${JSON.stringify(e)} vs median ${pct(v, 50)} p90 ${pct(v, 90)}`;
    }
}
check("JSON multi_turn: per-turn completed, median and p90 TTFT agree with the records", tableOk, why);
check("JSON multi_turn: ratio = turn T median / turn 1 median",
      tableOk && close(mt.median_ttft_ratio_last_first, mt.turns[T - 1].median_ttft_ms / mt.turns[0].median_ttft_ms) &&
      close(mt.p90_ttft_ratio_last_first, mt.turns[T - 1].p90_ttft_ms / mt.turns[0].p90_ttft_ms),
      JSON.stringify(mt.median_ttft_ratio_last_first));
