/* pdclient.c -- see pdclient.h */
#include "pdclient.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "runtime/config.h"
#include "base/grow.h"
#include "runtime/net.h"

#define PD_CLIENT_DEFAULT_ROUTER "tcp://127.0.0.1:5555"
#define PD_CLIENT_MAX_INFLIGHT 65536
#define PD_CLIENT_GRACE_MS 5000 /* beyond a request's own deadline */

typedef struct {
    uint64_t id;
    uint64_t deadline_us; /* client-side give-up time: silence until then */
    uint64_t wait_us;     /* how long a silent stream is waited for */
    uint64_t conn_gen;    /* c->n_lost when it was sent */
    uint64_t end_us;      /* deadline + grace: never waited for beyond (0 = none) */
} inflight_t;

struct pd_client {
    void *zctx;
    void *sock;
    char addr[PD_CFG_STR];
    uint64_t next_id;
    uint32_t timeout_ms;
    /* Liveness (Paranoid Pirate, both ways) while requests are in flight:
     * we send a Heartbeat when we have sent nothing for hb_ivl_ms, and give
     * up on a router we have heard nothing from for hb_liveness intervals.
     * Both values are the router's (its Heartbeats carry them); until one
     * arrives, the config defaults (router.client_heartbeat_ms/liveness). */
    uint32_t hb_ivl_ms, hb_liveness;
    uint64_t last_tx_ms;  /* our last message to the router */
    uint64_t last_rx_ms;  /* the router's last message to us */
    uint64_t tick_ms;     /* our loop's last sign of life (see tick()) */
    inflight_t *fl;       /* (n_fl) requests without their final chunk */
    size_t n_fl, cap_fl;
    pd_pb_alloc_t alloc;
    pd_net_in_t *in;
    /* Connection watch (zmq_socket_monitor): a DEALER reconnects silently,
     * and a router that died (or restarted: its new instance knows nothing
     * of our requests) never answers what was in flight. Every disconnect
     * counts in n_lost; a request sent before it ends with UNAVAILABLE. */
    void *mon;
    uint64_t n_lost;
};

#define PD_CLIENT_MONITOR "inproc://pdclient-monitor" /* one per context */

const char *pd_status_name(int code)
{
    static const char *names[] = { "OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "UNAVAILABLE",
                                   "DEADLINE_EXCEEDED", "CANCELLED", "INTERNAL" };
    return code >= 0 && code <= 6 ? names[code] : "UNKNOWN";
}

const char *pd_finish_name(int reason)
{
    static const char *names[] = { "none", "length", "eos", "stop_id",
                                   "stop", "cancelled", "error", "context" };
    return reason >= 0 && reason <= 7 ? names[reason] : "unknown";
}

void pd_gen_request_default(pd_gen_request_t *r)
{
    memset(r, 0, sizeof *r);
    r->top_p = 1.0f;
    r->repetition_penalty = 1.0f;
    r->max_tokens = 16;
    r->stream = true;
}

pd_client_t *pd_client_new(const char *router_addr, pd_err_t *err)
{
    if (router_addr == NULL || router_addr[0] == '\0')
        router_addr = getenv("PD_ROUTER");
    if (router_addr == NULL || router_addr[0] == '\0')
        router_addr = PD_CLIENT_DEFAULT_ROUTER;
    if (strlen(router_addr) >= PD_CFG_STR) {
        pd_err_set(err, PD_EINVAL, "router address too long");
        return NULL;
    }
    pd_client_t *c = calloc(1, sizeof *c);
    pd_config_t *cfg = malloc(sizeof *cfg);
    if (c == NULL || cfg == NULL) {
        free(cfg);
        free(c);
        pd_err_set(err, PD_ENOMEM, "client");
        return NULL;
    }
    snprintf(c->addr, sizeof c->addr, "%s", router_addr);
    c->timeout_ms = 60000;
    /* Ids unique across clients of one process and restarts: time-seeded. */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    c->next_id = ((uint64_t)ts.tv_sec << 20) ^ ((uint64_t)ts.tv_nsec >> 10) ^
                 ((uint64_t)getpid() << 40);
    if (c->next_id == 0)
        c->next_id = 1;
    pd_config_default(cfg);
    c->hb_ivl_ms = cfg->router.client_heartbeat_ms;
    c->hb_liveness = cfg->router.client_liveness;
    pd_pb_alloc_init(&c->alloc,
                     (size_t)cfg->net.max_msg_bytes * PD_PB_BYTES_PER_WIRE_BYTE +
                         PD_PB_BASE_BUDGET);
    c->in = malloc(sizeof *c->in);
    c->zctx = zmq_ctx_new();
    if (c->in == NULL || c->zctx == NULL) {
        pd_err_set(err, PD_ENOMEM, "client context");
        goto fail;
    }
    c->in->n_frames = 0;
    pd_net_opts_t o;
    pd_net_opts_from_config(&o, cfg);
    o.linger_ms = 0; /* an abandoned client leaves nothing behind */
    /* CURVE from the environment: the router's public key and ours. */
    const char *sk = getenv("PD_CURVE_SERVER_KEY");
    if (sk && sk[0]) {
        const char *pk = getenv("PD_CURVE_PUBLIC_KEY"), *sec = getenv("PD_CURVE_SECRET_KEY");
        o.curve.on = true;
        snprintf(o.curve.server_public, sizeof o.curve.server_public, "%s", sk);
        snprintf(o.curve.client_public, sizeof o.curve.client_public, "%s", pk ? pk : "");
        snprintf(o.curve.client_secret, sizeof o.curve.client_secret, "%s", sec ? sec : "");
    }
    c->sock = pd_net_socket(c->zctx, ZMQ_DEALER, &o, err);
    if (c->sock == NULL)
        goto fail;
    int zero = 0;
    if (zmq_socket_monitor(c->sock, PD_CLIENT_MONITOR, ZMQ_EVENT_DISCONNECTED) != 0 ||
        (c->mon = zmq_socket(c->zctx, ZMQ_PAIR)) == NULL ||
        zmq_setsockopt(c->mon, ZMQ_LINGER, &zero, sizeof zero) != 0 ||
        zmq_connect(c->mon, PD_CLIENT_MONITOR) != 0) {
        pd_err_set(err, PD_EIO, "connection monitor: %s", zmq_strerror(errno));
        goto fail;
    }
    if (pd_net_connect(c->sock, c->addr, err) != 0)
        goto fail;
    free(cfg);
    return c;
fail:
    free(cfg);
    pd_client_free(c);
    return NULL;
}

void pd_client_free(pd_client_t *c)
{
    if (c == NULL)
        return;
    if (c->mon) {
        zmq_socket_monitor(c->sock, NULL, 0);
        zmq_close(c->mon);
    }
    pd_net_close(c->sock);
    if (c->zctx)
        zmq_ctx_term(c->zctx);
    free(c->fl);
    free(c->in);
    free(c);
}

void pd_client_set_timeout(pd_client_t *c, uint32_t timeout_ms) { c->timeout_ms = timeout_ms; }

size_t pd_client_inflight(const pd_client_t *c) { return c->n_fl; }

/* Counts the disconnects the monitor reported so far into c->n_lost. */
static void watch_connection(pd_client_t *c)
{
    for (;;) {
        zmq_msg_t ev, addr;
        zmq_msg_init(&ev);
        if (zmq_msg_recv(&ev, c->mon, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&ev);
            return;
        }
        /* Two frames: event id (2 bytes) + value (4), then the endpoint. */
        uint16_t id = 0;
        if (zmq_msg_size(&ev) >= 2)
            memcpy(&id, zmq_msg_data(&ev), 2);
        bool more = zmq_msg_more(&ev);
        zmq_msg_close(&ev);
        if (more) {
            zmq_msg_init(&addr);
            zmq_msg_recv(&addr, c->mon, 0);
            zmq_msg_close(&addr);
        }
        if (id == ZMQ_EVENT_DISCONNECTED)
            c->n_lost++;
    }
}

/* Sends m without blocking; a message sent is also a beat. */
static int send_now(pd_client_t *c, const Pd__Msg *m, pd_err_t *err)
{
    int rc = pd_net_send(c->sock, NULL, 0, m, false, err);
    if (rc == 0)
        c->last_tx_ms = pd_now_ms();
    return rc;
}

/* Sends m, waiting (up to timeout_ms) for the connection to the router to
 * come up: DEALER sockets queue nothing for peers not yet connected. */
static int send_wait(pd_client_t *c, const Pd__Msg *m, uint32_t timeout_ms, pd_err_t *err)
{
    uint64_t end = pd_now_ms() + timeout_ms;
    for (;;) {
        /* Drops before the send are not this message's: count them now. */
        watch_connection(c);
        int rc = send_now(c, m, err);
        if (rc != PD_EFULL)
            return rc;
        uint64_t now = pd_now_ms();
        if (now >= end)
            return pd_err_set(err, PD_EIO, "router %s not reachable within %u ms", c->addr,
                              timeout_ms);
        zmq_pollitem_t it = { c->sock, 0, ZMQ_POLLOUT, 0 };
        zmq_poll(&it, 1, (long)(end - now < 50 ? end - now : 50));
    }
}

static int inflight_find(const pd_client_t *c, uint64_t id)
{
    for (size_t i = 0; i < c->n_fl; i++)
        if (c->fl[i].id == id)
            return (int)i;
    return -1;
}

static void inflight_remove(pd_client_t *c, size_t i) { c->fl[i] = c->fl[--c->n_fl]; }

int pd_client_submit(pd_client_t *c, const pd_gen_request_t *req, uint64_t *id, pd_err_t *err)
{
    if (c->n_fl >= PD_CLIENT_MAX_INFLIGHT)
        return pd_err_set(err, PD_EFULL, "%zu requests in flight", c->n_fl);
    if (pd_grow((void **)&c->fl, &c->cap_fl, c->n_fl + 1, sizeof *c->fl, 16) != 0)
        return pd_err_set(err, PD_ENOMEM, "in-flight table");
    Pd__Sampling s = PD__SAMPLING__INIT;
    s.has_temperature = s.has_top_k = s.has_top_p = s.has_min_p = s.has_seed = true;
    s.has_repetition_penalty = s.has_presence_penalty = s.has_frequency_penalty = true;
    s.temperature = req->temperature;
    s.top_k = req->top_k;
    s.top_p = req->top_p;
    s.min_p = req->min_p;
    s.repetition_penalty = req->repetition_penalty;
    s.presence_penalty = req->presence_penalty;
    s.frequency_penalty = req->frequency_penalty;
    s.seed = req->seed;
    Pd__GenerateRequest g = PD__GENERATE_REQUEST__INIT;
    uint64_t rid = c->next_id++;
    if (c->next_id == 0)
        c->next_id = 1;
    g.has_request_id = true;
    g.request_id = rid;
    g.prompt = (char *)req->prompt;
    g.n_prompt_tokens = req->n_prompt_tokens;
    g.prompt_tokens = (int32_t *)req->prompt_tokens;
    g.sampling = &s;
    g.has_max_tokens = g.has_ignore_eos = g.has_stream = g.has_deadline_ms = true;
    g.has_heartbeats = g.heartbeats = true; /* pd_client_poll beats for us */
    g.max_tokens = req->max_tokens;
    g.n_stop = req->n_stop;
    g.stop = (char **)req->stop;
    g.n_stop_ids = req->n_stop_ids;
    g.stop_ids = (int32_t *)req->stop_ids;
    g.ignore_eos = req->ignore_eos;
    g.stream = req->stream;
    g.deadline_ms = req->deadline_ms;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_GENERATE;
    m.generate = &g;
    int rc = send_wait(c, &m, c->timeout_ms, err);
    if (rc)
        return rc;
    if (c->n_fl == 0)
        c->last_rx_ms = c->tick_ms = pd_now_ms(); /* the router's silence counts from now */
    uint64_t wait_ms = c->timeout_ms;
    if (req->deadline_ms && (uint64_t)req->deadline_ms + PD_CLIENT_GRACE_MS > wait_ms)
        wait_ms = (uint64_t)req->deadline_ms + PD_CLIENT_GRACE_MS;
    uint64_t now = pd_now_us();
    uint64_t end = req->deadline_ms
                       ? now + ((uint64_t)req->deadline_ms + PD_CLIENT_GRACE_MS) * 1000u
                       : 0;
    c->fl[c->n_fl++] = (inflight_t){ rid, now + wait_ms * 1000u, wait_ms * 1000u, c->n_lost, end };
    if (id)
        *id = rid;
    return 0;
}

int pd_client_cancel(pd_client_t *c, uint64_t id, pd_err_t *err)
{
    Pd__Cancel x = PD__CANCEL__INIT;
    x.has_request_id = true;
    x.request_id = id;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_CANCEL;
    m.cancel = &x;
    return send_now(c, &m, err);
}

/* Delivers one received message; returns 1 if a chunk was delivered. */
static int deliver(pd_client_t *c, const Pd__Msg *m, pd_chunk_fn fn, void *user)
{
    pd_chunk_t ch;
    memset(&ch, 0, sizeof ch);
    if (m->body_case == PD__MSG__BODY_CHUNK) {
        const Pd__StreamChunk *s = m->chunk;
        ch.request_id = s->request_id;
        ch.tokens = s->tokens;
        ch.n_tokens = s->n_tokens;
        ch.index = s->index;
        ch.text = s->has_text ? (const char *)s->text.data : "";
        ch.text_len = s->has_text ? s->text.len : 0;
        ch.finish = (pd_finish_t)(s->has_finish_reason ? s->finish_reason : 0);
        ch.is_final = ch.finish != PD_FINISH_NONE;
        if (s->usage) {
            ch.prompt_tokens = s->usage->prompt_tokens;
            ch.completion_tokens = s->usage->completion_tokens;
        }
        if (s->timings) {
            ch.queue_us = s->timings->queue_us;
            ch.ttft_us = s->timings->ttft_us;
            ch.e2e_us = s->timings->e2e_us;
            ch.n_preemptions = s->timings->n_preemptions;
        }
    } else if (m->body_case == PD__MSG__BODY_ERROR) {
        const Pd__Error *e = m->error;
        ch.request_id = e->request_id;
        ch.is_final = true;
        ch.finish = PD_FINISH_ERROR;
        ch.status = (pd_status_t)(e->has_code && e->code ? e->code : PD__ERROR_CODE__INTERNAL);
        ch.error = e->message ? e->message : "";
        ch.text = "";
    } else {
        if (m->body_case == PD__MSG__BODY_HEARTBEAT) {
            /* The router's interval and liveness for us (hostile: bounded
             * as the router's own config keys are). */
            const Pd__Heartbeat *h = m->heartbeat;
            if (h->has_interval_ms && h->interval_ms >= 10 && h->interval_ms <= 60000)
                c->hb_ivl_ms = h->interval_ms;
            if (h->has_liveness && h->liveness >= 1 && h->liveness <= 100)
                c->hb_liveness = h->liveness;
        }
        return 0;
    }
    int i = inflight_find(c, ch.request_id);
    if (i < 0)
        return 0; /* not ours any more (timed out, or a stray error) */
    if (ch.is_final)
        inflight_remove(c, (size_t)i);
    else {
        /* It is alive: wait again, but not past its own deadline + grace
         * (the router that owned it may be gone: a restarted one never
         * heard of it). */
        inflight_t *f = &c->fl[i];
        f->deadline_us = pd_now_us() + f->wait_us;
        if (f->end_us && f->deadline_us > f->end_us)
            f->deadline_us = f->end_us;
    }
    if (fn && fn(&ch, user) != 0 && !ch.is_final)
        pd_client_cancel(c, ch.request_id, NULL);
    return 1;
}

/* Client-side give-up: cancel and end requests the router never finished. */
static int expire(pd_client_t *c, pd_chunk_fn fn, void *user)
{
    uint64_t now = pd_now_us();
    int n = 0;
    for (size_t i = 0; i < c->n_fl;) {
        if (now < c->fl[i].deadline_us) {
            i++;
            continue;
        }
        uint64_t id = c->fl[i].id;
        inflight_remove(c, i);
        pd_client_cancel(c, id, NULL);
        pd_chunk_t ch;
        memset(&ch, 0, sizeof ch);
        ch.request_id = id;
        ch.is_final = true;
        ch.finish = PD_FINISH_ERROR;
        ch.status = PD_STATUS_DEADLINE_EXCEEDED;
        ch.error = "no answer from the router in time (client timeout)";
        ch.text = "";
        if (fn)
            fn(&ch, user);
        n++;
    }
    return n;
}

/* Ends every request sent before a disconnect counted in c->n_lost: the
 * router that had it is gone, or no longer knows this connection. */
static int fail_lost(pd_client_t *c, pd_chunk_fn fn, void *user)
{
    int n = 0;
    for (size_t i = 0; i < c->n_fl;) {
        if (c->fl[i].conn_gen >= c->n_lost) {
            i++;
            continue;
        }
        char text[PD_CFG_STR + 160];
        snprintf(text, sizeof text, "lost the connection to router %s mid-request (the router "
                 "stopped or restarted); the request's outcome is unknown", c->addr);
        pd_chunk_t ch;
        memset(&ch, 0, sizeof ch);
        ch.request_id = c->fl[i].id;
        ch.is_final = true;
        ch.finish = PD_FINISH_ERROR;
        ch.status = PD_STATUS_UNAVAILABLE;
        ch.error = text;
        ch.text = "";
        inflight_remove(c, i);
        if (fn)
            fn(&ch, user);
        n++;
    }
    return n;
}

/* Our beat: a Heartbeat when requests are in flight and we have sent the
 * router nothing for an interval. Back-pressure or no connection: the next
 * call tries again (our silence is what the router judges). */
static void beat(pd_client_t *c)
{
    if (c->n_fl == 0 || pd_now_ms() - c->last_tx_ms < c->hb_ivl_ms)
        return;
    Pd__Heartbeat hb = PD__HEARTBEAT__INIT;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_HEARTBEAT;
    m.heartbeat = &hb;
    send_now(c, &m, NULL);
}

/* Our own loop's progress: when more than half a liveness window passed
 * since the last tick beyond the `allowed` ms we meant to wait (this
 * process was stopped or starved, a callback blocked, the caller did not
 * poll), we were not listening: the router gets a fresh window rather than
 * the blame (what it sent meanwhile may not even be readable yet). */
static void tick(pd_client_t *c, uint64_t allowed)
{
    uint64_t now = pd_now_ms();
    uint64_t stall = (uint64_t)c->hb_ivl_ms * c->hb_liveness / 2;
    if (c->tick_ms && now - c->tick_ms > allowed + stall)
        c->last_rx_ms = now;
    c->tick_ms = now;
}

/* A router silent for hb_liveness intervals while requests are in flight
 * is dead (stopped, hung, unreachable): every request ends with
 * UNAVAILABLE (and a Cancel, in case it comes back). Returns the number of
 * final chunks delivered. */
static int router_silent(pd_client_t *c, pd_chunk_fn fn, void *user)
{
    tick(c, 0);
    uint64_t silent = pd_now_ms() - c->last_rx_ms;
    uint64_t limit = (uint64_t)c->hb_ivl_ms * c->hb_liveness;
    if (c->n_fl == 0 || silent <= limit)
        return 0;
    /* Messages waiting unread (we were stopped or slow, not the router)
     * are read by the next call before anything is judged. */
    zmq_pollitem_t it = { c->sock, 0, ZMQ_POLLIN, 0 };
    if (zmq_poll(&it, 1, 0) > 0)
        return 0;
    char msg[PD_CFG_STR + 160];
    snprintf(msg, sizeof msg,
             "router %s silent for %llu ms (%u heartbeats of %u ms missed): request abandoned",
             c->addr, (unsigned long long)silent, c->hb_liveness, c->hb_ivl_ms);
    /* Take the table first: a callback may submit new requests. */
    inflight_t *fl = c->fl;
    size_t n_fl = c->n_fl;
    c->fl = NULL;
    c->n_fl = c->cap_fl = 0;
    int n = 0;
    for (size_t i = 0; i < n_fl; i++) {
        uint64_t id = fl[i].id;
        pd_client_cancel(c, id, NULL);
        pd_chunk_t ch;
        memset(&ch, 0, sizeof ch);
        ch.request_id = id;
        ch.is_final = true;
        ch.finish = PD_FINISH_ERROR;
        ch.status = PD_STATUS_UNAVAILABLE;
        ch.error = msg;
        ch.text = "";
        if (fn)
            fn(&ch, user);
        n++;
    }
    free(fl);
    return n;
}

int pd_client_poll(pd_client_t *c, int timeout_ms, pd_chunk_fn fn, void *user, pd_err_t *err)
{
    tick(c, 0);
    int delivered = expire(c, fn, user);
    beat(c);
    long wait_ms = delivered ? 0 : timeout_ms;
    if (c->n_fl > 0 && wait_ms != 0) {
        /* Wake up in time for our next beat and to judge the router. */
        uint64_t now = pd_now_ms();
        uint64_t next = c->last_tx_ms + c->hb_ivl_ms;
        uint64_t dead = c->last_rx_ms + (uint64_t)c->hb_ivl_ms * c->hb_liveness + 1;
        uint64_t until = next < dead ? next : dead;
        long cap = until > now + 10 ? (long)(until - now) : 10; /* no spin on a failed beat */
        if (wait_ms < 0 || cap < wait_ms)
            wait_ms = cap;
    }
    zmq_pollitem_t it[2] = { { c->sock, 0, ZMQ_POLLIN, 0 }, { c->mon, 0, ZMQ_POLLIN, 0 } };
    tick(c, 0);
    int rc = zmq_poll(it, 2, wait_ms);
    tick(c, wait_ms < 0 ? UINT64_MAX / 2 : (uint64_t)wait_ms);
    if (rc < 0) {
        if (errno == EINTR)
            return delivered;
        return pd_err_set(err, PD_EIO, "poll: %s", zmq_strerror(errno));
    }
    /* Disconnects first, then the messages: what the lost connection
     * delivered before it dropped is queued already and is read below. */
    watch_connection(c);
    bool drained = false;
    for (int budget = 0; budget < 1024; budget++) {
        rc = pd_net_recv(c->sock, c->in, err);
        if (rc < 0)
            return rc;
        if (rc == 0) {
            drained = true;
            break;
        }
        c->last_rx_ms = pd_now_ms(); /* any message is a beat */
        if (c->in->n_frames == 1 && !c->in->truncated) {
            pd_err_t e2 = { 0 };
            Pd__Msg *m = pd_net_unpack(&c->alloc, zmq_msg_data(&c->in->frames[0]),
                                       zmq_msg_size(&c->in->frames[0]), &e2);
            if (m) {
                delivered += deliver(c, m, fn, user);
                pd_net_msg_free(&c->alloc, m);
            }
        }
        pd_net_in_close(c->in);
        tick(c, 0);
        beat(c); /* a slow callback must not silence us */
    }
    if (drained)
        delivered += fail_lost(c, fn, user);
    /* Judged only after reading everything that arrived. */
    return delivered + router_silent(c, fn, user);
}

/* ====== Blocking generate ====== */

typedef struct {
    uint64_t id;
    pd_chunk_fn fn;
    void *user;
    bool done;
    pd_status_t status;
    char error[400];
} gen_ctx_t;

static int gen_cb(const pd_chunk_t *ch, void *user)
{
    gen_ctx_t *g = user;
    if (ch->request_id != g->id)
        return 0;
    int rc = g->fn ? g->fn(ch, g->user) : 0;
    if (ch->is_final) {
        g->done = true;
        g->status = ch->status;
        if (ch->error)
            snprintf(g->error, sizeof g->error, "%s", ch->error);
    }
    return rc;
}

int pd_client_generate(pd_client_t *c, const pd_gen_request_t *req, pd_chunk_fn fn, void *user,
                       pd_err_t *err)
{
    gen_ctx_t g;
    memset(&g, 0, sizeof g);
    g.fn = fn;
    g.user = user;
    int rc = pd_client_submit(c, req, &g.id, err);
    if (rc)
        return rc;
    while (!g.done) {
        rc = pd_client_poll(c, 100, gen_cb, &g, err);
        if (rc < 0)
            return rc;
    }
    if (g.status == PD_STATUS_OK)
        return 0;
    int code = g.status == PD_STATUS_INVALID_ARGUMENT     ? PD_EINVAL
               : g.status == PD_STATUS_RESOURCE_EXHAUSTED ? PD_EFULL
               : g.status == PD_STATUS_DEADLINE_EXCEEDED  ? PD_ERANGE
               : g.status == PD_STATUS_CANCELLED          ? PD_ESTATE
                                                          : PD_EIO;
    return pd_err_set(err, code, "%s: %s", pd_status_name(g.status), g.error);
}

/* ====== Status ====== */

static const char *role_name(int r)
{
    return r == PD__ROLE__ROLE_PREFILL ? "prefill"
           : r == PD__ROLE__ROLE_DECODE ? "decode"
           : r == PD__ROLE__ROLE_BOTH   ? "both"
                                        : "?";
}

static pd_cluster_status_t *status_from_pb(const Pd__ClusterStatus *s)
{
    pd_cluster_status_t *o = calloc(1, sizeof *o);
    if (o == NULL)
        return NULL;
    o->workers = calloc(s->n_workers ? s->n_workers : 1, sizeof *o->workers);
    if (o->workers == NULL) {
        free(o);
        return NULL;
    }
    pd_net_copy_str(o->model_name, sizeof o->model_name, s->model_name);
    o->model_identity = s->model_identity;
    o->active_requests = s->active_requests;
    o->queued_requests = s->queued_requests;
    o->requests_total = s->requests_total;
    o->requests_failed = s->requests_failed;
    o->block_size = s->block_size;
    o->max_seq_len = s->max_seq_len;
    o->max_tokens_limit = s->max_tokens_limit;
    o->prefix_index_hashes = s->prefix_index_hashes;
    o->n_workers = s->n_workers;
    for (size_t i = 0; i < s->n_workers; i++) {
        const Pd__WorkerStatus *w = s->workers[i];
        pd_worker_status_t *d = &o->workers[i];
        pd_net_copy_str(d->id, sizeof d->id, w->worker_id);
        snprintf(d->role, sizeof d->role, "%s", role_name(w->role));
        pd_net_copy_str(d->kv_endpoint, sizeof d->kv_endpoint, w->kv_endpoint);
        pd_net_copy_str(d->state, sizeof d->state, w->state);
        d->queued_prefill_tokens = w->queued_prefill_tokens;
        d->running_seqs = w->running_seqs;
        d->free_blocks = w->free_blocks;
        d->total_blocks = w->total_blocks;
        d->assigned = w->assigned;
        d->last_seen_ms = w->last_seen_ms;
        d->prefix_caching = w->prefix_caching;
        d->prefix_index_blocks = w->prefix_index_blocks;
        d->routed_cached_requests = w->routed_cached_requests;
        d->routed_cached_tokens = w->routed_cached_tokens;
        d->kv_resyncs = w->kv_resyncs;
        const Pd__WorkerCounters *k = w->counters;
        if (k) {
            d->steps = k->steps;
            d->multi_seq_steps = k->multi_seq_steps;
            d->joins_while_running = k->joins_while_running;
            d->retirements = k->retirements;
            d->preemptions = k->preemptions;
            d->prefill_batches = k->prefill_batches;
            d->prefill_multi = k->prefill_multi;
            d->prefill_tokens = k->prefill_tokens;
            d->kv_sent_bytes = k->kv_sent_bytes;
            d->kv_recv_bytes = k->kv_recv_bytes;
            d->kv_rejected = k->kv_rejected;
            d->decode_tokens = k->decode_tokens;
            d->max_running = k->max_running;
            d->kv_transfers = k->kv_transfers;
            d->kv_transfer_us = k->kv_transfer_us;
            d->prefill_us = k->prefill_us;
            d->decode_us = k->decode_us;
            d->prefill_pass_tokens = k->prefill_pass_tokens;
            d->compute_turns = k->compute_turns;
            d->compute_busy_ms = k->compute_busy_ms;
            d->mixed_steps = k->mixed_steps;
            d->prefix_queries = k->prefix_queries;
            d->prefix_hits = k->prefix_hits;
            d->prefix_requests = k->prefix_requests;
            d->prefix_evictions = k->prefix_evictions;
            d->prefix_cached_blocks = k->prefix_cached_blocks;
        }
    }
    return o;
}

/* Sends m and waits for the router's ClusterStatus (or an Error). */
static int status_call(pd_client_t *c, const Pd__Msg *m, pd_cluster_status_t **out,
                       pd_err_t *err)
{
    *out = NULL;
    int rc = send_wait(c, m, c->timeout_ms, err);
    if (rc)
        return rc;
    uint64_t end = pd_now_ms() + c->timeout_ms;
    for (;;) {
        uint64_t now = pd_now_ms();
        if (now >= end)
            return pd_err_set(err, PD_EIO, "router %s did not answer within %u ms", c->addr,
                              c->timeout_ms);
        zmq_pollitem_t it = { c->sock, 0, ZMQ_POLLIN, 0 };
        if (zmq_poll(&it, 1, (long)(end - now)) <= 0)
            continue;
        rc = pd_net_recv(c->sock, c->in, err);
        if (rc <= 0)
            continue;
        c->last_rx_ms = pd_now_ms();
        Pd__Msg *r = NULL;
        if (c->in->n_frames == 1)
            r = pd_net_unpack(&c->alloc, zmq_msg_data(&c->in->frames[0]),
                              zmq_msg_size(&c->in->frames[0]), NULL);
        pd_net_in_close(c->in);
        if (r == NULL)
            continue;
        if (r->body_case == PD__MSG__BODY_STATUS) {
            *out = status_from_pb(r->status);
            pd_net_msg_free(&c->alloc, r);
            return *out ? 0 : pd_err_set(err, PD_ENOMEM, "status");
        }
        if (r->body_case == PD__MSG__BODY_ERROR && !r->error->has_request_id) {
            rc = pd_err_set(err, PD_EINVAL, "%s: %s", pd_status_name(r->error->code),
                            r->error->message ? r->error->message : "");
            pd_net_msg_free(&c->alloc, r);
            return rc;
        }
        /* Chunks of in-flight requests arriving meanwhile are delivered to
         * nobody: do not mix status calls with async requests. */
        pd_net_msg_free(&c->alloc, r);
    }
}

int pd_client_status(pd_client_t *c, pd_cluster_status_t **out, pd_err_t *err)
{
    Pd__StatusRequest sr = PD__STATUS_REQUEST__INIT;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_STATUS_REQUEST;
    m.status_request = &sr;
    return status_call(c, &m, out, err);
}

int pd_client_drain(pd_client_t *c, const char *worker_id, pd_err_t *err)
{
    return pd_client_drain_mode(c, worker_id, PD_DRAIN_LEAVE, err);
}

int pd_client_drain_mode(pd_client_t *c, const char *worker_id, pd_drain_mode_t mode,
                         pd_err_t *err)
{
    Pd__Drain d = PD__DRAIN__INIT;
    d.worker_id = (char *)worker_id;
    d.has_mode = mode != PD_DRAIN_LEAVE;
    d.mode = mode == PD_DRAIN_KEEP     ? PD__DRAIN_MODE__DRAIN_KEEP
             : mode == PD_DRAIN_RESUME ? PD__DRAIN_MODE__DRAIN_RESUME
                                       : PD__DRAIN_MODE__DRAIN_LEAVE;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_DRAIN;
    m.drain = &d;
    pd_cluster_status_t *s = NULL;
    int rc = status_call(c, &m, &s, err);
    pd_cluster_status_free(s);
    return rc;
}

void pd_cluster_status_free(pd_cluster_status_t *s)
{
    if (s == NULL)
        return;
    free(s->workers);
    free(s);
}
