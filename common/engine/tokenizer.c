/* tokenizer.c -- SentencePiece-style and byte-level BPE tokenizers read
 * from GGUF metadata, reproducing llama.cpp's src/llama-vocab.cpp
 * (llm_tokenizer_spm, llm_tokenizer_bpe, token_to_piece) token for token.
 * See tokenizer.h for the contract and tests/oracle/t_tokenize.mjs for the
 * comparison with llama.cpp itself.
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
#include "engine/unicode.h"

/* Largest vocabulary we accept (real ones are <= ~260k ids). */
#define PD_TOK_MAX_VOCAB (1u << 24)
/* Longest piece we produce: llama.cpp spells each code point of a BPE token
 * that is outside GPT-2's alphabet as "[UNK_BYTE_0x<hex><whole token>]",
 * quadratic in the token's length; a hostile token is cut here. */
#define PD_TOK_MAX_PIECE_BYTES (64 * 1024)
/* Largest total of token (or merge) text bytes we accept. */
#define PD_TOK_MAX_TEXT_BYTES ((size_t)1 << 30)

/* Token attributes: llama.cpp's llama_token_attr bits. */
enum {
    ATTR_UNDEFINED = 0,
    ATTR_UNKNOWN = 1 << 0,
    ATTR_UNUSED = 1 << 1,
    ATTR_NORMAL = 1 << 2,
    ATTR_CONTROL = 1 << 3,
    ATTR_USER_DEFINED = 1 << 4,
    ATTR_BYTE = 1 << 5,
};

/* GGUF tokenizer.ggml.token_type values. */
enum {
    TYPE_UNDEFINED = 0,
    TYPE_NORMAL = 1,
    TYPE_UNKNOWN = 2,
    TYPE_CONTROL = 3,
    TYPE_USER_DEFINED = 4,
    TYPE_UNUSED = 5,
    TYPE_BYTE = 6,
};

/* ====== Hash table ======
 * Open addressing with linear probing over uint32 slots holding index+1
 * (0 = empty), keyed by XXH3 of the bytes. Written here rather than using
 * hcreate_r because keys are counted byte strings (a GGUF token may contain
 * NUL), merge keys are pairs of strings, there is one table per tokenizer
 * with no global state, and lookups by (pointer, length) into the text being
 * encoded must not copy. Load factor <= 1/2. */
typedef struct {
    uint32_t *slots;
    uint64_t mask;
} htab_t;

static int htab_init(htab_t *h, uint64_t n)
{
    uint64_t size = 16;
    while (size < 2 * n)
        size <<= 1;
    h->slots = calloc(size, sizeof *h->slots);
    h->mask = size - 1;
    return h->slots ? 0 : PD_ENOMEM;
}

/* ====== The tokenizer ====== */

typedef struct {
    uint32_t a_off, a_len, b_off, b_len; /* into merge_text */
} merge_t;

struct pd_tok {
    pd_tok_kind_t kind;
    pd_pretok_t pre;
    uint32_t n_vocab;
    char *text;          /* (total) token texts, back to back */
    uint64_t *off;       /* (n_vocab) offset of each token's text */
    uint32_t *len;       /* (n_vocab) byte length of each token's text */
    float *score;        /* (n_vocab) */
    uint8_t *attr;       /* (n_vocab) ATTR_* bits */
    uint8_t *eog;        /* (n_vocab) 1 if end of generation */
    htab_t by_text;      /* text -> id (texts are unique) */
    char *merge_text;    /* merges' halves, back to back */
    merge_t *merges;     /* (n_merges) in rank order */
    uint32_t n_merges;
    htab_t by_pair;      /* (a, b) -> rank (first rank wins) */
    int32_t *specials;   /* user-defined tokens, longest text first */
    uint32_t n_specials;
    int32_t bos, eos, unk, eot, eom, pad;
    bool add_bos, add_eos, add_space_prefix, ignore_merges;
    size_t max_piece;    /* bytes of the longest piece */
};

static uint64_t hash_bytes(const char *s, size_t n)
{
    return XXH3_64bits(s, n);
}

static uint64_t hash_pair(const char *a, size_t na, const char *b, size_t nb)
{
    return XXH3_64bits_withSeed(b, nb, XXH3_64bits(a, na) ^ 0x9E3779B97F4A7C15ull);
}

static int32_t find_token(const pd_tok_t *t, const char *s, size_t n)
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

static int32_t find_rank(const pd_tok_t *t, const char *a, size_t na, const char *b, size_t nb)
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
static int byte_token_value(const char *s, size_t n)
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
            if (v == TYPE_BYTE && byte_token_value(t->text + t->off[i], t->len[i]) < 0)
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
        int32_t id = find_token(t, *p, strlen(*p));
        if (id >= 0) {
            t->eot = id;
            t->attr[id] |= ATTR_CONTROL;
        }
    }
    for (const char *const *p = eog_texts; *p; p++) {
        int32_t id = find_token(t, *p, strlen(*p));
        if (id >= 0) {
            t->eog[id] = 1;
            t->attr[id] |= ATTR_CONTROL;
        }
    }
    if (t->eom < 0) {
        int32_t id = find_token(t, "<|eom_id|>", 10);
        if (id >= 0)
            t->eom = id;
    }
    for (const char *const *p = user_texts; *p; p++) {
        int32_t id = find_token(t, *p, strlen(*p));
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
    int32_t end = find_token(t, "<|end|>", 7);
    bool has_ret = find_token(t, "<|return|>", 10) >= 0;
    bool has_call = find_token(t, "<|call|>", 8) >= 0 || find_token(t, "<|calls|>", 9) >= 0;
    bool has_flush = find_token(t, "<|flush|>", 9) >= 0;
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

static int measure_pieces(pd_tok_t *t);

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
    if ((rc = measure_pieces(t)) != 0) {
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

/* ====== Encoding: shared pieces ====== */

/* Output ids: counts all, stores the first cap. */
typedef struct {
    int32_t *out;
    size_t cap, n;
} ids_t;

static void ids_push(ids_t *o, int32_t id)
{
    if (o->n < o->cap)
        o->out[o->n] = id;
    o->n++;
}

/* A growable byte buffer. */
typedef struct {
    char *p;
    size_t n, cap;
} buf_t;

static int buf_reserve(buf_t *b, size_t extra)
{
    if (extra > SIZE_MAX / 2 - b->n)
        return PD_ENOMEM;
    return pd_grow((void **)&b->p, &b->cap, b->n + extra, 1, 256);
}

static int buf_add(buf_t *b, const void *s, size_t n)
{
    int rc = buf_reserve(b, n);
    if (rc == 0 && n > 0) {
        memcpy(b->p + b->n, s, n);
        b->n += n;
    }
    return rc;
}

/* Symbols being merged: text[off..off+n) of the word, in a linked list. */
typedef struct {
    int32_t prev, next;
    size_t off, n;
} sym_t;

/* A candidate merge of symbols left and right. For SPM `key` is the score
 * (higher first), for BPE the rank (lower first); ties: leftmost first. */
typedef struct {
    int32_t left, right;
    float score;
    int32_t rank;
    size_t size;
} bigram_t;

typedef struct {
    bigram_t *v;
    size_t n, cap;
    bool by_rank;
} heap_t;

/* true when a should come out of the queue before b */
static bool bg_before(const heap_t *h, const bigram_t *a, const bigram_t *b)
{
    if (h->by_rank) {
        if (a->rank != b->rank)
            return a->rank < b->rank;
    } else if (a->score != b->score) {
        return a->score > b->score;
    }
    return a->left < b->left;
}

static int heap_push(heap_t *h, bigram_t x)
{
    if (pd_grow((void **)&h->v, &h->cap, h->n + 1, sizeof *h->v, 64) != 0)
        return PD_ENOMEM;
    size_t i = h->n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!bg_before(h, &x, &h->v[p]))
            break;
        h->v[i] = h->v[p];
        i = p;
    }
    h->v[i] = x;
    return 0;
}

static bigram_t heap_pop(heap_t *h)
{
    bigram_t top = h->v[0];
    bigram_t x = h->v[--h->n];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const bigram_t *best = &x;
        if (l < h->n && bg_before(h, &h->v[l], best))
            m = l, best = &h->v[l];
        if (r < h->n && bg_before(h, &h->v[r], best))
            m = r;
        if (m == i)
            break;
        h->v[i] = h->v[m];
        i = m;
    }
    if (h->n > 0)
        h->v[i] = x;
    return top;
}

typedef struct {
    sym_t *v;
    size_t n, cap;
} syms_t;

static int syms_push(syms_t *s, sym_t x)
{
    if (pd_grow((void **)&s->v, &s->cap, s->n + 1, sizeof *s->v, 64) != 0)
        return PD_ENOMEM;
    s->v[s->n++] = x;
    return 0;
}

/* Splits word[0..n) into one symbol per UTF-8 character (lead-byte length,
 * clipped at the end, like llama.cpp). */
static int split_chars(syms_t *s, const char *word, size_t n)
{
    s->n = 0;
    size_t off = 0;
    int32_t index = 0;
    while (off < n) {
        size_t len = pd_utf8_lead_len((uint8_t)word[off]);
        if (len > n - off)
            len = n - off;
        sym_t sym = {index - 1, off + len == n ? -1 : index + 1, off, len};
        if (syms_push(s, sym) != 0)
            return PD_ENOMEM;
        off += len;
        index++;
    }
    return 0;
}

/* ====== SPM ====== */

typedef struct {
    const pd_tok_t *t;
    const char *text;
    syms_t syms;
    heap_t heap;
} spm_t;

static int spm_try_bigram(spm_t *s, int32_t left, int32_t right)
{
    if (left < 0 || right < 0)
        return 0;
    const sym_t *l = &s->syms.v[left], *r = &s->syms.v[right];
    size_t size = l->n + r->n;
    int32_t id = find_token(s->t, s->text + l->off, size);
    if (id < 0)
        return 0;
    bigram_t b = {left, right, s->t->score[id], 0, size};
    return heap_push(&s->heap, b);
}

/* llama.cpp's byte_to_token for SPM: "<0xXX>", else the byte itself as a
 * token; failing both we use the unknown token (llama.cpp would throw). */
static int spm_byte_token(const pd_tok_t *t, uint8_t byte, int32_t *id)
{
    static const char hex[] = "0123456789ABCDEF";
    char b[6] = {'<', '0', 'x', hex[byte >> 4], hex[byte & 15], '>'};
    *id = find_token(t, b, 6);
    if (*id < 0)
        *id = find_token(t, (const char *)&byte, 1);
    if (*id < 0)
        *id = t->unk;
    return *id < 0 ? PD_EUNSUPPORTED : 0;
}

/* Tokenizes text[0..n) (already escaped: spaces are U+2581). */
static int spm_tokenize(spm_t *s, const char *text, size_t n, ids_t *out, pd_err_t *err)
{
    s->text = text;
    s->heap.n = 0;
    if (split_chars(&s->syms, text, n) != 0)
        return pd_err_set(err, PD_ENOMEM, "tokenize: out of memory");
    for (size_t i = 1; i < s->syms.n; i++)
        if (spm_try_bigram(s, (int32_t)i - 1, (int32_t)i) != 0)
            return pd_err_set(err, PD_ENOMEM, "tokenize: out of memory");
    while (s->heap.n > 0) {
        bigram_t b = heap_pop(&s->heap);
        sym_t *l = &s->syms.v[b.left], *r = &s->syms.v[b.right];
        if (l->n == 0 || r->n == 0 || l->n + r->n != b.size)
            continue; /* outdated */
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0)
            s->syms.v[r->next].prev = b.left;
        if (spm_try_bigram(s, l->prev, b.left) != 0 || spm_try_bigram(s, b.left, l->next) != 0)
            return pd_err_set(err, PD_ENOMEM, "tokenize: out of memory");
    }
    if (s->syms.n == 0)
        return 0;
    for (int32_t i = 0; i != -1; i = s->syms.v[i].next) {
        const sym_t *sym = &s->syms.v[i];
        int32_t id = find_token(s->t, text + sym->off, sym->n);
        if (id >= 0) {
            ids_push(out, id);
            continue;
        }
        for (size_t j = 0; j < sym->n; j++) {
            if (spm_byte_token(s->t, (uint8_t)text[sym->off + j], &id) != 0)
                return pd_err_set(err, PD_EUNSUPPORTED,
                                  "tokenize: no token for byte 0x%02x and no unknown token",
                                  (uint8_t)text[sym->off + j]);
            ids_push(out, id);
        }
    }
    return 0;
}

/* ====== BPE ====== */

typedef struct {
    const pd_tok_t *t;
    const char *word;
    syms_t syms;
    heap_t heap;
    buf_t mapped;        /* the current word in GPT-2's alphabet */
    uint32_t *cpts;      /* code points of the fragment */
    size_t cpts_cap;
} bpe_t;

static int bpe_add_bigram(bpe_t *s, int32_t left, int32_t right)
{
    if (left < 0 || right < 0)
        return 0;
    const sym_t *l = &s->syms.v[left], *r = &s->syms.v[right];
    int32_t rank = find_rank(s->t, s->word + l->off, l->n, s->word + r->off, r->n);
    if (rank < 0)
        return 0;
    bigram_t b = {left, right, 0.0f, rank, l->n + r->n};
    return heap_push(&s->heap, b);
}

/* Merges one pre-tokenized word (GPT-2 alphabet) and emits its ids. */
static int bpe_word(bpe_t *s, const char *word, size_t n, ids_t *out)
{
    const pd_tok_t *t = s->t;
    if (n == 0)
        return 0; /* an empty word has no tokens (and word may be NULL) */
    s->word = word;
    s->heap.n = 0;
    if (t->ignore_merges) {
        int32_t id = find_token(t, word, n);
        if (id >= 0) {
            ids_push(out, id);
            return 0;
        }
    }
    if (split_chars(&s->syms, word, n) != 0)
        return PD_ENOMEM;
    for (size_t i = 1; i < s->syms.n; i++)
        if (bpe_add_bigram(s, (int32_t)i - 1, (int32_t)i) != 0)
            return PD_ENOMEM;
    while (s->heap.n > 0) {
        bigram_t b = heap_pop(&s->heap);
        sym_t *l = &s->syms.v[b.left], *r = &s->syms.v[b.right];
        if (l->n == 0 || r->n == 0 || l->n + r->n != b.size)
            continue; /* outdated: one side changed since it was queued */
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0)
            s->syms.v[r->next].prev = b.left;
        if (bpe_add_bigram(s, l->prev, b.left) != 0 || bpe_add_bigram(s, b.left, l->next) != 0)
            return PD_ENOMEM;
    }
    for (size_t i = 0; i < s->syms.n; i++) {
        const sym_t *sym = &s->syms.v[i];
        if (sym->n == 0)
            continue;
        int32_t id = find_token(t, word + sym->off, sym->n);
        if (id >= 0) {
            ids_push(out, id);
            continue;
        }
        /* llama.cpp: each byte of the mapped text as a one-byte token, and
         * bytes without one are dropped. */
        for (size_t j = 0; j < sym->n; j++) {
            id = find_token(t, word + sym->off + j, 1);
            if (id >= 0)
                ids_push(out, id);
        }
    }
    return 0;
}

/* Pre-tokenizes the fragment text[0..n) (valid UTF-8) and encodes each word. */
static int bpe_tokenize(bpe_t *s, const char *text, size_t n, ids_t *out, pd_err_t *err)
{
    if (n == 0)
        return 0; /* no code points, no words (and s->cpts may be NULL) */
    if (n > s->cpts_cap) {
        uint32_t *c = realloc(s->cpts, n * sizeof *c);
        if (!c)
            return pd_err_set(err, PD_ENOMEM, "tokenize: out of memory");
        s->cpts = c;
        s->cpts_cap = n;
    }
    size_t n_cpts = 0, pos = 0;
    while (pos < n)
        s->cpts[n_cpts++] = pd_utf8_next(text, &pos);
    size_t *lens = NULL, n_words = 0;
    if (pd_pretok_split(s->t->pre, s->cpts, n_cpts, &lens, &n_words) != 0)
        return pd_err_set(err, PD_ENOMEM, "tokenize: out of memory");
    size_t c = 0;
    int rc = 0;
    for (size_t w = 0; w < n_words && rc == 0; w++) {
        s->mapped.n = 0;
        for (size_t k = 0; k < lens[w] && rc == 0; k++, c++) {
            char u8[4], m[8];
            size_t nb = pd_utf8_encode(s->cpts[c], u8), nm = 0;
            for (size_t j = 0; j < nb; j++)
                nm += pd_utf8_encode(pd_gpt2_byte_to_cpt((uint8_t)u8[j]), m + nm);
            rc = buf_add(&s->mapped, m, nm);
        }
        if (rc == 0)
            rc = bpe_word(s, s->mapped.p, s->mapped.n, out);
    }
    free(lens);
    return rc ? pd_err_set(err, rc, "tokenize: out of memory") : 0;
}

/* ====== Encoding ====== */

/* A piece of the input: raw text, or a user-defined token found in it. */
typedef struct {
    int32_t id;   /* -1 for raw text */
    size_t off, len;
} frag_t;

typedef struct {
    frag_t *v;
    size_t n, cap;
} frags_t;

static int frags_push(frags_t *f, frag_t x)
{
    if (pd_grow((void **)&f->v, &f->cap, f->n + 1, sizeof *f->v, 16) != 0)
        return PD_ENOMEM;
    f->v[f->n++] = x;
    return 0;
}

/* llama.cpp's tokenizer_st_partition for parse_special = false: each
 * user-defined token, longest first, is cut out of every raw fragment. */
static int partition(const pd_tok_t *t, const char *text, size_t len, frags_t *frags)
{
    frags_t tmp = {0};
    int rc = 0;
    frags->n = 0;
    if (len > 0 && (rc = frags_push(frags, (frag_t){-1, 0, len})) != 0)
        return rc;
    for (uint32_t k = 0; k < t->n_specials && rc == 0; k++) {
        int32_t id = t->specials[k];
        const char *tok = t->text + t->off[id];
        size_t tl = t->len[id];
        tmp.n = 0;
        for (size_t i = 0; i < frags->n && rc == 0; i++) {
            frag_t f = frags->v[i];
            if (f.id >= 0) {
                rc = frags_push(&tmp, f);
                continue;
            }
            size_t pos = f.off, end = f.off + f.len;
            while (rc == 0) {
                const char *m = end - pos >= tl ? memmem(text + pos, end - pos, tok, tl) : NULL;
                if (!m) {
                    if (end > pos)
                        rc = frags_push(&tmp, (frag_t){-1, pos, end - pos});
                    break;
                }
                size_t at = (size_t)(m - text);
                if (at > pos)
                    rc = frags_push(&tmp, (frag_t){-1, pos, at - pos});
                if (rc == 0)
                    rc = frags_push(&tmp, (frag_t){id, at, tl});
                pos = at + tl;
            }
        }
        frags_t sw = *frags;
        *frags = tmp;
        tmp = sw;
    }
    free(tmp.v);
    return rc;
}

/* SPM text of a fragment: optional leading space, spaces as U+2581. */
static int spm_escape(buf_t *b, bool prefix, const char *s, size_t n)
{
    static const char esc[3] = {'\xe2', '\x96', '\x81'};
    b->n = 0;
    int rc = 0;
    if (prefix)
        rc = buf_add(b, esc, 3);
    for (size_t i = 0; i < n && rc == 0; i++)
        rc = s[i] == ' ' ? buf_add(b, esc, 3) : buf_add(b, s + i, 1);
    return rc;
}

int pd_tok_encode(const pd_tok_t *t, const char *text, size_t len, bool add_special,
                  int32_t *out, size_t cap, size_t *n_out, pd_err_t *err)
{
    ids_t ids = {out, out ? cap : 0, 0};
    frags_t frags = {0};
    spm_t spm = {0};
    bpe_t bpe = {0};
    buf_t esc = {0};
    size_t bad;
    int rc = 0;
    if (n_out)
        *n_out = 0;
    if (!text && len > 0)
        return pd_err_set(err, PD_EINVAL, "tokenize: NULL text");
    if (len > PD_TOK_MAX_TEXT_BYTES / 2) /* keeps symbol indices within int32 */
        return pd_err_set(err, PD_EINVAL, "tokenize: text of %zu bytes is too long (max %zu)",
                          len, PD_TOK_MAX_TEXT_BYTES / 2);
    if (len > 0 && !pd_utf8_valid(text, len, &bad))
        return pd_err_set(err, PD_EINVAL, "tokenize: invalid UTF-8 at byte %zu", bad);
    if ((rc = partition(t, text, len, &frags)) != 0) {
        pd_err_set(err, rc, "tokenize: out of memory");
        goto done;
    }
    if (add_special && t->add_bos)
        ids_push(&ids, t->bos);
    if (t->kind == PD_TOK_SPM) {
        spm.t = t;
        spm.heap.by_rank = false;
        bool prev_special = true; /* the first fragment gets the space prefix */
        for (size_t i = 0; i < frags.n && rc == 0; i++) {
            frag_t f = frags.v[i];
            if (f.id >= 0) {
                ids_push(&ids, f.id);
                prev_special = true;
                continue;
            }
            if ((rc = spm_escape(&esc, t->add_space_prefix && prev_special, text + f.off,
                                 f.len)) != 0) {
                pd_err_set(err, rc, "tokenize: out of memory");
                break;
            }
            rc = spm_tokenize(&spm, esc.p, esc.n, &ids, err);
            prev_special = false;
        }
    } else {
        bpe.t = t;
        bpe.heap.by_rank = true;
        for (size_t i = 0; i < frags.n && rc == 0; i++) {
            frag_t f = frags.v[i];
            if (f.id >= 0)
                ids_push(&ids, f.id);
            else
                rc = bpe_tokenize(&bpe, text + f.off, f.len, &ids, err);
        }
    }
    if (rc == 0 && add_special && t->add_eos)
        ids_push(&ids, t->eos);
done:
    free(frags.v);
    free(spm.syms.v);
    free(spm.heap.v);
    free(bpe.syms.v);
    free(bpe.heap.v);
    free(bpe.mapped.p);
    free(bpe.cpts);
    free(esc.p);
    if (rc != 0)
        return rc;
    if (n_out)
        *n_out = ids.n;
    if (ids.n > ids.cap)
        return pd_err_set(err, PD_ERANGE, "tokenize: %zu tokens do not fit in %zu", ids.n, cap);
    return 0;
}

/* ====== Decoding ====== */

/* Appends to b the bytes id stands for (token_to_piece, special = false). */
static int piece_append(const pd_tok_t *t, int32_t id, buf_t *b)
{
    const uint8_t a = t->attr[id];
    const char *s = t->text + t->off[id];
    size_t n = t->len[id];
    if (a & (ATTR_UNKNOWN | ATTR_CONTROL))
        return 0;
    if (a & ATTR_USER_DEFINED)
        return buf_add(b, s, n);
    if (a & ATTR_NORMAL) {
        if (t->kind == PD_TOK_SPM) { /* "▁" -> ' ' */
            int rc = buf_reserve(b, n);
            for (size_t i = 0; i < n && rc == 0; i++) {
                if (i + 2 < n && memcmp(s + i, "\xe2\x96\x81", 3) == 0) {
                    b->p[b->n++] = ' ';
                    i += 2;
                } else {
                    b->p[b->n++] = s[i];
                }
            }
            return rc;
        }
        /* BPE: each code point back to its byte; llama.cpp spells code
         * points outside the alphabet as "[UNK_BYTE_0x<hex><token>]". */
        size_t pos = 0, start = b->n;
        while (pos < n && b->n - start < PD_TOK_MAX_PIECE_BYTES) {
            uint32_t c = pd_utf8_next_lenient(s, n, &pos);
            int byte = pd_gpt2_cpt_to_byte(c);
            int rc;
            if (byte >= 0) {
                uint8_t v = (uint8_t)byte;
                rc = buf_add(b, &v, 1);
            } else {
                char u8[4], hx[16];
                size_t k = pd_utf8_encode(c, u8);
                rc = buf_add(b, "[UNK_BYTE_0x", 12);
                for (size_t j = 0; j < k && rc == 0; j++) {
                    snprintf(hx, sizeof hx, "%02x", (uint8_t)u8[j]);
                    rc = buf_add(b, hx, 2);
                }
                if (rc == 0)
                    rc = buf_add(b, s, n);
                if (rc == 0)
                    rc = buf_add(b, "]", 1);
            }
            if (rc != 0)
                return rc;
        }
        return 0;
    }
    if (a & ATTR_BYTE) {
        uint8_t v = (uint8_t)byte_token_value(s, n); /* checked at load */
        return buf_add(b, &v, 1);
    }
    return 0; /* unused / undefined: nothing */
}

/* Finds the longest piece (for pd_detok_max_bytes). */
static int measure_pieces(pd_tok_t *t)
{
    buf_t b = {0};
    t->max_piece = 0;
    for (uint32_t id = 0; id < t->n_vocab; id++) {
        b.n = 0;
        if (piece_append(t, (int32_t)id, &b) != 0) {
            free(b.p);
            return PD_ENOMEM;
        }
        if (b.n > t->max_piece)
            t->max_piece = b.n;
    }
    free(b.p);
    return 0;
}

size_t pd_detok_max_bytes(const pd_tok_t *t)
{
    return 3 * t->max_piece + 3;
}

int pd_tok_piece(const pd_tok_t *t, int32_t id, char *buf, size_t cap)
{
    if (id < 0 || (uint32_t)id >= t->n_vocab)
        return -1;
    buf_t b = {0};
    if (piece_append(t, id, &b) != 0 || b.n > (size_t)INT32_MAX) {
        free(b.p);
        return -1;
    }
    if (buf && cap && b.n)
        memcpy(buf, b.p, b.n < cap ? b.n : cap);
    int n = (int)b.n;
    free(b.p);
    return n;
}

int pd_tok_decode(const pd_tok_t *t, const int32_t *ids, size_t n, char *out, size_t cap)
{
    buf_t b = {0};
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        if (ids[i] < 0 || (uint32_t)ids[i] >= t->n_vocab)
            rc = PD_EINVAL;
        else
            rc = piece_append(t, ids[i], &b);
    }
    if (rc == 0 && b.n > (size_t)INT32_MAX)
        rc = PD_ERANGE;
    if (rc != 0) {
        free(b.p);
        return rc;
    }
    if (out && cap) {
        size_t k = b.n < cap ? b.n : cap - 1;
        if (k)
            memcpy(out, b.p, k);
        if (b.n < cap)
            out[b.n] = '\0';
    }
    int need = (int)b.n;
    free(b.p);
    return need;
}

/* ====== Incremental detokenizer ====== */

void pd_detok_init(pd_detok_t *d, bool strip_leading_space)
{
    memset(d, 0, sizeof *d);
    d->at_start = true;
    d->strip_leading = strip_leading_space;
}

static const char REPL[3] = {'\xef', '\xbf', '\xbd'}; /* U+FFFD */

/* Bytes a lead byte announces (0 for a byte that cannot start one), and
 * the allowed range of the second byte. */
static size_t utf8_need(uint8_t c, uint8_t *lo, uint8_t *hi)
{
    *lo = 0x80, *hi = 0xBF;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        return 2;
    if (c >= 0xE0 && c <= 0xEF) {
        if (c == 0xE0)
            *lo = 0xA0;
        if (c == 0xED)
            *hi = 0x9F;
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (c == 0xF0)
            *lo = 0x90;
        if (c == 0xF4)
            *hi = 0x8F;
        return 4;
    }
    return 0;
}

/* Emits n bytes (when out != NULL), applying the leading-space strip. */
static void detok_emit(pd_detok_t *d, const char *s, size_t n, char *out, size_t *w)
{
    if (n == 0)
        return;
    if (d->at_start) {
        d->at_start = false;
        if (d->strip_leading && s[0] == ' ') {
            s++;
            n--;
        }
    }
    if (out)
        memcpy(out + *w, s, n);
    *w += n;
}

/* Feeds bytes through the UTF-8 assembler. With out == NULL only counts. */
static void detok_feed(pd_detok_t *d, const uint8_t *p, size_t n, char *out, size_t *w)
{
    for (size_t i = 0; i < n; i++) {
        uint8_t c = p[i];
        if (d->n_pending > 0) {
            uint8_t lo, hi;
            size_t need = utf8_need(d->pending[0], &lo, &hi);
            bool ok = d->n_pending == 1 ? (c >= lo && c <= hi) : ((c & 0xC0) == 0x80);
            if (ok) {
                d->pending[d->n_pending++] = c;
                if (d->n_pending == need) {
                    detok_emit(d, (const char *)d->pending, need, out, w);
                    d->n_pending = 0;
                }
                continue;
            }
            /* the pending prefix can never complete */
            detok_emit(d, REPL, 3, out, w);
            d->n_pending = 0;
        }
        uint8_t lo, hi;
        size_t need = utf8_need(c, &lo, &hi);
        if (need == 1) {
            detok_emit(d, (const char *)&c, 1, out, w);
        } else if (need == 0) {
            detok_emit(d, REPL, 3, out, w);
        } else {
            d->pending[0] = c;
            d->n_pending = 1;
        }
    }
}

int pd_detok_push(const pd_tok_t *t, pd_detok_t *d, int32_t id, char *out, size_t cap)
{
    if (id < 0 || (uint32_t)id >= t->n_vocab)
        return PD_EINVAL;
    buf_t b = {0};
    if (piece_append(t, id, &b) != 0) {
        free(b.p);
        return PD_ENOMEM;
    }
    pd_detok_t dry = *d;
    size_t need = 0;
    detok_feed(&dry, (const uint8_t *)b.p, b.n, NULL, &need);
    if (need > cap || need > (size_t)INT32_MAX) {
        free(b.p);
        return PD_ERANGE;
    }
    size_t w = 0;
    detok_feed(d, (const uint8_t *)b.p, b.n, out, &w);
    free(b.p);
    return (int)w;
}

int pd_detok_flush(pd_detok_t *d, char *out, size_t cap)
{
    if (d->n_pending == 0)
        return 0;
    if (cap < 3)
        return PD_ERANGE;
    size_t w = 0;
    detok_emit(d, REPL, 3, out, &w);
    d->n_pending = 0;
    return (int)w;
}
