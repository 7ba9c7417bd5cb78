#!/usr/bin/env node
// Turns the JSON of scripts/bench-engine.sh into markdown tables, one per
// thread count: each figure's range over the rounds, llama.cpp's range, the
// range of the ratio ours/theirs over the back-to-back pairs of each round
// (ours before and after theirs), and the fraction of this machine's limits
// measured in the same run.
//   bench-report.mjs OUT_DIR [native]
import { existsSync, readdirSync, readFileSync } from "node:fs";

const [dir, kind] = process.argv.slice(2);
const native = kind === "native";
// A run that was cut short leaves an empty or partial file: it counts as absent.
const read = (p) => {
  try {
    return JSON.parse(readFileSync(p, "utf8"));
  } catch {
    return null;
  }
};
const figs = ["prefill_tok_s", "decode_b1_tok_s", "decode_b8_tok_s", "decode_b32_tok_s"];
const name = { prefill_tok_s: "prefill 512", decode_b1_tok_s: "decode b1", decode_b8_tok_s: "decode b8", decode_b32_tok_s: "decode b32" };
const range = (xs, d = 1) => {
  const v = xs.filter((x) => x > 0);
  if (v.length === 0) return "n/a";
  const lo = Math.min(...v), hi = Math.max(...v);
  return lo.toFixed(d) === hi.toFixed(d) ? lo.toFixed(d) : `${lo.toFixed(d)}–${hi.toFixed(d)}`;
};

console.log(`Reference: ${native ? "llama.cpp built natively (llama-bench -p 512 -n 0; llama-batched-bench -npp 16 -ntg 48 -npl 1,8,32)" : "llama.cpp from npm (node-llama-cpp prebuilt): NOT a native build, not a speed bar"}.`);
for (const f of ["load-start.txt", "load-end.txt"])
  if (existsSync(`${dir}/${f}`)) console.log(readFileSync(`${dir}/${f}`, "utf8").trim().replace(/^== /, "") + (f === "load-start.txt" ? " (start)" : " (end)"));

for (const td of readdirSync(dir).filter((d) => /^t\d+$/.test(d)).sort()) {
  const d = `${dir}/${td}`;
  const lims = ["limits-before.json", "limits-after.json"].map((f) => read(`${d}/${f}`)).filter((x) => x);
  const bw = Math.max(...lims.map((l) => l.mem_read_gb_s)), gf = Math.max(...lims.map((l) => l.sgemm_gflops));
  console.log(`\n### ${td.slice(1)} thread(s)\n`);
  console.log(`Limits in this run (before / after): memory read ${lims.map((l) => l.mem_read_gb_s.toFixed(1)).join(" / ")} GB/s, ` +
    `sgemm ${lims.map((l) => l.sgemm_gflops.toFixed(1)).join(" / ")} GFLOPS; fractions below use the higher.\n`);
  const hasBefore = readdirSync(d).some((f) => f.includes(".before."));
  console.log(`| model | figure | pdserve tok/s | llama.cpp tok/s | pdserve / llama.cpp | of limit |${hasBefore ? " before tok/s | before / llama.cpp |" : ""}`);
  console.log(`|---|---|---|---|---|---|${hasBefore ? "---|---|" : ""}`);
  const models = [...new Set(readdirSync(d).filter((f) => f.endsWith(".json") && f.includes(".pd.")).map((f) => f.split(".pd.")[0]))].sort();
  for (const m of models) {
    const files = readdirSync(d);
    const rounds = [...new Set(files.filter((f) => f.startsWith(`${m}.ref.`)).map((f) => f.split(".")[f.split(".").length - 2]))];
    const pd = files.filter((f) => f.startsWith(`${m}.pd.`)).map((f) => read(`${d}/${f}`)).filter((x) => x);
    const ref = rounds.map((r) => read(`${d}/${m}.ref.${r}.json`)).filter((x) => x);
    if (pd.length === 0) continue;
    for (const k of figs) {
      const ratios = [];
      for (const r of rounds) {
        const theirs = read(`${d}/${m}.ref.${r}.json`)?.[k];
        for (const s of ["a", "b"]) {
          const ours = read(`${d}/${m}.pd.${r}.${s}.json`)?.[k];
          if (ours > 0 && theirs > 0) ratios.push(ours / theirs);
        }
      }
      const ours = pd.map((x) => x[k]);
      let frac = "";
      const p0 = pd[0];
      if (k === "decode_b1_tok_s") frac = `${range(ours.map((v) => (100 * v * p0.weight_bytes) / (bw * 1e9)), 0)} % of read GB/s`;
      // A prefill computes the logits of its last row only (pd-run and the
      // prefill worker alike): the output head once per prompt, not per token.
      const head = p0.head_params ?? 0, np = p0.prefill_tokens ?? 512;
      const pfFlops = 2 * (p0.n_params - head) + (2 * head) / np;
      if (k === "prefill_tok_s" && /f32/.test(m)) frac = `${range(ours.map((v) => (100 * v * pfFlops) / (gf * 1e9)), 0)} % of sgemm`;
      if (k === "decode_b32_tok_s") frac = `${range(ours.map((v) => (v * 2 * p0.n_params) / 1e9), 0)} GFLOPS`;
      let before = "";
      if (hasBefore) {
        const bs = [], br = [];
        for (const r of rounds) {
          const v = read(`${d}/${m}.before.${r}.json`)?.[k], theirs = read(`${d}/${m}.ref.${r}.json`)?.[k];
          if (!(v > 0)) continue;
          bs.push(v);
          if (theirs > 0) br.push(v / theirs);
        }
        before = ` ${range(bs)} | ${range(br, 2)} |`;
      }
      console.log(`| ${m} | ${name[k]} | ${range(ours)} | ${range(ref.map((x) => x[k]))} | ${range(ratios, 2)} | ${frac} |${before}`);
    }
  }
}
console.log("\nRatios: each round runs pdserve, llama.cpp, (pdserve before,) pdserve back to back; a ratio is one pdserve run over the llama.cpp run of its round.");
console.log("Limits: decode b1 counts weight bytes read per token against the STREAM-style read bandwidth; prefill counts the weight products' FLOPs per token (2 x the layers' parameters, plus the output head once per 512-token prompt: only the last row's logits are computed; attention's FLOPs are not counted) against OpenBLAS sgemm (F32 models); decode b32 counts 2 x params per token (every row's logits).");
