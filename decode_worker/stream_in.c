/* stream_in.c -- the decode role's side of kv.transfer: layer
 * (docs/protocol.md, "Layer-wise KV streaming"). A stream is taken only
 * for a request this worker expects (its DecodeTask came first); its first
 * frame reserves the request's blocks, each KvLayer's frames are checked
 * (size, checksum, the layer's next block) and copied straight into them,
 * and the commit (KvTransfer, streamed) hands the sequence to the batcher
 * once every layer has every block. A bad frame from the stream's own peer
 * ends the stream (freed, counted, kv.load_failure applies); a foreign one
 * is refused alone. Every refusal is counted in kv_rejected. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "base/fault.h"
#include "base/log.h"
#include "decode_internal.h"

/* ====== The table ====== */

static int stream_index(const pd_decode_t *d, uint64_t req, uint32_t epoch)
{
    for (uint32_t i = 0; i < d->n_streams; i++)
        if (d->streams[i].req == req && d->streams[i].epoch == epoch)
            return (int)i;
    return -1;
}

static uint32_t n_layers(const pd_decode_t *d) { return pd_kv_shape(d->eng->kv)->n_layers; }

static bool complete(const pd_decode_t *d, const dc_stream_t *s)
{
    return s->layers_done == n_layers(d);
}

/* Frees stream i (its blocks, when not handed over) and forgets it. */
static void stream_remove(pd_decode_t *d, uint32_t i)
{
    dc_stream_t *s = &d->streams[i];
    pd_kv_seq_release(d->eng->kv, &s->seq);
    free(s->next);
    d->streams[i] = d->streams[--d->n_streams];
}

void dc_stream_mark_refused(pd_decode_t *d, uint64_t req, uint32_t epoch)
{
    d->refused[d->refused_next].req = req;
    d->refused[d->refused_next].epoch = epoch;
    d->refused_next = (d->refused_next + 1) % DC_REFUSED;
}

bool dc_stream_refused(const pd_decode_t *d, uint64_t req, uint32_t epoch)
{
    for (uint32_t i = 0; i < DC_REFUSED; i++)
        if (d->refused[i].req == req && req != 0 && d->refused[i].epoch == epoch)
            return true;
    return false;
}

/* Stream i ends unfinished (why): refused to its peer, freed, counted; the
 * request's KV will not come, so kv.load_failure applies. */
static void stream_break(pd_decode_t *d, uint32_t i, const char *why)
{
    dc_stream_t *s = &d->streams[i];
    uint64_t req = s->req;
    uint32_t epoch = s->epoch;
    dc_send_ack(d, s->sender, s->sender_len, req, epoch, false, why);
    dc_stream_mark_refused(d, req, epoch);
    d->c.kv_streams_dropped++;
    PD_WARN("event=kv_stream_dropped req=%llu epoch=%u layers_done=%u why=\"%s\"",
            (unsigned long long)req, epoch, s->layers_done, why);
    stream_remove(d, i);
    dc_load_failed(d, req, epoch, why);
}

void dc_stream_drop(pd_decode_t *d, uint64_t req, uint32_t epoch, uint32_t below_epoch,
                    const char *why)
{
    for (uint32_t i = 0; i < d->n_streams;) {
        dc_stream_t *s = &d->streams[i];
        bool match = s->req == req && (epoch == 0 || s->epoch == epoch) &&
                     (below_epoch == 0 || s->epoch < below_epoch);
        if (!match) {
            i++;
            continue;
        }
        if (!complete(d, s)) {
            d->c.kv_streams_dropped++;
            PD_INFO("event=kv_stream_dropped req=%llu epoch=%u layers_done=%u why=\"%s\"",
                    (unsigned long long)s->req, s->epoch, s->layers_done, why);
        }
        dc_stream_mark_refused(d, s->req, s->epoch); /* its later frames are refused */
        stream_remove(d, i);
    }
}

void dc_stream_timers(pd_decode_t *d)
{
    uint64_t now = dc_now_ms(d);
    uint64_t idle_ms = dc_hold_ms(d);
    for (uint32_t i = 0; i < d->n_streams;) {
        if (now - d->streams[i].t_ms > idle_ms) {
            stream_break(d, i, "stream idle (its prefill worker stopped sending)");
            continue;
        }
        i++;
    }
}

void dc_stream_drop_all(pd_decode_t *d)
{
    while (d->n_streams > 0)
        stream_remove(d, d->n_streams - 1);
}

int dc_stream_check(const pd_decode_t *d, pd_err_t *why)
{
    if (d->n_streams > DC_MAX_STREAMS)
        return pd_err_set(why, PD_EINVAL, "%u streams", d->n_streams);
    for (uint32_t i = 0; i < d->n_streams; i++) {
        const dc_stream_t *s = &d->streams[i];
        uint32_t done = 0;
        if (s->seq.n_blocks != s->n_blocks)
            return pd_err_set(why, PD_EINVAL, "stream %u: %u blocks reserved for %u", i,
                              s->seq.n_blocks, s->n_blocks);
        for (uint32_t l = 0; l < n_layers(d); l++) {
            if (s->next[l] > s->n_blocks)
                return pd_err_set(why, PD_EINVAL, "stream %u layer %u: %u of %u blocks", i, l,
                                  s->next[l], s->n_blocks);
            done += s->next[l] == s->n_blocks;
        }
        if (done != s->layers_done)
            return pd_err_set(why, PD_EINVAL, "stream %u: %u layers done, counted %u", i, done,
                              s->layers_done);
    }
    return 0;
}

/* ====== Checks ====== */

/* Checks a KvLayer on its own (ids, model, shape, range, frame sizes): why
 * it is bad, or NULL. */
static const char *check_layer(const pd_decode_t *d, const Pd__KvLayer *k, const pd_net_in_t *in,
                               char *why, size_t cap)
{
    uint32_t nf = (uint32_t)(in->n_frames - 2);
    uint32_t bs = pd_kv_shape(d->eng->kv)->block_size;
    size_t lb = pd_kv_layer_bytes(d->eng->kv);
    if (in->truncated)
        return "too many frames";
    if (!k->has_request_id || !k->has_epoch || k->request_id == 0 || k->epoch == 0)
        return "request_id and epoch are required";
    if (!k->has_model_identity || k->model_identity != d->eng->identity)
        return "model identity differs";
    if (!k->has_block_size || k->block_size != bs || !k->has_n_layers ||
        k->n_layers != n_layers(d) || !k->has_layer_bytes || k->layer_bytes != lb) {
        snprintf(why, cap, "layer layout differs (block_size %u, n_layers %u, layer_bytes %llu)",
                 k->block_size, k->n_layers, (unsigned long long)k->layer_bytes);
        return why;
    }
    if (!k->has_layer || k->layer >= n_layers(d)) {
        snprintf(why, cap, "layer %u outside 0..%u", k->layer, n_layers(d) - 1);
        return why;
    }
    if (!k->has_n_tokens || k->n_tokens == 0 || k->n_tokens >= d->eng->max_seq_len) {
        snprintf(why, cap, "n_tokens %u outside 1..%u", k->n_tokens, d->eng->max_seq_len - 1);
        return why;
    }
    uint32_t total = (k->n_tokens + bs - 1) / bs;
    if (!k->has_n_blocks || k->n_blocks != nf || nf == 0 || !k->has_first_block ||
        k->first_block >= total || nf > total - k->first_block) {
        snprintf(why, cap, "blocks %u+%u (%u frames) outside the request's %u", k->first_block,
                 k->n_blocks, nf, total);
        return why;
    }
    if (k->n_checksums != nf)
        return "one checksum per frame is required";
    for (uint32_t i = 0; i < nf; i++)
        if (zmq_msg_size((zmq_msg_t *)&in->frames[2 + i]) != lb) {
            snprintf(why, cap, "layer %u frame %u: %zu bytes, expected %zu", k->layer, i,
                     zmq_msg_size((zmq_msg_t *)&in->frames[2 + i]), lb);
            return why;
        }
    return NULL;
}

static bool same_sender(const dc_stream_t *s, const uint8_t *from, size_t from_len)
{
    return s->sender_len == from_len && memcmp(s->sender, from, from_len) == 0;
}

/* A new stream for k's expected request from `from`: its blocks reserved.
 * Returns its index, or -1 with why (nothing made). */
static int stream_new(pd_decode_t *d, const Pd__KvLayer *k, const uint8_t *from, size_t from_len,
                      const char **why)
{
    if (dc_expect_index(d, k->request_id, k->epoch) < 0) {
        *why = "unknown request or epoch (no decode task for it)";
        return -1;
    }
    if (k->first_block != 0) {
        *why = "out of order: a stream starts at block 0";
        return -1;
    }
    if (d->n_streams == DC_MAX_STREAMS) {
        *why = "too many streams";
        return -1;
    }
    dc_stream_t *s = &d->streams[d->n_streams];
    memset(s, 0, sizeof *s);
    s->next = pd_calloc(n_layers(d), sizeof *s->next);
    if (s->next == NULL) {
        *why = "out of memory";
        return -1;
    }
    if (pd_kv_seq_reserve(d->eng->kv, &s->seq, k->n_tokens) != 0) {
        free(s->next);
        *why = "no free KV blocks for the stream";
        return -1;
    }
    s->req = k->request_id;
    s->epoch = k->epoch;
    memcpy(s->sender, from, from_len);
    s->sender_len = from_len;
    s->n_tokens = k->n_tokens;
    s->n_blocks = s->seq.n_blocks;
    s->t_ms = dc_now_ms(d);
    return (int)d->n_streams++;
}

/* ====== Layers ====== */

/* A frame that starts no stream and belongs to none: refused alone. A
 * request we expect cannot get this KV any more, so kv.load_failure applies
 * to it (a no-op for a forged id). */
static void refuse_new(pd_decode_t *d, const uint8_t *from, size_t from_len, uint64_t req,
                       uint32_t epoch, const char *why)
{
    dc_send_ack(d, from, from_len, req, epoch, false, why);
    dc_stream_mark_refused(d, req, epoch);
    dc_load_failed(d, req, epoch, why);
}

/* Copies k's frames into stream i's blocks after checking their place in
 * the layer and their checksums; a bad one ends the stream. */
static void take_layer(pd_decode_t *d, uint32_t i, const Pd__KvLayer *k, pd_net_in_t *in)
{
    dc_stream_t *s = &d->streams[i];
    char why[160];
    uint32_t l = k->layer, nf = k->n_blocks;
    size_t lb = pd_kv_layer_bytes(d->eng->kv);
    if (k->n_tokens != s->n_tokens) {
        snprintf(why, sizeof why, "n_tokens %u, the stream has %u", k->n_tokens, s->n_tokens);
        stream_break(d, i, why);
        return;
    }
    if (k->first_block != s->next[l]) {
        snprintf(why, sizeof why, "%s: layer %u blocks from %u, expected %u",
                 k->first_block < s->next[l] ? "duplicate" : "out of order", l, k->first_block,
                 s->next[l]);
        stream_break(d, i, why);
        return;
    }
    for (uint32_t f = 0; f < nf; f++)
        if (XXH3_64bits(zmq_msg_data(&in->frames[2 + f]), lb) != k->checksums[f]) {
            snprintf(why, sizeof why, "layer %u block %u: checksum mismatch", l,
                     k->first_block + f);
            stream_break(d, i, why);
            return;
        }
    for (uint32_t f = 0; f < nf; f++)
        memcpy(pd_kv_block_layer(d->eng->kv, s->seq.blocks[k->first_block + f], l),
               zmq_msg_data(&in->frames[2 + f]), lb);
    s->next[l] += nf;
    s->layers_done += s->next[l] == s->n_blocks;
    s->t_ms = dc_now_ms(d);
    d->c.kv_layers++;
    d->c.kv_recv_bytes += (uint64_t)nf * lb;
}

void dc_on_layer(pd_decode_t *d, const Pd__KvLayer *k, pd_net_in_t *in)
{
    const uint8_t *from = zmq_msg_data(&in->frames[0]);
    size_t from_len = zmq_msg_size(&in->frames[0]);
    uint64_t req = k->request_id;
    uint32_t epoch = k->epoch;
    int i = stream_index(d, req, epoch);
    if (i < 0 && dc_stream_refused(d, req, epoch)) {
        /* The rest of a stream refused already: refused again, quietly
         * (its peer has its KvAck). The rest of a cancelled one (its
         * request ended, e.g. at its first token, while its layers were on
         * the way) is no refusal: not counted. */
        if (!dc_was_cancelled(d, req, epoch))
            d->c.kv_rejected++;
        return;
    }
    if (i >= 0 && !same_sender(&d->streams[i], from, from_len)) {
        dc_send_ack(d, from, from_len, req, epoch, false, "frame from another peer than the "
                                                          "stream's");
        return;
    }
    char buf[160];
    const char *bad = check_layer(d, k, in, buf, sizeof buf);
    if (bad && i >= 0) {
        stream_break(d, (uint32_t)i, bad);
        return;
    }
    if (i < 0 && !bad && dc_was_cancelled(d, req, epoch)) {
        dc_send_ack(d, from, from_len, req, epoch, false, "cancelled");
        dc_stream_mark_refused(d, req, epoch);
        return;
    }
    if (i < 0 && !bad && dc_expect_index(d, req, epoch) < 0 && dc_early_wanted(d, req, epoch)) {
        /* Its DecodeTask may still be on its way: held until it comes. */
        if (dc_early_hold(d, req, epoch, in) == 0)
            return;
        dc_early_drop(d, req, epoch, NULL);
        bad = "unknown request (no decode task for it, and too many stream messages held)";
    }
    if (i < 0 && !bad)
        i = stream_new(d, k, from, from_len, &bad);
    if (i < 0) {
        refuse_new(d, from, from_len, req, epoch, bad);
        return;
    }
    take_layer(d, (uint32_t)i, k, in);
}

/* ====== The commit ====== */

/* Checks a commit's header against this worker: why it is bad, or NULL. */
static const char *check_commit(const pd_decode_t *d, const Pd__KvTransfer *k,
                                const pd_net_in_t *in)
{
    uint32_t bs = pd_kv_shape(d->eng->kv)->block_size;
    if (in->n_frames != 2 || in->truncated)
        return "a stream's commit carries no frames";
    if (!k->has_request_id || !k->has_epoch || !k->has_n_tokens || !k->has_n_blocks)
        return "request_id, epoch, n_tokens and n_blocks are required";
    if (!k->has_model_identity || k->model_identity != d->eng->identity)
        return "model identity differs";
    if (!k->has_block_size || k->block_size != bs || k->block_bytes != d->eng->block_bytes)
        return "block layout differs (block_size / block_bytes)";
    if (!k->has_first_token || k->first_token < 0 || (uint32_t)k->first_token >= d->eng->vocab)
        return "first_token missing or outside the vocabulary";
    return NULL;
}

/* Why complete stream s cannot be committed by k, or NULL. */
static const char *check_against(const pd_decode_t *d, const dc_stream_t *s,
                                 const Pd__KvTransfer *k, char *why, size_t cap)
{
    if (k->n_tokens != s->n_tokens || k->n_blocks != s->n_blocks) {
        snprintf(why, cap, "commit of %u tokens / %u blocks, the stream has %u / %u",
                 k->n_tokens, k->n_blocks, s->n_tokens, s->n_blocks);
        return why;
    }
    for (uint32_t l = 0; l < n_layers(d); l++)
        if (s->next[l] != s->n_blocks) {
            snprintf(why, cap, "stream incomplete: layer %u has %u of %u blocks", l, s->next[l],
                     s->n_blocks);
            return why;
        }
    return NULL;
}

void dc_on_commit(pd_decode_t *d, const Pd__KvTransfer *k, pd_net_in_t *in)
{
    const uint8_t *from = zmq_msg_data(&in->frames[0]);
    size_t from_len = zmq_msg_size(&in->frames[0]);
    uint64_t req = k->request_id;
    uint32_t epoch = k->epoch;
    int i = stream_index(d, req, epoch);
    if (i >= 0 && !same_sender(&d->streams[i], from, from_len)) {
        dc_send_ack(d, from, from_len, req, epoch, false, "commit from another peer than the "
                                                          "stream's");
        return;
    }
    char buf[160];
    const char *bad = check_commit(d, k, in);
    if (bad == NULL && i < 0 && dc_was_cancelled(d, req, epoch)) {
        dc_send_ack(d, from, from_len, req, epoch, false, "cancelled"); /* not counted */
        return;
    }
    if (bad == NULL && i < 0 && dc_early_has(d, req, epoch)) { /* its layers are held */
        if (dc_early_hold(d, req, epoch, in) == 0)
            return;
        dc_early_drop(d, req, epoch, NULL);
        bad = "no stream for this commit (too many stream messages held)";
    }
    if (bad == NULL && i < 0)
        bad = dc_stream_refused(d, req, epoch) ? "stream refused" : "no stream for this commit";
    if (bad == NULL)
        bad = check_against(d, &d->streams[i], k, buf, sizeof buf);
    if (bad) {
        if (i >= 0)
            stream_break(d, (uint32_t)i, bad);
        else
            refuse_new(d, from, from_len, req, epoch, bad);
        return;
    }
    int x = dc_expect_index(d, req, epoch);
    if (x < 0) {
        stream_break(d, (uint32_t)i, "unknown request");
        return;
    }
    pd_kv_seq_t seq = d->streams[i].seq;
    memset(&d->streams[i].seq, 0, sizeof seq);
    int rc = dc_deliver(d, (size_t)x, k->n_tokens, k->first_token, NULL, 0, &seq);
    if (rc == PD_EINVAL) {
        d->streams[i].seq = seq; /* not taken */
        stream_break(d, (uint32_t)i, "n_tokens differs from the decode task");
        return;
    }
    /* Taken (the blocks are the sequence's), or refused by the batcher
     * (which freed them and told the router). */
    stream_remove(d, (uint32_t)i);
    dc_send_ack(d, from, from_len, req, epoch, rc == 0, rc == 0 ? NULL : "out of memory");
}
