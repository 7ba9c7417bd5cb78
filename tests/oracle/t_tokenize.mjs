#!/usr/bin/env node
// t_tokenize.mjs -- our tokenizer against llama.cpp's, token for token.
//
// For every GGUF in $MODELS (default build/models), plus vocabulary-only
// GGUFs this script makes itself (SPM and BPE with pre gpt-2, llama-bpe,
// qwen2, smollm and none=default, built by `pd-tokenize --mkvocab` from the
// GPT-2 ranks), it tokenizes fixed and seeded-random strings with llama.cpp
// (node-llama-cpp, prebuilt CPU binaries, special tokens not parsed, no BOS)
// and with our pd-tokenize (--no-special) and requires identical ids. It
// also compares every token's piece (llama.cpp's detokenize of one token)
// with ours (pd-tokenize --pieces).
//
// Prints TAP lines "ok - ..." / "not ok - ..."; the first mismatch of each
// check is printed in detail as '#' lines.
//
// Env: MODELS (model dir), PD_BIN (our binaries, default build/bin),
//      PD_GPT2_RANKS (ranks file; default $BUILD/data/gpt2-ranks.txt, else
//      exported into a temp dir).
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "../..");
process.chdir(root);
const BIN = process.env.PD_BIN || "build/bin";
const MODELS = process.env.MODELS || "build/models";
const TOKENIZE = join(BIN, "pd-tokenize");

let failures = 0;
function ok(cond, name, detail) {
    if (cond) {
        console.log(`ok - ${name}`);
    } else {
        failures++;
        console.log(`not ok - ${name}`);
        for (const l of String(detail ?? "").split("\n")) if (l) console.log(`# ${l}`);
    }
}

if (!existsSync(TOKENIZE)) {
    ok(false, "pd-tokenize is built", `${TOKENIZE} not found (make BUILD=... all)`);
    process.exit(1);
}
const nlc = join(here, "node_modules/node-llama-cpp/dist/index.js");
if (!existsSync(nlc)) {
    ok(false, "node-llama-cpp is installed", `${nlc} missing (scripts/referee.sh)`);
    process.exit(1);
}
const { getLlama } = await import(pathToFileURL(nlc).href);
const llama = await getLlama({ gpu: false, build: "never", logLevel: "error" });

// ---- test strings ----
const FIXED = [
    "Hello world",
    "Hello, world! How are you today?",
    " leading space",
    "  two leading spaces",
    "double  space   triple    four",
    "trailing space ",
    "trailing spaces   ",
    "12345 6789",
    "3.14159 1,000,000 2024-11-24 0x1F",
    "1234567890123",
    "Punctuation: !@#$%^&*()_+-=[]{}|;':\",./<>?`~",
    "...!!!???,,,;;;",
    "I'm they'LL we've she'd it's YOU'RE don't O'Neil",
    "'s 't 're 'S 'T 'RE 'Ve 'mM",
    "emoji 😀 smile 🎉🎉 party",
    "family 👨‍👩‍👧‍👦 and 👍🏽 and 🏳️‍🌈",
    "中文字符测试，你好世界。",
    "日本語のテキスト と カタカナ",
    "한국어 텍스트",
    "line one\nline two\n\nline four",
    "\n\n\nleading newlines",
    "tabs\there\t\tand\t",
    "\r\nwindows\r\nlines\r\n",
    "mixed: Ελληνικά, русский, العربية, עברית, हिन्दी",
    "Straße café naïve résumé Ångström",
    "combining e\u0301 a\u0308 o\u0302",
    "nbsp\u00a0here, ideographic\u3000space, thin\u2009space",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "Pneumonoultramicroscopicsilicovolcanoconiosis",
    "a",
    " ",
    "   ",
    "\n",
    "<s> </s> <unk> <|endoftext|> <0x41>",
    "def f(x):\n    return x ** 2  # comment\n",
    "Arabic-Indic ٣٤٥ and superscript ² ³ and roman Ⅻ",
    "math ∑∫√∞ ≠ ≤ ≥ and arrows → ← ↑",
    "zero\u200bwidth\u200djoiner\u200c",
    "ÿþýüûúùø ¡¢£¤¥ ®¯°±",
];

function rng(seed) {
    let s = seed >>> 0;
    return () => {
        s = (s + 0x6D2B79F5) >>> 0;
        let t = s;
        t = Math.imul(t ^ (t >>> 15), t | 1);
        t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
        return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
}
const POOL = [
    ..."abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", ..."0123456789",
    " ", " ", " ", " ", "\n", "\t", "\r", "'", "'s", "'LL", ..."!?.,;:-_()[]{}<>\"`~@#$%^&*+=|\\/",
    "é", "ß", "ñ", "ø", "Ω", "д", "ж", "中", "文", "日", "本", "한", "글", "ع", "ב", "ह",
    "😀", "🎉", "👨‍👩‍👧", "👍🏽", "\u0301", "\u00a0", "\u3000", "\u2009", "٣", "²", "Ⅻ", "∑", "→",
    "the", " the", "ing", " and", "tion", "  ", "\n\n", "123", "4567",
    "\u00a0\u00a0", "\r\n", " '", "''", "'s'", "--", "...", "1,234", "\u0663\u0664", "x\u00b2",
    "\u0e44\u0e17\u0e22", "\u0939\u093f\u0928\u094d\u0926\u0940", "\u05e9\u05b8\u05c1",
    "\u2764\ufe0f", "\ud83c\uddfa\ud83c\uddf8", "1\ufe0f\u20e3", "\ufeff", "\u200b", "\u0001",
    "\u007f", "\ue000", "\u0378", "\ud803\udd40" /* U+10D40: Unicode 16, undefined for llama.cpp */,
    "\ud840\udc00" /* U+20000 */, "\ud835\udd18\ud835\udd2b", "\uff21\uff22\uff11\uff12",
    "\u1100\u1161", "\u0085", "\u2028", "\u3000\u3000", "\t\t", " \n ", "'ll", "'D",
];
function randomStrings(n, seed) {
    const r = rng(seed);
    const out = [];
    for (let i = 0; i < n; i++) {
        const len = 1 + Math.floor(r() * 24);
        let s = "";
        for (let k = 0; k < len; k++) s += POOL[Math.floor(r() * POOL.length)];
        out.push(s);
    }
    return out;
}
const STRINGS = [...FIXED, ...randomStrings(600, 42)];

// ---- our side ----
function oursTokenize(path, strings) {
    const input = strings.map((s) => Buffer.from(s, "utf8").toString("hex")).join("\n") + "\n";
    const r = spawnSync(TOKENIZE, ["-m", path, "--no-special"], { input, maxBuffer: 1 << 28 });
    if (r.status !== 0) throw new Error(`pd-tokenize failed: ${r.stderr}`);
    const lines = r.stdout.toString().split("\n");
    return strings.map((_, i) => {
        const l = lines[i] ?? "";
        if (l.startsWith("ERR")) return l;
        return l === "" ? [] : l.split(" ").map(Number);
    });
}
function oursPieces(path) {
    const r = spawnSync(TOKENIZE, ["-m", path, "--pieces"], { maxBuffer: 1 << 28 });
    if (r.status !== 0) throw new Error(`pd-tokenize --pieces failed: ${r.stderr}`);
    return r.stdout.toString().split("\n").map((h) => Buffer.from(h, "hex"));
}

const show = (s) => JSON.stringify(s);
function firstDiff(a, b) {
    let i = 0;
    while (i < a.length && i < b.length && a[i] === b[i]) i++;
    return i;
}

// ---- our own vocabulary files ----
const work = mkdtempSync(join(tmpdir(), "pd-tok-"));
const models = [];
if (existsSync(MODELS)) {
    for (const f of readdirSync(MODELS).sort()) if (f.endsWith(".gguf")) models.push(join(MODELS, f));
}
// The plan: one result for the generated vocabularies, two (tokenization,
// pieces) for each model file: the test models, the 8 generated and the 4
// odd vocabularies below.
const N_MADE = 8, N_ODD = 4;
console.log(`1..${1 + 2 * (models.length + N_MADE + N_ODD)}`);
let ranks = process.env.PD_GPT2_RANKS;
if (!ranks && existsSync(join(process.env.BUILD || "build", "data/gpt2-ranks.txt")))
    ranks = join(process.env.BUILD || "build", "data/gpt2-ranks.txt");
try {
    if (!ranks || !existsSync(ranks)) {
        ranks = join(work, "gpt2-ranks.txt");
        execFileSync("node", ["tools/export-gpt2-ranks.mjs", ranks], { stdio: "inherit" });
    }
    const mk = [
        ["spm", 32000, "none", "vocab-spm-32000.gguf"],
        ["spm", 1000, "none", "vocab-spm-1000.gguf"],
        ["bpe", 50257, "gpt-2", "vocab-bpe-gpt2.gguf"],
        ["bpe", 4000, "gpt-2", "vocab-bpe-gpt2-4000.gguf"],
        ["bpe", 50257, "llama-bpe", "vocab-bpe-llama3.gguf"],
        ["bpe", 50257, "qwen2", "vocab-bpe-qwen2.gguf"],
        ["bpe", 50257, "smollm", "vocab-bpe-smollm.gguf"],
        ["bpe", 50257, "none", "vocab-bpe-default.gguf"],
    ];
    for (const [kind, n, pre, name] of mk) {
        const out = join(work, name);
        execFileSync(TOKENIZE, ["--mkvocab", ranks, kind, String(n), pre, out], { stdio: "inherit" });
        models.push(out);
    }
    ok(true, "made vocabulary-only GGUFs from the GPT-2 ranks");
} catch (e) {
    ok(false, "made vocabulary-only GGUFs from the GPT-2 ranks", e.message);
}

// ---- odd vocabularies, written by hand (GGUF v3, no tensors) ----
// They exercise what the GPT-2-derived ones do not: user-defined tokens cut
// out of the text (llama.cpp aborts on duplicate token texts, so there are
// none; pd_tok_load refuses them), an
// "<|endoftext|>" typed NORMAL (llama.cpp makes it control), unused tokens,
// empty tokens, merges without a space.
function writeGGUF(path, kvs) {
    const parts = [];
    const u32 = (v) => { const b = Buffer.alloc(4); b.writeUInt32LE(v >>> 0); return b; };
    const u64 = (v) => { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(v)); return b; };
    const f32 = (v) => { const b = Buffer.alloc(4); b.writeFloatLE(v); return b; };
    const str = (v) => { const d = Buffer.isBuffer(v) ? v : Buffer.from(v, "utf8"); return Buffer.concat([u64(d.length), d]); };
    const T = { u32: 4, i32: 5, f32: 6, bool: 7, str: 8, arr: 9 };
    const scalar = (t, v) => t === "u32" ? u32(v) : t === "i32" ? (() => { const b = Buffer.alloc(4); b.writeInt32LE(v); return b; })()
        : t === "f32" ? f32(v) : t === "bool" ? Buffer.from([v ? 1 : 0]) : str(v);
    parts.push(Buffer.from("GGUF"), u32(3), u64(0), u64(kvs.length));
    for (const [key, type, value] of kvs) {
        parts.push(str(key));
        if (type.startsWith("arr:")) {
            const et = type.slice(4);
            parts.push(u32(T.arr), u32(T[et]), u64(value.length), ...value.map((v) => scalar(et, v)));
        } else {
            parts.push(u32(T[type]), scalar(type, value));
        }
    }
    writeFileSync(path, Buffer.concat(parts));
}
const HPARAMS = [
    ["general.architecture", "str", "llama"],
    ["llama.context_length", "u32", 256], ["llama.embedding_length", "u32", 64],
    ["llama.block_count", "u32", 1], ["llama.feed_forward_length", "u32", 128],
    ["llama.attention.head_count", "u32", 4], ["llama.attention.head_count_kv", "u32", 4],
    ["llama.attention.layer_norm_rms_epsilon", "f32", 1e-5],
];
function oddSpm(path) {
    const toks = [["<unk>", 0, 2], ["<s>", 0, 3], ["</s>", 0, 3]];
    for (let b = 0; b < 256; b++) toks.push([`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`, 0, 6]);
    const U = "\u2581";
    const pieces = [U, ..."abcdefghijklmnopqrstuvwxyz", U + "h", "he", U + "he", "ll", "llo", "lo",
        U + "hel", U + "hello", "ab", "er", U + "t", U + "th", U + "the", "or", "wor", "ld", "world"];
    pieces.push("aa", "lll", "ll" + "o" + U);
    pieces.forEach((p, i) => toks.push([p, -(i % 4), 1])); /* many equal scores */
    toks.push(["<|user|>", 0, 4], [U + "world", 0, 4], ["zz", -1, 5], ["<|ctrl|>", 0, 3], ["", -2, 1]);
    writeGGUF(path, [...HPARAMS,
        ["tokenizer.ggml.model", "str", "llama"],
        ["tokenizer.ggml.tokens", "arr:str", toks.map((t) => t[0])],
        ["tokenizer.ggml.scores", "arr:f32", toks.map((t) => t[1])],
        ["tokenizer.ggml.token_type", "arr:i32", toks.map((t) => t[2])],
        ["tokenizer.ggml.bos_token_id", "u32", 1], ["tokenizer.ggml.eos_token_id", "u32", 2],
        ["tokenizer.ggml.unknown_token_id", "u32", 0]]);
}
function oddBpe(path, pre) {
    const single = [];
    for (let b = 0; b < 256; b++) {
        let c = b;
        if (b <= 0x20) c = 0x100 + b; else if (b >= 0x7f && b <= 0xa0) c = 0x100 + 33 + (b - 0x7f); else if (b === 0xad) c = 0x143;
        single.push(String.fromCodePoint(c));
    }
    const G = "\u0120";
    const merges = ["h e", "l l", "he ll", "hell o", G + " w", "o r", G + "w or", "l d", G + "wor ld", "a b", "1 2", "12 3", "noSpace", "a b"];
    const toks = [...single, "he", "ll", "hell", "hello", G + "w", "or", G + "wor", "ld", G + "world", "ab", "12", "123",
        "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool>",
        G + "xyz", "qq" /* no merges make these: only llama-bpe's ignore_merges finds them */];
    const types = toks.map((t) => t === "<|im_start|>" || t === "<tool>" ? 4 : t === "<|im_end|>" ? 3 : 1);
    writeGGUF(path, [...HPARAMS,
        ["tokenizer.ggml.model", "str", "gpt2"], ["tokenizer.ggml.pre", "str", pre],
        ["tokenizer.ggml.tokens", "arr:str", toks],
        ["tokenizer.ggml.token_type", "arr:i32", types],
        ["tokenizer.ggml.merges", "arr:str", merges],
        ["tokenizer.ggml.bos_token_id", "u32", toks.indexOf("<|endoftext|>")],
        ["tokenizer.ggml.eos_token_id", "u32", toks.indexOf("<|im_end|>")]]);
}
try {
    oddSpm(join(work, "odd-spm.gguf"));
    oddBpe(join(work, "odd-bpe-gpt2.gguf"), "gpt-2");
    oddBpe(join(work, "odd-bpe-llama3.gguf"), "llama-bpe");
    oddBpe(join(work, "odd-bpe-qwen2.gguf"), "qwen2");
    models.push(join(work, "odd-spm.gguf"), join(work, "odd-bpe-gpt2.gguf"),
        join(work, "odd-bpe-llama3.gguf"), join(work, "odd-bpe-qwen2.gguf"));
} catch (e) {
    ok(false, "wrote the odd vocabularies", e.message);
}
STRINGS.push("hello world", "<|user|>hello", "hi<|user|><|user|> there", " <|user|> ", "ab abab zz",
    "x\u2581world y", "<|im_start|>user\nhello world<|im_end|>\n", "a<tool>b <tool> <|endoftext|>",
    "<|ctrl|>", "123123 1234", " xyz qq", "xyz  xyz\nqq", "aaaaa aaa", "lllll llo llo ", "hellohello");

// llama.cpp's detokenize of BPE vocabularies whose pre-tokenizer keeps
// clean_up_tokenization_spaces rewrites " ." and the like; a piece matches
// when it equals llama.cpp's text as is or after that rewrite (a port of
// the three passes in llama_vocab::impl::detokenize).
function cleanSpaces(buf) {
    const t = Array.from(buf);
    const pass = (fn) => {
        const n = t.length;
        let total = n ? 1 : 0;
        for (let i = 1; i < n; i++) {
            const r = fn(i, n, total);
            i = r.i;
            total = r.total;
            t[total++] = r.x;
        }
        t.length = total;
    };
    const C = (ch) => ch.charCodeAt(0);
    pass((i, n, total) => {
        const x = t[i];
        if (t[i - 1] === C(" ") && [C("?"), C("!"), C("."), C(",")].includes(x)) total--;
        return { i, total, x };
    });
    pass((i, n, total) => {
        const x = t[i];
        if (x === C("'") && i + 1 < n && t[i - 1] === C(" ") && t[i + 1] === C(" ")) {
            total--;
            t[++i] = 0;
        }
        return { i, total, x };
    });
    pass((i, n, total) => {
        const x = t[i];
        if (t[i - 1] === C(" ") && x === C("'") && i + 1 < n) {
            const x1 = t[i + 1];
            if (x1 === C("t") || x1 === C("d")) {
                /* kept */
            } else if (x1 === C("s") || x1 === C("m")) {
                total--;
            } else if (i + 2 < n) {
                const x2 = t[i + 2];
                if (x1 === C("l") && x2 === C("l")) {
                    /* kept */
                } else if ((x1 === C("r") && x2 === C("e")) || (x1 === C("v") && x2 === C("e"))) {
                    total--;
                }
            }
        }
        return { i, total, x };
    });
    return Buffer.from(t);
}

for (const path of models) {
    const name = path.split("/").pop();
    let model;
    try {
        model = await llama.loadModel({ modelPath: path, vocabOnly: true });
    } catch (e) {
        ok(false, `${name}: llama.cpp loads it`, e.message);
        continue;
    }
    let ours;
    try {
        ours = oursTokenize(path, STRINGS);
    } catch (e) {
        ok(false, `${name}: pd-tokenize loads it`, e.message);
        await model.dispose();
        continue;
    }
    // tokenization
    let bad = 0, detail = "";
    for (let i = 0; i < STRINGS.length; i++) {
        const ref = Array.from(model.tokenize(STRINGS[i], false));
        const got = ours[i];
        const same = Array.isArray(got) && got.length === ref.length && got.every((x, k) => x === ref[k]);
        if (!same) {
            if (bad === 0) {
                const k = Array.isArray(got) ? firstDiff(got, ref) : 0;
                detail = `string #${i} ${show(STRINGS[i])}\n` +
                    `llama.cpp: ${show(ref)}\nours:      ${show(got)}\n` +
                    `first difference at index ${k}: llama.cpp ${ref[k]} ${show(ref[k] !== undefined ? model.detokenize([ref[k]], true) : null)}` +
                    (Array.isArray(got) ? `, ours ${got[k]}` : "");
            }
            bad++;
        }
    }
    ok(bad === 0, `${name}: ${STRINGS.length} strings tokenize as in llama.cpp`,
        `${bad} of ${STRINGS.length} differ; first:\n${detail}`);

    // pieces
    const pieces = oursPieces(path);
    const nv = pieces.length - 1; // trailing empty line
    const bos = model.tokens.bos;
    let pbad = 0, pdetail = "", cleaned = 0;
    for (let id = 0; id < nv; id++) {
        const p = pieces[id];
        let ref;
        // SPM: llama.cpp strips the first piece's leading space unless a
        // (silent) BOS comes first.
        if (bos !== null && bos !== undefined && bos !== id) ref = model.detokenize([bos, id]);
        else ref = model.detokenize([id]);
        const pstr = p.toString("utf8");
        const valid = Buffer.from(pstr, "utf8").equals(p);
        let same;
        if (!valid) {
            same = ref.includes("\ufffd") || ref === "";
        } else {
            same = ref === pstr;
            if (!same && ref === cleanSpaces(p).toString("utf8")) {
                same = true;
                cleaned++;
            }
        }
        if (!same) {
            if (pbad === 0) pdetail = `id ${id}: llama.cpp ${show(ref)} ours ${show(pstr)} (hex ${p.toString("hex")})`;
            pbad++;
        }
    }
    ok(pbad === 0 && nv > 0,
        `${name}: pieces of all ${nv} tokens match llama.cpp (${cleaned} equal after clean_spaces)`,
        `${pbad} differ; first: ${pdetail}`);
    await model.dispose();
}

if (!process.env.PD_KEEP_TMP) rmSync(work, { recursive: true, force: true });
else console.log(`# kept ${work}`);
console.log(`# ${models.length} model files, ${failures} failures`);
process.exit(failures ? 1 : 0);
