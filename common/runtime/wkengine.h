/* wkengine.h -- the engine a worker computes with: model, tokenizer, paged
 * KV cache, forward pass, sampler scratch and the buffers a batch is built
 * in, sized once from the config for the roles the process runs. A
 * colocated worker's two roles share one (the KV then never moves).
 *
 * A plain struct, as pd_model_t: the roles read its fields and fill its
 * batch buffers; only pd_wkengine_init and pd_wkengine_free own them.
 */
#ifndef PD_WKENGINE_H
#define PD_WKENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/err.h"
#include "engine/forward.h"
#include "engine/kvcache.h"
#include "engine/model.h"
#include "engine/sampler.h"
#include "engine/tokenizer.h"
#include "proto/codec.h"
#include "proto/pd.pb-c.h"
#include "runtime/config.h"

/* One forward pass being built in an engine's batch buffers (below):
 * rows [0, n_rows) of b_tokens/b_pos/b_seq/b_want, sequences [0, n_seqs) of
 * b_tables/b_ntable; n_logits of the rows want logits, which the pass
 * writes to logits in row order. Whoever adds rows appends after those
 * already there, so several roles can share one pass (a colocated worker's
 * decode tokens and a prefill chunk: wkrole.h). */
typedef struct {
    uint32_t n_rows, n_seqs, n_logits;
    uint32_t max_rows;         /* rows this pass may hold (<= max_fwd_tokens) */
} pd_wkstep_t;

typedef struct {
    pd_model_t *model;
    pd_tok_t *tok;
    pd_kv_t *kv;
    pd_engine_t *engine;
    pd_sampler_scratch_t *scratch;
    uint32_t vocab;
    uint32_t max_seq_len;      /* the model's context, capped by model.max_seq_len */
    uint64_t identity;         /* pd_model_kv_identity(model, max_seq_len): what the
                                  router and the other workers must share */
    uint32_t max_fwd_tokens;   /* rows of one forward pass */
    uint32_t max_fwd_seqs;     /* sequences of one forward pass */
    size_t block_bytes;        /* one KV block, as shipped */
    int threads;
    const int32_t *end_tokens; /* (n_end_tokens) model.end_tokens */
    uint32_t n_end_tokens;
    float *logits;             /* (max_fwd_seqs, vocab) */
    int32_t *b_tokens, *b_pos, *b_seq; /* (max_fwd_tokens) batch being built */
    bool *b_want;              /* (max_fwd_tokens) */
    const int32_t **b_tables;  /* (max_fwd_seqs) */
    uint32_t *b_ntable;        /* (max_fwd_seqs) */
} pd_wkengine_t;

/* Loads cfg's model and tokenizer, makes the KV cache (kv.num_blocks or
 * kv.memory_mb; with prefix caching on when prefill and kv.prefix_caching)
 * and an engine sized for the roles asked for (prefill:
 * prefill.max_batch_tokens / max_batch_size; decode: decode.max_batch_size;
 * both: also a pass that mixes a whole decode batch with a prefill chunk of
 * prefill.chunk_tokens).
 * On failure err names what and e holds what was made: pd_wkengine_free it.
 * cfg must outlive e (end tokens are borrowed). */
int pd_wkengine_init(pd_wkengine_t *e, const pd_config_t *cfg, bool prefill, bool decode,
                     pd_err_t *err);
void pd_wkengine_free(pd_wkengine_t *e); /* accepts a zeroed or half-made e */

/* Runs the pass st describes (st->n_rows >= 1) into e->logits. 0, or the
 * engine's error (nothing computed). */
int pd_wkengine_forward(pd_wkengine_t *e, const pd_wkstep_t *st, pd_err_t *err);

/* Why generation ends after token (at output index, sequence position),
 * or FINISH_NONE: end-of-generation (unless ignore_eos), a stop id,
 * max_tokens, the context. */
Pd__FinishReason pd_wkengine_finish(const pd_wkengine_t *e, const pd_gen_params_t *p,
                                    int32_t token, uint32_t index, uint32_t position);

#endif
