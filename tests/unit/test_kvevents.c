/* test_kvevents.c -- the prefix cache event protocol end to end, without
 * sockets: a worker's KV pool (engine/kvcache.h) runs random requests, its
 * events leave through runtime/kvevents.c as KvEvents messages, go over the
 * wire (packed and unpacked, proto/codec.c), some are lost, and the
 * router's index (router/kvindex.c) applies them, asking for a snapshot at
 * every gap (a later seq, or the heartbeat's last seq, shows it). At each
 * point where the index is in sync it holds exactly the pool's hashes.
 * Also: snapshots longer than a message, and a pool whose own event queue
 * overflows. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "engine/kvcache.h"
#include "proto/codec.h"
#include "router/kvindex.h"
#include "runtime/kvevents.h"

#define BS 4 /* tokens per block: small, so prompts span many blocks */

static uint64_t lcg(uint64_t *st)
{
    *st = *st * 6364136223846793005ull + 1442695040888963407ull;
    return *st >> 33;
}

/* The router side: the wire, a lossy link, the index. */
typedef struct {
    rt_kvi_t *x;
    pd_kvev_t *ev;      /* the worker to ask for snapshots */
    uint64_t rs;
    int loss_pct;       /* messages dropped, per cent */
    int n_msgs, n_lost, n_gaps, n_snapshots;
} link_t;

static void router_receive(void *ctx, const Pd__Msg *m)
{
    link_t *l = ctx;
    assert_int_equal(m->body_case, PD__MSG__BODY_KV_EVENTS);
    size_t n = protobuf_c_message_get_packed_size(&m->base);
    uint8_t *buf = malloc(n ? n : 1);
    assert_non_null(buf);
    protobuf_c_message_pack(&m->base, buf);
    l->n_msgs++;
    if ((int)(lcg(&l->rs) % 100) < l->loss_pct) {
        l->n_lost++;
        free(buf);
        return;
    }
    Pd__Msg *r = pd__msg__unpack(NULL, n, buf);
    free(buf);
    assert_non_null(r);
    pd_kv_events_t e;
    pd_err_t err = { 0 };
    assert_int_equal(pd_codec_kv_events_from_pb(r->kv_events, &e, &err), 0);
    l->n_snapshots += e.snapshot;
    rt_kvi_result_t res = rt_kvi_begin(l->x, 3, e.seq, e.snapshot);
    for (size_t i = 0; i < e.n && res == RT_KVI_APPLIED; i++)
        res = rt_kvi_event(l->x, 3, e.hashes[i], e.removed[i] != 0);
    if (res == RT_KVI_GAP) {
        l->n_gaps++;
        pd_kvev_resync(l->ev); /* the router's KvResync */
    }
    pd__msg__free_unpacked(r, NULL);
}

/* The worker's heartbeat carries the last seq it sent: a loss at the end
 * of the stream shows there (heartbeats themselves are not lost here: they
 * are sent every interval, and the next one would tell). While out of sync
 * the router asks again once per heartbeat (the snapshot may be what was
 * lost). */
static void heartbeat(link_t *l)
{
    rt_kvi_result_t r = rt_kvi_check_seq(l->x, 3, pd_kvev_last_seq(l->ev));
    l->n_gaps += r == RT_KVI_GAP;
    if (r != RT_KVI_APPLIED)
        pd_kvev_resync(l->ev);
}

/* The index's view of worker 3 equals the pool's set of hashes. */
static void assert_converged(link_t *l, pd_kv_t *kv)
{
    uint64_t hs[4096];
    uint32_t n = pd_kv_prefix_hashes(kv, hs, 4096);
    assert_true(n <= 4096);
    assert_true(rt_kvi_synced(l->x, 3));
    assert_int_equal(rt_kvi_worker_hashes(l->x, 3), n);
    for (uint32_t i = 0; i < n; i++)
        assert_true(rt_kvi_holds(l->x, 3, hs[i]));
}

static pd_kv_t *new_pool(uint32_t n_blocks, uint32_t max_events)
{
    pd_kv_shape_t s = { 1, 1, 4, BS, n_blocks, PD_KV_F32 };
    pd_err_t err = { 0 };
    pd_kv_t *kv = pd_kv_new(&s, &err);
    assert_non_null(kv);
    assert_int_equal(pd_kv_prefix_enable(kv, pd_kv_hash_root(9, BS), NULL, max_events, &err), 0);
    return kv;
}

/* One request through the pool: match, reserve, commit, release. */
static void one_request(pd_kv_t *kv, uint64_t *rs)
{
    int32_t tok[64];
    uint32_t n = 1 + (uint32_t)(lcg(rs) % 64), fam = (uint32_t)(lcg(rs) % 4);
    uint32_t keep = (uint32_t)(lcg(rs) % 65);
    for (uint32_t i = 0; i < n; i++)
        tok[i] = i < keep ? (int32_t)(fam * 100 + i) : (int32_t)(lcg(rs) % 1000);
    pd_kv_seq_t seq = { 0 };
    pd_kv_prefix_match(kv, &seq, tok, n);
    if (pd_kv_seq_reserve(kv, &seq, n) == 0)
        pd_kv_prefix_commit(kv, &seq, tok, n);
    pd_kv_seq_release(kv, &seq);
}

static void run_lossy(int loss_pct, uint32_t per_msg)
{
    pd_kv_t *kv = new_pool(200, 4096);
    pd_err_t err = { 0 };
    link_t l = { .x = rt_kvi_new(), .rs = 77, .loss_pct = loss_pct };
    l.ev = pd_kvev_new(per_msg, &err);
    assert_non_null(l.ev);
    rt_kvi_reset_worker(l.x, 3, 200);
    pd_kvev_resync(l.ev); /* the router's KvResync at registration */
    uint64_t rs = 5;
    int n_checks = 0;
    for (int step = 0; step < 3000; step++) {
        one_request(kv, &rs);
        pd_kvev_flush(l.ev, kv, router_receive, &l);
        heartbeat(&l);
        if (rt_kvi_synced(l.x, 3)) { /* a quiet point: nothing in flight */
            assert_converged(&l, kv);
            n_checks++;
        }
    }
    /* Whatever was lost, one more round trip repairs it. */
    l.loss_pct = 0;
    pd_kvev_flush(l.ev, kv, router_receive, &l);
    heartbeat(&l);
    pd_kvev_flush(l.ev, kv, router_receive, &l);
    assert_converged(&l, kv);
    print_message("loss %d%%, %u per message: %d messages, %d lost, %d gaps, %d snapshots, %d "
                  "in-sync checks, %u hashes at the end\n", loss_pct, per_msg, l.n_msgs,
                  l.n_lost, l.n_gaps, l.n_snapshots, n_checks, rt_kvi_worker_hashes(l.x, 3));
    assert_true(n_checks > 1000);
    if (loss_pct > 0)
        assert_true(l.n_gaps > 10 && l.n_snapshots > 10);
    pd_kvev_free(l.ev);
    rt_kvi_free(l.x);
    pd_kv_free(kv);
}

static void test_lossless(void **st) { (void)st; run_lossy(0, PD_KV_EVENTS_MAX); }
static void test_lossy_link_resyncs(void **st) { (void)st; run_lossy(5, PD_KV_EVENTS_MAX); }
/* Snapshots of up to 200 hashes in messages of 7: a snapshot continues
 * in deltas, and losing one of those is a gap like any other. */
static void test_chunked_snapshots(void **st) { (void)st; run_lossy(5, 7); }

/* The pool's own event queue is tiny: it overflows, and the worker sends a
 * snapshot instead of the lost events. */
static void test_pool_overflow_snapshot(void **st)
{
    (void)st;
    pd_kv_t *kv = new_pool(200, 3);
    pd_err_t err = { 0 };
    link_t l = { .x = rt_kvi_new(), .rs = 1 };
    l.ev = pd_kvev_new(16, &err);
    rt_kvi_reset_worker(l.x, 3, 200);
    pd_kvev_resync(l.ev);
    pd_kvev_flush(l.ev, kv, router_receive, &l);
    uint64_t rs = 9;
    for (int i = 0; i < 20; i++)
        one_request(kv, &rs); /* far more than 3 events */
    uint64_t snaps = pd_kvev_snapshots(l.ev);
    pd_kvev_flush(l.ev, kv, router_receive, &l);
    assert_int_equal(pd_kvev_snapshots(l.ev), snaps + 1);
    assert_converged(&l, kv);
    pd_kvev_free(l.ev);
    rt_kvi_free(l.x);
    pd_kv_free(kv);
}

static void test_per_msg(void **st)
{
    (void)st;
    assert_int_equal(pd_kvev_per_msg(16u << 20), PD_KV_EVENTS_MAX);
    assert_int_equal(pd_kvev_per_msg(1024), (1024 - 64) / 9);
    assert_int_equal(pd_kvev_per_msg(10), 1);
    pd_err_t err = { 0 };
    assert_null(pd_kvev_new(0, &err));
    assert_int_equal(err.code, PD_EINVAL);
    assert_null(pd_kvev_new(PD_KV_EVENTS_MAX + 1, &err));
    pd_kvev_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lossless),
        cmocka_unit_test(test_lossy_link_resyncs),
        cmocka_unit_test(test_chunked_snapshots),
        cmocka_unit_test(test_pool_overflow_snapshot),
        cmocka_unit_test(test_per_msg),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
