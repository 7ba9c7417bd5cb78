/* forward.h -- the forward pass over a flattened batch.
 *
 * A batch is a list of tokens from many sequences, each token with its
 * position in its sequence and its sequence's block table. One call serves
 * batched prefill (many tokens per sequence), batched decode (one token per
 * sequence) and any mix. For every layer, K and V of every batch token are
 * written into the paged cache first, then each token attends to positions
 * 0..pos of its own sequence through the block table. So within a call a
 * sequence's tokens must come in increasing position order, contiguous,
 * and positions below the first one must already be in the cache.
 */
#ifndef PD_FORWARD_H
#define PD_FORWARD_H

#include <stdbool.h>
#include <stdint.h>

#include "base/err.h"
#include "engine/kvcache.h"
#include "engine/model.h"
#include "engine/pool.h"

typedef struct {
    uint32_t n_tokens;
    const int32_t *tokens;        /* (n_tokens) token ids */
    const int32_t *pos;           /* (n_tokens) position in its sequence */
    const int32_t *seq;           /* (n_tokens) index into block_tables */
    const bool *want_logits;      /* (n_tokens) rows whose logits are returned */
    uint32_t n_seqs;
    const int32_t *const *block_tables; /* (n_seqs) each (ceil((max pos+1)/block_size)) */
    const uint32_t *n_table;      /* (n_seqs) entries in each block table */
} pd_batch_t;

typedef struct {
    uint32_t max_batch_tokens;  /* largest n_tokens a call may pass */
    uint32_t max_ctx;           /* largest position + 1 (<= model ctx_len) */
    int n_threads;              /* compute threads, including the caller */
    uint32_t skinny_max_rows;   /* <= this many rows: our kernels, else sgemm */
    bool batch_invariant;       /* every product with float weights (F32, F16,
                                   BF16) through the skinny kernels in row chunks:
                                   a row's result is then bit-identical whatever
                                   else is in the batch (default true) */
    bool batch_invariant_quant; /* the same for quantized weights (default false:
                                   32-row chunks through the decode kernels
                                   (8 float lanes per block) make a prefill
                                   slower than the integer prefill kernel,
                                   pd_kern_qg_takes, whose bits differ from
                                   theirs) */
} pd_engine_opts_t;

typedef struct pd_engine pd_engine_t;

void pd_engine_opts_default(pd_engine_opts_t *o);

/* Allocates the run state for opts (all activations, once). model and kv
 * are borrowed and must outlive the engine; kv's shape must match model. */
pd_engine_t *pd_engine_new(const pd_model_t *model, pd_kv_t *kv, const pd_engine_opts_t *opts,
                           pd_err_t *err);
void pd_engine_free(pd_engine_t *e);

const pd_model_t *pd_engine_model(const pd_engine_t *e);
pd_kv_t *pd_engine_kv(pd_engine_t *e);
pd_pool_t *pd_engine_pool(pd_engine_t *e);

/* Runs the batch. logits receives, for each token with want_logits set, in
 * batch order, vocab_size floats: (n_wanted, vocab_size). Validates the
 * batch (token ids, positions, block ids) and returns PD_EINVAL naming the
 * bad field without touching the cache. */
int pd_forward(pd_engine_t *e, const pd_batch_t *b, float *logits, pd_err_t *err);

/* What a caller may learn while a pass runs (all optional). */
typedef struct {
    /* Called after layer `layer` has written the K and V of every batch
     * token into the cache, before that layer's attention: layers 0, 1, ...
     * in order, on the calling thread, with no pool work in flight. From
     * then on the call writes no K/V of layers <= layer, so the hook may
     * read those regions of the batch's blocks -- or hand them to another
     * thread (ZeroMQ's) that reads them while the pass goes on. Later
     * layers and later calls write only their own layers and positions.
     * The hook must not call into the engine. */
    void (*on_layer)(void *ctx, uint32_t layer);
    void *ctx;
} pd_forward_hooks_t;

/* pd_forward, telling hooks (NULL: none) how the pass goes: a prefill
 * worker ships each layer's KV while the later layers compute. */
int pd_forward_hooked(pd_engine_t *e, const pd_batch_t *b, float *logits,
                      const pd_forward_hooks_t *hooks, pd_err_t *err);

#endif
