/* test_fault.c -- the allocation-failure injector (fault.h): spec parsing,
 * the sweep's progression (warm-up, k-th allocation of the k-th request,
 * one shot per request, end at the first clean completion), the N mode, and
 * that nothing fails outside an open region. The cluster-level sweep is
 * tests/cluster/t_alloc_sweep.sh. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "base/fault.h"
#include "base/grow.h"
#include "runtime/net.h"

/* One request of `n` armed allocations through site; returns the 1-based
 * index of the allocation that failed (0 if none) and completes the region
 * when it got through (as the callers do: an injected request may still
 * complete after recovering, which must not end the sweep). */
static int run_request(pd_fault_site_t site, uint64_t key, int n, bool complete_anyway)
{
    int failed = 0;
    pd_fault_enter(site, key);
    for (int i = 1; i <= n; i++) {
        void *p = pd_malloc(16);
        if (p == NULL && failed == 0)
            failed = i;
        free(p);
    }
    pd_fault_leave();
    if (failed == 0 || complete_anyway)
        pd_fault_complete(site, key);
    return failed;
}

static void test_off_by_default_and_bad_specs_refused(void **state)
{
    (void)state;
    pd_err_t err = { 0 };
    assert_int_equal(pd_fault_configure(NULL, &err), 0);
    assert_false(pd_fault_armed(PD_FAULT_ROUTER_REQUEST));
    pd_fault_enter(PD_FAULT_ROUTER_REQUEST, 1);
    for (int i = 0; i < 100; i++) {
        void *p = pd_malloc(8);
        assert_non_null(p);
        free(p);
    }
    pd_fault_leave();
    const char *bad[] = { "router.request", "router.request:", "router.request:0",
                          "router.request:-1", "router.request:sweeps", "nowhere:sweep",
                          ":sweep", "router.request:12x", "decode.admit:99999999999" };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        memset(&err, 0, sizeof err);
        assert_int_equal(pd_fault_configure(bad[i], &err), PD_EINVAL);
        assert_non_null(strstr(err.msg, PD_FAULT_ENV));
        assert_false(pd_fault_armed(PD_FAULT_ROUTER_REQUEST));
        assert_false(pd_fault_armed(PD_FAULT_DECODE_ADMIT));
    }
    assert_int_equal(pd_fault_configure("decode.admit:sweep", &err), 0);
    assert_true(pd_fault_armed(PD_FAULT_DECODE_ADMIT));
    assert_false(pd_fault_armed(PD_FAULT_ROUTER_REQUEST));
    pd_fault_configure("", NULL);
}

static void test_sweep_fails_each_allocation_once_then_ends(void **state)
{
    (void)state;
    const pd_fault_site_t S = PD_FAULT_ROUTER_REQUEST;
    assert_int_equal(pd_fault_configure("router.request:sweep", NULL), 0);
    /* Warm-up: a request that grows a table once (7 allocations), clean. */
    assert_int_equal(run_request(S, 100, 7, false), 0);
    /* Steady state: 5 allocations per request; request k fails allocation k. */
    for (int k = 1; k <= 5; k++)
        assert_int_equal(run_request(S, 100 + (uint64_t)k, 5, k % 2 == 0), k);
    pd_fault_stats_t st;
    pd_fault_stats(&st);
    assert_true(st.armed);
    assert_int_equal(st.injected, 5);
    assert_int_equal(st.k, 6);
    /* Request 6 has only 5 allocations: it gets through and ends the sweep. */
    assert_int_equal(run_request(S, 200, 5, false), 0);
    pd_fault_stats(&st);
    assert_false(st.armed);
    assert_int_equal(st.injected, 5);
    assert_int_equal(st.requests, 7);
    assert_false(pd_fault_armed(S));
    /* Disarmed: nothing fails any more. */
    assert_int_equal(run_request(S, 201, 50, false), 0);
}

static void test_a_request_is_counted_across_its_regions(void **state)
{
    (void)state;
    const pd_fault_site_t S = PD_FAULT_DECODE_ADMIT;
    assert_int_equal(pd_fault_configure("decode.admit:sweep", NULL), 0);
    assert_int_equal(run_request(S, 1, 3, false), 0); /* warm-up */
    /* Request 2 (the sweep's k = 1... then k = 2): its regions are opened
     * three times (task, KV, admission); allocations outside them, and
     * other keys' work in between, do not count. */
    assert_int_equal(run_request(S, 7, 1, true), 1); /* k = 1: first allocation */
    pd_fault_enter(S, 8);
    assert_non_null(pd_fault_current_key(S) == 8 ? (void *)1 : NULL);
    void *a = pd_malloc(4); /* allocation 1 of request 8 */
    pd_fault_leave();
    assert_int_equal(pd_fault_current_key(S), 0);
    void *outside = pd_malloc(4); /* not armed: no region open */
    assert_non_null(outside);
    pd_fault_enter(S, 8);
    void *b = pd_realloc(NULL, 4); /* allocation 2: fails (k = 2) */
    void *c = pd_calloc(1, 4);     /* allocation 3: one shot, so it succeeds */
    char *d = pd_strdup("x");
    pd_fault_leave();
    assert_non_null(a);
    assert_null(b);
    assert_non_null(c);
    assert_non_null(d);
    free(a);
    free(outside);
    free(c);
    free(d);
    /* Completing another key is a no-op; completing 8 (injected) does not end it. */
    pd_fault_complete(S, 9);
    pd_fault_complete(S, 8);
    assert_true(pd_fault_armed(S));
    pd_fault_configure(NULL, NULL);
}

static void test_nth_mode_fails_once(void **state)
{
    (void)state;
    const pd_fault_site_t S = PD_FAULT_ROUTER_REQUEST;
    assert_int_equal(pd_fault_configure("router.request:3", NULL), 0);
    assert_int_equal(run_request(S, 1, 2, false), 0); /* too short: no failure, still armed */
    assert_true(pd_fault_armed(S));
    assert_int_equal(run_request(S, 2, 6, true), 3);
    assert_false(pd_fault_armed(S));
    assert_int_equal(run_request(S, 3, 6, true), 0);
}

static void test_grow_and_protobuf_allocator_consult_the_hook(void **state)
{
    (void)state;
    const pd_fault_site_t S = PD_FAULT_ROUTER_REQUEST;
    assert_int_equal(pd_fault_configure("router.request:1", NULL), 0);
    pd_fault_enter(S, 1);
    int *v = NULL;
    size_t cap = 0;
    assert_int_equal(pd_grow((void **)&v, &cap, 4, sizeof *v, 4), PD_ENOMEM);
    assert_null(v);
    assert_int_equal(cap, 0);
    pd_fault_leave();
    /* A message that fails to decode for lack of memory says so (PD_ENOMEM),
     * not "malformed". */
    Pd__Cancel c = PD__CANCEL__INIT;
    c.has_request_id = true;
    c.request_id = 77;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_CANCEL;
    m.cancel = &c;
    uint8_t buf[64];
    size_t len = pd__msg__pack(&m, buf);
    pd_pb_alloc_t a;
    pd_pb_alloc_init(&a, 1 << 20);
    assert_int_equal(pd_fault_configure("router.request:2", NULL), 0);
    pd_fault_enter(S, 1);
    pd_err_t err = { 0 };
    assert_null(pd_net_unpack(&a, buf, len, &err));
    pd_fault_leave();
    assert_int_equal(err.code, PD_ENOMEM);
    assert_int_equal(a.used, 0); /* what was allocated before the failure was given back */
    /* The peek still names the request. */
    pd_net_peek_t pk;
    pd_net_peek(buf, len, &pk);
    assert_int_equal(pk.body_case, PD__MSG__BODY_CANCEL);
    assert_true(pk.has_request_id);
    assert_int_equal(pk.request_id, 77);
    pd_fault_configure(NULL, NULL);
}

static void test_peek_reads_request_id_and_epoch_and_survives_garbage(void **state)
{
    (void)state;
    int32_t hist[3] = { 1, 2, 3 };
    Pd__DecodeTask dt = PD__DECODE_TASK__INIT;
    dt.has_request_id = dt.has_epoch = true;
    dt.request_id = 1ull << 40;
    dt.epoch = 3;
    dt.prefill_worker_id = "p1";
    dt.n_history = 3;
    dt.history = hist;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_DECODE;
    m.decode = &dt;
    uint8_t buf[128];
    size_t len = pd__msg__pack(&m, buf);
    pd_net_peek_t pk;
    pd_net_peek(buf, len, &pk);
    assert_int_equal(pk.body_case, PD__MSG__BODY_DECODE);
    assert_true(pk.has_request_id && pk.has_epoch);
    assert_int_equal(pk.request_id, 1ull << 40);
    assert_int_equal(pk.epoch, 3);
    /* Every truncation and a few corruptions: bounded, never a crash. */
    for (size_t n = 0; n < len; n++)
        pd_net_peek(buf, n, &pk);
    uint8_t junk[] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01 };
    pd_net_peek(junk, sizeof junk, &pk);
    assert_int_equal(pk.body_case, 0);
    uint8_t huge_len[] = { 0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x08, 0x01 };
    pd_net_peek(huge_len, sizeof huge_len, &pk);
    assert_int_equal(pk.body_case, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_off_by_default_and_bad_specs_refused),
        cmocka_unit_test(test_sweep_fails_each_allocation_once_then_ends),
        cmocka_unit_test(test_a_request_is_counted_across_its_regions),
        cmocka_unit_test(test_nth_mode_fails_once),
        cmocka_unit_test(test_grow_and_protobuf_allocator_consult_the_hook),
        cmocka_unit_test(test_peek_reads_request_id_and_epoch_and_survives_garbage),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
