/* worker_decode.c -- the decode side of a worker: expect sequences
 * (DecodeTask from the router), receive their KV (KvTransfer + block
 * frames, checksummed) or adopt it from our own prefill (colocated), and run
 * continuous batching: every step admits waiting sequences within the batch
 * and block limits, runs one forward pass for the whole running batch,
 * samples, sends one TokenBatch, and retires finished sequences at once.
 * Under block pressure the youngest sequence is preempted: its blocks are
 * freed and the router re-prefills it elsewhere (or here, later). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "base/fault.h"
#include "base/log.h"
#include "worker.h"

#define WK_MAX_SEQS 4096 /* sequences held at once (expected, waiting, running) */

/* ====== Sequence table ====== */

static void close_frames(zmq_msg_t *frames, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        zmq_msg_close(&frames[i]);
    free(frames);
}

static void seq_free(wk_t *w, wk_seq_t *s)
{
    if (s == NULL)
        return;
    pd_kv_seq_release(w->kv, &s->seq);
    close_frames(s->frames, s->n_frames);
    free(s->hist);
    free(s);
}

static void seq_remove(wk_t *w, uint32_t i)
{
    if (w->seqs[i]->st == DS_RUNNING)
        w->n_running--;
    seq_free(w, w->seqs[i]);
    memmove(&w->seqs[i], &w->seqs[i + 1], (w->n_seqs - i - 1) * sizeof *w->seqs);
    w->n_seqs--;
}

static int seq_index(const wk_t *w, uint64_t req, uint32_t epoch)
{
    for (uint32_t i = 0; i < w->n_seqs; i++)
        if (w->seqs[i]->req == req && (epoch == 0 || w->seqs[i]->epoch == epoch))
            return (int)i;
    return -1;
}

static wk_seq_t *seq_add(wk_t *w, uint64_t req, uint32_t epoch, const wk_params_t *p)
{
    if (w->n_seqs >= WK_MAX_SEQS)
        return NULL;
    if (w->n_seqs == w->cap_seqs) {
        uint32_t cap = w->cap_seqs ? w->cap_seqs * 2 : 64;
        wk_seq_t **ns = pd_realloc(w->seqs, cap * sizeof *ns);
        if (ns == NULL)
            return NULL;
        w->seqs = ns;
        w->cap_seqs = cap;
    }
    wk_seq_t *s = pd_calloc(1, sizeof *s);
    if (s == NULL)
        return NULL;
    s->req = req;
    s->epoch = epoch;
    s->params = *p;
    /* Positions stay below max_seq_len, so the history never outgrows it
     * (whatever max_tokens says). */
    s->cap_hist = p->max_seq_len + 1;
    s->t_ms = pd_net_now_ms();
    w->seqs[w->n_seqs++] = s;
    return s;
}

uint32_t wk_decode_n_waiting(const wk_t *w)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < w->n_seqs; i++)
        n += w->seqs[i]->st == DS_WAITING;
    return n;
}

bool wk_decode_busy(const wk_t *w) { return w->n_seqs > 0 || w->n_orphans > 0; }

/* ====== KV ingress ====== */

static void send_ack(wk_t *w, const uint8_t *to, size_t to_len, uint64_t req, uint32_t epoch,
                     bool ok, const char *reason)
{
    Pd__KvAck a = PD__KV_ACK__INIT;
    a.has_request_id = a.has_epoch = a.has_ok = true;
    a.request_id = req;
    a.epoch = epoch;
    a.ok = ok;
    a.reason = (char *)reason;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_KV_ACK;
    m.kv_ack = &a;
    pd_err_t err = { 0 };
    if (pd_net_send(w->kv_in, to, to_len, &m, false, &err) != 0)
        PD_WARN("event=kv_ack_failed req=%llu msg=\"%s\"", (unsigned long long)req, err.msg);
    if (!ok && reason != NULL && strcmp(reason, "cancelled") != 0) {
        w->c.kv_rejected++;
        PD_WARN("event=kv_rejected req=%llu epoch=%u reason=\"%s\"", (unsigned long long)req,
                epoch, reason);
    }
}

/* Moves received block frames into s (waiting for admission). */
static int attach(wk_t *w, wk_seq_t *s, uint32_t n_tokens, int32_t first, zmq_msg_t *frames,
                  uint32_t nb)
{
    if (n_tokens != s->params.n_prompt + s->params.n_generated)
        return PD_EINVAL;
    if (s->n_hist != n_tokens || s->n_hist + 1 > s->cap_hist)
        return PD_EINVAL;
    s->frames = frames;
    s->n_frames = nb;
    s->n_past = n_tokens;
    s->last_token = first;
    s->last_index = s->params.n_generated;
    s->hist[s->n_hist++] = first;
    /* The prefill worker streams this token itself, on another socket; if
     * it stalls or dies after shipping, our tokens would reach the router
     * ahead of it. Echoing it makes our stream complete on its own (the
     * router drops whichever copy comes second). */
    s->echo_first = true;
    s->st = DS_WAITING;
    s->t_ms = pd_net_now_ms();
    w->c.kv_recv_bytes += (uint64_t)nb * w->block_bytes;
    return 0;
}

static zmq_msg_t *take_frames(pd_net_in_t *in, int from, uint32_t n)
{
    zmq_msg_t *f = pd_malloc((n ? n : 1) * sizeof *f);
    if (f == NULL)
        return NULL;
    for (uint32_t i = 0; i < n; i++) {
        zmq_msg_init(&f[i]);
        zmq_msg_move(&f[i], &in->frames[from + (int)i]);
    }
    return f;
}

/* Checks a transfer on its own (shape, model, checksums): why it is bad,
 * or NULL. */
static const char *check_transfer(wk_t *w, const Pd__KvTransfer *k, pd_net_in_t *in,
                                  char *why, size_t cap)
{
    uint32_t nb = (uint32_t)(in->n_frames - 2);
    uint32_t bs = pd_kv_shape(w->kv)->block_size;
    if (in->truncated)
        return "too many frames";
    if (!k->has_request_id || !k->has_epoch || !k->has_n_tokens || !k->has_n_blocks)
        return "request_id, epoch, n_tokens and n_blocks are required";
    if (!k->has_model_identity || k->model_identity != w->model->identity)
        return "model identity differs";
    if (!k->has_block_size || k->block_size != bs || k->block_bytes != w->block_bytes)
        return "block layout differs (block_size / block_bytes)";
    if (k->n_blocks != nb) {
        snprintf(why, cap, "header announces %u blocks, %u frames came", k->n_blocks, nb);
        return why;
    }
    if (k->n_tokens == 0 || k->n_tokens >= w->max_seq_len ||
        nb != (k->n_tokens + bs - 1) / bs) {
        snprintf(why, cap, "n_tokens %u does not match %u blocks", k->n_tokens, nb);
        return why;
    }
    if (k->n_checksums != nb)
        return "one checksum per block is required";
    if (!k->has_first_token || k->first_token < 0 || (uint32_t)k->first_token >= w->vocab)
        return "first_token missing or outside the vocabulary";
    for (uint32_t i = 0; i < nb; i++) {
        zmq_msg_t *f = &in->frames[2 + i];
        if (zmq_msg_size(f) != w->block_bytes) {
            snprintf(why, cap, "block %u: %zu bytes, expected %zu", i, zmq_msg_size(f),
                     w->block_bytes);
            return why;
        }
        if (XXH3_64bits(zmq_msg_data(f), w->block_bytes) != k->checksums[i]) {
            snprintf(why, cap, "block %u: checksum mismatch", i);
            return why;
        }
    }
    return NULL;
}

/* A transfer for a request we expect was refused: it must not hang. With
 * kv.load_failure = recompute the router re-prefills it (Preempted), with
 * fail it ends in an error. */
static void load_failed(wk_t *w, uint64_t req, uint32_t epoch, const char *why)
{
    int i = seq_index(w, req, epoch);
    if (i < 0 || w->seqs[i]->st != DS_EXPECT)
        return;
    char msg[200];
    snprintf(msg, sizeof msg, "KV load failed: %s", why);
    if (w->cfg.kv.load_failure == PD_KV_LOAD_FAIL)
        wk_send_error(w, req, PD__ERROR_CODE__INTERNAL, "%s", msg);
    else
        wk_send_preempted(w, req, epoch, w->seqs[i]->params.n_generated, msg);
    seq_remove(w, (uint32_t)i);
}

void wk_decode_on_transfer(wk_t *w, pd_net_in_t *in)
{
    const uint8_t *from = zmq_msg_data(&in->frames[0]);
    size_t from_len = zmq_msg_size(&in->frames[0]);
    pd_err_t err = { 0 };
    const void *hdr = zmq_msg_data(&in->frames[1]);
    size_t hdr_len = zmq_msg_size(&in->frames[1]);
    pd_net_peek_t pk;
    if (pd_fault_armed(PD_FAULT_DECODE_ADMIT)) { /* fault.h test hook */
        pd_net_peek(hdr, hdr_len, &pk);
        if (pk.body_case == PD__MSG__BODY_KV_TRANSFER && pk.has_request_id)
            pd_fault_enter(PD_FAULT_DECODE_ADMIT, pk.request_id);
    }
    Pd__Msg *m = pd_net_unpack(&w->alloc, hdr, hdr_len, &err);
    if (m == NULL && err.code == PD_ENOMEM) {
        /* Not the sender's fault: refuse the transfer (the prefill worker
         * frees its blocks) and let the request recompute or fail. */
        pd_net_peek(hdr, hdr_len, &pk);
        if (pk.body_case == PD__MSG__BODY_KV_TRANSFER && pk.has_request_id && pk.has_epoch) {
            send_ack(w, from, from_len, pk.request_id, pk.epoch, false, "out of memory");
            load_failed(w, pk.request_id, pk.epoch, "out of memory");
        } else {
            PD_WARN("event=bad_kv_message frames=%d msg=\"%s\"", in->n_frames, err.msg);
        }
        pd_fault_leave();
        return;
    }
    if (m == NULL || m->body_case != PD__MSG__BODY_KV_TRANSFER) {
        w->c.kv_rejected++;
        PD_WARN("event=bad_kv_message frames=%d msg=\"%s\"", in->n_frames,
                m ? "not a kv_transfer" : err.msg);
        pd_net_msg_free(&w->alloc, m);
        pd_fault_leave();
        return;
    }
    const Pd__KvTransfer *k = m->kv_transfer;
    char why[160];
    const char *bad = check_transfer(w, k, in, why, sizeof why);
    uint32_t nb = (uint32_t)(in->n_frames - 2);
    if (bad) {
        send_ack(w, from, from_len, k->request_id, k->epoch, false, bad);
        load_failed(w, k->request_id, k->epoch, bad);
        goto done;
    }
    int i = seq_index(w, k->request_id, k->epoch);
    if (i >= 0 && w->seqs[i]->st != DS_EXPECT) {
        send_ack(w, from, from_len, k->request_id, k->epoch, false, "duplicate transfer");
        goto done;
    }
    zmq_msg_t *frames = take_frames(in, 2, nb);
    if (frames == NULL) {
        /* The sequence must not wait for KV that will never come. */
        send_ack(w, from, from_len, k->request_id, k->epoch, false, "out of memory");
        load_failed(w, k->request_id, k->epoch, "out of memory");
        goto done;
    }
    if (i >= 0) {
        if (attach(w, w->seqs[i], k->n_tokens, k->first_token, frames, nb) != 0) {
            close_frames(frames, nb);
            send_ack(w, from, from_len, k->request_id, k->epoch, false,
                     "n_tokens differs from the decode task");
            load_failed(w, k->request_id, k->epoch, "n_tokens differs from the decode task");
            goto done;
        }
        send_ack(w, from, from_len, k->request_id, k->epoch, true, NULL);
        goto done;
    }
    /* A request cancelled before its KV came: refuse at once, so the
     * prefill worker frees its blocks now rather than at lease expiry. */
    for (uint32_t c = 0; c < WK_CANCELLED; c++)
        if (w->cancelled[c].req == k->request_id && k->request_id != 0 &&
            (w->cancelled[c].epoch == 0 || w->cancelled[c].epoch == k->epoch)) {
            close_frames(frames, nb);
            send_ack(w, from, from_len, k->request_id, k->epoch, false, "cancelled");
            goto done;
        }
    /* No DecodeTask yet: it may still be on its way from the router. */
    if (w->n_orphans == WK_MAX_ORPHANS) {
        close_frames(frames, nb);
        send_ack(w, from, from_len, k->request_id, k->epoch, false, "unknown request");
        goto done;
    }
    wk_orphan_t *o = &w->orphans[w->n_orphans++];
    o->req = k->request_id;
    o->epoch = k->epoch;
    o->n_tokens = k->n_tokens;
    o->first_token = k->first_token;
    o->frames = frames;
    o->n_frames = nb;
    memcpy(o->sender, from, from_len);
    o->sender_len = from_len;
    o->t_ms = pd_net_now_ms();
done:
    pd_net_msg_free(&w->alloc, m);
    pd_fault_leave();
}

void wk_decode_on_kv(wk_t *w)
{
    pd_err_t err = { 0 };
    for (int budget = 0; budget < 64; budget++) {
        int rc = pd_net_recv(w->kv_in, w->in, &err);
        if (rc <= 0)
            return;
        if (w->in->n_frames < 2 || zmq_msg_size(&w->in->frames[0]) > PD_NET_ID_MAX) {
            w->c.kv_rejected++;
            PD_WARN("event=bad_kv_message frames=%d", w->in->n_frames);
        } else {
            wk_decode_on_transfer(w, w->in);
        }
        pd_net_in_close(w->in);
    }
}

static void orphan_drop(wk_t *w, uint32_t i, bool ok, const char *why)
{
    wk_orphan_t *o = &w->orphans[i];
    if (!ok)
        send_ack(w, o->sender, o->sender_len, o->req, o->epoch, false, why);
    else
        close_frames(o->frames, o->n_frames);
    if (!ok)
        close_frames(o->frames, o->n_frames);
    w->orphans[i] = w->orphans[--w->n_orphans];
}

/* ====== Messages ====== */

void wk_decode_on_task(wk_t *w, const Pd__DecodeTask *m)
{
    pd_err_t err = { 0 };
    uint64_t req = m->request_id;
    if (!m->has_request_id || req == 0 || !m->has_epoch) {
        wk_send_error(w, 0, PD__ERROR_CODE__INVALID_ARGUMENT,
                      "decode task: request_id and epoch are required");
        return;
    }
    wk_params_t p;
    if (wk_params_from_pb(w, m->params, &p, &err) != 0) {
        wk_send_error(w, req, PD__ERROR_CODE__INVALID_ARGUMENT, "decode task: %s", err.msg);
        return;
    }
    if (m->n_history != (size_t)p.n_prompt + p.n_generated) {
        wk_send_error(w, req, PD__ERROR_CODE__INVALID_ARGUMENT,
                      "decode task: history of %zu tokens, expected %u", m->n_history,
                      p.n_prompt + p.n_generated);
        return;
    }
    for (size_t i = 0; i < m->n_history; i++)
        if (m->history[i] < 0 || (uint32_t)m->history[i] >= w->vocab) {
            wk_send_error(w, req, PD__ERROR_CODE__INVALID_ARGUMENT,
                          "decode task: history[%zu] outside the vocabulary", i);
            return;
        }
    for (int i; (i = seq_index(w, req, 0)) >= 0;) {
        if (w->seqs[i]->epoch >= m->epoch) {
            PD_WARN("event=stale_decode_task req=%llu epoch=%u", (unsigned long long)req,
                    m->epoch);
            return;
        }
        seq_remove(w, (uint32_t)i);
    }
    bool full = w->n_seqs >= WK_MAX_SEQS;
    wk_seq_t *s = seq_add(w, req, m->epoch, &p);
    if (s == NULL || (s->hist = pd_malloc(s->cap_hist * sizeof *s->hist)) == NULL) {
        if (s)
            seq_remove(w, w->n_seqs - 1);
        wk_send_error(w, req, PD__ERROR_CODE__RESOURCE_EXHAUSTED, "decode worker %s %s", w->id,
                      full ? "cannot take more sequences" : "is out of memory for a sequence");
        return;
    }
    memcpy(s->hist, m->history, m->n_history * sizeof *s->hist);
    s->n_hist = (uint32_t)m->n_history;
    s->st = DS_EXPECT;
    /* Its KV may have come first. */
    for (uint32_t i = 0; i < w->n_orphans; i++) {
        wk_orphan_t *o = &w->orphans[i];
        if (o->req != req || o->epoch != m->epoch)
            continue;
        if (attach(w, s, o->n_tokens, o->first_token, o->frames, o->n_frames) == 0) {
            send_ack(w, o->sender, o->sender_len, o->req, o->epoch, true, NULL);
            w->orphans[i] = w->orphans[--w->n_orphans];
        } else {
            orphan_drop(w, i, false, "n_tokens differs from the decode task");
            load_failed(w, req, m->epoch, "n_tokens differs from the decode task");
        }
        break;
    }
}

int wk_decode_adopt(wk_t *w, wk_task_t *t)
{
    wk_seq_t *s = seq_add(w, t->req, t->epoch, &t->params);
    if (s == NULL) {
        wk_send_preempted(w, t->req, t->epoch, t->params.n_generated + 1, "decode side full");
        return PD_EFULL;
    }
    int32_t *h = pd_realloc(t->tokens, s->cap_hist * sizeof *h);
    if (h == NULL) {
        seq_remove(w, w->n_seqs - 1);
        wk_send_preempted(w, t->req, t->epoch, t->params.n_generated + 1, "out of memory");
        return PD_ENOMEM;
    }
    t->tokens = h; /* so the task does not free the old pointer */
    s->hist = h;
    s->n_hist = t->n_tokens;
    s->hist[s->n_hist++] = t->first_token;
    s->seq = t->seq;
    s->has_blocks = true;
    s->n_past = t->n_tokens;
    s->last_token = t->first_token;
    s->last_index = t->params.n_generated;
    s->st = DS_WAITING;
    return 0;
}

void wk_decode_cancel(wk_t *w, uint64_t req, uint32_t epoch)
{
    w->cancelled[w->cancelled_next].req = req;
    w->cancelled[w->cancelled_next].epoch = epoch;
    w->cancelled_next = (w->cancelled_next + 1) % WK_CANCELLED;
    for (int i; (i = seq_index(w, req, epoch)) >= 0;)
        seq_remove(w, (uint32_t)i);
    for (uint32_t i = 0; i < w->n_orphans;) {
        if (w->orphans[i].req == req && (epoch == 0 || w->orphans[i].epoch == epoch)) {
            orphan_drop(w, i, false, "cancelled");
            continue;
        }
        i++;
    }
}

/* ====== Continuous batching ====== */

static uint32_t blocks_to_admit(const wk_t *w, const wk_seq_t *s)
{
    uint32_t bs = pd_kv_shape(w->kv)->block_size;
    uint32_t have = s->seq.n_blocks * bs;
    return pd_kv_blocks_needed(w->kv, have < s->n_past + 1 ? have : s->n_past + 1,
                               s->n_past + 1 > have ? s->n_past + 1 - have : 0);
}

bool wk_decode_ready(const wk_t *w)
{
    if (w->n_running > 0)
        return true;
    for (uint32_t i = 0; i < w->n_seqs; i++)
        if (w->seqs[i]->st == DS_WAITING)
            return blocks_to_admit(w, w->seqs[i]) <= pd_kv_n_free(w->kv);
    return false;
}

static void preempt(wk_t *w, uint32_t i, const char *why)
{
    wk_seq_t *s = w->seqs[i];
    PD_INFO("event=preempt req=%llu epoch=%u generated=%u free_blocks=%u",
            (unsigned long long)s->req, s->epoch, s->last_index + 1, pd_kv_n_free(w->kv));
    wk_send_preempted(w, s->req, s->epoch, s->last_index + 1, why);
    w->c.preemptions++;
    seq_remove(w, i);
}

static void admit(wk_t *w)
{
    uint32_t max_run = w->cfg.decode.max_batch_size;
    if (max_run > w->max_fwd_seqs)
        max_run = w->max_fwd_seqs;
    for (uint32_t i = 0; i < w->n_seqs && w->n_running < max_run; i++) {
        wk_seq_t *s = w->seqs[i];
        if (s->st != DS_WAITING)
            continue;
        pd_fault_enter(PD_FAULT_DECODE_ADMIT, s->req); /* fault.h test hook */
        int rc = pd_kv_seq_reserve(w->kv, &s->seq, s->n_past + 1);
        pd_fault_leave();
        if (rc == PD_ENOMEM || rc == PD_ERANGE) {
            /* No memory for the block table: waiting would spin on it;
             * the router re-prefills the request (here or elsewhere). */
            preempt(w, i, "out of memory for the block table");
            i--;
            continue;
        }
        if (rc != 0) {
            if (blocks_to_admit(w, s) > pd_kv_shape(w->kv)->n_blocks) {
                preempt(w, i, "sequence needs more KV blocks than this worker has");
                i--;
                continue;
            }
            break; /* first come, first served: wait for blocks */
        }
        if (!s->has_blocks) {
            for (uint32_t b = 0; b < s->n_frames; b++)
                memcpy(pd_kv_block(w->kv, s->seq.blocks[b]), zmq_msg_data(&s->frames[b]),
                       w->block_bytes);
            close_frames(s->frames, s->n_frames);
            s->frames = NULL;
            s->n_frames = 0;
            s->has_blocks = true;
        }
        if (w->n_running > 0)
            w->c.joins_while_running++;
        s->st = DS_RUNNING;
        s->admit_order = ++w->admit_counter;
        w->n_running++;
        pd_fault_complete(PD_FAULT_DECODE_ADMIT, s->req);
    }
}

/* Every running sequence gets room for the position it feeds next; when
 * blocks run out the youngest running sequence goes back to the router. */
static void reserve_or_preempt(wk_t *w)
{
    for (uint32_t i = 0; i < w->n_seqs; i++) {
        wk_seq_t *s = w->seqs[i];
        if (s->st != DS_RUNNING)
            continue;
        while (pd_kv_seq_reserve(w->kv, &s->seq, s->n_past + 1) != 0) {
            uint32_t victim = i;
            for (uint32_t j = 0; j < w->n_seqs; j++)
                if (w->seqs[j]->st == DS_RUNNING &&
                    w->seqs[j]->admit_order > w->seqs[victim]->admit_order)
                    victim = j;
            preempt(w, victim, "KV blocks exhausted");
            if (victim == i) {
                i--; /* the array moved down over it */
                break;
            }
            if (victim < i)
                i--;
            s = w->seqs[i];
        }
    }
}

void wk_decode_step(wk_t *w)
{
    admit(w);
    reserve_or_preempt(w);
    if (w->n_running == 0)
        return;
    wk_seq_t *run[w->max_fwd_seqs];
    uint32_t n = 0;
    for (uint32_t i = 0; i < w->n_seqs && n < w->max_fwd_seqs; i++) {
        wk_seq_t *s = w->seqs[i];
        if (s->st != DS_RUNNING)
            continue;
        w->b_tokens[n] = s->last_token;
        w->b_pos[n] = (int32_t)s->n_past;
        w->b_seq[n] = (int32_t)n;
        w->b_want[n] = true;
        w->b_tables[n] = s->seq.blocks;
        w->b_ntable[n] = s->seq.n_blocks;
        run[n++] = s;
    }
    if (n == 0)
        return; /* n_running counts DS_RUNNING sequences; never 0-sized arrays below */
    pd_batch_t b = { n, w->b_tokens, w->b_pos, w->b_seq, w->b_want, n, w->b_tables, w->b_ntable };
    pd_err_t err = { 0 };
    uint64_t t0 = pd_net_now_us();
    int rc = pd_forward(w->engine, &b, w->logits, &err);
    w->c.decode_us += pd_net_now_us() - t0;
    if (rc != 0) {
        PD_ERROR("event=decode_forward_failed seqs=%u msg=\"%s\"", n, err.msg);
        for (uint32_t k = 0; k < n; k++) {
            wk_send_error(w, run[k]->req, PD__ERROR_CODE__INTERNAL, "decode failed: %s", err.msg);
            int i = seq_index(w, run[k]->req, run[k]->epoch);
            if (i >= 0)
                seq_remove(w, (uint32_t)i);
        }
        return;
    }
    w->c.steps++;
    if (n > 1)
        w->c.multi_seq_steps++;
    if (n > w->c.max_running)
        w->c.max_running = n;
    w->c.decode_tokens += n;
    Pd__TokenEntry ents[2 * n];
    Pd__TokenEntry *eps[2 * n];
    bool done[n];
    uint32_t ne = 0;
    for (uint32_t k = 0; k < n; k++) {
        wk_seq_t *s = run[k];
        if (s->echo_first) {
            pd_token_entry_t te = { s->req, s->epoch, s->last_token, s->last_index,
                                    PD__FINISH_REASON__FINISH_NONE };
            pd_codec_token_to_pb(&te, &ents[ne]);
            eps[ne] = &ents[ne];
            ne++;
            s->echo_first = false;
        }
        uint32_t pos = s->n_past + 1;
        int32_t tok = pd_sample(&s->params.s, w->logits + (size_t)k * w->vocab, w->vocab, pos,
                                s->hist, s->n_hist, w->scratch);
        uint32_t index = s->last_index + 1;
        Pd__FinishReason fin = wk_finish_check(w, &s->params, tok, index, pos);
        s->n_past++;
        s->last_token = tok;
        s->last_index = index;
        if (s->n_hist < s->cap_hist)
            s->hist[s->n_hist++] = tok;
        done[k] = fin != PD__FINISH_REASON__FINISH_NONE;
        pd_token_entry_t te = { s->req, s->epoch, tok, index, fin };
        pd_codec_token_to_pb(&te, &ents[ne]);
        eps[ne] = &ents[ne];
        ne++;
    }
    Pd__TokenBatch tb = PD__TOKEN_BATCH__INIT;
    tb.n_entries = ne;
    tb.entries = eps;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_TOKENS;
    m.tokens = &tb;
    wk_send_router(w, &m);
    /* Retire at once: their blocks serve the next step's admissions. */
    for (uint32_t k = 0; k < n; k++) {
        if (!done[k])
            continue;
        int i = seq_index(w, run[k]->req, run[k]->epoch);
        if (i >= 0) {
            seq_remove(w, (uint32_t)i);
            w->c.retirements++;
        }
    }
}

/* ====== Timers ====== */

void wk_decode_timers(wk_t *w)
{
    uint64_t now = pd_net_now_ms();
    uint64_t hold_ms = w->cfg.worker.lease_ms / 2 > 200 ? w->cfg.worker.lease_ms / 2 : 200;
    for (uint32_t i = 0; i < w->n_orphans;) {
        if (now - w->orphans[i].t_ms > hold_ms) {
            orphan_drop(w, i, false, "unknown request (no decode task for it)");
            continue;
        }
        i++;
    }
}

void wk_decode_drop_all(wk_t *w)
{
    while (w->n_seqs > 0)
        seq_remove(w, w->n_seqs - 1);
    while (w->n_orphans > 0)
        orphan_drop(w, w->n_orphans - 1, true, NULL);
}
