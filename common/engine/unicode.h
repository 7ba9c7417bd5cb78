/* unicode.h -- the Unicode pieces the tokenizers need, classified exactly
 * as llama.cpp (src/unicode.cpp) classifies them.
 *
 *   - UTF-8: strict validation (for input we refuse), decoding, encoding.
 *   - Code point classes: general category (N L Z M P S C, or undefined)
 *     plus a whitespace bit, from the generated table in unicode_data.c
 *     (Unicode 15.1, the referee's version).
 *   - GPT-2's bytes_to_unicode alphabet for byte-level BPE.
 *   - Pre-tokenizers: the word splitters llama.cpp uses for
 *     tokenizer.ggml.pre. llama.cpp does not run a real regex engine for
 *     these: it hand-codes the gpt2, llama3 and qwen2 patterns (with its own
 *     edge cases) and runs std::regex on a "collapsed" text for the simple
 *     ones. We hand-code all of them the same way, so that the splits are
 *     llama.cpp's, not PCRE2's (tests/unit/test_tokenizer.c checks them
 *     against PCRE2 running the original regexes on text where the two must
 *     agree).
 */
#ifndef PD_UNICODE_H
#define PD_UNICODE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Code point class bits (llama.cpp's unicode_cpt_flags numbering). */
enum {
    PD_UCAT_UNDEFINED = 0x0001,   /* unassigned (Cn) or beyond U+10FFFF */
    PD_UCAT_NUMBER = 0x0002,      /* \p{N} */
    PD_UCAT_LETTER = 0x0004,      /* \p{L} */
    PD_UCAT_SEPARATOR = 0x0008,   /* \p{Z} */
    PD_UCAT_MARK = 0x0010,        /* \p{M} */
    PD_UCAT_PUNCTUATION = 0x0020, /* \p{P} */
    PD_UCAT_SYMBOL = 0x0040,      /* \p{S} */
    PD_UCAT_CONTROL = 0x0080,     /* \p{C} */
    PD_UCAT_MASK = 0x00FF,
    PD_UCAT_WHITESPACE = 0x0100,  /* \s as llama.cpp defines it */
};

#define PD_UNICODE_MAX 0x110000u  /* one past the last code point */

typedef struct {
    uint32_t first;  /* first code point of the range */
    uint8_t flags;   /* PD_UCAT_* category bit */
} pd_ucat_range_t;

extern const uint32_t pd_ucat_n_ranges;
extern const pd_ucat_range_t pd_ucat_ranges[];

/* Class bits of cpt (category | whitespace). Never 0 for any cpt. */
uint16_t pd_unicode_flags(uint32_t cpt);

/* ====== UTF-8 ====== */

/* Checks that s[0..len) is well-formed UTF-8 (no overlongs, no surrogates,
 * nothing above U+10FFFF, no truncated sequence). Returns true, or false
 * with *bad_off set to the offset of the first byte of the bad sequence. */
bool pd_utf8_valid(const char *s, size_t len, size_t *bad_off);

/* llama.cpp's unicode_len_utf8: sequence length from the lead byte alone
 * (1 for continuation and invalid bytes). */
size_t pd_utf8_lead_len(uint8_t lead);

/* Decodes the code point at s[*pos] of a string already checked with
 * pd_utf8_valid, and advances *pos. */
uint32_t pd_utf8_next(const char *s, size_t *pos);

/* Decodes s[0..len) the way llama.cpp's unicode_cpts_from_utf8 does: an
 * invalid sequence yields U+FFFD and skips one byte. out must hold len
 * code points. Returns the number written. */
size_t pd_utf8_decode_lenient(const char *s, size_t len, uint32_t *out);

/* One step of pd_utf8_decode_lenient: decodes at s[*pos] (pos < len),
 * advances *pos, returns the code point or U+FFFD. */
uint32_t pd_utf8_next_lenient(const char *s, size_t len, size_t *pos);

/* Encodes cpt (<= U+10FFFF) into out (4 bytes). Returns 1..4, 0 if too big. */
size_t pd_utf8_encode(uint32_t cpt, char *out);

/* ====== GPT-2 byte alphabet ====== */

/* bytes_to_unicode: printable Latin-1 bytes map to themselves, the other 68
 * to U+0100.. in byte order. */
uint32_t pd_gpt2_byte_to_cpt(uint8_t b);
/* Inverse; -1 when cpt is not in the alphabet. */
int pd_gpt2_cpt_to_byte(uint32_t cpt);

/* ====== Pre-tokenizers ====== */

typedef enum {
    PD_PRETOK_DEFAULT = 0, /* llama.cpp's fallback: 4 regexes in sequence */
    PD_PRETOK_GPT2,        /* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
    PD_PRETOK_LLAMA3,      /* (?i:'s|...)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+ */
    PD_PRETOK_QWEN2,       /* as llama3 with \p{N} instead of \p{N}{1,3} */
    PD_PRETOK_SMOLLM,      /* \p{N} first, then the gpt2 pattern */
} pd_pretok_t;

/* Splits the code points cpts[0..n) into words. Writes each word's length
 * (in code points) to *lens (allocated here, caller frees) and their count
 * to *n_lens. Returns 0 or PD_ENOMEM. */
int pd_pretok_split(pd_pretok_t kind, const uint32_t *cpts, size_t n, size_t **lens,
                    size_t *n_lens);

#endif
