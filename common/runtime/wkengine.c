/* wkengine.c -- a worker's engine, sized from the config. See wkengine.h. */
#include "runtime/wkengine.h"

#include <stdlib.h>
#include <string.h>

#include "base/fault.h"

int pd_wkengine_init(pd_wkengine_t *e, const pd_config_t *cfg, bool prefill, bool decode,
                     pd_err_t *err)
{
    memset(e, 0, sizeof *e);
    e->end_tokens = cfg->model.end_tokens;
    e->n_end_tokens = cfg->model.n_end_tokens;
    e->model = pd_model_load_weights(cfg->model.path, cfg->model.resident, err);
    if (e->model == NULL)
        return pd_err_wrap(err, PD_EINVAL, "model %s", cfg->model.path);
    e->tok = pd_tok_load(e->model->gguf, err);
    if (e->tok == NULL)
        return pd_err_wrap(err, PD_EINVAL, "tokenizer");
    e->vocab = e->model->cfg.vocab_size;
    e->max_seq_len = e->model->cfg.ctx_len;
    if (cfg->model.max_seq_len && cfg->model.max_seq_len < e->max_seq_len)
        e->max_seq_len = cfg->model.max_seq_len;
    e->identity = pd_model_kv_identity(e->model, e->max_seq_len);
    pd_kv_shape_t shape = { e->model->cfg.n_layers, e->model->cfg.n_kv_heads,
                            e->model->cfg.head_dim, cfg->kv.block_size, 0, PD_KV_F32 };
    if (pd_kv_dtype_parse(cfg->kv.dtype, &shape.dtype) != 0)
        return pd_err_set(err, PD_EINVAL, "kv.dtype: unknown '%s'", cfg->kv.dtype);
    shape.n_blocks = cfg->kv.num_blocks
                         ? cfg->kv.num_blocks
                         : pd_kv_blocks_for_budget(&shape, (uint64_t)cfg->kv.memory_mb << 20);
    if (shape.n_blocks == 0)
        return pd_err_set(err, PD_EINVAL, "kv: no blocks fit (kv.num_blocks / kv.memory_mb)");
    e->kv = pd_kv_new(&shape, err);
    if (e->kv == NULL)
        return pd_err_wrap(err, PD_ENOMEM, "kv cache");
    e->block_bytes = pd_kv_block_bytes(e->kv);
    if (prefill && cfg->kv.prefix_caching) {
        /* The pool queues events between flushes (each loop turn, by the
         * prefill role); more than this many in one turn and a snapshot
         * replaces them. The root is the router's (router/prefix.c). */
        if (pd_kv_prefix_enable(e->kv, pd_kv_hash_root(e->model->identity, shape.block_size),
                                NULL, 65536, err) != 0)
            return pd_err_wrap(err, PD_ENOMEM, "prefix cache");
    }
    uint32_t pf_tokens = prefill ? cfg->prefill.max_batch_tokens : 0;
    uint32_t pf_seqs = prefill ? cfg->prefill.max_batch_size : 0;
    uint32_t dc_seqs = decode ? cfg->decode.max_batch_size : 0;
    e->max_fwd_tokens = pf_tokens > dc_seqs ? pf_tokens : dc_seqs;
    e->max_fwd_seqs = pf_seqs > dc_seqs ? pf_seqs : dc_seqs;
    if (prefill && decode) {
        /* A mixed step: every running sequence, and a chunk of prompts. */
        uint64_t mixed = (uint64_t)dc_seqs + cfg->prefill.chunk_tokens;
        if (mixed > e->max_fwd_tokens)
            e->max_fwd_tokens = mixed > 1048576 ? 1048576 : (uint32_t)mixed;
        e->max_fwd_seqs = pf_seqs + dc_seqs;
    }
    if (e->max_fwd_tokens == 0 || e->max_fwd_seqs == 0)
        return pd_err_set(err, PD_EINVAL, "batch limits: max_batch_tokens and max_batch_size "
                          "must be positive");
    if (e->max_fwd_seqs > e->max_fwd_tokens)
        e->max_fwd_tokens = e->max_fwd_seqs;
    pd_engine_opts_t eo;
    pd_engine_opts_default(&eo);
    eo.max_batch_tokens = e->max_fwd_tokens;
    eo.max_ctx = e->max_seq_len;
    eo.n_threads = cfg->model.threads ? (int)cfg->model.threads : 1;
    eo.batch_invariant = cfg->model.batch_invariant;
    eo.batch_invariant_quant = cfg->model.batch_invariant_quant;
    e->threads = eo.n_threads;
    e->engine = pd_engine_new(e->model, e->kv, &eo, err);
    if (e->engine == NULL)
        return pd_err_wrap(err, PD_ENOMEM, "engine");
    e->scratch = pd_sampler_scratch_new(e->vocab);
    e->logits = pd_malloc((size_t)e->max_fwd_seqs * e->vocab * sizeof *e->logits);
    e->b_tokens = pd_malloc(e->max_fwd_tokens * sizeof *e->b_tokens);
    e->b_pos = pd_malloc(e->max_fwd_tokens * sizeof *e->b_pos);
    e->b_seq = pd_malloc(e->max_fwd_tokens * sizeof *e->b_seq);
    e->b_want = pd_malloc(e->max_fwd_tokens * sizeof *e->b_want);
    e->b_tables = pd_malloc(e->max_fwd_seqs * sizeof *e->b_tables);
    e->b_ntable = pd_malloc(e->max_fwd_seqs * sizeof *e->b_ntable);
    if (!e->scratch || !e->logits || !e->b_tokens || !e->b_pos || !e->b_seq || !e->b_want ||
        !e->b_tables || !e->b_ntable)
        return pd_err_set(err, PD_ENOMEM, "batch buffers");
    return 0;
}

void pd_wkengine_free(pd_wkengine_t *e)
{
    free(e->logits);
    free(e->b_tokens);
    free(e->b_pos);
    free(e->b_seq);
    free(e->b_want);
    free(e->b_tables);
    free(e->b_ntable);
    pd_sampler_scratch_free(e->scratch);
    pd_engine_free(e->engine);
    pd_kv_free(e->kv);
    pd_tok_free(e->tok);
    pd_model_free(e->model);
    memset(e, 0, sizeof *e);
}

int pd_wkengine_forward(pd_wkengine_t *e, const pd_wkstep_t *st, pd_err_t *err)
{
    return pd_wkengine_forward_hooked(e, st, NULL, err);
}

int pd_wkengine_forward_hooked(pd_wkengine_t *e, const pd_wkstep_t *st,
                               const pd_forward_hooks_t *hooks, pd_err_t *err)
{
    pd_batch_t b = { st->n_rows, e->b_tokens, e->b_pos,  e->b_seq,
                     e->b_want,  st->n_seqs,  e->b_tables, e->b_ntable };
    return pd_forward_hooked(e->engine, &b, e->logits, hooks, err);
}

Pd__FinishReason pd_wkengine_finish(const pd_wkengine_t *e, const pd_gen_params_t *p,
                                    int32_t token, uint32_t index, uint32_t position)
{
    if (!p->ignore_eos && pd_tok_is_eog(e->tok, token))
        return PD__FINISH_REASON__FINISH_EOS;
    for (uint32_t i = 0; i < p->n_stop_ids; i++)
        if (p->stop_ids[i] == token)
            return PD__FINISH_REASON__FINISH_STOP_ID;
    for (uint32_t i = 0; i < e->n_end_tokens; i++)
        if (!p->ignore_eos && e->end_tokens[i] == token)
            return PD__FINISH_REASON__FINISH_EOS;
    if (index + 1 >= p->max_tokens)
        return PD__FINISH_REASON__FINISH_LENGTH;
    /* The token must be fed at `position` to go on: the context must hold it. */
    if (position + 1 >= p->max_seq_len)
        return PD__FINISH_REASON__FINISH_CONTEXT;
    return PD__FINISH_REASON__FINISH_NONE;
}
