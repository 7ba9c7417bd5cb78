/* kvevents.c -- see kvevents.h. */
#include "runtime/kvevents.h"

#include <stdlib.h>

#include "base/log.h"
#include "proto/codec.h"

#define PD_KVEV_OVERHEAD_BYTES 64 /* envelope, seq, snapshot flag, array headers */

struct pd_kvev {
    uint32_t max_per_msg;
    uint64_t seq;               /* last sent */
    bool want_snapshot;
    uint64_t n_snapshots;
    uint64_t *hashes;           /* (max_per_msg) one message's hashes */
    protobuf_c_boolean *removed; /* (max_per_msg) */
    pd_kv_event_t *ev;          /* (max_per_msg) events taken from the pool */
    uint64_t *all;              /* (cap_all) a snapshot's hashes */
    uint32_t cap_all;
};

uint32_t pd_kvev_per_msg(uint64_t max_msg_bytes)
{
    uint64_t n = max_msg_bytes > PD_KVEV_OVERHEAD_BYTES ? (max_msg_bytes - PD_KVEV_OVERHEAD_BYTES) / 9
                                                        : 1;
    return n > PD_KV_EVENTS_MAX ? PD_KV_EVENTS_MAX : n < 1 ? 1 : (uint32_t)n;
}

pd_kvev_t *pd_kvev_new(uint32_t max_per_msg, pd_err_t *err)
{
    if (max_per_msg < 1 || max_per_msg > PD_KV_EVENTS_MAX) {
        pd_err_set(err, PD_EINVAL, "kv events: %u per message, not in [1, %d]", max_per_msg,
                   PD_KV_EVENTS_MAX);
        return NULL;
    }
    pd_kvev_t *e = calloc(1, sizeof *e);
    if (e == NULL)
        goto nomem;
    e->max_per_msg = max_per_msg;
    e->hashes = malloc(max_per_msg * sizeof *e->hashes);
    e->removed = malloc(max_per_msg * sizeof *e->removed);
    e->ev = malloc(max_per_msg * sizeof *e->ev);
    if (!e->hashes || !e->removed || !e->ev)
        goto nomem;
    return e;
nomem:
    pd_kvev_free(e);
    pd_err_set(err, PD_ENOMEM, "kv events: out of memory");
    return NULL;
}

void pd_kvev_free(pd_kvev_t *e)
{
    if (e == NULL)
        return;
    free(e->hashes);
    free(e->removed);
    free(e->ev);
    free(e->all);
    free(e);
}

void pd_kvev_resync(pd_kvev_t *e) { e->want_snapshot = true; }
uint64_t pd_kvev_last_seq(const pd_kvev_t *e) { return e->seq; }
uint64_t pd_kvev_snapshots(const pd_kvev_t *e) { return e->n_snapshots; }

static void send_one(pd_kvev_t *e, bool snapshot, uint32_t n, pd_kvev_send_fn send, void *ctx)
{
    pd_kv_events_t ke = { ++e->seq, snapshot, n, e->hashes, e->removed };
    Pd__KvEvents m;
    pd_codec_kv_events_to_pb(&ke, &m);
    Pd__Msg env = PD__MSG__INIT;
    env.body_case = PD__MSG__BODY_KV_EVENTS;
    env.kv_events = &m;
    send(ctx, &env);
}

/* Every cached hash, in messages of max_per_msg: the first a snapshot.
 * Returns the messages sent. */
static uint32_t send_snapshot(pd_kvev_t *e, pd_kv_t *kv, pd_kvev_send_fn send, void *ctx)
{
    uint32_t n = pd_kv_prefix_hashes(kv, e->all, e->cap_all);
    if (n > e->cap_all) {
        uint64_t *p = realloc(e->all, (size_t)n * sizeof *p);
        if (p == NULL) {
            /* Stay asked: the next flush tries again. */
            PD_WARN("event=kv_snapshot_deferred hashes=%u reason=\"out of memory\"", n);
            return 0;
        }
        e->all = p;
        e->cap_all = n;
        n = pd_kv_prefix_hashes(kv, e->all, e->cap_all);
    }
    e->want_snapshot = false;
    uint32_t sent = 0, off = 0;
    do {
        uint32_t k = n - off < e->max_per_msg ? n - off : e->max_per_msg;
        for (uint32_t i = 0; i < k; i++) {
            e->hashes[i] = e->all[off + i];
            e->removed[i] = 0;
        }
        send_one(e, sent == 0, k, send, ctx);
        off += k;
        sent++;
    } while (off < n);
    e->n_snapshots++;
    PD_DEBUG("event=kv_snapshot_sent hashes=%u messages=%u seq=%llu", n, sent,
             (unsigned long long)e->seq);
    return sent;
}

uint32_t pd_kvev_flush(pd_kvev_t *e, pd_kv_t *kv, pd_kvev_send_fn send, void *ctx)
{
    if (!pd_kv_prefix_on(kv))
        return 0;
    uint32_t sent = 0;
    for (;;) {
        bool lost = false;
        uint32_t n = pd_kv_prefix_take_events(kv, e->ev, e->max_per_msg, &lost);
        if (lost)
            e->want_snapshot = true;
        if (e->want_snapshot) {
            /* The snapshot is the pool as it is now: queued events are in it. */
            while (pd_kv_prefix_take_events(kv, e->ev, e->max_per_msg, &lost) > 0)
                ;
            return sent + send_snapshot(e, kv, send, ctx);
        }
        if (n == 0)
            return sent;
        for (uint32_t i = 0; i < n; i++) {
            e->hashes[i] = e->ev[i].hash;
            e->removed[i] = e->ev[i].kind == PD_KV_EV_REMOVED;
        }
        send_one(e, false, n, send, ctx);
        sent++;
    }
}
