/* tokenizer_decode.c -- token ids to text: a token's piece
 * (token_to_piece), whole sequences, and the incremental detokenizer that
 * never emits broken UTF-8. See tokenizer.h and tokenizer_internal.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/tokenizer_internal.h"
#include "engine/unicode.h"

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
        return pd_tok__buf_add(b, s, n);
    if (a & ATTR_NORMAL) {
        if (t->kind == PD_TOK_SPM) { /* "▁" -> ' ' */
            int rc = pd_tok__buf_reserve(b, n);
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
                rc = pd_tok__buf_add(b, &v, 1);
            } else {
                char u8[4], hx[16];
                size_t k = pd_utf8_encode(c, u8);
                rc = pd_tok__buf_add(b, "[UNK_BYTE_0x", 12);
                for (size_t j = 0; j < k && rc == 0; j++) {
                    snprintf(hx, sizeof hx, "%02x", (uint8_t)u8[j]);
                    rc = pd_tok__buf_add(b, hx, 2);
                }
                if (rc == 0)
                    rc = pd_tok__buf_add(b, s, n);
                if (rc == 0)
                    rc = pd_tok__buf_add(b, "]", 1);
            }
            if (rc != 0)
                return rc;
        }
        return 0;
    }
    if (a & ATTR_BYTE) {
        uint8_t v = (uint8_t)pd_tok__byte_value(s, n); /* checked at load */
        return pd_tok__buf_add(b, &v, 1);
    }
    return 0; /* unused / undefined: nothing */
}

/* Finds the longest piece (for pd_detok_max_bytes). */
int pd_tok__measure_pieces(pd_tok_t *t)
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
