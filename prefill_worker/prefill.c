/* prefill.c -- the prefill role: its task table, PrefillTask intake,
 * batched passes, the first token, the hand-off; and the table of functions
 * its host calls. KV shipping and leases are egress.c. See prefill.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/fault.h"
#include "base/grow.h"
#include "base/log.h"
#include "prefill_internal.h"

/* Most tasks held at once (queued, shipping, leased): beyond it, new ones
 * are refused with RESOURCE_EXHAUSTED. */
#define PF_MAX_TASKS 4096

/* ====== Task table ====== */

static void task_free(pd_prefill_t *p, pf_task_t *t)
{
    if (t == NULL)
        return;
    pd_kv_seq_release(p->eng->kv, &t->seq);
    free(t->tokens);
    free(t);
}

void pf_task_remove(pd_prefill_t *p, size_t i)
{
    task_free(p, p->tasks[i]);
    memmove(&p->tasks[i], &p->tasks[i + 1], (p->n_tasks - i - 1) * sizeof *p->tasks);
    p->n_tasks--;
}

bool pf_task_drop(pd_prefill_t *p, size_t i)
{
    pf_task_t *t = p->tasks[i];
    if (atomic_load(&t->frames_out) == 0) {
        pf_task_remove(p, i);
        return true;
    }
    /* Streamed frames still read its blocks: the timers free it once
     * ZeroMQ lets go, or reset the socket at the lease's end. */
    t->cancelled = true;
    if (t->st != PT_LEASED) {
        t->st = PT_LEASED;
        t->acked = false;
        t->lease_deadline_ms = pf_now_ms(p) + p->cfg->worker.lease_ms;
    }
    return false;
}

int pf_task_index(const pd_prefill_t *p, uint64_t req, uint32_t epoch)
{
    for (size_t i = 0; i < p->n_tasks; i++)
        if (p->tasks[i]->req == req && (epoch == 0 || p->tasks[i]->epoch == epoch))
            return (int)i;
    return -1;
}

static uint32_t queued_tokens(const pd_prefill_t *p)
{
    uint32_t n = 0;
    for (size_t i = 0; i < p->n_tasks; i++)
        if (p->tasks[i]->st == PT_QUEUED && !p->tasks[i]->cancelled)
            n += p->tasks[i]->n_tokens - p->tasks[i]->n_done;
    return n;
}

uint32_t pd_prefill_n_tasks(const pd_prefill_t *p) { return (uint32_t)p->n_tasks; }

/* ====== Messages ====== */

/* Checks everything but the task table; 0 or an Error already sent. */
static int check_task(pd_prefill_t *p, const Pd__PrefillTask *m, pd_gen_params_t *params)
{
    pd_err_t err = { 0 };
    uint64_t req = m->request_id;
    pd_gen_limits_t lim = { p->eng->vocab, p->eng->max_seq_len };
    if (pd_codec_params_from_pb(m->params, &lim, params, &err) != 0) {
        pd_wkport_error(p->port, req, PD__ERROR_CODE__INVALID_ARGUMENT, "prefill task: %s",
                        err.msg);
        return PD_EINVAL;
    }
    if (m->n_tokens == 0 || m->n_tokens != (size_t)params->n_prompt + params->n_generated) {
        pd_wkport_error(p->port, req, PD__ERROR_CODE__INVALID_ARGUMENT,
                        "prefill task: %zu tokens, expected n_prompt %u + n_generated %u",
                        m->n_tokens, params->n_prompt, params->n_generated);
        return PD_EINVAL;
    }
    for (size_t i = 0; i < m->n_tokens; i++)
        if (m->tokens[i] < 0 || (uint32_t)m->tokens[i] >= p->eng->vocab) {
            pd_wkport_error(p->port, req, PD__ERROR_CODE__INVALID_ARGUMENT,
                            "prefill task: tokens[%zu] = %d outside the vocabulary", i,
                            m->tokens[i]);
            return PD_EINVAL;
        }
    const char *did = m->decode_worker_id ? m->decode_worker_id : "";
    bool colocated = strcmp(did, p->id) == 0;
    if (colocated && p->colocated.take == NULL) {
        pd_wkport_error(p->port, req, PD__ERROR_CODE__INVALID_ARGUMENT,
                        "prefill task: decode worker is this prefill-only worker");
        return PD_EINVAL;
    }
    if (!colocated && (did[0] == '\0' || strlen(did) >= 64 || m->decode_kv_endpoint == NULL ||
                       m->decode_kv_endpoint[0] == '\0' ||
                       strlen(m->decode_kv_endpoint) >= PD_CFG_STR)) {
        pd_wkport_error(p->port, req, PD__ERROR_CODE__INVALID_ARGUMENT,
                        "prefill task: decode_worker_id and decode_kv_endpoint are required");
        return PD_EINVAL;
    }
    pd_kv_t *kv = p->eng->kv;
    if (pd_kv_blocks_needed(kv, 0, (uint32_t)m->n_tokens + 1) > pd_kv_shape(kv)->n_blocks) {
        pd_wkport_error(p->port, req, PD__ERROR_CODE__RESOURCE_EXHAUSTED,
                        "prefill task: %zu tokens need more KV blocks than this worker has (%u)",
                        m->n_tokens, pd_kv_shape(kv)->n_blocks);
        return PD_ERANGE;
    }
    return 0;
}

static void on_task(void *self, const Pd__Msg *msg)
{
    pd_prefill_t *p = self;
    const Pd__PrefillTask *m = msg->prefill;
    uint64_t req = m->request_id;
    if (!m->has_request_id || req == 0 || !m->has_epoch) {
        pd_wkport_error(p->port, 0, PD__ERROR_CODE__INVALID_ARGUMENT,
                        "prefill task: request_id and epoch are required");
        return;
    }
    pd_gen_params_t params;
    if (check_task(p, m, &params) != 0)
        return;
    /* A newer epoch replaces whatever we still hold of an older one. */
    for (int i; (i = pf_task_index(p, req, 0)) >= 0;) {
        pf_task_t *o = p->tasks[i];
        if (o->epoch >= m->epoch) {
            PD_WARN("event=stale_prefill_task req=%llu epoch=%u have=%u", (unsigned long long)req,
                    m->epoch, o->epoch);
            return;
        }
        if (o->st == PT_LEASED || !pf_task_drop(p, (size_t)i))
            break; /* its lease runs out on its own */
    }
    if (p->n_tasks >= PF_MAX_TASKS) {
        pd_wkport_error(p->port, req, PD__ERROR_CODE__RESOURCE_EXHAUSTED,
                        "prefill worker %s holds %zu tasks", p->id, p->n_tasks);
        return;
    }
    if (pd_grow((void **)&p->tasks, &p->cap_tasks, p->n_tasks + 1, sizeof *p->tasks, 64) != 0)
        goto oom;
    pf_task_t *t = pd_calloc(1, sizeof *t);
    if (t == NULL)
        goto oom;
    t->tokens = pd_malloc(m->n_tokens * sizeof *t->tokens);
    if (t->tokens == NULL) {
        free(t);
        goto oom;
    }
    memcpy(t->tokens, m->tokens, m->n_tokens * sizeof *t->tokens);
    t->req = req;
    t->epoch = m->epoch;
    t->n_tokens = (uint32_t)m->n_tokens;
    t->params = params;
    snprintf(t->decode_id, sizeof t->decode_id, "%s",
             m->decode_worker_id ? m->decode_worker_id : "");
    pd_net_copy_str(t->kv_endpoint, sizeof t->kv_endpoint, m->decode_kv_endpoint);
    t->t_arrive_ms = pf_now_ms(p);
    atomic_init(&t->frames_out, 0);
    p->tasks[p->n_tasks++] = t;
    /* A stream's first layer can go out only on a connected socket (our
     * DEALERs queue nothing for a peer not there yet). The router's
     * KvPeers connected it already; if not (a peer not listed yet, or a
     * reset), connect now: the first pass waits for it (pf_stream_wait). */
    int connected = -1; /* not streamed */
    if (pf_streams(p, t)) {
        connected = pf_egress_ready(p, t->kv_endpoint);
        if (!connected)
            PD_INFO("event=kv_stream_unconnected req=%llu epoch=%u endpoint=%s",
                    (unsigned long long)req, t->epoch, t->kv_endpoint);
    }
    PD_DEBUG("event=prefill_task req=%llu epoch=%u tokens=%u decode=%s kv_connected=%d",
             (unsigned long long)req, t->epoch, t->n_tokens, t->decode_id, connected);
    return;
oom:
    pd_wkport_error(p->port, req, PD__ERROR_CODE__RESOURCE_EXHAUSTED,
                    "prefill worker out of memory");
}

static void on_cancel(void *self, uint64_t req, uint32_t epoch)
{
    pd_prefill_t *p = self;
    for (size_t i = 0; i < p->n_tasks;) {
        pf_task_t *t = p->tasks[i];
        if (t->req == req && (epoch == 0 || t->epoch == epoch)) {
            if (t->st != PT_LEASED && pf_task_drop(p, i))
                continue;
            t->cancelled = true; /* freed on ack / lease expiry */
        }
        i++;
    }
}

/* ====== Batching ====== */

static bool ready(void *self)
{
    pd_prefill_t *p = self;
    uint32_t n_q = 0, tokens = 0;
    uint64_t oldest = UINT64_MAX;
    bool can_start = false;
    uint32_t n_free = pd_kv_n_free(p->eng->kv);
    for (size_t i = 0; i < p->n_tasks; i++) {
        pf_task_t *t = p->tasks[i];
        if (t->st != PT_QUEUED || t->cancelled || pf_stream_wait(p, t))
            continue;
        if (n_q == 0)
            can_start = t->seq.n_blocks > 0 ||
                        pd_kv_blocks_needed(p->eng->kv, 0, t->n_tokens) <= n_free;
        n_q++;
        tokens += t->n_tokens - t->n_done;
        if (t->t_arrive_ms < oldest)
            oldest = t->t_arrive_ms;
    }
    if (n_q == 0 || !can_start)
        return false;
    if (tokens >= p->cfg->prefill.max_batch_tokens || n_q >= p->cfg->prefill.max_batch_size)
        return true;
    return pf_now_ms(p) - oldest >= p->cfg->prefill.wait_ms;
}

/* Colocated: the request, its tokens and its blocks go to the decode role
 * of this process (which tells the router if it cannot take them). */
static void hand_over(pd_prefill_t *p, pf_task_t *t)
{
    pd_kv_handoff_t h;
    memset(&h, 0, sizeof h);
    h.req = t->req;
    h.epoch = t->epoch;
    h.params = t->params;
    h.hist = t->tokens;
    h.n_hist = h.cap_hist = t->n_tokens;
    h.first_token = t->first_token;
    h.seq = t->seq;
    t->tokens = NULL;
    memset(&t->seq, 0, sizeof t->seq);
    if (p->colocated.take(p->colocated.ctx, &h) != 0)
        pd_kv_handoff_release(&h, p->eng->kv);
}

/* After the pass: the first token is out; hand over, ship or drop the KV. */
static void after_prefill(pd_prefill_t *p, pf_task_t *t, Pd__FinishReason fin, size_t i)
{
    if (fin != PD__FINISH_REASON__FINISH_NONE || t->cancelled) {
        /* A stream begun for it ends there: the router cancels the request
         * on the decode worker, which frees what it reserved. */
        pf_task_drop(p, i);
        return;
    }
    if (strcmp(t->decode_id, p->id) == 0) {
        hand_over(p, t);
        pf_task_remove(p, i);
        return;
    }
    t->st = PT_SHIP;
    t->t_ship_ms = pf_now_ms(p);
    /* The start of the KV's exposure (docs/benchmarks.md): its last layer
     * computed, on the monotonic clock the decode worker's kv_in shares. */
    PD_INFO("event=kv_out req=%llu epoch=%u mode=%s blocks=%u last_layer_us=%llu stream_us=%llu",
            (unsigned long long)t->req, t->epoch, t->streaming && !t->stream_broken ? "layer"
                                                                                 : "whole",
            t->seq.n_blocks, (unsigned long long)t->t_last_layer_us,
            (unsigned long long)t->stream_us);
    pf_ship(p, t);
}

/* Test hook PD_TEST_LOSE_FIRST_TOKEN=1 (docs/config.md): the first token of
 * a request shipped to another worker is never sent, as when this worker
 * stalls or dies between shipping the KV and streaming the token. The
 * decode worker's echo of it (decode_worker/) must keep the stream whole. */
static bool lose_first_token(void)
{
    static int on = -1;
    if (on < 0) {
        const char *v = getenv("PD_TEST_LOSE_FIRST_TOKEN");
        on = v != NULL && strcmp(v, "1") == 0;
    }
    return on == 1;
}

/* Tokens one pass may take: prefill.max_batch_tokens (within the engine).
 * A pass no longer has to fit a heartbeat (the router link runs on the
 * host's I/O thread), so the budget is chosen for speed alone. */
static uint32_t pass_tokens(const pd_prefill_t *p)
{
    uint32_t max_tok = p->cfg->prefill.max_batch_tokens;
    return max_tok < p->eng->max_fwd_tokens ? max_tok : p->eng->max_fwd_tokens;
}

/* Gives t its blocks: the longest cached prefix of its tokens (those
 * positions are done), then fresh blocks for the rest. Checked first, so
 * that a task waiting for blocks is not counted as a prefix query again and
 * again: matching takes k cached blocks out of the free count and k blocks
 * out of the need, so the whole prompt's need bounds it. PD_EFULL: wait. */
static int start_task(pd_prefill_t *p, pf_task_t *t)
{
    pd_kv_t *kv = p->eng->kv;
    if (pd_kv_blocks_needed(kv, 0, t->n_tokens) > pd_kv_n_free(kv))
        return PD_EFULL;
    t->n_done = pd_kv_prefix_match(kv, &t->seq, t->tokens, t->n_tokens);
    int rc = pd_kv_seq_reserve(kv, &t->seq, t->n_tokens);
    if (rc != 0) {
        pd_kv_seq_release(kv, &t->seq);
        t->n_done = 0;
        return rc;
    }
    if (t->n_done > 0)
        PD_DEBUG("event=prefix_hit req=%llu epoch=%u cached=%u tokens=%u",
                 (unsigned long long)t->req, t->epoch, t->n_done, t->n_tokens);
    return 0;
}

/* Appends the queued tasks to st's batch, first come first served, within
 * the pass's token budget, st's rows and the engine's sequences. The tasks
 * taken and their chunks go in p->step. Returns the rows added. */
static uint32_t fill(void *self, pd_wkstep_t *st)
{
    pd_prefill_t *p = self;
    pd_wkengine_t *e = p->eng;
    pf_step_t *ps = &p->step;
    uint32_t max_seqs = p->cfg->prefill.max_batch_size;
    if (max_seqs > e->max_fwd_seqs - st->n_seqs)
        max_seqs = e->max_fwd_seqs - st->n_seqs;
    uint32_t max_tok = pass_tokens(p);
    if (max_tok > st->max_rows - st->n_rows)
        max_tok = st->max_rows - st->n_rows;
    uint32_t n_tok = 0;
    ps->n = 0;
    ps->logit0 = st->n_logits;
    for (size_t i = 0; i < p->n_tasks && ps->n < max_seqs && n_tok < max_tok; i++) {
        pf_task_t *t = p->tasks[i];
        if (t->st != PT_QUEUED || t->cancelled || pf_stream_wait(p, t))
            continue;
        if (t->seq.n_blocks == 0 && start_task(p, t) != 0)
            break; /* first come, first served: wait for blocks */
        uint32_t take = t->n_tokens - t->n_done;
        if (take > max_tok - n_tok)
            take = max_tok - n_tok;
        /* Blocks complete after this pass: all at its last chunk; before,
         * the full ones (the partial one is written again next pass). */
        ps->upto[ps->n] = t->n_done + take == t->n_tokens
                              ? t->seq.n_blocks
                              : (t->n_done + take) / pd_kv_shape(e->kv)->block_size;
        ps->live[ps->n] = pf_streams(p, t);
        uint32_t s = st->n_seqs + ps->n;
        for (uint32_t j = 0; j < take; j++) {
            uint32_t row = st->n_rows + n_tok++, pos = t->n_done + j;
            e->b_tokens[row] = t->tokens[pos];
            e->b_pos[row] = (int32_t)pos;
            e->b_seq[row] = (int32_t)s;
            e->b_want[row] = pos + 1 == t->n_tokens;
            st->n_logits += pos + 1 == t->n_tokens;
        }
        e->b_tables[s] = t->seq.blocks;
        e->b_ntable[s] = t->seq.n_blocks;
        ps->chunk[ps->n] = take;
        ps->picked[ps->n++] = t;
    }
    st->n_rows += n_tok;
    st->n_seqs += ps->n;
    ps->n_tok = n_tok;
    return n_tok;
}

static void pass_failed(pd_prefill_t *p, const char *msg)
{
    pf_step_t *ps = &p->step;
    PD_ERROR("event=prefill_forward_failed msg=\"%s\"", msg);
    for (uint32_t s = 0; s < ps->n; s++) {
        pd_wkport_error(p->port, ps->picked[s]->req, PD__ERROR_CODE__INTERNAL,
                        "prefill failed: %s", msg);
        int i = pf_task_index(p, ps->picked[s]->req, ps->picked[s]->epoch);
        if (i >= 0)
            pf_task_drop(p, (size_t)i);
    }
    ps->n = 0;
}

/* After the pass: each prompt whose last chunk it was gets its first token
 * (sampled from its logits), streamed in one TokenBatch; then its KV is
 * handed over or shipped. */
static void done(void *self, const char *fail, uint64_t us)
{
    pd_prefill_t *p = self;
    pd_wkengine_t *e = p->eng;
    pf_step_t *ps = &p->step;
    p->c.prefill_us += us;
    if (fail) {
        pass_failed(p, fail);
        return;
    }
    uint32_t n_seqs = ps->n;
    if (n_seqs == 0)
        return; /* fill put nothing in the pass: never 0-sized arrays below */
    p->c.prefill_batches++;
    if (n_seqs > 1)
        p->c.prefill_multi++;
    p->c.prefill_tokens += ps->n_tok;
    uint64_t t_pass_end = pd_now_us(); /* every layer computed */
    pd_token_entry_t ents[n_seqs];
    Pd__FinishReason fins[n_seqs];
    uint32_t n_ent = 0, row = ps->logit0;
    for (uint32_t s = 0; s < n_seqs; s++) {
        pf_task_t *t = ps->picked[s];
        t->n_done += ps->chunk[s];
        if (ps->live[s] && ps->upto[s] > t->streamed_blocks)
            t->streamed_blocks = ps->upto[s]; /* every layer of them went out */
        if (t->n_done < t->n_tokens)
            continue;
        t->t_last_layer_us = t_pass_end;
        /* Its KV is whole: later prompts may reuse its full blocks. */
        pd_kv_prefix_commit(e->kv, &t->seq, t->tokens, t->n_tokens);
        float *lg = e->logits + (size_t)row++ * e->vocab;
        int32_t tok = pd_sample(&t->params.s, lg, e->vocab, t->n_tokens, t->tokens, t->n_tokens,
                                e->scratch);
        t->first_token = tok;
        uint32_t index = t->params.n_generated;
        fins[s] = pd_wkengine_finish(e, &t->params, tok, index, t->n_tokens);
        if (fins[s] == PD__FINISH_REASON__FINISH_NONE && strcmp(t->decode_id, p->id) != 0 &&
            lose_first_token()) {
            PD_INFO("event=test_first_token_lost req=%llu", (unsigned long long)t->req);
            continue;
        }
        ents[n_ent++] = (pd_token_entry_t){ t->req, t->epoch, tok, index, fins[s] };
    }
    PD_DEBUG("event=prefill_batch seqs=%u tokens=%u done=%u ms=%.2f", n_seqs, ps->n_tok, n_ent,
             (double)us / 1000.0);
    pd_wkport_tokens(p->port, ents, n_ent);
    for (uint32_t s = 0; s < n_seqs; s++) {
        pf_task_t *t = ps->picked[s];
        if (t->n_done < t->n_tokens)
            continue;
        int i = pf_task_index(p, t->req, t->epoch);
        if (i >= 0)
            after_prefill(p, t, fins[s], (size_t)i);
    }
    ps->n = 0;
}

/* ====== The role ====== */

static void on_layer(void *self, uint32_t layer) { pf_stream_layer(self, layer); }

static void timers(void *self) { pf_egress_timers(self); }

static void poll_sockets(void *self) { pf_poll_egress(self); }

static int sockets(void *self, zmq_pollitem_t *items, int cap)
{
    pd_prefill_t *p = self;
    int n = 0;
    for (uint32_t i = 0; i < p->n_egress && n < cap; i++)
        if (p->egress[i].sock)
            items[n++] = (zmq_pollitem_t){ p->egress[i].sock, 0, ZMQ_POLLIN, 0 };
    return n;
}

static bool busy(const void *self) { return ((const pd_prefill_t *)self)->n_tasks > 0; }

static uint32_t held(const void *self) { return (uint32_t)((const pd_prefill_t *)self)->n_tasks; }

static void load(const void *self, pd_worker_load_t *out)
{
    const pd_prefill_t *p = self;
    pd_kv_t *kv = p->eng->kv;
    out->queued_prefill_tokens = queued_tokens(p);
    out->free_blocks = pd_kv_n_free(kv);
    out->total_blocks = pd_kv_shape(kv)->n_blocks;
    out->counters = p->c;
    out->counters.prefill_pass_tokens = pass_tokens(p);
    if (p->kvev) {
        pd_kv_prefix_stats_t ps;
        pd_kv_prefix_stats(kv, &ps);
        out->counters.prefix_queries = ps.query_tokens;
        out->counters.prefix_hits = ps.hit_tokens;
        out->counters.prefix_requests = ps.queries;
        out->counters.prefix_evictions = ps.evicted_blocks;
        out->counters.prefix_cached_blocks = pd_kv_prefix_n_cached(kv);
        out->kv_events_seq = pd_kvev_last_seq(p->kvev);
    }
}

/* ====== Prefix cache events ====== */

/* Test hook PD_TEST_DROP_KV_EVENTS=K (docs/config.md): every K-th
 * KvEvents message is not sent, as if lost on the way: the router must
 * see the gap (the next seq, or the heartbeat's) and ask for a snapshot. */
static uint32_t drop_kv_events_every(void)
{
    static long k = -1;
    if (k < 0) {
        const char *v = getenv("PD_TEST_DROP_KV_EVENTS");
        k = v ? strtol(v, NULL, 10) : 0;
        if (k < 0 || k > 1000000)
            k = 0;
    }
    return (uint32_t)k;
}

static void send_kv_events(void *ctx, const Pd__Msg *m)
{
    static uint64_t n_sent;
    const pd_wkport_t *port = ((pd_prefill_t *)ctx)->port;
    uint32_t k = drop_kv_events_every();
    if (k > 0 && ++n_sent % k == 0) {
        PD_INFO("event=test_kv_events_dropped seq=%llu",
                (unsigned long long)m->kv_events->seq);
        return;
    }
    port->send(port->host, m);
}

static void kv_events(void *self)
{
    pd_prefill_t *p = self;
    if (p->kvev)
        pd_kvev_flush(p->kvev, p->eng->kv, send_kv_events, p);
}

static void kv_resync(void *self)
{
    pd_prefill_t *p = self;
    if (p->kvev)
        pd_kvev_resync(p->kvev);
}

/* A task whose frames ZeroMQ still holds cannot be freed yet: its blocks
 * are being read. Those are marked and go on lease expiry. */
static void drop_all(void *self, char *held, size_t cap)
{
    pd_prefill_t *p = self;
    snprintf(held, cap, "prefill_tasks=%zu", p->n_tasks);
    for (size_t i = 0; i < p->n_tasks;)
        if (!pf_task_drop(p, i))
            i++;
}

static void close_sockets(void *self) { pf_egress_close(self); }

static void on_peers(void *self, const Pd__KvPeers *k) { pf_on_peers(self, k); }

static const pd_wkrole_ops_t g_ops = {
    .name = "prefill",
    .on_task = on_task,
    .on_cancel = on_cancel,
    .sockets = sockets,
    .poll = poll_sockets,
    .ready = ready,
    .fill = fill,
    .done = done,
    .on_layer = on_layer,
    .timers = timers,
    .busy = busy,
    .held = held,
    .load = load,
    .drop_all = drop_all,
    .close = close_sockets,
    .kv_events = kv_events,
    .kv_resync = kv_resync,
    .on_peers = on_peers,
};

pd_wkrole_t pd_prefill_role(pd_prefill_t *p) { return (pd_wkrole_t){ &g_ops, p }; }

pd_prefill_t *pd_prefill_new(const pd_wkrole_env_t *env, const pd_kv_sink_t *colocated,
                             pd_err_t *err)
{
    pd_prefill_t *p = calloc(1, sizeof *p);
    if (p == NULL || (p->in = malloc(sizeof *p->in)) == NULL) {
        free(p);
        pd_err_set(err, PD_ENOMEM, "prefill role");
        return NULL;
    }
    p->in->n_frames = 0;
    p->env = *env;
    p->eng = env->eng;
    p->cfg = env->cfg;
    p->port = env->port;
    snprintf(p->id, sizeof p->id, "%s", env->id);
    if (colocated)
        p->colocated = *colocated;
    const char *delay = getenv("PD_TEST_LAYER_DELAY_MS");
    if (delay && delay[0]) {
        char *end = NULL;
        unsigned long v = strtoul(delay, &end, 10);
        if (*end != '\0' || v < 1 || v > 60000) {
            pd_err_set(err, PD_EINVAL, "PD_TEST_LAYER_DELAY_MS: expected 1..60000 ms, got '%s'",
                       delay);
            free(p->in);
            free(p);
            return NULL;
        }
        p->layer_delay_ms = (uint32_t)v;
        PD_WARN("event=test_hook PD_TEST_LAYER_DELAY_MS=%lu", v);
    }
    pd_pb_alloc_init(&p->alloc, (size_t)p->cfg->net.max_msg_bytes * PD_PB_BYTES_PER_WIRE_BYTE +
                                    PD_PB_BASE_BUDGET);
    size_t n_seqs = p->eng->max_fwd_seqs ? p->eng->max_fwd_seqs : 1;
    p->step.picked = calloc(n_seqs, sizeof *p->step.picked);
    p->step.chunk = calloc(n_seqs, sizeof *p->step.chunk);
    p->step.upto = calloc(n_seqs, sizeof *p->step.upto);
    p->step.live = calloc(n_seqs, sizeof *p->step.live);
    if (p->step.picked == NULL || p->step.chunk == NULL || p->step.upto == NULL ||
        p->step.live == NULL) {
        pd_prefill_free(p);
        pd_err_set(err, PD_ENOMEM, "prefill role");
        return NULL;
    }
    if (pd_kv_prefix_on(p->eng->kv)) {
        p->kvev = pd_kvev_new(pd_kvev_per_msg(p->cfg->net.max_msg_bytes), err);
        if (p->kvev == NULL) {
            pd_prefill_free(p);
            return NULL;
        }
        pd_kvev_resync(p->kvev); /* the first message is a snapshot */
    }
    return p;
}

void pd_prefill_free(pd_prefill_t *p)
{
    if (p == NULL)
        return;
    pf_egress_close(p);
    while (p->n_tasks > 0)
        pf_task_remove(p, p->n_tasks - 1);
    free(p->tasks);
    free(p->step.picked);
    free(p->step.chunk);
    free(p->step.upto);
    free(p->step.live);
    free(p->in);
    pd_kvev_free(p->kvev);
    free(p);
}
