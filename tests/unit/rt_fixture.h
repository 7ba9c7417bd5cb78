/* rt_fixture.h -- a router state for unit tests of router/ (requests,
 * scheduling), built without a model file or TCP: a small byte-level BPE
 * tokenizer written to a temporary GGUF, a fake model identity, the real
 * ROUTER sockets bound to inproc endpoints, and real DEALER peers (a client
 * "C" and workers) whose routing ids the router addresses. The test feeds
 * messages through the router's own entry points (rt_on_client_payload,
 * rt_on_worker_payload) and reads what the router sent each peer.
 *
 * Include after cmocka.h. Every function is static and may go unused.
 */
#ifndef RT_FIXTURE_H
#define RT_FIXTURE_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/gguf.h"
#include "base/log.h"
#include "router.h"
#include "tests/unit/tiny_bpe.h"

#define FX_FN static __attribute__((unused))
#define FX_MAX_PEERS 8
#define FX_IDENTITY 0x1234abcd5678ef00ull
#define FX_EOS 260 /* the tokenizer's <|endoftext|>: BOS and EOS */

typedef struct {
    rt_t rt;
    pd_model_t model;
    char names[FX_MAX_PEERS][16]; /* routing ids; "" = unused */
    void *peers[FX_MAX_PEERS];    /* DEALERs, by index */
    int n_peers;
    /* KvPeers (router -> prefill workers, on every change of the decode
     * workers) are skipped by fx_recv unless this is set. */
    bool see_kv_peers;
} fx_t;

/* 256 single bytes, 3 merges, <|endoftext|>: 260 ids, ids 0..255 the bytes
 * in GPT-2's alphabet (so a byte b and token b print as the same text). */
FX_FN pd_tok_t *fx_make_tok(void)
{
    static const char *const merges[] = { "h e", "l l", "he ll" };
    pd_tok_t *t = tiny_bpe(merges, sizeof merges / sizeof merges[0], true);
    assert_non_null(t);
    return t;
}

/* Lets the ROUTERs take in new pipes (and their routing ids). */
FX_FN void fx_settle(fx_t *f)
{
    size_t len = sizeof(int);
    int ev = 0;
    zmq_getsockopt(f->rt.front, ZMQ_EVENTS, &ev, &len);
    zmq_getsockopt(f->rt.back, ZMQ_EVENTS, &ev, &len);
}

/* Connects a DEALER named `name` to the client (worker = false) or the
 * worker socket. Returns its index. */
FX_FN int fx_peer(fx_t *f, const char *name, bool worker)
{
    assert_true(f->n_peers < FX_MAX_PEERS);
    int i = f->n_peers++;
    snprintf(f->names[i], sizeof f->names[i], "%s", name);
    f->peers[i] = zmq_socket(f->rt.zctx, ZMQ_DEALER);
    assert_non_null(f->peers[i]);
    assert_int_equal(zmq_setsockopt(f->peers[i], ZMQ_ROUTING_ID, name, strlen(name)), 0);
    char ep[64];
    snprintf(ep, sizeof ep, "inproc://fx-%p-%s", (void *)f, worker ? "back" : "front");
    assert_int_equal(zmq_connect(f->peers[i], ep), 0);
    fx_settle(f);
    return i;
}

FX_FN int fx_find(const fx_t *f, const char *name)
{
    for (int i = 0; i < f->n_peers; i++)
        if (strcmp(f->names[i], name) == 0)
            return i;
    fail_msg("no peer %s", name);
    return -1;
}

/* A router with max_inflight and max_queue slots and a client "C". */
FX_FN void fx_init(fx_t *f, uint32_t max_inflight, uint32_t max_queue)
{
    memset(f, 0, sizeof *f);
    pd_log_init("test", PD_LOG_ERROR);
    pd_log_set_stderr(false);
    rt_t *rt = &f->rt;
    pd_config_default(&rt->cfg);
    rt->cfg.router.max_inflight = max_inflight;
    rt->cfg.router.max_queue = max_queue;
    for (int i = 0; i < RT_MAX_WORKERS; i++)
        rt->workers[i].gen = 1;
    snprintf(f->model.name, sizeof f->model.name, "fixture");
    f->model.identity = FX_IDENTITY;
    f->model.cfg.ctx_len = 256;
    rt->model = &f->model;
    rt->tok = fx_make_tok();
    rt->max_seq_len = 256;
    rt->identity = pd_model_kv_identity(&f->model, rt->max_seq_len); /* as rt_init sets it */
    rt->n_slots = max_inflight + max_queue;
    rt->reqs = calloc(rt->n_slots, sizeof *rt->reqs);
    rt->queue = calloc(rt->n_slots, sizeof *rt->queue);
    rt->held = calloc(rt->n_slots, sizeof *rt->held);
    rt->tok_buf = malloc(((size_t)rt->max_seq_len + 1) * sizeof *rt->tok_buf);
    rt->in = calloc(1, sizeof *rt->in);
    assert_true(rt->reqs && rt->queue && rt->held && rt->tok_buf && rt->in);
    pd_err_t perr = { 0 };
    assert_int_equal(rt_prefix_init(rt, &perr), 0); /* the prefix index (router/prefix.c) */
    pd_pb_alloc_init(&rt->alloc, (size_t)rt->cfg.net.max_msg_bytes * PD_PB_BYTES_PER_WIRE_BYTE +
                                     PD_PB_BASE_BUDGET);
    rt->zctx = zmq_ctx_new();
    assert_non_null(rt->zctx);
    pd_net_opts_t o;
    pd_net_opts_from_config(&o, &rt->cfg);
    pd_err_t err = { 0 };
    rt->front = pd_net_socket(rt->zctx, ZMQ_ROUTER, &o, &err);
    rt->back = pd_net_socket(rt->zctx, ZMQ_ROUTER, &o, &err);
    assert_true(rt->front && rt->back);
    char ep[64];
    snprintf(ep, sizeof ep, "inproc://fx-%p-front", (void *)f);
    assert_int_equal(pd_net_bind(rt->front, ep, NULL, 0, &err), 0);
    snprintf(ep, sizeof ep, "inproc://fx-%p-back", (void *)f);
    assert_int_equal(pd_net_bind(rt->back, ep, NULL, 0, &err), 0);
    fx_peer(f, "C", false);
}

FX_FN void fx_free(fx_t *f)
{
    rt_t *rt = &f->rt;
    for (uint32_t i = 0; i < rt->n_slots; i++)
        rt_req_clear(&rt->reqs[i]);
    for (int i = 0; i < f->n_peers; i++)
        zmq_close(f->peers[i]);
    pd_net_close(rt->front);
    pd_net_close(rt->back);
    zmq_ctx_term(rt->zctx);
    free(rt->reqs);
    free(rt->queue);
    free(rt->held);
    free(rt->tok_buf);
    free(rt->in);
    free(rt->clients);
    rt_prefix_destroy(rt);
    pd_tok_free(rt->tok);
    memset(f, 0, sizeof *f);
}

/* Packs m and hands it to the router as coming from peer `name`. */
FX_FN void fx_send(fx_t *f, const char *name, bool worker, const Pd__Msg *m)
{
    size_t n = pd__msg__get_packed_size(m);
    uint8_t *buf = malloc(n ? n : 1);
    assert_non_null(buf);
    pd__msg__pack(m, buf);
    if (worker)
        rt_on_worker_payload(&f->rt, (const uint8_t *)name, strlen(name), buf, n);
    else
        rt_on_client_payload(&f->rt, (const uint8_t *)name, strlen(name), buf, n);
    free(buf);
}

/* The next message the router sent peer `name`, or NULL when none came
 * within wait_ms (KvPeers skipped unless f->see_kv_peers). Free with
 * pd__msg__free_unpacked(m, NULL). */
FX_FN Pd__Msg *fx_recv(fx_t *f, const char *name, int wait_ms)
{
    void *s = f->peers[fx_find(f, name)];
    for (;;) {
        zmq_pollitem_t it = { s, 0, ZMQ_POLLIN, 0 };
        if (zmq_poll(&it, 1, wait_ms) <= 0)
            return NULL;
        zmq_msg_t msg;
        zmq_msg_init(&msg);
        if (zmq_msg_recv(&msg, s, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&msg);
            return NULL;
        }
        Pd__Msg *m = pd__msg__unpack(NULL, zmq_msg_size(&msg), zmq_msg_data(&msg));
        zmq_msg_close(&msg);
        assert_non_null(m);
        if (m->body_case != PD__MSG__BODY_KV_PEERS || f->see_kv_peers)
            return m;
        pd__msg__free_unpacked(m, NULL);
    }
}

/* The next message to `name`, which must be of type body. */
FX_FN Pd__Msg *fx_expect(fx_t *f, const char *name, Pd__Msg__BodyCase body)
{
    Pd__Msg *m = fx_recv(f, name, 500);
    if (m == NULL)
        fail_msg("%s: expected a %s, got nothing", name, pd_net_body_name(body));
    if (m->body_case != body)
        fail_msg("%s: expected a %s, got a %s", name, pd_net_body_name(body),
                 pd_net_body_name(m->body_case));
    return m;
}

/* How many messages of type body `name` has waiting (all are consumed). */
FX_FN int fx_count(fx_t *f, const char *name, Pd__Msg__BodyCase body)
{
    int n = 0;
    Pd__Msg *m;
    while ((m = fx_recv(f, name, 20)) != NULL) {
        n += m->body_case == body;
        pd__msg__free_unpacked(m, NULL);
    }
    return n;
}

FX_FN void fx_drain(fx_t *f)
{
    for (int i = 0; i < f->n_peers; i++)
        fx_count(f, f->names[i], PD__MSG__BODY__NOT_SET);
}

/* Registers a worker `name` (connecting its peer first) with block_size 16
 * and `blocks` KV blocks (0 for a prefill worker). Returns its index in
 * rt->workers. */
FX_FN int fx_worker_kv(fx_t *f, const char *name, Pd__Role role, uint32_t blocks,
                       const char *kv_endpoint);

FX_FN int fx_worker(fx_t *f, const char *name, Pd__Role role, uint32_t blocks)
{
    return fx_worker_kv(f, name, role, blocks,
                        role == PD__ROLE__ROLE_PREFILL ? "" : "inproc://fx-kv");
}

/* fx_worker announcing kv_endpoint ("" for none). */
FX_FN int fx_worker_kv(fx_t *f, const char *name, Pd__Role role, uint32_t blocks,
                       const char *kv_endpoint)
{
    fx_peer(f, name, true);
    Pd__Register r = PD__REGISTER__INIT;
    r.has_protocol_version = r.has_role = r.has_model_identity = r.has_block_size = true;
    r.has_total_blocks = r.has_max_batch_size = r.has_max_batch_tokens = r.has_max_seq_len = true;
    r.protocol_version = PD_PROTOCOL_VERSION;
    r.worker_id = (char *)name;
    r.role = role;
    r.kv_endpoint = (char *)kv_endpoint;
    r.model_identity = FX_IDENTITY;
    r.model_name = (char *)"fixture";
    r.block_size = 16;
    r.total_blocks = blocks;
    r.max_batch_size = 8;
    r.max_batch_tokens = 512;
    r.max_seq_len = 256;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_REGISTER;
    m.register_ = &r;
    fx_send(f, name, true, &m);
    Pd__Msg *reply = fx_expect(f, name, PD__MSG__BODY_REGISTER_REPLY);
    assert_true(reply->register_reply->accepted);
    pd__msg__free_unpacked(reply, NULL);
    int wi = rt_worker_by_zid(&f->rt, name, strlen(name));
    assert_true(wi >= 0);
    return wi;
}

/* Client "C" asks for request id `id`: n_prompt prompt tokens (ids 'a'..),
 * max_tokens, streamed. */
FX_FN void fx_generate(fx_t *f, uint64_t id, uint32_t n_prompt, uint32_t max_tokens)
{
    int32_t prompt[256];
    assert_true(n_prompt <= 256);
    for (uint32_t i = 0; i < n_prompt; i++)
        prompt[i] = 'a' + (int32_t)(i % 26);
    Pd__GenerateRequest g = PD__GENERATE_REQUEST__INIT;
    g.has_request_id = g.has_max_tokens = true;
    g.request_id = id;
    g.max_tokens = max_tokens;
    g.n_prompt_tokens = n_prompt;
    g.prompt_tokens = prompt;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_GENERATE;
    m.generate = &g;
    fx_send(f, "C", false, &m);
}

/* The live request of client request id `id` (fails the test if none). */
FX_FN rt_req_t *fx_req(fx_t *f, uint64_t id)
{
    for (uint32_t i = 0; i < f->rt.n_slots; i++)
        if (f->rt.reqs[i].state != RQ_FREE && f->rt.reqs[i].client_req == id)
            return &f->rt.reqs[i];
    fail_msg("no request %llu", (unsigned long long)id);
    return NULL;
}

FX_FN bool fx_gone(fx_t *f, uint64_t id)
{
    for (uint32_t i = 0; i < f->rt.n_slots; i++)
        if (f->rt.reqs[i].state != RQ_FREE && f->rt.reqs[i].client_req == id)
            return false;
    return true;
}

/* Worker `name` sends token `token` at output index `index` for r's
 * current epoch (fin: a finish reason, or FINISH_NONE). */
FX_FN void fx_token(fx_t *f, const char *name, const rt_req_t *r, uint32_t index, int32_t token,
                    Pd__FinishReason fin)
{
    Pd__TokenEntry e = PD__TOKEN_ENTRY__INIT;
    Pd__TokenEntry *ep = &e;
    e.has_request_id = e.has_epoch = e.has_token = e.has_index = true;
    e.request_id = r->id;
    e.epoch = r->epoch;
    e.token = token;
    e.index = index;
    if (fin != PD__FINISH_REASON__FINISH_NONE) {
        e.has_finish_reason = true;
        e.finish_reason = fin;
    }
    Pd__TokenBatch b = PD__TOKEN_BATCH__INIT;
    b.n_entries = 1;
    b.entries = &ep;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_TOKENS;
    m.tokens = &b;
    fx_send(f, name, true, &m);
}

/* Worker `name` reports r (current epoch) preempted. */
FX_FN void fx_preempted(fx_t *f, const char *name, const rt_req_t *r)
{
    Pd__Preempted p = PD__PREEMPTED__INIT;
    p.has_request_id = p.has_epoch = p.has_n_generated = true;
    p.request_id = r->id;
    p.epoch = r->epoch;
    p.n_generated = r->n_gen;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_PREEMPTED;
    m.preempted = &p;
    fx_send(f, name, true, &m);
}

/* Client "C" cancels its request `id`. */
FX_FN void fx_cancel(fx_t *f, uint64_t id)
{
    Pd__Cancel c = PD__CANCEL__INIT;
    c.has_request_id = true;
    c.request_id = id;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_CANCEL;
    m.cancel = &c;
    fx_send(f, "C", false, &m);
}

#endif
