/* workers.c -- the router's workers: the registry (register, heartbeats,
 * drain, removal), what workers report about requests (preempted, errors)
 * and the cluster status that pd-cli and /metrics read. Scheduling is
 * sched.c's. See router.h. */
#include <stdio.h>
#include <string.h>

#include "base/log.h"
#include "runtime/addr.h"
#include "router.h"

/* ====== Lookups and sends ====== */

rt_worker_t *rt_worker_of(rt_t *rt, int idx, uint32_t gen)
{
    if (idx < 0 || idx >= RT_MAX_WORKERS)
        return NULL;
    rt_worker_t *w = &rt->workers[idx];
    return w->used && w->gen == gen ? w : NULL;
}

int rt_worker_by_zid(rt_t *rt, const void *zid, size_t len)
{
    for (int i = 0; i < RT_MAX_WORKERS; i++) {
        rt_worker_t *w = &rt->workers[i];
        if (w->used && w->zid_len == len && memcmp(w->zid, zid, len) == 0)
            return i;
    }
    return -1;
}

int rt_send_worker(rt_t *rt, rt_worker_t *w, const Pd__Msg *m)
{
    pd_err_t err = { 0 };
    int rc = pd_net_send(rt->back, w->zid, w->zid_len, m, false, &err);
    if (rc)
        PD_WARN("event=send_failed worker=%s type=%s msg=\"%s\"", w->id,
                pd_net_body_name(m->body_case), err.msg);
    return rc;
}

void rt_send_cancel(rt_t *rt, rt_worker_t *w, uint64_t id, uint32_t epoch)
{
    if (w == NULL)
        return;
    Pd__Cancel c = PD__CANCEL__INIT;
    c.has_request_id = c.has_epoch = true;
    c.request_id = id;
    c.epoch = epoch;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_CANCEL;
    m.cancel = &c;
    rt_send_worker(rt, w, &m);
}

bool rt_have_workers(rt_t *rt)
{
    bool p = false, d = false, b = false;
    for (int i = 0; i < RT_MAX_WORKERS; i++) {
        rt_worker_t *w = &rt->workers[i];
        if (!w->used || w->state != RT_W_READY)
            continue;
        p |= w->role == PD__ROLE__ROLE_PREFILL;
        d |= w->role == PD__ROLE__ROLE_DECODE;
        b |= w->role == PD__ROLE__ROLE_BOTH;
    }
    return (p && d) || b;
}


/* ====== KV peers ====== */

/* A worker whose KV endpoint prefill workers ship to. */
static bool is_kv_peer(const rt_worker_t *w)
{
    return w->used && w->role != PD__ROLE__ROLE_PREFILL && w->kv_endpoint[0] != '\0';
}

/* KvPeers to prefill worker wi: the KV endpoint of every decode-capable
 * worker, so that it connects to them before any task names one. */
static void send_peers(rt_t *rt, int wi)
{
    char *eps[RT_MAX_WORKERS];
    size_t n = 0;
    for (int i = 0; i < RT_MAX_WORKERS; i++)
        if (is_kv_peer(&rt->workers[i]))
            eps[n++] = rt->workers[i].kv_endpoint;
    Pd__KvPeers k = PD__KV_PEERS__INIT;
    k.n_kv_endpoints = n;
    k.kv_endpoints = eps;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_KV_PEERS;
    m.kv_peers = &k;
    rt_send_worker(rt, &rt->workers[wi], &m);
}

/* The set of KV peers changed (one registered, or was removed): every
 * prefill worker gets the new list. */
static void peers_to_all(rt_t *rt)
{
    for (int i = 0; i < RT_MAX_WORKERS; i++)
        if (rt->workers[i].used && rt->workers[i].role == PD__ROLE__ROLE_PREFILL)
            send_peers(rt, i);
}

/* ====== Registry ====== */

bool rt_req_held_by(const rt_t *rt, const rt_req_t *r, int wi)
{
    const rt_worker_t *w = &rt->workers[wi];
    if (!rt_req_on_workers(r))
        return false;
    /* A prefill worker still answers for a request until its KV has
     * reached the decode worker: until the decode worker's first token. */
    bool on_p = r->p_worker == wi && r->p_gen == w->gen &&
                (r->state == RQ_PREFILL || r->state == RQ_HANDOFF);
    bool on_d = r->d_worker == wi && r->d_gen == w->gen;
    return on_p || on_d;
}

void rt_worker_drop(rt_t *rt, int wi, const char *why)
{
    rt_worker_t *w = &rt->workers[wi];
    PD_WARN("event=worker_removed worker=%s why=\"%s\"", w->id, why);
    for (uint32_t i = 0; i < rt->n_slots; i++) {
        rt_req_t *r = &rt->reqs[i];
        if (rt_req_held_by(rt, r, wi))
            rt_req_requeue(rt, r, why, true);
    }
    bool peer = is_kv_peer(w);
    uint32_t gen = w->gen + 1;
    memset(w, 0, sizeof *w);
    w->gen = gen;
    rt_prefix_on_drop(rt, wi);
    if (peer) /* the list sent now no longer holds it */
        peers_to_all(rt);
}

static void reply_register(rt_t *rt, const uint8_t *zid, size_t len, bool ok, const char *why)
{
    Pd__RegisterReply rr = PD__REGISTER_REPLY__INIT;
    rr.has_accepted = rr.has_heartbeat_ms = rr.has_liveness = true;
    rr.accepted = ok;
    rr.reason = (char *)why;
    rr.heartbeat_ms = rt->cfg.router.heartbeat_ms;
    rr.liveness = rt->cfg.router.liveness;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_REGISTER_REPLY;
    m.register_reply = &rr;
    pd_net_send(rt->back, zid, len, &m, false, NULL);
}

void rt_on_register(rt_t *rt, const uint8_t *zid, size_t len, const Pd__Register *g)
{
    char why[256] = "", bad_ep[160];
    const char *id = g->worker_id ? g->worker_id : "";
    pd_worker_limits_t lim;
    pd_err_t lerr = { 0 };
    bool lim_ok = pd_codec_limits_from_pb(g, &lim, &lerr) == 0;
    if (!g->has_protocol_version || g->protocol_version != PD_PROTOCOL_VERSION)
        snprintf(why, sizeof why, "protocol version %u, router speaks %u", g->protocol_version,
                 (unsigned)PD_PROTOCOL_VERSION);
    else if (!g->has_model_identity || g->model_identity != rt->identity)
        snprintf(why, sizeof why, "model identity %016llx (%s), router serves %016llx (%s)",
                 (unsigned long long)g->model_identity, g->model_name ? g->model_name : "?",
                 (unsigned long long)rt->identity, rt->model->name);
    else if (id[0] == '\0' || strlen(id) >= sizeof rt->workers[0].id)
        snprintf(why, sizeof why, "worker_id: must be 1..63 characters");
    else if (!g->has_role || g->role < PD__ROLE__ROLE_PREFILL || g->role > PD__ROLE__ROLE_BOTH)
        snprintf(why, sizeof why, "role: missing or unknown");
    else if (!pd_codec_kv_dtype_known(g->kv_dtype))
        snprintf(why, sizeof why, "kv_dtype: unknown (f32 or f16)"); /* not echoed */
    else if (!lim_ok || lim.block_size != rt->cfg.kv.block_size)
        snprintf(why, sizeof why, "kv.block_size %u, cluster uses %u", g->block_size,
                 rt->cfg.kv.block_size);
    else if (strcmp(lim.kv_dtype, rt->cfg.kv.dtype) != 0)
        snprintf(why, sizeof why, "kv.dtype %s, cluster uses %s", lim.kv_dtype, rt->cfg.kv.dtype);
    else if (g->role != PD__ROLE__ROLE_PREFILL && lim.total_blocks == 0)
        snprintf(why, sizeof why, "total_blocks: a decode worker needs KV blocks");
    else if (g->role == PD__ROLE__ROLE_DECODE &&
             (g->kv_endpoint == NULL || g->kv_endpoint[0] == '\0' ||
              strlen(g->kv_endpoint) >= PD_CFG_STR))
        snprintf(why, sizeof why, "kv_endpoint: a decode worker must announce one");
    else if (g->role != PD__ROLE__ROLE_PREFILL && g->kv_endpoint && g->kv_endpoint[0] &&
             !pd_addr_check_announced(g->kv_endpoint, bad_ep, sizeof bad_ep))
        snprintf(why, sizeof why, "kv_endpoint: %s", bad_ep); /* not echoed: hostile bytes */
    if (why[0]) {
        PD_WARN("event=worker_refused worker=%s reason=\"%s\"", id, why);
        reply_register(rt, zid, len, false, why);
        return;
    }
    /* The same id again (a restart or a reconnect): the old entry's work
     * is gone with it. */
    for (int i = 0; i < RT_MAX_WORKERS; i++)
        if (rt->workers[i].used && strcmp(rt->workers[i].id, id) == 0)
            rt_worker_drop(rt, i, "re-registered");
    int wi = rt_worker_by_zid(rt, zid, len);
    if (wi >= 0)
        rt_worker_drop(rt, wi, "re-registered");
    for (wi = 0; wi < RT_MAX_WORKERS && rt->workers[wi].used; wi++)
        ;
    if (wi == RT_MAX_WORKERS) {
        reply_register(rt, zid, len, false, "router has no room for more workers");
        return;
    }
    rt_worker_t *w = &rt->workers[wi];
    uint32_t gen = w->gen;
    memset(w, 0, sizeof *w);
    w->gen = gen;
    w->used = true;
    memcpy(w->zid, zid, len);
    w->zid_len = len;
    snprintf(w->id, sizeof w->id, "%s", id);
    w->role = g->role;
    pd_net_copy_str(w->kv_endpoint, sizeof w->kv_endpoint, g->kv_endpoint);
    w->block_size = lim.block_size;
    w->total_blocks = lim.total_blocks;
    w->hb_free_blocks = lim.total_blocks;
    w->max_batch_size = lim.max_batch_size;
    w->max_batch_tokens = lim.max_batch_tokens;
    w->last_seen_ms = pd_now_ms();
    PD_INFO("event=worker_registered worker=%s role=%d kv=%s blocks=%u", w->id, (int)w->role,
            w->kv_endpoint[0] ? w->kv_endpoint : "-", w->total_blocks);
    reply_register(rt, zid, len, true, NULL);
    if (is_kv_peer(w))
        peers_to_all(rt);
    else if (w->role == PD__ROLE__ROLE_PREFILL)
        send_peers(rt, wi);
    rt_prefix_on_register(rt, wi, g);
    rt_dispatch(rt);
}

/* Heartbeats every worker each router.heartbeat_ms; drops one that was
 * silent for router.liveness beats or whose connection is gone. */
void rt_workers_check(rt_t *rt, uint64_t now_ms)
{
    if (now_ms - rt->last_hb_ms < rt->cfg.router.heartbeat_ms)
        return;
    rt->last_hb_ms = now_ms;
    Pd__Heartbeat hb = PD__HEARTBEAT__INIT;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_HEARTBEAT;
    m.heartbeat = &hb;
    uint64_t dead_after = (uint64_t)rt->cfg.router.heartbeat_ms * rt->cfg.router.liveness;
    for (int i = 0; i < RT_MAX_WORKERS; i++) {
        rt_worker_t *w = &rt->workers[i];
        if (!w->used)
            continue;
        if (now_ms - w->last_seen_ms > dead_after) {
            rt_worker_drop(rt, i, "missed heartbeats");
            continue;
        }
        pd_err_t err = { 0 };
        if (pd_net_send(rt->back, w->zid, w->zid_len, &m, false, &err) == PD_NET_EGONE)
            rt_worker_drop(rt, i, "disconnected");
    }
}

/* A worker's load and counters (the codec refuses a load that cannot be:
 * more free blocks than it has); counters only when the beat carries them. */
void rt_on_heartbeat(rt_t *rt, rt_worker_t *w, const Pd__Heartbeat *h)
{
    pd_worker_load_t l;
    pd_err_t err = { 0 };
    if (pd_codec_load_from_pb(h, &l, &err) != 0) {
        PD_WARN("event=bad_heartbeat worker=%s msg=\"%s\"", w->id, err.msg);
        return;
    }
    w->hb_queued_tokens = l.queued_prefill_tokens;
    w->hb_running = l.running_seqs;
    w->hb_free_blocks = l.free_blocks;
    w->hb_waiting = l.waiting_seqs;
    if (h->counters)
        w->counters = l.counters;
    if (l.draining && w->state != RT_W_LEAVING)
        rt_worker_set_state(w, RT_W_LEAVING, "worker draining");
}

/* ====== Reports about requests ====== */

void rt_on_preempted(rt_t *rt, int wi, const Pd__Preempted *p)
{
    rt_req_t *r = rt_req_by_id(rt, p->request_id);
    rt_worker_t *w = &rt->workers[wi];
    if (r == NULL || r->epoch != p->epoch || !rt_req_on_workers(r)) {
        PD_DEBUG("event=stale_preempted req=%llu worker=%s", (unsigned long long)p->request_id,
                 w->id);
        return;
    }
    if (!((r->d_worker == wi && r->d_gen == w->gen) || (r->p_worker == wi && r->p_gen == w->gen)))
        return;
    pd_metrics_preempted(rt->metrics);
    rt_req_requeue(rt, r, p->reason ? p->reason : "preempted", true);
    rt_dispatch(rt);
}

void rt_on_worker_error(rt_t *rt, int wi, const Pd__Error *e)
{
    rt_worker_t *w = &rt->workers[wi];
    rt_req_t *r = e->has_request_id ? rt_req_by_id(rt, e->request_id) : NULL;
    PD_WARN("event=worker_error worker=%s req=%llu code=%d msg=\"%s\"", w->id,
            (unsigned long long)e->request_id, (int)e->code, e->message ? e->message : "");
    if (r == NULL || !rt_req_on_workers(r))
        return;
    if (!((r->d_worker == wi && r->d_gen == w->gen) || (r->p_worker == wi && r->p_gen == w->gen)))
        return;
    rt_req_fail(rt, r, e->has_code ? e->code : PD__ERROR_CODE__INTERNAL, "worker %s: %s", w->id,
                e->message ? e->message : "error");
}

const char *rt_worker_state_name(rt_wstate_t s)
{
    switch (s) {
    case RT_W_READY: return "ready";
    case RT_W_CORDONED: return "cordoned";
    case RT_W_LEAVING: return "draining";
    }
    return "?";
}

bool rt_worker_set_state(rt_worker_t *w, rt_wstate_t to, const char *why)
{
    if (w->state == to)
        return true;
    if (w->state == RT_W_LEAVING) /* it is on its way out: nothing brings it back */
        return false;
    PD_INFO("event=worker_state worker=%s from=%s to=%s why=\"%s\"", w->id,
            rt_worker_state_name(w->state), rt_worker_state_name(to), why);
    w->state = to;
    return true;
}

/* pd-cli drain WORKER [--keep] / undrain WORKER: LEAVE is forwarded to the
 * worker (it finishes, deregisters and exits); KEEP and RESUME change only
 * whether the router sends it new work. Answered with the status, or an
 * error naming the worker. */
void rt_on_drain_request(rt_t *rt, const uint8_t *cid, size_t cid_len, const Pd__Drain *d)
{
    const char *id = d->worker_id ? d->worker_id : "";
    Pd__DrainMode mode = d->has_mode ? d->mode : PD__DRAIN_MODE__DRAIN_LEAVE;
    rt_worker_t *w = NULL;
    for (int i = 0; i < RT_MAX_WORKERS && w == NULL; i++)
        if (rt->workers[i].used && strcmp(rt->workers[i].id, id) == 0)
            w = &rt->workers[i];
    if (w == NULL) {
        pd_net_send_error(rt->front, cid, cid_len, 0, PD__ERROR_CODE__INVALID_ARGUMENT,
                          "unknown worker id '%.64s'", id);
        return;
    }
    bool done;
    switch (mode) {
    case PD__DRAIN_MODE__DRAIN_LEAVE: {
        Pd__Drain fwd = PD__DRAIN__INIT;
        fwd.has_deadline_ms = d->has_deadline_ms;
        fwd.deadline_ms = d->deadline_ms;
        Pd__Msg m = PD__MSG__INIT;
        m.body_case = PD__MSG__BODY_DRAIN;
        m.drain = &fwd;
        rt_send_worker(rt, w, &m);
        done = rt_worker_set_state(w, RT_W_LEAVING, "pd-cli drain"); /* nothing new goes there */
        break;
    }
    case PD__DRAIN_MODE__DRAIN_KEEP: done = rt_worker_set_state(w, RT_W_CORDONED, "pd-cli drain --keep"); break;
    case PD__DRAIN_MODE__DRAIN_RESUME: done = rt_worker_set_state(w, RT_W_READY, "pd-cli undrain"); break;
    default:
        pd_net_send_error(rt->front, cid, cid_len, 0, PD__ERROR_CODE__INVALID_ARGUMENT,
                          "drain: unknown mode %d", (int)mode);
        return;
    }
    if (!done) {
        pd_net_send_error(rt->front, cid, cid_len, 0, PD__ERROR_CODE__INVALID_ARGUMENT,
                          "worker '%s' is draining to leave; it cannot be kept or resumed "
                          "(start a new one)",
                          w->id);
        return;
    }
    rt_on_status(rt, cid, cid_len);
}

/* ====== Status ====== */

void rt_on_status(rt_t *rt, const uint8_t *cid, size_t cid_len)
{
    Pd__WorkerStatus ws[RT_MAX_WORKERS];
    Pd__WorkerStatus *wp[RT_MAX_WORKERS];
    Pd__WorkerCounters wc[RT_MAX_WORKERS];
    size_t n = 0;
    uint64_t now = pd_now_ms();
    for (int i = 0; i < RT_MAX_WORKERS; i++) {
        rt_worker_t *w = &rt->workers[i];
        if (!w->used)
            continue;
        /* Requests on it in either role: what its loss would re-dispatch. */
        uint32_t held = 0;
        for (uint32_t k = 0; k < rt->n_slots; k++)
            held += rt_req_held_by(rt, &rt->reqs[k], i);
        Pd__WorkerStatus *s = &ws[n];
        pd__worker_status__init(s);
        Pd__WorkerCounters *c = &wc[n];
        s->worker_id = w->id;
        s->has_role = true;
        s->role = w->role;
        s->kv_endpoint = w->kv_endpoint;
        s->state = (char *)rt_worker_state_name(w->state);
        s->has_queued_prefill_tokens = s->has_running_seqs = s->has_free_blocks = true;
        s->has_total_blocks = s->has_assigned = s->has_last_seen_ms = true;
        s->queued_prefill_tokens = w->hb_queued_tokens;
        s->running_seqs = w->hb_running;
        s->free_blocks = w->hb_free_blocks;
        s->total_blocks = w->total_blocks;
        s->assigned = held;
        s->last_seen_ms = now - w->last_seen_ms;
        pd_codec_counters_to_pb(&w->counters, c);
        s->has_prefix_caching = s->has_prefix_index_blocks = s->has_routed_cached_requests = true;
        s->has_routed_cached_tokens = s->has_kv_resyncs = true;
        s->prefix_caching = w->prefix_caching;
        s->prefix_index_blocks = rt_kvi_worker_hashes(rt->kvi, i);
        s->routed_cached_requests = w->routed_cached_reqs;
        s->routed_cached_tokens = w->routed_cached_tokens;
        s->kv_resyncs = w->kv_resyncs;
        s->counters = c;
        wp[n] = s;
        n++;
    }
    Pd__ClusterStatus cs = PD__CLUSTER_STATUS__INIT;
    cs.n_workers = n;
    cs.workers = wp;
    cs.has_active_requests = cs.has_queued_requests = cs.has_model_identity = true;
    cs.has_requests_total = cs.has_requests_failed = cs.has_block_size = true;
    cs.has_max_seq_len = cs.has_max_tokens_limit = cs.has_prefix_index_hashes = true;
    cs.active_requests = rt->n_active;
    cs.queued_requests = rt->q_len;
    cs.model_name = rt->model->name;
    cs.model_identity = rt->identity;
    cs.requests_total = rt->requests_total;
    cs.requests_failed = rt->requests_failed;
    cs.block_size = rt->cfg.kv.block_size;
    cs.max_seq_len = rt->max_seq_len;
    cs.max_tokens_limit = rt->cfg.router.max_tokens_limit;
    cs.prefix_index_hashes = (uint32_t)rt_kvi_size(rt->kvi);
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_STATUS;
    m.status = &cs;
    pd_net_send(rt->front, cid, cid_len, &m, false, NULL);
}
