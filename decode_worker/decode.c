/* decode.c -- the decode role as its host sees it: the table of functions,
 * its KV ingress socket, its life. Requests come in through ingress.c and
 * pd_decode_take; batch.c runs them. See decode.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "decode_internal.h"
#include "runtime/addr.h"

void dc_close_frames(zmq_msg_t *frames, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        zmq_msg_close(&frames[i]);
    free(frames);
}

/* ====== The role ====== */

static void on_task(void *self, const Pd__Msg *m) { dc_on_task(self, m->decode); }

static void on_cancel(void *self, uint64_t req, uint32_t epoch)
{
    pd_decode_t *d = self;
    dc_ingress_cancel(d, req, epoch);
    for (int i; (i = dc_seq_index(d, req, epoch)) >= 0;)
        dc_seq_remove(d, (size_t)i);
}

static int sockets(void *self, zmq_pollitem_t *items, int cap)
{
    pd_decode_t *d = self;
    int n = 0;
    if (d->kv_in && n < cap)
        items[n++] = (zmq_pollitem_t){ d->kv_in, 0, ZMQ_POLLIN, 0 };
    if (d->zap && n < cap)
        items[n++] = (zmq_pollitem_t){ pd_zap_socket(d->zap), 0, ZMQ_POLLIN, 0 };
    return n;
}

static void poll_sockets(void *self)
{
    pd_decode_t *d = self;
    if (d->zap)
        pd_zap_handle(d->zap);
    if (d->kv_in)
        dc_on_kv(d);
}

static bool ready(void *self) { return dc_ready(self); }

static uint32_t fill(void *self, pd_wkstep_t *st) { return dc_fill(self, st); }

static void done(void *self, const char *fail, uint64_t us) { dc_done(self, fail, us); }

static void timers(void *self) { dc_ingress_timers(self); }

static bool busy(const void *self)
{
    const pd_decode_t *d = self;
    return d->n_expects > 0 || d->n_seqs > 0 || d->n_orphans > 0 || d->n_streams > 0 ||
           d->n_early > 0;
}

static uint32_t held(const void *self) { return (uint32_t)((const pd_decode_t *)self)->n_seqs; }

static void load(const void *self, pd_worker_load_t *out)
{
    const pd_decode_t *d = self;
    out->running_seqs = d->n_running;
    out->waiting_seqs = dc_n_waiting(d);
    out->free_blocks = pd_kv_n_free(d->eng->kv);
    out->total_blocks = pd_kv_shape(d->eng->kv)->n_blocks;
    out->counters = d->c;
}

static void drop_all(void *self, char *held, size_t cap)
{
    pd_decode_t *d = self;
    snprintf(held, cap, "decode_seqs=%zu kv_orphans=%u", d->n_expects + d->n_seqs, d->n_orphans);
    while (d->n_seqs > 0)
        dc_seq_remove(d, d->n_seqs - 1);
    dc_ingress_drop_all(d);
    /* The cancels were that router's: a new one may reuse its request ids. */
    memset(d->cancelled, 0, sizeof d->cancelled);
    d->cancelled_next = 0;
    memset(d->refused, 0, sizeof d->refused);
    d->refused_next = 0;
}

static void close_sockets(void *self)
{
    pd_decode_t *d = self;
    pd_net_close(d->kv_in);
    d->kv_in = NULL;
    pd_zap_free(d->zap);
    d->zap = NULL;
}

static const pd_wkrole_ops_t g_ops = {
    .name = "decode",
    .on_task = on_task,
    .on_cancel = on_cancel,
    .sockets = sockets,
    .poll = poll_sockets,
    .ready = ready,
    .fill = fill,
    .done = done,
    .timers = timers,
    .busy = busy,
    .held = held,
    .load = load,
    .drop_all = drop_all,
    .close = close_sockets,
};

pd_wkrole_t pd_decode_role(pd_decode_t *d) { return (pd_wkrole_t){ &g_ops, d }; }

static int sink_take(void *ctx, pd_kv_handoff_t *h) { return pd_decode_take(ctx, h); }

pd_kv_sink_t pd_decode_sink(pd_decode_t *d) { return (pd_kv_sink_t){ d, sink_take }; }

const char *pd_decode_kv_endpoint(const pd_decode_t *d) { return d->kv_endpoint; }

/* ====== Life ====== */

/* The KV ingress: a ROUTER bound to decode.kv_endpoint, frames as large as
 * a block; with CURVE, a ZAP handler that admits the allowed keys only.
 * kv_endpoint is what Register announces: decode.kv_advertise, or what a
 * wildcard bind stands for (runtime/addr.h). */
static int bind_ingress(pd_decode_t *d, pd_err_t *err)
{
    const pd_config_t *cfg = d->cfg;
    if (cfg->security.curve) {
        d->zap = pd_zap_new(d->env.zctx, cfg->security.allowed_keys,
                            cfg->security.n_allowed_keys, err);
        if (d->zap == NULL)
            return PD_EINVAL;
    }
    pd_net_opts_t o;
    pd_net_opts_from_config(&o, cfg);
    /* Block frames are larger than control messages. */
    if (o.maxmsgsize > 0 && (uint64_t)o.maxmsgsize < d->eng->block_bytes + 4096)
        o.maxmsgsize = (int64_t)d->eng->block_bytes + 4096;
    d->kv_in = pd_net_socket(d->env.zctx, ZMQ_ROUTER, &o, err);
    if (d->kv_in == NULL)
        return pd_err_wrap(err, PD_EIO, "KV ingress socket");
    char bound[PD_CFG_STR];
    const char *how;
    int rc = pd_net_bind(d->kv_in, cfg->decode.kv_endpoint, bound, sizeof bound, err);
    if (rc)
        return pd_err_wrap(err, rc, "decode.kv_endpoint");
    /* What prefill workers can reach, which a wildcard bind is not (addr.h). */
    rc = pd_addr_advertise(bound, cfg->decode.kv_advertise, cfg->worker.router, d->kv_endpoint,
                           sizeof d->kv_endpoint, &how, err);
    if (rc)
        return rc;
    PD_INFO("event=kv_advertise bound=%s kv=%s from=%s", bound, d->kv_endpoint, how);
    return 0;
}

pd_decode_t *pd_decode_new(const pd_wkrole_env_t *env, pd_err_t *err)
{
    pd_decode_t *d = calloc(1, sizeof *d);
    if (d == NULL || (d->in = malloc(sizeof *d->in)) == NULL) {
        free(d);
        pd_err_set(err, PD_ENOMEM, "decode role");
        return NULL;
    }
    d->in->n_frames = 0;
    d->env = *env;
    d->eng = env->eng;
    d->cfg = env->cfg;
    d->port = env->port;
    snprintf(d->id, sizeof d->id, "%s", env->id);
    pd_pb_alloc_init(&d->alloc, (size_t)d->cfg->net.max_msg_bytes * PD_PB_BYTES_PER_WIRE_BYTE +
                                    PD_PB_BASE_BUDGET);
    d->step = calloc(d->eng->max_fwd_seqs ? d->eng->max_fwd_seqs : 1, sizeof *d->step);
    if (d->step == NULL) {
        pd_decode_free(d);
        pd_err_set(err, PD_ENOMEM, "decode role");
        return NULL;
    }
    if (bind_ingress(d, err) != 0) {
        pd_decode_free(d);
        return NULL;
    }
    return d;
}

void pd_decode_free(pd_decode_t *d)
{
    if (d == NULL)
        return;
    close_sockets(d);
    while (d->n_seqs > 0)
        dc_seq_remove(d, d->n_seqs - 1);
    dc_ingress_drop_all(d);
    free(d->seqs);
    free(d->step);
    free(d->expects);
    free(d->in);
    free(d);
}

/* ====== For tests ====== */

void pd_decode_held(const pd_decode_t *d, pd_decode_held_t *out)
{
    out->expected = (uint32_t)d->n_expects;
    out->waiting = dc_n_waiting(d);
    out->running = d->n_running;
    out->orphans = d->n_orphans;
    out->streams = d->n_streams;
    out->early = d->n_early;
}

int pd_decode_check(const pd_decode_t *d, pd_err_t *why)
{
    uint32_t bs = pd_kv_shape(d->eng->kv)->block_size;
    uint32_t running = 0;
    if (d->n_orphans > DC_MAX_ORPHANS || d->n_expects + d->n_seqs > DC_MAX_SEQS)
        return pd_err_set(why, PD_EINVAL, "held: %u orphans, %zu expected + %zu sequences",
                          d->n_orphans, d->n_expects, d->n_seqs);
    for (size_t i = 0; i < d->n_expects; i++)
        if (d->expects[i].n_hist + 1 > d->expects[i].cap_hist)
            return pd_err_set(why, PD_EINVAL, "expected %zu: history %u of %u", i,
                              d->expects[i].n_hist, d->expects[i].cap_hist);
    for (size_t i = 0; i < d->n_seqs; i++) {
        const dc_seq_t *s = d->seqs[i];
        running += s->st == DS_RUNNING;
        if (s->n_hist > s->cap_hist)
            return pd_err_set(why, PD_EINVAL, "seq %zu: history %u of %u", i, s->n_hist,
                              s->cap_hist);
        if (i > 0 && d->seqs[i - 1]->ticket > s->ticket)
            return pd_err_set(why, PD_EINVAL, "seq %zu: out of arrival order", i);
        if (s->st == DS_WAITING && !s->has_blocks) {
            if (s->n_frames != (s->n_past + bs - 1) / bs)
                return pd_err_set(why, PD_EINVAL, "seq %zu: %u frames for %u positions", i,
                                  s->n_frames, s->n_past);
            for (uint32_t f = 0; f < s->n_frames; f++)
                if (zmq_msg_size((zmq_msg_t *)&s->frames[f]) != d->eng->block_bytes)
                    return pd_err_set(why, PD_EINVAL, "seq %zu: frame %u of %zu bytes", i, f,
                                      zmq_msg_size((zmq_msg_t *)&s->frames[f]));
        }
    }
    if (running != d->n_running)
        return pd_err_set(why, PD_EINVAL, "%u running, counted %u", running, d->n_running);
    if (dc_stream_check(d, why) != 0 || dc_early_check(d, why) != 0)
        return PD_EINVAL;
    for (uint32_t i = 0; i < d->n_orphans; i++)
        if (d->orphans[i].n_frames != (d->orphans[i].n_tokens + bs - 1) / bs)
            return pd_err_set(why, PD_EINVAL, "orphan %u: %u frames for %u positions", i,
                              d->orphans[i].n_frames, d->orphans[i].n_tokens);
    return 0;
}
