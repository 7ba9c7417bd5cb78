/* router.c -- see router.h. Setup, the two sockets, status, timers and
 * the reactor; requests live in requests.c, workers and scheduling in
 * sched.c. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/fault.h"
#include "base/grow.h"
#include "base/log.h"
#include "router.h"

/* ====== Setup ====== */

int rt_init(rt_t *rt, const pd_config_t *cfg, volatile sig_atomic_t *stop, pd_err_t *err)
{
    memset(rt, 0, sizeof *rt);
    rt->cfg = *cfg;
    rt->stop = stop;
    for (int i = 0; i < RT_MAX_WORKERS; i++)
        rt->workers[i].gen = 1;
    if (cfg->model.path[0] == '\0')
        return pd_err_set(err, PD_EINVAL, "model.path: not set (use --model PATH)");
    rt->model = pd_model_load(cfg->model.path, err);
    if (rt->model == NULL)
        return pd_err_wrap(err, PD_EINVAL, "model %s", cfg->model.path);
    rt->tok = pd_tok_load(rt->model->gguf, err);
    if (rt->tok == NULL)
        return pd_err_wrap(err, PD_EINVAL, "tokenizer of %s", cfg->model.path);
    rt->max_seq_len = rt->model->cfg.ctx_len;
    if (cfg->model.max_seq_len && cfg->model.max_seq_len < rt->max_seq_len)
        rt->max_seq_len = cfg->model.max_seq_len;
    uint64_t slots = (uint64_t)cfg->router.max_inflight + cfg->router.max_queue;
    if (slots == 0 || slots >= (1u << RT_SLOT_BITS))
        return pd_err_set(err, PD_EINVAL,
                          "router.max_inflight + router.max_queue: must be 1..%u, got %llu",
                          (1u << RT_SLOT_BITS) - 1, (unsigned long long)slots);
    rt->n_slots = (uint32_t)slots;
    rt->reqs = calloc(rt->n_slots, sizeof *rt->reqs);
    rt->queue = calloc(rt->n_slots, sizeof *rt->queue);
    rt->held = calloc(rt->n_slots, sizeof *rt->held);
    rt->tok_buf = malloc(((size_t)rt->max_seq_len + 1) * sizeof *rt->tok_buf);
    rt->in = malloc(sizeof *rt->in);
    if (!rt->reqs || !rt->queue || !rt->held || !rt->tok_buf || !rt->in)
        return pd_err_set(err, PD_ENOMEM, "router state for %u requests", rt->n_slots);
    rt->in->n_frames = 0;
    if (rt_prefix_init(rt, err) != 0)
        return PD_ENOMEM;
    /* A message's decoded form is bounded by a multiple of its size;
     * 64x covers repeated submessages of a few bytes each. */
    pd_pb_alloc_init(&rt->alloc,
                     (size_t)cfg->net.max_msg_bytes * PD_PB_BYTES_PER_WIRE_BYTE +
                         PD_PB_BASE_BUDGET);
    rt->zctx = zmq_ctx_new();
    if (rt->zctx == NULL)
        return pd_err_set(err, PD_EIO, "zmq_ctx_new failed");
    if (cfg->security.curve) {
        rt->zap = pd_zap_new(rt->zctx, cfg->security.allowed_keys, cfg->security.n_allowed_keys,
                             err);
        if (rt->zap == NULL)
            return PD_EINVAL;
    }
    pd_net_opts_t o;
    pd_net_opts_from_config(&o, cfg);
    pd_net_opts_heartbeat(&o, cfg->router.heartbeat_ms, cfg->router.liveness);
    rt->front = pd_net_socket(rt->zctx, ZMQ_ROUTER, &o, err);
    if (rt->front == NULL)
        return pd_err_wrap(err, PD_EIO, "client socket");
    rt->back = pd_net_socket(rt->zctx, ZMQ_ROUTER, &o, err);
    if (rt->back == NULL)
        return pd_err_wrap(err, PD_EIO, "worker socket");
    int rc = pd_net_bind(rt->front, cfg->router.client_endpoint, rt->front_ep, sizeof rt->front_ep,
                         err);
    if (rc)
        return pd_err_wrap(err, rc, "router.client_endpoint");
    rc = pd_net_bind(rt->back, cfg->router.worker_endpoint, rt->back_ep, sizeof rt->back_ep, err);
    if (rc)
        return pd_err_wrap(err, rc, "router.worker_endpoint");
    PD_INFO("event=listening clients=%s workers=%s model=\"%s\" identity=%016llx max_seq_len=%u "
            "slots=%u",
            rt->front_ep, rt->back_ep, rt->model->name, (unsigned long long)rt->model->identity,
            rt->max_seq_len, rt->n_slots);
    return 0;
}

void rt_destroy(rt_t *rt)
{
    if (rt->reqs)
        for (uint32_t i = 0; i < rt->n_slots; i++)
            rt_req_clear(&rt->reqs[i]);
    free(rt->reqs);
    free(rt->clients);
    free(rt->queue);
    free(rt->held);
    free(rt->tok_buf);
    free(rt->in);
    rt_prefix_destroy(rt);
    pd_net_close(rt->front);
    pd_net_close(rt->back);
    pd_zap_free(rt->zap);
    if (rt->zctx)
        zmq_ctx_term(rt->zctx);
    pd_tok_free(rt->tok);
    pd_model_free(rt->model);
    memset(rt, 0, sizeof *rt);
}

/* ====== Small helpers ====== */

uint32_t rt_blocks_for(uint32_t block_size, uint64_t n_tokens)
{
    if (block_size == 0)
        return UINT32_MAX;
    uint64_t b = (n_tokens + block_size - 1) / block_size;
    return b > UINT32_MAX ? UINT32_MAX : (uint32_t)b;
}

rt_req_t *rt_req_by_id(rt_t *rt, uint64_t id)
{
    uint64_t slot = id & ((1u << RT_SLOT_BITS) - 1);
    if (slot >= rt->n_slots)
        return NULL;
    rt_req_t *r = &rt->reqs[slot];
    return r->state != RQ_FREE && r->id == id ? r : NULL;
}

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

/* ====== Clients: liveness ======
 *
 * Paranoid Pirate toward clients: any message from a client counts as a
 * beat; a client that declared heartbeats and has requests in flight gets a
 * Heartbeat (carrying the interval and liveness it should use) whenever the
 * router has sent it nothing for router.client_heartbeat_ms, and loses all
 * its requests once silent for router.client_liveness intervals. The table
 * is searched linearly: it holds only clients with requests in flight. */

static int client_find(const rt_t *rt, const uint8_t *cid, size_t len)
{
    for (size_t i = 0; i < rt->n_clients; i++) {
        const rt_client_t *c = &rt->clients[i];
        if (c->used && c->cid_len == len && memcmp(c->cid, cid, len) == 0)
            return (int)i;
    }
    return -1;
}

int rt_client_attach(rt_t *rt, rt_req_t *r, bool beats)
{
    uint64_t now = pd_net_now_ms();
    int ci = client_find(rt, r->cid, r->cid_len);
    if (ci < 0) {
        size_t i = 0;
        while (i < rt->n_clients && rt->clients[i].used)
            i++;
        if (i == rt->n_clients) {
            if (pd_grow((void **)&rt->clients, &rt->cap_clients, i + 1, sizeof *rt->clients,
                        16) != 0)
                return PD_ENOMEM;
            rt->n_clients++;
        }
        rt_client_t *c = &rt->clients[i];
        memset(c, 0, sizeof *c);
        c->used = true;
        memcpy(c->cid, r->cid, r->cid_len);
        c->cid_len = r->cid_len;
        ci = (int)i;
    }
    rt_client_t *c = &rt->clients[ci];
    c->n_reqs++;
    c->last_rx_ms = now;
    if (beats && !c->beats) {
        c->beats = true;
        c->last_tx_ms = 0; /* tell it our interval and liveness at the next sweep */
    }
    r->client = (uint32_t)ci;
    return 0;
}

rt_client_t *rt_client_of(rt_t *rt, const rt_req_t *r)
{
    if (r->client >= rt->n_clients)
        return NULL;
    rt_client_t *c = &rt->clients[r->client];
    if (!c->used || c->cid_len != r->cid_len || memcmp(c->cid, r->cid, r->cid_len) != 0)
        return NULL; /* never attached (a refused request) */
    return c;
}

void rt_client_detach(rt_t *rt, rt_req_t *r)
{
    rt_client_t *c = rt_client_of(rt, r);
    if (c == NULL)
        return;
    if (c->n_reqs > 0)
        c->n_reqs--;
    if (c->n_reqs == 0) {
        c->used = false;
        while (rt->n_clients > 0 && !rt->clients[rt->n_clients - 1].used)
            rt->n_clients--;
    }
}

void rt_client_sent(rt_t *rt, const rt_req_t *r)
{
    rt_client_t *c = rt_client_of(rt, r);
    if (c) {
        c->last_tx_ms = pd_net_now_ms();
        c->stuck_since_us = 0; /* the connection took a message: it is moving */
    }
}

void rt_client_refused(rt_t *rt, const rt_req_t *r, uint64_t now_us)
{
    rt_client_t *c = rt_client_of(rt, r);
    if (c && c->stuck_since_us == 0)
        c->stuck_since_us = now_us;
}

/* Any message from a client is a beat; a Heartbeat also declares that it
 * heartbeats. Clients without requests have no entry and are not tracked. */
static void client_heard(rt_t *rt, const uint8_t *cid, size_t len, bool heartbeat)
{
    int ci = client_find(rt, cid, len);
    if (ci < 0)
        return;
    rt->clients[ci].last_rx_ms = pd_net_now_ms();
    if (heartbeat && !rt->clients[ci].beats) {
        rt->clients[ci].beats = true;
        rt->clients[ci].last_tx_ms = 0;
    }
}

static void cid_hex(const uint8_t *cid, size_t len, char *out, size_t cap)
{
    size_t n = len > 16 ? 16 : len, o = 0;
    out[0] = '\0';
    for (size_t i = 0; i < n && o + 3 < cap; i++)
        o += (size_t)snprintf(out + o, cap - o, "%02x", cid[i]);
    if (n < len && o + 4 < cap)
        snprintf(out + o, cap - o, "...");
}

/* Ends every request of client ci (the entry goes with the last one). With
 * why (a timeout) each request gets a best-effort Error(CANCELLED) in case
 * the client comes back; without (the client is gone) nothing is sent. The
 * workers are told to drop them at once, as for a Cancel. */
static void client_end(rt_t *rt, size_t ci, const char *event, const char *why)
{
    char hex[64];
    cid_hex(rt->clients[ci].cid, rt->clients[ci].cid_len, hex, sizeof hex);
    uint64_t silent = pd_net_now_ms() - rt->clients[ci].last_rx_ms;
    uint32_t n = 0;
    for (uint32_t i = 0; i < rt->n_slots && ci < rt->n_clients && rt->clients[ci].used; i++) {
        rt_req_t *r = &rt->reqs[i];
        if (r->state == RQ_FREE || r->client != ci)
            continue;
        PD_DEBUG("event=request_cancelled req=%llu client_req=%llu reason=%s",
                 (unsigned long long)r->id, (unsigned long long)r->client_req, event);
        if (why)
            pd_net_send_error(rt->front, r->cid, r->cid_len, r->client_req,
                              PD__ERROR_CODE__CANCELLED, "%s", why);
        /* One whose Error was still held was counted by rt_req_fail. */
        pd_metrics_request_failed(rt->metrics, r->err_code ? r->err_code : PD__ERROR_CODE__CANCELLED);
        if (r->err_code == 0)
            rt->requests_failed++;
        rt_req_release(rt, r, true);
        n++;
    }
    PD_WARN("event=%s client=%s requests=%u silent_ms=%llu", event, hex, n,
            (unsigned long long)silent);
}

/* Judges and heartbeats the clients that heartbeat (called every sweep). */
static void clients_check(rt_t *rt, uint64_t now)
{
    uint64_t ivl = rt->cfg.router.client_heartbeat_ms;
    uint64_t dead_after = ivl * rt->cfg.router.client_liveness;
    /* A reactor that did not run for a while (stopped, starved) heard
     * nothing meanwhile: give every client a fresh window, not the blame. */
    uint64_t stalled = dead_after / 2 > 50 ? dead_after / 2 : 50;
    if (rt->last_client_check_ms && now - rt->last_client_check_ms > stalled)
        for (size_t i = 0; i < rt->n_clients; i++)
            rt->clients[i].last_rx_ms = now;
    rt->last_client_check_ms = now;
    Pd__Heartbeat hb = PD__HEARTBEAT__INIT;
    hb.has_interval_ms = hb.has_liveness = true;
    hb.interval_ms = rt->cfg.router.client_heartbeat_ms;
    hb.liveness = rt->cfg.router.client_liveness;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_HEARTBEAT;
    m.heartbeat = &hb;
    for (size_t i = 0; i < rt->n_clients; i++) {
        rt_client_t *c = &rt->clients[i];
        if (!c->used || !c->beats)
            continue;
        if (now - c->last_rx_ms > dead_after) {
            char why[200];
            snprintf(why, sizeof why,
                     "client silent for %llu ms (router.client_liveness %u x "
                     "router.client_heartbeat_ms %u): request cancelled",
                     (unsigned long long)(now - c->last_rx_ms), rt->cfg.router.client_liveness,
                     rt->cfg.router.client_heartbeat_ms);
            client_end(rt, i, "client_timeout", why);
            continue;
        }
        if (now - c->last_tx_ms < ivl)
            continue;
        int rc = pd_net_send(rt->front, c->cid, c->cid_len, &m, false, NULL);
        if (rc == 0) {
            c->last_tx_ms = now;
            c->stuck_since_us = 0;
        }
        else if (rc == PD_NET_EGONE)
            client_end(rt, i, "client_gone", NULL);
        /* PD_EFULL: it is not reading; its silence will tell. */
    }
}

/* ====== Status ====== */

void rt_on_status(rt_t *rt, const uint8_t *cid, size_t cid_len)
{
    Pd__WorkerStatus ws[RT_MAX_WORKERS];
    Pd__WorkerStatus *wp[RT_MAX_WORKERS];
    Pd__WorkerCounters wc[RT_MAX_WORKERS];
    size_t n = 0;
    uint64_t now = pd_net_now_ms();
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
        pd__worker_counters__init(c);
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
        c->has_steps = c->has_multi_seq_steps = c->has_joins_while_running = true;
        c->has_retirements = c->has_preemptions = c->has_prefill_batches = true;
        c->has_prefill_multi = c->has_prefill_tokens = c->has_kv_sent_bytes = true;
        c->has_kv_recv_bytes = c->has_kv_rejected = c->has_decode_tokens = true;
        c->has_max_running = c->has_kv_transfers = c->has_kv_transfer_us = true;
        c->has_prefill_us = c->has_decode_us = true;
        c->kv_transfers = w->counters.kv_transfers;
        c->kv_transfer_us = w->counters.kv_transfer_us;
        c->prefill_us = w->counters.prefill_us;
        c->decode_us = w->counters.decode_us;
        c->has_prefill_pass_tokens = true;
        c->prefill_pass_tokens = w->counters.prefill_pass_tokens;
        c->steps = w->counters.steps;
        c->multi_seq_steps = w->counters.multi_seq_steps;
        c->joins_while_running = w->counters.joins_while_running;
        c->retirements = w->counters.retirements;
        c->preemptions = w->counters.preemptions;
        c->prefill_batches = w->counters.prefill_batches;
        c->prefill_multi = w->counters.prefill_multi;
        c->prefill_tokens = w->counters.prefill_tokens;
        c->kv_sent_bytes = w->counters.kv_sent_bytes;
        c->kv_recv_bytes = w->counters.kv_recv_bytes;
        c->kv_rejected = w->counters.kv_rejected;
        c->decode_tokens = w->counters.decode_tokens;
        c->max_running = w->counters.max_running;
        c->has_prefix_queries = c->has_prefix_hits = c->has_prefix_requests = true;
        c->has_prefix_evictions = c->has_prefix_cached_blocks = true;
        c->prefix_queries = w->counters.prefix_queries;
        c->prefix_hits = w->counters.prefix_hits;
        c->prefix_requests = w->counters.prefix_requests;
        c->prefix_evictions = w->counters.prefix_evictions;
        c->prefix_cached_blocks = w->counters.prefix_cached_blocks;
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
    cs.has_max_seq_len = cs.has_max_tokens_limit = true;
    cs.active_requests = rt->n_active;
    cs.queued_requests = rt->q_len;
    cs.model_name = rt->model->name;
    cs.model_identity = rt->model->identity;
    cs.requests_total = rt->requests_total;
    cs.requests_failed = rt->requests_failed;
    cs.block_size = rt->cfg.kv.block_size;
    cs.max_seq_len = rt->max_seq_len;
    cs.max_tokens_limit = rt->cfg.router.max_tokens_limit;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_STATUS;
    m.status = &cs;
    pd_net_send(rt->front, cid, cid_len, &m, false, NULL);
}

/* ====== Client socket ====== */

void rt_on_client_payload(rt_t *rt, const uint8_t *cid, size_t cid_len, const void *data,
                          size_t len)
{
    pd_err_t err = { 0 };
    static uint64_t fault_seq; /* fault.h test hook: one region per GenerateRequest */
    pd_net_peek_t pk;
    if (pd_fault_armed(PD_FAULT_ROUTER_REQUEST)) {
        pd_net_peek(data, len, &pk);
        if (pk.body_case == PD__MSG__BODY_GENERATE)
            pd_fault_enter(PD_FAULT_ROUTER_REQUEST, ++fault_seq);
    }
    Pd__Msg *m = pd_net_unpack(&rt->alloc, data, len, &err);
    client_heard(rt, cid, cid_len, m && m->body_case == PD__MSG__BODY_HEARTBEAT);
    if (m == NULL && err.code == PD_ENOMEM) {
        /* Not the sender's fault: answer its request (if the bytes name one)
         * so the client is not left waiting. */
        pd_net_peek(data, len, &pk);
        uint64_t rid = pk.body_case == PD__MSG__BODY_GENERATE && pk.has_request_id
                           ? pk.request_id : 0;
        PD_WARN("event=request_refused client_req=%llu msg=\"%s\"", (unsigned long long)rid,
                err.msg);
        pd_net_send_error(rt->front, cid, cid_len, rid, PD__ERROR_CODE__RESOURCE_EXHAUSTED,
                          "router %s", err.msg);
    } else if (m == NULL) {
        pd_net_send_error(rt->front, cid, cid_len, 0, PD__ERROR_CODE__INVALID_ARGUMENT, "%s",
                          err.msg);
    }
    if (m == NULL) {
        pd_fault_leave();
        return;
    }
    switch (m->body_case) {
    case PD__MSG__BODY_HEARTBEAT: break; /* a beat: noted above, never answered */
    case PD__MSG__BODY_GENERATE: rt_on_generate(rt, cid, cid_len, m->generate); break;
    case PD__MSG__BODY_CANCEL: rt_on_cancel(rt, cid, cid_len, m->cancel); break;
    case PD__MSG__BODY_STATUS_REQUEST: rt_on_status(rt, cid, cid_len); break;
    case PD__MSG__BODY_DRAIN: rt_on_drain_request(rt, cid, cid_len, m->drain); break;
    default:
        pd_net_send_error(rt->front, cid, cid_len, 0, PD__ERROR_CODE__INVALID_ARGUMENT,
                          "message type '%s' is not accepted on the client socket",
                          pd_net_body_name(m->body_case));
        break;
    }
    pd_net_msg_free(&rt->alloc, m);
    pd_fault_leave();
}

static void handle_front(rt_t *rt)
{
    pd_err_t err = { 0 };
    pd_net_in_t *in = rt->in;
    for (int budget = 0; budget < 256; budget++) {
        int rc = pd_net_recv(rt->front, in, &err);
        if (rc <= 0)
            return;
        const uint8_t *cid = zmq_msg_data(&in->frames[0]);
        size_t cid_len = zmq_msg_size(&in->frames[0]);
        if (in->n_frames != 2 || in->truncated || cid_len == 0 || cid_len > PD_NET_ID_MAX) {
            if (in->n_frames >= 1 && cid_len > 0 && cid_len <= PD_NET_ID_MAX)
                pd_net_send_error(rt->front, cid, cid_len, 0, PD__ERROR_CODE__INVALID_ARGUMENT,
                                  "expected one frame per message, got %d", in->n_frames - 1);
            pd_net_in_close(in);
            continue;
        }
        rt_on_client_payload(rt, cid, cid_len, zmq_msg_data(&in->frames[1]),
                             zmq_msg_size(&in->frames[1]));
        pd_net_in_close(in);
    }
}

/* ====== Worker socket ====== */

void rt_on_worker_payload(rt_t *rt, const uint8_t *zid, size_t zlen, const void *data,
                          size_t len)
{
    pd_err_t err = { 0 };
    Pd__Msg *m = pd_net_unpack(&rt->alloc, data, len, &err);
    if (m == NULL) {
        PD_WARN("event=bad_worker_message msg=\"%s\"", err.msg);
        pd_net_send_error(rt->back, zid, zlen, 0, PD__ERROR_CODE__INVALID_ARGUMENT, "%s",
                          err.msg);
        return;
    }
    int wi = rt_worker_by_zid(rt, zid, zlen);
    if (m->body_case == PD__MSG__BODY_REGISTER) {
        rt_on_register(rt, zid, zlen, m->register_);
    } else if (wi < 0) {
        PD_WARN("event=unknown_worker type=%s", pd_net_body_name(m->body_case));
        pd_net_send_error(rt->back, zid, zlen, 0, PD__ERROR_CODE__UNAVAILABLE,
                          "unknown worker: register first");
    } else {
        rt->workers[wi].last_seen_ms = pd_net_now_ms();
        switch (m->body_case) {
        case PD__MSG__BODY_HEARTBEAT:
            rt_on_heartbeat(rt, &rt->workers[wi], m->heartbeat);
            rt_prefix_on_heartbeat(rt, wi, m->heartbeat);
            break;
        case PD__MSG__BODY_KV_EVENTS: rt_prefix_on_events(rt, wi, m->kv_events); break;
        case PD__MSG__BODY_TOKENS: rt_on_tokens(rt, wi, m->tokens); break;
        case PD__MSG__BODY_PREEMPTED: rt_on_preempted(rt, wi, m->preempted); break;
        case PD__MSG__BODY_ERROR: rt_on_worker_error(rt, wi, m->error); break;
        case PD__MSG__BODY_DRAIN: rt_worker_drop(rt, wi, "left (drained)"); break;
        default:
            PD_WARN("event=unexpected_message worker=%s type=%s", rt->workers[wi].id,
                    pd_net_body_name(m->body_case));
            pd_net_send_error(rt->back, zid, zlen, 0, PD__ERROR_CODE__INVALID_ARGUMENT,
                              "message type '%s' is not accepted on the worker socket",
                              pd_net_body_name(m->body_case));
            break;
        }
    }
    pd_net_msg_free(&rt->alloc, m);
}

static void handle_back(rt_t *rt)
{
    pd_err_t err = { 0 };
    pd_net_in_t *in = rt->in;
    for (int budget = 0; budget < 256; budget++) {
        int rc = pd_net_recv(rt->back, in, &err);
        if (rc <= 0)
            return;
        const uint8_t *zid = zmq_msg_data(&in->frames[0]);
        size_t zlen = zmq_msg_size(&in->frames[0]);
        if (in->n_frames != 2 || in->truncated || zlen == 0 || zlen > PD_NET_ID_MAX) {
            PD_WARN("event=bad_worker_message frames=%d", in->n_frames);
            pd_net_in_close(in);
            continue;
        }
        rt_on_worker_payload(rt, zid, zlen, zmq_msg_data(&in->frames[1]),
                             zmq_msg_size(&in->frames[1]));
        pd_net_in_close(in);
    }
}

/* ====== Timers ====== */

static void timers(rt_t *rt)
{
    uint64_t now_ms = pd_net_now_ms();
    if (rt->health)
        pd_proc_health(rt->health, "serving", now_ms, rt->cfg.router.heartbeat_ms);
    if (now_ms - rt->last_hb_ms >= rt->cfg.router.heartbeat_ms) {
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
    if (now_ms - rt->last_sweep_ms < 10)
        return;
    rt->last_sweep_ms = now_ms;
    clients_check(rt, now_ms);
    uint64_t now = pd_net_now_us();
    rt_req_retry(rt, now);
    for (uint32_t i = 0; i < rt->n_slots; i++) {
        rt_req_t *r = &rt->reqs[i];
        if (r->state == RQ_FREE)
            continue;
        if (now > r->deadline_us && !r->finished) {
            if (!rt_have_workers(rt))
                rt_req_fail(rt, r, PD__ERROR_CODE__UNAVAILABLE,
                         "no workers available before the deadline");
            else
                rt_req_fail(rt, r, PD__ERROR_CODE__DEADLINE_EXCEEDED,
                         "deadline of %llu ms exceeded after %u tokens",
                         (unsigned long long)((r->deadline_us - r->t_accept_us) / 1000u), r->n_gen);
        }
    }
    rt_dispatch(rt);
}

/* ====== Reactor ====== */

int rt_run(rt_t *rt)
{
    zmq_pollitem_t items[3] = {
        { rt->front, 0, ZMQ_POLLIN, 0 },
        { rt->back, 0, ZMQ_POLLIN, 0 },
        { rt->zap ? pd_zap_socket(rt->zap) : NULL, 0, ZMQ_POLLIN, 0 },
    };
    while (!*rt->stop) {
        int rc = zmq_poll(items, rt->zap ? 3 : 2, 10);
        if (rc > 0 && rt->zap && (items[2].revents & ZMQ_POLLIN))
            pd_zap_handle(rt->zap);
        if (rc < 0 && errno != EINTR) {
            PD_ERROR("event=poll_failed msg=\"%s\"", zmq_strerror(errno));
            return PD_EIO;
        }
        if (rc > 0 && (items[1].revents & ZMQ_POLLIN))
            handle_back(rt);
        if (rc > 0 && (items[0].revents & ZMQ_POLLIN))
            handle_front(rt);
        timers(rt);
    }
    PD_INFO("event=stopping active=%u", rt->n_active);
    return 0;
}

