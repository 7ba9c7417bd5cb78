#!/usr/bin/env node
// Turns the JSON of scripts/bench-engine.sh into a markdown table:
// each figure, its roofline (from the measured limits), the fraction of the
// roofline, and the ratio to llama.cpp.
import { existsSync, readFileSync } from "node:fs";
const dir = process.argv[2];
const lim = JSON.parse(readFileSync(`${dir}/limits.json`, "utf8"));
const rows = [];
for (const m of ["llama-110M-f32", "tinyllama-1.1B-q8_0"]) {
  const pd = JSON.parse(readFileSync(`${dir}/${m}.pd.json`, "utf8"));
  const lc = JSON.parse(readFileSync(`${dir}/${m}.llamacpp.json`, "utf8"));
  const sgPath = `${dir}/${m}.pd-sgemm.json`;
  const sg = existsSync(sgPath) ? JSON.parse(readFileSync(sgPath, "utf8")) : null;
  const flopsPerTok = 2 * pd.n_params;
  const bytes = pd.weight_bytes;
  const roof = {
    prefill_tok_s: (lim.sgemm_gflops * 1e9) / flopsPerTok,
    decode_b1_tok_s: Math.min((lim.mem_read_gb_s * 1e9) / bytes, (lim.sgemm_gflops * 1e9) / flopsPerTok),
    decode_b8_tok_s: Math.min((8 * lim.mem_read_gb_s * 1e9) / bytes, (lim.sgemm_gflops * 1e9) / flopsPerTok),
    decode_b32_tok_s: Math.min((32 * lim.mem_read_gb_s * 1e9) / bytes, (lim.sgemm_gflops * 1e9) / flopsPerTok),
  };
  const lcs = (k) => (lc[k] > 0 ? lc[k].toFixed(1) : "n/a");
  const ratio = (v, k) => (lc[k] > 0 ? (v / lc[k]).toFixed(2) : "n/a");
  for (const k of ["prefill_tok_s", "decode_b1_tok_s", "decode_b8_tok_s", "decode_b32_tok_s"]) {
    rows.push(`| ${m} | ${k.replace("_tok_s", "")} | ${pd[k].toFixed(1)} | ${roof[k].toFixed(1)} | ${(100 * pd[k] / roof[k]).toFixed(0)} % | ${lcs(k)} | ${ratio(pd[k], k)} |`);
    if (k === "prefill_tok_s" && sg)
      rows.push(`| ${m} | prefill, sgemm (--no-batch-invariant) | ${sg[k].toFixed(1)} | ${roof[k].toFixed(1)} | ${(100 * sg[k] / roof[k]).toFixed(0)} % | ${lcs(k)} | ${ratio(sg[k], k)} |`);
  }
  rows.push(`| ${m} | batch 8 step cost / batch 1 step cost | ${((8 / pd.decode_b8_tok_s) / (1 / pd.decode_b1_tok_s)).toFixed(2)}x | | | | |`);
}
console.log(`Limits measured in this run: memory read ${lim.mem_read_gb_s.toFixed(1)} GB/s, sgemm ${lim.sgemm_gflops.toFixed(1)} GFLOPS (${lim.threads} threads).\n`);
console.log("| model | figure | pdserve tok/s | roofline tok/s | of roofline | llama.cpp (npm build) tok/s | pdserve / llama.cpp |");
console.log("|---|---|---|---|---|---|---|");
for (const r of rows) console.log(r);
console.log("\nRoofline: prefill = sgemm GFLOPS / (2 x params); decode batch B = min(B x GB/s / weight bytes, sgemm GFLOPS / (2 x params)).");
