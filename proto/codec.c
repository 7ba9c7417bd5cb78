/* codec.c -- wire structures <-> C structs. See codec.h. */
#include "proto/codec.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* ====== Sampling ====== */

int pd_codec_sampling_from_pb(const Pd__Sampling *m, pd_sampling_t *out, pd_err_t *err)
{
    pd_sampling_default(out);
    if (m == NULL)
        return 0;
    if (m->has_temperature)
        out->temperature = m->temperature;
    if (m->has_top_k)
        out->top_k = m->top_k;
    if (m->has_top_p)
        out->top_p = m->top_p;
    if (m->has_min_p)
        out->min_p = m->min_p;
    if (m->has_repetition_penalty)
        out->repetition_penalty = m->repetition_penalty;
    if (m->has_presence_penalty)
        out->presence_penalty = m->presence_penalty;
    if (m->has_frequency_penalty)
        out->frequency_penalty = m->frequency_penalty;
    if (m->has_seed)
        out->seed = m->seed;
    /* The checks a client most often gets wrong, named plainly; the
     * sampler's own validation covers every field after. */
    if (!(out->temperature >= 0.0f) || !isfinite(out->temperature))
        return pd_err_set(err, PD_EINVAL, "sampling.temperature: must be >= 0, got %g",
                          (double)out->temperature);
    if (!(out->top_p > 0.0f && out->top_p <= 1.0f))
        return pd_err_set(err, PD_EINVAL, "sampling.top_p: must be in (0, 1], got %g",
                          (double)out->top_p);
    if (!(out->min_p >= 0.0f && out->min_p < 1.0f))
        return pd_err_set(err, PD_EINVAL, "sampling.min_p: must be in [0, 1), got %g",
                          (double)out->min_p);
    if (out->top_k < 0)
        return pd_err_set(err, PD_EINVAL, "sampling.top_k: must be >= 0, got %d", out->top_k);
    return pd_sampling_validate(out, err);
}

void pd_codec_sampling_to_pb(const pd_sampling_t *s, Pd__Sampling *m)
{
    pd__sampling__init(m);
    m->has_temperature = m->has_top_k = m->has_top_p = m->has_min_p = true;
    m->has_repetition_penalty = m->has_presence_penalty = m->has_frequency_penalty = true;
    m->has_seed = true;
    m->temperature = s->temperature;
    m->top_k = s->top_k;
    m->top_p = s->top_p;
    m->min_p = s->min_p;
    m->repetition_penalty = s->repetition_penalty;
    m->presence_penalty = s->presence_penalty;
    m->frequency_penalty = s->frequency_penalty;
    m->seed = s->seed;
}

/* ====== Generation parameters ====== */

int pd_codec_params_from_pb(const Pd__GenParams *m, const pd_gen_limits_t *lim,
                            pd_gen_params_t *out, pd_err_t *err)
{
    memset(out, 0, sizeof *out);
    if (m == NULL)
        return pd_err_set(err, PD_EINVAL, "params: missing");
    int rc = pd_codec_sampling_from_pb(m->sampling, &out->s, err);
    if (rc)
        return rc;
    if (!m->has_max_tokens || m->max_tokens == 0)
        return pd_err_set(err, PD_EINVAL, "params.max_tokens: must be >= 1");
    out->max_tokens = m->max_tokens;
    if (m->n_stop_ids > PD_MAX_STOP_IDS)
        return pd_err_set(err, PD_EINVAL, "params.stop_ids: %zu, at most %d", m->n_stop_ids,
                          PD_MAX_STOP_IDS);
    for (size_t i = 0; i < m->n_stop_ids; i++) {
        if (m->stop_ids[i] < 0 || (uint32_t)m->stop_ids[i] >= lim->vocab)
            return pd_err_set(err, PD_EINVAL, "params.stop_ids[%zu]: %d out of range", i,
                              m->stop_ids[i]);
        out->stop_ids[i] = m->stop_ids[i];
    }
    out->n_stop_ids = (uint32_t)m->n_stop_ids;
    out->ignore_eos = m->has_ignore_eos && m->ignore_eos;
    out->n_prompt = m->n_prompt;
    out->n_generated = m->n_generated;
    if (out->n_prompt == 0 || out->n_prompt >= lim->max_seq_len)
        return pd_err_set(err, PD_EINVAL, "params.n_prompt: %u, must be in [1, %u)",
                          out->n_prompt, lim->max_seq_len);
    if (out->n_generated >= out->max_tokens)
        return pd_err_set(err, PD_EINVAL, "params.n_generated: %u, must be below max_tokens %u",
                          out->n_generated, out->max_tokens);
    out->max_seq_len = m->has_max_seq_len && m->max_seq_len && m->max_seq_len < lim->max_seq_len
                           ? m->max_seq_len
                           : lim->max_seq_len;
    if ((uint64_t)out->n_prompt + out->n_generated >= out->max_seq_len)
        return pd_err_set(err, PD_EINVAL, "params: %u prompt + %u generated tokens fill the "
                          "context of %u", out->n_prompt, out->n_generated, out->max_seq_len);
    return 0;
}

void pd_codec_params_to_pb(const pd_gen_params_t *p, Pd__GenParams *m, Pd__Sampling *s)
{
    pd__gen_params__init(m);
    pd_codec_sampling_to_pb(&p->s, s);
    m->sampling = s;
    m->has_max_tokens = m->has_ignore_eos = m->has_n_prompt = true;
    m->has_n_generated = m->has_max_seq_len = true;
    m->max_tokens = p->max_tokens;
    m->n_stop_ids = p->n_stop_ids;
    m->stop_ids = (int32_t *)p->stop_ids; /* borrowed; protobuf-c's type is not const */
    m->ignore_eos = p->ignore_eos;
    m->n_prompt = p->n_prompt;
    m->n_generated = p->n_generated;
    m->max_seq_len = p->max_seq_len;
}

/* ====== A worker's limits ====== */

bool pd_codec_kv_dtype_known(const char *kv_dtype)
{
    return kv_dtype == NULL || strcmp(kv_dtype, "f32") == 0 || strcmp(kv_dtype, "f16") == 0;
}

void pd_codec_limits_to_pb(const pd_worker_limits_t *l, Pd__Register *m)
{
    m->has_block_size = m->has_total_blocks = m->has_max_batch_size = true;
    m->has_max_batch_tokens = m->has_max_seq_len = true;
    m->block_size = l->block_size;
    m->total_blocks = l->total_blocks;
    m->max_batch_size = l->max_batch_size;
    m->max_batch_tokens = l->max_batch_tokens;
    m->max_seq_len = l->max_seq_len;
    m->kv_dtype = l->kv_dtype[0] ? (char *)l->kv_dtype : NULL;
}

int pd_codec_limits_from_pb(const Pd__Register *m, pd_worker_limits_t *out, pd_err_t *err)
{
    memset(out, 0, sizeof *out);
    if (!m->has_block_size || m->block_size == 0)
        return pd_err_set(err, PD_EINVAL, "register.block_size: missing or 0");
    out->block_size = m->block_size;
    out->total_blocks = m->has_total_blocks ? m->total_blocks : 0;
    out->max_batch_size = m->has_max_batch_size ? m->max_batch_size : 0;
    out->max_batch_tokens = m->has_max_batch_tokens ? m->max_batch_tokens : 0;
    out->max_seq_len = m->has_max_seq_len ? m->max_seq_len : 0;
    const char *dt = m->kv_dtype ? m->kv_dtype : "f32";
    if (!pd_codec_kv_dtype_known(dt))
        return pd_err_set(err, PD_EINVAL, "register.kv_dtype: unknown (f32 or f16)");
    snprintf(out->kv_dtype, sizeof out->kv_dtype, "%s", dt);
    return 0;
}

/* ====== Load and counters ====== */

void pd_codec_counters_to_pb(const pd_worker_counters_t *c, Pd__WorkerCounters *m)
{
    pd__worker_counters__init(m);
    m->has_steps = m->has_multi_seq_steps = m->has_joins_while_running = true;
    m->has_retirements = m->has_preemptions = m->has_prefill_batches = true;
    m->has_prefill_multi = m->has_prefill_tokens = m->has_kv_sent_bytes = true;
    m->has_kv_recv_bytes = m->has_kv_rejected = m->has_decode_tokens = true;
    m->has_max_running = m->has_kv_transfers = m->has_kv_transfer_us = true;
    m->has_prefill_us = m->has_decode_us = m->has_prefill_pass_tokens = true;
    m->has_compute_turns = m->has_compute_busy_ms = m->has_mixed_steps = true;
    m->has_prefix_queries = m->has_prefix_hits = m->has_prefix_requests = true;
    m->has_prefix_evictions = m->has_prefix_cached_blocks = true;
    m->steps = c->steps;
    m->multi_seq_steps = c->multi_seq_steps;
    m->joins_while_running = c->joins_while_running;
    m->retirements = c->retirements;
    m->preemptions = c->preemptions;
    m->prefill_batches = c->prefill_batches;
    m->prefill_multi = c->prefill_multi;
    m->prefill_tokens = c->prefill_tokens;
    m->kv_sent_bytes = c->kv_sent_bytes;
    m->kv_recv_bytes = c->kv_recv_bytes;
    m->kv_rejected = c->kv_rejected;
    m->decode_tokens = c->decode_tokens;
    m->max_running = c->max_running;
    m->kv_transfers = c->kv_transfers;
    m->kv_transfer_us = c->kv_transfer_us;
    m->prefill_us = c->prefill_us;
    m->decode_us = c->decode_us;
    m->prefill_pass_tokens = c->prefill_pass_tokens;
    m->compute_turns = c->compute_turns;
    m->compute_busy_ms = c->compute_busy_ms;
    m->mixed_steps = c->mixed_steps;
    m->prefix_queries = c->prefix_queries;
    m->prefix_hits = c->prefix_hits;
    m->prefix_requests = c->prefix_requests;
    m->prefix_evictions = c->prefix_evictions;
    m->prefix_cached_blocks = c->prefix_cached_blocks;
}

void pd_codec_counters_from_pb(const Pd__WorkerCounters *m, pd_worker_counters_t *out)
{
    memset(out, 0, sizeof *out);
    if (m == NULL)
        return;
    /* protobuf-c leaves an absent field at its default, 0 for all of these. */
    out->steps = m->steps;
    out->multi_seq_steps = m->multi_seq_steps;
    out->joins_while_running = m->joins_while_running;
    out->retirements = m->retirements;
    out->preemptions = m->preemptions;
    out->prefill_batches = m->prefill_batches;
    out->prefill_multi = m->prefill_multi;
    out->prefill_tokens = m->prefill_tokens;
    out->kv_sent_bytes = m->kv_sent_bytes;
    out->kv_recv_bytes = m->kv_recv_bytes;
    out->kv_rejected = m->kv_rejected;
    out->decode_tokens = m->decode_tokens;
    out->max_running = m->max_running;
    out->kv_transfers = m->kv_transfers;
    out->kv_transfer_us = m->kv_transfer_us;
    out->prefill_us = m->prefill_us;
    out->decode_us = m->decode_us;
    out->prefill_pass_tokens = m->prefill_pass_tokens;
    out->compute_turns = m->compute_turns;
    out->compute_busy_ms = m->compute_busy_ms;
    out->mixed_steps = m->mixed_steps;
    out->prefix_queries = m->prefix_queries;
    out->prefix_hits = m->prefix_hits;
    out->prefix_requests = m->prefix_requests;
    out->prefix_evictions = m->prefix_evictions;
    out->prefix_cached_blocks = m->prefix_cached_blocks;
}

void pd_codec_load_to_pb(const pd_worker_load_t *l, Pd__Heartbeat *m, Pd__WorkerCounters *c)
{
    pd__heartbeat__init(m);
    m->has_queued_prefill_tokens = m->has_running_seqs = m->has_free_blocks = true;
    m->has_total_blocks = m->has_draining = m->has_waiting_seqs = true;
    m->has_kv_events_seq = l->kv_events_seq != 0;
    m->kv_events_seq = l->kv_events_seq;
    m->queued_prefill_tokens = l->queued_prefill_tokens;
    m->running_seqs = l->running_seqs;
    m->waiting_seqs = l->waiting_seqs;
    m->free_blocks = l->free_blocks;
    m->total_blocks = l->total_blocks;
    m->draining = l->draining;
    pd_codec_counters_to_pb(&l->counters, c);
    m->counters = c;
}

int pd_codec_load_from_pb(const Pd__Heartbeat *m, pd_worker_load_t *out, pd_err_t *err)
{
    memset(out, 0, sizeof *out);
    if (m->free_blocks > m->total_blocks)
        return pd_err_set(err, PD_EINVAL, "heartbeat.free_blocks: %u, above total_blocks %u",
                          m->free_blocks, m->total_blocks);
    out->queued_prefill_tokens = m->queued_prefill_tokens;
    out->running_seqs = m->running_seqs;
    out->waiting_seqs = m->waiting_seqs;
    out->free_blocks = m->free_blocks;
    out->total_blocks = m->total_blocks;
    out->draining = m->has_draining && m->draining;
    out->kv_events_seq = m->kv_events_seq;
    pd_codec_counters_from_pb(m->counters, &out->counters);
    return 0;
}

/* ====== Prefix cache events ====== */

void pd_codec_kv_events_to_pb(const pd_kv_events_t *e, Pd__KvEvents *m)
{
    pd__kv_events__init(m);
    m->has_seq = m->has_snapshot = true;
    m->seq = e->seq;
    m->snapshot = e->snapshot;
    m->n_hashes = m->n_removed = e->n;
    m->hashes = (uint64_t *)e->hashes;               /* borrowed; protobuf-c's type is not const */
    m->removed = (protobuf_c_boolean *)e->removed;
}

int pd_codec_kv_events_from_pb(const Pd__KvEvents *m, pd_kv_events_t *out, pd_err_t *err)
{
    memset(out, 0, sizeof *out);
    if (!m->has_seq || m->seq == 0)
        return pd_err_set(err, PD_EINVAL, "kv_events.seq: missing or 0");
    if (m->n_hashes != m->n_removed)
        return pd_err_set(err, PD_EINVAL, "kv_events.removed: %zu flags for %zu hashes",
                          m->n_removed, m->n_hashes);
    if (m->n_hashes > PD_KV_EVENTS_MAX)
        return pd_err_set(err, PD_EINVAL, "kv_events.hashes: %zu, over %d", m->n_hashes,
                          PD_KV_EVENTS_MAX);
    out->seq = m->seq;
    out->snapshot = m->has_snapshot && m->snapshot;
    out->n = m->n_hashes;
    out->hashes = m->hashes;
    out->removed = m->removed;
    return 0;
}

/* ====== Token entries ====== */

void pd_codec_token_to_pb(const pd_token_entry_t *t, Pd__TokenEntry *m)
{
    pd__token_entry__init(m);
    m->has_request_id = m->has_epoch = m->has_token = m->has_index = true;
    m->request_id = t->req;
    m->epoch = t->epoch;
    m->token = t->token;
    m->index = t->index;
    m->has_finish_reason = t->finish != PD__FINISH_REASON__FINISH_NONE;
    m->finish_reason = t->finish;
}

int pd_codec_token_from_pb(const Pd__TokenEntry *m, uint32_t vocab, pd_token_entry_t *out,
                           pd_err_t *err)
{
    memset(out, 0, sizeof *out);
    if (!m->has_request_id || m->request_id == 0)
        return pd_err_set(err, PD_EINVAL, "token.request_id: missing or 0");
    if (!m->has_epoch)
        return pd_err_set(err, PD_EINVAL, "token.epoch: missing (req %llu)",
                          (unsigned long long)m->request_id);
    if (!m->has_index)
        return pd_err_set(err, PD_EINVAL, "token.index: missing (req %llu)",
                          (unsigned long long)m->request_id);
    if (!m->has_token || m->token < 0 || (uint32_t)m->token >= vocab)
        return pd_err_set(err, PD_EINVAL, "token.token: %d outside the vocabulary [0, %u) "
                          "(req %llu)", m->has_token ? m->token : -1, vocab,
                          (unsigned long long)m->request_id);
    Pd__FinishReason fin = m->has_finish_reason ? m->finish_reason : PD__FINISH_REASON__FINISH_NONE;
    if (fin < PD__FINISH_REASON__FINISH_NONE || fin > PD__FINISH_REASON__FINISH_CONTEXT)
        return pd_err_set(err, PD_EINVAL, "token.finish_reason: %d unknown (req %llu)", (int)fin,
                          (unsigned long long)m->request_id);
    out->req = m->request_id;
    out->epoch = m->epoch;
    out->token = m->token;
    out->index = m->index;
    out->finish = fin;
    return 0;
}
