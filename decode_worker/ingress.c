/* ingress.c -- how a request reaches the decode role over the network: the
 * router's DecodeTask (expected, with its parameters and history) and the
 * prefill worker's KvTransfer (header + block frames, every one checked
 * against the header's checksums) meet here, in either order, and go on as
 * one hand-off to batch.c (dc_take). Every transfer is acknowledged (KvAck)
 * so the prefill worker frees its blocks; one that cannot be used fails its
 * request cleanly (kv.load_failure: recompute or fail), never silently. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "base/clock.h"
#include "base/fault.h"
#include "base/grow.h"
#include "base/log.h"
#include "decode_internal.h"

/* ====== Expected requests ====== */

int dc_expect_index(const pd_decode_t *d, uint64_t req, uint32_t epoch)
{
    for (size_t i = 0; i < d->n_expects; i++)
        if (d->expects[i].req == req && (epoch == 0 || d->expects[i].epoch == epoch))
            return (int)i;
    return -1;
}

void dc_expect_remove(pd_decode_t *d, size_t i)
{
    free(d->expects[i].hist);
    memmove(&d->expects[i], &d->expects[i + 1], (d->n_expects - i - 1) * sizeof *d->expects);
    d->n_expects--;
}

/* ====== Acks and failures ====== */

void dc_send_ack(pd_decode_t *d, const uint8_t *to, size_t to_len, uint64_t req, uint32_t epoch,
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
    if (pd_net_send(d->kv_in, to, to_len, &m, false, &err) != 0)
        PD_WARN("event=kv_ack_failed req=%llu msg=\"%s\"", (unsigned long long)req, err.msg);
    if (!ok && reason != NULL && strcmp(reason, "cancelled") != 0) {
        d->c.kv_rejected++;
        PD_WARN("event=kv_rejected req=%llu epoch=%u reason=\"%s\"", (unsigned long long)req,
                epoch, reason);
    }
}

/* A transfer for a request we expect was refused: it must not hang. With
 * kv.load_failure = recompute the router re-prefills it (Preempted), with
 * fail it ends in an error. */
void dc_load_failed(pd_decode_t *d, uint64_t req, uint32_t epoch, const char *why)
{
    int i = dc_expect_index(d, req, epoch);
    if (i < 0 || epoch == 0)
        return;
    char msg[200];
    snprintf(msg, sizeof msg, "KV load failed: %s", why);
    if (d->cfg->kv.load_failure == PD_KV_LOAD_FAIL)
        pd_wkport_error(d->port, req, PD__ERROR_CODE__INTERNAL, "%s", msg);
    else
        pd_wkport_preempted(d->port, req, epoch, d->expects[i].params.n_generated, msg);
    dc_expect_remove(d, (size_t)i);
}

/* ====== Pairing ====== */

int dc_deliver(pd_decode_t *d, size_t i, uint32_t n_tokens, int32_t first, zmq_msg_t *frames,
               uint32_t nb, pd_kv_seq_t *seq)
{
    dc_expect_t *x = &d->expects[i];
    if (n_tokens != x->params.n_prompt + x->params.n_generated)
        return PD_EINVAL;
    if (x->n_hist != n_tokens || x->n_hist + 1 > x->cap_hist)
        return PD_EINVAL;
    pd_kv_handoff_t h;
    memset(&h, 0, sizeof h);
    h.req = x->req;
    h.epoch = x->epoch;
    h.params = x->params;
    h.hist = x->hist;
    h.n_hist = x->n_hist;
    h.cap_hist = x->cap_hist;
    h.first_token = first;
    /* The prefill worker streams this token itself, on another socket; if
     * it stalls or dies after shipping, our tokens would reach the router
     * ahead of it. Echoing it makes our stream complete on its own (the
     * router drops whichever copy comes second). */
    h.echo_first = true;
    if (frames == NULL) {
        h.seq = *seq;
        memset(seq, 0, sizeof *seq);
    }
    h.frames = frames;
    h.n_frames = nb;
    uint64_t ticket = x->ticket;
    x->hist = NULL;
    dc_expect_remove(d, i);
    d->c.kv_recv_bytes += (uint64_t)nb * d->eng->block_bytes;
    uint64_t req = h.req, epoch = h.epoch;
    int rc = dc_take(d, &h, ticket);
    if (rc != 0) {
        pd_kv_handoff_release(&h, d->eng->kv);
        return rc == PD_EINVAL ? PD_ENOMEM : rc;
    }
    /* The end of the KV's exposure (docs/benchmarks.md): the sequence is
     * the batcher's, its whole KV here and checked. */
    PD_INFO("event=kv_in req=%llu epoch=%llu mode=%s t_us=%llu", (unsigned long long)req,
            (unsigned long long)epoch, frames ? "whole" : "layer", (unsigned long long)pd_now_us());
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

/* ====== KV transfers ====== */

/* Checks a transfer on its own (shape, model, checksums): why it is bad,
 * or NULL. */
static const char *check_transfer(pd_decode_t *d, const Pd__KvTransfer *k, pd_net_in_t *in,
                                  char *why, size_t cap)
{
    uint32_t nb = (uint32_t)(in->n_frames - 2);
    uint32_t bs = pd_kv_shape(d->eng->kv)->block_size;
    size_t block_bytes = d->eng->block_bytes;
    if (in->truncated)
        return "too many frames";
    if (!k->has_request_id || !k->has_epoch || !k->has_n_tokens || !k->has_n_blocks)
        return "request_id, epoch, n_tokens and n_blocks are required";
    if (!k->has_model_identity || k->model_identity != d->eng->identity)
        return "model identity differs";
    if (!k->has_block_size || k->block_size != bs || k->block_bytes != block_bytes)
        return "block layout differs (block_size / block_bytes)";
    if (k->n_blocks != nb) {
        snprintf(why, cap, "header announces %u blocks, %u frames came", k->n_blocks, nb);
        return why;
    }
    if (k->n_tokens == 0 || k->n_tokens >= d->eng->max_seq_len ||
        nb != (k->n_tokens + bs - 1) / bs) {
        snprintf(why, cap, "n_tokens %u does not match %u blocks", k->n_tokens, nb);
        return why;
    }
    if (k->n_checksums != nb)
        return "one checksum per block is required";
    if (!k->has_first_token || k->first_token < 0 || (uint32_t)k->first_token >= d->eng->vocab)
        return "first_token missing or outside the vocabulary";
    for (uint32_t i = 0; i < nb; i++) {
        zmq_msg_t *f = &in->frames[2 + i];
        if (zmq_msg_size(f) != block_bytes) {
            snprintf(why, cap, "block %u: %zu bytes, expected %zu", i, zmq_msg_size(f),
                     block_bytes);
            return why;
        }
        if (XXH3_64bits(zmq_msg_data(f), block_bytes) != k->checksums[i]) {
            snprintf(why, cap, "block %u: checksum mismatch", i);
            return why;
        }
    }
    return NULL;
}

bool dc_was_cancelled(const pd_decode_t *d, uint64_t req, uint32_t epoch)
{
    for (uint32_t c = 0; c < DC_CANCELLED; c++)
        if (d->cancelled[c].req == req && req != 0 &&
            (d->cancelled[c].epoch == 0 || d->cancelled[c].epoch == epoch))
            return true;
    return false;
}

/* A good transfer, its frames taken: to its expected request, or refused
 * (cancelled), or kept until its DecodeTask comes. */
static void accept_transfer(pd_decode_t *d, const Pd__KvTransfer *k, const uint8_t *from,
                            size_t from_len, zmq_msg_t *frames, uint32_t nb)
{
    int i = dc_expect_index(d, k->request_id, k->epoch);
    if (i >= 0 && k->epoch != 0) {
        int rc = dc_deliver(d, (size_t)i, k->n_tokens, k->first_token, frames, nb, NULL);
        if (rc == PD_EINVAL) {
            dc_close_frames(frames, nb);
            dc_send_ack(d, from, from_len, k->request_id, k->epoch, false,
                        "n_tokens differs from the decode task");
            dc_load_failed(d, k->request_id, k->epoch, "n_tokens differs from the decode task");
        } else {
            dc_send_ack(d, from, from_len, k->request_id, k->epoch, rc == 0,
                        rc == 0 ? NULL : "out of memory");
        }
        return;
    }
    /* A request cancelled before its KV came: refuse at once, so the
     * prefill worker frees its blocks now rather than at lease expiry. */
    if (dc_was_cancelled(d, k->request_id, k->epoch)) {
        dc_close_frames(frames, nb);
        dc_send_ack(d, from, from_len, k->request_id, k->epoch, false, "cancelled");
        return;
    }
    /* No DecodeTask yet: it may still be on its way from the router. */
    if (d->n_orphans == DC_MAX_ORPHANS) {
        dc_close_frames(frames, nb);
        dc_send_ack(d, from, from_len, k->request_id, k->epoch, false, "unknown request");
        return;
    }
    dc_orphan_t *o = &d->orphans[d->n_orphans++];
    o->req = k->request_id;
    o->epoch = k->epoch;
    o->n_tokens = k->n_tokens;
    o->first_token = k->first_token;
    o->frames = frames;
    o->n_frames = nb;
    memcpy(o->sender, from, from_len);
    o->sender_len = from_len;
    o->t_ms = dc_now_ms(d);
}

void pd_decode_on_transfer(pd_decode_t *d, pd_net_in_t *in)
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
    Pd__Msg *m = pd_net_unpack(&d->alloc, hdr, hdr_len, &err);
    if (m == NULL && err.code == PD_ENOMEM) {
        /* Not the sender's fault: refuse the transfer (the prefill worker
         * frees its blocks) and let the request recompute or fail. */
        pd_net_peek(hdr, hdr_len, &pk);
        if (pk.body_case == PD__MSG__BODY_KV_TRANSFER && pk.has_request_id && pk.has_epoch) {
            dc_send_ack(d, from, from_len, pk.request_id, pk.epoch, false, "out of memory");
            dc_load_failed(d, pk.request_id, pk.epoch, "out of memory");
        } else {
            PD_WARN("event=bad_kv_message frames=%d msg=\"%s\"", in->n_frames, err.msg);
        }
        pd_fault_leave();
        return;
    }
    if (m && m->body_case == PD__MSG__BODY_KV_LAYER) {
        dc_on_layer(d, m->kv_layer, in);
        pd_net_msg_free(&d->alloc, m);
        pd_fault_leave();
        return;
    }
    if (m && m->body_case == PD__MSG__BODY_KV_TRANSFER && m->kv_transfer->streamed) {
        dc_on_commit(d, m->kv_transfer, in);
        pd_net_msg_free(&d->alloc, m);
        pd_fault_leave();
        return;
    }
    if (m == NULL || m->body_case != PD__MSG__BODY_KV_TRANSFER) {
        d->c.kv_rejected++;
        PD_WARN("event=bad_kv_message frames=%d msg=\"%s\"", in->n_frames,
                m ? "not a kv_transfer" : err.msg);
        pd_net_msg_free(&d->alloc, m);
        pd_fault_leave();
        return;
    }
    const Pd__KvTransfer *k = m->kv_transfer;
    char why[160];
    const char *bad = check_transfer(d, k, in, why, sizeof why);
    uint32_t nb = (uint32_t)(in->n_frames - 2);
    zmq_msg_t *frames = NULL;
    if (bad) {
        dc_send_ack(d, from, from_len, k->request_id, k->epoch, false, bad);
        dc_load_failed(d, k->request_id, k->epoch, bad);
    } else if (dc_seq_index(d, k->request_id, k->epoch) >= 0) {
        dc_send_ack(d, from, from_len, k->request_id, k->epoch, false, "duplicate transfer");
    } else if ((frames = take_frames(in, 2, nb)) == NULL) {
        /* The request must not wait for KV that will never come. */
        dc_send_ack(d, from, from_len, k->request_id, k->epoch, false, "out of memory");
        dc_load_failed(d, k->request_id, k->epoch, "out of memory");
    } else {
        /* A stream of it that broke on the sender's side: this replaces it. */
        dc_stream_drop(d, k->request_id, k->epoch, 0, "replaced by a whole transfer");
        accept_transfer(d, k, from, from_len, frames, nb);
    }
    pd_net_msg_free(&d->alloc, m);
    pd_fault_leave();
}

void dc_on_kv(pd_decode_t *d)
{
    pd_err_t err = { 0 };
    for (int budget = 0; budget < 64; budget++) {
        int rc = pd_net_recv(d->kv_in, d->in, &err);
        if (rc <= 0)
            return;
        if (d->in->n_frames < 2 || zmq_msg_size(&d->in->frames[0]) > PD_NET_ID_MAX) {
            d->c.kv_rejected++;
            PD_WARN("event=bad_kv_message frames=%d", d->in->n_frames);
        } else {
            pd_decode_on_transfer(d, d->in);
        }
        pd_net_in_close(d->in);
    }
}

/* ====== Orphans ====== */

/* Forgets orphan i: refused to its sender (why), or (ok) silently. */
static void orphan_drop(pd_decode_t *d, uint32_t i, bool ok, const char *why)
{
    dc_orphan_t *o = &d->orphans[i];
    if (!ok)
        dc_send_ack(d, o->sender, o->sender_len, o->req, o->epoch, false, why);
    dc_close_frames(o->frames, o->n_frames);
    d->orphans[i] = d->orphans[--d->n_orphans];
}

/* Expected request x (the last one) may have had its KV come first. */
static void match_orphan(pd_decode_t *d, size_t x)
{
    uint64_t req = d->expects[x].req;
    uint32_t epoch = d->expects[x].epoch;
    for (uint32_t i = 0; i < d->n_orphans; i++) {
        dc_orphan_t *o = &d->orphans[i];
        if (o->req != req || o->epoch != epoch)
            continue;
        int rc = dc_deliver(d, x, o->n_tokens, o->first_token, o->frames, o->n_frames, NULL);
        if (rc == PD_EINVAL) {
            orphan_drop(d, i, false, "n_tokens differs from the decode task");
            dc_load_failed(d, req, epoch, "n_tokens differs from the decode task");
        } else {
            /* Taken, or refused by the batcher (which freed the frames). */
            dc_send_ack(d, o->sender, o->sender_len, req, epoch, rc == 0,
                        rc == 0 ? NULL : "out of memory");
            d->orphans[i] = d->orphans[--d->n_orphans];
        }
        return;
    }
}

/* ====== DecodeTasks ====== */

/* Checks the task's fields; 0, or an Error already sent. */
static int check_task(pd_decode_t *d, const Pd__DecodeTask *m, pd_gen_params_t *params)
{
    pd_err_t err = { 0 };
    uint64_t req = m->request_id;
    pd_gen_limits_t lim = { d->eng->vocab, d->eng->max_seq_len };
    if (pd_codec_params_from_pb(m->params, &lim, params, &err) != 0) {
        pd_wkport_error(d->port, req, PD__ERROR_CODE__INVALID_ARGUMENT, "decode task: %s",
                        err.msg);
        return PD_EINVAL;
    }
    if (m->n_history != (size_t)params->n_prompt + params->n_generated) {
        pd_wkport_error(d->port, req, PD__ERROR_CODE__INVALID_ARGUMENT,
                        "decode task: history of %zu tokens, expected %u", m->n_history,
                        params->n_prompt + params->n_generated);
        return PD_EINVAL;
    }
    for (size_t i = 0; i < m->n_history; i++)
        if (m->history[i] < 0 || (uint32_t)m->history[i] >= d->eng->vocab) {
            pd_wkport_error(d->port, req, PD__ERROR_CODE__INVALID_ARGUMENT,
                            "decode task: history[%zu] outside the vocabulary", i);
            return PD_EINVAL;
        }
    return 0;
}

/* A newer epoch replaces whatever we hold of an older one; false when what
 * we hold is as new or newer (the task is stale). */
static bool replace_older(pd_decode_t *d, uint64_t req, uint32_t epoch)
{
    for (int i; (i = dc_expect_index(d, req, 0)) >= 0;) {
        if (d->expects[i].epoch >= epoch)
            return false;
        dc_expect_remove(d, (size_t)i);
    }
    for (int i; (i = dc_seq_index(d, req, 0)) >= 0;) {
        if (d->seqs[i]->epoch >= epoch)
            return false;
        dc_seq_remove(d, (size_t)i);
    }
    dc_stream_drop(d, req, 0, epoch, "a newer epoch");
    return true;
}

void dc_on_task(pd_decode_t *d, const Pd__DecodeTask *m)
{
    uint64_t req = m->request_id;
    if (!m->has_request_id || req == 0 || !m->has_epoch) {
        pd_wkport_error(d->port, 0, PD__ERROR_CODE__INVALID_ARGUMENT,
                        "decode task: request_id and epoch are required");
        return;
    }
    pd_gen_params_t params;
    if (check_task(d, m, &params) != 0)
        return;
    if (!replace_older(d, req, m->epoch)) {
        PD_WARN("event=stale_decode_task req=%llu epoch=%u", (unsigned long long)req, m->epoch);
        return;
    }
    bool full = d->n_expects + d->n_seqs >= DC_MAX_SEQS;
    uint32_t cap_hist = params.max_seq_len + 1;
    int32_t *hist = NULL;
    if (full ||
        pd_grow((void **)&d->expects, &d->cap_expects, d->n_expects + 1, sizeof *d->expects,
                64) != 0 ||
        (hist = pd_malloc(cap_hist * sizeof *hist)) == NULL) {
        pd_wkport_error(d->port, req, PD__ERROR_CODE__RESOURCE_EXHAUSTED, "decode worker %s %s",
                        d->id,
                        full ? "cannot take more sequences" : "is out of memory for a sequence");
        return;
    }
    dc_expect_t *x = &d->expects[d->n_expects++];
    memset(x, 0, sizeof *x);
    x->req = req;
    x->epoch = m->epoch;
    x->params = params;
    /* Positions stay below max_seq_len, so the history never outgrows it
     * (whatever max_tokens says). */
    x->hist = hist;
    x->cap_hist = cap_hist;
    memcpy(x->hist, m->history, m->n_history * sizeof *x->hist);
    x->n_hist = (uint32_t)m->n_history;
    x->ticket = ++d->tickets;
    match_orphan(d, d->n_expects - 1);
    dc_early_replay(d, req, m->epoch);
    /* Its KV stream came before it and was refused: it will not come again. */
    if (dc_stream_refused(d, req, m->epoch))
        dc_load_failed(d, req, m->epoch, "its KV stream came before its decode task");
}

/* ====== Cancel, timers ====== */

void dc_ingress_cancel(pd_decode_t *d, uint64_t req, uint32_t epoch)
{
    d->cancelled[d->cancelled_next].req = req;
    d->cancelled[d->cancelled_next].epoch = epoch;
    d->cancelled_next = (d->cancelled_next + 1) % DC_CANCELLED;
    for (int i; (i = dc_expect_index(d, req, epoch)) >= 0;)
        dc_expect_remove(d, (size_t)i);
    dc_stream_drop(d, req, epoch, 0, "cancelled");
    dc_early_drop(d, req, epoch, "cancelled");
    for (uint32_t i = 0; i < d->n_orphans;) {
        if (d->orphans[i].req == req && (epoch == 0 || d->orphans[i].epoch == epoch)) {
            orphan_drop(d, i, false, "cancelled");
            continue;
        }
        i++;
    }
}

void dc_ingress_timers(pd_decode_t *d)
{
    uint64_t now = dc_now_ms(d);
    uint64_t hold_ms = dc_hold_ms(d);
    for (uint32_t i = 0; i < d->n_orphans;) {
        if (now - d->orphans[i].t_ms > hold_ms) {
            orphan_drop(d, i, false, "unknown request (no decode task for it)");
            continue;
        }
        i++;
    }
    dc_stream_timers(d);
    dc_early_timers(d);
}

void dc_ingress_drop_all(pd_decode_t *d)
{
    dc_stream_drop_all(d);
    dc_early_drop_all(d);
    while (d->n_expects > 0)
        dc_expect_remove(d, d->n_expects - 1);
    while (d->n_orphans > 0)
        orphan_drop(d, d->n_orphans - 1, true, NULL);
}
