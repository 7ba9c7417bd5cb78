/* tokenizer.h -- tokenizers read from GGUF metadata, matching llama.cpp.
 *
 * Kinds (tokenizer.ggml.model):
 *   "llama" : SentencePiece-style. Pieces with scores; encode merges the
 *             best-scoring adjacent pair first; "▁" stands for a space; a
 *             space prefix is added (tokenizer.ggml.add_space_prefix,
 *             default true); unknown bytes fall back to <0xXX> tokens.
 *   "gpt2"  : byte-level BPE. Text is split by the pre-tokenizer of
 *             tokenizer.ggml.pre ("gpt-2", "llama-bpe", "qwen2", "smollm"
 *             and the names llama.cpp treats alike; absent or "default":
 *             llama.cpp's default splitter; other names are refused), bytes
 *             are mapped to GPT-2's printable alphabet, and merges
 *             (tokenizer.ggml.merges) are applied by rank.
 * Special ids: tokenizer.ggml.bos_token_id, eos_token_id, unknown_token_id,
 * padding_token_id, eot_token_id; add_bos_token / add_eos_token.
 *
 * Text in and out is UTF-8. Encoding refuses invalid UTF-8 with PD_EINVAL.
 */
#ifndef PD_TOKENIZER_H
#define PD_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/err.h"
#include "engine/gguf.h"

typedef struct pd_tok pd_tok_t;

typedef enum { PD_TOK_SPM = 1, PD_TOK_BPE = 2 } pd_tok_kind_t;

/* Builds the tokenizer from g's metadata (copies what it needs; g may be
 * freed afterwards). NULL and err on a missing/malformed/unsupported
 * tokenizer (token arrays of mismatched lengths, special ids out of range,
 * malformed byte tokens, unknown pre-tokenizer...). */
pd_tok_t *pd_tok_load(const pd_gguf_t *g, pd_err_t *err);
void pd_tok_free(pd_tok_t *t); /* accepts NULL */

pd_tok_kind_t pd_tok_kind(const pd_tok_t *t);
uint32_t pd_tok_n_vocab(const pd_tok_t *t);
int32_t pd_tok_bos(const pd_tok_t *t);      /* -1 if none */
int32_t pd_tok_eos(const pd_tok_t *t);      /* -1 if none */
bool pd_tok_add_bos(const pd_tok_t *t);     /* model wants BOS prepended */
/* End-of-generation: eos, eot, and other ids marked as such. */
bool pd_tok_is_eog(const pd_tok_t *t, int32_t id);

/* Encodes text[0..len). When add_special, BOS/EOS are added as the model's
 * metadata says. Writes at most cap ids to out and the full count to
 * *n_out; returns PD_ERANGE when cap was too small (n_out still set),
 * PD_EINVAL on invalid UTF-8 (err says at which byte) or on text over
 * 512 MiB. Special-token text
 * such as "<s>" in the input is encoded as plain text. */
int pd_tok_encode(const pd_tok_t *t, const char *text, size_t len, bool add_special,
                  int32_t *out, size_t cap, size_t *n_out, pd_err_t *err);

/* The bytes a token stands for in output text (SPM "▁" becomes ' ', byte
 * tokens become their byte, BPE bytes are unmapped; control tokens such
 * as BOS/EOS give no bytes). Returns the number of bytes (may exceed cap:
 * then only cap were written), or -1 for an id out of range. */
int pd_tok_piece(const pd_tok_t *t, int32_t id, char *buf, size_t cap);

/* Raw vocabulary string of id as stored in the GGUF ({NULL,0} if out of range). */
const char *pd_tok_text(const pd_tok_t *t, int32_t id, size_t *len);

/* ====== Incremental detokenizer ======
 *
 * Feeds ids one at a time and emits only complete UTF-8 characters: bytes
 * of a character split across tokens are held until it is complete. A
 * stream never contains broken UTF-8; bytes that can never become valid
 * are replaced by U+FFFD. Plain value type: copy it to snapshot a stream.
 */
typedef struct {
    uint8_t pending[8];  /* bytes of an unfinished UTF-8 character */
    uint8_t n_pending;
    bool at_start;       /* nothing emitted yet (SPM strips the prefix space
                            of the first piece only when strip_leading) */
    bool strip_leading;
} pd_detok_t;

void pd_detok_init(pd_detok_t *d, bool strip_leading_space);
/* Appends id's text to out (cap bytes); returns bytes written, or a negative
 * PD_E* code (PD_ERANGE if cap is too small, and then d is unchanged: at most
 * 3 * piece + 3 bytes are needed, since each byte that can never be valid
 * becomes the 3-byte U+FFFD; PD_EINVAL for an id out of range). */
int pd_detok_push(const pd_tok_t *t, pd_detok_t *d, int32_t id, char *out, size_t cap);
/* The most bytes one pd_detok_push can write for any id of t (3 x the
 * longest piece + 3): a buffer this large never gets PD_ERANGE. */
size_t pd_detok_max_bytes(const pd_tok_t *t);
/* Emits whatever is pending at the end of a stream (as U+FFFD). */
int pd_detok_flush(pd_detok_t *d, char *out, size_t cap);

/* Whole-sequence decode into out (NUL-terminated if room); returns bytes
 * needed excluding the NUL, or a negative code. */
int pd_tok_decode(const pd_tok_t *t, const int32_t *ids, size_t n, char *out, size_t cap);

#endif
