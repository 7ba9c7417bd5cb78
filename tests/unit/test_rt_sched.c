/* test_rt_sched.c -- the router's scheduling (sched.c): what a request is
 * charged on its workers at every step of its life (prefill tokens on the
 * prefill worker until the first token; a decoding slot and KV blocks on
 * the decode worker, growing with the output, until it leaves), which
 * workers it is given, and the limits (max_inflight, a prompt no worker
 * can hold, draining workers). Driven through the router's own handlers
 * on real sockets (rt_fixture.h); block_size is 16. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "rt_fixture.h"

#define FIN_NONE PD__FINISH_REASON__FINISH_NONE

static void expect_charges(fx_t *f, int p, int d, uint64_t prefill_tokens, uint32_t n_decoding,
                           uint64_t blocks)
{
    assert_int_equal(f->rt.workers[p].prefill_tokens, prefill_tokens);
    assert_int_equal(f->rt.workers[d].n_decoding, n_decoding);
    assert_int_equal(f->rt.workers[d].blocks_est, blocks);
}

static void test_blocks_for(void **state)
{
    (void)state;
    assert_int_equal(rt_blocks_for(16, 0), 0);
    assert_int_equal(rt_blocks_for(16, 1), 1);
    assert_int_equal(rt_blocks_for(16, 16), 1);
    assert_int_equal(rt_blocks_for(16, 17), 2);
    assert_int_equal(rt_blocks_for(0, 5), UINT32_MAX);
    assert_int_equal(rt_blocks_for(1, UINT64_MAX / 2), UINT32_MAX);
}

/* One request's charges from dispatch to its end. */
static void test_charges_follow_life(void **state)
{
    (void)state;
    fx_t f;
    fx_init(&f, 4, 4);
    int p = fx_worker(&f, "P", PD__ROLE__ROLE_PREFILL, 0);
    int d = fx_worker(&f, "D", PD__ROLE__ROLE_DECODE, 64);
    expect_charges(&f, p, d, 0, 0, 0);
    fx_generate(&f, 1, 20, 30);
    rt_req_t *r = fx_req(&f, 1);
    /* PREFILL: the 20 prompt tokens on P; 21 positions (2 blocks) on D. */
    expect_charges(&f, p, d, 20, 1, 2);
    assert_int_equal(r->prefill_charged, 20);
    assert_int_equal(r->blocks_charged, 2);
    fx_token(&f, "P", r, 0, 'x', FIN_NONE);
    /* HANDOFF: P is done; D holds 20 + 1 + 1 positions, still 2 blocks. */
    expect_charges(&f, p, d, 0, 1, 2);
    for (uint32_t i = 1; i < 11; i++)
        fx_token(&f, "D", r, i, 'y', FIN_NONE);
    /* 20 + 11 + 1 = 32 positions: 2 blocks; one more token crosses. */
    expect_charges(&f, p, d, 0, 1, 2);
    fx_token(&f, "D", r, 11, 'y', FIN_NONE);
    expect_charges(&f, p, d, 0, 1, 3);
    assert_int_equal(r->blocks_charged, 3);
    /* Another request in PREFILL on P while this one ends: P keeps its
     * tokens (the first one's were returned at its first token). */
    fx_generate(&f, 2, 7, 4);
    expect_charges(&f, p, d, 7, 2, 4);
    fx_token(&f, "D", r, 12, 'y', PD__FINISH_REASON__FINISH_EOS);
    assert_true(fx_gone(&f, 1));
    expect_charges(&f, p, d, 7, 1, 1);
    fx_cancel(&f, 2);
    expect_charges(&f, p, d, 0, 0, 0);
    assert_int_equal(f.rt.n_dispatched, 0);
    fx_free(&f);
}

/* Re-dispatch charges the whole history again; every way out returns
 * everything. */
static void test_charges_requeue_and_ends(void **state)
{
    (void)state;
    fx_t f;
    fx_init(&f, 4, 4);
    int p = fx_worker(&f, "P", PD__ROLE__ROLE_PREFILL, 0);
    int d = fx_worker(&f, "D", PD__ROLE__ROLE_DECODE, 64);
    fx_generate(&f, 1, 10, 30);
    rt_req_t *r = fx_req(&f, 1);
    fx_token(&f, "P", r, 0, 'x', FIN_NONE);
    for (uint32_t i = 1; i < 8; i++)
        fx_token(&f, "D", r, i, 'y', FIN_NONE);
    expect_charges(&f, p, d, 0, 1, 2); /* 10 + 8 + 1 = 19 positions */
    fx_preempted(&f, "D", r);
    /* Re-dispatched at once: the prompt and the 8 tokens to re-prefill. */
    assert_int_equal(r->state, RQ_PREFILL);
    expect_charges(&f, p, d, 18, 1, 2);
    /* A second request beside it, then each leaves a different way. */
    fx_generate(&f, 2, 40, 10);
    rt_req_t *q = fx_req(&f, 2);
    expect_charges(&f, p, d, 58, 2, 5); /* + 40 tokens, + 3 blocks (41 positions) */
    fx_cancel(&f, 1);
    expect_charges(&f, p, d, 40, 1, 3);
    rt_req_sweep(&f.rt, q->deadline_us + 1);
    expect_charges(&f, p, d, 0, 0, 0);
    assert_int_equal(f.rt.n_dispatched, 0);
    assert_int_equal(f.rt.n_active, 0);
    fx_free(&f);
}

/* Colocated: one worker is both p and d and is told once. */
static void test_colocated(void **state)
{
    (void)state;
    fx_t f;
    fx_init(&f, 4, 4);
    int b = fx_worker(&f, "B", PD__ROLE__ROLE_BOTH, 64);
    fx_generate(&f, 1, 20, 8);
    rt_req_t *r = fx_req(&f, 1);
    assert_int_equal(r->p_worker, b);
    assert_int_equal(r->d_worker, b);
    expect_charges(&f, b, b, 20, 1, 2);
    assert_int_equal(fx_count(&f, "B", PD__MSG__BODY_PREFILL), 1); /* no DecodeTask */
    uint64_t rid = r->id;
    fx_cancel(&f, 1);
    expect_charges(&f, b, b, 0, 0, 0);
    Pd__Msg *m = fx_expect(&f, "B", PD__MSG__BODY_CANCEL);
    assert_int_equal(m->cancel->request_id, rid);
    pd__msg__free_unpacked(m, NULL);
    assert_null(fx_recv(&f, "B", 20));
    fx_free(&f);
}

/* The decode worker: among those with room for the whole request, the one
 * decoding the fewest; else the one with the most free blocks that holds
 * the next token. The prefill worker: the fewest prefill tokens. */
static void test_pick(void **state)
{
    (void)state;
    fx_t f;
    fx_init(&f, 8, 8);
    int p1 = fx_worker(&f, "P1", PD__ROLE__ROLE_PREFILL, 0);
    int p2 = fx_worker(&f, "P2", PD__ROLE__ROLE_PREFILL, 0);
    int d1 = fx_worker(&f, "D1", PD__ROLE__ROLE_DECODE, 8);
    int d2 = fx_worker(&f, "D2", PD__ROLE__ROLE_DECODE, 6);
    fx_generate(&f, 1, 30, 2); /* 2 blocks either way: D1 (first of equals), P1 */
    rt_req_t *a = fx_req(&f, 1);
    assert_int_equal(a->d_worker, d1);
    assert_int_equal(a->p_worker, p1);
    fx_generate(&f, 2, 10, 2); /* D2 decodes fewer; P2 has fewer tokens */
    rt_req_t *b = fx_req(&f, 2);
    assert_int_equal(b->d_worker, d2);
    assert_int_equal(b->p_worker, p2);
    /* 60 + 40 positions = 7 blocks: D1 has 6 free, D2 5: nobody holds it
     * whole; D1 has the most room for the next token. */
    fx_generate(&f, 3, 60, 40);
    rt_req_t *c = fx_req(&f, 3);
    assert_int_equal(c->d_worker, d1);
    assert_int_equal(c->p_worker, p2); /* 10 tokens < 30 */
    assert_int_equal(f.rt.workers[d1].blocks_est, 2 + 4);
    /* A worker leaving (or cordoned) gets nothing new. */
    f.rt.workers[d1].state = RT_W_LEAVING;
    fx_generate(&f, 4, 5, 2);
    assert_int_equal(fx_req(&f, 4)->d_worker, d2);
    fx_free(&f);
}

/* No more than router.max_inflight requests on workers; the rest wait in
 * order and go as room frees. Room on the decode workers is the other
 * limit: a request waits for blocks. */
static void test_limits(void **state)
{
    (void)state;
    fx_t f;
    fx_init(&f, 2, 4);
    fx_worker(&f, "P", PD__ROLE__ROLE_PREFILL, 0);
    int d = fx_worker(&f, "D", PD__ROLE__ROLE_DECODE, 4);
    fx_generate(&f, 1, 5, 2);
    fx_generate(&f, 2, 5, 2);
    fx_generate(&f, 3, 5, 2);
    fx_generate(&f, 4, 5, 2);
    assert_int_equal(f.rt.n_dispatched, 2);
    assert_int_equal(fx_req(&f, 3)->state, RQ_QUEUED);
    assert_int_equal(fx_req(&f, 4)->state, RQ_QUEUED);
    fx_cancel(&f, 1);
    rt_dispatch(&f.rt);
    assert_int_equal(fx_req(&f, 3)->state, RQ_PREFILL);
    assert_int_equal(fx_req(&f, 4)->state, RQ_QUEUED);
    fx_cancel(&f, 2);
    fx_cancel(&f, 3);
    rt_dispatch(&f.rt);
    assert_int_equal(fx_req(&f, 4)->state, RQ_PREFILL);
    fx_cancel(&f, 4);
    /* 4 blocks: a 40-token prompt waits until a 30-token one leaves. */
    fx_generate(&f, 5, 30, 2); /* 31 positions: 2 blocks */
    fx_generate(&f, 6, 40, 2); /* 41 positions: 3 blocks, 2 free */
    assert_int_equal(fx_req(&f, 5)->state, RQ_PREFILL);
    assert_int_equal(fx_req(&f, 6)->state, RQ_QUEUED);
    assert_int_equal(f.rt.workers[d].blocks_est, 2);
    fx_cancel(&f, 5);
    rt_dispatch(&f.rt);
    assert_int_equal(fx_req(&f, 6)->state, RQ_PREFILL);
    assert_int_equal(f.rt.workers[d].blocks_est, 3);
    fx_free(&f);
}

/* A prompt that no decode worker could ever hold fails at once. */
static void test_never_fits(void **state)
{
    (void)state;
    fx_t f;
    fx_init(&f, 4, 4);
    fx_worker(&f, "P", PD__ROLE__ROLE_PREFILL, 0);
    fx_worker(&f, "D", PD__ROLE__ROLE_DECODE, 2);
    fx_generate(&f, 1, 40, 2); /* 41 positions: 3 blocks > 2 */
    assert_true(fx_gone(&f, 1));
    Pd__Msg *m = fx_expect(&f, "C", PD__MSG__BODY_ERROR);
    assert_int_equal(m->error->code, PD__ERROR_CODE__INVALID_ARGUMENT);
    assert_non_null(strstr(m->error->message, "need more KV blocks than any decode worker has"));
    pd__msg__free_unpacked(m, NULL);
    assert_int_equal(f.rt.q_len, 0);
    assert_int_equal(f.rt.n_dispatched, 0);
    fx_free(&f);
}

/* A heartbeat's load and counters reach the worker's entry (and the
 * status); one that cannot be (more free blocks than it has) is ignored. */
/* The next KvPeers to `name`: it lists exactly want[0..n) (in any order). */
static void expect_peers(fx_t *f, const char *name, size_t n, const char *const *want)
{
    Pd__Msg *m = fx_expect(f, name, PD__MSG__BODY_KV_PEERS);
    const Pd__KvPeers *k = m->kv_peers;
    if (k->n_kv_endpoints != n)
        fail_msg("%s: %zu KV peers, expected %zu", name, k->n_kv_endpoints, n);
    for (size_t i = 0; i < n; i++) {
        bool found = false;
        for (size_t j = 0; j < n && !found; j++)
            found = strcmp(k->kv_endpoints[j], want[i]) == 0;
        if (!found)
            fail_msg("%s: KV peer %s not listed", name, want[i]);
    }
    pd__msg__free_unpacked(m, NULL);
}

/* KvPeers: a prefill worker is told every decode-capable worker's KV
 * endpoint when it registers and again whenever that set changes, so that
 * it connects before a task names one (docs/protocol.md, "Layer-wise KV
 * streaming"); decode and colocated workers are told nothing. */
static void test_kv_peers(void **state)
{
    (void)state;
    fx_t f;
    fx_init(&f, 4, 4);
    f.see_kv_peers = true;
    const char *d1 = "inproc://fx-kv-d1", *c1 = "inproc://fx-kv-c1", *d2 = "inproc://fx-kv-d2";
    int wd1 = fx_worker_kv(&f, "D1", PD__ROLE__ROLE_DECODE, 64, d1);
    fx_worker(&f, "P1", PD__ROLE__ROLE_PREFILL, 0);
    expect_peers(&f, "P1", 1, (const char *[]){ d1 });
    fx_worker_kv(&f, "C1", PD__ROLE__ROLE_BOTH, 64, c1);
    expect_peers(&f, "P1", 2, (const char *[]){ d1, c1 });
    fx_worker(&f, "P2", PD__ROLE__ROLE_PREFILL, 0);
    expect_peers(&f, "P2", 2, (const char *[]){ d1, c1 });
    assert_int_equal(fx_count(&f, "P1", PD__MSG__BODY_KV_PEERS), 0); /* no change for P1 */
    rt_worker_drop(&f.rt, wd1, "test");
    expect_peers(&f, "P1", 1, (const char *[]){ c1 });
    expect_peers(&f, "P2", 1, (const char *[]){ c1 });
    fx_worker_kv(&f, "D2", PD__ROLE__ROLE_DECODE, 64, d2);
    expect_peers(&f, "P1", 2, (const char *[]){ c1, d2 });
    expect_peers(&f, "P2", 2, (const char *[]){ c1, d2 });
    /* A prefill worker leaving changes nothing for the others. */
    rt_worker_drop(&f.rt, rt_worker_by_zid(&f.rt, "P2", 2), "test");
    assert_int_equal(fx_count(&f, "P1", PD__MSG__BODY_KV_PEERS), 0);
    assert_int_equal(fx_count(&f, "D2", PD__MSG__BODY_KV_PEERS), 0);
    assert_int_equal(fx_count(&f, "C1", PD__MSG__BODY_KV_PEERS), 0);
    fx_free(&f);
}

static void test_heartbeat(void **state)
{
    (void)state;
    fx_t f;
    fx_init(&f, 4, 4);
    int d = fx_worker(&f, "D", PD__ROLE__ROLE_DECODE, 64);
    rt_worker_t *w = &f.rt.workers[d];
    assert_int_equal(w->hb_free_blocks, 64);
    pd_worker_load_t l = { .queued_prefill_tokens = 3, .running_seqs = 2, .waiting_seqs = 1,
                           .free_blocks = 40, .total_blocks = 64 };
    l.counters.steps = 17;
    l.counters.decode_tokens = 99;
    Pd__Heartbeat h;
    Pd__WorkerCounters c;
    pd_codec_load_to_pb(&l, &h, &c);
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_HEARTBEAT;
    m.heartbeat = &h;
    fx_send(&f, "D", true, &m);
    assert_int_equal(w->hb_free_blocks, 40);
    assert_int_equal(w->hb_running, 2);
    assert_int_equal(w->hb_queued_tokens, 3);
    assert_int_equal(w->counters.steps, 17);
    assert_int_equal(w->counters.decode_tokens, 99);
    l.free_blocks = 65;
    l.running_seqs = 9;
    pd_codec_load_to_pb(&l, &h, &c);
    fx_send(&f, "D", true, &m);
    assert_int_equal(w->hb_free_blocks, 40);
    assert_int_equal(w->hb_running, 2);
    /* The status carries the counters back out. */
    fx_drain(&f);
    Pd__StatusRequest sr = PD__STATUS_REQUEST__INIT;
    Pd__Msg q = PD__MSG__INIT;
    q.body_case = PD__MSG__BODY_STATUS_REQUEST;
    q.status_request = &sr;
    fx_send(&f, "C", false, &q);
    Pd__Msg *st = fx_expect(&f, "C", PD__MSG__BODY_STATUS);
    assert_int_equal(st->status->n_workers, 1);
    assert_int_equal(st->status->workers[0]->counters->steps, 17);
    assert_int_equal(st->status->workers[0]->free_blocks, 40);
    pd__msg__free_unpacked(st, NULL);
    fx_free(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_blocks_for),
        cmocka_unit_test(test_charges_follow_life),
        cmocka_unit_test(test_charges_requeue_and_ends),
        cmocka_unit_test(test_colocated),
        cmocka_unit_test(test_pick),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_never_fits),
        cmocka_unit_test(test_heartbeat),
        cmocka_unit_test(test_kv_peers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
