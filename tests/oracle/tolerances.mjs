// tolerances.mjs -- the referee's tolerances (tolerances.json), stated once:
// t_referee.mjs checks every test model at its tensor type's tolerance, and
// the table in docs/models.md (between <!-- tolerances:begin --> and
// <!-- tolerances:end -->) is rendered from the same file, so the two cannot
// disagree (t_referee.mjs checks that the doc holds exactly this rendering).
//
//   node tests/oracle/tolerances.mjs --write docs/models.md   rewrite the table
//   node tests/oracle/tolerances.mjs --check docs/models.md   exit 1 if it differs
import { readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
export const TOL = JSON.parse(readFileSync(path.join(here, "tolerances.json"), "utf8"));

// The tensor type of a test model, from its file name: tiny-llama-spm-q8_0 -> Q8_0
// (a run's " (long prompt)" after the name is not part of it).
export function typeOf(name) {
  const t = name.replace(/ \(.*\)$/, "").split("-").pop().toUpperCase();
  if (!TOL.types[t]) throw new Error(`${name}: tensor type ${t} has no tolerance in tolerances.json`);
  return t;
}

// The tolerance a test model is checked at: the first group in
// tolerances.json's "groups" whose pattern matches the name and that states
// the model's type, else the type's own. Returns { type, tol, group,
// maxTies } (maxTies: the group's near-ties allowed per file, if it says).
export function tolFor(name) {
  const type = typeOf(name);
  for (const g of TOL.groups ?? [])
    if (new RegExp(g.match).test(name) && g.types[type])
      return { type, tol: g.types[type].tolerance, group: g.name,
               maxTies: g.max_near_ties_per_file ?? TOL.max_near_ties_per_file };
  return { type, tol: TOL.types[type].tolerance, group: null, maxTies: TOL.max_near_ties_per_file };
}

const BEGIN = "<!-- tolerances:begin (generated from tests/oracle/tolerances.json by tests/oracle/tolerances.mjs) -->";
const END = "<!-- tolerances:end -->";

const sci = (x) => x.toExponential(1).replace(/\.0e/, "e");

export function renderTable() {
  const rows = [
    "| tensor type | top-5 probability tolerance | worst observed | near-ties allowed per file |",
    "|---|---|---|---|",
  ];
  for (const [t, v] of Object.entries(TOL.types))
    rows.push(`| ${t} | ${sci(v.tolerance)} | ${sci(v.worst_observed)} (${v.worst_file}) | ${TOL.max_near_ties_per_file} |`);
  for (const [t, v] of Object.entries(TOL.kv_types ?? {}))
    if (!t.startsWith("_"))
      rows.push(`| + ${t} KV cache (added to the type's) | ${sci(v.tolerance)} | ${sci(v.worst_observed)} (${v.worst_file}) | ${TOL.max_near_ties_per_file} |`);
  for (const g of TOL.groups ?? []) {
    const ties = g.max_near_ties_per_file === undefined ? ""
      : ` At most ${g.max_near_ties_per_file} near-ties per file.`;
    rows.push("", `${g.name} (\`${g.match}\`): ${g.why}${ties}`, "",
      "| tensor type | top-5 probability tolerance | worst observed |", "|---|---|---|");
    for (const [t, v] of Object.entries(g.types))
      rows.push(`| ${t} | ${sci(v.tolerance)} | ${sci(v.worst_observed)} (${v.worst_file}) |`);
  }
  const ties = `A near-tie is a greedy position where llama.cpp's own probabilities of its choice and ours ` +
    `differ by less than the tolerance (rounding order may pick either); at most ${TOL.max_near_ties_per_file} ` +
    `per file (5 prompts x 64 greedy tokens) are allowed, each printed (observed: at most ${TOL.near_ties_observed}).`;
  return [BEGIN, ...rows, "", `${TOL.headroom} ${ties}`, END].join("\n");
}

// The doc's block between the markers, or null.
export function docBlock(text) {
  const a = text.indexOf("<!-- tolerances:begin"), b = text.indexOf(END);
  return a < 0 || b < a ? null : text.slice(a, b + END.length);
}

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  const [mode, file] = process.argv.slice(2);
  const text = readFileSync(file, "utf8"), block = docBlock(text), want = renderTable();
  if (mode === "--write") {
    if (block === null) {
      console.error(`${file}: no <!-- tolerances:begin --> ... <!-- tolerances:end --> block`);
      process.exit(1);
    }
    writeFileSync(file, text.replace(block, () => want)); // want holds "$" (regex anchors)
  } else if (mode === "--check") {
    if (block !== want) {
      console.error(`${file}: the tolerance table differs from tests/oracle/tolerances.json ` +
        "(node tests/oracle/tolerances.mjs --write " + file + ")");
      process.exit(1);
    }
  } else {
    console.error("usage: tolerances.mjs --write|--check FILE");
    process.exit(2);
  }
}
