#!/usr/bin/env node
// A natively built llama.cpp on the workload of `pd-run --bench`, with its own
// benchmark tools: prefill tok/s of one 512-token prompt
// (`llama-bench -p 512 -n 0`) and decode tok/s at batch 1, 8 and 32
// (`llama-batched-bench -npp 16 -ntg 48 -npl 1,8,32`: 16-token prompts, 48 new
// tokens per sequence). llama.cpp's own defaults otherwise (flash attention
// "auto", F16 KV cache, its CPU "extra" buffer types such as repacked quants):
// the figures a user gets from their own build. Prints one JSON object in the
// shape of tests/oracle/bench-llamacpp.mjs.
//   bench-llamacpp-native.mjs BIN_DIR MODEL [THREADS]
// BIN_DIR holds llama-bench and llama-batched-bench (LLAMA_CPP_DIR/build/bin).
import { execFileSync } from "node:child_process";
import path from "node:path";

const [binDir, file, threadsArg] = process.argv.slice(2);
if (!binDir || !file) {
  console.error("usage: bench-llamacpp-native.mjs BIN_DIR MODEL [THREADS]");
  process.exit(2);
}
const threads = String(Number(threadsArg || 2));
const run = (tool, args) =>
  execFileSync(path.join(binDir, tool), args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], maxBuffer: 64 << 20 });

// llama-bench -o json: an array of test records; avg_ts is tokens/s averaged
// over its repetitions (-r 3, after its warm-up run).
const pp = JSON.parse(run("llama-bench", ["-m", file, "-p", "512", "-n", "0", "-t", threads, "-r", "3", "-o", "json"]));
const ppRec = pp.find((r) => r.n_prompt === 512 && r.n_gen === 0);
if (!ppRec) throw new Error("llama-bench printed no 512-token prompt record");

// llama-batched-bench --output-format jsonl: one line per batch size, after
// its log lines; speed_tg = pl * tg / t_tg. 32 sequences of 16 + 48 tokens
// need 2048 cache cells.
const bb = run("llama-batched-bench", ["-m", file, "-c", "2048", "-b", "2048", "-ub", "512",
  "-npp", "16", "-ntg", "48", "-npl", "1,8,32", "-t", threads, "-tb", threads, "--output-format", "jsonl"]);
const recs = bb.split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l));
const tg = (pl) => {
  const r = recs.find((x) => x.pl === pl);
  if (!r) throw new Error(`llama-batched-bench printed no record for batch ${pl}`);
  return r.speed_tg;
};
console.log(JSON.stringify({
  source: "native",
  bin_dir: binDir,
  prefill_tok_s: ppRec.avg_ts,
  decode_b1_tok_s: tg(1),
  decode_b8_tok_s: tg(8),
  decode_b32_tok_s: tg(32),
  threads: Number(threads),
  flash_attn: recs[0]?.flash_attn,
  build_commit: ppRec.build_commit,
  cpu_info: ppRec.cpu_info,
}));
