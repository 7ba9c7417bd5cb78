/* test_kvindex.c -- the router's prefix-cache index (router/kvindex.c):
 * matching a chain, a gap in a worker's event stream triggers a resync and
 * the index converges to what the worker holds, a worker's death drops its
 * entries, the per-worker bound, and the table against a shadow model. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "router/kvindex.h"

static uint64_t lcg(uint64_t *st)
{
    *st = *st * 6364136223846793005ull + 1442695040888963407ull;
    return *st >> 33;
}

static const bool STORED[8] = { false, false, false, false, false, false, false, false };

static void test_match_longest_run(void **st)
{
    (void)st;
    rt_kvi_t *x = rt_kvi_new();
    assert_non_null(x);
    rt_kvi_reset_worker(x, 0, 100);
    rt_kvi_reset_worker(x, 5, 100);
    uint64_t a[4] = { 11, 12, 13, 14 };
    uint64_t b[3] = { 11, 99, 13 }; /* 13 without 12: not a run */
    assert_int_equal(rt_kvi_apply(x, 0, 1, true, a, STORED, 3), RT_KVI_APPLIED);
    assert_int_equal(rt_kvi_apply(x, 5, 1, true, b, STORED, 3), RT_KVI_APPLIED);
    uint32_t out[RT_KVI_MAX_WORKERS];
    rt_kvi_match(x, a, 4, out);
    assert_int_equal(out[0], 3);
    assert_int_equal(out[5], 1);
    assert_int_equal(out[1], 0);
    rt_kvi_match(x, a + 1, 3, out); /* a chain starts at block 0 */
    assert_int_equal(out[0], 2);
    assert_int_equal(out[5], 0);
    assert_int_equal(rt_kvi_size(x), 4); /* 11 12 13 99: 11 and 13 shared */
    /* Deltas in order: 12 evicted on worker 0 cuts its run at 1. */
    bool rm[1] = { true };
    assert_int_equal(rt_kvi_apply(x, 0, 2, false, &a[1], rm, 1), RT_KVI_APPLIED);
    rt_kvi_match(x, a, 4, out);
    assert_int_equal(out[0], 1);
    /* Stored then removed within one message: order is kept. */
    uint64_t h2[2] = { 77, 77 };
    bool k2[2] = { false, true };
    assert_int_equal(rt_kvi_apply(x, 0, 3, false, h2, k2, 2), RT_KVI_APPLIED);
    assert_false(rt_kvi_holds(x, 0, 77));
    /* Untracked slots and bad slots are ignored. */
    assert_int_equal(rt_kvi_apply(x, 3, 1, true, a, STORED, 1), RT_KVI_WAITING);
    assert_int_equal(rt_kvi_apply(x, -1, 1, true, a, STORED, 1), RT_KVI_WAITING);
    assert_int_equal(rt_kvi_apply(x, RT_KVI_MAX_WORKERS, 1, true, a, STORED, 1), RT_KVI_WAITING);
    rt_kvi_free(x);
    rt_kvi_free(NULL);
}

static void test_death_drops_entries(void **st)
{
    (void)st;
    rt_kvi_t *x = rt_kvi_new();
    rt_kvi_reset_worker(x, 2, 5000);
    rt_kvi_reset_worker(x, 63, 5000);
    uint64_t h[3000];
    bool k[3000] = { false };
    for (int i = 0; i < 3000; i++)
        h[i] = 1000 + (uint64_t)i;
    assert_int_equal(rt_kvi_apply(x, 2, 1, true, h, k, 3000), RT_KVI_APPLIED);
    assert_int_equal(rt_kvi_apply(x, 63, 1, true, h + 2000, k, 1000), RT_KVI_APPLIED);
    assert_int_equal(rt_kvi_size(x), 3000);
    rt_kvi_drop_worker(x, 2);
    assert_int_equal(rt_kvi_worker_hashes(x, 2), 0);
    assert_int_equal(rt_kvi_size(x), 1000); /* only 63's remain */
    for (int i = 0; i < 3000; i++) {
        assert_false(rt_kvi_holds(x, 2, h[i]));
        assert_int_equal(rt_kvi_holds(x, 63, h[i]), i >= 2000);
    }
    uint32_t out[RT_KVI_MAX_WORKERS];
    rt_kvi_match(x, h + 2000, 10, out);
    assert_int_equal(out[2], 0);
    assert_int_equal(out[63], 10);
    /* A dropped worker's late message changes nothing. */
    assert_int_equal(rt_kvi_apply(x, 2, 2, false, h, k, 10), RT_KVI_WAITING);
    assert_int_equal(rt_kvi_size(x), 1000);
    rt_kvi_free(x);
}

static void test_bound_per_worker(void **st)
{
    (void)st;
    rt_kvi_t *x = rt_kvi_new();
    rt_kvi_reset_worker(x, 0, 4);
    uint64_t h[6] = { 1, 2, 3, 4, 5, 6 };
    bool k[6] = { false };
    assert_int_equal(rt_kvi_apply(x, 0, 1, true, h, k, 6), RT_KVI_APPLIED);
    assert_int_equal(rt_kvi_worker_hashes(x, 0), 4);
    assert_int_equal(rt_kvi_refused(x), 2);
    assert_false(rt_kvi_holds(x, 0, 6));
    rt_kvi_free(x);
}

/* A worker's cache changes at random; its messages go through a lossy link
 * (some dropped). Each gap is answered with a resync request, the worker
 * answers with a snapshot, and at every quiet point the index equals the
 * worker's set. */
static void test_gap_resync_converges(void **st)
{
    (void)st;
    enum { UNIVERSE = 300, STEPS = 3000 };
    rt_kvi_t *x = rt_kvi_new();
    rt_kvi_reset_worker(x, 7, UNIVERSE);
    bool have[UNIVERSE] = { false };
    uint64_t seq = 0, rs = 99;
    bool want_resync = true; /* a worker's first message is a snapshot */
    int n_gaps = 0, n_waiting = 0, n_resyncs = 0, n_checks = 0;
    for (int step = 0; step < STEPS; step++) {
        uint64_t hash[UNIVERSE];
        bool rm[UNIVERSE];
        size_t n = 0;
        bool snap = want_resync;
        if (snap) {
            for (int i = 0; i < UNIVERSE; i++)
                if (have[i]) {
                    hash[n] = 0xabc00000ull + (uint64_t)i;
                    rm[n++] = false;
                }
            want_resync = false;
            n_resyncs++;
        } else {
            size_t m = 1 + lcg(&rs) % 6;
            for (size_t j = 0; j < m; j++) {
                int i = (int)(lcg(&rs) % UNIVERSE);
                have[i] = !have[i];
                hash[n] = 0xabc00000ull + (uint64_t)i;
                rm[n++] = !have[i];
            }
        }
        seq++;
        bool dropped = !snap && lcg(&rs) % 10 == 0;
        if (dropped)
            continue;
        rt_kvi_result_t r = rt_kvi_apply(x, 7, seq, snap, hash, rm, n);
        if (r == RT_KVI_GAP) {
            n_gaps++;
            want_resync = true;
        } else if (r == RT_KVI_WAITING) {
            n_waiting++;
        }
        if (r == RT_KVI_APPLIED) {
            assert_true(rt_kvi_synced(x, 7));
            for (int i = 0; i < UNIVERSE; i++)
                assert_int_equal(rt_kvi_holds(x, 7, 0xabc00000ull + (uint64_t)i), have[i]);
            n_checks++;
        }
    }
    print_message("%d gaps, %d resyncs, %d ignored while waiting, %d in-sync checks\n", n_gaps,
                  n_resyncs, n_waiting, n_checks);
    assert_true(n_gaps > 50 && n_checks > 1000);
    rt_kvi_free(x);
}

/* The table (probing, backward-shift deletion, growth) against a shadow
 * model, with hashes from a small range so probe runs are long. */
static void test_table_shadow(void **st)
{
    (void)st;
    enum { RANGE = 5000, OPS = 60000, W = 3 };
    rt_kvi_t *x = rt_kvi_new();
    for (int w = 0; w < W; w++)
        rt_kvi_reset_worker(x, w * 20, RANGE);
    static bool shadow[W][RANGE];
    memset(shadow, 0, sizeof shadow);
    uint64_t seqs[W] = { 0 }, rs = 5;
    for (int w = 0; w < W; w++)
        assert_int_equal(rt_kvi_apply(x, w * 20, ++seqs[w], true, NULL, NULL, 0), RT_KVI_APPLIED);
    for (int op = 0; op < OPS; op++) {
        int w = (int)(lcg(&rs) % W);
        uint64_t h = lcg(&rs) % (op < OPS / 2 ? RANGE : RANGE / 4); /* grow, then churn */
        bool rm = lcg(&rs) % 3 == 0;
        if (op == OPS * 3 / 4) { /* one worker dies mid-run */
            rt_kvi_drop_worker(x, 20);
            memset(shadow[1], 0, sizeof shadow[1]);
            rt_kvi_reset_worker(x, 20, RANGE);
            seqs[1] = 0;
            assert_int_equal(rt_kvi_apply(x, 20, ++seqs[1], true, NULL, NULL, 0), RT_KVI_APPLIED);
        }
        assert_int_equal(rt_kvi_apply(x, w * 20, ++seqs[w], false, &h, &rm, 1), RT_KVI_APPLIED);
        shadow[w][h] = !rm;
        if (op % 1000 == 999) {
            size_t distinct = 0;
            for (uint64_t i = 0; i < RANGE; i++) {
                bool any = false;
                for (int v = 0; v < W; v++) {
                    assert_int_equal(rt_kvi_holds(x, v * 20, i), shadow[v][i]);
                    any |= shadow[v][i];
                }
                distinct += any;
            }
            assert_int_equal(rt_kvi_size(x), distinct);
        }
    }
    rt_kvi_free(x);
}

/* The slot function of kvindex.c (white box: this test places entries on
 * purpose) and its first table size. */
static size_t slot_of(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return (size_t)h & 1023;
}

static uint64_t hash_at(size_t slot, uint64_t from)
{
    while (slot_of(from) != slot)
        from++;
    return from;
}

/* A probe run that wraps past the table's end, and a deletion before it:
 * the entries behind the hole move back only where their lookups still
 * find them. */
static void test_erase_wrapping_run(void **st)
{
    (void)st;
    rt_kvi_t *x = rt_kvi_new();
    rt_kvi_reset_worker(x, 0, 100);
    uint64_t h1 = hash_at(1022, 1), h2 = hash_at(1022, h1 + 1), h3 = hash_at(0, 1),
             h4 = hash_at(1022, h2 + 1);
    uint64_t h[4] = { h1, h2, h3, h4 }; /* slots 1022, 1023, 0, 1 */
    bool k[4] = { false, false, false, false };
    assert_int_equal(rt_kvi_apply(x, 0, 1, true, h, k, 4), RT_KVI_APPLIED);
    bool rm = true;
    assert_int_equal(rt_kvi_apply(x, 0, 2, false, &h1, &rm, 1), RT_KVI_APPLIED);
    assert_false(rt_kvi_holds(x, 0, h1));
    assert_true(rt_kvi_holds(x, 0, h2));
    assert_true(rt_kvi_holds(x, 0, h3));
    assert_true(rt_kvi_holds(x, 0, h4));
    assert_int_equal(rt_kvi_apply(x, 0, 3, false, &h2, &rm, 1), RT_KVI_APPLIED);
    assert_true(rt_kvi_holds(x, 0, h3));
    assert_true(rt_kvi_holds(x, 0, h4));
    assert_int_equal(rt_kvi_size(x), 2);
    rt_kvi_free(x);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_match_longest_run),
        cmocka_unit_test(test_death_drops_entries),
        cmocka_unit_test(test_bound_per_worker),
        cmocka_unit_test(test_gap_resync_converges),
        cmocka_unit_test(test_table_shadow),
        cmocka_unit_test(test_erase_wrapping_run),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
