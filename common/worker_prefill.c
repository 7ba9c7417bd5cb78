/* worker_prefill.c -- the prefill side of a worker: queue PrefillTasks,
 * pack several prompts into one forward pass (token and sequence budgets
 * from prefill.max_batch_tokens / max_batch_size, long prompts in chunks),
 * sample each first token, send it to the router, and ship the KV blocks to
 * the decode worker as one multipart message (zero-copy frames). The blocks
 * stay ours under a lease until the decode worker's KvAck (or the lease's
 * expiry) and until ZeroMQ has let go of every frame. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "base/log.h"
#include "worker.h"

/* Most tasks held at once (queued, shipping, leased): beyond it, new ones
 * are refused with RESOURCE_EXHAUSTED. */
#define WK_MAX_TASKS 4096
/* Token budget of the first prefill pass, before its speed is measured. */
#define WK_FIRST_PASS_TOKENS 256

/* ====== Task table ====== */

static void task_free(wk_t *w, wk_task_t *t)
{
    if (t == NULL)
        return;
    pd_kv_seq_release(w->kv, &t->seq);
    free(t->tokens);
    free(t);
}

static void task_remove(wk_t *w, uint32_t i)
{
    task_free(w, w->tasks[i]);
    memmove(&w->tasks[i], &w->tasks[i + 1], (w->n_tasks - i - 1) * sizeof *w->tasks);
    w->n_tasks--;
}

static int task_index(const wk_t *w, uint64_t req, uint32_t epoch)
{
    for (uint32_t i = 0; i < w->n_tasks; i++)
        if (w->tasks[i]->req == req && (epoch == 0 || w->tasks[i]->epoch == epoch))
            return (int)i;
    return -1;
}

uint32_t wk_prefill_queued_tokens(const wk_t *w)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < w->n_tasks; i++)
        if (w->tasks[i]->st == PT_QUEUED && !w->tasks[i]->cancelled)
            n += w->tasks[i]->n_tokens - w->tasks[i]->n_done;
    return n;
}

bool wk_prefill_busy(const wk_t *w) { return w->n_tasks > 0; }

/* ====== Messages ====== */

void wk_prefill_on_task(wk_t *w, const Pd__PrefillTask *m)
{
    pd_err_t err = { 0 };
    uint64_t req = m->request_id;
    if (!m->has_request_id || req == 0 || !m->has_epoch) {
        wk_send_error(w, 0, PD__ERROR_CODE__INVALID_ARGUMENT,
                      "prefill task: request_id and epoch are required");
        return;
    }
    wk_params_t p;
    if (wk_params_from_pb(w, m->params, &p, &err) != 0) {
        wk_send_error(w, req, PD__ERROR_CODE__INVALID_ARGUMENT, "prefill task: %s", err.msg);
        return;
    }
    if (m->n_tokens == 0 || m->n_tokens != (size_t)p.n_prompt + p.n_generated) {
        wk_send_error(w, req, PD__ERROR_CODE__INVALID_ARGUMENT,
                      "prefill task: %zu tokens, expected n_prompt %u + n_generated %u",
                      m->n_tokens, p.n_prompt, p.n_generated);
        return;
    }
    for (size_t i = 0; i < m->n_tokens; i++)
        if (m->tokens[i] < 0 || (uint32_t)m->tokens[i] >= w->vocab) {
            wk_send_error(w, req, PD__ERROR_CODE__INVALID_ARGUMENT,
                          "prefill task: tokens[%zu] = %d outside the vocabulary", i,
                          m->tokens[i]);
            return;
        }
    const char *did = m->decode_worker_id ? m->decode_worker_id : "";
    bool colocated = strcmp(did, w->id) == 0;
    if (colocated && w->role != WK_ROLE_BOTH) {
        wk_send_error(w, req, PD__ERROR_CODE__INVALID_ARGUMENT,
                      "prefill task: decode worker is this prefill-only worker");
        return;
    }
    if (!colocated && (did[0] == '\0' || strlen(did) >= 64 || m->decode_kv_endpoint == NULL ||
                       m->decode_kv_endpoint[0] == '\0' ||
                       strlen(m->decode_kv_endpoint) >= PD_CFG_STR)) {
        wk_send_error(w, req, PD__ERROR_CODE__INVALID_ARGUMENT,
                      "prefill task: decode_worker_id and decode_kv_endpoint are required");
        return;
    }
    if (pd_kv_blocks_needed(w->kv, 0, (uint32_t)m->n_tokens + 1) > pd_kv_shape(w->kv)->n_blocks) {
        wk_send_error(w, req, PD__ERROR_CODE__RESOURCE_EXHAUSTED,
                      "prefill task: %zu tokens need more KV blocks than this worker has (%u)",
                      m->n_tokens, pd_kv_shape(w->kv)->n_blocks);
        return;
    }
    /* A newer epoch replaces whatever we still hold of an older one. */
    for (int i; (i = task_index(w, req, 0)) >= 0;) {
        wk_task_t *o = w->tasks[i];
        if (o->epoch >= m->epoch) {
            PD_WARN("event=stale_prefill_task req=%llu epoch=%u have=%u", (unsigned long long)req,
                    m->epoch, o->epoch);
            return;
        }
        if (o->st == PT_LEASED)
            break; /* its lease runs out on its own */
        task_remove(w, (uint32_t)i);
    }
    if (w->n_tasks >= WK_MAX_TASKS) {
        wk_send_error(w, req, PD__ERROR_CODE__RESOURCE_EXHAUSTED,
                      "prefill worker %s holds %u tasks", w->id, w->n_tasks);
        return;
    }
    if (w->n_tasks == w->cap_tasks) {
        uint32_t cap = w->cap_tasks ? w->cap_tasks * 2 : 64;
        wk_task_t **nt = realloc(w->tasks, cap * sizeof *nt);
        if (nt == NULL)
            goto oom;
        w->tasks = nt;
        w->cap_tasks = cap;
    }
    wk_task_t *t = calloc(1, sizeof *t);
    if (t == NULL)
        goto oom;
    t->tokens = malloc(m->n_tokens * sizeof *t->tokens);
    if (t->tokens == NULL) {
        free(t);
        goto oom;
    }
    memcpy(t->tokens, m->tokens, m->n_tokens * sizeof *t->tokens);
    t->req = req;
    t->epoch = m->epoch;
    t->n_tokens = (uint32_t)m->n_tokens;
    t->params = p;
    snprintf(t->decode_id, sizeof t->decode_id, "%s", did);
    pd_net_copy_str(t->kv_endpoint, sizeof t->kv_endpoint, m->decode_kv_endpoint);
    t->t_arrive_ms = pd_net_now_ms();
    atomic_init(&t->frames_out, 0);
    w->tasks[w->n_tasks++] = t;
    PD_DEBUG("event=prefill_task req=%llu epoch=%u tokens=%u decode=%s", (unsigned long long)req,
             t->epoch, t->n_tokens, t->decode_id);
    return;
oom:
    wk_send_error(w, req, PD__ERROR_CODE__RESOURCE_EXHAUSTED, "prefill worker out of memory");
}

void wk_prefill_cancel(wk_t *w, uint64_t req, uint32_t epoch)
{
    for (uint32_t i = 0; i < w->n_tasks;) {
        wk_task_t *t = w->tasks[i];
        if (t->req == req && (epoch == 0 || t->epoch == epoch)) {
            if (t->st != PT_LEASED) {
                task_remove(w, i);
                continue;
            }
            t->cancelled = true; /* freed on ack / lease expiry */
        }
        i++;
    }
}

void wk_prefill_on_ack(wk_t *w, const Pd__KvAck *a)
{
    int i = task_index(w, a->request_id, a->epoch);
    if (i < 0 || w->tasks[i]->st != PT_LEASED) {
        PD_DEBUG("event=stray_kv_ack req=%llu epoch=%u", (unsigned long long)a->request_id,
                 a->epoch);
        return;
    }
    wk_task_t *t = w->tasks[i];
    t->acked = true;
    if ((!a->has_ok || !a->ok) && !(a->reason && strcmp(a->reason, "cancelled") == 0))
        PD_WARN("event=kv_refused req=%llu epoch=%u decode=%s reason=\"%s\"",
                (unsigned long long)t->req, t->epoch, t->decode_id, a->reason ? a->reason : "?");
    else {
        uint64_t us = pd_net_now_us() - t->t_sent_us;
        w->c.kv_transfers++;
        w->c.kv_transfer_us += us;
        PD_DEBUG("event=kv_acked req=%llu epoch=%u blocks=%u us=%llu", (unsigned long long)t->req,
                 t->epoch, t->seq.n_blocks, (unsigned long long)us);
    }
}

/* ====== KV egress ====== */

static wk_egress_t *egress_get(wk_t *w, const char *endpoint)
{
    wk_egress_t *eg = NULL;
    for (uint32_t i = 0; i < w->n_egress; i++)
        if (strcmp(w->egress[i].endpoint, endpoint) == 0)
            eg = &w->egress[i];
    if (eg == NULL) {
        if (w->n_egress == WK_MAX_EGRESS) {
            /* Reuse an idle slot's place: close the first one without a socket. */
            for (uint32_t i = 0; i < w->n_egress && eg == NULL; i++)
                if (w->egress[i].sock == NULL)
                    eg = &w->egress[i];
            if (eg == NULL)
                return NULL;
        } else {
            eg = &w->egress[w->n_egress++];
        }
        snprintf(eg->endpoint, sizeof eg->endpoint, "%s", endpoint);
        eg->sock = NULL;
    }
    if (eg->sock == NULL) {
        pd_net_opts_t o;
        pd_net_opts_from_config(&o, &w->cfg);
        if (o.maxmsgsize > 0 && (uint64_t)o.maxmsgsize < w->block_bytes + 4096)
            o.maxmsgsize = (int64_t)w->block_bytes + 4096;
        pd_err_t err = { 0 };
        eg->sock = pd_net_socket(w->zctx, ZMQ_DEALER, &o, &err);
        if (eg->sock == NULL || pd_net_connect(eg->sock, endpoint, &err) != 0) {
            PD_WARN("event=kv_connect_failed endpoint=%s msg=\"%s\"", endpoint, err.msg);
            pd_net_close(eg->sock);
            eg->sock = NULL;
            return NULL;
        }
    }
    eg->last_used_ms = pd_net_now_ms();
    return eg;
}

/* Drops the socket and everything queued in it (a lost decode worker):
 * ZeroMQ then releases the zero-copy frames it held. */
static void egress_reset(wk_t *w, const char *endpoint)
{
    for (uint32_t i = 0; i < w->n_egress; i++)
        if (strcmp(w->egress[i].endpoint, endpoint) == 0 && w->egress[i].sock) {
            int zero = 0;
            zmq_setsockopt(w->egress[i].sock, ZMQ_LINGER, &zero, sizeof zero);
            pd_net_close(w->egress[i].sock);
            w->egress[i].sock = NULL;
        }
}

/* Closes egress sockets that no task uses and that shipped nothing for
 * WK_EGRESS_IDLE_MS: a decode worker that died or left (a restarted one
 * has another endpoint) must not keep a socket, its descriptors and
 * ZeroMQ's reconnect attempts here forever, nor its slot in egress[]
 * (with all WK_MAX_EGRESS slots holding sockets nothing could ship to a
 * new endpoint). A live decode worker's socket is simply made again. */
static void egress_close_idle(wk_t *w, uint64_t now)
{
    for (uint32_t i = 0; i < w->n_egress; i++) {
        wk_egress_t *eg = &w->egress[i];
        if (eg->sock == NULL || now - eg->last_used_ms < WK_EGRESS_IDLE_MS)
            continue;
        bool busy = false;
        for (uint32_t k = 0; k < w->n_tasks && !busy; k++)
            busy = w->tasks[k]->st != PT_QUEUED &&
                   strcmp(w->tasks[k]->kv_endpoint, eg->endpoint) == 0;
        if (busy) {
            eg->last_used_ms = now; /* look again after another idle period */
            continue;
        }
        PD_DEBUG("event=kv_egress_closed endpoint=%s", eg->endpoint);
        egress_reset(w, eg->endpoint);
    }
}

static void frame_done(void *data, void *hint)
{
    (void)data;
    wk_task_t *t = hint;
    atomic_fetch_sub(&t->frames_out, 1);
}

/* Sends t's KV (header + one frame per block). Returns 0 when sent,
 * PD_EFULL to try again later, another code on failure. */
static int ship(wk_t *w, wk_task_t *t)
{
    wk_egress_t *eg = egress_get(w, t->kv_endpoint);
    if (eg == NULL)
        return PD_EIO;
    uint32_t nb = t->seq.n_blocks;
    uint64_t sums[PD_NET_MAX_FRAMES];
    if (nb + 1 > PD_NET_MAX_FRAMES)
        return PD_ERANGE;
    for (uint32_t i = 0; i < nb; i++)
        sums[i] = XXH3_64bits(pd_kv_block(w->kv, t->seq.blocks[i]), w->block_bytes);
    Pd__KvTransfer k = PD__KV_TRANSFER__INIT;
    k.has_request_id = k.has_epoch = k.has_n_blocks = k.has_n_tokens = k.has_block_bytes = true;
    k.has_first_token = k.has_model_identity = k.has_block_size = true;
    k.request_id = t->req;
    k.epoch = t->epoch;
    k.n_blocks = nb;
    k.n_tokens = t->n_tokens;
    k.block_bytes = w->block_bytes;
    k.n_checksums = nb;
    k.checksums = sums;
    k.first_token = t->first_token;
    k.prefill_worker_id = w->id;
    k.model_identity = w->model->identity;
    k.block_size = pd_kv_shape(w->kv)->block_size;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_KV_TRANSFER;
    m.kv_transfer = &k;
    pd_err_t err = { 0 };
    int rc = pd_net_send(eg->sock, NULL, 0, &m, nb > 0, &err);
    if (rc)
        return rc;
    for (uint32_t i = 0; i < nb; i++) {
        zmq_msg_t f;
        atomic_fetch_add(&t->frames_out, 1);
        if (zmq_msg_init_data(&f, pd_kv_block(w->kv, t->seq.blocks[i]), w->block_bytes,
                              frame_done, t) != 0) {
            atomic_fetch_sub(&t->frames_out, 1);
            egress_reset(w, t->kv_endpoint); /* drops the half-sent message */
            return PD_ENOMEM;
        }
        if (zmq_msg_send(&f, eg->sock, ZMQ_DONTWAIT | (i + 1 < nb ? ZMQ_SNDMORE : 0)) < 0) {
            PD_WARN("event=kv_frame_send_failed req=%llu msg=\"%s\"", (unsigned long long)t->req,
                    zmq_strerror(errno));
            zmq_msg_close(&f);
            egress_reset(w, t->kv_endpoint);
            return PD_EIO;
        }
    }
    w->c.kv_sent_bytes += (uint64_t)nb * w->block_bytes;
    return 0;
}

static void try_ship(wk_t *w, wk_task_t *t)
{
    int rc = ship(w, t);
    uint64_t now = pd_net_now_ms();
    if (rc == 0) {
        t->st = PT_LEASED;
        t->t_sent_us = pd_net_now_us();
        t->lease_deadline_ms = now + w->cfg.worker.lease_ms;
        PD_DEBUG("event=kv_shipped req=%llu epoch=%u blocks=%u to=%s", (unsigned long long)t->req,
                 t->epoch, t->seq.n_blocks, t->decode_id);
        return;
    }
    if (now - t->t_ship_ms > w->cfg.worker.lease_ms) {
        /* The decode worker cannot be reached: hand the request back. */
        PD_WARN("event=kv_ship_failed req=%llu decode=%s endpoint=%s rc=%s",
                (unsigned long long)t->req, t->decode_id, t->kv_endpoint, pd_err_name(rc));
        wk_send_preempted(w, t->req, t->epoch, t->params.n_generated + 1,
                          "KV transfer to the decode worker failed");
        t->cancelled = true;
        t->st = PT_LEASED;
        t->acked = true;
    }
}

void wk_prefill_poll_egress(wk_t *w)
{
    pd_err_t err = { 0 };
    for (uint32_t e = 0; e < w->n_egress; e++) {
        void *s = w->egress[e].sock;
        for (int budget = 0; s && budget < 256; budget++) {
            if (pd_net_recv(s, w->in, &err) <= 0)
                break;
            Pd__Msg *m = NULL;
            if (w->in->n_frames == 1 && !w->in->truncated)
                m = pd_net_unpack(&w->alloc, zmq_msg_data(&w->in->frames[0]),
                                  zmq_msg_size(&w->in->frames[0]), &err);
            if (m && m->body_case == PD__MSG__BODY_KV_ACK)
                wk_prefill_on_ack(w, m->kv_ack);
            else
                PD_WARN("event=bad_kv_reply endpoint=%s type=%s", w->egress[e].endpoint,
                        m ? pd_net_body_name(m->body_case) : "malformed");
            pd_net_msg_free(&w->alloc, m);
            pd_net_in_close(w->in);
        }
    }
}

/* ====== Batching ====== */

bool wk_prefill_ready(wk_t *w)
{
    uint32_t n_q = 0, tokens = 0;
    uint64_t oldest = UINT64_MAX;
    bool can_start = false;
    uint32_t n_free = pd_kv_n_free(w->kv);
    for (uint32_t i = 0; i < w->n_tasks; i++) {
        wk_task_t *t = w->tasks[i];
        if (t->st != PT_QUEUED || t->cancelled)
            continue;
        if (n_q == 0)
            can_start = t->seq.n_blocks > 0 ||
                        pd_kv_blocks_needed(w->kv, 0, t->n_tokens) <= n_free;
        n_q++;
        tokens += t->n_tokens - t->n_done;
        if (t->t_arrive_ms < oldest)
            oldest = t->t_arrive_ms;
    }
    if (n_q == 0 || !can_start)
        return false;
    if (tokens >= w->cfg.prefill.max_batch_tokens || n_q >= w->cfg.prefill.max_batch_size)
        return true;
    return pd_net_now_ms() - oldest >= w->cfg.prefill.wait_ms;
}

/* After the pass: the first token is out; keep, ship or hand over the KV. */
static void after_prefill(wk_t *w, wk_task_t *t, Pd__FinishReason fin, uint32_t i)
{
    if (fin != PD__FINISH_REASON__FINISH_NONE || t->cancelled) {
        task_remove(w, i);
        return;
    }
    if (strcmp(t->decode_id, w->id) == 0) {
        if (wk_decode_adopt(w, t) == 0) {
            /* The decoder took the blocks and tokens. */
            t->tokens = NULL;
            memset(&t->seq, 0, sizeof t->seq);
        }
        task_remove(w, i);
        return;
    }
    t->st = PT_SHIP;
    t->t_ship_ms = pd_net_now_ms();
    try_ship(w, t);
}

/* Test hook PD_TEST_LOSE_FIRST_TOKEN=1 (docs/config.md): the first token of
 * a request shipped to another worker is never sent, as when this worker
 * stalls or dies between shipping the KV and streaming the token. The
 * decode worker's echo of it (worker_decode.c) must keep the stream whole. */
static bool lose_first_token(void)
{
    static int on = -1;
    if (on < 0) {
        const char *v = getenv("PD_TEST_LOSE_FIRST_TOKEN");
        on = v != NULL && strcmp(v, "1") == 0;
    }
    return on == 1;
}

uint32_t wk_prefill_pass_tokens(const wk_t *w)
{
    uint32_t max_tok = w->cfg.prefill.max_batch_tokens;
    /* A pass blocks the reactor: keep it well inside a heartbeat interval
     * (measured speed), so liveness never mistakes a long prompt for a
     * dead worker. Long prompts then go in several chunks. */
    if (w->prefill_us_per_token > 0) {
        double fit = (double)w->hb_ms * 1000.0 / 2.0 / w->prefill_us_per_token;
        uint32_t cap = fit < 64 ? 64 : fit > (double)max_tok ? max_tok : (uint32_t)fit;
        if (cap < max_tok)
            max_tok = cap;
    } else if (max_tok > WK_FIRST_PASS_TOKENS) {
        max_tok = WK_FIRST_PASS_TOKENS; /* no measurement yet: start small */
    }
    if (max_tok > w->max_fwd_tokens)
        max_tok = w->max_fwd_tokens;
    return max_tok;
}

/* Gives t its blocks: the longest cached prefix of its tokens (those
 * positions are done), then fresh blocks for the rest. Checked first, so
 * that a task waiting for blocks is not counted as a prefix query again and
 * again: matching takes k cached blocks out of the free count and k blocks
 * out of the need, so the whole prompt's need bounds it. PD_EFULL: wait. */
static int start_task(wk_t *w, wk_task_t *t)
{
    if (pd_kv_blocks_needed(w->kv, 0, t->n_tokens) > pd_kv_n_free(w->kv))
        return PD_EFULL;
    t->n_done = pd_kv_prefix_match(w->kv, &t->seq, t->tokens, t->n_tokens);
    int rc = pd_kv_seq_reserve(w->kv, &t->seq, t->n_tokens);
    if (rc != 0) {
        pd_kv_seq_release(w->kv, &t->seq);
        t->n_done = 0;
        return rc;
    }
    if (t->n_done > 0)
        PD_DEBUG("event=prefix_hit req=%llu epoch=%u cached=%u tokens=%u",
                 (unsigned long long)t->req, t->epoch, t->n_done, t->n_tokens);
    return 0;
}

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

static void send_router_cb(void *ctx, const Pd__Msg *m)
{
    static uint64_t n_sent;
    uint32_t k = drop_kv_events_every();
    if (k > 0 && ++n_sent % k == 0) {
        PD_INFO("event=test_kv_events_dropped seq=%llu",
                (unsigned long long)m->kv_events->seq);
        return;
    }
    wk_send_router(ctx, m);
}

void wk_prefill_kv_events(wk_t *w)
{
    if (w->kvev != NULL && w->registered)
        pd_kvev_flush(w->kvev, w->kv, send_router_cb, w);
}

void wk_prefill_run(wk_t *w)
{
    uint32_t max_seqs = w->cfg.prefill.max_batch_size;
    uint32_t max_tok = wk_prefill_pass_tokens(w);
    if (max_seqs > w->max_fwd_seqs)
        max_seqs = w->max_fwd_seqs;
    wk_task_t *picked[w->max_fwd_seqs];
    uint32_t chunk[w->max_fwd_seqs];
    uint32_t n_seqs = 0, n_tok = 0;
    for (uint32_t i = 0; i < w->n_tasks && n_seqs < max_seqs && n_tok < max_tok; i++) {
        wk_task_t *t = w->tasks[i];
        if (t->st != PT_QUEUED || t->cancelled)
            continue;
        if (t->seq.n_blocks == 0 && start_task(w, t) != 0)
            break; /* first come, first served: wait for blocks */
        uint32_t take = t->n_tokens - t->n_done;
        if (take > max_tok - n_tok)
            take = max_tok - n_tok;
        for (uint32_t j = 0; j < take; j++) {
            uint32_t pos = t->n_done + j;
            w->b_tokens[n_tok] = t->tokens[pos];
            w->b_pos[n_tok] = (int32_t)pos;
            w->b_seq[n_tok] = (int32_t)n_seqs;
            w->b_want[n_tok] = pos + 1 == t->n_tokens;
            n_tok++;
        }
        w->b_tables[n_seqs] = t->seq.blocks;
        w->b_ntable[n_seqs] = t->seq.n_blocks;
        chunk[n_seqs] = take;
        picked[n_seqs++] = t;
    }
    if (n_seqs == 0)
        return;
    pd_batch_t b = { n_tok, w->b_tokens, w->b_pos, w->b_seq, w->b_want,
                     n_seqs, w->b_tables, w->b_ntable };
    pd_err_t err = { 0 };
    uint64_t t0 = pd_net_now_us();
    int rc = pd_forward(w->engine, &b, w->logits, &err);
    if (rc != 0) {
        PD_ERROR("event=prefill_forward_failed msg=\"%s\"", err.msg);
        for (uint32_t s = 0; s < n_seqs; s++) {
            wk_send_error(w, picked[s]->req, PD__ERROR_CODE__INTERNAL, "prefill failed: %s",
                          err.msg);
            int i = task_index(w, picked[s]->req, picked[s]->epoch);
            if (i >= 0)
                task_remove(w, (uint32_t)i);
        }
        return;
    }
    uint64_t pass_us = pd_net_now_us() - t0;
    w->c.prefill_us += pass_us;
    double per_tok = (double)pass_us / n_tok;
    w->prefill_us_per_token = w->prefill_us_per_token > 0
                                  ? 0.7 * w->prefill_us_per_token + 0.3 * per_tok
                                  : per_tok;
    w->c.prefill_batches++;
    if (n_seqs > 1)
        w->c.prefill_multi++;
    w->c.prefill_tokens += n_tok;
    Pd__TokenEntry ents[n_seqs];
    Pd__TokenEntry *eps[n_seqs];
    Pd__FinishReason fins[n_seqs];
    uint32_t n_ent = 0, row = 0;
    for (uint32_t s = 0; s < n_seqs; s++) {
        wk_task_t *t = picked[s];
        t->n_done += chunk[s];
        if (t->n_done < t->n_tokens)
            continue;
        /* Its KV is whole: later prompts may reuse its full blocks. */
        pd_kv_prefix_commit(w->kv, &t->seq, t->tokens, t->n_tokens);
        float *lg = w->logits + (size_t)row++ * w->vocab;
        int32_t tok = pd_sample(&t->params.s, lg, w->vocab, t->n_tokens, t->tokens, t->n_tokens,
                                w->scratch);
        t->first_token = tok;
        uint32_t index = t->params.n_generated;
        fins[s] = wk_finish_check(w, &t->params, tok, index, t->n_tokens);
        Pd__TokenEntry *e = &ents[n_ent];
        pd_token_entry_t te = { t->req, t->epoch, tok, index, fins[s] };
        pd_codec_token_to_pb(&te, e);
        if (!e->has_finish_reason && strcmp(t->decode_id, w->id) != 0 && lose_first_token()) {
            PD_INFO("event=test_first_token_lost req=%llu", (unsigned long long)t->req);
            continue;
        }
        eps[n_ent++] = e;
    }
    PD_DEBUG("event=prefill_batch seqs=%u tokens=%u done=%u ms=%.2f", n_seqs, n_tok, n_ent,
             (double)(pd_net_now_us() - t0) / 1000.0);
    if (n_ent > 0) {
        Pd__TokenBatch tb = PD__TOKEN_BATCH__INIT;
        tb.n_entries = n_ent;
        tb.entries = eps;
        Pd__Msg m = PD__MSG__INIT;
        m.body_case = PD__MSG__BODY_TOKENS;
        m.tokens = &tb;
        wk_send_router(w, &m);
    }
    for (uint32_t s = 0; s < n_seqs; s++) {
        wk_task_t *t = picked[s];
        if (t->n_done < t->n_tokens)
            continue;
        int i = task_index(w, t->req, t->epoch);
        if (i >= 0)
            after_prefill(w, t, fins[s], (uint32_t)i);
    }
}

/* ====== Timers ====== */

void wk_prefill_timers(wk_t *w)
{
    uint64_t now = pd_net_now_ms();
    for (uint32_t i = 0; i < w->n_tasks;) {
        wk_task_t *t = w->tasks[i];
        if (t->st == PT_SHIP) {
            if (t->cancelled) {
                task_remove(w, i);
                continue;
            }
            try_ship(w, t);
        }
        if (t->st == PT_LEASED) {
            if (!t->acked && now > t->lease_deadline_ms) {
                PD_WARN("event=kv_lease_expired req=%llu epoch=%u decode=%s",
                        (unsigned long long)t->req, t->epoch, t->decode_id);
                t->acked = true;
                if (atomic_load(&t->frames_out) > 0)
                    egress_reset(w, t->kv_endpoint);
            }
            if (t->acked && atomic_load(&t->frames_out) == 0) {
                task_remove(w, i);
                continue;
            }
        }
        i++;
    }
    egress_close_idle(w, now);
}

void wk_prefill_drop_all(wk_t *w)
{
    /* A task whose frames ZeroMQ still holds cannot be freed yet: its
     * blocks are being read. Those are marked and go on lease expiry. */
    for (uint32_t i = 0; i < w->n_tasks;) {
        wk_task_t *t = w->tasks[i];
        if (atomic_load(&t->frames_out) == 0) {
            task_remove(w, i);
            continue;
        }
        t->cancelled = true;
        i++;
    }
}
