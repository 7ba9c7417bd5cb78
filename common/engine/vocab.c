/* vocab.c -- test-model vocabularies from GPT-2's ranks. See vocab.h. */
#include "engine/vocab.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "base/grow.h"
#include "engine/unicode.h"

#define PD_VOCAB_MAX_RANKS 1000000u  /* more lines than any real rank table */
#define PD_VOCAB_MAX_TOKEN_BYTES 256 /* longest token we accept, bytes */
#define SPM_N_FIXED 259              /* <unk> <s> </s> and 256 byte tokens */

/* ====== Ranks file ====== */

typedef struct {
    uint8_t **bytes; /* (n) token bytes */
    size_t *lens;    /* (n) */
    uint32_t n;
    int32_t *slots;  /* open-addressing index bytes -> rank, -1 empty */
    uint64_t mask;
} ranks_t;

static void ranks_free(ranks_t *r)
{
    for (uint32_t i = 0; i < r->n; i++)
        free(r->bytes[i]);
    free(r->bytes);
    free(r->lens);
    free(r->slots);
    memset(r, 0, sizeof *r);
}

static int hexnib(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* rank of bytes, -1 if not a token */
static int32_t ranks_find(const ranks_t *r, const uint8_t *b, size_t n)
{
    uint64_t i = XXH3_64bits(b, n) & r->mask;
    for (;; i = (i + 1) & r->mask) {
        int32_t v = r->slots[i];
        if (v < 0)
            return -1;
        if (r->lens[v] == n && memcmp(r->bytes[v], b, n) == 0)
            return v;
    }
}

static int ranks_read(const char *path, ranks_t *r, pd_err_t *err)
{
    FILE *f = fopen(path, "r");
    char *line = NULL;
    size_t cap = 0, line_no = 0, cap_bytes = 0, cap_lens = 0;
    ssize_t got;
    int rc = 0;
    memset(r, 0, sizeof *r);
    if (!f)
        return pd_err_set(err, PD_EIO, "%s: cannot open the GPT-2 ranks file", path);
    while ((got = getline(&line, &cap, f)) >= 0) {
        line_no++;
        size_t n = (size_t)got;
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            n--;
        if (n == 0 || line[0] == '#')
            continue;
        if (n >= 8 && memcmp(line, "special ", 8) == 0)
            break; /* the special token; we spell it ourselves */
        if (n % 2 != 0 || n / 2 > PD_VOCAB_MAX_TOKEN_BYTES) {
            rc = pd_err_set(err, PD_EFORMAT, "%s:%zu: want hex of 1..%d bytes", path, line_no,
                            PD_VOCAB_MAX_TOKEN_BYTES);
            goto done;
        }
        if (r->n == PD_VOCAB_MAX_RANKS) {
            rc = pd_err_set(err, PD_EFORMAT, "%s: more than %u ranks", path, PD_VOCAB_MAX_RANKS);
            goto done;
        }
        if (pd_grow((void **)&r->bytes, &cap_bytes, r->n + 1, sizeof *r->bytes, 1024) != 0 ||
            pd_grow((void **)&r->lens, &cap_lens, r->n + 1, sizeof *r->lens, 1024) != 0) {
            rc = pd_err_set(err, PD_ENOMEM, "%s: out of memory", path);
            goto done;
        }
        uint8_t *b = malloc(n / 2);
        if (!b) {
            rc = pd_err_set(err, PD_ENOMEM, "%s: out of memory", path);
            goto done;
        }
        for (size_t i = 0; i < n / 2; i++) {
            int hi = hexnib((unsigned char)line[2 * i]), lo = hexnib((unsigned char)line[2 * i + 1]);
            if (hi < 0 || lo < 0) {
                free(b);
                rc = pd_err_set(err, PD_EFORMAT, "%s:%zu: not hex", path, line_no);
                goto done;
            }
            b[i] = (uint8_t)(hi * 16 + lo);
        }
        r->bytes[r->n] = b;
        r->lens[r->n] = n / 2;
        r->n++;
    }
    if (r->n < 256) {
        rc = pd_err_set(err, PD_EFORMAT, "%s: %u ranks, want at least the 256 bytes", path, r->n);
        goto done;
    }
    uint64_t size = 16;
    while (size < 2 * (uint64_t)r->n)
        size <<= 1;
    r->slots = malloc(size * sizeof *r->slots);
    if (!r->slots) {
        rc = pd_err_set(err, PD_ENOMEM, "%s: out of memory", path);
        goto done;
    }
    memset(r->slots, 0xFF, size * sizeof *r->slots);
    r->mask = size - 1;
    for (uint32_t k = 0; k < r->n; k++) {
        if (k < 256 && r->lens[k] != 1) {
            rc = pd_err_set(err, PD_EFORMAT, "%s: rank %u is not a single byte", path, k);
            goto done;
        }
        if (ranks_find(r, r->bytes[k], r->lens[k]) >= 0) {
            rc = pd_err_set(err, PD_EFORMAT, "%s: rank %u duplicates an earlier token", path, k);
            goto done;
        }
        uint64_t i = XXH3_64bits(r->bytes[k], r->lens[k]) & r->mask;
        while (r->slots[i] >= 0)
            i = (i + 1) & r->mask;
        r->slots[i] = (int32_t)k;
    }
done:
    free(line);
    fclose(f);
    if (rc != 0)
        ranks_free(r);
    return rc;
}

/* ====== Building ====== */

/* Bytes in GPT-2's unicode alphabet, NUL-terminated (caller frees). */
static char *to_gpt2_text(const uint8_t *b, size_t n, size_t *out_len)
{
    char *s = malloc(2 * n + 1);
    if (!s)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += pd_utf8_encode(pd_gpt2_byte_to_cpt(b[i]), s + k);
    s[k] = '\0';
    if (out_len)
        *out_len = k;
    return s;
}

/* The merge that makes rank `r`: replay BPE on its bytes with ranks < r
 * (always merging the adjacent pair whose join has the lowest rank); a
 * consistent table ends with two parts. Returns false when it does not. */
static bool find_merge(const ranks_t *rk, uint32_t r, size_t *split)
{
    const uint8_t *b = rk->bytes[r];
    size_t n = rk->lens[r];
    size_t start[PD_VOCAB_MAX_TOKEN_BYTES + 1]; /* part k = [start[k], start[k+1]) */
    size_t parts = n;
    for (size_t i = 0; i <= n; i++)
        start[i] = i;
    while (parts > 2) {
        int32_t best = -1;
        size_t at = 0;
        for (size_t k = 0; k + 1 < parts; k++) {
            int32_t x = ranks_find(rk, b + start[k], start[k + 2] - start[k]);
            if (x >= 0 && (uint32_t)x < r && (best < 0 || x < best)) {
                best = x;
                at = k;
            }
        }
        if (best < 0)
            return false;
        memmove(&start[at + 1], &start[at + 2], (parts - at - 1) * sizeof start[0]);
        parts--;
    }
    if (parts != 2)
        return false;
    int32_t a = ranks_find(rk, b, start[1]), c = ranks_find(rk, b + start[1], n - start[1]);
    if (a < 0 || c < 0 || (uint32_t)a >= r || (uint32_t)c >= r)
        return false;
    *split = start[1];
    return true;
}

static int alloc_vocab(pd_vocab_t *v, uint32_t n)
{
    v->n_vocab = n;
    v->tokens = calloc(n, sizeof *v->tokens);
    v->lens = calloc(n, sizeof *v->lens);
    v->scores = calloc(n, sizeof *v->scores);
    v->types = calloc(n, sizeof *v->types);
    return (v->tokens && v->lens && v->scores && v->types) ? 0 : PD_ENOMEM;
}

static int set_token(pd_vocab_t *v, uint32_t id, const char *s, int32_t type)
{
    v->tokens[id] = strdup(s);
    v->lens[id] = strlen(s);
    v->types[id] = type;
    return v->tokens[id] ? 0 : PD_ENOMEM;
}

static int build_bpe(const ranks_t *rk, uint32_t n_vocab, pd_vocab_t *v, pd_err_t *err)
{
    uint32_t n_ranks = n_vocab - 1;
    if (n_ranks > rk->n)
        return pd_err_set(err, PD_EINVAL, "BPE vocabulary of %u needs %u ranks, the file has %u",
                          n_vocab, n_ranks, rk->n);
    if (alloc_vocab(v, n_vocab) != 0)
        goto oom;
    v->merges = calloc(n_ranks > 256 ? n_ranks - 256 : 1, sizeof *v->merges);
    if (!v->merges)
        goto oom;
    for (uint32_t r = 0; r < n_ranks; r++) {
        v->tokens[r] = to_gpt2_text(rk->bytes[r], rk->lens[r], &v->lens[r]);
        v->types[r] = 1;
        if (!v->tokens[r])
            goto oom;
        if (r < 256)
            continue;
        size_t split;
        if (!find_merge(rk, r, &split))
            continue; /* unreachable token: no merge makes it */
        size_t la, lb;
        char *a = to_gpt2_text(rk->bytes[r], split, &la);
        char *b = to_gpt2_text(rk->bytes[r] + split, rk->lens[r] - split, &lb);
        char *m = (a && b) ? malloc(la + lb + 2) : NULL;
        if (m) {
            memcpy(m, a, la);
            m[la] = ' ';
            memcpy(m + la + 1, b, lb + 1);
        }
        free(a);
        free(b);
        if (!m)
            goto oom;
        v->merges[v->n_merges++] = m;
    }
    if (set_token(v, n_vocab - 1, "<|endoftext|>", 3) != 0)
        goto oom;
    v->bos = v->eos = (int32_t)(n_vocab - 1);
    v->unk = -1;
    return 0;
oom:
    return pd_err_set(err, PD_ENOMEM, "vocab: out of memory");
}

static uint64_t str_hash(const char *s, size_t n)
{
    return XXH3_64bits(s, n);
}

static int build_spm(const ranks_t *rk, uint32_t n_vocab, pd_vocab_t *v, pd_err_t *err)
{
    int32_t *seen = NULL;
    uint64_t size = 16, mask;
    if (alloc_vocab(v, n_vocab) != 0)
        goto oom;
    while (size < 2 * (uint64_t)n_vocab)
        size <<= 1;
    mask = size - 1;
    seen = malloc(size * sizeof *seen);
    if (!seen)
        goto oom;
    memset(seen, 0xFF, size * sizeof *seen);
    if (set_token(v, 0, "<unk>", 2) || set_token(v, 1, "<s>", 3) || set_token(v, 2, "</s>", 3))
        goto oom;
    for (int b = 0; b < 256; b++) {
        char s[8];
        snprintf(s, sizeof s, "<0x%02X>", b);
        if (set_token(v, 3 + (uint32_t)b, s, 6))
            goto oom;
    }
    uint32_t id = 0;
    /* index the fixed tokens, then add pieces until full */
    for (;; id++) {
        if (id == SPM_N_FIXED)
            break;
        uint64_t i = str_hash(v->tokens[id], v->lens[id]) & mask;
        while (seen[i] >= 0)
            i = (i + 1) & mask;
        seen[i] = (int32_t)id;
    }
    uint32_t piece = 0;
    for (uint32_t r = 0; r < rk->n && id < n_vocab; r++) {
        const uint8_t *b = rk->bytes[r];
        size_t n = rk->lens[r];
        if (!pd_utf8_valid((const char *)b, n, NULL) || memchr(b, 0, n))
            continue; /* GGUF readers take strings as C strings */
        char *s = malloc(3 * n + 1);
        if (!s)
            goto oom;
        size_t k = 0;
        for (size_t j = 0; j < n; j++) {
            if (b[j] == ' ') {
                memcpy(s + k, "\xe2\x96\x81", 3);
                k += 3;
            } else {
                s[k++] = (char)b[j];
            }
        }
        s[k] = '\0';
        uint64_t i = str_hash(s, k) & mask;
        bool dup = false;
        for (; seen[i] >= 0; i = (i + 1) & mask)
            if (v->lens[seen[i]] == k && memcmp(v->tokens[seen[i]], s, k) == 0)
                dup = true;
        if (dup) {
            free(s);
            continue;
        }
        seen[i] = (int32_t)id;
        v->tokens[id] = s;
        v->lens[id] = k;
        v->types[id] = 1;
        v->scores[id] = -(float)piece;
        piece++;
        id++;
    }
    free(seen);
    if (id < n_vocab)
        return pd_err_set(err, PD_EINVAL, "SPM vocabulary of %u: the ranks give only %u tokens",
                          n_vocab, id);
    v->bos = 1, v->eos = 2, v->unk = 0;
    return 0;
oom:
    free(seen);
    return pd_err_set(err, PD_ENOMEM, "vocab: out of memory");
}

int pd_vocab_build(const char *ranks_path, pd_vocab_kind_t kind, uint32_t n_vocab,
                   pd_vocab_t *out, pd_err_t *err)
{
    ranks_t rk;
    int rc;
    memset(out, 0, sizeof *out);
    if (kind == PD_VOCAB_BPE && n_vocab < 257)
        return pd_err_set(err, PD_EINVAL, "BPE vocabulary needs n_vocab >= 257, got %u", n_vocab);
    if (kind == PD_VOCAB_SPM && n_vocab < SPM_N_FIXED + 1)
        return pd_err_set(err, PD_EINVAL, "SPM vocabulary needs n_vocab >= %u, got %u",
                          SPM_N_FIXED + 1, n_vocab);
    if (kind != PD_VOCAB_BPE && kind != PD_VOCAB_SPM)
        return pd_err_set(err, PD_EINVAL, "unknown vocabulary kind %d", (int)kind);
    if ((rc = ranks_read(ranks_path, &rk, err)) != 0)
        return rc;
    out->kind = kind;
    out->model = kind == PD_VOCAB_BPE ? "gpt2" : "llama";
    rc = kind == PD_VOCAB_BPE ? build_bpe(&rk, n_vocab, out, err) : build_spm(&rk, n_vocab, out, err);
    ranks_free(&rk);
    if (rc != 0)
        pd_vocab_free(out);
    return rc;
}

int pd_vocab_add_specials(pd_vocab_t *v, const char *const *texts, size_t n, pd_err_t *err)
{
    for (size_t i = 0; i < n; i++)
        if (texts[i] == NULL || texts[i][0] == '\0')
            return pd_err_set(err, PD_EINVAL, "vocab: special token %zu is empty", i);
    const size_t m = (size_t)v->n_vocab + n;
    char **tokens = realloc(v->tokens, m * sizeof *tokens);
    if (tokens)
        v->tokens = tokens;
    size_t *lens = tokens ? realloc(v->lens, m * sizeof *lens) : NULL;
    if (lens)
        v->lens = lens;
    float *scores = lens ? realloc(v->scores, m * sizeof *scores) : NULL;
    if (scores)
        v->scores = scores;
    int32_t *types = scores ? realloc(v->types, m * sizeof *types) : NULL;
    if (types)
        v->types = types;
    if (types == NULL)
        return pd_err_set(err, PD_ENOMEM, "vocab: out of memory");
    for (size_t i = 0; i < n; i++) {
        uint32_t id = v->n_vocab;
        v->scores[id] = 0.0f;
        if (set_token(v, id, texts[i], 3) != 0)
            return pd_err_set(err, PD_ENOMEM, "vocab: out of memory");
        v->n_vocab++;
    }
    return 0;
}

int32_t pd_vocab_find(const pd_vocab_t *v, const char *s)
{
    size_t n = strlen(s);
    for (uint32_t i = 0; i < v->n_vocab; i++)
        if (v->lens[i] == n && memcmp(v->tokens[i], s, n) == 0)
            return (int32_t)i;
    return -1;
}

void pd_vocab_free(pd_vocab_t *v)
{
    if (!v)
        return;
    if (v->tokens)
        for (uint32_t i = 0; i < v->n_vocab; i++)
            free(v->tokens[i]);
    if (v->merges)
        for (uint32_t i = 0; i < v->n_merges; i++)
            free(v->merges[i]);
    free(v->tokens);
    free(v->lens);
    free(v->scores);
    free(v->types);
    free(v->merges);
    memset(v, 0, sizeof *v);
}

int pd_vocab_write_gguf(const pd_vocab_t *v, const char *pre, pd_gguf_writer_t *w, pd_err_t *err)
{
    int rc = 0;
    bool spm = v->kind == PD_VOCAB_SPM;
    bool add_bos = spm || (pre && strcmp(pre, "llama-bpe") == 0);
    rc |= pd_gguf_writer_add_str(w, "tokenizer.ggml.model", v->model);
    if (!spm && !(pre && pre[0] == '\0'))
        rc |= pd_gguf_writer_add_str(w, "tokenizer.ggml.pre", pre ? pre : "gpt-2");
    rc |= pd_gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)v->tokens,
                                     v->lens, v->n_vocab);
    if (spm)
        rc |= pd_gguf_writer_add_arr(w, "tokenizer.ggml.scores", PD_GGUF_TYPE_FLOAT32, v->scores,
                                     v->n_vocab);
    rc |= pd_gguf_writer_add_arr(w, "tokenizer.ggml.token_type", PD_GGUF_TYPE_INT32, v->types,
                                 v->n_vocab);
    if (!spm)
        rc |= pd_gguf_writer_add_arr_str(w, "tokenizer.ggml.merges",
                                         (const char *const *)v->merges, NULL, v->n_merges);
    if (v->bos >= 0)
        rc |= pd_gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)v->bos);
    if (v->eos >= 0)
        rc |= pd_gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)v->eos);
    if (v->unk >= 0)
        rc |= pd_gguf_writer_add_u32(w, "tokenizer.ggml.unknown_token_id", (uint32_t)v->unk);
    rc |= pd_gguf_writer_add_bool(w, "tokenizer.ggml.add_bos_token", add_bos);
    rc |= pd_gguf_writer_add_bool(w, "tokenizer.ggml.add_eos_token", false);
    if (spm)
        rc |= pd_gguf_writer_add_bool(w, "tokenizer.ggml.add_space_prefix", !v->no_space_prefix);
    if (rc != 0)
        return pd_err_set(err, PD_EINVAL, "vocab: could not add the tokenizer keys to the GGUF");
    return 0;
}
