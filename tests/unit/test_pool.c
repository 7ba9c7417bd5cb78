/* test_pool.c -- the thread pool runs every task index exactly once, for
 * any task count and thread count, over many submissions, also after the
 * workers went to sleep; runs on the worker threads concurrently. The
 * unit split (pd_split_t) hands out every unit exactly once: an owner's
 * range front to back, then the back of the fullest range, in any task
 * order and on 1..6 threads at once. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/clock.h"
#include "engine/pool.h"

#define MAX_TASKS 4096

typedef struct {
    atomic_int count[MAX_TASKS];
    atomic_int bad_n_tasks;
    int expect_n_tasks;
} count_ctx_t;

static void count_task(void *arg, int i, int n)
{
    count_ctx_t *c = arg;
    if (n != c->expect_n_tasks || i < 0 || i >= n)
        atomic_fetch_add(&c->bad_n_tasks, 1);
    else
        atomic_fetch_add(&c->count[i], 1);
}

static void run_and_check(pd_pool_t *pool, count_ctx_t *c, int n_tasks)
{
    for (int i = 0; i < MAX_TASKS; i++)
        atomic_store(&c->count[i], 0);
    atomic_store(&c->bad_n_tasks, 0);
    c->expect_n_tasks = n_tasks;
    pd_pool_run(pool, count_task, c, n_tasks);
    assert_int_equal(atomic_load(&c->bad_n_tasks), 0);
    for (int i = 0; i < MAX_TASKS; i++)
        assert_int_equal(atomic_load(&c->count[i]), i < n_tasks ? 1 : 0);
}

static void test_new_free(void **state)
{
    (void)state;
    assert_null(pd_pool_new(0));
    assert_null(pd_pool_new(-3));
    assert_null(pd_pool_new(100000));
    pd_pool_free(NULL);
    assert_int_equal(pd_pool_n_threads(NULL), 1);
    for (int n = 1; n <= 4; n++) {
        pd_pool_t *p = pd_pool_new(n);
        assert_non_null(p);
        assert_int_equal(pd_pool_n_threads(p), n);
        pd_pool_free(p);
    }
}

static void test_every_task_once(void **state)
{
    (void)state;
    count_ctx_t *c = calloc(1, sizeof(*c));
    assert_non_null(c);
    const int task_counts[] = {0, 1, 2, 3, 5, 7, 64, 1000, MAX_TASKS};
    for (int n_threads = 1; n_threads <= 4; n_threads++) {
        pd_pool_t *p = pd_pool_new(n_threads);
        assert_non_null(p);
        for (size_t k = 0; k < sizeof(task_counts) / sizeof(task_counts[0]); k++)
            run_and_check(p, c, task_counts[k]);
        pd_pool_free(p);
    }
    /* NULL pool: inline */
    for (size_t k = 0; k < sizeof(task_counts) / sizeof(task_counts[0]); k++)
        run_and_check(NULL, c, task_counts[k]);
    /* negative counts run nothing */
    pd_pool_t *p = pd_pool_new(2);
    assert_non_null(p);
    run_and_check(p, c, -5);
    pd_pool_free(p);
    free(c);
}

/* 10k submissions back to back, with varying task counts. */
typedef struct {
    atomic_long sum;
    atomic_int calls;
} sum_ctx_t;

static void sum_task(void *arg, int i, int n)
{
    sum_ctx_t *c = arg;
    (void)n;
    atomic_fetch_add(&c->sum, i + 1);
    atomic_fetch_add(&c->calls, 1);
}

static void test_stress_submissions(void **state)
{
    (void)state;
    for (int n_threads = 2; n_threads <= 3; n_threads++) {
        pd_pool_t *p = pd_pool_new(n_threads);
        assert_non_null(p);
        for (int it = 0; it < 10000; it++) {
            sum_ctx_t c;
            atomic_init(&c.sum, 0);
            atomic_init(&c.calls, 0);
            int n = it % 9;
            pd_pool_run(p, sum_task, &c, n);
            assert_int_equal(atomic_load(&c.calls), n);
            assert_int_equal(atomic_load(&c.sum), (long)n * (n + 1) / 2);
        }
        pd_pool_free(p);
    }
}

/* Workers that fell asleep (idle longer than the spin time) wake up for
 * the next submission. Each round is a barrier: as many tasks as threads,
 * each waiting until all have started, so a round finishes only if every
 * worker wakes and runs one of them beside the caller. A pool whose
 * sleeping workers never wake fails here (the caller alone would wait at
 * the barrier until the timeout), where counting tasks cannot tell: the
 * caller would run them all itself. */
#define WAKE_THREADS 3
typedef struct {
    atomic_int arrived;
    atomic_int timed_out;
    pthread_t who[WAKE_THREADS];
} barrier_ctx_t;

static void barrier_task(void *arg, int i, int n)
{
    barrier_ctx_t *c = arg;
    c->who[i] = pthread_self();
    atomic_fetch_add(&c->arrived, 1);
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (atomic_load(&c->arrived) < n && !atomic_load(&c->timed_out)) {
        clock_gettime(CLOCK_MONOTONIC, &t);
        if (t.tv_sec - t0.tv_sec > 5)
            atomic_store(&c->timed_out, 1);
    }
}

static void test_wake_after_sleep(void **state)
{
    (void)state;
    pd_pool_t *p = pd_pool_new(WAKE_THREADS);
    assert_non_null(p);
    for (int round = 0; round < 5; round++) {
        struct timespec ts = {0, 20 * 1000 * 1000}; /* 20 ms >> spin time: all asleep */
        nanosleep(&ts, NULL);
        barrier_ctx_t c;
        memset(&c, 0, sizeof c);
        atomic_init(&c.arrived, 0);
        atomic_init(&c.timed_out, 0);
        pd_pool_run(p, barrier_task, &c, WAKE_THREADS);
        assert_int_equal(atomic_load(&c.timed_out), 0);
        assert_int_equal(atomic_load(&c.arrived), WAKE_THREADS);
        for (int a = 0; a < WAKE_THREADS; a++)
            for (int b = a + 1; b < WAKE_THREADS; b++)
                assert_false(pthread_equal(c.who[a], c.who[b]));
    }
    pd_pool_free(p);
}

/* Two tasks that each wait for the other to start can only finish if a
 * worker runs one of them while the caller runs the other. */
typedef struct {
    atomic_int started;
    atomic_int timed_out;
    pthread_t who[2];
} meet_ctx_t;

static void meet_task(void *arg, int i, int n)
{
    meet_ctx_t *c = arg;
    (void)n;
    c->who[i] = pthread_self();
    atomic_fetch_add(&c->started, 1);
    uint64_t t0 = pd_now_ms();
    while (atomic_load(&c->started) < 2) {
        if (pd_now_ms() - t0 > 10000) {
            atomic_store(&c->timed_out, 1);
            return;
        }
    }
}

static void test_runs_concurrently(void **state)
{
    (void)state;
    pd_pool_t *p = pd_pool_new(2);
    assert_non_null(p);
    for (int round = 0; round < 20; round++) {
        meet_ctx_t c;
        memset(&c, 0, sizeof(c));
        atomic_init(&c.started, 0);
        atomic_init(&c.timed_out, 0);
        pd_pool_run(p, meet_task, &c, 2);
        assert_int_equal(atomic_load(&c.timed_out), 0);
        assert_false(pthread_equal(c.who[0], c.who[1]));
    }
    pd_pool_free(p);
}

/* More tasks than one generation's 16-bit counter: indices keep counting
 * past 65535 and every one runs once, with the caller's n_tasks. */
#define BIG_TASKS 70001
typedef struct {
    atomic_uchar seen[BIG_TASKS];
    atomic_int bad;
} big_ctx_t;

static void big_task(void *arg, int i, int n)
{
    big_ctx_t *c = arg;
    if (n != BIG_TASKS || i < 0 || i >= n)
        atomic_fetch_add(&c->bad, 1);
    else
        atomic_fetch_add(&c->seen[i], 1);
}

static void test_many_tasks(void **state)
{
    (void)state;
    big_ctx_t *c = calloc(1, sizeof(*c));
    assert_non_null(c);
    pd_pool_t *p = pd_pool_new(2);
    assert_non_null(p);
    pd_pool_run(p, big_task, c, BIG_TASKS);
    assert_int_equal(atomic_load(&c->bad), 0);
    for (int i = 0; i < BIG_TASKS; i++)
        assert_int_equal(atomic_load(&c->seen[i]), 1);
    pd_pool_free(p);
    free(c);
}

/* ====== pd_split_t ====== */

/* Tasks run one after the other (as pd_pool_run does without threads):
 * task 0 takes its range front to back, then every other range from the
 * back, fullest first; each unit once, with the right "after" hints. */
static void test_split_sequential(void **state)
{
    (void)state;
    pd_split_t s;
    pd_split_init(&s, 10, 2); /* ranges [0, 5) and [5, 10) */
    assert_int_equal(s.n_ranges, 2);
    const uint32_t want[10] = {0, 1, 2, 3, 4, 9, 8, 7, 6, 5};
    for (int k = 0; k < 10; k++) {
        uint32_t after = 12345;
        const uint32_t u = pd_split_next(&s, 0, &after);
        assert_int_equal(u, want[k]);
        assert_int_equal(after, k == 4 || k == 9 ? PD_SPLIT_NONE : want[k + 1]);
    }
    uint32_t after;
    for (int t = 0; t < 4; t++)
        assert_int_equal(pd_split_next(&s, t, &after), PD_SPLIT_NONE);
    /* a thief (task >= n_ranges) takes from the back of the fullest range */
    pd_split_init(&s, 9, 3); /* [0, 3) [3, 6) [6, 9) */
    assert_int_equal(pd_split_next(&s, 1, &after), 3);
    assert_int_equal(pd_split_next(&s, 4, &after), 2); /* ties: the first fullest */
    assert_int_equal(after, 1);
    assert_int_equal(pd_split_next(&s, 5, &after), 8);
    assert_int_equal(pd_split_next(&s, 3, &after), 1);
    assert_int_equal(pd_split_next(&s, 1, &after), 4); /* the owner, its front */
    /* clamps: more ranges than units, no range, no units */
    pd_split_init(&s, 3, 8);
    assert_int_equal(s.n_ranges, 3);
    pd_split_init(&s, 3, 0);
    assert_int_equal(s.n_ranges, 1);
    pd_split_init(&s, 0, 2);
    assert_int_equal(pd_split_next(&s, 0, &after), PD_SPLIT_NONE);
    assert_int_equal(pd_split_next(&s, 3, &after), PD_SPLIT_NONE);
}

/* Every task order a pool can produce, by random interleaving on one
 * thread: each of n units handed out once, for n_units and n_ranges of
 * every size up to 40 x 16. */
static void test_split_any_order(void **state)
{
    (void)state;
    uint64_t rng = 0x2545F4914F6CDD1Dull;
    int seen[64];
    for (uint32_t n = 0; n <= 40; n++)
        for (uint32_t r = 1; r <= PD_SPLIT_MAX_RANGES; r++) {
            pd_split_t s;
            pd_split_init(&s, n, r);
            memset(seen, 0, sizeof seen);
            const int n_tasks = 2 * (int)s.n_ranges;
            for (uint32_t got = 0;;) {
                rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
                uint32_t after;
                const uint32_t u = pd_split_next(&s, (int)(rng % (uint64_t)n_tasks), &after);
                if (u == PD_SPLIT_NONE) {
                    assert_int_equal(got, n);
                    break;
                }
                assert_true(u < n);
                assert_int_equal(seen[u]++, 0);
                got++;
            }
        }
}

typedef struct {
    pd_split_t split;
    atomic_int count[MAX_TASKS];
} split_ctx_t;

static void split_task(void *arg, int i, int n)
{
    split_ctx_t *c = arg;
    (void)n;
    uint32_t after;
    for (uint32_t u = pd_split_next(&c->split, i, &after); u != PD_SPLIT_NONE;
         u = pd_split_next(&c->split, i, &after)) {
        atomic_fetch_add(&c->count[u], 1);
        if (u % 7 == (uint32_t)i % 7) /* uneven work, so that ranges get stolen */
            for (volatile int k = 0; k < 2000; k++) {
            }
    }
}

/* Concurrent claims on 1..6 threads (more than this machine's cores, so
 * threads are also preempted mid-range): each unit once. */
static void test_split_concurrent(void **state)
{
    (void)state;
    split_ctx_t *c = calloc(1, sizeof *c);
    assert_non_null(c);
    for (int nt = 1; nt <= 6; nt++) {
        pd_pool_t *pool = pd_pool_new(nt);
        assert_non_null(pool);
        for (int rep = 0; rep < 200; rep++) {
            const uint32_t n_units = 1 + (uint32_t)(rep * 37 % 3000);
            for (uint32_t u = 0; u < n_units; u++)
                atomic_store(&c->count[u], 0);
            pd_split_init(&c->split, n_units, (uint32_t)nt);
            pd_pool_run(pool, split_task, c, 2 * (int)c->split.n_ranges);
            for (uint32_t u = 0; u < n_units; u++)
                if (atomic_load(&c->count[u]) != 1) {
                    print_error("%d threads, %u units: unit %u ran %d times\n", nt, n_units, u,
                                atomic_load(&c->count[u]));
                    fail();
                }
        }
        pd_pool_free(pool);
    }
    free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new_free),
        cmocka_unit_test(test_every_task_once),
        cmocka_unit_test(test_stress_submissions),
        cmocka_unit_test(test_wake_after_sleep),
        cmocka_unit_test(test_runs_concurrently),
        cmocka_unit_test(test_many_tasks),
        cmocka_unit_test(test_split_sequential),
        cmocka_unit_test(test_split_any_order),
        cmocka_unit_test(test_split_concurrent),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
