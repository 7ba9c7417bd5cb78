/* test_prefill_role.c -- the prefill role (prefill_worker/) against a fake
 * worker host (fake_host.h): tasks in, batched passes (first tokens equal
 * to the engine's own greedy continuation, KV bit-identical to the
 * engine's), the hand-off out (in-process, or shipped to a real ZeroMQ
 * peer and held under a lease), the KvAck freeing the blocks, the lease's
 * expiry freeing them without one, the refusals, and the prefix cache
 * (hits, KvEvents through the port, resync). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <unistd.h>

#include <cmocka.h>
#include <xxhash.h>

#include "fake_host.h"
#include "prefill_worker/prefill.h"
#include "runtime/net.h"

#define MODEL "tiny-llama-spm-f32.gguf"
#define DECODE_EP "inproc://fake-decode"

/* ====== A sink for in-process hand-offs ====== */

typedef struct {
    pd_kv_handoff_t got[8];
    int n;
    bool refuse;
} sink_t;

static int sink_take(void *ctx, pd_kv_handoff_t *h)
{
    sink_t *s = ctx;
    if (s->refuse || s->n == 8)
        return PD_EFULL;
    s->got[s->n++] = *h;
    memset(h, 0, sizeof *h);
    return 0;
}

/* ====== Helpers ====== */

static void prompt_of(int32_t *t, uint32_t n, uint32_t salt)
{
    for (uint32_t i = 0; i < n; i++)
        t[i] = (int32_t)(3 + (i * 37 + salt * 101) % 3900);
}

/* A PrefillTask for req (epoch 1) with a greedy budget of max_tokens,
 * decoded by decode_id at endpoint (NULL: none). */
static void send_task(pd_wkrole_t r, uint64_t req, const int32_t *tokens, uint32_t n,
                      uint32_t max_tokens, const char *decode_id, const char *endpoint)
{
    pd_gen_params_t p = fh_greedy(n, max_tokens, 0);
    Pd__GenParams gp;
    Pd__Sampling s;
    pd_codec_params_to_pb(&p, &gp, &s);
    gp.has_max_seq_len = false;
    Pd__PrefillTask t = PD__PREFILL_TASK__INIT;
    t.has_request_id = t.has_epoch = true;
    t.request_id = req;
    t.epoch = 1;
    t.n_tokens = n;
    t.tokens = (int32_t *)tokens;
    t.params = &gp;
    t.decode_worker_id = (char *)decode_id;
    t.decode_kv_endpoint = (char *)endpoint;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_PREFILL;
    m.prefill = &t;
    fh_task(r, &m);
}

/* Positions [0, n) of two block tables hold the same K and V, bit for bit. */
static void assert_same_kv(pd_kv_t *kv, const pd_kv_seq_t *a, const pd_kv_seq_t *b, uint32_t n)
{
    const pd_kv_shape_t *sh = pd_kv_shape(kv);
    size_t row = (size_t)sh->n_kv_heads * sh->head_dim * sizeof(float);
    for (uint32_t pos = 0; pos < n; pos++) {
        uint32_t blk = pos / sh->block_size, off = pos % sh->block_size;
        for (uint32_t l = 0; l < sh->n_layers; l++) {
            const char *ka = (const char *)pd_kv_k(kv, a->blocks[blk], l) + off * row;
            const char *kb = (const char *)pd_kv_k(kv, b->blocks[blk], l) + off * row;
            const char *va = (const char *)pd_kv_v(kv, a->blocks[blk], l) + off * row;
            const char *vb = (const char *)pd_kv_v(kv, b->blocks[blk], l) + off * row;
            if (memcmp(ka, kb, row) != 0 || memcmp(va, vb, row) != 0)
                fail_msg("KV differs at position %u layer %u", pos, l);
        }
    }
}

/* Turns until the role holds no task, at most max turns (real time: the
 * zero-copy frames are let go by ZeroMQ's threads). */
static void turn_until_idle(fake_host_t *h, pd_wkrole_t r, int max)
{
    for (int i = 0; i < max && r.ops->busy(r.self); i++) {
        fh_turn(h, r);
        usleep(1000);
    }
    assert_false(r.ops->busy(r.self));
}

/* ====== In-process hand-off ====== */

static void test_colocated_handoff(void **state)
{
    (void)state;
    fake_host_t h;
    fh_init(&h, MODEL, 64, true, false);
    sink_t sink = { 0 };
    pd_kv_sink_t ks = { &sink, sink_take };
    pd_err_t err = { 0 };
    pd_wkrole_env_t env = fh_env(&h, "w1");
    pd_prefill_t *p = pd_prefill_new(&env, &ks, &err);
    assert_non_null(p);
    pd_wkrole_t r = pd_prefill_role(p);
    int32_t prompt[20];
    prompt_of(prompt, 20, 1);
    int32_t ref[1];
    fh_reference(&h, prompt, 20, 1, ref);

    send_task(r, 7, prompt, 20, 8, "w1", NULL);
    assert_int_equal(pd_prefill_n_tasks(p), 1);
    pd_worker_load_t l;
    fh_load(r, &l);
    assert_int_equal(l.queued_prefill_tokens, 20);
    /* One short prompt: the pass waits for prefill.wait_ms to gather more. */
    assert_false(r.ops->ready(r.self));
    h.now_ms += h.cfg.prefill.wait_ms;
    assert_true(fh_turn(&h, r));

    pd_token_entry_t t[4];
    assert_int_equal(fh_tokens(&h, 7, t, 4), 1);
    assert_int_equal(t[0].epoch, 1);
    assert_int_equal(t[0].index, 0);
    assert_int_equal(t[0].token, ref[0]);
    assert_int_equal(t[0].finish, PD__FINISH_REASON__FINISH_NONE);

    assert_int_equal(sink.n, 1);
    pd_kv_handoff_t *x = &sink.got[0];
    assert_int_equal(x->req, 7);
    assert_int_equal(x->epoch, 1);
    assert_int_equal(x->n_hist, 20);
    assert_memory_equal(x->hist, prompt, sizeof prompt);
    assert_int_equal(x->first_token, ref[0]);
    assert_false(x->echo_first);
    assert_null(x->frames);
    assert_int_equal(x->seq.n_blocks, 2); /* 20 positions, 16 per block */
    assert_int_equal(x->params.max_tokens, 8);
    /* The blocks hold what the engine alone computes for the prompt. */
    pd_kv_seq_t mine = { 0 };
    fh_forward(&h, &mine, prompt, 0, 20);
    assert_same_kv(h.eng.kv, &x->seq, &mine, 20);
    pd_kv_seq_release(h.eng.kv, &mine);

    /* The role let go of the request; the blocks are the hand-off's. */
    assert_int_equal(pd_prefill_n_tasks(p), 0);
    assert_false(r.ops->busy(r.self));
    assert_int_equal(pd_kv_n_used(h.eng.kv), 2);
    pd_kv_handoff_release(x, h.eng.kv);
    assert_int_equal(pd_kv_n_used(h.eng.kv), 0);
    fh_load(r, &l);
    assert_int_equal(l.counters.prefill_batches, 1);
    assert_int_equal(l.counters.prefill_tokens, 20);
    assert_int_equal(l.queued_prefill_tokens, 0);
    pd_prefill_free(p);
    fh_free(&h);
}

/* Three prompts, one longer than a pass: packed into as few passes as the
 * budget allows, the long one in chunks; every first token is the engine's. */
static void test_batches_and_chunks(void **state)
{
    (void)state;
    fake_host_t h;
    fh_init(&h, MODEL, 128, true, false);
    sink_t sink = { 0 };
    pd_kv_sink_t ks = { &sink, sink_take };
    pd_err_t err = { 0 };
    pd_wkrole_env_t env = fh_env(&h, "w1");
    pd_prefill_t *p = pd_prefill_new(&env, &ks, &err);
    assert_non_null(p);
    pd_wkrole_t r = pd_prefill_role(p);
    static const uint32_t len[3] = { 40, 300, 10 };
    int32_t prompts[3][300];
    int32_t ref[3];
    for (int i = 0; i < 3; i++) {
        prompt_of(prompts[i], len[i], (uint32_t)i + 2);
        fh_reference(&h, prompts[i], len[i], 1, &ref[i]);
        send_task(r, 100 + (uint64_t)i, prompts[i], len[i], 4, "w1", NULL);
    }
    /* 350 queued tokens fill a pass's budget: no waiting. */
    assert_true(r.ops->ready(r.self));
    int passes = 0;
    for (int turn = 0; r.ops->busy(r.self) && turn < 20; turn++) {
        passes += fh_turn(&h, r);
        h.now_ms += h.cfg.prefill.wait_ms; /* what is left need not wait for company */
    }
    assert_in_range(passes, 2, 3);
    assert_int_equal(sink.n, 3);
    for (int i = 0; i < 3; i++) {
        pd_token_entry_t t[2];
        assert_int_equal(fh_tokens(&h, 100 + (uint64_t)i, t, 2), 1);
        assert_int_equal(t[0].token, ref[i]);
    }
    pd_worker_load_t l;
    fh_load(r, &l);
    assert_int_equal(l.counters.prefill_batches, (uint64_t)passes);
    assert_true(l.counters.prefill_multi >= 1);
    assert_int_equal(l.counters.prefill_tokens, 350);
    assert_true(l.counters.prefill_pass_tokens >= 64);
    for (int i = 0; i < sink.n; i++)
        pd_kv_handoff_release(&sink.got[i], h.eng.kv);
    assert_int_equal(pd_kv_n_used(h.eng.kv), 0);
    pd_prefill_free(p);
    fh_free(&h);
}

/* The in-process decode side refuses: the blocks come back. */
static void test_refused_handoff(void **state)
{
    (void)state;
    fake_host_t h;
    fh_init(&h, MODEL, 64, true, false);
    sink_t sink = { .refuse = true };
    pd_kv_sink_t ks = { &sink, sink_take };
    pd_err_t err = { 0 };
    pd_wkrole_env_t env = fh_env(&h, "w1");
    pd_prefill_t *p = pd_prefill_new(&env, &ks, &err);
    pd_wkrole_t r = pd_prefill_role(p);
    int32_t prompt[20];
    prompt_of(prompt, 20, 5);
    send_task(r, 9, prompt, 20, 8, "w1", NULL);
    h.now_ms += h.cfg.prefill.wait_ms;
    assert_true(fh_turn(&h, r));
    assert_int_equal(pd_prefill_n_tasks(p), 0);
    assert_int_equal(pd_kv_n_used(h.eng.kv), 0);
    pd_prefill_free(p);
    fh_free(&h);
}

/* ====== Shipping, acks, leases ====== */

typedef struct {
    uint8_t id[256];
    size_t id_len;
    Pd__KvTransfer *k;
    uint32_t n_frames;
} received_t;

/* Reads one KV message on the fake decode worker's ROUTER, checks each
 * block frame against its checksum, and closes the frames (ZeroMQ then lets
 * go of the role's blocks). */
static bool receive_transfer(void *sock, size_t block_bytes, received_t *out)
{
    pd_net_in_t *in = calloc(1, sizeof *in);
    assert_non_null(in);
    pd_err_t err = { 0 };
    bool got = false;
    for (int i = 0; i < 200 && !got; i++) {
        int rc = pd_net_recv(sock, in, &err);
        if (rc > 0) {
            got = true;
            break;
        }
        usleep(1000);
    }
    if (got) {
        assert_true(in->n_frames >= 3);
        out->id_len = zmq_msg_size(&in->frames[0]);
        memcpy(out->id, zmq_msg_data(&in->frames[0]), out->id_len);
        Pd__Msg *m = pd__msg__unpack(NULL, zmq_msg_size(&in->frames[1]),
                                     zmq_msg_data(&in->frames[1]));
        assert_non_null(m);
        assert_int_equal(m->body_case, PD__MSG__BODY_KV_TRANSFER);
        out->k = m->kv_transfer;
        m->kv_transfer = NULL;
        pd__msg__free_unpacked(m, NULL);
        out->n_frames = (uint32_t)in->n_frames - 2;
        assert_int_equal(out->k->n_checksums, out->n_frames);
        for (uint32_t b = 0; b < out->n_frames; b++) {
            zmq_msg_t *f = &in->frames[2 + b];
            assert_int_equal(zmq_msg_size(f), block_bytes);
            assert_true(XXH3_64bits(zmq_msg_data(f), block_bytes) == out->k->checksums[b]);
        }
        pd_net_in_close(in);
    }
    free(in);
    return got;
}

static void send_ack(void *sock, const received_t *r, bool ok)
{
    Pd__KvAck a = PD__KV_ACK__INIT;
    a.has_request_id = a.has_epoch = a.has_ok = true;
    a.request_id = r->k->request_id;
    a.epoch = r->k->epoch;
    a.ok = ok;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_KV_ACK;
    m.kv_ack = &a;
    pd_err_t err = { 0 };
    assert_int_equal(pd_net_send(sock, r->id, r->id_len, &m, false, &err), 0);
}

typedef struct {
    fake_host_t h;
    void *decode; /* the fake decode worker's KV ingress */
    pd_prefill_t *p;
    pd_wkrole_t r;
    int32_t prompt[20];
    int32_t first;
} ship_fx_t;

static void ship_setup(ship_fx_t *f)
{
    fh_init(&f->h, MODEL, 64, true, false);
    pd_net_opts_t o;
    pd_net_opts_from_config(&o, &f->h.cfg);
    o.maxmsgsize = -1;
    pd_err_t err = { 0 };
    f->decode = pd_net_socket(f->h.zctx, ZMQ_ROUTER, &o, &err);
    assert_non_null(f->decode);
    assert_int_equal(pd_net_bind(f->decode, DECODE_EP, NULL, 0, &err), 0);
    pd_wkrole_env_t env = fh_env(&f->h, "p1");
    f->p = pd_prefill_new(&env, NULL, &err);
    assert_non_null(f->p);
    f->r = pd_prefill_role(f->p);
    prompt_of(f->prompt, 20, 7);
    fh_reference(&f->h, f->prompt, 20, 1, &f->first);
    send_task(f->r, 11, f->prompt, 20, 8, "d1", DECODE_EP);
    f->h.now_ms += f->h.cfg.prefill.wait_ms;
    assert_true(fh_turn(&f->h, f->r));
}

static void ship_teardown(ship_fx_t *f)
{
    pd_wkrole_t r = f->r;
    r.ops->close(r.self);
    pd_net_close(f->decode);
    fh_clear(&f->h);
    zmq_ctx_term(f->h.zctx);
    pd_prefill_free(f->p);
    pd_wkengine_free(&f->h.eng);
}

static void test_ship_and_ack(void **state)
{
    (void)state;
    ship_fx_t f;
    ship_setup(&f);
    received_t got;
    assert_true(receive_transfer(f.decode, f.h.eng.block_bytes, &got));
    assert_int_equal(got.k->request_id, 11);
    assert_int_equal(got.k->epoch, 1);
    assert_int_equal(got.k->n_tokens, 20);
    assert_int_equal(got.k->n_blocks, 2);
    assert_int_equal(got.k->first_token, f.first);
    assert_string_equal(got.k->prefill_worker_id, "p1");
    assert_true(got.k->model_identity == f.h.eng.identity);
    /* The first token went to the router too. */
    pd_token_entry_t t[2];
    assert_int_equal(fh_tokens(&f.h, 11, t, 2), 1);
    assert_int_equal(t[0].token, f.first);
    /* Leased: the blocks stay ours until the ack. */
    for (int i = 0; i < 20; i++) {
        fh_turn(&f.h, f.r);
        usleep(1000);
    }
    assert_int_equal(pd_prefill_n_tasks(f.p), 1);
    assert_int_equal(pd_kv_n_used(f.h.eng.kv), 2);
    send_ack(f.decode, &got, true);
    turn_until_idle(&f.h, f.r, 500);
    assert_int_equal(pd_kv_n_used(f.h.eng.kv), 0);
    pd_worker_load_t l;
    fh_load(f.r, &l);
    assert_int_equal(l.counters.kv_transfers, 1);
    assert_int_equal(l.counters.kv_sent_bytes, 2 * f.h.eng.block_bytes);
    assert_int_equal(fh_count(&f.h, PD__MSG__BODY_PREEMPTED), 0);
    pd__kv_transfer__free_unpacked(got.k, NULL);
    ship_teardown(&f);
}

/* No ack: the lease runs out (on the host's clock) and the blocks return. */
static void test_lease_expiry(void **state)
{
    (void)state;
    ship_fx_t f;
    ship_setup(&f);
    received_t got;
    assert_true(receive_transfer(f.decode, f.h.eng.block_bytes, &got));
    fh_turn(&f.h, f.r);
    f.h.now_ms += f.h.cfg.worker.lease_ms - 1;
    fh_turn(&f.h, f.r);
    assert_int_equal(pd_prefill_n_tasks(f.p), 1);
    f.h.now_ms += 2;
    turn_until_idle(&f.h, f.r, 500);
    assert_int_equal(pd_kv_n_used(f.h.eng.kv), 0);
    /* A late ack is a stray: nothing happens. */
    send_ack(f.decode, &got, true);
    for (int i = 0; i < 5; i++)
        fh_turn(&f.h, f.r);
    pd_worker_load_t l;
    fh_load(f.r, &l);
    assert_int_equal(l.counters.kv_transfers, 0);
    pd__kv_transfer__free_unpacked(got.k, NULL);
    ship_teardown(&f);
}

/* Cancelled while leased: kept until the ack (the decode worker may be
 * reading the blocks), then freed. */
static void test_cancel_leased(void **state)
{
    (void)state;
    ship_fx_t f;
    ship_setup(&f);
    received_t got;
    assert_true(receive_transfer(f.decode, f.h.eng.block_bytes, &got));
    f.r.ops->on_cancel(f.r.self, 11, 0);
    fh_turn(&f.h, f.r);
    assert_int_equal(pd_prefill_n_tasks(f.p), 1);
    send_ack(f.decode, &got, false);
    turn_until_idle(&f.h, f.r, 500);
    assert_int_equal(pd_kv_n_used(f.h.eng.kv), 0);
    pd__kv_transfer__free_unpacked(got.k, NULL);
    ship_teardown(&f);
}

/* ====== Refusals ====== */

static void assert_error(const fake_host_t *h, uint64_t req, const char *text)
{
    const Pd__Msg *m = fh_last(h, PD__MSG__BODY_ERROR);
    assert_non_null(m);
    assert_int_equal(m->error->request_id, req);
    if (strstr(m->error->message, text) == NULL)
        fail_msg("error \"%s\" does not say \"%s\"", m->error->message, text);
}

static void test_refusals(void **state)
{
    (void)state;
    fake_host_t h;
    fh_init(&h, MODEL, 64, true, false);
    pd_err_t err = { 0 };
    pd_wkrole_env_t env = fh_env(&h, "p1");
    pd_prefill_t *p = pd_prefill_new(&env, NULL, &err);
    pd_wkrole_t r = pd_prefill_role(p);
    int32_t prompt[20];
    prompt_of(prompt, 20, 9);
    prompt[3] = 4000; /* the vocabulary is [0, 4000) */
    send_task(r, 21, prompt, 20, 8, "d1", DECODE_EP);
    assert_error(&h, 21, "tokens[3]");
    prompt[3] = 5;
    send_task(r, 22, prompt, 20, 8, "p1", NULL);
    assert_error(&h, 22, "prefill-only");
    send_task(r, 23, prompt, 20, 8, "d1", NULL);
    assert_error(&h, 23, "decode_kv_endpoint");
    send_task(r, 24, prompt, 20, 0, "d1", DECODE_EP);
    assert_error(&h, 24, "params.max_tokens");
    assert_int_equal(pd_prefill_n_tasks(p), 0);
    /* Cancelled while queued: gone before any pass. */
    send_task(r, 25, prompt, 20, 8, "d1", DECODE_EP);
    assert_int_equal(pd_prefill_n_tasks(p), 1);
    assert_int_equal(r.ops->held(r.self), 1); /* what a drain's log line counts */
    r.ops->on_cancel(r.self, 25, 1);
    assert_int_equal(pd_prefill_n_tasks(p), 0);
    assert_int_equal(r.ops->held(r.self), 0);
    h.now_ms += 1000;
    assert_false(fh_turn(&h, r));
    assert_int_equal(fh_count(&h, PD__MSG__BODY_TOKENS), 0);
    pd_prefill_free(p);
    fh_free(&h);
}

/* ====== Prefix cache ====== */

/* A prompt's full blocks are committed once its KV is whole; the same
 * prompt again takes them (hit tokens counted, only the rest computed, the
 * first token the engine's); the events op sends KvEvents through the port
 * (a snapshot first, then what was stored; a resync sends a snapshot
 * again) and load() carries the last seq and the prefix counters. */
static void test_prefix_cache(void **state)
{
    (void)state;
    fake_host_t h;
    fh_init(&h, MODEL, 64, true, false);
    assert_true(h.cfg.kv.prefix_caching);
    assert_true(pd_kv_prefix_on(h.eng.kv));
    sink_t sink = { 0 };
    pd_kv_sink_t ks = { &sink, sink_take };
    pd_err_t err = { 0 };
    pd_wkrole_env_t env = fh_env(&h, "w1");
    pd_prefill_t *p = pd_prefill_new(&env, &ks, &err);
    assert_non_null(p);
    pd_wkrole_t r = pd_prefill_role(p);
    assert_non_null(r.ops->kv_events);
    assert_non_null(r.ops->kv_resync);
    uint32_t bs = pd_kv_shape(h.eng.kv)->block_size;
    enum { N = 40 };
    assert_true(N % bs != 0 && N / bs >= 1);
    int32_t prompt[N];
    prompt_of(prompt, N, 9);
    int32_t ref[1];
    fh_reference(&h, prompt, N, 1, ref);

    r.ops->kv_events(r.self); /* the first message is a snapshot (empty) */
    const Pd__Msg *m = fh_last(&h, PD__MSG__BODY_KV_EVENTS);
    assert_non_null(m);
    assert_int_equal(m->kv_events->seq, 1);
    assert_true(m->kv_events->snapshot);
    assert_int_equal(m->kv_events->n_hashes, 0);

    for (uint64_t req = 1; req <= 2; req++) {
        send_task(r, req, prompt, N, 4, "w1", NULL);
        h.now_ms += h.cfg.prefill.wait_ms;
        assert_true(fh_turn(&h, r));
        pd_token_entry_t t[2];
        assert_int_equal(fh_tokens(&h, req, t, 2), 1);
        assert_int_equal(t[0].token, ref[0]);
        assert_int_equal(sink.n, 1);
        pd_kv_handoff_release(&sink.got[0], h.eng.kv);
        sink.n = 0;
        r.ops->kv_events(r.self);
    }
    /* The first prompt stored its full blocks, the second only took them. */
    assert_int_equal(fh_count(&h, PD__MSG__BODY_KV_EVENTS), 2);
    m = fh_last(&h, PD__MSG__BODY_KV_EVENTS);
    assert_int_equal(m->kv_events->seq, 2);
    assert_false(m->kv_events->snapshot);
    assert_int_equal(m->kv_events->n_hashes, N / bs);
    for (size_t i = 0; i < m->kv_events->n_removed; i++)
        assert_false(m->kv_events->removed[i]);
    pd_worker_load_t l;
    fh_load(r, &l);
    assert_int_equal(l.kv_events_seq, 2);
    assert_int_equal(l.counters.prefix_requests, 2);
    assert_int_equal(l.counters.prefix_hits, (N / bs) * bs);
    assert_int_equal(l.counters.prefix_cached_blocks, N / bs);
    /* The second pass computed only what the cache did not hold. */
    assert_int_equal(l.counters.prefill_tokens, N + (N - (N / bs) * bs));

    r.ops->kv_resync(r.self);
    r.ops->kv_events(r.self);
    m = fh_last(&h, PD__MSG__BODY_KV_EVENTS);
    assert_int_equal(m->kv_events->seq, 3);
    assert_true(m->kv_events->snapshot);
    assert_int_equal(m->kv_events->n_hashes, N / bs);
    fh_load(r, &l);
    assert_int_equal(l.kv_events_seq, 3);
    assert_int_equal(pd_kv_n_used(h.eng.kv), 0);
    pd_prefill_free(p);
    fh_free(&h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_colocated_handoff), cmocka_unit_test(test_batches_and_chunks),
        cmocka_unit_test(test_refused_handoff),   cmocka_unit_test(test_ship_and_ack),
        cmocka_unit_test(test_lease_expiry),      cmocka_unit_test(test_cancel_leased),
        cmocka_unit_test(test_refusals),          cmocka_unit_test(test_prefix_cache),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
