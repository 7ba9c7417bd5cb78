// check_streams.mjs -- checks pd-cli --json streams against pd-run's tokens.
//
//   node tests/cluster/check_streams.mjs DIR N LABEL
//
// For i in 0..N-1: DIR/out_i.jsonl (pd-cli generate --json) and DIR/ref_i.txt
// (pd-run --tokens). Prints two TAP lines:
//   "ok - LABEL: whole streams"  every stream has exactly one final chunk, as
//       its last line, chunk indexes contiguous from 0, usage counts equal to
//       the tokens received, no error;
//   "ok - LABEL: token-identical to pd-run"  the ids equal pd-run's (pd-run
//       does not print an end-of-generation token; a stream that ended with
//       finish_reason "eos" is compared without its last token).
import { readFileSync, existsSync } from "node:fs";

const [dir, nStr, label] = process.argv.slice(2);
const n = Number(nStr);
let whole = 0, same = 0;
const problems = [];

for (let i = 0; i < n; i++) {
  const outPath = `${dir}/out_${i}.jsonl`;
  const refPath = `${dir}/ref_${i}.txt`;
  if (!existsSync(outPath) || !existsSync(refPath)) {
    problems.push(`${i}: missing output or reference`);
    continue;
  }
  const lines = readFileSync(outPath, "utf8").split("\n").filter((l) => l.length > 0);
  let chunks;
  try {
    chunks = lines.map((l) => JSON.parse(l));
  } catch (e) {
    problems.push(`${i}: unparsable output: ${e.message}`);
    continue;
  }
  const finals = chunks.filter((c) => c.final);
  let next = 0, okIdx = true;
  const toks = [];
  for (const c of chunks) {
    if (c.tokens.length > 0 && c.index !== next) okIdx = false;
    next += c.tokens.length;
    toks.push(...c.tokens);
  }
  const last = chunks[chunks.length - 1];
  const fin = finals[0];
  if (finals.length !== 1 || last !== fin) {
    problems.push(`${i}: ${finals.length} final chunks`);
  } else if (fin.error) {
    problems.push(`${i}: error ${fin.error.code}: ${fin.error.message}`);
  } else if (!okIdx) {
    problems.push(`${i}: chunk indexes not contiguous`);
  } else if (!fin.usage || fin.usage.completion_tokens !== toks.length) {
    problems.push(`${i}: usage ${JSON.stringify(fin.usage)} but ${toks.length} tokens`);
  } else {
    whole++;
  }
  const ref = readFileSync(refPath, "utf8").trim().split(/\s+/).filter((s) => s.length).map(Number);
  const got = fin && fin.finish_reason === "eos" ? toks.slice(0, -1) : toks;
  if (got.length === ref.length && got.every((t, k) => t === ref[k])) {
    same++;
  } else {
    let k = 0;
    while (k < got.length && k < ref.length && got[k] === ref[k]) k++;
    problems.push(`${i}: tokens differ at ${k} (got ${got.length}, pd-run ${ref.length}, ` +
      `finish ${fin ? fin.finish_reason : "?"}): got ${got.slice(k, k + 4)} want ${ref.slice(k, k + 4)}`);
  }
}
for (const p of problems.slice(0, 20)) console.log(`# ${p}`);
console.log(`${whole === n ? "ok" : "not ok"} - ${label}: whole streams (${whole}/${n})`);
console.log(`${same === n ? "ok" : "not ok"} - ${label}: token-identical to pd-run (${same}/${n})`);
