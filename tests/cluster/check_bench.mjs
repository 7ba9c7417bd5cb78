// check_bench.mjs RESULT.json REQUESTS.jsonl N NAME [--exact-output]
// (the run is made with --goodput ttft:MS; 25 results, 26 with --exact-output)
// Checks one pd-bench run: the summary JSON (last line of RESULT.json) against
// the per-request records (--save-requests) and the metric definitions
// (vLLM's benchmark_serving.py). Prints TAP lines "ok - NAME: ..." / "not ok - ...".
import { readFileSync } from "node:fs";

const [resultPath, reqPath, nStr, name, ...flags] = process.argv.slice(2);
const N = Number(nStr);
const exactOutput = flags.includes("--exact-output");
const lines = readFileSync(resultPath, "utf8").trim().split("\n");
const r = JSON.parse(lines[lines.length - 1]);
const reqs = readFileSync(reqPath, "utf8").trim().split("\n").map((l) => JSON.parse(l));

let failed = 0;
function check(what, cond, why = "") {
    if (cond) console.log(`ok - ${name}: ${what}`);
    else {
        failed++;
        console.log(`not ok - ${name}: ${what}${why ? " # " + why : ""}`);
    }
}
const close = (a, b, rel = 1e-6) => Math.abs(a - b) <= rel * Math.max(1, Math.abs(a), Math.abs(b));
// numpy.percentile, linear interpolation
function pct(v, p) {
    if (v.length === 0) return 0;
    const s = [...v].sort((a, b) => a - b), pos = (p / 100) * (s.length - 1);
    const lo = Math.floor(pos), hi = Math.ceil(pos);
    return s[lo] + (s[hi] - s[lo]) * (pos - lo);
}
const mean = (v) => (v.length ? v.reduce((a, b) => a + b, 0) / v.length : 0);

check("completed + failed = N", r.completed + r.failed === N && reqs.length === N,
      `completed ${r.completed} failed ${r.failed} records ${reqs.length}`);
check("some requests completed", r.completed > 0);
check("output_throughput = total_output_tokens / duration",
      close(r.output_throughput, r.total_output_tokens / r.duration),
      `${r.output_throughput} vs ${r.total_output_tokens / r.duration}`);
check("request_throughput = completed / duration", close(r.request_throughput, r.completed / r.duration));
check("total_token_throughput = (input + output) / duration",
      close(r.total_token_throughput, (r.total_input_tokens + r.total_output_tokens) / r.duration));
check("request_goodput <= request_throughput",
      r.request_goodput !== null && r.request_goodput <= r.request_throughput + 1e-12,
      `${r.request_goodput} > ${r.request_throughput}`);

for (const m of ["ttft", "tpot", "itl", "e2el"]) {
    const p50 = r[`p50_${m}_ms`], p90 = r[`p90_${m}_ms`], p99 = r[`p99_${m}_ms`];
    check(`${m}: p50 <= p90 <= p99`, p50 <= p90 && p90 <= p99, `${p50} ${p90} ${p99}`);
    check(`${m}: median = p50`, close(r[`median_${m}_ms`], p50));
}

const ok = reqs.filter((q) => q.success);
let ordered = true, ttftLe = true, lens = true, tpotDef = true, why = "";
for (const q of ok) {
    if (!(q.ttft_ms <= q.e2el_ms)) { ttftLe = false; why = `request ${q.index}`; }
    const t = q.token_times_ms;
    for (let k = 1; k < t.length; k++) if (!(t[k] >= t[k - 1])) ordered = false;
    if (t.length !== q.output_len || (t.length && !close(t[0], q.ttft_ms)) ||
        (t.length && t[t.length - 1] > q.e2el_ms + 1e-9)) ordered = false;
    if (exactOutput && q.output_len !== q.expected_output_len) lens = false;
    if (q.output_len > 1 && !close(q.tpot_ms, (q.e2el_ms - q.ttft_ms) / (q.output_len - 1))) tpotDef = false;
}
check("every request: TTFT <= E2E latency", ttftLe, why);
check("every request: token timestamps increase (first = TTFT, last <= E2E)", ordered);
check("every request: tpot = (e2el - ttft) / (output_len - 1)", tpotDef);
if (exactOutput) check("--ignore-eos: every output length is exact", lens);

// The summary is what the records say.
const sum = (f) => ok.reduce((a, q) => a + f(q), 0);
check("total_output_tokens = sum of records' output_len", r.total_output_tokens === sum((q) => q.output_len));
check("total_input_tokens = sum of records' prompt_len", r.total_input_tokens === sum((q) => q.prompt_len));
const ttfts = ok.map((q) => q.ttft_ms), e2els = ok.map((q) => q.e2el_ms);
const tpots = ok.filter((q) => q.output_len > 1).map((q) => q.tpot_ms);
const itls = ok.flatMap((q) => q.itl_ms);
check("mean_ttft_ms matches the records", close(r.mean_ttft_ms, mean(ttfts), 1e-5));
check("p90_e2el_ms matches the records (numpy linear percentile)", close(r.p90_e2el_ms, pct(e2els, 90), 1e-5));
check("p99_tpot_ms matches the records", close(r.p99_tpot_ms, pct(tpots, 99), 1e-5));
check("median_itl_ms matches the records", close(r.median_itl_ms, pct(itls, 50), 1e-5));
const sd = Math.sqrt(mean(e2els.map((x) => (x - mean(e2els)) ** 2)));
check("std_e2el_ms is the population std of the records", close(r.std_e2el_ms, sd, 1e-5));
// The run must have been made with --goodput ttft:... (both callers do): a
// result without it fails here rather than leaving the check out.
const g = r.goodput || {};
const good = ok.filter((q) => q.ttft_ms <= g.ttft &&
    (g.tpot === undefined || (q.output_len > 1 ? q.tpot_ms : 0) <= g.tpot) &&
    (g.e2el === undefined || q.e2el_ms <= g.e2el)).length;
check("request_goodput = requests meeting every SLO / duration",
      g.ttft !== undefined && close(r.request_goodput, good / r.duration),
      g.ttft === undefined ? "no goodput.ttft in the result (run pd-bench with --goodput ttft:MS)" : "");
process.exit(failed ? 1 : 0);
