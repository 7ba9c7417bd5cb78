/* tokenizer_encode.c -- text to token ids: special-token partition, then
 * SentencePiece (score merges, byte fallback) or byte-level BPE (pre-
 * tokenizer regexes, merges by rank), as llama.cpp's llm_tokenizer_spm and
 * llm_tokenizer_bpe do. See tokenizer.h and tokenizer_internal.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/grow.h"
#include "engine/tokenizer_internal.h"
#include "engine/unicode.h"

/* ====== Shared pieces ====== */

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
    int32_t id = pd_tok__find_token(s->t, s->text + l->off, size);
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
    *id = pd_tok__find_token(t, b, 6);
    if (*id < 0)
        *id = pd_tok__find_token(t, (const char *)&byte, 1);
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
        int32_t id = pd_tok__find_token(s->t, text + sym->off, sym->n);
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
    int32_t rank = pd_tok__find_rank(s->t, s->word + l->off, l->n, s->word + r->off, r->n);
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
        int32_t id = pd_tok__find_token(t, word, n);
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
        int32_t id = pd_tok__find_token(t, word + sym->off, sym->n);
        if (id >= 0) {
            ids_push(out, id);
            continue;
        }
        /* llama.cpp: each byte of the mapped text as a one-byte token, and
         * bytes without one are dropped. */
        for (size_t j = 0; j < sym->n; j++) {
            id = pd_tok__find_token(t, word + sym->off + j, 1);
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
            rc = pd_tok__buf_add(&s->mapped, m, nm);
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
        rc = pd_tok__buf_add(b, esc, 3);
    for (size_t i = 0; i < n && rc == 0; i++)
        rc = s[i] == ' ' ? pd_tok__buf_add(b, esc, 3) : pd_tok__buf_add(b, s + i, 1);
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
