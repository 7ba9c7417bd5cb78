/* stream_early.c -- stream messages (KvLayer, and a stream's commit) that
 * reach the decode role before their DecodeTask. The task travels router ->
 * decode worker (its link), the layers router -> prefill worker -> decode
 * worker (its KV socket): the two sockets are read one after the other, so
 * a short prompt's first layer can be read first. Such a message is held,
 * whole, in arrival order (at most DC_MAX_EARLY messages and
 * DC_EARLY_BYTES of frames) and goes through the stream path when the task
 * comes; held past worker.lease_ms / 2 (at least 200 ms) it is refused as
 * an unknown request, as a whole transfer's orphan is (ingress.c). */
#include <stdlib.h>
#include <string.h>

#include "base/fault.h"
#include "base/log.h"
#include "decode_internal.h"

bool dc_early_wanted(const pd_decode_t *d, uint64_t req, uint32_t epoch)
{
    if (req == 0 || dc_was_cancelled(d, req, epoch) || dc_stream_refused(d, req, epoch))
        return false;
    for (size_t i = 0; i < d->n_expects; i++)
        if (d->expects[i].req == req && d->expects[i].epoch >= epoch)
            return false;
    for (size_t i = 0; i < d->n_seqs; i++)
        if (d->seqs[i]->req == req && d->seqs[i]->epoch >= epoch)
            return false;
    return true;
}

bool dc_early_has(const pd_decode_t *d, uint64_t req, uint32_t epoch)
{
    for (uint32_t i = 0; i < d->n_early; i++)
        if (d->early[i].req == req && d->early[i].epoch == epoch)
            return true;
    return false;
}

int dc_early_hold(pd_decode_t *d, uint64_t req, uint32_t epoch, pd_net_in_t *in)
{
    size_t bytes = 0;
    for (int f = 0; f < in->n_frames; f++)
        bytes += zmq_msg_size(&in->frames[f]);
    if (d->n_early == DC_MAX_EARLY || in->n_frames < 2 || in->truncated ||
        bytes > DC_EARLY_BYTES - d->early_bytes)
        return -1;
    zmq_msg_t *fr = pd_malloc((size_t)in->n_frames * sizeof *fr);
    if (fr == NULL)
        return -1;
    for (int f = 0; f < in->n_frames; f++) {
        zmq_msg_init(&fr[f]);
        zmq_msg_move(&fr[f], &in->frames[f]);
    }
    d->early[d->n_early++] = (dc_early_t){ .req = req, .epoch = epoch, .frames = fr,
                                           .n_frames = (uint32_t)in->n_frames, .bytes = bytes,
                                           .t_ms = dc_now_ms(d) };
    d->early_bytes += bytes;
    PD_DEBUG("event=kv_early_held req=%llu epoch=%u held=%u", (unsigned long long)req, epoch,
             d->n_early);
    return 0;
}

/* Takes held message i out of the list (order kept); its frames are the
 * caller's. */
static dc_early_t take(pd_decode_t *d, uint32_t i)
{
    dc_early_t e = d->early[i];
    memmove(&d->early[i], &d->early[i + 1], (d->n_early - i - 1) * sizeof *d->early);
    d->n_early--;
    d->early_bytes -= e.bytes;
    return e;
}

static void forget(dc_early_t *e) { dc_close_frames(e->frames, e->n_frames); }

void dc_early_drop(pd_decode_t *d, uint64_t req, uint32_t epoch, const char *why)
{
    bool acked = false;
    bool cancelled = why != NULL && strcmp(why, "cancelled") == 0;
    for (uint32_t i = 0; i < d->n_early;) {
        if (d->early[i].req != req || (epoch != 0 && d->early[i].epoch != epoch)) {
            i++;
            continue;
        }
        dc_early_t e = take(d, i);
        if (why != NULL && !acked) {
            dc_send_ack(d, zmq_msg_data(&e.frames[0]), zmq_msg_size(&e.frames[0]), e.req,
                        e.epoch, false, why);
            acked = true;
        } else if (!cancelled) {
            d->c.kv_rejected++;
        }
        dc_stream_mark_refused(d, e.req, e.epoch);
        forget(&e);
    }
}

void dc_early_replay(pd_decode_t *d, uint64_t req, uint32_t epoch)
{
    pd_net_in_t *in = NULL;
    for (uint32_t i = 0; i < d->n_early;) {
        if (d->early[i].req != req) {
            i++;
            continue;
        }
        if (d->early[i].epoch < epoch) { /* a newer task replaced its epoch */
            dc_early_t e = take(d, i);
            d->c.kv_rejected++;
            dc_stream_mark_refused(d, e.req, e.epoch);
            forget(&e);
            continue;
        }
        if (d->early[i].epoch != epoch) {
            i++;
            continue;
        }
        if (in == NULL && (in = pd_malloc(sizeof *in)) == NULL) {
            dc_early_drop(d, req, epoch, "out of memory");
            dc_load_failed(d, req, epoch, "out of memory");
            return;
        }
        dc_early_t e = take(d, i);
        for (uint32_t f = 0; f < e.n_frames; f++) {
            zmq_msg_init(&in->frames[f]);
            zmq_msg_move(&in->frames[f], &e.frames[f]);
        }
        in->n_frames = (int)e.n_frames;
        in->truncated = false;
        free(e.frames);
        pd_decode_on_transfer(d, in); /* the task is expected now: never held again */
        pd_net_in_close(in);
    }
    free(in);
}

void dc_early_timers(pd_decode_t *d)
{
    uint64_t now = dc_now_ms(d);
    while (d->n_early > 0 && now - d->early[0].t_ms > dc_hold_ms(d))
        dc_early_drop(d, d->early[0].req, d->early[0].epoch,
                      "unknown request (no decode task for it)");
}

void dc_early_drop_all(pd_decode_t *d)
{
    while (d->n_early > 0) {
        dc_early_t e = take(d, d->n_early - 1);
        forget(&e);
    }
}

int dc_early_check(const pd_decode_t *d, pd_err_t *why)
{
    size_t bytes = 0;
    if (d->n_early > DC_MAX_EARLY)
        return pd_err_set(why, PD_EINVAL, "%u early stream messages", d->n_early);
    for (uint32_t i = 0; i < d->n_early; i++) {
        const dc_early_t *e = &d->early[i];
        if (e->n_frames < 2 || e->frames == NULL)
            return pd_err_set(why, PD_EINVAL, "early message %u: %u frames", i, e->n_frames);
        if (i > 0 && d->early[i - 1].t_ms > e->t_ms)
            return pd_err_set(why, PD_EINVAL, "early message %u: out of arrival order", i);
        bytes += e->bytes;
    }
    if (bytes != d->early_bytes || bytes > DC_EARLY_BYTES)
        return pd_err_set(why, PD_EINVAL, "early messages: %zu bytes, counted %zu", bytes,
                          d->early_bytes);
    return 0;
}
