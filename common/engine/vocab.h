/* vocab.h -- vocabularies for test models, built from GPT-2's BPE ranks.
 *
 * The ranks file is written by `node tools/export-gpt2-ranks.mjs OUT`
 * (scripts/models.sh puts it in $BUILD/data/gpt2-ranks.txt): '#' lines are
 * comments, every other line is one token's bytes in hex, in rank order
 * (ranks 0..255 are the single bytes), and a final "special <hex>" line.
 *
 * PD_VOCAB_BPE, n_vocab N (>= 257): ids 0..N-2 are GPT-2's first N-1 ranks
 * in GPT-2's unicode alphabet (any prefix of the ranks is a consistent BPE
 * vocabulary); merges are recovered by replaying BPE on each multi-byte
 * token with the lower ranks only (its last two parts form its merge);
 * id N-1 is "<|endoftext|>" (control), the BOS and EOS token.
 *
 * PD_VOCAB_SPM, n_vocab N (>= 260): 0 <unk> (unknown), 1 <s>, 2 </s>
 * (control), 3..258 <0x00>..<0xFF> (byte), then GPT-2's tokens in rank order
 * that are valid UTF-8, with every ' ' spelled U+2581 and duplicates
 * skipped, scored -(piece index) so that earlier ranks merge first.
 *
 * Both load in llama.cpp and in pd_tok_load as "llama" / "gpt2" tokenizers.
 */
#ifndef PD_VOCAB_H
#define PD_VOCAB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/err.h"
#include "engine/gguf.h"

typedef enum { PD_VOCAB_SPM = 1, PD_VOCAB_BPE = 2 } pd_vocab_kind_t;

typedef struct {
    const char *model;   /* "llama" or "gpt2" (static string) */
    pd_vocab_kind_t kind;
    uint32_t n_vocab;
    char **tokens;       /* (n_vocab) GGUF token strings, NUL-terminated */
    size_t *lens;        /* (n_vocab) byte lengths of tokens */
    float *scores;       /* (n_vocab) SPM scores; 0 for BPE */
    int32_t *types;      /* (n_vocab) 1 normal, 2 unknown, 3 control, 6 byte */
    char **merges;       /* (n_merges) BPE "a b" in GPT-2's alphabet; NULL for SPM */
    uint32_t n_merges;
    int32_t bos, eos, unk; /* -1 when absent */
    bool no_space_prefix;  /* SPM: write add_space_prefix = false (Gemma) */
} pd_vocab_t;

/* Builds the vocabulary of `kind` with n_vocab ids from the ranks file.
 * On error returns PD_EIO (unreadable file), PD_EFORMAT (bad line: err names
 * the line), PD_EINVAL (n_vocab too small or larger than the ranks allow)
 * or PD_ENOMEM, and leaves *out empty. Free with pd_vocab_free. */
int pd_vocab_build(const char *ranks_path, pd_vocab_kind_t kind, uint32_t n_vocab,
                   pd_vocab_t *out, pd_err_t *err);

/* Appends n control tokens (type 3: chat markers such as "<|im_start|>")
 * after the vocabulary's last id. Neither tokenizer can produce them from
 * plain text (no merge makes them); a chat template's renderer emits their
 * ids. Returns 0, PD_EINVAL (empty text) or PD_ENOMEM (v unchanged). */
int pd_vocab_add_specials(pd_vocab_t *v, const char *const *texts, size_t n, pd_err_t *err);

/* The id of the token whose text is s, or -1. */
int32_t pd_vocab_find(const pd_vocab_t *v, const char *s);

/* Frees what pd_vocab_build allocated; accepts NULL and an empty vocab. */
void pd_vocab_free(pd_vocab_t *v);

/* Adds the tokenizer.ggml.* keys for v to a GGUF being written: model,
 * pre (BPE only; e.g. "gpt-2", "llama-bpe", "qwen2"; NULL means "gpt-2",
 * "" leaves the key out so llama.cpp uses its "default"), tokens, scores (SPM),
 * token_type, merges (BPE), bos/eos/unknown ids, add_bos_token (true for
 * SPM and for pre "llama-bpe", false otherwise), add_eos_token (false),
 * add_space_prefix (SPM: true unless v->no_space_prefix). Returns 0 or a
 * PD_E* code. */
int pd_vocab_write_gguf(const pd_vocab_t *v, const char *pre, pd_gguf_writer_t *w, pd_err_t *err);

#endif
