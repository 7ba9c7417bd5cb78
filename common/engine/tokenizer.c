/* tokenizer.c -- SentencePiece-style and byte-level BPE tokenizers read
 * from GGUF metadata, reproducing llama.cpp's src/llama-vocab.cpp
 * (llm_tokenizer_spm, llm_tokenizer_bpe, token_to_piece) token for token.
 * See tokenizer.h for the contract and tests/oracle/t_tokenize.mjs for the
 * comparison with llama.cpp itself. This file loads a vocabulary from
 * GGUF metadata; tokenizer_encode.c encodes, tokenizer_decode.c decodes.
 *
 * Where we are stricter than llama.cpp (it warns and carries on, or
 * aborts, we refuse the file): token arrays of different lengths, special
 * ids out of range, BYTE tokens not spelled <0xXX>, duplicate token texts,
 * unknown tokenizer.ggml.pre names. Where llama.cpp would throw while
 * encoding (SPM byte fallback with no <0xXX> token for a byte) we use the
 * unknown token, or fail with PD_EUNSUPPORTED when there is none.
 */
#include "engine/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "base/grow.h"
#include "base/log.h"
#include "engine/tokenizer_internal.h"
#include "engine/unicode.h"

/* ====== Lookups ====== */

static int htab_init(htab_t *h, uint64_t n)
{
    uint64_t size = 16;
    while (size < 2 * n)
        size <<= 1;
    h->slots = calloc(size, sizeof *h->slots);
    h->mask = size - 1;
    return h->slots ? 0 : PD_ENOMEM;
}

static uint64_t hash_bytes(const char *s, size_t n)
{
    return XXH3_64bits(s, n);
}

static uint64_t hash_pair(const char *a, size_t na, const char *b, size_t nb)
{
    return XXH3_64bits_withSeed(b, nb, XXH3_64bits(a, na) ^ 0x9E3779B97F4A7C15ull);
}

int32_t pd_tok__find_token(const pd_tok_t *t, const char *s, size_t n)
{
    uint64_t i = hash_bytes(s, n) & t->by_text.mask;
    for (;; i = (i + 1) & t->by_text.mask) {
        uint32_t v = t->by_text.slots[i];
        if (v == 0)
            return -1;
        uint32_t id = v - 1;
        if (t->len[id] == n && memcmp(t->text + t->off[id], s, n) == 0)
            return (int32_t)id;
    }
}

/* Inserts id; returns -1, or the id that already has the same text
 * (llama.cpp aborts on such a vocabulary; we refuse it). */
static int32_t insert_token(pd_tok_t *t, uint32_t id)
{
    const char *s = t->text + t->off[id];
    size_t n = t->len[id];
    uint64_t i = hash_bytes(s, n) & t->by_text.mask;
    for (;; i = (i + 1) & t->by_text.mask) {
        uint32_t v = t->by_text.slots[i];
        if (v == 0) {
            t->by_text.slots[i] = id + 1;
            return -1;
        }
        if (t->len[v - 1] == n && memcmp(t->text + t->off[v - 1], s, n) == 0)
            return (int32_t)(v - 1);
    }
}

int32_t pd_tok__find_rank(const pd_tok_t *t, const char *a, size_t na, const char *b, size_t nb)
{
    if (t->n_merges == 0)
        return -1;
    uint64_t i = hash_pair(a, na, b, nb) & t->by_pair.mask;
    for (;; i = (i + 1) & t->by_pair.mask) {
        uint32_t v = t->by_pair.slots[i];
        if (v == 0)
            return -1;
        const merge_t *m = &t->merges[v - 1];
        if (m->a_len == na && m->b_len == nb && memcmp(t->merge_text + m->a_off, a, na) == 0 &&
            memcmp(t->merge_text + m->b_off, b, nb) == 0)
            return (int32_t)(v - 1);
    }
}

/* Inserts rank r unless its pair is already there (bpe_ranks.emplace). */
static void insert_merge(pd_tok_t *t, uint32_t r)
{
    const merge_t *m = &t->merges[r];
    const char *a = t->merge_text + m->a_off, *b = t->merge_text + m->b_off;
    uint64_t i = hash_pair(a, m->a_len, b, m->b_len) & t->by_pair.mask;
    for (;; i = (i + 1) & t->by_pair.mask) {
        uint32_t v = t->by_pair.slots[i];
        if (v == 0) {
            t->by_pair.slots[i] = r + 1;
            return;
        }
        const merge_t *o = &t->merges[v - 1];
        if (o->a_len == m->a_len && o->b_len == m->b_len &&
            memcmp(t->merge_text + o->a_off, a, m->a_len) == 0 &&
            memcmp(t->merge_text + o->b_off, b, m->b_len) == 0)
            return;
    }
}

/* ====== Loading ====== */

static bool has_key(const pd_gguf_t *g, const char *key)
{
    return pd_gguf_find_key(g, key) >= 0;
}

/* Optional bool key: leaves *v alone when absent. */
static int opt_bool(const pd_gguf_t *g, const char *key, bool *v, pd_err_t *err)
{
    if (!has_key(g, key))
        return 0;
    return pd_gguf_get_bool(g, key, v, err);
}

/* Optional special id: refused when present but >= n_vocab. */
static int opt_id(const pd_gguf_t *g, const char *key, uint32_t n_vocab, int32_t *id,
                  pd_err_t *err)
{
    if (!has_key(g, key))
        return 0;
    uint32_t v;
    int rc = pd_gguf_get_u32(g, key, &v, err);
    if (rc != 0)
        return rc;
    if (v >= n_vocab)
        return pd_err_set(err, PD_EFORMAT, "%s = %u is out of range (vocabulary has %u tokens)",
                          key, v, n_vocab);
    *id = (int32_t)v;
    return 0;
}

static bool str_eq(pd_gguf_str_t s, const char *lit)
{
    size_t n = strlen(lit);
    return s.len == n && memcmp(s.ptr, lit, n) == 0;
}

/* Maps tokenizer.ggml.pre to a splitter, with the flags llama.cpp sets for
 * it. Names follow llama-vocab.cpp; an unknown name is refused. */
static int parse_pre(pd_tok_t *t, bool has_pre, pd_gguf_str_t pre, pd_err_t *err)
{
    static const char *const gpt2_names[] = {"gpt-2", "phi-2", "jina-es", "jina-de", "gigachat",
                                             "jina-v2-es", "jina-v2-de", "a.x-4.0", "mellum",
                                             "modern-bert", "mpt", "olmo", "jais", "trillion",
                                             "granite-docling", NULL};
    static const char *const llama3_names[] = {"llama3", "llama-v3", "llama-bpe", "falcon3",
                                               "falcon-h1", "pixtral", "midm-2.0", "lfm2",
                                               "jina-v5-nano", NULL};
    static const char *const qwen2_names[] = {"qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2",
                                              NULL};
    static const char *const smollm_names[] = {"smollm", "starcoder", "refact", "command-r",
                                               "codeshell", "exaone", "minerva-7b", NULL};
    if (!has_pre || pre.len == 0 || str_eq(pre, "default")) {
        t->pre = PD_PRETOK_DEFAULT;
        return 0;
    }
    for (size_t i = 0; gpt2_names[i]; i++)
        if (str_eq(pre, gpt2_names[i])) {
            t->pre = PD_PRETOK_GPT2;
            return 0;
        }
    for (size_t i = 0; llama3_names[i]; i++)
        if (str_eq(pre, llama3_names[i])) {
            t->pre = PD_PRETOK_LLAMA3;
            t->ignore_merges = true;
            t->add_bos = true;
            return 0;
        }
    for (size_t i = 0; qwen2_names[i]; i++)
        if (str_eq(pre, qwen2_names[i])) {
            t->pre = PD_PRETOK_QWEN2;
            return 0;
        }
    for (size_t i = 0; smollm_names[i]; i++)
        if (str_eq(pre, smollm_names[i])) {
            t->pre = PD_PRETOK_SMOLLM;
            return 0;
        }
    int n = pre.len > 64 ? 64 : (int)pre.len;
    return pd_err_set(err, PD_EUNSUPPORTED, "tokenizer.ggml.pre '%.*s' is not supported", n,
                      pre.ptr);
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Byte value of a "<0xXX>" text, -1 if it is not one. */
int pd_tok__byte_value(const char *s, size_t n)
{
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>')
        return -1;
    int hi = hexval(s[3]), lo = hexval(s[4]);
    return (hi < 0 || lo < 0) ? -1 : hi * 16 + lo;
}

/* llama.cpp reads GGUF strings as C strings: text after a NUL is lost. */
static pd_gguf_str_t cstr(pd_gguf_str_t s)
{
    if (s.ptr == NULL)
        s.len = 0;
    else
        s.len = strnlen(s.ptr, s.len);
    return s;
}

static int load_tokens(pd_tok_t *t, const pd_gguf_t *g, pd_err_t *err)
{
    const char *key = "tokenizer.ggml.tokens";
    pd_gguf_type_t et;
    uint64_t n;
    int rc = pd_gguf_get_arr(g, key, &et, &n, err);
    if (rc != 0)
        return rc == PD_EINVAL ? pd_err_set(err, PD_EFORMAT, "%s is missing", key) : rc;
    if (et != PD_GGUF_TYPE_STRING)
        return pd_err_set(err, PD_EFORMAT, "%s is an array of %s, want string", key,
                          pd_gguf_type_name(et));
    if (n == 0 || n > PD_TOK_MAX_VOCAB)
        return pd_err_set(err, PD_EFORMAT, "%s has %llu tokens (want 1..%u)", key,
                          (unsigned long long)n, PD_TOK_MAX_VOCAB);
    t->n_vocab = (uint32_t)n;
    uint64_t total = 0;
    for (uint64_t i = 0; i < n; i++) {
        pd_gguf_str_t s = cstr(pd_gguf_arr_str(g, key, i));
        total += s.len ? s.len : 32; /* room for "[EMPTY_i]" */
        if (total > PD_TOK_MAX_TEXT_BYTES)
            return pd_err_set(err, PD_EFORMAT, "%s: token texts exceed %zu bytes", key,
                              PD_TOK_MAX_TEXT_BYTES);
    }
    t->text = malloc(total ? total : 1);
    t->off = malloc(n * sizeof *t->off);
    t->len = malloc(n * sizeof *t->len);
    t->score = calloc(n, sizeof *t->score);
    t->attr = malloc(n);
    t->eog = calloc(n, 1);
    if (!t->text || !t->off || !t->len || !t->score || !t->attr || !t->eog)
        return pd_err_set(err, PD_ENOMEM, "%s: out of memory for %llu tokens", key,
                          (unsigned long long)n);
    uint64_t pos = 0;
    for (uint64_t i = 0; i < n; i++) {
        pd_gguf_str_t s = cstr(pd_gguf_arr_str(g, key, i));
        t->off[i] = pos;
        if (s.len == 0) { /* llama.cpp renames empty tokens */
            int k = snprintf(t->text + pos, 32, "[EMPTY_%llu]", (unsigned long long)i);
            t->len[i] = (uint32_t)k;
        } else {
            memcpy(t->text + pos, s.ptr, s.len);
            t->len[i] = (uint32_t)s.len;
        }
        pos += t->len[i];
        t->attr[i] = ATTR_NORMAL;
    }
    if ((rc = htab_init(&t->by_text, n)) != 0)
        return pd_err_set(err, rc, "%s: out of memory for the token index", key);
    for (uint32_t i = 0; i < n; i++) {
        int32_t dup = insert_token(t, i);
        if (dup >= 0)
            return pd_err_set(err, PD_EFORMAT, "%s: token %u has the same text as token %d "
                              "(as a C string)", key, i, dup);
    }
    return 0;
}

static int load_scores_types(pd_tok_t *t, const pd_gguf_t *g, pd_err_t *err)
{
    pd_gguf_type_t et;
    uint64_t n;
    int rc;
    const char *key = "tokenizer.ggml.scores";
    if (has_key(g, key)) {
        if ((rc = pd_gguf_get_arr(g, key, &et, &n, err)) != 0)
            return rc == PD_EINVAL ? pd_err_set(err, PD_EFORMAT, "%s is not an array", key) : rc;
        if (et != PD_GGUF_TYPE_FLOAT32 && et != PD_GGUF_TYPE_INT32)
            return pd_err_set(err, PD_EFORMAT, "%s is an array of %s, want float32", key,
                              pd_gguf_type_name(et));
        if (n != t->n_vocab)
            return pd_err_set(err, PD_EFORMAT, "%s has %llu entries but there are %u tokens", key,
                              (unsigned long long)n, t->n_vocab);
        const uint8_t *d = pd_gguf_arr_data(g, key);
        if (!d)
            return pd_err_set(err, PD_EFORMAT, "%s: no data", key);
        for (uint32_t i = 0; i < t->n_vocab; i++) {
            if (et == PD_GGUF_TYPE_FLOAT32) {
                memcpy(&t->score[i], d + 4 * (size_t)i, 4);
            } else {
                int32_t v;
                memcpy(&v, d + 4 * (size_t)i, 4);
                t->score[i] = (float)v;
            }
        }
    }
    key = "tokenizer.ggml.token_type";
    if (has_key(g, key)) {
        if ((rc = pd_gguf_get_arr(g, key, &et, &n, err)) != 0)
            return rc == PD_EINVAL ? pd_err_set(err, PD_EFORMAT, "%s is not an array", key) : rc;
        if (et != PD_GGUF_TYPE_INT32)
            return pd_err_set(err, PD_EFORMAT, "%s is an array of %s, want int32", key,
                              pd_gguf_type_name(et));
        if (n != t->n_vocab)
            return pd_err_set(err, PD_EFORMAT, "%s has %llu entries but there are %u tokens", key,
                              (unsigned long long)n, t->n_vocab);
        const uint8_t *d = pd_gguf_arr_data(g, key);
        if (!d)
            return pd_err_set(err, PD_EFORMAT, "%s: no data", key);
        for (uint32_t i = 0; i < t->n_vocab; i++) {
            int32_t v;
            memcpy(&v, d + 4 * (size_t)i, 4);
            switch (v) {
            case TYPE_NORMAL: t->attr[i] = ATTR_NORMAL; break;
            case TYPE_UNKNOWN: t->attr[i] = ATTR_UNKNOWN; break;
            case TYPE_CONTROL: t->attr[i] = ATTR_CONTROL; break;
            case TYPE_USER_DEFINED: t->attr[i] = ATTR_USER_DEFINED; break;
            case TYPE_UNUSED: t->attr[i] = ATTR_UNUSED; break;
            case TYPE_BYTE: t->attr[i] = ATTR_BYTE; break;
            default: t->attr[i] = ATTR_UNDEFINED; break;
            }
            if (v == TYPE_BYTE && pd_tok__byte_value(t->text + t->off[i], t->len[i]) < 0)
                return pd_err_set(err, PD_EFORMAT,
                                  "token %u has type BYTE but its text is not <0xXX> (%u bytes)",
                                  i, t->len[i]);
        }
    }
    return 0;
}

static int load_merges(pd_tok_t *t, const pd_gguf_t *g, pd_err_t *err)
{
    const char *key = "tokenizer.ggml.merges";
    pd_gguf_type_t et;
    uint64_t n;
    int rc = pd_gguf_get_arr(g, key, &et, &n, err);
    if (rc != 0)
        return rc == PD_EINVAL ? pd_err_set(err, PD_EFORMAT, "%s is missing", key) : rc;
    if (et != PD_GGUF_TYPE_STRING)
        return pd_err_set(err, PD_EFORMAT, "%s is an array of %s, want string", key,
                          pd_gguf_type_name(et));
    if (n > PD_TOK_MAX_VOCAB)
        return pd_err_set(err, PD_EFORMAT, "%s has %llu merges (max %u)", key,
                          (unsigned long long)n, PD_TOK_MAX_VOCAB);
    uint64_t total = 0;
    for (uint64_t i = 0; i < n; i++) {
        total += cstr(pd_gguf_arr_str(g, key, i)).len;
        if (total > PD_TOK_MAX_TEXT_BYTES)
            return pd_err_set(err, PD_EFORMAT, "%s: merge texts exceed %zu bytes", key,
                              PD_TOK_MAX_TEXT_BYTES);
    }
    t->merge_text = malloc(total ? total : 1);
    /* zeroed: insert_merge reads earlier ranks only, but the analyzer
     * cannot follow that through the hash table */
    t->merges = calloc(n ? n : 1, sizeof *t->merges);
    if (!t->merge_text || !t->merges)
        return pd_err_set(err, PD_ENOMEM, "%s: out of memory", key);
    t->n_merges = (uint32_t)n;
    uint64_t pos = 0;
    for (uint64_t i = 0; i < n; i++) {
        pd_gguf_str_t s = cstr(pd_gguf_arr_str(g, key, i));
        merge_t *m = &t->merges[i];
        /* llama.cpp: split at the first ' ' after position 0; no space
         * gives the pair ("", "") which never matches. */
        const char *sp = s.len > 1 ? memchr(s.ptr + 1, ' ', s.len - 1) : NULL;
        memcpy(t->merge_text + pos, s.ptr, s.len);
        if (sp) {
            size_t k = (size_t)(sp - s.ptr);
            m->a_off = (uint32_t)pos;
            m->a_len = (uint32_t)k;
            m->b_off = (uint32_t)(pos + k + 1);
            m->b_len = (uint32_t)(s.len - k - 1);
        } else {
            m->a_off = m->b_off = (uint32_t)pos;
            m->a_len = m->b_len = 0;
        }
        pos += s.len;
    }
    if ((rc = htab_init(&t->by_pair, n)) != 0)
        return pd_err_set(err, rc, "%s: out of memory for the merge index", key);
    for (uint32_t r = 0; r < t->n_merges; r++)
        insert_merge(t, r);
    return 0;
}

/* End-of-generation tokens found by text, as llama.cpp does; they are made
 * control tokens (so they print nothing and are not user-defined). */
static void mark_eog(pd_tok_t *t)
{
    static const char *const eog_texts[] = {
        "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>",
        "<|calls|>", "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>",
        "[EOT]", "[EOS]", "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>",
        "<|tool_response>", "<\357\275\234end\342\226\201of\342\226\201sentence\357\275\234>",
        "[e~[", NULL};
    static const char *const eot_texts[] = {
        "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
        "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]",
        "<\357\275\234end\342\226\201of\342\226\201sentence\357\275\234>",
        "<end_of_utterance>", NULL};
    static const char *const user_texts[] = {"<|channel|>", "<|message|>", "<|start|>",
                                             "<|constrain|>", NULL};
    /* Only the id the text index maps to counts (token_to_id iteration). */
    for (const char *const *p = eot_texts; *p && t->eot < 0; p++) {
        int32_t id = pd_tok__find_token(t, *p, strlen(*p));
        if (id >= 0) {
            t->eot = id;
            t->attr[id] |= ATTR_CONTROL;
        }
    }
    for (const char *const *p = eog_texts; *p; p++) {
        int32_t id = pd_tok__find_token(t, *p, strlen(*p));
        if (id >= 0) {
            t->eog[id] = 1;
            t->attr[id] |= ATTR_CONTROL;
        }
    }
    if (t->eom < 0) {
        int32_t id = pd_tok__find_token(t, "<|eom_id|>", 10);
        if (id >= 0)
            t->eom = id;
    }
    for (const char *const *p = user_texts; *p; p++) {
        int32_t id = pd_tok__find_token(t, *p, strlen(*p));
        if (id >= 0)
            t->attr[id] = ATTR_USER_DEFINED;
    }
    if (t->eos >= 0)
        t->eog[t->eos] = 1;
    if (t->eot >= 0)
        t->eog[t->eot] = 1;
    if (t->eom >= 0)
        t->eog[t->eom] = 1;
    /* o200k_harmony / solar-open: "<|end|>" is not EOG when the return/call
     * markers exist. */
    int32_t end = pd_tok__find_token(t, "<|end|>", 7);
    bool has_ret = pd_tok__find_token(t, "<|return|>", 10) >= 0;
    bool has_call = pd_tok__find_token(t, "<|call|>", 8) >= 0 || pd_tok__find_token(t, "<|calls|>", 9) >= 0;
    bool has_flush = pd_tok__find_token(t, "<|flush|>", 9) >= 0;
    if (end >= 0 && ((has_ret && has_call) || (has_call && has_flush)))
        t->eog[end] = 0;
}

/* User-defined tokens, longest first: they are split out of the text
 * before tokenizing, even when special tokens are not parsed. */
static int collect_specials(pd_tok_t *t, pd_err_t *err)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < t->n_vocab; i++)
        if (t->attr[i] & ATTR_USER_DEFINED)
            n++;
    if (n == 0)
        return 0;
    t->specials = malloc(n * sizeof *t->specials);
    if (!t->specials)
        return pd_err_set(err, PD_ENOMEM, "out of memory for user-defined tokens");
    for (uint32_t i = 0; i < t->n_vocab; i++)
        if (t->attr[i] & ATTR_USER_DEFINED)
            t->specials[t->n_specials++] = (int32_t)i;
    /* insertion sort by length, descending, stable (n is small in practice) */
    for (uint32_t i = 1; i < n; i++) {
        int32_t x = t->specials[i];
        uint32_t j = i;
        while (j > 0 && t->len[t->specials[j - 1]] < t->len[x]) {
            t->specials[j] = t->specials[j - 1];
            j--;
        }
        t->specials[j] = x;
    }
    return 0;
}


pd_tok_t *pd_tok_load(const pd_gguf_t *g, pd_err_t *err)
{
    pd_tok_t *t = calloc(1, sizeof *t);
    pd_gguf_str_t model, pre = {0};
    bool has_pre;
    int rc;
    if (!t) {
        pd_err_set(err, PD_ENOMEM, "tokenizer: out of memory");
        return NULL;
    }
    if (!has_key(g, "tokenizer.ggml.model")) {
        pd_err_set(err, PD_EFORMAT, "tokenizer.ggml.model is missing");
        goto fail;
    }
    if (pd_gguf_get_str(g, "tokenizer.ggml.model", &model, err) != 0)
        goto fail;
    has_pre = has_key(g, "tokenizer.ggml.pre");
    if (has_pre && pd_gguf_get_str(g, "tokenizer.ggml.pre", &pre, err) != 0)
        goto fail;
    t->eot = t->eom = t->pad = -1;
    if (str_eq(model, "llama")) {
        t->kind = PD_TOK_SPM;
        t->bos = 1, t->eos = 2, t->unk = 0;
        t->add_bos = true;
        t->add_space_prefix = true;
    } else if (str_eq(model, "gpt2")) {
        t->kind = PD_TOK_BPE;
        t->bos = 11, t->eos = 11, t->unk = -1; /* llama.cpp's defaults */
        if (parse_pre(t, has_pre, pre, err) != 0)
            goto fail;
    } else {
        int n = model.len > 64 ? 64 : (int)model.len;
        pd_err_set(err, PD_EUNSUPPORTED, "tokenizer.ggml.model '%.*s' is not supported", n,
                   model.ptr);
        goto fail;
    }
    if (load_tokens(t, g, err) != 0 || load_scores_types(t, g, err) != 0)
        goto fail;
    if (t->kind == PD_TOK_BPE && load_merges(t, g, err) != 0)
        goto fail;
    /* Default special ids out of range are disabled, as in llama.cpp;
     * explicit ones out of range are refused. */
    if (t->bos >= (int32_t)t->n_vocab)
        t->bos = -1;
    if (t->eos >= (int32_t)t->n_vocab)
        t->eos = -1;
    if (t->unk >= (int32_t)t->n_vocab)
        t->unk = -1;
    if (opt_id(g, "tokenizer.ggml.bos_token_id", t->n_vocab, &t->bos, err) != 0 ||
        opt_id(g, "tokenizer.ggml.eos_token_id", t->n_vocab, &t->eos, err) != 0 ||
        opt_id(g, "tokenizer.ggml.unknown_token_id", t->n_vocab, &t->unk, err) != 0 ||
        opt_id(g, "tokenizer.ggml.padding_token_id", t->n_vocab, &t->pad, err) != 0 ||
        opt_id(g, "tokenizer.ggml.eot_token_id", t->n_vocab, &t->eot, err) != 0 ||
        opt_id(g, "tokenizer.ggml.eom_token_id", t->n_vocab, &t->eom, err) != 0)
        goto fail;
    if (opt_bool(g, "tokenizer.ggml.add_space_prefix", &t->add_space_prefix, err) != 0 ||
        opt_bool(g, "tokenizer.ggml.add_bos_token", &t->add_bos, err) != 0 ||
        opt_bool(g, "tokenizer.ggml.add_eos_token", &t->add_eos, err) != 0)
        goto fail;
    if (t->kind == PD_TOK_BPE)
        t->add_space_prefix = has_key(g, "tokenizer.ggml.add_space_prefix") && t->add_space_prefix;
    if (t->add_bos && t->bos < 0) {
        pd_err_set(err, PD_EFORMAT, "tokenizer.ggml.add_bos_token is set but there is no BOS token");
        goto fail;
    }
    if (t->add_eos && t->eos < 0) {
        pd_err_set(err, PD_EFORMAT, "tokenizer.ggml.add_eos_token is set but there is no EOS token");
        goto fail;
    }
    mark_eog(t);
    if (collect_specials(t, err) != 0)
        goto fail;
    if ((rc = pd_tok__measure_pieces(t)) != 0) {
        pd_err_set(err, rc, "tokenizer: out of memory");
        goto fail;
    }
    return t;
fail:
    pd_tok_free(t);
    return NULL;
}

void pd_tok_free(pd_tok_t *t)
{
    if (!t)
        return;
    free(t->text);
    free(t->off);
    free(t->len);
    free(t->score);
    free(t->attr);
    free(t->eog);
    free(t->by_text.slots);
    free(t->merge_text);
    free(t->merges);
    free(t->by_pair.slots);
    free(t->specials);
    free(t);
}

pd_tok_kind_t pd_tok_kind(const pd_tok_t *t) { return t->kind; }
uint32_t pd_tok_n_vocab(const pd_tok_t *t) { return t->n_vocab; }
int32_t pd_tok_bos(const pd_tok_t *t) { return t->bos; }
int32_t pd_tok_eos(const pd_tok_t *t) { return t->eos; }
bool pd_tok_add_bos(const pd_tok_t *t) { return t->add_bos; }

bool pd_tok_is_eog(const pd_tok_t *t, int32_t id)
{
    return id >= 0 && (uint32_t)id < t->n_vocab && t->eog[id];
}

const char *pd_tok_text(const pd_tok_t *t, int32_t id, size_t *len)
{
    if (id < 0 || (uint32_t)id >= t->n_vocab) {
        if (len)
            *len = 0;
        return NULL;
    }
    if (len)
        *len = t->len[id];
    return t->text + t->off[id];
}
