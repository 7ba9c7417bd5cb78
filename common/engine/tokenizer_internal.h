/* tokenizer_internal.h -- what the tokenizer's three files share: the
 * tokenizer's fields, token attributes, limits, lookups and a byte buffer.
 * tokenizer.c loads a vocabulary (and owns the lookups), tokenizer_encode.c
 * turns text into ids, tokenizer_decode.c ids into text. Not part of the
 * public API (tokenizer.h). */
#ifndef PD_TOKENIZER_INTERNAL_H
#define PD_TOKENIZER_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "base/grow.h"
#include "engine/tokenizer.h"
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

/* A hash table (tokenizer.c):
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

/* The id of the token whose text is s[0..n), or -1 (tokenizer.c). */
int32_t pd_tok__find_token(const pd_tok_t *t, const char *s, size_t n);
/* The merge rank of the pair (a, b), or -1 (tokenizer.c). */
int32_t pd_tok__find_rank(const pd_tok_t *t, const char *a, size_t na, const char *b, size_t nb);
/* The byte a BYTE token "<0xXX>" stands for, or -1 (tokenizer.c). */
int pd_tok__byte_value(const char *s, size_t n);
/* Sets t->max_piece, the bytes of the longest piece (tokenizer_decode.c). */
int pd_tok__measure_pieces(pd_tok_t *t);

/* A growable byte buffer. */
typedef struct {
    char *p;
    size_t n, cap;
} buf_t;

static inline int pd_tok__buf_reserve(buf_t *b, size_t extra)
{
    if (extra > SIZE_MAX / 2 - b->n)
        return PD_ENOMEM;
    return pd_grow((void **)&b->p, &b->cap, b->n + extra, 1, 256);
}

static inline int pd_tok__buf_add(buf_t *b, const void *s, size_t n)
{
    int rc = pd_tok__buf_reserve(b, n);
    if (rc == 0 && n > 0) {
        memcpy(b->p + b->n, s, n);
        b->n += n;
    }
    return rc;
}

#endif
