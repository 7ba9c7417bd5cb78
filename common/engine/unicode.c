/* unicode.c -- code point classes, UTF-8, GPT-2 alphabet, pre-tokenizers.
 * See unicode.h. The splitters reproduce llama.cpp's src/unicode.cpp
 * (unicode_regex_split and its custom gpt2/llama3/qwen2 splitters)
 * behaviour for behaviour, including where it differs from a real regex. */
#include "engine/unicode.h"

#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "base/grow.h"

/* ====== Classes ====== */

/* llama.cpp's \s: Unicode White_Space. */
static bool is_whitespace_cpt(uint32_t c)
{
    if ((c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680)
        return true;
    if (c >= 0x2000 && c <= 0x200A)
        return true;
    return c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

uint16_t pd_unicode_flags(uint32_t cpt)
{
    if (cpt >= PD_UNICODE_MAX)
        return PD_UCAT_UNDEFINED;
    /* Binary search for the last range whose first <= cpt. */
    uint32_t lo = 0, hi = pd_ucat_n_ranges;
    while (hi - lo > 1) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (pd_ucat_ranges[mid].first <= cpt)
            lo = mid;
        else
            hi = mid;
    }
    uint16_t f = pd_ucat_ranges[lo].flags;
    if (is_whitespace_cpt(cpt))
        f |= PD_UCAT_WHITESPACE;
    return f;
}

/* ====== UTF-8 ====== */

bool pd_utf8_valid(const char *s, size_t len, size_t *bad_off)
{
    const uint8_t *p = (const uint8_t *)s;
    size_t i = 0;
    while (i < len) {
        uint8_t c = p[i];
        size_t need;
        uint8_t lo = 0x80, hi = 0xBF; /* allowed range of the 2nd byte */
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            need = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            if (c == 0xE0)
                lo = 0xA0; /* overlong */
            if (c == 0xED)
                hi = 0x9F; /* surrogates */
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            if (c == 0xF0)
                lo = 0x90; /* overlong */
            if (c == 0xF4)
                hi = 0x8F; /* > U+10FFFF */
        } else {
            goto bad; /* continuation byte, C0/C1 overlong lead, F5..FF */
        }
        if (len - i <= need)
            goto bad; /* truncated */
        if (p[i + 1] < lo || p[i + 1] > hi)
            goto bad;
        for (size_t k = 2; k <= need; k++)
            if ((p[i + k] & 0xC0) != 0x80)
                goto bad;
        i += need + 1;
        continue;
    bad:
        if (bad_off)
            *bad_off = i;
        return false;
    }
    return true;
}

size_t pd_utf8_lead_len(uint8_t lead)
{
    static const uint8_t lookup[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return lookup[lead >> 4];
}

uint32_t pd_utf8_next(const char *s, size_t *pos)
{
    const uint8_t *p = (const uint8_t *)s + *pos;
    uint32_t c = p[0];
    if (c < 0x80) {
        *pos += 1;
        return c;
    }
    if (c < 0xE0) {
        *pos += 2;
        return ((c & 0x1F) << 6) | (p[1] & 0x3F);
    }
    if (c < 0xF0) {
        *pos += 3;
        return ((c & 0x0F) << 12) | ((uint32_t)(p[1] & 0x3F) << 6) | (p[2] & 0x3F);
    }
    *pos += 4;
    return ((c & 0x07) << 18) | ((uint32_t)(p[1] & 0x3F) << 12) | ((uint32_t)(p[2] & 0x3F) << 6) |
           (p[3] & 0x3F);
}

/* llama.cpp's unicode_cpt_from_utf8: checks only the bit patterns (it
 * accepts overlongs and surrogates), and throws on anything else. */
static bool lenient_one(const uint8_t *p, size_t len, size_t *pos, uint32_t *out)
{
    size_t o = *pos;
    uint8_t c = p[o];
    if (!(c & 0x80)) {
        *out = c;
        *pos = o + 1;
        return true;
    }
    if (!(c & 0x40))
        return false;
    if (!(c & 0x20)) {
        if (o + 1 >= len || (p[o + 1] & 0xC0) != 0x80)
            return false;
        *out = ((uint32_t)(c & 0x1F) << 6) | (p[o + 1] & 0x3F);
        *pos = o + 2;
        return true;
    }
    if (!(c & 0x10)) {
        if (o + 2 >= len || (p[o + 1] & 0xC0) != 0x80 || (p[o + 2] & 0xC0) != 0x80)
            return false;
        *out = ((uint32_t)(c & 0x0F) << 12) | ((uint32_t)(p[o + 1] & 0x3F) << 6) | (p[o + 2] & 0x3F);
        *pos = o + 3;
        return true;
    }
    if (!(c & 0x08)) {
        if (o + 3 >= len || (p[o + 1] & 0xC0) != 0x80 || (p[o + 2] & 0xC0) != 0x80 ||
            (p[o + 3] & 0xC0) != 0x80)
            return false;
        *out = ((uint32_t)(c & 0x07) << 18) | ((uint32_t)(p[o + 1] & 0x3F) << 12) |
               ((uint32_t)(p[o + 2] & 0x3F) << 6) | (p[o + 3] & 0x3F);
        *pos = o + 4;
        return true;
    }
    return false;
}

uint32_t pd_utf8_next_lenient(const char *s, size_t len, size_t *pos)
{
    uint32_t c;
    if (lenient_one((const uint8_t *)s, len, pos, &c))
        return c;
    (*pos)++;
    return 0xFFFD;
}

size_t pd_utf8_decode_lenient(const char *s, size_t len, uint32_t *out)
{
    const uint8_t *p = (const uint8_t *)s;
    size_t pos = 0, n = 0;
    while (pos < len) {
        uint32_t c;
        if (lenient_one(p, len, &pos, &c)) {
            out[n++] = c;
        } else {
            pos++;
            out[n++] = 0xFFFD;
        }
    }
    return n;
}

size_t pd_utf8_encode(uint32_t c, char *out)
{
    if (c <= 0x7F) {
        out[0] = (char)c;
        return 1;
    }
    if (c <= 0x7FF) {
        out[0] = (char)(0xC0 | (c >> 6));
        out[1] = (char)(0x80 | (c & 0x3F));
        return 2;
    }
    if (c <= 0xFFFF) {
        out[0] = (char)(0xE0 | (c >> 12));
        out[1] = (char)(0x80 | ((c >> 6) & 0x3F));
        out[2] = (char)(0x80 | (c & 0x3F));
        return 3;
    }
    if (c <= 0x10FFFF) {
        out[0] = (char)(0xF0 | (c >> 18));
        out[1] = (char)(0x80 | ((c >> 12) & 0x3F));
        out[2] = (char)(0x80 | ((c >> 6) & 0x3F));
        out[3] = (char)(0x80 | (c & 0x3F));
        return 4;
    }
    return 0;
}

/* ====== GPT-2 byte alphabet ======
 * Printable bytes '!'..'~', 0xA1..0xAC, 0xAE..0xFF stand for themselves;
 * the remaining 68 (0x00..0x20, 0x7F..0xA0, 0xAD) become U+0100.. in order. */

uint32_t pd_gpt2_byte_to_cpt(uint8_t b)
{
    if (b <= 0x20)
        return 0x100 + b;
    if (b >= 0x7F && b <= 0xA0)
        return 0x100 + 33 + (b - 0x7F);
    if (b == 0xAD)
        return 0x100 + 33 + 34;
    return b;
}

int pd_gpt2_cpt_to_byte(uint32_t c)
{
    if ((c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF))
        return (int)c;
    if (c >= 0x100 && c < 0x100 + 33)
        return (int)(c - 0x100);
    if (c >= 0x100 + 33 && c < 0x100 + 67)
        return (int)(0x7F + (c - 0x100 - 33));
    if (c == 0x100 + 67)
        return 0xAD;
    return -1;
}

/* ====== Pre-tokenizers ====== */

typedef struct {
    size_t *v;
    size_t n, cap;
} lens_t;

static int lens_push(lens_t *l, size_t x)
{
    if (pd_grow((void **)&l->v, &l->cap, l->n + 1, sizeof *l->v, 64) != 0)
        return PD_ENOMEM;
    l->v[l->n++] = x;
    return 0;
}

/* One segment of the text being split, with llama.cpp's accessors: outside
 * [ini, end) a code point reads as OUT_OF_RANGE and its flags as 0. */
typedef struct {
    const uint32_t *cpts;
    size_t ini, end, prev_end;
    lens_t *out;
    int err;
} seg_t;

#define OUT_OF_RANGE 0xFFFFFFFFu

static uint32_t seg_cpt(const seg_t *s, size_t pos)
{
    return (pos >= s->ini && pos < s->end) ? s->cpts[pos] : OUT_OF_RANGE;
}

static uint16_t seg_flags(const seg_t *s, size_t pos)
{
    return (pos >= s->ini && pos < s->end) ? pd_unicode_flags(s->cpts[pos]) : 0;
}

/* Emits the word [prev_end, end); returns its length. */
static size_t seg_add(seg_t *s, size_t end)
{
    size_t len = end - s->prev_end;
    if (len > 0 && lens_push(s->out, len) != 0)
        s->err = PD_ENOMEM;
    s->prev_end = end;
    return len;
}

#define F_L(f) (((f) & PD_UCAT_LETTER) != 0)
#define F_N(f) (((f) & PD_UCAT_NUMBER) != 0)
#define F_WS(f) (((f) & PD_UCAT_WHITESPACE) != 0)

static uint32_t ascii_lower(uint32_t c)
{
    return (c >= 'A' && c <= 'Z') ? c + 32 : c;
}

/* 's|'t|'re|'ve|'m|'ll|'d (case-folded when fold). Returns the match
 * length in code points, 0 if none. */
static size_t match_contraction(const seg_t *s, size_t pos, bool fold)
{
    if (seg_cpt(s, pos) != '\'' || pos + 1 >= s->end)
        return 0;
    uint32_t c1 = seg_cpt(s, pos + 1);
    if (fold)
        c1 = ascii_lower(c1);
    if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd')
        return 2;
    if (pos + 2 < s->end) {
        uint32_t c2 = seg_cpt(s, pos + 2);
        if (fold)
            c2 = ascii_lower(c2);
        if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l'))
            return 3;
    }
    return 0;
}

/* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
static void split_gpt2(seg_t *s)
{
    for (size_t pos = s->ini; pos < s->end;) {
        uint32_t cpt = seg_cpt(s, pos);
        uint16_t flags = seg_flags(s, pos);
        size_t m = match_contraction(s, pos, false);
        if (m) {
            pos += seg_add(s, pos + m);
            continue;
        }
        uint16_t f2 = (cpt == ' ') ? seg_flags(s, pos + 1) : flags;
        if (F_L(f2)) {
            pos += (cpt == ' ');
            while (F_L(f2))
                f2 = seg_flags(s, ++pos);
            seg_add(s, pos);
            continue;
        }
        if (F_N(f2)) {
            pos += (cpt == ' ');
            while (F_N(f2))
                f2 = seg_flags(s, ++pos);
            seg_add(s, pos);
            continue;
        }
        if (!(F_WS(f2) || F_L(f2) || F_N(f2)) && f2) {
            pos += (cpt == ' ');
            while (!(F_WS(f2) || F_L(f2) || F_N(f2)) && f2)
                f2 = seg_flags(s, ++pos);
            seg_add(s, pos);
            continue;
        }
        size_t n_ws = 0;
        while (F_WS(seg_flags(s, pos + n_ws)))
            n_ws++;
        if (n_ws > 1 && seg_cpt(s, pos + n_ws) != OUT_OF_RANGE) { /* \s+(?!\S) */
            pos += n_ws - 1;
            seg_add(s, pos);
            continue;
        }
        if (n_ws > 0) { /* \s+ */
            pos += n_ws;
            seg_add(s, pos);
            continue;
        }
        seg_add(s, ++pos); /* no match */
    }
}

/* llama3 (max_digits 3) and qwen2 (max_digits 1):
 * (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,max}|
 *  ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+ */
static void split_llama3(seg_t *s, size_t max_digits)
{
    for (size_t pos = s->ini; pos < s->end;) {
        uint32_t cpt = seg_cpt(s, pos);
        uint16_t flags = seg_flags(s, pos);
        size_t m = match_contraction(s, pos, true);
        if (m) {
            pos += seg_add(s, pos + m);
            continue;
        }
        if (!(cpt == '\r' || cpt == '\n' || F_N(flags))) {
            if (F_L(flags) || F_L(seg_flags(s, pos + 1))) {
                pos++;
                while (F_L(seg_flags(s, pos)))
                    pos++;
                seg_add(s, pos);
                continue;
            }
        }
        if (F_N(flags)) {
            if (max_digits == 1) {
                pos++;
                seg_add(s, pos);
                continue;
            }
            size_t ini = pos;
            while (F_N(seg_flags(s, pos))) {
                if (++pos - ini >= max_digits) {
                    seg_add(s, pos);
                    ini = pos;
                }
            }
            seg_add(s, pos);
            continue;
        }
        uint16_t f2 = (cpt == ' ') ? seg_flags(s, pos + 1) : flags;
        if (!(F_WS(f2) || F_L(f2) || F_N(f2)) && flags) {
            pos += (cpt == ' ');
            while (!(F_WS(f2) || F_L(f2) || F_N(f2)) && f2)
                f2 = seg_flags(s, ++pos);
            uint32_t c2 = seg_cpt(s, pos);
            while (c2 == '\r' || c2 == '\n')
                c2 = seg_cpt(s, ++pos);
            seg_add(s, pos);
            continue;
        }
        size_t n_ws = 0, last_rn_end = 0;
        while (F_WS(seg_flags(s, pos + n_ws))) {
            uint32_t c2 = seg_cpt(s, pos + n_ws);
            if (c2 == '\r' || c2 == '\n')
                last_rn_end = pos + n_ws + 1;
            n_ws++;
        }
        if (last_rn_end > 0) { /* \s*[\r\n]+ */
            pos = last_rn_end;
            seg_add(s, pos);
            continue;
        }
        if (n_ws > 1 && seg_cpt(s, pos + n_ws) != OUT_OF_RANGE) {
            pos += n_ws - 1;
            seg_add(s, pos);
            continue;
        }
        if (n_ws > 0) {
            pos += n_ws;
            seg_add(s, pos);
            continue;
        }
        seg_add(s, ++pos);
    }
}

/* The simple patterns llama.cpp runs through std::regex on its collapsed
 * text (one byte per code point: ASCII as is, others by class). */
typedef enum {
    RUN_PUNCT,   /* [\p{P}\$\+<=>\^~\|]+ */
    RUN_NUMBERS, /* \p{N}+ */
    ONE_NUMBER,  /* \p{N} */
    DIGITS3,     /* [0-9][0-9][0-9] */
} simple_re_t;

/* Membership in the collapsed class: ASCII by its own byte, others by the
 * category (whitespace collapses to \v, so never a member). */
static bool in_class(simple_re_t re, uint32_t c)
{
    if (re == DIGITS3)
        return c >= '0' && c <= '9';
    if (c < 128) {
        if (re == RUN_PUNCT)
            return c != '`' && c > 0x20 && c < 0x7F && !(c >= '0' && c <= '9') &&
                   !((c | 0x20) >= 'a' && (c | 0x20) <= 'z');
        return c >= '0' && c <= '9';
    }
    uint16_t f = pd_unicode_flags(c);
    if (F_WS(f))
        return false;
    if (re == RUN_PUNCT)
        return (f & PD_UCAT_MASK) == PD_UCAT_PUNCTUATION;
    return (f & PD_UCAT_MASK) == PD_UCAT_NUMBER;
}

/* regex_iterator over the segment: matches and the gaps between them each
 * become a word. */
static void split_simple(seg_t *s, simple_re_t re)
{
    size_t pos = s->ini;
    while (pos < s->end) {
        /* find the next match start */
        size_t m = pos, mlen = 0;
        for (; m < s->end; m++) {
            if (re == DIGITS3) {
                if (m + 3 <= s->end && in_class(re, s->cpts[m]) && in_class(re, s->cpts[m + 1]) &&
                    in_class(re, s->cpts[m + 2])) {
                    mlen = 3;
                    break;
                }
            } else if (in_class(re, s->cpts[m])) {
                mlen = 1;
                if (re != ONE_NUMBER)
                    while (m + mlen < s->end && in_class(re, s->cpts[m + mlen]))
                        mlen++;
                break;
            }
        }
        if (mlen == 0) {
            seg_add(s, s->end);
            return;
        }
        seg_add(s, m);          /* gap before the match (if any) */
        seg_add(s, m + mlen);   /* the match */
        pos = m + mlen;
    }
}

typedef enum { PASS_GPT2, PASS_LLAMA3, PASS_QWEN2, PASS_SIMPLE } pass_kind_t;

/* Applies one pass to every segment in `in`, producing `out`. */
static int run_pass(pass_kind_t kind, simple_re_t re, const uint32_t *cpts, const lens_t *in,
                    lens_t *out)
{
    size_t start = 0;
    out->n = 0;
    for (size_t i = 0; i < in->n; i++) {
        seg_t s = {cpts, start, start + in->v[i], start, out, 0};
        start += in->v[i];
        switch (kind) {
        case PASS_GPT2: split_gpt2(&s); break;
        case PASS_LLAMA3: split_llama3(&s, 3); break;
        case PASS_QWEN2: split_llama3(&s, 1); break;
        case PASS_SIMPLE: split_simple(&s, re); break;
        }
        if (s.err)
            return s.err;
    }
    return 0;
}

int pd_pretok_split(pd_pretok_t kind, const uint32_t *cpts, size_t n, size_t **lens,
                    size_t *n_lens)
{
    lens_t a = {0}, b = {0};
    int rc = 0;
    *lens = NULL;
    *n_lens = 0;
    if (n == 0)
        return 0;
    if ((rc = lens_push(&a, n)) != 0)
        goto fail;
    /* Each pass re-splits the words of the previous one. */
    struct {
        pass_kind_t k;
        simple_re_t re;
    } passes[4] = {{0}}; /* .re is only set (and read) for PASS_SIMPLE */
    size_t n_passes = 0;
    switch (kind) {
    case PD_PRETOK_GPT2:
        passes[n_passes++].k = PASS_GPT2;
        break;
    case PD_PRETOK_LLAMA3:
        passes[n_passes++].k = PASS_LLAMA3;
        break;
    case PD_PRETOK_QWEN2:
        passes[n_passes++].k = PASS_QWEN2;
        break;
    case PD_PRETOK_SMOLLM:
        passes[n_passes].k = PASS_SIMPLE;
        passes[n_passes++].re = ONE_NUMBER;
        passes[n_passes++].k = PASS_GPT2;
        break;
    case PD_PRETOK_DEFAULT:
    default:
        passes[n_passes].k = PASS_SIMPLE;
        passes[n_passes++].re = RUN_PUNCT;
        passes[n_passes++].k = PASS_GPT2;
        passes[n_passes].k = PASS_SIMPLE;
        passes[n_passes++].re = RUN_NUMBERS;
        passes[n_passes].k = PASS_SIMPLE;
        passes[n_passes++].re = DIGITS3;
        break;
    }
    for (size_t i = 0; i < n_passes; i++) {
        if ((rc = run_pass(passes[i].k, passes[i].re, cpts, &a, &b)) != 0)
            goto fail;
        lens_t t = a;
        a = b;
        b = t;
    }
    free(b.v);
    *lens = a.v;
    *n_lens = a.n;
    return 0;
fail:
    free(a.v);
    free(b.v);
    return rc;
}
