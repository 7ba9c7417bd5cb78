/* pdclient.c -- see pdclient.h */
#include "pdclient.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "net.h"

#define PD_CLIENT_DEFAULT_ROUTER "tcp://127.0.0.1:5555"
#define PD_CLIENT_MAX_INFLIGHT 65536
#define PD_CLIENT_GRACE_MS 5000 /* beyond a request's own deadline */

typedef struct {
    uint64_t id;
    uint64_t deadline_us; /* client-side give-up time: silence until then */
    uint64_t wait_us;     /* how long a silent stream is waited for */
    uint64_t end_us;      /* deadline + grace: never waited for beyond (0 = none) */
} inflight_t;

struct pd_client {
    void *zctx;
    void *sock;
    char addr[PD_CFG_STR];
    uint64_t next_id;
    uint32_t timeout_ms;
    inflight_t *fl;       /* (n_fl) requests without their final chunk */
    size_t n_fl, cap_fl;
    pd_pb_alloc_t alloc;
    pd_net_in_t *in;
};

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
    pd_net_close(c->sock);
    if (c->zctx)
        zmq_ctx_term(c->zctx);
    free(c->fl);
    free(c->in);
    free(c);
}

void pd_client_set_timeout(pd_client_t *c, uint32_t timeout_ms) { c->timeout_ms = timeout_ms; }

size_t pd_client_inflight(const pd_client_t *c) { return c->n_fl; }

/* Sends m, waiting (up to timeout_ms) for the connection to the router to
 * come up: DEALER sockets queue nothing for peers not yet connected. */
static int send_wait(pd_client_t *c, const Pd__Msg *m, uint32_t timeout_ms, pd_err_t *err)
{
    uint64_t end = pd_net_now_ms() + timeout_ms;
    for (;;) {
        int rc = pd_net_send(c->sock, NULL, 0, m, false, err);
        if (rc != PD_EFULL)
            return rc;
        uint64_t now = pd_net_now_ms();
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
    if (c->n_fl == c->cap_fl) {
        size_t cap = c->cap_fl ? c->cap_fl * 2 : 16;
        inflight_t *nf = realloc(c->fl, cap * sizeof *nf);
        if (nf == NULL)
            return pd_err_set(err, PD_ENOMEM, "in-flight table");
        c->fl = nf;
        c->cap_fl = cap;
    }
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
    uint64_t wait_ms = c->timeout_ms;
    if (req->deadline_ms && (uint64_t)req->deadline_ms + PD_CLIENT_GRACE_MS > wait_ms)
        wait_ms = (uint64_t)req->deadline_ms + PD_CLIENT_GRACE_MS;
    uint64_t now = pd_net_now_us();
    uint64_t end = req->deadline_ms
                       ? now + ((uint64_t)req->deadline_ms + PD_CLIENT_GRACE_MS) * 1000u
                       : 0;
    c->fl[c->n_fl++] = (inflight_t){ rid, now + wait_ms * 1000u, wait_ms * 1000u, end };
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
    return pd_net_send(c->sock, NULL, 0, &m, false, err);
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
        f->deadline_us = pd_net_now_us() + f->wait_us;
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
    uint64_t now = pd_net_now_us();
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

int pd_client_poll(pd_client_t *c, int timeout_ms, pd_chunk_fn fn, void *user, pd_err_t *err)
{
    int delivered = expire(c, fn, user);
    zmq_pollitem_t it = { c->sock, 0, ZMQ_POLLIN, 0 };
    int rc = zmq_poll(&it, 1, delivered ? 0 : timeout_ms);
    if (rc < 0) {
        if (errno == EINTR)
            return delivered;
        return pd_err_set(err, PD_EIO, "poll: %s", zmq_strerror(errno));
    }
    for (int budget = 0; budget < 1024; budget++) {
        rc = pd_net_recv(c->sock, c->in, err);
        if (rc < 0)
            return rc;
        if (rc == 0)
            break;
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
    }
    return delivered;
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
    uint64_t end = pd_net_now_ms() + c->timeout_ms;
    for (;;) {
        uint64_t now = pd_net_now_ms();
        if (now >= end)
            return pd_err_set(err, PD_EIO, "router %s did not answer within %u ms", c->addr,
                              c->timeout_ms);
        zmq_pollitem_t it = { c->sock, 0, ZMQ_POLLIN, 0 };
        if (zmq_poll(&it, 1, (long)(end - now)) <= 0)
            continue;
        rc = pd_net_recv(c->sock, c->in, err);
        if (rc <= 0)
            continue;
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
    Pd__Drain d = PD__DRAIN__INIT;
    d.worker_id = (char *)worker_id;
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
