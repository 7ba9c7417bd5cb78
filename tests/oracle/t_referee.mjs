#!/usr/bin/env node
// The outside referee: llama.cpp (node-llama-cpp's prebuilt CPU build) and
// pdserve's pd-run on the same GGUF files. For every test model, four
// results:
//   - prompt tokenization of 5 prompts identical;
//   - greedy continuations (64 tokens each) identical, except at most
//     tolerances.json's max_near_ties_per_file near-ties: positions where
//     llama.cpp's own probabilities of its choice and ours differ by less
//     than the type's tolerance (rounding order may then pick either); each
//     is printed;
//   - top-5 probabilities at every position (prompt and generated) within
//     the tensor type's tolerance of llama.cpp's (our own greedy tokens are
//     fed to both, so every position is compared even after a near-tie);
//   - every position compared: one per prompt token and 64 per prompt, each
//     with a reference distribution (none dropped), counted and asserted.
// Tolerances are stated once, per tensor type, in tolerances.json (measured
// worst error with headroom); docs/models.md's table is rendered from it and
// checked here. Then the judge is shown to fail on doctored copies of one
// model's data (a shifted logit, a dropped position, a greedy divergence,
// near-ties over the limit, a different tokenization): cheap self-tests,
// no second llama.cpp run.
// llama.cpp runs with an F32 KV cache and flash attention off: its defaults
// (F16 KV, CPU flash attention) move its own probabilities by up to 6e-4.
// Then the same four results with an F16 KV cache on both sides (KV_CASES:
// `pd-run --kv-dtype f16`, as kv.dtype f16 in a worker, against llama.cpp's
// type_k/type_v F16, flash attention still off), at the tensor type's
// tolerance plus tolerances.json's kv_types.F16 one.
// Prints TAP. Env: MODELS (default build/models), PD_BIN (build/bin), CASES
// and KV_CASES (JSON lists of model names, default all test models and four
// of them).
import { execFileSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { TOL, tolFor, renderTable, docBlock } from "./tolerances.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const MODELS = process.env.MODELS || "build/models";
const PD_BIN = process.env.PD_BIN || "build/bin";
const N_GEN = 64;
const CTX = 256; // both engines sized alike: phi3 picks its rope factors by it
// A case is a model name (all 5 prompts) or [name, number of prompts]. The
// K-quant files (tiny-k shape, dim 256) run 2 prompts per type and 1 per
// mix: about 200 s of CPU for the nine (tolerances.json's worst observed
// for them is over all 5 prompts, measured once). A mix is checked at its
// own tolerance (Q4_K_M, Q3_K_M); mix-q2_k at Q2_K's.
const CASES = (process.env.CASES ? JSON.parse(process.env.CASES) : [
  "tiny-llama-spm-f32", "tiny-llama-spm-f16", "tiny-llama-spm-bf16", "tiny-llama-spm-q8_0",
  "tiny-llama-spm-q4_0", "tiny-llama-spm-tied-f32", "tiny-llama-bpe-f32", "tiny-llama3-bpe-f32",
  "tiny-qwen2-bpe-f32", "tiny-qwen2-bpe-f16", "tiny-qwen2-bpe-q8_0",
  ["tiny-k-llama-spm-q2_k", 2], ["tiny-k-llama-spm-q3_k", 2], ["tiny-k-llama-spm-q4_k", 2],
  ["tiny-k-llama-spm-q5_k", 2], ["tiny-k-llama-spm-q6_k", 2], ["tiny-k-llama-spm-iq4_nl", 2],
  ["tiny-k-llama-spm-mix-q4_k_m", 1], ["tiny-k-llama-spm-mix-q3_k_m", 1],
  ["tiny-k-llama-spm-mix-q2_k", 1],
  // The newer architectures (docs/models.md), each in the four types people
  // download and F32, every prompt, at tolerances.json's group for them.
  ...["llama3-tiny", "qwen3-tiny", "gemma2-tiny", "gemma3-tiny", "phi3-tiny"].flatMap((a) =>
    ["f32", "f16", "q8_0", "q4_k_m", "q6_k"].map((t) => `${a}-${t}`)),
]).map((c) => (Array.isArray(c) ? c : [c, 0]));
const KV_CASES = process.env.KV_CASES ? JSON.parse(process.env.KV_CASES) : [
  "tiny-llama-spm-f32", "tiny-llama-spm-f16", "tiny-llama-spm-q8_0", "tiny-qwen2-bpe-f32",
];
// One prompt long enough (over 64 tokens in every tokenizer here) that the
// prompt is a many-row product: the integer prefill kernel for Q8_0 / Q4_0
// (more than 32 rows), the tiled F32 kernel (64 rows and more), the
// dequantizing path for the K-quants; the five prompts above are short and
// reach only the decode kernels. Every prompt position is compared.
const LONG_CASES = process.env.LONG_CASES ? JSON.parse(process.env.LONG_CASES) : [
  "tiny-llama-spm-f32", "tiny-llama-spm-q8_0", "tiny-llama-spm-q4_0", "tiny-qwen2-bpe-q8_0",
  "tiny-k-llama-spm-mix-q4_k_m",
  ...["llama3-tiny", "qwen3-tiny", "gemma2-tiny", "gemma3-tiny", "phi3-tiny"].map((a) => `${a}-q8_0`),
];
const LONG_PROMPT =
  "The lighthouse keeper had kept the same routine for thirty-one years. Every evening at " +
  "dusk he climbed the one hundred and twelve steps, wound the clockwork, trimmed the wick " +
  "and wrote three lines in the log: the wind, the sea, and the ships that passed. On the " +
  "night of the great storm of 1887, the log has a fourth line, in a different hand, and " +
  "nobody in the village has ever agreed on what it means. It reads:";
// [model, number of prompts (0: all; -1: the long prompt), KV cache type]
const RUNS = [...CASES.map(([n, p]) => [n, p, "f32"]), ...KV_CASES.map((n) => [n, 0, "f16"]),
              ...LONG_CASES.map((n) => [n, -1, "f32"])];
const PROMPTS = [
  "Once upon a time",
  "The quick brown fox jumps over the lazy dog.",
  "  two leading spaces and 12345 digits",
  "Hello, world! こんにちは 🌍",
  "def main():\n    print('hi')\n",
];
const N_SELF = 5;
console.log(`1..${1 + 4 * RUNS.length + N_SELF}`);

let failures = 0;
function ok(cond, name, detail) {
  if (cond) console.log(`ok - ${name}`);
  else { failures++; console.log(`not ok - ${name}`); if (detail) console.log(`# ${detail}`); }
}

// ====== The doc's table is the test's table ======
{
  const doc = path.join(here, "../../docs/models.md");
  const block = existsSync(doc) ? docBlock(readFileSync(doc, "utf8")) : null;
  ok(block === renderTable(), "docs/models.md's tolerance table is tests/oracle/tolerances.json's",
     "regenerate it: node tests/oracle/tolerances.mjs --write docs/models.md");
}

// ====== The judge: one model's data -> four verdicts ======
// data: [{ ours: {tokens, prompt: [top], gen: [top]}, refTokens, promptRef: [Map|undefined],
//          genRef: [Map|undefined] }] per prompt; top = [[id, p], ...] (ours, best first),
//          a Map id -> p (llama.cpp's whole distribution, best first).

// Worst |p_ours - p_ref| over our top-5 and llama.cpp's top-5 at one position.
function cmpTop(ours, ref) {
  let worst = 0;
  for (const [id, p] of ours) worst = Math.max(worst, Math.abs(p - (ref.get(id) ?? 0)));
  const ourMap = new Map(ours);
  let i = 0;
  for (const [id, q] of ref) {
    if (i++ >= 5) break;
    if (!ourMap.has(id)) worst = Math.max(worst, Math.max(0, q - ours[ours.length - 1][1]));
  }
  return worst;
}

function judge(name, data, tol, maxTies, quiet = false) {
  const say = (s) => { if (!quiet) console.log(`# ${s}`); };
  let tokOk = 0, agreeAll = true, ties = 0, worst = 0, where = "", positions = 0, missing = 0, expected = 0;
  const errs = [];
  data.forEach((d, pi) => {
    if (JSON.stringify(d.refTokens) === JSON.stringify(d.ours.tokens)) tokOk++;
    else say(`${name} prompt ${pi} tokens: ours ${JSON.stringify(d.ours.tokens)} llama.cpp ${JSON.stringify(d.refTokens)}`);
    // One position per prompt token and N_GEN generated: what must be compared.
    expected += d.ours.tokens.length + N_GEN;
    const at = (top, ref, label) => {
      if (!top || !ref) { missing++; return; }
      positions++;
      const e = cmpTop(top, ref);
      errs.push(e);
      if (e > worst) { worst = e; where = label; }
    };
    for (let i = 0; i < d.ours.tokens.length; i++) at(d.ours.prompt[i], d.promptRef[i], `prompt ${pi} pos ${i}`);
    let agree = 0;
    for (let i = 0; i < N_GEN; i++) {
      const top = d.ours.gen[i], ref = d.genRef[i];
      at(top, ref, `prompt ${pi} gen ${i}`);
      if (!top || !ref) continue;
      const mine = top[0][0], theirs = ref.keys().next().value;
      if (mine === theirs) { agree++; continue; }
      const gap = ref.get(theirs) - (ref.get(mine) ?? 0);
      if (gap < tol) {
        ties++;
        say(`${name} prompt ${pi} gen ${i}: near-tie, llama.cpp p(${theirs})=${ref.get(theirs).toFixed(6)} p(${mine})=${(ref.get(mine) ?? 0).toFixed(6)} (gap ${gap.toExponential(1)} < ${tol})`);
      } else {
        agreeAll = false;
        say(`${name} prompt ${pi} gen ${i}: greedy differs, llama.cpp ${theirs} (p ${ref.get(theirs).toFixed(5)}) ours ${mine} (p ${(ref.get(mine) ?? 0).toFixed(5)})`);
      }
    }
  });
  errs.sort((a, b) => a - b);
  const q = (f) => (errs.length ? errs[Math.min(errs.length - 1, Math.floor(f * errs.length))] : NaN);
  say(`${name}: ${positions} positions, median ${q(0.5).toExponential(1)}, p90 ${q(0.9).toExponential(1)}, ` +
      `p99 ${q(0.99).toExponential(1)}, worst ${worst.toExponential(2)} at ${where}, over ${tol}: ${errs.filter((e) => e > tol).length}`);
  return [
    [tokOk === data.length, `${name}: tokenization of ${data.length} prompts identical to llama.cpp`],
    [agreeAll && ties <= maxTies,
     `${name}: greedy ${N_GEN}-token continuations identical but for ${ties} near-ties (at most ${maxTies})`],
    [positions > 0 && worst <= tol,
     `${name}: top-5 probabilities within ${tol} at every position (worst ${worst.toExponential(2)} at ${where})`],
    [positions === expected && missing === 0,
     `${name}: ${positions} of ${expected} positions compared (prompt tokens + ${N_GEN} per prompt), ${missing} without a reference`],
  ];
}

// ====== The data: pd-run and llama.cpp on one file ======
function runOurs(model, prompt, kv) {
  const out = execFileSync(path.join(PD_BIN, "pd-run"),
    ["-m", model, "-p", prompt, "-n", String(N_GEN), "--ignore-eos", "--dump-top", "5",
     "--ctx", String(CTX), "--kv-dtype", kv],
    { encoding: "utf8", maxBuffer: 64 << 20 });
  const lines = out.trim().split("\n").map((l) => JSON.parse(l));
  return {
    tokens: lines.find((l) => l.kind === "tokens").ids,
    prompt: lines.filter((l) => l.kind === "prompt").map((l) => l.top),
    gen: lines.filter((l) => l.kind === "gen").map((l) => l.top),
  };
}

async function collect(llama, file, nPrompts, kv) {
  const model = await llama.loadModel({ modelPath: file, gpuLayers: 0 });
  const data = [];
  const prompts = nPrompts < 0 ? [LONG_PROMPT] : PROMPTS.slice(0, nPrompts || PROMPTS.length);
  for (const prompt of prompts) {
    const ours = runOurs(file, prompt, kv);
    const refTokens = model.tokenize(prompt, false);
    const withBos = (model.tokens.bos != null && ours.tokens[0] === model.tokens.bos && refTokens[0] !== model.tokens.bos)
      ? [model.tokens.bos, ...refTokens] : [...refTokens];
    // One thread: the same distributions bit for bit as with two (ggml
    // splits a product by rows), and no thread-pool hand-off per token: with
    // two threads each one-token evaluation took ~1 s on a loaded 2-core
    // machine (40 tokens: 38 s against 0.2 s), and the referee overran 20 min.
    const ctx = await model.createContext({ contextSize: CTX, batchSize: 256, threads: 1,
      experimentalKvCacheKeyType: kv.toUpperCase(), experimentalKvCacheValueType: kv.toUpperCase(),
      flashAttention: false });
    const seq = ctx.getSequence();
    // Prompt positions: the next token's distribution after each prompt token.
    const res = await seq.controlledEvaluate(ours.tokens.map((t) => [t, { generateNext: { probabilities: true } }]));
    const promptRef = ours.tokens.map((_, i) => res[i]?.next?.probabilities);
    // Generated positions: our greedy tokens fed back, so every position is
    // compared even after a near-tie.
    const genRef = [];
    let last = res[ours.tokens.length - 1]?.next;
    for (let i = 0; i < ours.gen.length; i++) {
      genRef.push(last?.probabilities);
      if (i + 1 < ours.gen.length) {
        const r = await seq.controlledEvaluate([[ours.gen[i][0][0], { generateNext: { probabilities: true } }]]);
        last = r[0]?.next;
      }
    }
    await ctx.dispose();
    data.push({ ours, refTokens: withBos, promptRef, genRef });
  }
  await model.dispose();
  return data;
}

// avx2/node_modules: the package with only the haswell (AVX2) CPU variant
// (scripts/referee.sh), so the reference does not move with the CPU.
const NLC = existsSync(path.join(here, "avx2/node_modules/node-llama-cpp/dist/index.js"))
  ? "avx2/node_modules" : "node_modules";
const { getLlama, LlamaLogLevel } = await import(path.join(here, NLC, "node-llama-cpp/dist/index.js"));
const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
let sample = null;
for (const [model, nPrompts, kv] of RUNS) {
  const file = path.join(MODELS, `${model}.gguf`);
  const name = nPrompts < 0 ? `${model} (long prompt)` : kv === "f32" ? model : `${model} (F16 KV)`;
  const { tol: typeTol, maxTies } = tolFor(nPrompts < 0 ? name : model);
  const tol = typeTol + (kv === "f32" ? 0 : TOL.kv_types.F16.tolerance);
  let verdicts;
  if (!existsSync(file)) {
    verdicts = [[false, `${name}: model file exists (${file}; make models)`], [false, `${name}: greedy`],
                [false, `${name}: top-5`], [false, `${name}: positions`]];
  } else {
    const data = await collect(llama, file, nPrompts, kv);
    verdicts = judge(name, data, tol, maxTies);
    if (!sample && data.length === PROMPTS.length) sample = { name, data, tol };
  }
  for (const [cond, what] of verdicts) ok(cond, what);
}
await llama.dispose();

// ====== The judge can fail: doctored copies of one model's data ======
const clone = (data) => data.map((d) => ({
  ours: { tokens: [...d.ours.tokens], prompt: d.ours.prompt.map((t) => t.map((e) => [...e])),
          gen: d.ours.gen.map((t) => t.map((e) => [...e])) },
  refTokens: [...d.refTokens], promptRef: [...d.promptRef], genRef: [...d.genRef],
}));
// shiftLogit(top, k, delta): our distribution with token k's logit raised by delta.
function shiftLogit(top, k, delta) {
  const p = top[k][1], z = 1 - p + p * Math.exp(delta);
  return top.map(([id, q], j) => [id, (j === k ? q * Math.exp(delta) : q) / z]);
}
const SELF = sample ? [
  ["a logit shifted at one generated position (its probability moved by 2x the tolerance) fails the top-5 check", 2, (d, tol) => {
    const top = d[1].ours.gen[10], p = top[0][1];
    d[1].ours.gen[10] = shiftLogit(top, 0, (2 * tol) / (p * (1 - p)));
  }],
  ["a position without a reference fails the count", 3, (d) => { d[2].promptRef[1] = undefined; }],
  ["a greedy divergence that is no near-tie fails the greedy check", 1, (d) => {
    const ref = d[0].genRef[5], fifth = [...ref.keys()][4];
    d[0].ours.gen[5] = [[fifth, ref.get(fifth)], ...d[0].ours.gen[5].slice(1)];
  }],
  ["near-ties over the limit fail the greedy check", 1, (d, tol) => {
    for (let k = 0; k <= TOL.max_near_ties_per_file; k++) {
      // llama.cpp's first two candidates within half the tolerance, ours the second.
      const ref = d[3].genRef[k], [a, b] = [...ref.keys()];
      const m = new Map(ref), mid = (ref.get(a) + ref.get(b)) / 2;
      m.set(a, mid + tol / 4);
      m.set(b, mid - tol / 4);
      d[3].genRef[k] = m;
      d[3].ours.gen[k] = [[b, ref.get(b)], ...d[3].ours.gen[k].filter(([id]) => id !== b)];
    }
  }],
  ["a different prompt tokenization fails the tokenization check", 0, (d) => { d[4].refTokens[1] += 1; }],
] : [];
for (const [what, idx, doctor] of SELF) {
  const d = clone(sample.data);
  doctor(d, sample.tol);
  const v = judge(sample.name, d, sample.tol, TOL.max_near_ties_per_file, true);
  ok(!v[idx][0], `referee self-test (${sample.name}): ${what}`,
     v.map(([c, w]) => `${c ? "ok" : "not ok"}: ${w}`).join(" | "));
}
if (!sample) for (let k = 0; k < N_SELF; k++) ok(false, "referee self-test: no model data to doctor");
process.exit(failures ? 1 : 0);
