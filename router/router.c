/* router.c -- see router.h. Setup, the two sockets (each message to its
 * handler), timers and the reactor. A request's own story is requests.c;
 * its client and stream clients.c; its workers sched.c and workers.c. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/fault.h"
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
    /* phi3's rope factors depend on the context: so does the identity */
    rt->identity = pd_model_kv_identity(rt->model, rt->max_seq_len);
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
            rt->front_ep, rt->back_ep, rt->model->name, (unsigned long long)rt->identity,
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
    rt_client_heard(rt, cid, cid_len, m && m->body_case == PD__MSG__BODY_HEARTBEAT);
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

/* "left (REASON)" for a worker's Drain: its reason (e.g. its compute
 * thread stalled) is logged, so only printable ASCII without quotes or
 * backslashes and at most 120 bytes of it; anything else is "drained". */
static const char *drain_reason(const char *r, char *buf, size_t cap)
{
    bool ok = r != NULL && r[0] != '\0' && strlen(r) <= 120;
    for (const char *c = r; ok && *c; c++)
        ok = *c >= 0x20 && *c < 0x7f && *c != '"' && *c != '\\';
    snprintf(buf, cap, "left (%s)", ok ? r : "drained");
    return buf;
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
        rt->workers[wi].last_seen_ms = pd_now_ms();
        switch (m->body_case) {
        case PD__MSG__BODY_HEARTBEAT:
            rt_on_heartbeat(rt, &rt->workers[wi], m->heartbeat);
            rt_prefix_on_heartbeat(rt, wi, m->heartbeat);
            break;
        case PD__MSG__BODY_KV_EVENTS: rt_prefix_on_events(rt, wi, m->kv_events); break;
        case PD__MSG__BODY_TOKENS: rt_on_tokens(rt, wi, m->tokens); break;
        case PD__MSG__BODY_PREEMPTED: rt_on_preempted(rt, wi, m->preempted); break;
        case PD__MSG__BODY_ERROR: rt_on_worker_error(rt, wi, m->error); break;
        case PD__MSG__BODY_DRAIN: {
            char why[160];
            rt_worker_drop(rt, wi, drain_reason(m->drain->reason, why, sizeof why));
            break;
        }
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

/* Every reactor turn: worker heartbeats; every 10 ms a sweep over clients,
 * held output and deadlines, then whatever the queue can dispatch. */
static void timers(rt_t *rt)
{
    uint64_t now_ms = pd_now_ms();
    if (rt->health)
        pd_proc_health(rt->health, "serving", now_ms, rt->cfg.router.heartbeat_ms);
    rt_workers_check(rt, now_ms);
    if (now_ms - rt->last_sweep_ms < 10)
        return;
    rt->last_sweep_ms = now_ms;
    rt_clients_check(rt, now_ms);
    uint64_t now = pd_now_us();
    rt_stream_retry(rt, now);
    rt_req_sweep(rt, now);
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

