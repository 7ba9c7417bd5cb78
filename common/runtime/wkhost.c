/* wkhost.c -- the worker host: dispatch and the compute loop; the router
 * link is wklink.c, on its own thread. See wkhost.h. */
#include "runtime/wkhost.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/clock.h"
#include "base/fault.h"
#include "base/log.h"
#include "runtime/net.h"

#define WK_MAX_POLL 80      /* poll items: the link, the roles' sockets */
#define WK_STALL_ENV "PD_TEST_STALL"

struct pd_wkhost {
    const pd_config_t *cfg;
    char id[64];
    pd_wkengine_t *eng;
    volatile sig_atomic_t *stop;
    pd_proc_health_t *health;  /* --health-file, or NULL */
    bool draining;
    bool refused;              /* the router refused our Register */
    uint64_t drain_deadline_ms;
    uint64_t drain_prefill0, drain_decode0; /* tokens computed before the drain began */
    pd_wkrole_t prefill, decode;
    pd_wkport_t port;
    void *zctx;
    pd_wklink_t *link;         /* NULL until started */
    uint32_t gen;              /* the link generation our work belongs to */
    pd_pb_alloc_t alloc;
    uint64_t passes;           /* forward passes run */
    uint64_t mixed_steps;      /* of which mixing decode tokens with a prefill chunk */
    /* PD_TEST_STALL=K:MS (docs/config.md): before its K-th pass the compute
     * thread stalls MS ms (a planted long pass, or a hang). 0: off. */
    uint64_t stall_at_pass;
    uint32_t stall_ms;
};

/* ====== Port ====== */

static void port_send(void *host, const Pd__Msg *m)
{
    pd_wkhost_t *h = host;
    if (h->link == NULL)
        return;
    pd_err_t err = { 0 };
    if (pd_wklink_send(h->link, h->gen, m, &err) != 0)
        PD_WARN("event=router_send_failed type=%s msg=\"%s\"", pd_net_body_name(m->body_case),
                err.msg);
}

static uint64_t port_now_ms(void *host)
{
    (void)host;
    return pd_now_ms();
}

/* ====== Load ====== */

static void add_counters(pd_worker_counters_t *c, const pd_worker_counters_t *k)
{
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
    c->kv_streams_dropped += k->kv_streams_dropped;
    c->kv_layers += k->kv_layers;
}

static uint32_t role_held(const pd_wkrole_t *r) { return r->ops ? r->ops->held(r->self) : 0; }

/* The heartbeat's load: each role's share, summed (a colocated worker's
 * roles share one KV cache: its blocks are counted once). The compute
 * thread's progress is the link's to add. */
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
        add_counters(&l->counters, &r.counters);
        if (r.kv_events_seq > l->kv_events_seq)
            l->kv_events_seq = r.kv_events_seq;
    }
    l->counters.mixed_steps = h->mixed_steps;
    l->draining = h->draining;
}

/* The roles' prefix cache events to the router, from this thread (they
 * read the KV cache): registered only, since the router drops messages of a
 * worker it does not know. The seq published after is then the last one
 * sent; the link puts no heartbeat carrying it before those messages
 * (wklink.h). */
static void kv_events(pd_wkhost_t *h)
{
    if (h->link == NULL || !pd_wklink_registered(h->link))
        return;
    const pd_wkrole_t *roles[2] = { &h->prefill, &h->decode };
    for (int i = 0; i < 2; i++)
        if (roles[i]->ops && roles[i]->ops->kv_events)
            roles[i]->ops->kv_events(roles[i]->self);
}

static void publish(pd_wkhost_t *h)
{
    if (h->link == NULL)
        return;
    pd_worker_load_t l;
    gather_load(h, &l);
    pd_wklink_publish(h->link, &l);
}

/* ====== Dispatch ====== */

void pd_wkhost_drop_work(pd_wkhost_t *h, uint32_t gen, const char *why)
{
    char held[2][160] = { "", "" };
    if (h->prefill.ops)
        h->prefill.ops->drop_all(h->prefill.self, held[0], sizeof held[0]);
    if (h->decode.ops)
        h->decode.ops->drop_all(h->decode.self, held[1], sizeof held[1]);
    h->gen = gen;
    pd_worker_load_t l;
    gather_load(h, &l);
    PD_WARN("event=dropped_orphans why=%s %s%s%s free_blocks=%u/%u", why, held[0],
            held[0][0] && held[1][0] ? " " : "", held[1], l.free_blocks, l.total_blocks);
}

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

/* The roles' messages. The link keeps the router link's own (RegisterReply,
 * Heartbeat, Error); one that reaches us anyway (the fuzz target) is only
 * logged. */
static void on_router_msg(pd_wkhost_t *h, const Pd__Msg *m)
{
    switch (m->body_case) {
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
    case PD__MSG__BODY_KV_PEERS:
        if (h->prefill.ops && h->prefill.ops->on_peers)
            h->prefill.ops->on_peers(h->prefill.self, m->kv_peers);
        break;
    case PD__MSG__BODY_DRAIN:
        if (!h->draining) {
            PD_INFO("event=drain_requested");
            *h->stop = 1;
        }
        break;
    case PD__MSG__BODY_REGISTER_REPLY:
    case PD__MSG__BODY_HEARTBEAT: break;
    case PD__MSG__BODY_ERROR:
        PD_WARN("event=router_error code=%d msg=\"%s\"", (int)m->error->code,
                m->error->message ? m->error->message : "");
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

/* What the link passed on since the last turn. */
static void handle_link(pd_wkhost_t *h)
{
    for (int budget = 0; budget < 256; budget++) {
        pd_wklink_event_t ev;
        int rc = pd_wklink_recv(h->link, &ev);
        if (rc <= 0) {
            zmq_msg_close(&ev.body);
            return;
        }
        char why[64];
        switch (ev.kind) {
        case PD_WKLINK_ROUTER:
            pd_wkhost_on_router_payload(h, zmq_msg_data(&ev.body), zmq_msg_size(&ev.body));
            break;
        case PD_WKLINK_DROP:
            snprintf(why, sizeof why, "%.*s", (int)zmq_msg_size(&ev.body),
                     (const char *)zmq_msg_data(&ev.body));
            pd_wkhost_drop_work(h, ev.gen, why);
            break;
        case PD_WKLINK_REFUSED:
            h->refused = true;
            *h->stop = 1;
            break;
        case PD_WKLINK_NONE: break;
        }
        zmq_msg_close(&ev.body);
    }
}

/* ====== Lifetime ====== */

/* PD_TEST_STALL=K:MS, K >= 1 and MS >= 1; unset or empty: off. */
static int read_stall_hook(pd_wkhost_t *h, pd_err_t *err)
{
    const char *v = getenv(WK_STALL_ENV);
    if (v == NULL || v[0] == '\0')
        return 0;
    unsigned long long k = 0, ms = 0;
    char tail = 0;
    if (sscanf(v, "%llu:%llu%c", &k, &ms, &tail) != 2 || k < 1 || ms < 1 || ms > 86400000ull)
        return pd_err_set(err, PD_EINVAL, "%s: expected K:MS (pass K >= 1, 1..86400000 ms), "
                          "got '%s'", WK_STALL_ENV, v);
    h->stall_at_pass = k;
    h->stall_ms = (uint32_t)ms;
    PD_WARN("event=test_hook %s=%llu:%llu", WK_STALL_ENV, k, ms);
    return 0;
}

pd_wkhost_t *pd_wkhost_new(const pd_config_t *cfg, const char *id, pd_wkengine_t *eng,
                           volatile sig_atomic_t *stop, pd_err_t *err)
{
    pd_wkhost_t *h = calloc(1, sizeof *h);
    if (h == NULL) {
        pd_err_set(err, PD_ENOMEM, "worker host");
        return NULL;
    }
    h->cfg = cfg;
    snprintf(h->id, sizeof h->id, "%s", id);
    h->eng = eng;
    h->stop = stop;
    h->port = (pd_wkport_t){ h, port_send, port_now_ms };
    pd_pb_alloc_init(&h->alloc,
                     (size_t)cfg->net.max_msg_bytes * PD_PB_BYTES_PER_WIRE_BYTE + PD_PB_BASE_BUDGET);
    if (read_stall_hook(h, err) != 0) {
        free(h);
        return NULL;
    }
    h->zctx = zmq_ctx_new();
    if (h->zctx == NULL) {
        pd_err_set(err, PD_EIO, "zmq_ctx_new failed");
        free(h);
        return NULL;
    }
    return h;
}

void pd_wkhost_free(pd_wkhost_t *h)
{
    if (h == NULL)
        return;
    pd_wklink_stop(h->link);
    h->link = NULL;
    if (h->prefill.ops)
        h->prefill.ops->close(h->prefill.self);
    if (h->decode.ops)
        h->decode.ops->close(h->decode.self);
    /* Blocks still referenced by ZeroMQ (zero-copy frames) must outlive the
     * context: zmq_ctx_term waits for the I/O threads to let go. */
    if (h->zctx)
        zmq_ctx_term(h->zctx);
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
    pd_worker_load_t l;
    gather_load(h, &l);
    h->link = pd_wklink_start(h->cfg, h->id, h->zctx, info, h->health, &l, err);
    return h->link ? 0 : PD_EIO;
}

void pd_wkhost_test_reset(pd_wkhost_t *h) { h->draining = false; }

/* ====== The compute loop ====== */

static bool role_busy(const pd_wkrole_t *r) { return r->ops && r->ops->busy(r->self); }
static bool role_ready(const pd_wkrole_t *r) { return r->ops && r->ops->ready(r->self); }

/* The planted stall (PD_TEST_STALL) before pass number `pass`. */
static void test_stall(const pd_wkhost_t *h, uint64_t pass)
{
    if (pass != h->stall_at_pass)
        return;
    PD_WARN("event=test_stall pass=%llu ms=%u", (unsigned long long)pass, h->stall_ms);
    struct timespec ts = { h->stall_ms / 1000, (long)(h->stall_ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
    PD_WARN("event=test_stall_over pass=%llu", (unsigned long long)pass);
}

/* The forward passes of one turn. A colocated worker with
 * prefill.chunk_tokens mixes its running decode tokens with a prefill
 * chunk in one pass when both roles have work (so a long prompt never
 * holds up the streams); otherwise each ready role runs its own pass, a
 * prefill pass as large as prefill.max_batch_tokens allows. */
static void run_roles(pd_wkhost_t *h)
{
    bool pr = role_ready(&h->prefill), dr = role_ready(&h->decode);
    if (!pr && !dr)
        return;
    test_stall(h, ++h->passes);
    if (pr && dr && h->cfg->prefill.chunk_tokens > 0) {
        uint32_t n_pre = 0, budget = h->cfg->prefill.chunk_tokens;
        uint32_t rows = pd_wkrole_run_mixed(h->eng, h->decode, h->prefill, budget, &n_pre);
        h->mixed_steps += n_pre > 0 && rows > n_pre;
        PD_DEBUG("event=mixed_step decode_rows=%u prefill_rows=%u budget=%u", rows - n_pre, n_pre,
                 budget);
        return;
    }
    if (pr)
        pd_wkrole_run(h->eng, h->prefill);
    if (dr)
        pd_wkrole_run(h->eng, h->decode);
}

/* Starts draining on the first stop; true when the loop should end. */
static bool check_drain(pd_wkhost_t *h)
{
    if (*h->stop && !h->draining) {
        h->draining = true;
        h->drain_deadline_ms = pd_now_ms() + h->cfg->worker.drain_timeout_ms;
        /* What it holds now is what the drain must finish (tests check it). */
        PD_INFO("event=draining deadline_ms=%u prefill_tasks=%u decode_seqs=%u",
                h->cfg->worker.drain_timeout_ms, role_held(&h->prefill), role_held(&h->decode));
        pd_worker_load_t l;
        gather_load(h, &l);
        h->drain_prefill0 = l.counters.prefill_tokens;
        h->drain_decode0 = l.counters.decode_tokens;
        publish(h);
        pd_wklink_beat_now(h->link);
    }
    if (!h->draining)
        return false;
    bool idle = !role_busy(&h->prefill) && !role_busy(&h->decode);
    return idle || !pd_wklink_registered(h->link) || pd_now_ms() >= h->drain_deadline_ms;
}

int pd_wkhost_run(pd_wkhost_t *h)
{
    zmq_pollitem_t items[WK_MAX_POLL];
    pd_wkrole_t *roles[2] = { &h->prefill, &h->decode };
    int status = 0;
    while (!check_drain(h)) {
        int n = 0;
        items[n++] = (zmq_pollitem_t){ pd_wklink_socket(h->link), 0, ZMQ_POLLIN, 0 };
        for (int i = 0; i < 2; i++)
            if (roles[i]->ops)
                n += roles[i]->ops->sockets(roles[i]->self, items + n, WK_MAX_POLL - n);
        bool busy = role_ready(&h->prefill) || role_ready(&h->decode);
        publish(h);
        pd_wklink_turn_end(h->link);
        int rc = zmq_poll(items, n, busy ? 0 : 5);
        pd_wklink_turn_begin(h->link);
        if (rc < 0 && errno != EINTR) {
            PD_ERROR("event=poll_failed msg=\"%s\"", zmq_strerror(errno));
            status = 1;
            break;
        }
        handle_link(h);
        for (int i = 0; i < 2; i++)
            if (roles[i]->ops)
                roles[i]->ops->poll(roles[i]->self);
        run_roles(h);
        for (int i = 0; i < 2; i++)
            if (roles[i]->ops)
                roles[i]->ops->timers(roles[i]->self);
        kv_events(h);
    }
    publish(h);
    pd_wklink_turn_end(h->link);
    /* Leaving: the link sends the router a Drain (it forgets us now rather
     * than after missed beats) and ends. */
    pd_wklink_stop(h->link);
    h->link = NULL;
    /* What a drain finished: work the router had sent reaches the compute
     * thread through the link, possibly after the draining line counted. */
    pd_worker_load_t l;
    gather_load(h, &l);
    PD_INFO("event=stopped prefill_busy=%d decode_busy=%d drained_prefill_tokens=%llu "
            "drained_decode_tokens=%llu",
            role_busy(&h->prefill), role_busy(&h->decode),
            h->draining ? (unsigned long long)(l.counters.prefill_tokens - h->drain_prefill0) : 0ULL,
            h->draining ? (unsigned long long)(l.counters.decode_tokens - h->drain_decode0) : 0ULL);
    return status ? status : h->refused ? 1 : 0;
}
