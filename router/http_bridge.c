/* http_bridge.c -- see http_bridge.h. Sections: requests in flight and
 * the outbox (shared with the connection threads, under mu); the bridge
 * thread (the only user of the DEALER); start and stop. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "base/grow.h"
#include "http_bridge.h"
#include "base/log.h"

#define STATUS_TIMEOUT_MS 3000    /* the router answers StatusRequest within this */

typedef struct out_msg {
    uint8_t *data;                /* (len) packed Pd__Msg */
    size_t len;
    struct out_msg *next;
} out_msg_t;

struct pd_bridge {
    void *zctx;
    bool own_ctx;
    void *dealer;
    char endpoint[PD_CFG_STR + 16]; /* as connected to */
    int wake_fd;                  /* eventfd: the outbox has something */
    pthread_t thread;
    bool started;
    pd_pb_alloc_t alloc;
    pd_net_in_t *in;
    /* Shared with the connection threads, under mu. */
    pthread_mutex_t mu;
    bool stopping;
    pd_hreq_t *reqs;
    out_msg_t *out_head, *out_tail;
    uint64_t next_id;
    bool status_want;
    uint64_t status_sent, status_recv;
    pthread_cond_t status_cv;
    uint8_t *status_buf;          /* (status_len) the latest ClusterStatus envelope */
    size_t status_len;
};

/* ====== Requests in flight and the outbox ====== */

static void wake(pd_bridge_t *b)
{
    uint64_t one = 1;
    ssize_t rc = write(b->wake_fd, &one, sizeof one);
    (void)rc; /* a full counter still wakes the bridge */
}

/* Queues m for the bridge to send (under b->mu). Returns 0 or PD_ENOMEM. */
static int outbox_push_locked(pd_bridge_t *b, const Pd__Msg *m)
{
    out_msg_t *o = calloc(1, sizeof *o);
    size_t len = pd__msg__get_packed_size(m);
    if (o == NULL || (o->data = malloc(len ? len : 1)) == NULL) {
        free(o);
        return PD_ENOMEM;
    }
    o->len = pd__msg__pack(m, o->data);
    if (b->out_tail)
        b->out_tail->next = o;
    else
        b->out_head = o;
    b->out_tail = o;
    return 0;
}

static void hreq_free(pd_hreq_t *r)
{
    if (r == NULL)
        return;
    pthread_cond_destroy(&r->cv);
    free(r->text);
    free(r);
}

static void unlink_locked(pd_bridge_t *b, pd_hreq_t *r)
{
    for (pd_hreq_t **p = &b->reqs; *p; p = &(*p)->next)
        if (*p == r) {
            *p = r->next;
            return;
        }
}

void pd_bridge_release(pd_bridge_t *b, pd_hreq_t *r)
{
    if (r == NULL)
        return;
    pthread_mutex_lock(&b->mu);
    if (r->is_final || b->stopping) {
        unlink_locked(b, r);
        pthread_mutex_unlock(&b->mu);
        hreq_free(r);
        return;
    }
    r->abandoned = true;
    Pd__Cancel c = PD__CANCEL__INIT;
    c.has_request_id = true;
    c.request_id = r->id;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_CANCEL;
    m.cancel = &c;
    if (outbox_push_locked(b, &m) != 0)
        PD_WARN("event=http_cancel_lost req=%" PRIu64, r->id);
    pthread_mutex_unlock(&b->mu);
    PD_INFO("event=http_client_gone req=%" PRIu64 " action=cancel", r->id);
    wake(b);
}

pd_hreq_t *pd_bridge_submit(pd_bridge_t *b, Pd__GenerateRequest *g, int *rc)
{
    pd_hreq_t *r = calloc(1, sizeof *r);
    if (r == NULL) {
        *rc = PD_ENOMEM;
        return NULL;
    }
    pthread_cond_init(&r->cv, NULL);
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_GENERATE;
    m.generate = g;
    pthread_mutex_lock(&b->mu);
    g->has_request_id = true;
    r->id = g->request_id = ++b->next_id;
    *rc = b->stopping ? PD_ESTATE : outbox_push_locked(b, &m);
    if (*rc == 0) {
        r->next = b->reqs;
        b->reqs = r;
    }
    pthread_mutex_unlock(&b->mu);
    if (*rc) {
        hreq_free(r);
        return NULL;
    }
    wake(b);
    return r;
}

void pd_bridge_lock(pd_bridge_t *b)
{
    pthread_mutex_lock(&b->mu);
}

void pd_bridge_unlock(pd_bridge_t *b)
{
    pthread_mutex_unlock(&b->mu);
}

bool pd_bridge_is_stopping_locked(pd_bridge_t *b)
{
    return b->stopping;
}

void pd_bridge_wait_locked(pd_bridge_t *b, pd_hreq_t *r, const struct timespec *until)
{
    pthread_cond_timedwait(&r->cv, &b->mu, until);
}

/* ====== The bridge thread ====== */

static pd_hreq_t *find_locked(pd_bridge_t *b, uint64_t id)
{
    for (pd_hreq_t *r = b->reqs; r; r = r->next)
        if (r->id == id)
            return r;
    return NULL;
}

/* Marks r final; frees it if its connection has gone (under b->mu). */
static void finish_locked(pd_bridge_t *b, pd_hreq_t *r)
{
    r->is_final = true;
    if (r->abandoned) {
        unlink_locked(b, r);
        hreq_free(r);
        return;
    }
    pthread_cond_broadcast(&r->cv);
}

static void on_chunk_locked(pd_bridge_t *b, const Pd__StreamChunk *c)
{
    pd_hreq_t *r = find_locked(b, c->request_id);
    if (r == NULL || r->is_final)
        return;
    if (c->has_text && c->text.len > 0) {
        size_t need = r->text_len + c->text.len + 1;
        if (pd_grow((void **)&r->text, &r->text_cap, need, 1, 256) != 0) {
            r->code = PD__ERROR_CODE__INTERNAL;
            snprintf(r->err, sizeof r->err, "out of memory for the output text");
            finish_locked(b, r);
            return;
        }
        memcpy(r->text + r->text_len, c->text.data, c->text.len);
        r->text_len += c->text.len;
        r->text[r->text_len] = '\0';
    }
    r->n_chunks++;
    if (c->has_finish_reason && c->finish_reason != PD__FINISH_REASON__FINISH_NONE) {
        r->finish = c->finish_reason;
        if (c->usage) {
            r->prompt_tokens = c->usage->prompt_tokens;
            r->completion_tokens = c->usage->completion_tokens;
        }
        finish_locked(b, r);
        return;
    }
    pthread_cond_broadcast(&r->cv);
}

static void on_error_locked(pd_bridge_t *b, const Pd__Error *e)
{
    pd_hreq_t *r = e->request_id ? find_locked(b, e->request_id) : NULL;
    if (r == NULL || r->is_final) {
        PD_WARN("event=http_router_error req=%" PRIu64 " code=%d msg=\"%s\"", e->request_id,
                (int)e->code, e->message ? e->message : "");
        return;
    }
    r->code = e->code ? (int)e->code : PD__ERROR_CODE__INTERNAL;
    snprintf(r->err, sizeof r->err, "%s", e->message ? e->message : "error");
    finish_locked(b, r);
}

static void on_status_locked(pd_bridge_t *b, const void *data, size_t len)
{
    uint8_t *copy = malloc(len ? len : 1);
    if (copy) {
        memcpy(copy, data, len);
        free(b->status_buf);
        b->status_buf = copy;
        b->status_len = len;
    }
    b->status_recv++;
    pthread_cond_broadcast(&b->status_cv);
}

static void bridge_recv(pd_bridge_t *b)
{
    pd_err_t err = { 0 };
    for (int budget = 0; budget < 1024; budget++) {
        if (pd_net_recv(b->dealer, b->in, &err) <= 0)
            return;
        if (b->in->n_frames != 1) {
            pd_net_in_close(b->in);
            continue;
        }
        const void *data = zmq_msg_data(&b->in->frames[0]);
        size_t len = zmq_msg_size(&b->in->frames[0]);
        Pd__Msg *m = pd_net_unpack(&b->alloc, data, len, &err);
        if (m == NULL) {
            PD_WARN("event=http_bad_message msg=\"%s\"", err.msg);
            pd_net_in_close(b->in);
            continue;
        }
        pthread_mutex_lock(&b->mu);
        switch (m->body_case) {
        case PD__MSG__BODY_CHUNK: on_chunk_locked(b, m->chunk); break;
        case PD__MSG__BODY_ERROR: on_error_locked(b, m->error); break;
        case PD__MSG__BODY_STATUS: on_status_locked(b, data, len); break;
        default: break;
        }
        pthread_mutex_unlock(&b->mu);
        pd_net_msg_free(&b->alloc, m);
        pd_net_in_close(b->in);
    }
}

/* Sends what the connections queued; keeps what ZeroMQ refuses (EAGAIN)
 * for the next round. Returns true while something is left. */
static bool bridge_send(pd_bridge_t *b)
{
    pthread_mutex_lock(&b->mu);
    if (b->status_want) {
        b->status_want = false;
        Pd__StatusRequest sr = PD__STATUS_REQUEST__INIT;
        Pd__Msg m = PD__MSG__INIT;
        m.body_case = PD__MSG__BODY_STATUS_REQUEST;
        m.status_request = &sr;
        if (outbox_push_locked(b, &m) == 0)
            b->status_sent++;
    }
    out_msg_t *list = b->out_head;
    b->out_head = b->out_tail = NULL;
    pthread_mutex_unlock(&b->mu);
    while (list) {
        if (zmq_send(b->dealer, list->data, list->len, ZMQ_DONTWAIT) < 0) {
            if (errno != EAGAIN)
                PD_WARN("event=http_send_failed msg=\"%s\"", zmq_strerror(errno));
            if (errno == EAGAIN || errno == EINTR)
                break;
        }
        out_msg_t *next = list->next;
        free(list->data);
        free(list);
        list = next;
    }
    if (list == NULL)
        return false;
    /* Put the rest back in front of anything queued meanwhile. */
    pthread_mutex_lock(&b->mu);
    out_msg_t *tail = list;
    while (tail->next)
        tail = tail->next;
    tail->next = b->out_head;
    if (b->out_head == NULL)
        b->out_tail = tail;
    b->out_head = list;
    pthread_mutex_unlock(&b->mu);
    return true;
}

static void *bridge_main(void *arg)
{
    pd_bridge_t *b = arg;
    bool pending = false;
    for (;;) {
        pthread_mutex_lock(&b->mu);
        bool stop = b->stopping;
        pthread_mutex_unlock(&b->mu);
        if (stop)
            break;
        zmq_pollitem_t items[2] = {
            { b->dealer, 0, ZMQ_POLLIN, 0 },
            { NULL, b->wake_fd, ZMQ_POLLIN, 0 },
        };
        int rc = zmq_poll(items, 2, pending ? 5 : 200);
        if (rc < 0 && errno != EINTR) {
            PD_ERROR("event=http_poll_failed msg=\"%s\"", zmq_strerror(errno));
            break;
        }
        if (rc > 0 && (items[1].revents & ZMQ_POLLIN)) {
            uint64_t v;
            ssize_t n = read(b->wake_fd, &v, sizeof v);
            (void)n;
        }
        pending = bridge_send(b);
        bridge_recv(b);
    }
    return NULL;
}

int pd_bridge_status(pd_bridge_t *b, Pd__Msg **out)
{
    *out = NULL;
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += STATUS_TIMEOUT_MS / 1000;
    pthread_mutex_lock(&b->mu);
    uint64_t target = b->status_sent + 1;
    b->status_want = true;
    pthread_mutex_unlock(&b->mu);
    wake(b);
    pthread_mutex_lock(&b->mu);
    int rc = 0;
    while (b->status_recv < target && !b->stopping && rc == 0)
        rc = pthread_cond_timedwait(&b->status_cv, &b->mu, &until);
    if (b->status_recv >= target && b->status_buf)
        /* The bytes passed the bridge's bounded unpack already. */
        *out = pd__msg__unpack(NULL, b->status_len, b->status_buf);
    pthread_mutex_unlock(&b->mu);
    return *out && (*out)->body_case == PD__MSG__BODY_STATUS ? 0 : PD_EIO;
}

/* ====== Start and stop ====== */

/* The router's endpoint as a client reaches it (a wildcard bind -> loopback). */
static void connect_endpoint(const char *bound, char *out, size_t cap)
{
    const char *p;
    if ((p = strstr(bound, "://0.0.0.0:")) != NULL || (p = strstr(bound, "://*:")) != NULL) {
        const char *port = strchr(p + 3, ':');
        snprintf(out, cap, "%.*s://127.0.0.1%s", (int)(p - bound), bound, port);
        return;
    }
    snprintf(out, cap, "%s", bound);
}

pd_bridge_t *pd_bridge_start(const pd_config_t *cfg, void *zctx, const char *client_endpoint,
                             pd_err_t *err)
{
    pd_bridge_t *b = calloc(1, sizeof *b);
    if (b == NULL) {
        pd_err_set(err, PD_ENOMEM, "http bridge");
        return NULL;
    }
    b->wake_fd = -1;
    pthread_mutex_init(&b->mu, NULL);
    pthread_cond_init(&b->status_cv, NULL);
    b->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    b->in = malloc(sizeof *b->in);
    if (b->wake_fd < 0 || b->in == NULL) {
        pd_err_set(err, PD_EIO, "http: eventfd or buffers: %s", strerror(errno));
        goto fail;
    }
    b->in->n_frames = 0;
    pd_pb_alloc_init(&b->alloc, (size_t)cfg->net.max_msg_bytes * PD_PB_BYTES_PER_WIRE_BYTE +
                                    PD_PB_BASE_BUDGET);
    b->zctx = zctx;
    if (b->zctx == NULL) {
        b->zctx = zmq_ctx_new();
        b->own_ctx = true;
        if (b->zctx == NULL) {
            pd_err_set(err, PD_EIO, "http: zmq_ctx_new failed");
            goto fail;
        }
    }
    pd_net_opts_t no;
    pd_net_opts_from_config(&no, cfg);
    b->dealer = pd_net_socket(b->zctx, ZMQ_DEALER, &no, err);
    if (b->dealer == NULL)
        goto fail;
    connect_endpoint(client_endpoint, b->endpoint, sizeof b->endpoint);
    if (pd_net_connect(b->dealer, b->endpoint, err) != 0)
        goto fail;
    if (pthread_create(&b->thread, NULL, bridge_main, b) != 0) {
        pd_err_set(err, PD_EIO, "http: cannot start the bridge thread");
        goto fail;
    }
    b->started = true;
    return b;
fail:
    pd_bridge_free(b);
    return NULL;
}

const char *pd_bridge_endpoint(const pd_bridge_t *b)
{
    return b->endpoint;
}

void pd_bridge_stopping(pd_bridge_t *b)
{
    if (b == NULL)
        return;
    pthread_mutex_lock(&b->mu);
    b->stopping = true;
    for (pd_hreq_t *r = b->reqs; r; r = r->next)
        pthread_cond_broadcast(&r->cv);
    pthread_cond_broadcast(&b->status_cv);
    pthread_mutex_unlock(&b->mu);
}

void pd_bridge_free(pd_bridge_t *b)
{
    if (b == NULL)
        return;
    pd_bridge_stopping(b);
    if (b->started) {
        wake(b);
        pthread_join(b->thread, NULL);
    }
    pd_net_close(b->dealer);
    if (b->own_ctx && b->zctx)
        zmq_ctx_term(b->zctx);
    while (b->reqs) {
        pd_hreq_t *r = b->reqs;
        b->reqs = r->next;
        hreq_free(r);
    }
    while (b->out_head) {
        out_msg_t *o = b->out_head;
        b->out_head = o->next;
        free(o->data);
        free(o);
    }
    free(b->status_buf);
    free(b->in);
    if (b->wake_fd >= 0)
        close(b->wake_fd);
    pthread_cond_destroy(&b->status_cv);
    pthread_mutex_destroy(&b->mu);
    free(b);
}
