/* wkhost.c -- the worker host: router link, dispatch, reactor. See wkhost.h. */
#include "runtime/wkhost.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/fault.h"
#include "base/log.h"
#include "runtime/net.h"

#define WK_OUTBOX 4096      /* messages to the router waiting on back-pressure */
#define WK_MAX_POLL 80      /* poll items: the router, the roles' sockets */

typedef struct {
    void *data;
    size_t len;
} wk_out_t;

struct pd_wkhost {
    const pd_config_t *cfg;
    char id[64];
    volatile sig_atomic_t *stop;
    pd_proc_health_t *health;  /* --health-file, or NULL */
    bool draining;
    bool refused;              /* the router refused our Register */
    uint64_t drain_deadline_ms;
    pd_wkrole_t prefill, decode;
    pd_wkport_t port;
    /* Register */
    Pd__Role role;
    char kv_endpoint[PD_CFG_STR];
    uint64_t model_identity;
    char model_name[128];
    pd_worker_limits_t limits;
    bool prefix_caching;
    /* sockets */
    void *zctx;
    void *rsock;               /* DEALER to the router */
    pd_pb_alloc_t alloc;
    pd_net_in_t *in;
    wk_out_t outbox[WK_OUTBOX];
    uint32_t out_head, out_len;
    /* router link */
    bool registered;
    bool reg_sent;             /* the last Register left the socket */
    uint64_t last_router_ms, last_hb_ms, last_reg_ms;
    uint32_t hb_ms, liveness;
};

/* ====== Outbox ====== */

static void flush_outbox(pd_wkhost_t *h)
{
    while (h->out_len > 0) {
        wk_out_t *o = &h->outbox[h->out_head];
        if (zmq_send(h->rsock, o->data, o->len, ZMQ_DONTWAIT) < 0) {
            if (errno != EAGAIN)
                PD_WARN("event=router_send_failed msg=\"%s\"", zmq_strerror(errno));
            return;
        }
        free(o->data);
        h->out_head = (h->out_head + 1) % WK_OUTBOX;
        h->out_len--;
    }
}

static void drop_outbox(pd_wkhost_t *h)
{
    for (uint32_t i = 0; i < h->out_len; i++)
        free(h->outbox[(h->out_head + i) % WK_OUTBOX].data);
    h->out_len = 0;
}

static void port_send(void *host, const Pd__Msg *m)
{
    pd_wkhost_t *h = host;
    if (h->rsock == NULL)
        return;
    flush_outbox(h);
    if (h->out_len == 0) {
        pd_err_t err = { 0 };
        int rc = pd_net_send(h->rsock, NULL, 0, m, false, &err);
        if (rc == 0)
            return;
        if (rc != PD_EFULL) {
            PD_WARN("event=router_send_failed type=%s msg=\"%s\"", pd_net_body_name(m->body_case),
                    err.msg);
            return;
        }
    }
    /* Back-pressure: keep it, in order, for the next turn. */
    if (h->out_len == WK_OUTBOX) {
        PD_ERROR("event=router_outbox_full type=%s", pd_net_body_name(m->body_case));
        return;
    }
    size_t len = pd__msg__get_packed_size(m);
    void *buf = malloc(len ? len : 1);
    if (buf == NULL) {
        PD_ERROR("event=oom what=outbox");
        return;
    }
    pd__msg__pack(m, buf);
    h->outbox[(h->out_head + h->out_len) % WK_OUTBOX] = (wk_out_t){ buf, len };
    h->out_len++;
}

static uint64_t port_now_ms(void *host)
{
    (void)host;
    return pd_now_ms();
}

static uint32_t port_heartbeat_ms(void *host) { return ((pd_wkhost_t *)host)->hb_ms; }

/* ====== Router link ====== */

static void send_register(pd_wkhost_t *h)
{
    Pd__Register r = PD__REGISTER__INIT;
    r.has_protocol_version = r.has_role = r.has_model_identity = true;
    r.protocol_version = PD_PROTOCOL_VERSION;
    r.worker_id = h->id;
    r.role = h->role;
    r.kv_endpoint = h->kv_endpoint;
    r.model_identity = h->model_identity;
    r.model_name = h->model_name;
    pd_codec_limits_to_pb(&h->limits, &r);
    r.has_prefix_caching = true;
    r.prefix_caching = h->prefix_caching;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_REGISTER;
    m.register_ = &r;
    pd_err_t err = { 0 };
    /* Not through the outbox: a register that cannot go now is simply
     * sent again by the timer. */
    h->reg_sent = pd_net_send(h->rsock, NULL, 0, &m, false, &err) == 0;
    if (h->reg_sent)
        PD_DEBUG("event=register_sent router=%s", h->cfg->worker.router);
    h->last_reg_ms = pd_now_ms();
}

static uint32_t role_held(const pd_wkrole_t *r) { return r->ops ? r->ops->held(r->self) : 0; }

/* The heartbeat's load: each role's share, summed (a colocated worker's
 * roles share one KV cache: its blocks are counted once). */
static void gather_load(const pd_wkhost_t *h, pd_worker_load_t *l)
{
    memset(l, 0, sizeof *l);
    const pd_wkrole_t *roles[2] = { &h->prefill, &h->decode };
    for (int i = 0; i < 2; i++) {
        if (roles[i]->ops == NULL)
            continue;
        pd_worker_load_t r;
        memset(&r, 0, sizeof r);
        roles[i]->ops->load(roles[i]->self, &r);
        l->queued_prefill_tokens += r.queued_prefill_tokens;
        l->running_seqs += r.running_seqs;
        l->waiting_seqs += r.waiting_seqs;
        if (r.total_blocks) {
            l->free_blocks = r.free_blocks;
            l->total_blocks = r.total_blocks;
        }
        pd_worker_counters_t *c = &l->counters;
        const pd_worker_counters_t *k = &r.counters;
        c->steps += k->steps;
        c->multi_seq_steps += k->multi_seq_steps;
        c->joins_while_running += k->joins_while_running;
        c->retirements += k->retirements;
        c->preemptions += k->preemptions;
        c->prefill_batches += k->prefill_batches;
        c->prefill_multi += k->prefill_multi;
        c->prefill_tokens += k->prefill_tokens;
        c->kv_sent_bytes += k->kv_sent_bytes;
        c->kv_recv_bytes += k->kv_recv_bytes;
        c->kv_rejected += k->kv_rejected;
        c->decode_tokens += k->decode_tokens;
        c->max_running += k->max_running;
        c->kv_transfers += k->kv_transfers;
        c->kv_transfer_us += k->kv_transfer_us;
        c->prefill_us += k->prefill_us;
        c->decode_us += k->decode_us;
        c->prefill_pass_tokens += k->prefill_pass_tokens;
        c->prefix_queries += k->prefix_queries;
        c->prefix_hits += k->prefix_hits;
        c->prefix_requests += k->prefix_requests;
        c->prefix_evictions += k->prefix_evictions;
        c->prefix_cached_blocks += k->prefix_cached_blocks;
        if (r.kv_events_seq > l->kv_events_seq)
            l->kv_events_seq = r.kv_events_seq;
    }
    l->draining = h->draining;
}

/* The roles' prefix cache events to the router (registered only: the
 * router drops messages of a worker it does not know). */
static void kv_events(pd_wkhost_t *h)
{
    if (!h->registered)
        return;
    const pd_wkrole_t *roles[2] = { &h->prefill, &h->decode };
    for (int i = 0; i < 2; i++)
        if (roles[i]->ops && roles[i]->ops->kv_events)
            roles[i]->ops->kv_events(roles[i]->self);
}

static void send_heartbeat(pd_wkhost_t *h)
{
    kv_events(h); /* the heartbeat's kv_events_seq is then the last one sent */
    pd_worker_load_t l;
    gather_load(h, &l);
    Pd__Heartbeat hb;
    Pd__WorkerCounters c;
    pd_codec_load_to_pb(&l, &hb, &c);
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_HEARTBEAT;
    m.heartbeat = &hb;
    port_send(h, &m);
    h->last_hb_ms = pd_now_ms();
}

static int connect_router(pd_wkhost_t *h, pd_err_t *err)
{
    pd_net_opts_t o;
    pd_net_opts_from_config(&o, h->cfg);
    h->rsock = pd_net_socket(h->zctx, ZMQ_DEALER, &o, err);
    if (h->rsock == NULL)
        return PD_EIO;
    int rc = pd_net_connect(h->rsock, h->cfg->worker.router, err);
    if (rc)
        return rc;
    h->registered = false;
    h->last_router_ms = pd_now_ms();
    send_register(h);
    return 0;
}

/* The router that gave us our work is gone (why): its requests are
 * orphans nobody will read. Drop them all, freeing their blocks, and say
 * what was held. */
static void drop_router_work(pd_wkhost_t *h, const char *why)
{
    char held[2][160] = { "", "" };
    if (h->prefill.ops)
        h->prefill.ops->drop_all(h->prefill.self, held[0], sizeof held[0]);
    if (h->decode.ops)
        h->decode.ops->drop_all(h->decode.self, held[1], sizeof held[1]);
    pd_worker_load_t l;
    gather_load(h, &l);
    PD_WARN("event=dropped_orphans why=%s %s%s%s free_blocks=%u/%u", why, held[0],
            held[0][0] && held[1][0] ? " " : "", held[1], l.free_blocks, l.total_blocks);
}

/* The router went silent: whatever it had given us is its to re-dispatch,
 * so drop it all and register again on a fresh connection. */
static void reconnect_router(pd_wkhost_t *h)
{
    PD_WARN("event=router_lost router=%s silent_ms=%llu", h->cfg->worker.router,
            (unsigned long long)(pd_now_ms() - h->last_router_ms));
    drop_router_work(h, "router_silent");
    drop_outbox(h);
    pd_net_close(h->rsock);
    h->rsock = NULL;
    pd_err_t err = { 0 };
    if (connect_router(h, &err) != 0)
        PD_ERROR("event=reconnect_failed msg=\"%s\"", err.msg);
}

static void on_register_reply(pd_wkhost_t *h, const Pd__RegisterReply *r)
{
    if (!r->has_accepted || !r->accepted) {
        PD_ERROR("event=refused_by_router router=%s reason=\"%s\"", h->cfg->worker.router,
                 r->reason ? r->reason : "?");
        *h->stop = 1;
        h->refused = true;
        return;
    }
    h->registered = true;
    if (r->has_heartbeat_ms && r->heartbeat_ms >= 10 && r->heartbeat_ms <= 60000)
        h->hb_ms = r->heartbeat_ms;
    if (r->has_liveness && r->liveness >= 1 && r->liveness <= 100)
        h->liveness = r->liveness;
    pd_worker_load_t l;
    gather_load(h, &l);
    PD_INFO("event=registered router=%s role=%d kv=%s blocks=%u", h->cfg->worker.router,
            (int)h->role, h->kv_endpoint[0] ? h->kv_endpoint : "-", l.total_blocks);
    send_heartbeat(h);
}

/* ====== Dispatch ====== */

static void on_prefill_task(pd_wkhost_t *h, const Pd__Msg *m)
{
    const Pd__PrefillTask *t = m->prefill;
    if (h->prefill.ops == NULL)
        pd_wkport_error(&h->port, t->request_id, PD__ERROR_CODE__INVALID_ARGUMENT,
                        "worker %s is a decode worker: no prefill tasks", h->id);
    else if (h->draining)
        pd_wkport_preempted(&h->port, t->request_id, t->epoch,
                            t->params ? t->params->n_generated : 0, "worker draining");
    else
        h->prefill.ops->on_task(h->prefill.self, m);
}

static void on_decode_task(pd_wkhost_t *h, const Pd__Msg *m)
{
    if (h->decode.ops == NULL)
        pd_wkport_error(&h->port, m->decode->request_id, PD__ERROR_CODE__INVALID_ARGUMENT,
                        "worker %s is a prefill worker: no decode tasks", h->id);
    else
        h->decode.ops->on_task(h->decode.self, m);
}

static void on_router_msg(pd_wkhost_t *h, const Pd__Msg *m)
{
    switch (m->body_case) {
    case PD__MSG__BODY_REGISTER_REPLY: on_register_reply(h, m->register_reply); break;
    case PD__MSG__BODY_HEARTBEAT: break;
    case PD__MSG__BODY_PREFILL: on_prefill_task(h, m); break;
    case PD__MSG__BODY_DECODE: on_decode_task(h, m); break;
    case PD__MSG__BODY_CANCEL:
        if (h->prefill.ops)
            h->prefill.ops->on_cancel(h->prefill.self, m->cancel->request_id, m->cancel->epoch);
        if (h->decode.ops)
            h->decode.ops->on_cancel(h->decode.self, m->cancel->request_id, m->cancel->epoch);
        break;
    case PD__MSG__BODY_KV_RESYNC:
        if (h->prefill.ops && h->prefill.ops->kv_resync) {
            PD_DEBUG("event=kv_resync_asked last_seq=%llu",
                     (unsigned long long)m->kv_resync->last_seq);
            h->prefill.ops->kv_resync(h->prefill.self);
            kv_events(h);
        }
        break;
    case PD__MSG__BODY_DRAIN:
        if (!h->draining) {
            PD_INFO("event=drain_requested");
            *h->stop = 1;
        }
        break;
    case PD__MSG__BODY_ERROR:
        PD_WARN("event=router_error code=%d msg=\"%s\"", (int)m->error->code,
                m->error->message ? m->error->message : "");
        if (m->error->code == PD__ERROR_CODE__UNAVAILABLE && h->registered) {
            /* "unknown worker: register first" -- the router restarted. */
            h->registered = false;
            drop_router_work(h, "router_restarted");
            send_register(h);
        }
        break;
    default:
        PD_WARN("event=unexpected_message from=router type=%s", pd_net_body_name(m->body_case));
        break;
    }
}

void pd_wkhost_on_router_payload(pd_wkhost_t *h, const void *data, size_t len)
{
    pd_err_t err = { 0 };
    pd_net_peek_t pk;
    if (pd_fault_armed(PD_FAULT_DECODE_ADMIT)) { /* fault.h test hook */
        pd_net_peek(data, len, &pk);
        if (pk.body_case == PD__MSG__BODY_DECODE && pk.has_request_id)
            pd_fault_enter(PD_FAULT_DECODE_ADMIT, pk.request_id);
    }
    Pd__Msg *m = pd_net_unpack(&h->alloc, data, len, &err);
    if (m == NULL && err.code == PD_ENOMEM) {
        /* A task we could not even decode must still end: the router
         * fails the request (it would otherwise wait for its deadline). */
        pd_net_peek(data, len, &pk);
        PD_WARN("event=bad_router_message type=%s msg=\"%s\"", pd_net_body_name(pk.body_case),
                err.msg);
        if ((pk.body_case == PD__MSG__BODY_DECODE || pk.body_case == PD__MSG__BODY_PREFILL) &&
            pk.has_request_id && pk.request_id != 0)
            pd_wkport_error(&h->port, pk.request_id, PD__ERROR_CODE__RESOURCE_EXHAUSTED,
                            "%s task: %s", pd_net_body_name(pk.body_case), err.msg);
    } else if (m == NULL) {
        PD_WARN("event=bad_router_message msg=\"%s\"", err.msg);
    } else {
        on_router_msg(h, m);
    }
    pd_net_msg_free(&h->alloc, m);
    pd_fault_leave();
}

static void handle_router(pd_wkhost_t *h)
{
    pd_err_t err = { 0 };
    for (int budget = 0; budget < 256 && h->rsock; budget++) {
        int rc = pd_net_recv(h->rsock, h->in, &err);
        if (rc <= 0)
            return;
        h->last_router_ms = pd_now_ms();
        if (h->in->n_frames != 1 || h->in->truncated) {
            PD_WARN("event=bad_router_message frames=%d", h->in->n_frames);
            pd_net_in_close(h->in);
            continue;
        }
        pd_wkhost_on_router_payload(h, zmq_msg_data(&h->in->frames[0]),
                                    zmq_msg_size(&h->in->frames[0]));
        pd_net_in_close(h->in);
    }
}

/* ====== Lifetime ====== */

pd_wkhost_t *pd_wkhost_new(const pd_config_t *cfg, const char *id,
                           volatile sig_atomic_t *stop, pd_err_t *err)
{
    pd_wkhost_t *h = calloc(1, sizeof *h);
    if (h == NULL) {
        pd_err_set(err, PD_ENOMEM, "worker host");
        return NULL;
    }
    h->cfg = cfg;
    snprintf(h->id, sizeof h->id, "%s", id);
    h->stop = stop;
    h->port = (pd_wkport_t){ h, port_send, port_now_ms, port_heartbeat_ms };
    h->hb_ms = cfg->worker.heartbeat_ms ? cfg->worker.heartbeat_ms : 500;
    h->liveness = cfg->worker.liveness ? cfg->worker.liveness : 3;
    pd_pb_alloc_init(&h->alloc,
                     (size_t)cfg->net.max_msg_bytes * PD_PB_BYTES_PER_WIRE_BYTE + PD_PB_BASE_BUDGET);
    h->in = malloc(sizeof *h->in);
    h->zctx = zmq_ctx_new();
    if (h->in == NULL || h->zctx == NULL) {
        pd_err_set(err, h->in ? PD_EIO : PD_ENOMEM, "%s",
                   h->in ? "zmq_ctx_new failed" : "worker host");
        pd_wkhost_free(h);
        return NULL;
    }
    h->in->n_frames = 0;
    return h;
}

void pd_wkhost_free(pd_wkhost_t *h)
{
    if (h == NULL)
        return;
    pd_net_close(h->rsock);
    h->rsock = NULL;
    if (h->prefill.ops)
        h->prefill.ops->close(h->prefill.self);
    if (h->decode.ops)
        h->decode.ops->close(h->decode.self);
    drop_outbox(h);
    /* Blocks still referenced by ZeroMQ (zero-copy frames) must outlive the
     * context: zmq_ctx_term waits for the I/O threads to let go. */
    if (h->zctx)
        zmq_ctx_term(h->zctx);
    free(h->in);
    free(h);
}

const pd_wkport_t *pd_wkhost_port(pd_wkhost_t *h) { return &h->port; }

void *pd_wkhost_zctx(pd_wkhost_t *h) { return h->zctx; }

void pd_wkhost_set_health(pd_wkhost_t *h, pd_proc_health_t *health) { h->health = health; }

void pd_wkhost_set_roles(pd_wkhost_t *h, pd_wkrole_t prefill, pd_wkrole_t decode)
{
    h->prefill = prefill;
    h->decode = decode;
}

int pd_wkhost_start(pd_wkhost_t *h, const pd_wkhost_info_t *info, pd_err_t *err)
{
    h->role = info->role;
    pd_net_copy_str(h->kv_endpoint, sizeof h->kv_endpoint, info->kv_endpoint);
    h->model_identity = info->model_identity;
    pd_net_copy_str(h->model_name, sizeof h->model_name, info->model_name);
    h->limits = info->limits;
    h->prefix_caching = info->prefix_caching;
    return connect_router(h, err);
}

void pd_wkhost_test_reset(pd_wkhost_t *h, bool registered)
{
    h->registered = registered;
    h->draining = false;
    drop_outbox(h);
}

/* ====== Reactor ====== */

static void timers(pd_wkhost_t *h)
{
    /* Read what queued up during a long forward pass first: the router's
     * beats are in there, and its silence must not be misjudged. */
    handle_router(h);
    uint64_t now = pd_now_ms();
    flush_outbox(h);
    /* Not connected yet (ZMQ_IMMEDIATE refused the send): try again soon;
     * sent but unanswered: once per beat. */
    if (!h->registered && now - h->last_reg_ms >= (h->reg_sent ? h->hb_ms : 5))
        send_register(h);
    if (h->registered && now - h->last_hb_ms >= h->hb_ms)
        send_heartbeat(h);
    if (now - h->last_router_ms > (uint64_t)h->hb_ms * h->liveness && !h->draining)
        reconnect_router(h);
    if (h->health)
        pd_proc_health(h->health,
                       h->draining ? "draining" : h->registered ? "registered" : "registering",
                       now, h->hb_ms);
    if (h->prefill.ops)
        h->prefill.ops->timers(h->prefill.self);
    if (h->decode.ops)
        h->decode.ops->timers(h->decode.self);
    kv_events(h);
}

static bool role_busy(const pd_wkrole_t *r) { return r->ops && r->ops->busy(r->self); }
static bool role_ready(const pd_wkrole_t *r) { return r->ops && r->ops->ready(r->self); }

/* Starts draining on the first stop; true when the loop should end. */
static bool check_drain(pd_wkhost_t *h)
{
    if (*h->stop && !h->draining) {
        h->draining = true;
        h->drain_deadline_ms = pd_now_ms() + h->cfg->worker.drain_timeout_ms;
        /* What it holds now is what the drain must finish (tests check it). */
        PD_INFO("event=draining deadline_ms=%u prefill_tasks=%u decode_seqs=%u",
                h->cfg->worker.drain_timeout_ms, role_held(&h->prefill), role_held(&h->decode));
        if (h->registered)
            send_heartbeat(h);
    }
    if (!h->draining)
        return false;
    bool idle = !role_busy(&h->prefill) && !role_busy(&h->decode);
    return idle || !h->registered || pd_now_ms() >= h->drain_deadline_ms;
}

int pd_wkhost_run(pd_wkhost_t *h)
{
    zmq_pollitem_t items[WK_MAX_POLL];
    pd_wkrole_t *roles[2] = { &h->prefill, &h->decode };
    while (!check_drain(h)) {
        int n = 0;
        items[n++] = (zmq_pollitem_t){ h->rsock, 0, ZMQ_POLLIN, 0 };
        for (int i = 0; i < 2; i++)
            if (roles[i]->ops)
                n += roles[i]->ops->sockets(roles[i]->self, items + n, WK_MAX_POLL - n);
        bool busy = role_ready(&h->prefill) || role_ready(&h->decode);
        int rc = zmq_poll(items, n, busy ? 0 : 5);
        if (rc < 0 && errno != EINTR) {
            PD_ERROR("event=poll_failed msg=\"%s\"", zmq_strerror(errno));
            return 1;
        }
        handle_router(h);
        for (int i = 0; i < 2; i++)
            if (roles[i]->ops)
                roles[i]->ops->poll(roles[i]->self);
        for (int i = 0; i < 2; i++)
            if (role_ready(roles[i]))
                roles[i]->ops->run(roles[i]->self);
        timers(h);
    }
    if (h->registered) {
        /* Leaving: the router forgets us now rather than after missed beats. */
        Pd__Drain d = PD__DRAIN__INIT;
        Pd__Msg m = PD__MSG__INIT;
        m.body_case = PD__MSG__BODY_DRAIN;
        m.drain = &d;
        flush_outbox(h);
        pd_net_send(h->rsock, NULL, 0, &m, false, NULL);
    }
    PD_INFO("event=stopped prefill_busy=%d decode_busy=%d", role_busy(&h->prefill),
            role_busy(&h->decode));
    return h->refused ? 1 : 0;
}
