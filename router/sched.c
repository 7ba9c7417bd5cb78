/* sched.c -- scheduling: which prefill and decode worker take a queued
 * request, the tasks that send it there, and what each request is charged
 * on its workers (the one place those charges change). The request's
 * states are requests.c's; the workers themselves are workers.c's. See
 * router.h. */
#include <stdio.h>
#include <string.h>

#include "base/fault.h"
#include "base/log.h"
#include "router.h"

/* ====== Charges ======
 *
 * Between heartbeats the router counts for itself what each request costs
 * its workers, and pick_workers reads only these counts:
 *   prefill worker  prefill_tokens += n_prompt + n_gen (the tokens of its
 *                   task), from dispatch (PREFILL) until the epoch's first
 *                   token (HANDOFF);
 *   decode worker   n_decoding += 1 and blocks_est += the KV blocks of
 *                   n_prompt + n_gen + 1 tokens, from dispatch until the
 *                   request leaves the workers, growing with its output.
 * The four rt_charge_* functions below are the only code that changes
 * them; rt_req_to calls them on the transitions named beside each
 * (rt_charge_grow: requests.c, after each output token). A colocated
 * worker is both p and d. */

/* Subtracts what r was charged, never below zero (a worker that
 * re-registered starts from zero). */
static void uncharge(uint64_t *total, uint64_t charged)
{
    *total -= charged < *total ? charged : *total;
}

uint32_t rt_blocks_for(uint32_t block_size, uint64_t n_tokens)
{
    if (block_size == 0)
        return UINT32_MAX;
    uint64_t b = (n_tokens + block_size - 1) / block_size;
    return b > UINT32_MAX ? UINT32_MAX : (uint32_t)b;
}

/* QUEUED -> PREFILL: r->p_worker and r->d_worker were just chosen. */
void rt_charge_take(rt_t *rt, rt_req_t *r)
{
    rt_worker_t *p = &rt->workers[r->p_worker], *d = &rt->workers[r->d_worker];
    /* What the worker computes: the cached prefix (router.routing) is not charged. */
    r->prefill_charged = (uint64_t)r->n_prompt + r->n_gen - r->prefix_cached;
    p->prefill_tokens += r->prefill_charged;
    if (r->prefix_cached > 0) {
        p->routed_cached_reqs++;
        p->routed_cached_tokens += r->prefix_cached;
    }
    r->blocks_charged = rt_blocks_for(d->block_size, (uint64_t)r->n_prompt + r->n_gen + 1);
    d->blocks_est += r->blocks_charged;
    d->n_decoding++;
    rt->n_dispatched++;
}

/* PREFILL -> HANDOFF: the prefill worker's part is done. */
void rt_charge_prefill_done(rt_t *rt, rt_req_t *r)
{
    rt_worker_t *p = rt_worker_of(rt, r->p_worker, r->p_gen);
    if (p)
        uncharge(&p->prefill_tokens, r->prefill_charged);
    r->prefill_charged = 0;
}

/* An output token was appended (HANDOFF, DECODE). */
void rt_charge_grow(rt_t *rt, rt_req_t *r)
{
    rt_worker_t *d = rt_worker_of(rt, r->d_worker, r->d_gen);
    if (d == NULL)
        return;
    uint64_t b = rt_blocks_for(d->block_size, (uint64_t)r->n_prompt + r->n_gen + 1);
    if (b > r->blocks_charged) {
        d->blocks_est += b - r->blocks_charged;
        r->blocks_charged = b;
    }
}

/* PREFILL, HANDOFF, DECODE -> QUEUED, DONE, FAILED, FREE.
 * The prefill worker is told to drop r while it still computes it
 * (PREFILL); the decode worker once it holds r (a separate decode worker
 * always: it may have r's task already; a colocated one only after
 * prefill, or it would be told twice). */
void rt_charge_return(rt_t *rt, rt_req_t *r, rt_state_t from)
{
    rt_worker_t *p = rt_worker_of(rt, r->p_worker, r->p_gen);
    rt_worker_t *d = rt_worker_of(rt, r->d_worker, r->d_gen);
    if (p) {
        uncharge(&p->prefill_tokens, r->prefill_charged);
        if (from == RQ_PREFILL)
            rt_send_cancel(rt, p, r->id, r->epoch);
    }
    if (d) {
        uncharge(&d->blocks_est, r->blocks_charged);
        if (d->n_decoding)
            d->n_decoding--;
        if (d != p || from != RQ_PREFILL)
            rt_send_cancel(rt, d, r->id, r->epoch);
    }
    r->prefill_charged = r->blocks_charged = 0;
    r->p_worker = r->d_worker = -1;
    rt->n_dispatched--;
}

/* ====== Choosing workers and dispatching ====== */

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

_Static_assert(RT_MAX_STOP_IDS <= PD_MAX_STOP_IDS, "a request's stop ids must fit GenParams");

/* What the workers need to generate r from here (its GenParams). */
static void gen_params(const rt_t *rt, const rt_req_t *r, pd_gen_params_t *p)
{
    memset(p, 0, sizeof *p);
    p->s = r->sampling;
    p->max_tokens = r->max_tokens;
    memcpy(p->stop_ids, r->stop_ids, r->n_stop_ids * sizeof *r->stop_ids);
    p->n_stop_ids = r->n_stop_ids;
    p->ignore_eos = r->ignore_eos;
    p->n_prompt = r->n_prompt;
    p->n_generated = r->n_gen;
    p->max_seq_len = rt->max_seq_len;
}

/* Sends r to p (prefill) and d (decode; the same worker when colocated).
 * Returns 0, or the first send's failure (nothing after it is sent). */
static int send_tasks(rt_t *rt, rt_req_t *r, rt_worker_t *p, rt_worker_t *d)
{
    uint32_t n_tok = r->n_prompt + r->n_gen;
    pd_gen_params_t params;
    gen_params(rt, r, &params);
    Pd__Sampling s;
    Pd__GenParams gp;
    pd_codec_params_to_pb(&params, &gp, &s);
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
        rt_req_t *r = &rt->reqs[rt->queue[rt->q_head]];
        int pi, di;
        bool never = false;
        if (!pick_workers(rt, r, &pi, &di, &never)) {
            if (never && rt_have_workers(rt)) {
                rt_req_fail(rt, r, PD__ERROR_CODE__INVALID_ARGUMENT,
                            "prompt: %u tokens need more KV blocks than any decode worker has",
                            r->n_prompt + r->n_gen + 1);
                continue;
            }
            return; /* wait for room */
        }
        rt_worker_t *p = &rt->workers[pi], *d = &rt->workers[di];
        r->p_worker = pi;
        r->p_gen = p->gen;
        r->d_worker = di;
        r->d_gen = d->gen;
        rt_req_to(rt, r, RQ_PREFILL);
        PD_DEBUG("event=dispatch req=%llu epoch=%u prefill=%s decode=%s tokens=%u",
                 (unsigned long long)r->id, r->epoch, p->id, d->id, r->n_prompt + r->n_gen);
        int rc = send_tasks(rt, r, p, d);
        if (rc != 0) {
            /* Back-pressure, no memory for the message, or a vanished
             * worker: a task that did not leave must not leave the request
             * waiting for its deadline. Back to the head of the queue (not
             * a preemption); the timer dispatches again. */
            rt_req_requeue(rt, r, rc == PD_ENOMEM ? "out of memory for a task message"
                                  : rc == PD_EFULL ? "worker socket full" : "worker unreachable",
                           false);
            return;
        }
        /* fault.h test hook: the request got through the router's region. */
        pd_fault_complete(PD_FAULT_ROUTER_REQUEST, pd_fault_current_key(PD_FAULT_ROUTER_REQUEST));
    }
}
