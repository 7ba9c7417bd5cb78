#!/usr/bin/env node
// Writes a small trace in the Mooncake trace format (one JSON object per
// line: timestamp in ms, input_length, output_length, hash_ids), made up to
// look like chat traffic with shared prompts, for pd-bench
// --dataset-name mooncake (docs/benchmarks.md). Deterministic: the same
// arguments give the same file.
//
//   node scripts/make-mooncake-trace.mjs [--block-size 64] [--sessions 8]
//        [--rate 1] [--seed 1] > client/bench/traces/mooncake-small.jsonl
//
// The shape (Mooncake's own traces are conversations and tool calls whose
// requests share leading blocks):
//   - every request starts with the same 2-block system prompt (hash ids 0, 1);
//   - a session adds its own 1..3 block instructions, then turns: each turn's
//     prompt is the previous turn's prompt, its answer and a new question, so
//     its hash_ids extend the previous turn's (the answer and the question are
//     new blocks; the previous prompt's last, partial block is rewritten, so
//     it gets a new id as it would in a real cache);
//   - sessions interleave; arrivals are Poisson at --rate per second.
// hash_ids name blocks of --block-size tokens: pass the same number to
// pd-bench (--mooncake-block-size). Mooncake's published traces use 512.
import process from "node:process";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((a, v, i, all) => (i % 2 === 0 ? [...a, [v.replace(/^--/, ""), all[i + 1]]] : a), []),
);
const bs = Number(args["block-size"] ?? 64);
const sessions = Number(args.sessions ?? 8);
const rate = Number(args.rate ?? 1);
let seed = BigInt(args.seed ?? 1);

function rnd() { // splitmix64 -> [0, 1)
  seed = (seed + 0x9e3779b97f4a7c15n) & 0xffffffffffffffffn;
  let z = seed;
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & 0xffffffffffffffffn;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & 0xffffffffffffffffn;
  z ^= z >> 31n;
  return Number(z >> 11n) / 2 ** 53;
}
const between = (lo, hi) => lo + Math.floor(rnd() * (hi - lo + 1));

let nextId = 2; // 0, 1: the shared system prompt
const conv = [];
for (let s = 0; s < sessions; s++) {
  const own = [];
  for (let k = between(1, 3); k > 0; k--) own.push(nextId++);
  conv.push({ ids: [0, 1, ...own], len: (2 + own.length) * bs, turns: between(3, 6) });
}
// Turns in a random interleaving of the sessions, each session in order.
const order = [];
for (let s = 0; s < sessions; s++) for (let t = 0; t < conv[s].turns; t++) order.push(s);
for (let i = order.length - 1; i > 0; i--) {
  const j = Math.floor(rnd() * (i + 1));
  [order[i], order[j]] = [order[j], order[i]];
}
let t = 0;
const lines = [];
for (const s of order) {
  const c = conv[s];
  const question = between(bs / 4, 2 * bs);
  // the prompt: what the session holds so far, then the question
  const len = c.len + question;
  const full = Math.floor(c.len / bs); // blocks of the previous prompt still whole
  const ids = c.ids.slice(0, full);
  while (ids.length * bs < len) ids.push(nextId++);
  const out = between(8, 48);
  lines.push(JSON.stringify({ timestamp: Math.round(t), input_length: len, output_length: out, hash_ids: ids }));
  // the next turn sees this prompt and its answer
  c.len = len + out;
  c.ids = ids.slice(0, Math.floor(len / bs));
  t += (-Math.log(1 - rnd()) / rate) * 1000;
}
process.stdout.write(lines.join("\n") + "\n");
