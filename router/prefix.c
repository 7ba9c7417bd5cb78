/* prefix.c -- the router's side of prefix caching: the index of what each
 * prefill (or colocated) worker caches (kvindex.h), kept from its KvEvents,
 * and the choice of a prefill worker by router.routing
 * (docs/config.md, docs/protocol.md "Prefix cache"):
 *
 *   kv_aware      cost(w) = queued(w) + prompt - cached(w), the lowest wins
 *                 (ties: the lower queued, then the fewer cached blocks, so
 *                 new prefixes spread over idle workers; then the lower
 *                 slot), where
 *                 queued(w) is the uncached prompt tokens the router has
 *                 sent w and not yet seen answered, and cached(w) the
 *                 tokens of the prompt's leading full blocks the index says
 *                 w holds (at most (prompt - 1) / B blocks, as the worker
 *                 reuses them). A cached token saves its prefill, a queued
 *                 one delays ours: both cost the same.
 *   least_loaded  the lowest queued(w).
 *   round_robin   the next eligible worker after the last one picked.
 */
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "engine/kvcache.h"
#include "proto/codec.h"
#include "router.h"

int rt_prefix_init(rt_t *rt, pd_err_t *err)
{
    rt->kvi = rt_kvi_new();
    if (rt->kvi == NULL)
        return pd_err_set(err, PD_ENOMEM, "prefix index");
    rt->kv_root = pd_kv_hash_root(rt->model->identity, rt->cfg.kv.block_size);
    rt->chain = malloc(((size_t)rt->max_seq_len / rt->cfg.kv.block_size + 1) * sizeof *rt->chain);
    if (rt->chain == NULL)
        return pd_err_set(err, PD_ENOMEM, "prefix chain buffer");
    return 0;
}

void rt_prefix_destroy(rt_t *rt)
{
    rt_kvi_free(rt->kvi);
    rt->kvi = NULL;
    free(rt->chain);
    rt->chain = NULL;
}

static void send_resync(rt_t *rt, int wi, uint64_t last_seq)
{
    rt_worker_t *w = &rt->workers[wi];
    uint64_t now = pd_net_now_ms();
    /* Once per heartbeat interval at most: the snapshot asked for is on its way. */
    if (w->kv_resync_ms != 0 && now - w->kv_resync_ms < rt->cfg.router.heartbeat_ms)
        return;
    w->kv_resync_ms = now;
    w->kv_resyncs++;
    Pd__KvResync k = PD__KV_RESYNC__INIT;
    k.has_last_seq = true;
    k.last_seq = last_seq;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_KV_RESYNC;
    m.kv_resync = &k;
    PD_DEBUG("event=kv_resync worker=%s last_seq=%llu", w->id, (unsigned long long)last_seq);
    pd_net_send(rt->back, w->zid, w->zid_len, &m, false, NULL);
}

void rt_prefix_on_register(rt_t *rt, int wi, const Pd__Register *g)
{
    rt_worker_t *w = &rt->workers[wi];
    w->prefix_caching = g->has_prefix_caching && g->prefix_caching &&
                        g->role != PD__ROLE__ROLE_DECODE;
    if (!w->prefix_caching)
        return;
    rt_kvi_reset_worker(rt->kvi, wi, g->total_blocks);
    send_resync(rt, wi, 0);
}

void rt_prefix_on_drop(rt_t *rt, int wi) { rt_kvi_drop_worker(rt->kvi, wi); }

void rt_prefix_on_events(rt_t *rt, int wi, const Pd__KvEvents *m)
{
    rt_worker_t *w = &rt->workers[wi];
    pd_kv_events_t e;
    pd_err_t err = { 0 };
    if (!w->prefix_caching) {
        PD_WARN("event=bad_kv_events worker=%s msg=\"prefix caching was not announced\"", w->id);
        return;
    }
    if (pd_codec_kv_events_from_pb(m, &e, &err) != 0) {
        PD_WARN("event=bad_kv_events worker=%s msg=\"%s\"", w->id, err.msg);
        send_resync(rt, wi, 0);
        return;
    }
    rt_kvi_result_t r = rt_kvi_begin(rt->kvi, wi, e.seq, e.snapshot);
    for (size_t i = 0; i < e.n && r == RT_KVI_APPLIED; i++)
        r = rt_kvi_event(rt->kvi, wi, e.hashes[i], e.removed[i] != 0);
    if (r == RT_KVI_APPLIED) {
        w->kv_events++;
        return;
    }
    PD_INFO("event=kv_events_gap worker=%s seq=%llu snapshot=%d", w->id,
            (unsigned long long)e.seq, (int)e.snapshot);
    send_resync(rt, wi, e.seq);
}

void rt_prefix_on_heartbeat(rt_t *rt, int wi, const Pd__Heartbeat *h)
{
    rt_worker_t *w = &rt->workers[wi];
    if (!w->prefix_caching || !h->has_kv_events_seq)
        return;
    rt_kvi_result_t r = rt_kvi_check_seq(rt->kvi, wi, h->kv_events_seq);
    if (r == RT_KVI_GAP)
        PD_INFO("event=kv_events_lost worker=%s last_seq=%llu", w->id,
                (unsigned long long)h->kv_events_seq);
    if (r != RT_KVI_APPLIED)
        send_resync(rt, wi, h->kv_events_seq);
}

int rt_prefix_pick(rt_t *rt, rt_req_t *r, const bool *eligible)
{
    uint32_t n_tok = r->n_prompt + r->n_gen;
    uint32_t bs = rt->cfg.kv.block_size;
    uint32_t cached[RT_KVI_MAX_WORKERS] = { 0 };
    int policy = rt->cfg.router.routing;
    if (policy == PD_ROUTING_KV_AWARE && n_tok > 1) {
        uint32_t max_blocks = (n_tok - 1) / bs;
        uint32_t n = pd_kv_hash_chain(rt->kv_root, bs, r->tokens, n_tok, rt->chain, max_blocks);
        rt_kvi_match(rt->kvi, rt->chain, n, cached);
    }
    int best = -1;
    uint64_t best_cost = 0;
    if (policy == PD_ROUTING_ROUND_ROBIN) {
        for (int k = 1; k <= RT_MAX_WORKERS && best < 0; k++) {
            int i = (rt->rr_last + k) % RT_MAX_WORKERS;
            if (eligible[i])
                best = i;
        }
        if (best >= 0)
            rt->rr_last = best;
    } else {
        for (int i = 0; i < RT_MAX_WORKERS; i++) {
            if (!eligible[i])
                continue;
            uint64_t q = rt->workers[i].prefill_tokens;
            uint64_t cost = q;
            if (policy == PD_ROUTING_KV_AWARE)
                cost += n_tok - (uint64_t)cached[i] * bs;
            /* Ties: the lower queue, then the fewer cached blocks as the
             * index knows them (KvEvents come right after the pass, a
             * heartbeat's count up to a beat later: new prefixes would pile
             * onto one worker while its beat is on the way). */
            const rt_worker_t *b = best >= 0 ? &rt->workers[best] : NULL;
            if (b == NULL || cost < best_cost ||
                (cost == best_cost &&
                 (q < b->prefill_tokens ||
                  (q == b->prefill_tokens &&
                   rt_kvi_worker_hashes(rt->kvi, i) < rt_kvi_worker_hashes(rt->kvi, best))))) {
                best = i;
                best_cost = cost;
            }
        }
    }
    r->prefix_cached = best >= 0 ? cached[best] * bs : 0;
    return best;
}
