// http_openai.mjs -- the official `openai` npm client against pdserve's HTTP
// front (run by t_http.sh, which starts the cluster). Prints TAP lines.
//
// Env: HTTP (host:port), API_KEY, ROUTER (client endpoint, for pd-cli),
// PD_BIN, NODE_PATH-free: modules are loaded from tests/http/node_modules.
import { execFileSync } from "node:child_process";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, "../http/package.json"));
const OpenAI = require("openai");
const parsePrometheus = require("parse-prometheus-text-format");

const { HTTP, API_KEY, ROUTER, PD_BIN } = process.env;
const base = `http://${HTTP}/v1`;
const client = new OpenAI({ baseURL: base, apiKey: API_KEY, maxRetries: 0, timeout: 60000 });
let failed = 0;

function ok(name) { console.log(`ok - ${name}`); }
function notOk(name, why) {
  failed = 1;
  console.log(`not ok - ${name}${why ? " # " + String(why).replace(/\n/g, " ") : ""}`);
}
function check(name, cond, why) { cond ? ok(name) : notOk(name, why); }
async function test(name, fn) {
  try { await fn(); } catch (e) { notOk(name, e && e.stack ? e.stack.split("\n").slice(0, 2).join(" ") : e); }
}

// pd-cli's answer for the same request: { text, prompt_tokens, completion_tokens, finish }.
function pdcli(prompt, args) {
  const out = execFileSync(`${PD_BIN}/pd-cli`, ["--router", ROUTER, "generate", prompt, ...args, "--json"],
    { encoding: "utf8", timeout: 60000 });
  let text = "", last = null;
  for (const line of out.split("\n")) {
    if (!line.trim()) continue;
    const c = JSON.parse(line);
    text += c.text || "";
    last = c;
  }
  return { text, prompt_tokens: last.usage.prompt_tokens, completion_tokens: last.usage.completion_tokens,
           finish: last.finish_reason };
}

async function metrics() {
  const r = await fetch(`http://${HTTP}/metrics`);
  const fams = parsePrometheus(await r.text());
  const byName = Object.fromEntries(fams.map(f => [f.name, f]));
  return { fams, byName };
}
function value(m, name, labels = {}) {
  const f = m.byName[name];
  if (!f) return undefined;
  for (const s of f.metrics) {
    const l = s.labels || {};
    if (Object.entries(labels).every(([k, v]) => l[k] === v))
      // This parser keeps a labelled histogram's buckets only: count = +Inf.
      return f.type === "HISTOGRAM" ? Number(s.buckets["+Inf"]) : Number(s.value);
  }
  return undefined;
}

const PROMPT = "the quick brown fox jumps over the lazy dog";
// ChatML as rendered for one user message; the test models have no
// <|im_start|> token, so the router sees exactly this text.
const CHAT_USER = "hello there, river mountain";
const CHATML = `<|im_start|>user\n${CHAT_USER}<|im_end|>\n<|im_start|>assistant\n`;

const m0 = await metrics();
let greedy = null;

await test("completions: greedy text and usage equal pd-cli's", async () => {
  const ref = pdcli(PROMPT, ["-n", "12", "--ignore-eos"]);
  const r = await client.completions.create({ model: (await client.models.list()).data[0].id,
    prompt: PROMPT, max_tokens: 12, temperature: 0, ignore_eos: true });
  greedy = r.choices[0].text;
  check("completions: greedy text equals pd-cli's", r.choices[0].text === ref.text,
        JSON.stringify([r.choices[0].text, ref.text]));
  check("completions: usage counts equal the router's", r.usage.prompt_tokens === ref.prompt_tokens &&
        r.usage.completion_tokens === 12 && r.usage.total_tokens === ref.prompt_tokens + 12,
        JSON.stringify(r.usage));
  check("completions: finish_reason length", r.choices[0].finish_reason === "length", r.choices[0].finish_reason);
});

await test("completions: seeded sampling equals pd-cli's", async () => {
  const ref = pdcli(PROMPT, ["-n", "16", "--temp", "0.8", "--top-p", "0.9", "--seed", "1234", "--ignore-eos"]);
  const r = await client.completions.create({ model: "ignored-but-checked", prompt: PROMPT }).catch(e => e);
  check("completions: an unknown model is 404", r.status === 404, r.status);
  const s = await client.completions.create({ prompt: PROMPT, max_tokens: 16, temperature: 0.8, top_p: 0.9,
    seed: 1234, ignore_eos: true, model: undefined });
  check("completions: seeded sampling text equals pd-cli's", s.choices[0].text === ref.text,
        JSON.stringify([s.choices[0].text, ref.text]));
});

await test("completions: stream", async () => {
  const stream = await client.completions.create({ prompt: PROMPT, max_tokens: 12, temperature: 0,
    ignore_eos: true, stream: true, stream_options: { include_usage: true } });
  let text = "", finish = null, usage = null, n = 0;
  for await (const c of stream) {
    n++;
    if (c.choices.length) {
      text += c.choices[0].text;
      if (c.choices[0].finish_reason) finish = c.choices[0].finish_reason;
    }
    if (c.usage) usage = c.usage;
  }
  check("completions stream: text equals the non-streamed text", text === greedy, JSON.stringify([text, greedy]));
  check("completions stream: several chunks, finish_reason length", n >= 3 && finish === "length", `${n} ${finish}`);
  check("completions stream: include_usage gives the usage", usage && usage.completion_tokens === 12, JSON.stringify(usage));
});

await test("chat: non-streamed and streamed equal pd-cli on the ChatML prompt", async () => {
  const ref = pdcli(CHATML, ["-n", "10", "--ignore-eos"]);
  const r = await client.chat.completions.create({ messages: [{ role: "user", content: CHAT_USER }],
    max_tokens: 10, temperature: 0, ignore_eos: true });
  const msg = r.choices[0].message;
  check("chat: text equals pd-cli's on the rendered ChatML prompt", msg.content === ref.text && msg.role === "assistant",
        JSON.stringify([msg.content, ref.text]));
  check("chat: usage counts the templated prompt", r.usage.prompt_tokens === ref.prompt_tokens &&
        r.usage.completion_tokens === 10, JSON.stringify([r.usage, ref.prompt_tokens]));
  const stream = await client.chat.completions.create({ messages: [{ role: "user", content: CHAT_USER }],
    max_completion_tokens: 10, temperature: 0, ignore_eos: true, stream: true });
  let text = "", role = null, finish = null;
  for await (const c of stream) {
    const d = c.choices[0].delta;
    if (d.role) role = d.role;
    if (d.content) text += d.content;
    if (c.choices[0].finish_reason) finish = c.choices[0].finish_reason;
  }
  check("chat stream: role, text and finish_reason", role === "assistant" && text === ref.text && finish === "length",
        JSON.stringify([role, text, ref.text, finish]));
});

await test("stop strings", async () => {
  // A stop string from the middle of the greedy answer: the text ends
  // right before its first occurrence.
  const m = /[A-Za-z]{3}/.exec(greedy.slice(3));
  if (!m) throw new Error(`no ASCII run in ${JSON.stringify(greedy)}`);
  const stop = m[0];
  const want = greedy.slice(0, greedy.indexOf(stop));
  const r = await client.completions.create({ prompt: PROMPT, max_tokens: 12, temperature: 0,
    ignore_eos: true, stop: [stop, "never-there"] });
  check("stop: non-streamed text cut before the stop string, finish_reason stop",
        r.choices[0].text === want && r.choices[0].finish_reason === "stop",
        JSON.stringify([r.choices[0].text, want, r.choices[0].finish_reason]));
  const stream = await client.completions.create({ prompt: PROMPT, max_tokens: 12, temperature: 0,
    ignore_eos: true, stop, stream: true });
  let text = "", finish = null;
  for await (const c of stream) {
    text += c.choices[0].text;
    if (c.choices[0].finish_reason) finish = c.choices[0].finish_reason;
  }
  check("stop: streamed text never shows the stop string", text === want && finish === "stop",
        JSON.stringify([text, want, finish]));
});

await test("an aborted stream cancels its request", async () => {
  const stream = await client.completions.create({ prompt: "river mountain", max_tokens: 4000,
    ignore_eos: true, stream: true });
  let n = 0;
  for await (const c of stream) {
    if (++n >= 5) break; // leaving the loop aborts the HTTP request
  }
  stream.controller.abort();
  let idle = false;
  for (let i = 0; i < 60 && !idle; i++) {
    await new Promise(r => setTimeout(r, 100));
    const s = JSON.parse(execFileSync(`${PD_BIN}/pd-cli`, ["--router", ROUTER, "status", "--json"], { encoding: "utf8" }));
    idle = s.active_requests === 0 && s.workers.every(w => w.running_seqs === 0);
  }
  check("abort: the router and the decode worker drop the request (running 0)", idle);
  const m = await metrics();
  check("abort: counted as request_success_total{finished_reason=abort}",
        value(m, "pdserve:request_success_total", { finished_reason: "abort" }) >
        value(m0, "pdserve:request_success_total", { finished_reason: "abort" }));
});

await test("errors through the client", async () => {
  const bad = await client.completions.create({ prompt: "x", max_tokens: 2, frobnicate: 1 }).catch(e => e);
  check("client: an unknown parameter is a 400 naming it", bad.status === 400 && /frobnicate/.test(bad.message),
        `${bad.status} ${bad.message}`);
  const n2 = await client.completions.create({ prompt: "x", max_tokens: 2, n: 2 }).catch(e => e);
  check("client: n > 1 is a 400 naming n", n2.status === 400 && n2.error && n2.error.param === "n", `${n2.status}`);
  const other = new OpenAI({ baseURL: base, apiKey: "sk-wrong", maxRetries: 0 });
  const au = await other.models.list().catch(e => e);
  check("client: a wrong API key is a 401", au.status === 401, au.status);
});

await test("/metrics", async () => {
  const m1 = await metrics();
  const need = ["num_requests_running", "num_requests_waiting", "time_to_first_token_seconds",
    "time_per_output_token_seconds", "e2e_request_latency_seconds", "request_queue_time_seconds",
    "prompt_tokens_total", "generation_tokens_total", "request_success_total", "kv_cache_usage_perc",
    "num_preemptions_total", "kv_transfer_bytes_total", "kv_transfer_seconds", "workers"];
  const missing = need.filter(n => !m1.byName["pdserve:" + n]);
  check("metrics: the Prometheus parser reads every family", missing.length === 0, missing.join(","));
  check("metrics: workers by role and state", value(m1, "pdserve:workers", { role: "prefill", state: "ready" }) === 1 &&
        value(m1, "pdserve:workers", { role: "decode", state: "ready" }) === 1);
  const g0 = value(m1, "pdserve:generation_tokens_total"), e0 = value(m1, "pdserve:e2e_request_latency_seconds");
  const l0 = value(m1, "pdserve:request_success_total", { finished_reason: "length" });
  const t0 = value(m1, "pdserve:kv_transfer_bytes_total");
  await client.completions.create({ prompt: PROMPT, max_tokens: 7, ignore_eos: true });
  const m2 = await metrics();
  check("metrics: generation_tokens_total moves by the request's tokens",
        value(m2, "pdserve:generation_tokens_total") === g0 + 7, `${g0} -> ${value(m2, "pdserve:generation_tokens_total")}`);
  check("metrics: e2e histogram count and request_success_total{length} move by one",
        value(m2, "pdserve:e2e_request_latency_seconds") === e0 + 1 &&
        value(m2, "pdserve:request_success_total", { finished_reason: "length" }) === l0 + 1);
  // Worker counters arrive with heartbeats (200 ms in the test cluster).
  let t1 = t0;
  for (let i = 0; i < 30 && t1 <= t0; i++) {
    await new Promise(r => setTimeout(r, 100));
    t1 = value(await metrics(), "pdserve:kv_transfer_bytes_total");
  }
  check("metrics: kv_transfer_bytes_total moves", t1 > t0, `${t0} -> ${t1}`);
});

process.exit(failed);
