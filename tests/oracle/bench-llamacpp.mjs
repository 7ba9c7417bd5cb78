#!/usr/bin/env node
// llama.cpp (node-llama-cpp prebuilt CPU build) on the same workload as
// `pd-run --bench`: prefill tok/s of one 512-token prompt, and decode tok/s
// at batch 1, 8 and 32 (16-token prompts, 48 new tokens each, counted after
// the first). Prints one JSON object. Usage: bench-llamacpp.mjs MODEL [THREADS]
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const { getLlama, LlamaLogLevel } = await import(path.join(here, "node_modules/node-llama-cpp/dist/index.js"));
const [file, threadsArg] = process.argv.slice(2);
const threads = Number(threadsArg || 2);
const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
const model = await llama.loadModel({ modelPath: file, gpuLayers: 0 });
const V = model.tokens ? model.fileInsights?.vocabularySize ?? 32000 : 32000;
const tok = (i) => 3 + ((i * 2654435761) % (Math.min(V, 32000) - 3));

const now = () => Number(process.hrtime.bigint()) / 1e9;
async function prefill() {
  const ctx = await model.createContext({ contextSize: 1024, batchSize: 512, threads, flashAttention: false });
  const seq = ctx.getSequence();
  const prompt = Array.from({ length: 512 }, (_, i) => tok(i));
  await seq.evaluateWithoutGeneratingNewTokens(prompt.slice(0, 64));
  await seq.clearHistory();
  let best = Infinity;
  for (let r = 0; r < 2; r++) {
    const t0 = now();
    await seq.evaluateWithoutGeneratingNewTokens(prompt);
    best = Math.min(best, now() - t0);
    await seq.clearHistory();
  }
  await ctx.dispose();
  return 512 / best;
}

async function decode(batch) {
  const ctx = await model.createContext({ contextSize: 128 * batch, sequences: batch, batchSize: 512, threads, flashAttention: false });
  const seqs = Array.from({ length: batch }, () => ctx.getSequence());
  await Promise.all(seqs.map((s, i) => s.evaluateWithoutGeneratingNewTokens(Array.from({ length: 16 }, (_, j) => tok(i * 131 + j * 7919)))));
  let t0 = 0, counted = 0;
  await Promise.all(seqs.map(async (s, i) => {
    let n = 0;
    for await (const _t of s.evaluate([tok(i * 17 + 3)], { temperature: 0 })) {
      n++;
      if (n === 1 && t0 === 0) t0 = now();
      else if (n > 1) counted++;
      if (n >= 48) break;
    }
  }));
  const dt = now() - t0;
  await ctx.dispose();
  return counted / dt;
}

const out = { prefill_tok_s: await prefill() };
for (const b of [1, 8, 32]) out[`decode_b${b}_tok_s`] = await decode(b);
out.threads = threads;
console.log(JSON.stringify(out));
await model.dispose();
await llama.dispose();
