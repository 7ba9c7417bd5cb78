/* test_decode_role.c -- the decode role (decode_worker/) against a fake
 * worker host (fake_host.h): a hand-off in (in-process blocks, or received
 * frames), continuous batching step by step with every token equal to the
 * engine's own greedy continuation, retirement freeing the blocks,
 * admission held back by the free blocks, preemption of the youngest
 * sequence when blocks run out, cancel; and the network ingress: a
 * DecodeTask and a KvTransfer from a real ZeroMQ peer paired in either
 * order, acknowledged, a damaged transfer refused and its request handed
 * back. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <unistd.h>

#include <cmocka.h>
#include <xxhash.h>

#include "decode_worker/decode.h"
#include "fake_host.h"

#define MODEL "tiny-llama-spm-f32.gguf"
#define MAX_GEN 40

static void prompt_of(int32_t *t, uint32_t n, uint32_t salt)
{
    for (uint32_t i = 0; i < n; i++)
        t[i] = (int32_t)(3 + (i * 53 + salt * 97) % 3900);
}

typedef struct {
    fake_host_t h;
    pd_decode_t *d;
    pd_wkrole_t r;
} fx_t;

static void fx_open(fx_t *f, uint32_t n_blocks)
{
    fh_init(&f->h, MODEL, n_blocks, false, true);
    pd_err_t err = { 0 };
    pd_wkrole_env_t env = fh_env(&f->h, "d1");
    f->d = pd_decode_new(&env, &err);
    if (f->d == NULL)
        fail_msg("decode role: %s", err.msg);
    f->r = pd_decode_role(f->d);
}

static void fx_close(fx_t *f)
{
    f->r.ops->close(f->r.self);
    fh_clear(&f->h);
    zmq_ctx_term(f->h.zctx);
    pd_decode_free(f->d);
    pd_wkengine_free(&f->h.eng);
}

static void assert_checked(const fx_t *f)
{
    pd_err_t why = { 0 };
    if (pd_decode_check(f->d, &why) != 0)
        fail_msg("invariant: %s", why.msg);
}

/* What a prefill worker would hand over for prompt: its KV and its first
 * token (greedy), computed by the engine alone. With frames, the blocks are
 * copied into frames (as if received) and the cache holds nothing. */
static void make_handoff(fx_t *f, pd_kv_handoff_t *x, uint64_t req, const int32_t *prompt,
                         uint32_t n, uint32_t max_tokens, bool frames)
{
    pd_wkengine_t *e = &f->h.eng;
    memset(x, 0, sizeof *x);
    x->req = req;
    x->epoch = 1;
    x->params = fh_greedy(n, max_tokens, e->max_seq_len);
    x->hist = malloc(n * sizeof *x->hist);
    assert_non_null(x->hist);
    memcpy(x->hist, prompt, n * sizeof *x->hist);
    x->n_hist = x->cap_hist = n;
    fh_forward(&f->h, &x->seq, prompt, 0, n);
    pd_sampling_t greedy;
    pd_sampling_default(&greedy);
    x->first_token = pd_sample(&greedy, e->logits, e->vocab, n, prompt, n, e->scratch);
    if (!frames)
        return;
    x->frames = malloc(x->seq.n_blocks * sizeof *x->frames);
    assert_non_null(x->frames);
    for (uint32_t b = 0; b < x->seq.n_blocks; b++) {
        assert_int_equal(zmq_msg_init_size(&x->frames[b], e->block_bytes), 0);
        memcpy(zmq_msg_data(&x->frames[b]), pd_kv_block(e->kv, x->seq.blocks[b]),
               e->block_bytes);
    }
    x->n_frames = x->seq.n_blocks;
    pd_kv_seq_release(e->kv, &x->seq);
}

/* Turns until the role is idle or max turns passed; returns the turns. */
static int run_until_idle(fx_t *f, int max)
{
    int n = 0;
    while (f->r.ops->busy(f->r.self) && n < max) {
        fh_turn(&f->h, f->r);
        assert_checked(f);
        n++;
    }
    return n;
}

/* The tokens sent for req are indices from..from+n-1 of ref, the last one
 * finishing with fin. */
static void assert_stream(const fx_t *f, uint64_t req, const int32_t *ref, uint32_t from,
                          uint32_t n, Pd__FinishReason fin)
{
    pd_token_entry_t t[MAX_GEN + 2];
    size_t got = fh_tokens(&f->h, req, t, MAX_GEN + 2);
    assert_int_equal(got, n);
    for (uint32_t i = 0; i < n; i++) {
        assert_int_equal(t[i].index, from + i);
        if (t[i].token != ref[from + i])
            fail_msg("req %llu index %u: token %d, the engine says %d", (unsigned long long)req,
                     from + i, t[i].token, ref[from + i]);
        assert_int_equal(t[i].finish, i + 1 == n ? fin : PD__FINISH_REASON__FINISH_NONE);
    }
}

/* ====== Hand-off in, steps, retirement ====== */

static void check_decodes_like_engine(bool frames)
{
    fx_t f;
    fx_open(&f, 64);
    int32_t prompt[20], ref[12];
    prompt_of(prompt, 20, frames);
    fh_reference(&f.h, prompt, 20, 12, ref);
    pd_kv_handoff_t x;
    make_handoff(&f, &x, 5, prompt, 20, 12, frames);
    assert_int_equal(x.first_token, ref[0]);
    assert_int_equal(pd_decode_take(f.d, &x), 0);
    assert_null(x.hist); /* taken */
    pd_decode_held_t held;
    pd_decode_held(f.d, &held);
    assert_int_equal(held.waiting, 1);
    assert_true(f.r.ops->ready(f.r.self));
    int turns = run_until_idle(&f, 100);
    assert_int_equal(turns, 11); /* one token a step: indices 1..11 */
    assert_stream(&f, 5, ref, 1, 11, PD__FINISH_REASON__FINISH_LENGTH);
    assert_int_equal(pd_kv_n_used(f.h.eng.kv), 0);
    pd_worker_load_t l;
    fh_load(f.r, &l);
    assert_int_equal(l.counters.steps, 11);
    assert_int_equal(l.counters.retirements, 1);
    assert_int_equal(l.counters.decode_tokens, 11);
    assert_int_equal(l.running_seqs, 0);
    fx_close(&f);
}

static void test_local_blocks(void **state)
{
    (void)state;
    check_decodes_like_engine(false);
}

static void test_received_frames(void **state)
{
    (void)state;
    check_decodes_like_engine(true);
}

/* ====== Admission within the free blocks ====== */

static void test_admission_waits_for_blocks(void **state)
{
    (void)state;
    fx_t f;
    fx_open(&f, 5); /* 5 blocks of 16 positions */
    int32_t pa[40], pb[40], ra[4], rb[4];
    prompt_of(pa, 40, 3);
    prompt_of(pb, 40, 4);
    fh_reference(&f.h, pa, 40, 4, ra);
    fh_reference(&f.h, pb, 40, 4, rb);
    pd_kv_handoff_t xa, xb;
    make_handoff(&f, &xa, 1, pa, 40, 4, true);
    make_handoff(&f, &xb, 2, pb, 40, 4, true);
    assert_int_equal(pd_decode_take(f.d, &xa), 0);
    assert_int_equal(pd_decode_take(f.d, &xb), 0);
    /* Each needs 3 blocks (41 positions): one runs, the other waits. */
    fh_turn(&f.h, f.r);
    pd_decode_held_t held;
    pd_decode_held(f.d, &held);
    assert_int_equal(held.running, 1);
    assert_int_equal(held.waiting, 1);
    pd_worker_load_t l;
    fh_load(f.r, &l);
    assert_int_equal(l.waiting_seqs, 1);
    assert_int_equal(l.free_blocks, 2);
    run_until_idle(&f, 100);
    /* First come, first served; each stream whole and the engine's. */
    assert_stream(&f, 1, ra, 1, 3, PD__FINISH_REASON__FINISH_LENGTH);
    assert_stream(&f, 2, rb, 1, 3, PD__FINISH_REASON__FINISH_LENGTH);
    pd_token_entry_t t[8];
    assert_int_equal(fh_tokens(&f.h, 1, t, 8), 3);
    fh_load(f.r, &l);
    assert_int_equal(l.counters.joins_while_running, 0);
    assert_int_equal(l.counters.max_running, 1);
    assert_int_equal(l.counters.preemptions, 0);
    assert_int_equal(pd_kv_n_used(f.h.eng.kv), 0);
    fx_close(&f);
}

/* Two sequences that fit, then outgrow the cache: the youngest goes back
 * to the router, the other finishes as the engine would. */
static void test_preempts_youngest(void **state)
{
    (void)state;
    fx_t f;
    fx_open(&f, 4);
    int32_t pa[20], pb[20], ra[MAX_GEN];
    prompt_of(pa, 20, 5);
    prompt_of(pb, 20, 6);
    fh_reference(&f.h, pa, 20, 30, ra);
    pd_kv_handoff_t xa, xb;
    make_handoff(&f, &xa, 1, pa, 20, 30, true);
    make_handoff(&f, &xb, 2, pb, 20, 30, true);
    assert_int_equal(pd_decode_take(f.d, &xa), 0);
    assert_int_equal(pd_decode_take(f.d, &xb), 0);
    fh_turn(&f.h, f.r);
    pd_decode_held_t held;
    pd_decode_held(f.d, &held);
    assert_int_equal(held.running, 2);
    assert_int_equal(pd_kv_n_free(f.h.eng.kv), 0);
    run_until_idle(&f, 100);
    const Pd__Msg *m = fh_last(&f.h, PD__MSG__BODY_PREEMPTED);
    assert_non_null(m);
    assert_int_equal(fh_count(&f.h, PD__MSG__BODY_PREEMPTED), 1);
    assert_int_equal(m->preempted->request_id, 2);
    assert_string_equal(m->preempted->reason, "KV blocks exhausted");
    assert_stream(&f, 1, ra, 1, 29, PD__FINISH_REASON__FINISH_LENGTH);
    pd_worker_load_t l;
    fh_load(f.r, &l);
    assert_int_equal(l.counters.preemptions, 1);
    assert_int_equal(l.counters.max_running, 2);
    assert_true(l.counters.multi_seq_steps >= 1);
    assert_int_equal(pd_kv_n_used(f.h.eng.kv), 0);
    fx_close(&f);
}

static void test_cancel_running(void **state)
{
    (void)state;
    fx_t f;
    fx_open(&f, 64);
    int32_t p[20];
    prompt_of(p, 20, 8);
    pd_kv_handoff_t x;
    make_handoff(&f, &x, 3, p, 20, 30, false);
    assert_int_equal(pd_decode_take(f.d, &x), 0);
    fh_turn(&f.h, f.r);
    fh_turn(&f.h, f.r);
    pd_token_entry_t t[MAX_GEN];
    assert_int_equal(fh_tokens(&f.h, 3, t, MAX_GEN), 2);
    assert_int_equal(f.r.ops->held(f.r.self), 1);
    f.r.ops->on_cancel(f.r.self, 3, 0);
    assert_false(f.r.ops->busy(f.r.self));
    assert_int_equal(f.r.ops->held(f.r.self), 0);
    assert_int_equal(pd_kv_n_used(f.h.eng.kv), 0);
    assert_false(fh_turn(&f.h, f.r));
    assert_int_equal(fh_tokens(&f.h, 3, t, MAX_GEN), 2);
    fx_close(&f);
}

/* A hand-off the role cannot hold is refused: the router is told, and the
 * history and blocks stay the caller's. */
static void test_take_refused(void **state)
{
    (void)state;
    fx_t f;
    fx_open(&f, 64);
    int32_t p[20];
    prompt_of(p, 20, 9);
    pd_kv_handoff_t x;
    make_handoff(&f, &x, 4, p, 20, 8, false);
    /* A context shorter than the history: refused, nothing taken. */
    x.params.max_seq_len = 10;
    assert_true(pd_decode_take(f.d, &x) < 0);
    assert_non_null(x.hist);
    const Pd__Msg *m = fh_last(&f.h, PD__MSG__BODY_PREEMPTED);
    assert_non_null(m);
    assert_int_equal(m->preempted->request_id, 4);
    pd_kv_handoff_release(&x, f.h.eng.kv);
    assert_false(f.r.ops->busy(f.r.self));
    assert_int_equal(pd_kv_n_used(f.h.eng.kv), 0);
    fx_close(&f);
}

/* ====== The network ingress ====== */

typedef struct {
    void *sock; /* the fake prefill worker's DEALER to the KV ingress */
} peer_t;

static void peer_open(fx_t *f, peer_t *p)
{
    pd_net_opts_t o;
    pd_net_opts_from_config(&o, &f->h.cfg);
    o.maxmsgsize = -1;
    pd_err_t err = { 0 };
    p->sock = pd_net_socket(f->h.zctx, ZMQ_DEALER, &o, &err);
    assert_non_null(p->sock);
    assert_int_equal(pd_net_connect(p->sock, pd_decode_kv_endpoint(f->d), &err), 0);
}

/* Sends x's KV as a prefill worker does; bad_block: damage that block. */
static void peer_ship(fx_t *f, peer_t *p, const pd_kv_handoff_t *x, int bad_block)
{
    uint64_t sums[16];
    assert_true(x->n_frames <= 16);
    for (uint32_t b = 0; b < x->n_frames; b++)
        sums[b] = XXH3_64bits(zmq_msg_data((zmq_msg_t *)&x->frames[b]), f->h.eng.block_bytes);
    if (bad_block >= 0)
        sums[bad_block] ^= 1;
    Pd__KvTransfer k = PD__KV_TRANSFER__INIT;
    k.has_request_id = k.has_epoch = k.has_n_blocks = k.has_n_tokens = k.has_block_bytes = true;
    k.has_first_token = k.has_model_identity = k.has_block_size = true;
    k.request_id = x->req;
    k.epoch = x->epoch;
    k.n_blocks = x->n_frames;
    k.n_tokens = x->n_hist;
    k.block_bytes = f->h.eng.block_bytes;
    k.n_checksums = x->n_frames;
    k.checksums = sums;
    k.first_token = x->first_token;
    k.model_identity = f->h.eng.identity;
    k.block_size = pd_kv_shape(f->h.eng.kv)->block_size;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_KV_TRANSFER;
    m.kv_transfer = &k;
    pd_err_t err = { 0 };
    assert_int_equal(pd_net_send(p->sock, NULL, 0, &m, true, &err), 0);
    for (uint32_t b = 0; b < x->n_frames; b++) {
        zmq_msg_t c;
        zmq_msg_init(&c);
        zmq_msg_copy(&c, (zmq_msg_t *)&x->frames[b]);
        assert_true(zmq_msg_send(&c, p->sock, b + 1 < x->n_frames ? ZMQ_SNDMORE : 0) >= 0);
    }
}

/* Turns the role until the peer has its KvAck; returns it (caller frees). */
static Pd__KvAck *peer_ack(fx_t *f, peer_t *p)
{
    for (int i = 0; i < 500; i++) {
        fh_turn(&f->h, f->r);
        assert_checked(f);
        zmq_msg_t msg;
        zmq_msg_init(&msg);
        if (zmq_msg_recv(&msg, p->sock, ZMQ_DONTWAIT) >= 0) {
            Pd__Msg *m = pd__msg__unpack(NULL, zmq_msg_size(&msg), zmq_msg_data(&msg));
            zmq_msg_close(&msg);
            assert_non_null(m);
            assert_int_equal(m->body_case, PD__MSG__BODY_KV_ACK);
            Pd__KvAck *a = m->kv_ack;
            m->kv_ack = NULL;
            pd__msg__free_unpacked(m, NULL);
            return a;
        }
        zmq_msg_close(&msg);
        usleep(1000);
    }
    fail_msg("no KvAck");
    return NULL;
}

static void send_decode_task(fx_t *f, const pd_kv_handoff_t *x)
{
    Pd__GenParams gp;
    Pd__Sampling s;
    pd_codec_params_to_pb(&x->params, &gp, &s);
    Pd__DecodeTask t = PD__DECODE_TASK__INIT;
    t.has_request_id = t.has_epoch = true;
    t.request_id = x->req;
    t.epoch = x->epoch;
    t.params = &gp;
    t.prefill_worker_id = (char *)"p1";
    t.n_history = x->n_hist;
    t.history = x->hist;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_DECODE;
    m.decode = &t;
    fh_task(f->r, &m);
}

static void check_pairing(bool task_first)
{
    fx_t f;
    fx_open(&f, 64);
    peer_t peer;
    peer_open(&f, &peer);
    int32_t prompt[20], ref[8];
    prompt_of(prompt, 20, 10 + task_first);
    fh_reference(&f.h, prompt, 20, 8, ref);
    pd_kv_handoff_t x;
    make_handoff(&f, &x, 77, prompt, 20, 8, true);
    pd_decode_held_t held;
    if (task_first) {
        send_decode_task(&f, &x);
        pd_decode_held(f.d, &held);
        assert_int_equal(held.expected, 1);
    }
    peer_ship(&f, &peer, &x, -1);
    Pd__KvAck *a = NULL;
    if (task_first) {
        a = peer_ack(&f, &peer);
    } else {
        /* Kept until its DecodeTask comes; acknowledged then. */
        for (int i = 0; i < 500; i++) {
            fh_turn(&f.h, f.r);
            pd_decode_held(f.d, &held);
            if (held.orphans == 1)
                break;
            usleep(1000);
        }
        assert_int_equal(held.orphans, 1);
        send_decode_task(&f, &x);
        a = peer_ack(&f, &peer);
    }
    assert_int_equal(a->request_id, 77);
    assert_true(a->ok);
    pd__kv_ack__free_unpacked(a, NULL);
    run_until_idle(&f, 100);
    /* The first token is echoed (index 0), then the decode steps. */
    assert_stream(&f, 77, ref, 0, 8, PD__FINISH_REASON__FINISH_LENGTH);
    pd_worker_load_t l;
    fh_load(f.r, &l);
    assert_int_equal(l.counters.kv_recv_bytes, x.n_frames * f.h.eng.block_bytes);
    assert_int_equal(pd_kv_n_used(f.h.eng.kv), 0);
    pd_kv_handoff_release(&x, f.h.eng.kv);
    pd_net_close(peer.sock);
    fx_close(&f);
}

static void test_task_then_kv(void **state)
{
    (void)state;
    check_pairing(true);
}

static void test_kv_then_task(void **state)
{
    (void)state;
    check_pairing(false);
}

/* A damaged block: refused to its sender, the request handed back to the
 * router (kv.load_failure: recompute), never decoded from. */
static void test_damaged_transfer(void **state)
{
    (void)state;
    fx_t f;
    fx_open(&f, 64);
    peer_t peer;
    peer_open(&f, &peer);
    int32_t prompt[20];
    prompt_of(prompt, 20, 12);
    pd_kv_handoff_t x;
    make_handoff(&f, &x, 88, prompt, 20, 8, true);
    send_decode_task(&f, &x);
    peer_ship(&f, &peer, &x, 1);
    Pd__KvAck *a = peer_ack(&f, &peer);
    assert_false(a->ok);
    assert_string_equal(a->reason, "block 1: checksum mismatch");
    pd__kv_ack__free_unpacked(a, NULL);
    const Pd__Msg *m = fh_last(&f.h, PD__MSG__BODY_PREEMPTED);
    assert_non_null(m);
    assert_int_equal(m->preempted->request_id, 88);
    assert_non_null(strstr(m->preempted->reason, "checksum mismatch"));
    assert_false(f.r.ops->busy(f.r.self));
    assert_int_equal(fh_count(&f.h, PD__MSG__BODY_TOKENS), 0);
    pd_worker_load_t l;
    fh_load(f.r, &l);
    assert_int_equal(l.counters.kv_rejected, 1);
    /* Cancelled before its KV: the KV is refused at once. */
    x.req = 89;
    send_decode_task(&f, &x);
    f.r.ops->on_cancel(f.r.self, 89, 0);
    peer_ship(&f, &peer, &x, -1);
    a = peer_ack(&f, &peer);
    assert_false(a->ok);
    assert_string_equal(a->reason, "cancelled");
    pd__kv_ack__free_unpacked(a, NULL);
    assert_false(f.r.ops->busy(f.r.self));
    pd_kv_handoff_release(&x, f.h.eng.kv);
    pd_net_close(peer.sock);
    fx_close(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_local_blocks),
        cmocka_unit_test(test_received_frames),
        cmocka_unit_test(test_admission_waits_for_blocks),
        cmocka_unit_test(test_preempts_youngest),
        cmocka_unit_test(test_cancel_running),
        cmocka_unit_test(test_take_refused),
        cmocka_unit_test(test_task_then_kv),
        cmocka_unit_test(test_kv_then_task),
        cmocka_unit_test(test_damaged_transfer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
