/* stream_out.c -- kv.transfer: layer. A request's KV leaves layer by layer
 * while its pass computes the next ones (docs/protocol.md, "Layer-wise KV
 * streaming"): from the engine's per-layer hook, one KvLayer message per
 * (task, layer) with one zero-copy frame per block (that layer's K and V
 * in the block: pd_kv_block_layer), then after the pass a commit
 * (KvTransfer, streamed) with the first token. The sends never wait: a
 * full or lost socket marks the stream broken and the request is shipped
 * whole after its pass (egress.c). Leases and acks are egress.c's. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <xxhash.h>

#include "base/clock.h"
#include "base/log.h"
#include "prefill_internal.h"

bool pf_streams(const pd_prefill_t *p, const pf_task_t *t)
{
    return p->cfg->kv.transfer == PD_KV_TRANSFER_LAYER && !t->cancelled && !t->stream_broken &&
           strcmp(t->decode_id, p->id) != 0;
}

bool pf_stream_wait(pd_prefill_t *p, const pf_task_t *t)
{
    if (t->n_done > 0 || !pf_streams(p, t) || pf_now_ms(p) - t->t_arrive_ms > PF_CONNECT_WAIT_MS)
        return false;
    return pf_egress_get(p, t->kv_endpoint) != NULL && !pf_egress_ready(p, t->kv_endpoint);
}

/* Layer `layer` of t's blocks [b0, b1): header + one frame per block.
 * 0, or a code (the stream is then broken). */
static int send_layer(pd_prefill_t *p, pf_task_t *t, uint32_t layer, uint32_t b0, uint32_t b1)
{
    pf_egress_t *eg = pf_egress_get(p, t->kv_endpoint);
    if (eg == NULL)
        return PD_EIO;
    pd_kv_t *kv = p->eng->kv;
    size_t lb = pd_kv_layer_bytes(kv);
    uint32_t nb = b1 - b0;
    uint64_t sums[PD_NET_MAX_FRAMES];
    if (nb + 1 > PD_NET_MAX_FRAMES)
        return PD_ERANGE;
    for (uint32_t i = 0; i < nb; i++)
        sums[i] = XXH3_64bits(pd_kv_block_layer(kv, t->seq.blocks[b0 + i], layer), lb);
    Pd__KvLayer k = PD__KV_LAYER__INIT;
    k.has_request_id = k.has_epoch = k.has_layer = k.has_n_layers = true;
    k.has_first_block = k.has_n_blocks = k.has_n_tokens = k.has_layer_bytes = true;
    k.has_model_identity = k.has_block_size = true;
    k.request_id = t->req;
    k.epoch = t->epoch;
    k.layer = layer;
    k.n_layers = pd_kv_shape(kv)->n_layers;
    k.first_block = b0;
    k.n_blocks = nb;
    k.n_tokens = t->n_tokens;
    k.layer_bytes = lb;
    k.n_checksums = nb;
    k.checksums = sums;
    k.prefill_worker_id = p->id;
    k.model_identity = p->eng->identity;
    k.block_size = pd_kv_shape(kv)->block_size;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_KV_LAYER;
    m.kv_layer = &k;
    pd_err_t err = { 0 };
    int rc = pd_net_send(eg->sock, NULL, 0, &m, true, &err);
    if (rc)
        return rc; /* nothing of it went out */
    t->streaming = true;
    for (uint32_t i = 0; i < nb; i++) {
        zmq_msg_t f;
        atomic_fetch_add(&t->frames_out, 1);
        if (zmq_msg_init_data(&f, pd_kv_block_layer(kv, t->seq.blocks[b0 + i], layer), lb,
                              pf_frame_done, t) != 0) {
            atomic_fetch_sub(&t->frames_out, 1);
            pf_egress_reset(p, t->kv_endpoint); /* drops the half-sent message */
            return PD_ENOMEM;
        }
        if (zmq_msg_send(&f, eg->sock, ZMQ_DONTWAIT | (i + 1 < nb ? ZMQ_SNDMORE : 0)) < 0) {
            zmq_msg_close(&f);
            pf_egress_reset(p, t->kv_endpoint);
            return PD_EIO;
        }
    }
    p->c.kv_sent_bytes += (uint64_t)nb * lb;
    return 0;
}

/* PD_TEST_LAYER_DELAY_MS: the compute thread waits after each layer it
 * streamed (a slow pass, so that a test can cut a stream midway). */
static void test_delay(const pd_prefill_t *p)
{
    struct timespec ts = { p->layer_delay_ms / 1000, (long)(p->layer_delay_ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

void pf_stream_layer(pd_prefill_t *p, uint32_t layer)
{
    pf_step_t *ps = &p->step;
    bool sent = false;
    for (uint32_t s = 0; s < ps->n; s++) {
        pf_task_t *t = ps->picked[s];
        if (!ps->live[s] || ps->upto[s] <= t->streamed_blocks)
            continue;
        uint64_t t0 = pd_now_us();
        int rc = send_layer(p, t, layer, t->streamed_blocks, ps->upto[s]);
        t->stream_us += pd_now_us() - t0;
        if (rc != 0) {
            ps->live[s] = false;
            if (layer == 0 && !t->streaming) {
                /* Nothing of it went out (the socket is still connecting,
                 * or full): a later pass, or the whole transfer, sends it. */
                PD_DEBUG("event=kv_stream_deferred req=%llu epoch=%u rc=%s",
                         (unsigned long long)t->req, t->epoch, pd_err_name(rc));
                continue;
            }
            PD_WARN("event=kv_layer_send_failed req=%llu epoch=%u layer=%u rc=%s: shipping "
                    "whole", (unsigned long long)t->req, t->epoch, layer, pd_err_name(rc));
            t->stream_broken = true;
            continue;
        }
        sent = true;
        PD_DEBUG("event=kv_layer_sent req=%llu epoch=%u layer=%u blocks=%u..%u",
                 (unsigned long long)t->req, t->epoch, layer, t->streamed_blocks, ps->upto[s]);
    }
    if (sent && p->layer_delay_ms)
        test_delay(p);
}

int pf_stream_commit(pd_prefill_t *p, pf_task_t *t)
{
    pf_egress_t *eg = pf_egress_get(p, t->kv_endpoint);
    if (eg == NULL)
        return PD_EIO;
    pd_kv_t *kv = p->eng->kv;
    if (t->streamed_blocks != t->seq.n_blocks)
        return PD_EINVAL; /* not every block went out */
    Pd__KvTransfer k = PD__KV_TRANSFER__INIT;
    k.has_request_id = k.has_epoch = k.has_n_blocks = k.has_n_tokens = k.has_block_bytes = true;
    k.has_first_token = k.has_model_identity = k.has_block_size = k.has_streamed = true;
    k.request_id = t->req;
    k.epoch = t->epoch;
    k.n_blocks = t->seq.n_blocks;
    k.n_tokens = t->n_tokens;
    k.block_bytes = p->eng->block_bytes;
    k.first_token = t->first_token;
    k.prefill_worker_id = p->id;
    k.model_identity = p->eng->identity;
    k.block_size = pd_kv_shape(kv)->block_size;
    k.streamed = true;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_KV_TRANSFER;
    m.kv_transfer = &k;
    pd_err_t err = { 0 };
    int rc = pd_net_send(eg->sock, NULL, 0, &m, false, &err);
    if (rc == 0)
        PD_DEBUG("event=kv_stream_committed req=%llu epoch=%u blocks=%u",
                 (unsigned long long)t->req, t->epoch, t->seq.n_blocks);
    return rc;
}
