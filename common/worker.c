/* worker.c -- the worker process: setup, router link, reactor. See worker.h. */
#include "worker.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/fault.h"
#include "base/log.h"
#include "runtime/addr.h"
#include "runtime/proc.h"

static volatile sig_atomic_t g_stop; /* set by SIGINT/SIGTERM (proc.h) */

/* ====== Shared helpers ====== */

int wk_params_from_pb(const wk_t *w, const Pd__GenParams *p, wk_params_t *out, pd_err_t *err)
{
    pd_gen_limits_t lim = { w->vocab, w->max_seq_len };
    return pd_codec_params_from_pb(p, &lim, out, err);
}

Pd__FinishReason wk_finish_check(const wk_t *w, const wk_params_t *p, int32_t token,
                                 uint32_t index, uint32_t position)
{
    if (!p->ignore_eos && pd_tok_is_eog(w->tok, token))
        return PD__FINISH_REASON__FINISH_EOS;
    for (uint32_t i = 0; i < p->n_stop_ids; i++)
        if (p->stop_ids[i] == token)
            return PD__FINISH_REASON__FINISH_STOP_ID;
    for (uint32_t i = 0; i < w->cfg.model.n_end_tokens; i++)
        if (!p->ignore_eos && w->cfg.model.end_tokens[i] == token)
            return PD__FINISH_REASON__FINISH_EOS;
    if (index + 1 >= p->max_tokens)
        return PD__FINISH_REASON__FINISH_LENGTH;
    /* The token must be fed at `position` to go on: the context must hold it. */
    if (position + 1 >= p->max_seq_len)
        return PD__FINISH_REASON__FINISH_CONTEXT;
    return PD__FINISH_REASON__FINISH_NONE;
}

static void flush_outbox(wk_t *w)
{
    while (w->out_len > 0) {
        wk_out_t *o = &w->outbox[w->out_head];
        if (zmq_send(w->rsock, o->data, o->len, ZMQ_DONTWAIT) < 0) {
            if (errno != EAGAIN)
                PD_WARN("event=router_send_failed msg=\"%s\"", zmq_strerror(errno));
            return;
        }
        free(o->data);
        w->out_head = (w->out_head + 1) % WK_OUTBOX;
        w->out_len--;
    }
}

void wk_send_router(wk_t *w, const Pd__Msg *m)
{
    if (w->rsock == NULL)
        return;
    flush_outbox(w);
    if (w->out_len == 0) {
        pd_err_t err = { 0 };
        int rc = pd_net_send(w->rsock, NULL, 0, m, false, &err);
        if (rc == 0)
            return;
        if (rc != PD_EFULL) {
            PD_WARN("event=router_send_failed type=%s msg=\"%s\"", pd_net_body_name(m->body_case),
                    err.msg);
            return;
        }
    }
    /* Back-pressure: keep it, in order, for the next turn. */
    if (w->out_len == WK_OUTBOX) {
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
    w->outbox[(w->out_head + w->out_len) % WK_OUTBOX] = (wk_out_t){ buf, len };
    w->out_len++;
}

void wk_send_error(wk_t *w, uint64_t req, Pd__ErrorCode code, const char *fmt, ...)
{
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    PD_WARN("event=request_error req=%llu code=%d msg=\"%s\"", (unsigned long long)req, (int)code,
            text);
    Pd__Error e = PD__ERROR__INIT;
    e.has_request_id = req != 0;
    e.request_id = req;
    e.has_code = true;
    e.code = code;
    e.message = text;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_ERROR;
    m.error = &e;
    wk_send_router(w, &m);
}

void wk_send_preempted(wk_t *w, uint64_t req, uint32_t epoch, uint32_t n_generated,
                       const char *why)
{
    Pd__Preempted p = PD__PREEMPTED__INIT;
    p.has_request_id = p.has_epoch = p.has_n_generated = true;
    p.request_id = req;
    p.epoch = epoch;
    p.n_generated = n_generated;
    p.reason = (char *)why;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_PREEMPTED;
    m.preempted = &p;
    wk_send_router(w, &m);
}

/* ====== Router link ====== */

static void send_register(wk_t *w)
{
    Pd__Register r = PD__REGISTER__INIT;
    r.has_protocol_version = r.has_role = r.has_model_identity = true;
    r.protocol_version = PD_PROTOCOL_VERSION;
    r.worker_id = w->id;
    r.role = (Pd__Role)w->role;
    r.kv_endpoint = w->kv_endpoint;
    r.model_identity = w->model->identity;
    r.model_name = w->model->name;
    pd_worker_limits_t lim = {
        .block_size = pd_kv_shape(w->kv)->block_size,
        .total_blocks = pd_kv_shape(w->kv)->n_blocks,
        .max_batch_size = w->role == WK_ROLE_PREFILL ? w->cfg.prefill.max_batch_size
                                                     : w->cfg.decode.max_batch_size,
        .max_batch_tokens = w->cfg.prefill.max_batch_tokens,
        .max_seq_len = w->max_seq_len,
    };
    pd_codec_limits_to_pb(&lim, &r);
    r.has_prefix_caching = true;
    r.prefix_caching = w->kvev != NULL;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_REGISTER;
    m.register_ = &r;
    pd_err_t err = { 0 };
    /* Not through the outbox: a register that cannot go now is simply
     * sent again by the timer. */
    w->reg_sent = pd_net_send(w->rsock, NULL, 0, &m, false, &err) == 0;
    if (w->reg_sent)
        PD_DEBUG("event=register_sent router=%s", w->cfg.worker.router);
    w->last_reg_ms = pd_net_now_ms();
}

static void send_heartbeat(wk_t *w)
{
    pd_worker_load_t l = {
        .queued_prefill_tokens = wk_prefill_queued_tokens(w),
        .running_seqs = w->n_running,
        .waiting_seqs = wk_decode_n_waiting(w),
        .free_blocks = pd_kv_n_free(w->kv),
        .total_blocks = pd_kv_shape(w->kv)->n_blocks,
        .draining = w->draining,
        .counters = w->c,
    };
    /* 0 on the wire for a decode worker: it has no prefill passes. */
    l.counters.prefill_pass_tokens = w->role != WK_ROLE_DECODE ? wk_prefill_pass_tokens(w) : 0;
    if (w->kvev) {
        wk_prefill_kv_events(w); /* the seq below is then the last one sent */
        pd_kv_prefix_stats_t ps;
        pd_kv_prefix_stats(w->kv, &ps);
        l.counters.prefix_queries = ps.query_tokens;
        l.counters.prefix_hits = ps.hit_tokens;
        l.counters.prefix_requests = ps.queries;
        l.counters.prefix_evictions = ps.evicted_blocks;
        l.counters.prefix_cached_blocks = pd_kv_prefix_n_cached(w->kv);
        l.kv_events_seq = pd_kvev_last_seq(w->kvev);
    }
    Pd__Heartbeat h;
    Pd__WorkerCounters c;
    pd_codec_load_to_pb(&l, &h, &c);
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_HEARTBEAT;
    m.heartbeat = &h;
    wk_send_router(w, &m);
    w->last_hb_ms = pd_net_now_ms();
}

static int connect_router(wk_t *w, pd_err_t *err)
{
    pd_net_opts_t o;
    pd_net_opts_from_config(&o, &w->cfg);
    w->rsock = pd_net_socket(w->zctx, ZMQ_DEALER, &o, err);
    if (w->rsock == NULL)
        return PD_EIO;
    int rc = pd_net_connect(w->rsock, w->cfg.worker.router, err);
    if (rc)
        return rc;
    w->registered = false;
    w->last_router_ms = pd_net_now_ms();
    send_register(w);
    return 0;
}

/* The router that gave us our work is gone (why): its requests are
 * orphans nobody will read. Drop them all, freeing their blocks, and say
 * how many. */
static void drop_router_work(wk_t *w, const char *why)
{
    uint32_t n_tasks = w->n_tasks, n_seqs = w->n_seqs, n_orphans = w->n_orphans;
    wk_prefill_drop_all(w);
    wk_decode_drop_all(w);
    PD_WARN("event=dropped_orphans why=%s prefill_tasks=%u decode_seqs=%u kv_orphans=%u "
            "free_blocks=%u/%u", why, n_tasks, n_seqs, n_orphans, pd_kv_n_free(w->kv),
            pd_kv_shape(w->kv)->n_blocks);
}

/* The router went silent: whatever it had given us is its to re-dispatch,
 * so drop it all and register again on a fresh connection. */
static void reconnect_router(wk_t *w)
{
    PD_WARN("event=router_lost router=%s silent_ms=%llu", w->cfg.worker.router,
            (unsigned long long)(pd_net_now_ms() - w->last_router_ms));
    drop_router_work(w, "router_silent");
    for (uint32_t i = 0; i < w->out_len; i++)
        free(w->outbox[(w->out_head + i) % WK_OUTBOX].data);
    w->out_len = 0;
    pd_net_close(w->rsock);
    w->rsock = NULL;
    pd_err_t err = { 0 };
    if (connect_router(w, &err) != 0)
        PD_ERROR("event=reconnect_failed msg=\"%s\"", err.msg);
}

static void on_register_reply(wk_t *w, const Pd__RegisterReply *r)
{
    if (!r->has_accepted || !r->accepted) {
        PD_ERROR("event=refused_by_router router=%s reason=\"%s\"", w->cfg.worker.router,
                 r->reason ? r->reason : "?");
        *w->stop = 1;
        w->refused = true;
        return;
    }
    w->registered = true;
    if (r->has_heartbeat_ms && r->heartbeat_ms >= 10 && r->heartbeat_ms <= 60000)
        w->hb_ms = r->heartbeat_ms;
    if (r->has_liveness && r->liveness >= 1 && r->liveness <= 100)
        w->liveness = r->liveness;
    PD_INFO("event=registered router=%s role=%d kv=%s blocks=%u", w->cfg.worker.router,
            (int)w->role, w->kv_endpoint[0] ? w->kv_endpoint : "-", pd_kv_shape(w->kv)->n_blocks);
    send_heartbeat(w);
}

static void handle_router(wk_t *w);

static void on_router_msg(wk_t *w, const Pd__Msg *m)
{
    switch (m->body_case) {
    case PD__MSG__BODY_REGISTER_REPLY: on_register_reply(w, m->register_reply); break;
    case PD__MSG__BODY_HEARTBEAT: break;
    case PD__MSG__BODY_PREFILL:
        if (w->role == WK_ROLE_DECODE)
            wk_send_error(w, m->prefill->request_id, PD__ERROR_CODE__INVALID_ARGUMENT,
                          "worker %s is a decode worker: no prefill tasks", w->id);
        else if (w->draining)
            wk_send_preempted(w, m->prefill->request_id, m->prefill->epoch,
                              m->prefill->params ? m->prefill->params->n_generated : 0,
                              "worker draining");
        else
            wk_prefill_on_task(w, m->prefill);
        break;
    case PD__MSG__BODY_DECODE:
        if (w->role == WK_ROLE_PREFILL)
            wk_send_error(w, m->decode->request_id, PD__ERROR_CODE__INVALID_ARGUMENT,
                          "worker %s is a prefill worker: no decode tasks", w->id);
        else
            wk_decode_on_task(w, m->decode);
        break;
    case PD__MSG__BODY_CANCEL:
        wk_prefill_cancel(w, m->cancel->request_id, m->cancel->epoch);
        wk_decode_cancel(w, m->cancel->request_id, m->cancel->epoch);
        break;
    case PD__MSG__BODY_KV_RESYNC:
        if (w->kvev) {
            PD_DEBUG("event=kv_resync_asked last_seq=%llu",
                     (unsigned long long)m->kv_resync->last_seq);
            pd_kvev_resync(w->kvev);
            wk_prefill_kv_events(w);
        }
        break;
    case PD__MSG__BODY_DRAIN:
        if (!w->draining) {
            PD_INFO("event=drain_requested");
            *w->stop = 1;
        }
        break;
    case PD__MSG__BODY_ERROR:
        PD_WARN("event=router_error code=%d msg=\"%s\"", (int)m->error->code,
                m->error->message ? m->error->message : "");
        if (m->error->code == PD__ERROR_CODE__UNAVAILABLE && w->registered) {
            /* "unknown worker: register first" -- the router restarted. */
            w->registered = false;
            drop_router_work(w, "router_restarted");
            send_register(w);
        }
        break;
    default:
        PD_WARN("event=unexpected_message from=router type=%s", pd_net_body_name(m->body_case));
        break;
    }
}

void wk_on_router_payload(wk_t *w, const void *data, size_t len)
{
    pd_err_t err = { 0 };
    pd_net_peek_t pk;
    if (pd_fault_armed(PD_FAULT_DECODE_ADMIT)) { /* fault.h test hook */
        pd_net_peek(data, len, &pk);
        if (pk.body_case == PD__MSG__BODY_DECODE && pk.has_request_id)
            pd_fault_enter(PD_FAULT_DECODE_ADMIT, pk.request_id);
    }
    Pd__Msg *m = pd_net_unpack(&w->alloc, data, len, &err);
    if (m == NULL && err.code == PD_ENOMEM) {
        /* A task we could not even decode must still end: the router
         * fails the request (it would otherwise wait for its deadline). */
        pd_net_peek(data, len, &pk);
        PD_WARN("event=bad_router_message type=%s msg=\"%s\"", pd_net_body_name(pk.body_case),
                err.msg);
        if ((pk.body_case == PD__MSG__BODY_DECODE || pk.body_case == PD__MSG__BODY_PREFILL) &&
            pk.has_request_id && pk.request_id != 0)
            wk_send_error(w, pk.request_id, PD__ERROR_CODE__RESOURCE_EXHAUSTED,
                          "%s task: %s", pd_net_body_name(pk.body_case), err.msg);
    } else if (m == NULL) {
        PD_WARN("event=bad_router_message msg=\"%s\"", err.msg);
    } else {
        on_router_msg(w, m);
    }
    pd_net_msg_free(&w->alloc, m);
    pd_fault_leave();
}

static void handle_router(wk_t *w)
{
    pd_err_t err = { 0 };
    for (int budget = 0; budget < 256 && w->rsock; budget++) {
        int rc = pd_net_recv(w->rsock, w->in, &err);
        if (rc <= 0)
            return;
        w->last_router_ms = pd_net_now_ms();
        if (w->in->n_frames != 1 || w->in->truncated) {
            PD_WARN("event=bad_router_message frames=%d", w->in->n_frames);
            pd_net_in_close(w->in);
            continue;
        }
        wk_on_router_payload(w, zmq_msg_data(&w->in->frames[0]),
                             zmq_msg_size(&w->in->frames[0]));
        pd_net_in_close(w->in);
    }
}

/* ====== Setup ====== */

static int setup(wk_t *w, const pd_proc_args_t *a, wk_role_t role, pd_err_t *err)
{
    w->cfg = a->cfg;
    w->role = role;
    if (a->id[0])
        snprintf(w->id, sizeof w->id, "%s", a->id);
    else
        snprintf(w->id, sizeof w->id, "%s-%d",
                 role == WK_ROLE_PREFILL ? "prefill" : role == WK_ROLE_DECODE ? "decode" : "both",
                 (int)getpid());
    if (w->cfg.model.path[0] == '\0')
        return pd_err_set(err, PD_EINVAL, "model.path: not set (use --model PATH)");
    if (w->cfg.worker.router[0] == '\0')
        return pd_err_set(err, PD_EINVAL, "worker.router: not set (use --router ADDR)");
    w->model = pd_model_load(w->cfg.model.path, err);
    if (w->model == NULL)
        return pd_err_wrap(err, PD_EINVAL, "model %s", w->cfg.model.path);
    w->tok = pd_tok_load(w->model->gguf, err);
    if (w->tok == NULL)
        return pd_err_wrap(err, PD_EINVAL, "tokenizer");
    w->vocab = w->model->cfg.vocab_size;
    w->max_seq_len = w->model->cfg.ctx_len;
    if (w->cfg.model.max_seq_len && w->cfg.model.max_seq_len < w->max_seq_len)
        w->max_seq_len = w->cfg.model.max_seq_len;
    pd_kv_shape_t shape = { w->model->cfg.n_layers, w->model->cfg.n_kv_heads,
                            w->model->cfg.head_dim, w->cfg.kv.block_size, 0 };
    shape.n_blocks = w->cfg.kv.num_blocks
                         ? w->cfg.kv.num_blocks
                         : pd_kv_blocks_for_budget(&shape, (uint64_t)w->cfg.kv.memory_mb << 20);
    if (shape.n_blocks == 0)
        return pd_err_set(err, PD_EINVAL, "kv: no blocks fit (kv.num_blocks / kv.memory_mb)");
    w->kv = pd_kv_new(&shape, err);
    if (w->kv == NULL)
        return pd_err_wrap(err, PD_ENOMEM, "kv cache");
    w->block_bytes = pd_kv_block_bytes(w->kv);
    if (role != WK_ROLE_DECODE && w->cfg.kv.prefix_caching) {
        /* The pool queues events between flushes (each loop turn); more
         * than this many in one turn and a snapshot replaces them. */
        if (pd_kv_prefix_enable(w->kv, pd_kv_hash_root(w->model->identity, shape.block_size),
                                NULL, 65536, err) != 0)
            return pd_err_wrap(err, PD_ENOMEM, "prefix cache");
        w->kvev = pd_kvev_new(pd_kvev_per_msg(w->cfg.net.max_msg_bytes), err);
        if (w->kvev == NULL)
            return pd_err_wrap(err, PD_ENOMEM, "prefix cache events");
        pd_kvev_resync(w->kvev); /* the first message is a snapshot */
    }
    uint32_t pf_tokens = role == WK_ROLE_DECODE ? 0 : w->cfg.prefill.max_batch_tokens;
    uint32_t pf_seqs = role == WK_ROLE_DECODE ? 0 : w->cfg.prefill.max_batch_size;
    uint32_t dc_seqs = role == WK_ROLE_PREFILL ? 0 : w->cfg.decode.max_batch_size;
    w->max_fwd_tokens = pf_tokens > dc_seqs ? pf_tokens : dc_seqs;
    w->max_fwd_seqs = pf_seqs > dc_seqs ? pf_seqs : dc_seqs;
    if (w->max_fwd_tokens == 0 || w->max_fwd_seqs == 0)
        return pd_err_set(err, PD_EINVAL, "batch limits: max_batch_tokens and max_batch_size "
                          "must be positive");
    if (w->max_fwd_seqs > w->max_fwd_tokens)
        w->max_fwd_tokens = w->max_fwd_seqs;
    pd_engine_opts_t eo;
    pd_engine_opts_default(&eo);
    eo.max_batch_tokens = w->max_fwd_tokens;
    eo.max_ctx = w->max_seq_len;
    eo.n_threads = w->cfg.model.threads ? (int)w->cfg.model.threads : 1;
    eo.batch_invariant = w->cfg.model.batch_invariant;
    eo.batch_invariant_quant = w->cfg.model.batch_invariant_quant;
    w->engine = pd_engine_new(w->model, w->kv, &eo, err);
    if (w->engine == NULL)
        return pd_err_wrap(err, PD_ENOMEM, "engine");
    w->scratch = pd_sampler_scratch_new(w->vocab);
    w->logits = malloc((size_t)w->max_fwd_seqs * w->vocab * sizeof *w->logits);
    w->b_tokens = malloc(w->max_fwd_tokens * sizeof *w->b_tokens);
    w->b_pos = malloc(w->max_fwd_tokens * sizeof *w->b_pos);
    w->b_seq = malloc(w->max_fwd_tokens * sizeof *w->b_seq);
    w->b_want = malloc(w->max_fwd_tokens * sizeof *w->b_want);
    w->b_tables = malloc(w->max_fwd_seqs * sizeof *w->b_tables);
    w->b_ntable = malloc(w->max_fwd_seqs * sizeof *w->b_ntable);
    w->in = malloc(sizeof *w->in);
    if (!w->scratch || !w->logits || !w->b_tokens || !w->b_pos || !w->b_seq || !w->b_want ||
        !w->b_tables || !w->b_ntable || !w->in)
        return pd_err_set(err, PD_ENOMEM, "batch buffers");
    w->in->n_frames = 0;
    pd_pb_alloc_init(&w->alloc,
                     (size_t)w->cfg.net.max_msg_bytes * PD_PB_BYTES_PER_WIRE_BYTE +
                         PD_PB_BASE_BUDGET);
    w->hb_ms = w->cfg.worker.heartbeat_ms ? w->cfg.worker.heartbeat_ms : 500;
    w->liveness = w->cfg.worker.liveness ? w->cfg.worker.liveness : 3;
    w->zctx = zmq_ctx_new();
    if (w->zctx == NULL)
        return pd_err_set(err, PD_EIO, "zmq_ctx_new failed");
    if (role != WK_ROLE_PREFILL && w->cfg.security.curve) {
        w->zap = pd_zap_new(w->zctx, w->cfg.security.allowed_keys,
                            w->cfg.security.n_allowed_keys, err);
        if (w->zap == NULL)
            return PD_EINVAL;
    }
    if (role != WK_ROLE_PREFILL) {
        pd_net_opts_t o;
        pd_net_opts_from_config(&o, &w->cfg);
        /* Block frames are larger than control messages. */
        if (o.maxmsgsize > 0 && (uint64_t)o.maxmsgsize < w->block_bytes + 4096)
            o.maxmsgsize = (int64_t)w->block_bytes + 4096;
        w->kv_in = pd_net_socket(w->zctx, ZMQ_ROUTER, &o, err);
        if (w->kv_in == NULL)
            return pd_err_wrap(err, PD_EIO, "KV ingress socket");
        char bound[PD_CFG_STR];
        const char *how;
        int rc = pd_net_bind(w->kv_in, w->cfg.decode.kv_endpoint, bound, sizeof bound, err);
        if (rc)
            return pd_err_wrap(err, rc, "decode.kv_endpoint");
        rc = pd_addr_advertise(bound, w->cfg.decode.kv_advertise, w->cfg.worker.router,
                               w->kv_endpoint, sizeof w->kv_endpoint, &how, err);
        if (rc)
            return rc;
        PD_INFO("event=kv_advertise bound=%s kv=%s from=%s", bound, w->kv_endpoint, how);
    }
    PD_INFO("event=loaded model=\"%s\" role=%d blocks=%u block_bytes=%zu max_seq_len=%u "
            "threads=%d kv=%s",
            w->model->name, (int)role, shape.n_blocks, w->block_bytes, w->max_seq_len,
            eo.n_threads, w->kv_endpoint[0] ? w->kv_endpoint : "-");
    return connect_router(w, err);
}

static void teardown(wk_t *w)
{
    for (uint32_t i = 0; i < w->n_egress; i++)
        pd_net_close(w->egress[i].sock);
    /* Blocks still referenced by ZeroMQ (zero-copy frames) must outlive the
     * context: zmq_ctx_term waits for the I/O threads to let go. */
    pd_net_close(w->kv_in);
    pd_net_close(w->rsock);
    pd_zap_free(w->zap);
    w->zap = NULL;
    for (uint32_t i = 0; i < w->out_len; i++)
        free(w->outbox[(w->out_head + i) % WK_OUTBOX].data);
    if (w->zctx)
        zmq_ctx_term(w->zctx);
    w->kv_in = NULL;
    wk_prefill_drop_all(w);
    wk_decode_drop_all(w);
    free(w->tasks);
    free(w->seqs);
    free(w->logits);
    free(w->b_tokens);
    free(w->b_pos);
    free(w->b_seq);
    free(w->b_want);
    free(w->b_tables);
    free(w->b_ntable);
    free(w->in);
    pd_sampler_scratch_free(w->scratch);
    pd_engine_free(w->engine);
    pd_kvev_free(w->kvev);
    pd_kv_free(w->kv);
    pd_tok_free(w->tok);
    pd_model_free(w->model);
}

/* ====== Reactor ====== */

static void timers(wk_t *w)
{
    /* Read what queued up during a long forward pass first: the router's
     * beats are in there, and its silence must not be misjudged. */
    handle_router(w);
    uint64_t now = pd_net_now_ms();
    flush_outbox(w);
    /* Not connected yet (ZMQ_IMMEDIATE refused the send): try again soon;
     * sent but unanswered: once per beat. */
    if (!w->registered && now - w->last_reg_ms >= (w->reg_sent ? w->hb_ms : 5))
        send_register(w);
    if (w->registered && now - w->last_hb_ms >= w->hb_ms)
        send_heartbeat(w);
    if (now - w->last_router_ms > (uint64_t)w->hb_ms * w->liveness && !w->draining)
        reconnect_router(w);
    pd_proc_health(w->health, w->draining ? "draining" : w->registered ? "registered" : "registering",
                   now, w->hb_ms);
    wk_prefill_timers(w);
    wk_decode_timers(w);
    wk_prefill_kv_events(w);
}

static int run(wk_t *w)
{
    zmq_pollitem_t items[3 + WK_MAX_EGRESS];
    while (1) {
        if (*w->stop && !w->draining) {
            w->draining = true;
            w->drain_deadline_ms = pd_net_now_ms() + w->cfg.worker.drain_timeout_ms;
            /* What it holds now is what the drain must finish (tests check it). */
            PD_INFO("event=draining deadline_ms=%u prefill_tasks=%u decode_seqs=%u",
                    w->cfg.worker.drain_timeout_ms, w->n_tasks, w->n_seqs);
            if (w->registered)
                send_heartbeat(w);
        }
        if (w->draining) {
            bool idle = !wk_prefill_busy(w) && !wk_decode_busy(w);
            if (idle || !w->registered || pd_net_now_ms() >= w->drain_deadline_ms)
                break;
        }
        int n = 0;
        items[n++] = (zmq_pollitem_t){ w->rsock, 0, ZMQ_POLLIN, 0 };
        if (w->kv_in)
            items[n++] = (zmq_pollitem_t){ w->kv_in, 0, ZMQ_POLLIN, 0 };
        for (uint32_t i = 0; i < w->n_egress; i++)
            if (w->egress[i].sock)
                items[n++] = (zmq_pollitem_t){ w->egress[i].sock, 0, ZMQ_POLLIN, 0 };
        if (w->zap)
            items[n++] = (zmq_pollitem_t){ pd_zap_socket(w->zap), 0, ZMQ_POLLIN, 0 };
        bool busy = wk_prefill_ready(w) || wk_decode_ready(w);
        int rc = zmq_poll(items, n, busy ? 0 : 5);
        if (rc < 0 && errno != EINTR) {
            PD_ERROR("event=poll_failed msg=\"%s\"", zmq_strerror(errno));
            return 1;
        }
        if (w->zap)
            pd_zap_handle(w->zap);
        handle_router(w);
        if (w->kv_in)
            wk_decode_on_kv(w);
        wk_prefill_poll_egress(w);
        if (wk_prefill_ready(w))
            wk_prefill_run(w);
        if (wk_decode_ready(w))
            wk_decode_step(w);
        timers(w);
    }
    if (w->registered) {
        /* Leaving: the router forgets us now rather than after missed beats. */
        Pd__Drain d = PD__DRAIN__INIT;
        Pd__Msg m = PD__MSG__INIT;
        m.body_case = PD__MSG__BODY_DRAIN;
        m.drain = &d;
        flush_outbox(w);
        pd_net_send(w->rsock, NULL, 0, &m, false, NULL);
    }
    PD_INFO("event=stopped prefill_busy=%d decode_busy=%d", wk_prefill_busy(w),
            wk_decode_busy(w));
    return 0;
}

int pd_worker_main(int argc, char **argv, wk_role_t default_role)
{
    static pd_proc_args_t args; /* large: keep them off the stack */
    static wk_t w;
    const char *prog = default_role == WK_ROLE_PREFILL ? "pd-prefill" : "pd-decode";
    pd_err_t err = { 0 };
    if (pd_proc_parse(&args, argc, argv, &err) != 0) {
        fprintf(stderr, "%s: %s\n", prog, err.msg);
        pd_proc_usage(prog, NULL);
        return 2;
    }
    if (args.help) {
        pd_proc_usage(prog, "A worker: registers with the router at worker.router.\n");
        return 0;
    }
    wk_role_t role = default_role;
    if (strcmp(args.role, "prefill") == 0)
        role = WK_ROLE_PREFILL;
    else if (strcmp(args.role, "decode") == 0)
        role = WK_ROLE_DECODE;
    else if (strcmp(args.role, "both") == 0)
        role = WK_ROLE_BOTH;
    char logrole[80];
    snprintf(logrole, sizeof logrole, "%s", args.id[0] ? args.id : prog + 3);
    if (pd_proc_log_start(&args, logrole, &err) != 0) {
        fprintf(stderr, "%s: %s\n", prog, err.msg);
        return 2;
    }
    pd_proc_signals(&g_stop);
    w.stop = &g_stop;
    w.health = &args.health;
    int rc = setup(&w, &args, role, &err);
    if (rc != 0) {
        PD_ERROR("event=start_failed msg=\"%s\"", err.msg);
        teardown(&w);
        return 1;
    }
    if (args.ready_file[0]) {
        char text[PD_CFG_STR + 128];
        snprintf(text, sizeof text, "kv=%s\nid=%s\n", w.kv_endpoint, w.id);
        if (pd_proc_write_file(args.ready_file, text, &err) != 0)
            PD_WARN("event=ready_file_failed msg=\"%s\"", err.msg);
    }
    rc = run(&w);
    bool refused = w.refused;
    teardown(&w);
    return rc ? rc : refused ? 1 : 0;
}
