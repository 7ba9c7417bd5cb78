/* sched.c -- the router's workers: registry (register, heartbeats,
 * removal) and scheduling (pick a prefill and a decode worker, dispatch,
 * re-dispatch after preemption or a worker's death). See router.h. */
#include <stdio.h>
#include <string.h>

#include "base/fault.h"
#include "base/log.h"
#include "runtime/addr.h"
#include "router.h"

/* ====== Workers: scheduling ====== */

/* Picks (prefill, decode) for r, or returns false when nothing fits now. */
static bool pick_workers(rt_t *rt, rt_req_t *r, int *p_out, int *d_out, bool *never)
{
    uint64_t n_tok = (uint64_t)r->n_prompt + r->n_gen;
    uint64_t n_full = (uint64_t)r->n_prompt + r->max_tokens;
    /* Disaggregated when a prefill and a decode worker are up, else
     * colocated workers. */
    bool has_p = false, has_d = false;
    for (int i = 0; i < RT_MAX_WORKERS; i++) {
        rt_worker_t *w = &rt->workers[i];
        if (w->used && w->state == RT_W_READY) {
            has_p |= w->role == PD__ROLE__ROLE_PREFILL;
            has_d |= w->role == PD__ROLE__ROLE_DECODE;
        }
    }
    bool disagg = has_p && has_d;
    Pd__Role drole = disagg ? PD__ROLE__ROLE_DECODE : PD__ROLE__ROLE_BOTH;
    int best_full = -1, best_min = -1;
    bool any_could = false;
    uint8_t fits[RT_MAX_WORKERS] = { 0 }; /* 2: the whole request fits, 1: its prompt */
    for (int i = 0; i < RT_MAX_WORKERS; i++) {
        rt_worker_t *w = &rt->workers[i];
        if (!w->used || w->state != RT_W_READY || w->role != drole)
            continue;
        uint32_t need_min = rt_blocks_for(w->block_size, n_tok + 1);
        uint32_t need_full = rt_blocks_for(w->block_size, n_full);
        if (need_min > w->total_blocks)
            continue;
        any_could = true;
        uint64_t free_est = w->total_blocks > w->blocks_est ? w->total_blocks - w->blocks_est : 0;
        fits[i] = need_full <= free_est ? 2 : need_min <= free_est ? 1 : 0;
        if (need_full <= free_est &&
            (best_full < 0 || w->n_decoding < rt->workers[best_full].n_decoding))
            best_full = i;
        if (need_min <= free_est &&
            (best_min < 0 || free_est > rt->workers[best_min].total_blocks -
                                            rt->workers[best_min].blocks_est))
            best_min = i;
    }
    *never = !any_could;
    int d = best_full >= 0 ? best_full : best_min;
    if (d < 0)
        return false;
    int p = d;
    if (disagg) {
        bool ok[RT_MAX_WORKERS];
        for (int i = 0; i < RT_MAX_WORKERS; i++)
            ok[i] = rt->workers[i].used && rt->workers[i].state == RT_W_READY &&
                    rt->workers[i].role == PD__ROLE__ROLE_PREFILL;
        p = rt_prefix_pick(rt, r, ok);
        if (p < 0)
            return false;
    } else if (rt->cfg.router.routing != PD_ROUTING_LEAST_LOADED) {
        /* Colocated: the worker that prefills also decodes, so only those
         * with room for the whole request (else the roomiest) compete. */
        bool ok[RT_MAX_WORKERS];
        for (int i = 0; i < RT_MAX_WORKERS; i++)
            ok[i] = fits[i] == (best_full >= 0 ? 2 : 1);
        p = d = rt_prefix_pick(rt, r, ok);
    } else {
        r->prefix_cached = 0;
    }
    *p_out = p;
    *d_out = d;
    return true;
}

static void fill_params(rt_req_t *r, Pd__GenParams *gp, Pd__Sampling *s, uint32_t max_seq_len)
{
    s->has_temperature = s->has_top_k = s->has_top_p = s->has_min_p = true;
    s->has_repetition_penalty = s->has_presence_penalty = s->has_frequency_penalty = true;
    s->has_seed = true;
    s->temperature = r->sampling.temperature;
    s->top_k = r->sampling.top_k;
    s->top_p = r->sampling.top_p;
    s->min_p = r->sampling.min_p;
    s->repetition_penalty = r->sampling.repetition_penalty;
    s->presence_penalty = r->sampling.presence_penalty;
    s->frequency_penalty = r->sampling.frequency_penalty;
    s->seed = r->sampling.seed;
    gp->sampling = s;
    gp->has_max_tokens = gp->has_ignore_eos = gp->has_n_prompt = true;
    gp->has_n_generated = gp->has_max_seq_len = true;
    gp->max_tokens = r->max_tokens;
    gp->n_stop_ids = r->n_stop_ids;
    gp->stop_ids = r->stop_ids;
    gp->ignore_eos = r->ignore_eos;
    gp->n_prompt = r->n_prompt;
    gp->n_generated = r->n_gen;
    gp->max_seq_len = max_seq_len;
}

/* Sends r to p (prefill) and d (decode; the same worker when colocated).
 * Returns 0, or the first send's failure (nothing after it is sent). */
static int send_tasks(rt_t *rt, rt_req_t *r, rt_worker_t *p, rt_worker_t *d)
{
    uint32_t n_tok = r->n_prompt + r->n_gen;
    Pd__Sampling s = PD__SAMPLING__INIT;
    Pd__GenParams gp = PD__GEN_PARAMS__INIT;
    fill_params(r, &gp, &s, rt->max_seq_len);
    Pd__Msg m = PD__MSG__INIT;
    if (d != p) {
        Pd__DecodeTask dt = PD__DECODE_TASK__INIT;
        dt.has_request_id = dt.has_epoch = true;
        dt.request_id = r->id;
        dt.epoch = r->epoch;
        dt.params = &gp;
        dt.prefill_worker_id = p->id;
        dt.n_history = n_tok;
        dt.history = r->tokens;
        m.body_case = PD__MSG__BODY_DECODE;
        m.decode = &dt;
        int rc = rt_send_worker(rt, d, &m);
        if (rc != 0)
            return rc;
    }
    Pd__PrefillTask pt = PD__PREFILL_TASK__INIT;
    pt.has_request_id = pt.has_epoch = true;
    pt.request_id = r->id;
    pt.epoch = r->epoch;
    pt.n_tokens = n_tok;
    pt.tokens = r->tokens;
    pt.params = &gp;
    pt.decode_worker_id = d->id;
    pt.decode_kv_endpoint = d->kv_endpoint;
    m.body_case = PD__MSG__BODY_PREFILL;
    m.prefill = &pt;
    return rt_send_worker(rt, p, &m);
}

/* Dispatches queued requests while workers have room. */
void rt_dispatch(rt_t *rt)
{
    while (rt->q_len > 0 && rt->n_dispatched < rt->cfg.router.max_inflight) {
        uint32_t slot = rt->queue[rt->q_head];
        rt_req_t *r = &rt->reqs[slot];
        int pi, di;
        bool never = false;
        if (!pick_workers(rt, r, &pi, &di, &never)) {
            if (never && rt_have_workers(rt)) {
                rt->q_head = (rt->q_head + 1) % rt->n_slots;
                rt->q_len--;
                r->state = RQ_PREFILL; /* so release does not search the queue */
                rt_req_fail(rt, r, PD__ERROR_CODE__INVALID_ARGUMENT,
                         "prompt: %u tokens need more KV blocks than any decode worker has",
                         r->n_prompt + r->n_gen + 1);
                continue;
            }
            return; /* wait for room */
        }
        rt->q_head = (rt->q_head + 1) % rt->n_slots;
        rt->q_len--;
        rt_worker_t *p = &rt->workers[pi], *d = &rt->workers[di];
        r->epoch++;
        r->state = RQ_PREFILL;
        r->gen_at_dispatch = r->n_gen;
        r->n_stash = 0;
        r->p_worker = pi;
        r->p_gen = p->gen;
        r->d_worker = di;
        r->d_gen = d->gen;
        r->assigned = true;
        /* What the worker computes: the cached prefix is not charged. */
        r->prefill_charged = (uint64_t)r->n_prompt + r->n_gen - r->prefix_cached;
        p->prefill_tokens += r->prefill_charged;
        if (r->prefix_cached > 0) {
            p->routed_cached_reqs++;
            p->routed_cached_tokens += r->prefix_cached;
        }
        r->blocks_charged = rt_blocks_for(d->block_size, (uint64_t)r->n_prompt + r->n_gen + 1);
        d->blocks_est += r->blocks_charged;
        d->n_decoding++;
        if (r->t_dispatch_us == 0)
            r->t_dispatch_us = pd_net_now_us();
        rt->n_dispatched++;
        PD_DEBUG("event=dispatch req=%llu epoch=%u prefill=%s decode=%s tokens=%u",
                 (unsigned long long)r->id, r->epoch, p->id, d->id, r->n_prompt + r->n_gen);
        int rc = send_tasks(rt, r, p, d);
        if (rc != 0) {
            /* Back-pressure, no memory for the message, or a vanished
             * worker: a task that did not leave must not leave the request
             * waiting for its deadline. Back to the head of the queue; the
             * timer dispatches again. */
            rt_requeue(rt, r, rc == PD_ENOMEM ? "out of memory for a task message"
                              : rc == PD_EFULL ? "worker socket full" : "worker unreachable");
            r->n_preempt--; /* not a preemption */
            return;
        }
        /* fault.h test hook: the request got through the router's region. */
        pd_fault_complete(PD_FAULT_ROUTER_REQUEST, pd_fault_current_key(PD_FAULT_ROUTER_REQUEST));
    }
}

/* Puts a dispatched request back at the head of the queue (re-prefill of
 * prompt + generated tokens at a new epoch). */
void rt_requeue(rt_t *rt, rt_req_t *r, const char *why)
{
    PD_INFO("event=requeue req=%llu epoch=%u generated=%u why=\"%s\"", (unsigned long long)r->id,
            r->epoch, r->n_gen, why);
    rt_req_unassign(rt, r, true);
    r->state = RQ_QUEUED;
    r->n_preempt++;
    rt->q_head = (rt->q_head + rt->n_slots - 1) % rt->n_slots;
    rt->queue[rt->q_head] = (uint32_t)(r - rt->reqs);
    rt->q_len++;
}

/* ====== Workers: registry ====== */

bool rt_req_held_by(const rt_t *rt, const rt_req_t *r, int wi)
{
    const rt_worker_t *w = &rt->workers[wi];
    if (r->state != RQ_PREFILL && r->state != RQ_DECODE)
        return false;
    /* A prefill worker still owns a request until its KV has reached
     * the decode worker: until the decode worker's first token. */
    bool on_p = r->p_worker == wi && r->p_gen == w->gen &&
                (r->state == RQ_PREFILL ||
                 (r->d_worker != wi && r->n_gen == r->gen_at_dispatch + 1));
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
            rt_requeue(rt, r, why);
    }
    uint32_t gen = w->gen + 1;
    memset(w, 0, sizeof *w);
    w->gen = gen;
    rt_prefix_on_drop(rt, wi);
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
    if (!g->has_protocol_version || g->protocol_version != PD_PROTOCOL_VERSION)
        snprintf(why, sizeof why, "protocol version %u, router speaks %u", g->protocol_version,
                 (unsigned)PD_PROTOCOL_VERSION);
    else if (!g->has_model_identity || g->model_identity != rt->model->identity)
        snprintf(why, sizeof why, "model identity %016llx (%s), router serves %016llx (%s)",
                 (unsigned long long)g->model_identity, g->model_name ? g->model_name : "?",
                 (unsigned long long)rt->model->identity, rt->model->name);
    else if (id[0] == '\0' || strlen(id) >= sizeof rt->workers[0].id)
        snprintf(why, sizeof why, "worker_id: must be 1..63 characters");
    else if (!g->has_role || g->role < PD__ROLE__ROLE_PREFILL || g->role > PD__ROLE__ROLE_BOTH)
        snprintf(why, sizeof why, "role: missing or unknown");
    else if (!g->has_block_size || g->block_size != rt->cfg.kv.block_size)
        snprintf(why, sizeof why, "kv.block_size %u, cluster uses %u", g->block_size,
                 rt->cfg.kv.block_size);
    else if (g->role != PD__ROLE__ROLE_PREFILL &&
             (!g->has_total_blocks || g->total_blocks == 0))
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
    w->block_size = g->block_size;
    w->total_blocks = g->total_blocks;
    w->hb_free_blocks = g->total_blocks;
    w->max_batch_size = g->max_batch_size;
    w->max_batch_tokens = g->max_batch_tokens;
    w->last_seen_ms = pd_net_now_ms();
    PD_INFO("event=worker_registered worker=%s role=%d kv=%s blocks=%u", w->id, (int)w->role,
            w->kv_endpoint[0] ? w->kv_endpoint : "-", w->total_blocks);
    reply_register(rt, zid, len, true, NULL);
    rt_prefix_on_register(rt, wi, g);
    rt_dispatch(rt);
}

static void copy_counters(rt_counters_t *c, const Pd__WorkerCounters *p)
{
    if (p == NULL)
        return;
    c->steps = p->steps;
    c->multi_seq_steps = p->multi_seq_steps;
    c->joins_while_running = p->joins_while_running;
    c->retirements = p->retirements;
    c->preemptions = p->preemptions;
    c->prefill_batches = p->prefill_batches;
    c->prefill_multi = p->prefill_multi;
    c->prefill_tokens = p->prefill_tokens;
    c->kv_sent_bytes = p->kv_sent_bytes;
    c->kv_recv_bytes = p->kv_recv_bytes;
    c->kv_rejected = p->kv_rejected;
    c->decode_tokens = p->decode_tokens;
    c->max_running = p->max_running;
    c->kv_transfers = p->kv_transfers;
    c->kv_transfer_us = p->kv_transfer_us;
    c->prefill_us = p->prefill_us;
    c->decode_us = p->decode_us;
    c->prefill_pass_tokens = p->prefill_pass_tokens;
    c->prefix_queries = p->prefix_queries;
    c->prefix_hits = p->prefix_hits;
    c->prefix_requests = p->prefix_requests;
    c->prefix_evictions = p->prefix_evictions;
    c->prefix_cached_blocks = p->prefix_cached_blocks;
}

void rt_on_heartbeat(rt_t *rt, rt_worker_t *w, const Pd__Heartbeat *h)
{
    w->hb_queued_tokens = h->queued_prefill_tokens;
    w->hb_running = h->running_seqs;
    w->hb_free_blocks = h->free_blocks;
    w->hb_waiting = h->waiting_seqs;
    copy_counters(&w->counters, h->counters);
    if (h->has_draining && h->draining && w->state != RT_W_LEAVING)
        rt_worker_set_state(w, RT_W_LEAVING, "worker draining");
}

void rt_on_preempted(rt_t *rt, int wi, const Pd__Preempted *p)
{
    rt_req_t *r = rt_req_by_id(rt, p->request_id);
    rt_worker_t *w = &rt->workers[wi];
    if (r == NULL || r->epoch != p->epoch || (r->state != RQ_PREFILL && r->state != RQ_DECODE)) {
        PD_DEBUG("event=stale_preempted req=%llu worker=%s", (unsigned long long)p->request_id,
                 w->id);
        return;
    }
    if (!((r->d_worker == wi && r->d_gen == w->gen) || (r->p_worker == wi && r->p_gen == w->gen)))
        return;
    pd_metrics_preempted(rt->metrics);
    rt_requeue(rt, r, p->reason ? p->reason : "preempted");
    rt_dispatch(rt);
}

void rt_on_worker_error(rt_t *rt, int wi, const Pd__Error *e)
{
    rt_worker_t *w = &rt->workers[wi];
    rt_req_t *r = e->has_request_id ? rt_req_by_id(rt, e->request_id) : NULL;
    PD_WARN("event=worker_error worker=%s req=%llu code=%d msg=\"%s\"", w->id,
            (unsigned long long)e->request_id, (int)e->code, e->message ? e->message : "");
    if (r == NULL || (r->state != RQ_PREFILL && r->state != RQ_DECODE))
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

