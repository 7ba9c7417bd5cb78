/* wklink.c -- a worker's router link on its I/O thread. See wklink.h. */
#include "runtime/wklink.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/fault.h"
#include "base/log.h"
#include "runtime/net.h"

#define LK_OUTBOX 4096      /* messages to the router waiting on back-pressure */
#define LK_POLL_MS 10       /* the I/O thread's longest wait: beats, the watchdog */
/* Frames on the PAIR: a header [kind][gen, 4 bytes LE], then (for a message
 * or a router payload, a drop's reason) one body frame. The PAIR queues
 * without a bound (HWM 0): what the compute thread sends is bounded by the
 * outbox below, what the router sends by its own flow. */
#define LK_HDR 5
/* A KvEvents message's header: [LK_KVEV][gen][its seq, 8 bytes LE]. */
#define LK_HDR_KV (LK_HDR + 8)

/* Kinds of frames the compute thread sends. */
#define LK_MSG 'M'
#define LK_KVEV 'K'
#define LK_BEAT 'B'
#define LK_LEAVE 'L'

/* The link's state: one enum, one transition function (set_state). */
typedef enum {
    LK_REGISTERING = 0, /* Register sent (or to send), no reply yet */
    LK_REGISTERED,      /* the router accepted us */
    LK_STALLED,         /* the compute thread stopped making progress: we left */
    LK_REFUSED,         /* the router refused our Register: nothing more */
} lk_state_t;

struct pd_wklink {
    /* Set before the I/O thread starts, then read-only. */
    const pd_config_t *cfg;
    char id[64];
    void *zctx;
    Pd__Role role;
    char kv_endpoint[PD_CFG_STR];
    uint64_t model_identity;
    char model_name[128];
    pd_worker_limits_t limits;
    bool prefix_caching;
    pd_proc_health_t *health;
    pthread_t thread;
    bool started;
    /* The compute thread's. */
    void *cpair;
    uint64_t n_sent;            /* messages sent to the link so far */
    /* The I/O thread's. */
    void *lpair;
    void *rsock;                /* DEALER to the router */
    lk_state_t st;
    bool leaving;
    bool reg_sent;              /* the last Register left the socket */
    uint32_t gen;               /* the compute thread's work generation */
    uint32_t hb_ms, liveness;   /* as the router announced them */
    uint64_t last_router_ms, last_hb_ms, last_reg_ms;
    uint64_t stalled_turns;     /* turns when we declared the stall */
    uint64_t stalled_at_ms;
    uint64_t dropped_stale;     /* messages of an older generation discarded */
    uint64_t n_read;            /* messages read from the compute thread so far */
    uint64_t kv_seq_read;       /* seq of the last KvEvents read (0: none) */
    uint64_t kv_seq_ok;         /* kv_events_seq of the newest load published as of
                                 * messages all read (wklink.h) */
    zmq_msg_t outbox[LK_OUTBOX];
    uint32_t out_head, out_len;
    pd_pb_alloc_t alloc;
    pd_net_in_t *in;
    /* Shared by both threads. */
    atomic_bool registered;
    atomic_uint_fast64_t busy_since_ms; /* 0: the compute thread waits in its poll */
    atomic_uint_fast64_t turns;
    pthread_mutex_t lock;       /* guards load and load_sent */
    pd_worker_load_t load;
    uint64_t load_sent;         /* n_sent when load was published */
};

static const char *state_name(lk_state_t s)
{
    static const char *names[] = { "registering", "registered", "stalled", "refused" };
    return names[s];
}

static void set_state(pd_wklink_t *l, lk_state_t s)
{
    if (l->st != s)
        PD_DEBUG("event=link_state from=%s to=%s", state_name(l->st), state_name(s));
    l->st = s;
    atomic_store(&l->registered, s == LK_REGISTERED);
}

/* ====== To the compute thread ====== */

static void tell_compute(pd_wklink_t *l, char kind, zmq_msg_t *body)
{
    uint8_t hdr[LK_HDR] = { (uint8_t)kind, (uint8_t)l->gen, (uint8_t)(l->gen >> 8),
                            (uint8_t)(l->gen >> 16), (uint8_t)(l->gen >> 24) };
    if (zmq_send(l->lpair, hdr, sizeof hdr, body ? ZMQ_SNDMORE : 0) < 0 ||
        (body && zmq_msg_send(body, l->lpair, 0) < 0))
        PD_ERROR("event=link_pair_failed msg=\"%s\"", zmq_strerror(errno));
}

/* The compute thread must drop the work the router gave it (why): a new
 * generation begins, and whatever it sends of the old one is discarded. */
static void tell_drop(pd_wklink_t *l, const char *why)
{
    l->gen++;
    zmq_msg_t body;
    if (zmq_msg_init_size(&body, strlen(why)) != 0) {
        PD_ERROR("event=oom what=link_drop");
        zmq_msg_init(&body);
    } else {
        memcpy(zmq_msg_data(&body), why, strlen(why));
    }
    tell_compute(l, 'D', &body);
    zmq_msg_close(&body);
}

/* ====== Outbox ====== */

static void flush_outbox(pd_wklink_t *l)
{
    while (l->out_len > 0) {
        zmq_msg_t *o = &l->outbox[l->out_head];
        if (zmq_msg_send(o, l->rsock, ZMQ_DONTWAIT) < 0) {
            if (errno != EAGAIN)
                PD_WARN("event=router_send_failed msg=\"%s\"", zmq_strerror(errno));
            return;
        }
        zmq_msg_close(o);
        l->out_head = (l->out_head + 1) % LK_OUTBOX;
        l->out_len--;
    }
}

static void drop_outbox(pd_wklink_t *l)
{
    for (uint32_t i = 0; i < l->out_len; i++)
        zmq_msg_close(&l->outbox[(l->out_head + i) % LK_OUTBOX]);
    l->out_len = 0;
}

/* Sends payload (taken) now, or keeps it, in order, under back-pressure. */
static void to_router(pd_wklink_t *l, zmq_msg_t *payload)
{
    flush_outbox(l);
    if (l->out_len == 0) {
        if (zmq_msg_send(payload, l->rsock, ZMQ_DONTWAIT) >= 0)
            return;
        if (errno != EAGAIN) {
            PD_WARN("event=router_send_failed msg=\"%s\"", zmq_strerror(errno));
            zmq_msg_close(payload);
            return;
        }
    }
    if (l->out_len == LK_OUTBOX) {
        PD_ERROR("event=router_outbox_full bytes=%zu", zmq_msg_size(payload));
        zmq_msg_close(payload);
        return;
    }
    zmq_msg_t *o = &l->outbox[(l->out_head + l->out_len) % LK_OUTBOX];
    zmq_msg_init(o);
    zmq_msg_move(o, payload);
    l->out_len++;
}

static void send_msg(pd_wklink_t *l, const Pd__Msg *m)
{
    size_t len = pd__msg__get_packed_size(m);
    zmq_msg_t payload;
    if (zmq_msg_init_size(&payload, len) != 0) {
        PD_ERROR("event=oom what=router_message type=%s", pd_net_body_name(m->body_case));
        return;
    }
    pd__msg__pack(m, zmq_msg_data(&payload));
    to_router(l, &payload);
}

/* ====== Router link ====== */

static void send_register(pd_wklink_t *l)
{
    Pd__Register r = PD__REGISTER__INIT;
    r.has_protocol_version = r.has_role = r.has_model_identity = true;
    r.protocol_version = PD_PROTOCOL_VERSION;
    r.worker_id = l->id;
    r.role = l->role;
    r.kv_endpoint = l->kv_endpoint;
    r.model_identity = l->model_identity;
    r.model_name = l->model_name;
    pd_codec_limits_to_pb(&l->limits, &r);
    r.has_prefix_caching = true;
    r.prefix_caching = l->prefix_caching;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_REGISTER;
    m.register_ = &r;
    pd_err_t err = { 0 };
    /* Not through the outbox: a register that cannot go now is simply
     * sent again by the timer. */
    l->reg_sent = pd_net_send(l->rsock, NULL, 0, &m, false, &err) == 0;
    if (l->reg_sent)
        PD_DEBUG("event=register_sent router=%s", l->cfg->worker.router);
    l->last_reg_ms = pd_now_ms();
}

/* The compute thread's load as it last published it, and its progress now;
 * kv_events_seq never ahead of the KvEvents sent to the router (wklink.h). */
static void snapshot(pd_wklink_t *l, pd_worker_load_t *out, uint64_t now)
{
    pthread_mutex_lock(&l->lock);
    *out = l->load;
    uint64_t sent = l->load_sent;
    pthread_mutex_unlock(&l->lock);
    if (l->n_read >= sent && out->kv_events_seq > l->kv_seq_ok)
        l->kv_seq_ok = out->kv_events_seq;
    out->kv_events_seq = l->kv_seq_ok > l->kv_seq_read ? l->kv_seq_ok : l->kv_seq_read;
    uint64_t since = atomic_load(&l->busy_since_ms);
    uint64_t busy = since && now > since ? now - since : 0;
    out->counters.compute_turns = atomic_load(&l->turns);
    out->counters.compute_busy_ms = busy > UINT32_MAX ? UINT32_MAX : (uint32_t)busy;
}

static void send_heartbeat(pd_wklink_t *l)
{
    uint64_t now = pd_now_ms();
    pd_worker_load_t ld;
    snapshot(l, &ld, now);
    Pd__Heartbeat hb;
    Pd__WorkerCounters c;
    pd_codec_load_to_pb(&ld, &hb, &c);
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_HEARTBEAT;
    m.heartbeat = &hb;
    send_msg(l, &m);
    l->last_hb_ms = now;
}

/* Leaving (why: NULL for a plain drain): the router forgets us now rather
 * than after missed beats, and re-dispatches what we held. */
static void send_drain(pd_wklink_t *l, const char *why)
{
    Pd__Drain d = PD__DRAIN__INIT;
    d.reason = (char *)why;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_DRAIN;
    m.drain = &d;
    flush_outbox(l);
    pd_net_send(l->rsock, NULL, 0, &m, false, NULL);
}

static int connect_router(pd_wklink_t *l, pd_err_t *err)
{
    pd_net_opts_t o;
    pd_net_opts_from_config(&o, l->cfg);
    l->rsock = pd_net_socket(l->zctx, ZMQ_DEALER, &o, err);
    if (l->rsock == NULL)
        return PD_EIO;
    int rc = pd_net_connect(l->rsock, l->cfg->worker.router, err);
    if (rc)
        return rc;
    l->last_router_ms = pd_now_ms();
    l->reg_sent = false;
    l->last_reg_ms = 0;
    return 0;
}

/* The work the router gave us is no longer wanted (why): the compute thread
 * drops it, and we register again on a fresh connection. */
static void reconnect(pd_wklink_t *l, const char *why)
{
    tell_drop(l, why);
    drop_outbox(l);
    pd_net_close(l->rsock);
    l->rsock = NULL;
    set_state(l, LK_REGISTERING);
    pd_err_t err = { 0 };
    if (connect_router(l, &err) != 0)
        PD_ERROR("event=reconnect_failed msg=\"%s\"", err.msg);
    else
        send_register(l);
}

static void on_register_reply(pd_wklink_t *l, const Pd__RegisterReply *r)
{
    if (l->st == LK_STALLED || l->st == LK_REFUSED)
        return;
    if (!r->has_accepted || !r->accepted) {
        PD_ERROR("event=refused_by_router router=%s reason=\"%s\"", l->cfg->worker.router,
                 r->reason ? r->reason : "?");
        set_state(l, LK_REFUSED);
        tell_compute(l, 'Q', NULL);
        return;
    }
    if (r->has_heartbeat_ms && r->heartbeat_ms >= 10 && r->heartbeat_ms <= 60000)
        l->hb_ms = r->heartbeat_ms;
    if (r->has_liveness && r->liveness >= 1 && r->liveness <= 100)
        l->liveness = r->liveness;
    set_state(l, LK_REGISTERED);
    pd_worker_load_t ld;
    snapshot(l, &ld, pd_now_ms());
    PD_INFO("event=registered router=%s role=%d kv=%s blocks=%u", l->cfg->worker.router,
            (int)l->role, l->kv_endpoint[0] ? l->kv_endpoint : "-", ld.total_blocks);
    send_heartbeat(l);
}

static void on_router_error(pd_wklink_t *l, const Pd__Error *e)
{
    PD_WARN("event=router_error code=%d msg=\"%s\"", (int)e->code, e->message ? e->message : "");
    if (e->code == PD__ERROR_CODE__UNAVAILABLE && l->st == LK_REGISTERED) {
        /* "unknown worker: register first" -- the router restarted. */
        set_state(l, LK_REGISTERING);
        tell_drop(l, "router_restarted");
        send_register(l);
    }
}

/* One message from the router: the link's own (RegisterReply, Heartbeat,
 * Error) handled here; everything else (tasks, cancels, drain, and what we
 * cannot read: the compute thread answers it) goes to the compute thread. */
static void on_router_frame(pd_wklink_t *l, zmq_msg_t *f)
{
    pd_net_peek_t pk;
    pd_net_peek(zmq_msg_data(f), zmq_msg_size(f), &pk);
    switch (pk.body_case) {
    case PD__MSG__BODY_HEARTBEAT: return;
    case PD__MSG__BODY_REGISTER_REPLY:
    case PD__MSG__BODY_ERROR: {
        pd_err_t err = { 0 };
        Pd__Msg *m = pd_net_unpack(&l->alloc, zmq_msg_data(f), zmq_msg_size(f), &err);
        if (m == NULL)
            PD_WARN("event=bad_router_message msg=\"%s\"", err.msg);
        else if (m->body_case == PD__MSG__BODY_REGISTER_REPLY)
            on_register_reply(l, m->register_reply);
        else if (m->body_case == PD__MSG__BODY_ERROR)
            on_router_error(l, m->error);
        pd_net_msg_free(&l->alloc, m);
        return;
    }
    default: tell_compute(l, 'R', f); return;
    }
}

static void read_router(pd_wklink_t *l)
{
    pd_err_t err = { 0 };
    for (int budget = 0; budget < 256 && l->rsock; budget++) {
        int rc = pd_net_recv(l->rsock, l->in, &err);
        if (rc <= 0)
            return;
        l->last_router_ms = pd_now_ms();
        if (l->in->n_frames != 1 || l->in->truncated)
            PD_WARN("event=bad_router_message frames=%d", l->in->n_frames);
        else
            on_router_frame(l, &l->in->frames[0]);
        pd_net_in_close(l->in);
    }
}

/* ====== From the compute thread ====== */

static uint32_t hdr_gen(const uint8_t *h)
{
    return (uint32_t)h[1] | (uint32_t)h[2] << 8 | (uint32_t)h[3] << 16 | (uint32_t)h[4] << 24;
}

static uint64_t hdr_seq(const uint8_t *h)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | h[LK_HDR + i];
    return v;
}

static void read_compute(pd_wklink_t *l)
{
    for (int budget = 0; budget < 1024; budget++) {
        uint8_t hdr[LK_HDR_KV];
        int n = zmq_recv(l->lpair, hdr, sizeof hdr, ZMQ_DONTWAIT);
        if (n < 0)
            return;
        zmq_msg_t body;
        zmq_msg_init(&body);
        int more = 0;
        size_t more_len = sizeof more;
        zmq_getsockopt(l->lpair, ZMQ_RCVMORE, &more, &more_len);
        if (more)
            zmq_msg_recv(&body, l->lpair, 0);
        bool kv = n == LK_HDR_KV && hdr[0] == LK_KVEV && more;
        if (kv && hdr_seq(hdr) > l->kv_seq_read)
            l->kv_seq_read = hdr_seq(hdr);
        if (((n == LK_HDR && hdr[0] == LK_MSG) || kv) && more) {
            l->n_read++;
            /* Output of work a dropped generation held, or of a stalled
             * compute thread the router has written off: nobody wants it. */
            if (hdr_gen(hdr) != l->gen || l->st == LK_STALLED)
                l->dropped_stale++;
            else
                to_router(l, &body);
        } else if (n >= 1 && hdr[0] == LK_BEAT) {
            if (l->st == LK_REGISTERED)
                send_heartbeat(l);
        } else if (n >= 1 && hdr[0] == LK_LEAVE) {
            l->leaving = true;
        }
        zmq_msg_close(&body);
    }
}

/* ====== Timers ====== */

/* The watchdog: a compute thread inside one turn past
 * worker.compute_timeout_ms is stalled; we must not keep it alive. */
static void watch_compute(pd_wklink_t *l, uint64_t now)
{
    uint64_t since = atomic_load(&l->busy_since_ms);
    if (l->st == LK_STALLED) {
        if (atomic_load(&l->turns) == l->stalled_turns)
            return;
        PD_WARN("event=compute_recovered stalled_ms=%llu dropped=%llu",
                (unsigned long long)(now - l->stalled_at_ms),
                (unsigned long long)l->dropped_stale);
        reconnect(l, "compute_stalled");
        return;
    }
    if (l->st == LK_REFUSED || since == 0 || now < since ||
        now - since <= l->cfg->worker.compute_timeout_ms)
        return;
    char why[128];
    snprintf(why, sizeof why, "compute thread stalled: no progress for %llu ms",
             (unsigned long long)(now - since));
    PD_ERROR("event=compute_stalled busy_ms=%llu timeout_ms=%u turns=%llu",
             (unsigned long long)(now - since), l->cfg->worker.compute_timeout_ms,
             (unsigned long long)atomic_load(&l->turns));
    if (l->st == LK_REGISTERED)
        send_drain(l, why);
    drop_outbox(l); /* the router has written those requests off */
    l->stalled_turns = atomic_load(&l->turns);
    l->stalled_at_ms = now;
    l->dropped_stale = 0;
    set_state(l, LK_STALLED);
}

static void timers(pd_wklink_t *l)
{
    uint64_t now = pd_now_ms();
    flush_outbox(l);
    pthread_mutex_lock(&l->lock);
    bool draining = l->load.draining;
    pthread_mutex_unlock(&l->lock);
    /* Not connected yet (ZMQ_IMMEDIATE refused the send): try again soon;
     * sent but unanswered: once per beat. */
    if (l->st == LK_REGISTERING && now - l->last_reg_ms >= (l->reg_sent ? l->hb_ms : 5))
        send_register(l);
    if (l->st == LK_REGISTERED && now - l->last_hb_ms >= l->hb_ms)
        send_heartbeat(l);
    if ((l->st == LK_REGISTERING || l->st == LK_REGISTERED) && !draining &&
        now - l->last_router_ms > (uint64_t)l->hb_ms * l->liveness) {
        PD_WARN("event=router_lost router=%s silent_ms=%llu", l->cfg->worker.router,
                (unsigned long long)(now - l->last_router_ms));
        reconnect(l, "router_silent");
    }
    watch_compute(l, pd_now_ms());
    if (l->health == NULL)
        return;
    if (l->st == LK_STALLED) /* written once, then left to age */
        pd_proc_health(l->health, "stalled", now, UINT32_MAX);
    else
        pd_proc_health(l->health,
                       draining ? "draining" : l->st == LK_REGISTERED ? "registered" : "registering",
                       now, l->hb_ms);
}

static void *link_main(void *arg)
{
    pd_wklink_t *l = arg;
    send_register(l);
    while (!l->leaving) {
        zmq_pollitem_t items[2] = { { l->lpair, 0, ZMQ_POLLIN, 0 },
                                    { l->rsock, 0, ZMQ_POLLIN, 0 } };
        if (zmq_poll(items, l->rsock ? 2 : 1, LK_POLL_MS) < 0 && errno != EINTR) {
            PD_ERROR("event=link_poll_failed msg=\"%s\"", zmq_strerror(errno));
            break;
        }
        read_compute(l);
        read_router(l);
        timers(l);
    }
    if (l->st == LK_REGISTERED)
        send_drain(l, NULL);
    return NULL;
}

/* ====== Life ====== */

static void *pair_socket(void *zctx, pd_err_t *err)
{
    void *s = zmq_socket(zctx, ZMQ_PAIR);
    int zero = 0;
    if (s == NULL || zmq_setsockopt(s, ZMQ_SNDHWM, &zero, sizeof zero) != 0 ||
        zmq_setsockopt(s, ZMQ_RCVHWM, &zero, sizeof zero) != 0 ||
        zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero) != 0) {
        pd_err_set(err, PD_EIO, "link pair socket: %s", zmq_strerror(errno));
        if (s)
            zmq_close(s);
        return NULL;
    }
    return s;
}

static void link_free(pd_wklink_t *l)
{
    drop_outbox(l);
    pd_net_close(l->rsock);
    if (l->lpair)
        zmq_close(l->lpair);
    if (l->cpair)
        zmq_close(l->cpair);
    pthread_mutex_destroy(&l->lock);
    free(l->in);
    free(l);
}

pd_wklink_t *pd_wklink_start(const pd_config_t *cfg, const char *id, void *zctx,
                             const pd_wklink_info_t *info, pd_proc_health_t *health,
                             const pd_worker_load_t *load, pd_err_t *err)
{
    pd_wklink_t *l = calloc(1, sizeof *l);
    if (l == NULL || (l->in = calloc(1, sizeof *l->in)) == NULL) {
        free(l);
        pd_err_set(err, PD_ENOMEM, "worker link");
        return NULL;
    }
    pthread_mutex_init(&l->lock, NULL);
    l->cfg = cfg;
    snprintf(l->id, sizeof l->id, "%s", id);
    l->zctx = zctx;
    l->role = info->role;
    pd_net_copy_str(l->kv_endpoint, sizeof l->kv_endpoint, info->kv_endpoint);
    l->model_identity = info->model_identity;
    pd_net_copy_str(l->model_name, sizeof l->model_name, info->model_name);
    l->limits = info->limits;
    l->prefix_caching = info->prefix_caching;
    l->health = health;
    l->load = *load;
    l->hb_ms = cfg->worker.heartbeat_ms ? cfg->worker.heartbeat_ms : 500;
    l->liveness = cfg->worker.liveness ? cfg->worker.liveness : 3;
    pd_pb_alloc_init(&l->alloc,
                     (size_t)cfg->net.max_msg_bytes * PD_PB_BYTES_PER_WIRE_BYTE + PD_PB_BASE_BUDGET);
    char ep[64];
    snprintf(ep, sizeof ep, "inproc://pd-wklink-%p", (void *)l);
    if ((l->lpair = pair_socket(zctx, err)) == NULL || (l->cpair = pair_socket(zctx, err)) == NULL)
        goto fail;
    if (zmq_bind(l->lpair, ep) != 0 || zmq_connect(l->cpair, ep) != 0) {
        pd_err_set(err, PD_EIO, "link pair %s: %s", ep, zmq_strerror(errno));
        goto fail;
    }
    if (connect_router(l, err) != 0)
        goto fail;
    /* The sockets above move to the I/O thread now: pthread_create is the
     * full memory barrier ZeroMQ asks for when a socket changes threads. */
    int rc = pthread_create(&l->thread, NULL, link_main, l);
    if (rc != 0) {
        pd_err_set(err, PD_EIO, "link thread: %s", strerror(rc));
        goto fail;
    }
    l->started = true;
    return l;
fail:
    link_free(l);
    return NULL;
}

void pd_wklink_stop(pd_wklink_t *l)
{
    if (l == NULL)
        return;
    if (l->started) {
        uint8_t hdr[LK_HDR] = { LK_LEAVE, 0, 0, 0, 0 };
        if (zmq_send(l->cpair, hdr, sizeof hdr, 0) < 0)
            PD_ERROR("event=link_pair_failed msg=\"%s\"", zmq_strerror(errno));
        pthread_join(l->thread, NULL);
    }
    link_free(l);
}

/* ====== For the compute thread ====== */

void *pd_wklink_socket(pd_wklink_t *l) { return l->cpair; }

int pd_wklink_recv(pd_wklink_t *l, pd_wklink_event_t *ev)
{
    uint8_t hdr[LK_HDR];
    ev->kind = PD_WKLINK_NONE;
    zmq_msg_init(&ev->body);
    int n = zmq_recv(l->cpair, hdr, sizeof hdr, ZMQ_DONTWAIT);
    if (n < 0)
        return errno == EAGAIN ? 0 : PD_EIO;
    int more = 0;
    size_t more_len = sizeof more;
    zmq_getsockopt(l->cpair, ZMQ_RCVMORE, &more, &more_len);
    if (more && zmq_msg_recv(&ev->body, l->cpair, 0) < 0)
        return PD_EIO;
    if (n != LK_HDR)
        return 1; /* not ours: kind NONE */
    ev->gen = hdr_gen(hdr);
    ev->kind = hdr[0] == 'R' && more   ? PD_WKLINK_ROUTER
               : hdr[0] == 'D' && more ? PD_WKLINK_DROP
               : hdr[0] == 'Q'         ? PD_WKLINK_REFUSED
                                       : PD_WKLINK_NONE;
    return 1;
}

int pd_wklink_send(pd_wklink_t *l, uint32_t gen, const Pd__Msg *m, pd_err_t *err)
{
    size_t len = pd__msg__get_packed_size(m);
    zmq_msg_t payload;
    /* As pd_net_send's buffer: the fault hook (fault.h) may fail it. */
    if (pd_fault_alloc_fails() || zmq_msg_init_size(&payload, len) != 0)
        return pd_err_set(err, PD_ENOMEM, "zmq_msg_init_size(%zu)", len);
    pd__msg__pack(m, zmq_msg_data(&payload));
    bool kv = m->body_case == PD__MSG__BODY_KV_EVENTS && m->kv_events != NULL;
    uint64_t seq = kv ? m->kv_events->seq : 0;
    uint8_t hdr[LK_HDR_KV] = { kv ? LK_KVEV : LK_MSG, (uint8_t)gen, (uint8_t)(gen >> 8),
                               (uint8_t)(gen >> 16), (uint8_t)(gen >> 24) };
    for (int i = 0; i < 8; i++)
        hdr[LK_HDR + i] = (uint8_t)(seq >> (8 * i));
    if (zmq_send(l->cpair, hdr, kv ? LK_HDR_KV : LK_HDR, ZMQ_SNDMORE) < 0 ||
        zmq_msg_send(&payload, l->cpair, 0) < 0) {
        zmq_msg_close(&payload);
        return pd_err_set(err, PD_EIO, "link pair: %s", zmq_strerror(errno));
    }
    l->n_sent++;
    return 0;
}

void pd_wklink_beat_now(pd_wklink_t *l)
{
    uint8_t hdr[LK_HDR] = { LK_BEAT, 0, 0, 0, 0 };
    zmq_send(l->cpair, hdr, sizeof hdr, 0);
}

void pd_wklink_turn_begin(pd_wklink_t *l)
{
    uint64_t now = pd_now_ms();
    atomic_store(&l->busy_since_ms, now ? now : 1);
}

void pd_wklink_turn_end(pd_wklink_t *l)
{
    atomic_store(&l->busy_since_ms, 0);
    atomic_fetch_add(&l->turns, 1);
}

void pd_wklink_publish(pd_wklink_t *l, const pd_worker_load_t *load)
{
    pthread_mutex_lock(&l->lock);
    l->load = *load;
    l->load_sent = l->n_sent;
    pthread_mutex_unlock(&l->lock);
}

bool pd_wklink_registered(const pd_wklink_t *l) { return atomic_load(&l->registered); }
