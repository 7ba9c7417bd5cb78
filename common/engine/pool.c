/* pool.c -- persistent worker threads sharing one atomic ticket.
 *
 * A submission ("generation") is published as one 64-bit ticket:
 *
 *     ticket = gen (32 bits) | n_tasks (16 bits) | next task index (16 bits)
 *
 * Whoever wants work (a worker or the caller) reads the ticket and, if it
 * is of the generation it is working on and the index is below n_tasks,
 * claims that index with a compare-and-swap (dynamic scheduling). Only
 * after a successful claim does it read the job (fn, ctx): a claim can
 * only succeed while the generation is unfinished, and the caller does not
 * rewrite the job before every claimed task has been counted done, so the
 * job a claimer reads is always the one its task belongs to.
 *
 * The caller returns as soon as n_done == n_tasks. It never waits for a
 * worker that has not woken up yet (or was preempted before claiming): on
 * a loaded machine a sleeping or descheduled worker costs nothing.
 *
 * Idle workers spin briefly, then sleep on a condvar; the caller, waiting
 * for the last task, does the same. Both use the same handshake: the
 * sleeper publishes itself in an atomic counter and re-checks its
 * condition under the mutex; the waker changes the condition, then reads
 * the counter (seq_cst on both sides, so at least one sees the other) and
 * only then takes the mutex to broadcast.
 */
#include "engine/pool.h"

#include <immintrin.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#include "base/clock.h"

/* How long an idle thread spins before it sleeps on the condvar, in ns.
 * A decode step runs a few dozen matmuls separated by short single-threaded
 * stretches (norms, attention); spinning across those gaps avoids a futex
 * wake-up (~5-50 us) per matmul, sleeping afterwards keeps idle pools free. */
#define PD_POOL_SPIN_NS 100000
/* Spin iterations between clock reads. */
#define PD_POOL_SPIN_CHECK 64

#define PD_POOL_MAX_THREADS 256
#define TICKET_MAX_TASKS 0xffff /* n_tasks field: 16 bits */

#define T_GEN(t) ((uint32_t)((t) >> 32))
#define T_N(t) ((int)(((t) >> 16) & 0xffff))
#define T_IDX(t) ((int)((t)&0xffff))
#define T_MAKE(gen, n) (((uint64_t)(gen) << 32) | ((uint64_t)(n) << 16))

struct pd_pool {
    int n_threads;          /* counting the caller */
    pthread_t *threads;     /* (n_threads - 1) workers */
    int n_started;          /* workers actually created */

    pthread_mutex_t mu;
    pthread_cond_t cv_work; /* workers wait here for a new generation */
    pthread_cond_t cv_done; /* the caller waits here for the last task */

    /* The job of the current generation: written by the caller before the
     * release store of the ticket, read only after a successful claim. */
    pd_pool_fn fn;
    void *ctx;

    atomic_uint_fast64_t ticket; /* see the top of the file */
    atomic_int n_done;           /* tasks of this generation that returned */
    atomic_int n_sleep_work;     /* workers sleeping (or about to) on cv_work */
    atomic_int n_sleep_done;     /* 1 while the caller sleeps on cv_done */
    atomic_bool stop;
};

/* Spins for up to PD_POOL_SPIN_NS while pred(p, arg) is false; returns
 * whether it became true. */
static bool spin_until(pd_pool_t *p, bool (*pred)(pd_pool_t *, uint64_t), uint64_t arg)
{
    uint64_t t0 = 0;
    for (unsigned spin = 1;; spin++) {
        if (pred(p, arg))
            return true;
        _mm_pause();
        if (spin % PD_POOL_SPIN_CHECK == 0) {
            uint64_t t = pd_now_ns();
            if (t0 == 0)
                t0 = t;
            else if (t - t0 > PD_POOL_SPIN_NS)
                return false;
        }
    }
}

/* Claims and runs tasks of generation gen until none is left. Returns
 * after its last task has been counted. */
static void run_tasks(pd_pool_t *p, uint32_t gen)
{
    uint64_t t = atomic_load_explicit(&p->ticket, memory_order_acquire);
    for (;;) {
        if (T_GEN(t) != gen || T_IDX(t) >= T_N(t))
            return;
        if (!atomic_compare_exchange_weak_explicit(&p->ticket, &t, t + 1, memory_order_acq_rel,
                                                   memory_order_acquire))
            continue; /* t now holds the current ticket */
        const int n = T_N(t);
        p->fn(p->ctx, T_IDX(t), n);
        if (atomic_fetch_add(&p->n_done, 1) + 1 == n && atomic_load(&p->n_sleep_done) > 0) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->cv_done);
            pthread_mutex_unlock(&p->mu);
        }
        t = atomic_load_explicit(&p->ticket, memory_order_acquire);
    }
}

static bool new_gen_or_stop(pd_pool_t *p, uint64_t seen)
{
    return T_GEN(atomic_load_explicit(&p->ticket, memory_order_acquire)) != (uint32_t)seen ||
           atomic_load_explicit(&p->stop, memory_order_acquire);
}

static void *worker_main(void *arg)
{
    pd_pool_t *p = arg;
    uint32_t seen = 0; /* generations start at 1 */
    for (;;) {
        if (!spin_until(p, new_gen_or_stop, seen)) {
            pthread_mutex_lock(&p->mu);
            atomic_fetch_add(&p->n_sleep_work, 1);
            while (!new_gen_or_stop(p, seen))
                pthread_cond_wait(&p->cv_work, &p->mu);
            atomic_fetch_sub(&p->n_sleep_work, 1);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load_explicit(&p->stop, memory_order_acquire))
            break;
        seen = T_GEN(atomic_load_explicit(&p->ticket, memory_order_acquire));
        run_tasks(p, seen);
    }
    return NULL;
}

static bool all_done(pd_pool_t *p, uint64_t n_tasks)
{
    return atomic_load_explicit(&p->n_done, memory_order_acquire) == (int)n_tasks;
}

/* One generation of at most TICKET_MAX_TASKS tasks. */
static void run_generation(pd_pool_t *p, pd_pool_fn fn, void *ctx, int n_tasks)
{
    p->fn = fn;
    p->ctx = ctx;
    atomic_store_explicit(&p->n_done, 0, memory_order_relaxed);
    const uint32_t gen = T_GEN(atomic_load_explicit(&p->ticket, memory_order_relaxed)) + 1;
    /* seq_cst: publishes the job (release) and orders against the read of
     * n_sleep_work below */
    atomic_store(&p->ticket, T_MAKE(gen, n_tasks));
    if (atomic_load(&p->n_sleep_work) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->cv_work);
        pthread_mutex_unlock(&p->mu);
    }
    run_tasks(p, gen);
    if (spin_until(p, all_done, (uint64_t)n_tasks))
        return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->n_sleep_done, 1);
    while (!all_done(p, (uint64_t)n_tasks))
        pthread_cond_wait(&p->cv_done, &p->mu);
    atomic_store(&p->n_sleep_done, 0);
    pthread_mutex_unlock(&p->mu);
}

/* ====== Public API ====== */

pd_pool_t *pd_pool_new(int n_threads)
{
    if (n_threads < 1 || n_threads > PD_POOL_MAX_THREADS)
        return NULL;
    pd_pool_t *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->n_threads = n_threads;
    atomic_init(&p->ticket, 0);
    atomic_init(&p->n_done, 0);
    atomic_init(&p->n_sleep_work, 0);
    atomic_init(&p->n_sleep_done, 0);
    atomic_init(&p->stop, false);
    bool has_mu = false, has_cv_work = false, has_cv_done = false;
    if (pthread_mutex_init(&p->mu, NULL) != 0)
        goto fail;
    has_mu = true;
    if (pthread_cond_init(&p->cv_work, NULL) != 0)
        goto fail;
    has_cv_work = true;
    if (pthread_cond_init(&p->cv_done, NULL) != 0)
        goto fail;
    has_cv_done = true;
    if (n_threads > 1) {
        p->threads = calloc((size_t)n_threads - 1, sizeof(*p->threads));
        if (!p->threads)
            goto fail;
        for (int i = 0; i < n_threads - 1; i++) {
            if (pthread_create(&p->threads[i], NULL, worker_main, p) != 0)
                goto fail;
            p->n_started++;
        }
    }
    return p;
fail:
    if (p->n_started > 0) {
        pthread_mutex_lock(&p->mu);
        atomic_store(&p->stop, true);
        pthread_cond_broadcast(&p->cv_work);
        pthread_mutex_unlock(&p->mu);
        for (int i = 0; i < p->n_started; i++)
            pthread_join(p->threads[i], NULL);
    }
    if (has_cv_done)
        pthread_cond_destroy(&p->cv_done);
    if (has_cv_work)
        pthread_cond_destroy(&p->cv_work);
    if (has_mu)
        pthread_mutex_destroy(&p->mu);
    free(p->threads);
    free(p);
    return NULL;
}

void pd_pool_free(pd_pool_t *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, true);
    pthread_cond_broadcast(&p->cv_work);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->n_started; i++)
        pthread_join(p->threads[i], NULL);
    pthread_cond_destroy(&p->cv_done);
    pthread_cond_destroy(&p->cv_work);
    pthread_mutex_destroy(&p->mu);
    free(p->threads);
    free(p);
}

int pd_pool_n_threads(const pd_pool_t *p)
{
    return p ? p->n_threads : 1;
}

/* Task indices past the ticket's 16 bits go in further generations, each
 * calling fn with the caller's indices through this adapter. */
typedef struct {
    pd_pool_fn fn;
    void *ctx;
    int base, n_tasks;
} slice_t;

static void slice_task(void *arg, int i, int n)
{
    const slice_t *s = arg;
    (void)n;
    s->fn(s->ctx, s->base + i, s->n_tasks);
}

void pd_pool_run(pd_pool_t *p, pd_pool_fn fn, void *ctx, int n_tasks)
{
    if (n_tasks <= 0)
        return;
    if (!p || p->n_started == 0 || n_tasks == 1) {
        for (int i = 0; i < n_tasks; i++)
            fn(ctx, i, n_tasks);
        return;
    }
    if (n_tasks <= TICKET_MAX_TASKS) {
        run_generation(p, fn, ctx, n_tasks);
        return;
    }
    for (int base = 0; base < n_tasks; base += TICKET_MAX_TASKS) {
        slice_t s = {fn, ctx, base, n_tasks};
        int n = n_tasks - base < TICKET_MAX_TASKS ? n_tasks - base : TICKET_MAX_TASKS;
        run_generation(p, slice_task, &s, n);
    }
}

/* ====== Splitting units of work ====== */

#define RANGE_LO(r) ((uint32_t)(r))
#define RANGE_HI(r) ((uint32_t)((r) >> 32))
#define RANGE_MAKE(lo, hi) ((uint64_t)(lo) | ((uint64_t)(hi) << 32))

void pd_split_init(pd_split_t *s, uint32_t n_units, uint32_t n_ranges)
{
    if (n_ranges > PD_SPLIT_MAX_RANGES)
        n_ranges = PD_SPLIT_MAX_RANGES;
    if (n_units > 0 && n_ranges > n_units)
        n_ranges = n_units;
    if (n_ranges < 1)
        n_ranges = 1;
    s->n_ranges = n_ranges;
    for (uint32_t k = 0; k < n_ranges; k++)
        atomic_init(&s->range[k], RANGE_MAKE((uint64_t)n_units * k / n_ranges,
                                             (uint64_t)n_units * (k + 1) / n_ranges));
}

/* Takes the first unit left in range k (front) or the last (back). */
static uint32_t split_claim(pd_split_t *s, uint32_t k, bool front, uint32_t *after)
{
    uint64_t r = atomic_load_explicit(&s->range[k], memory_order_relaxed);
    for (;;) {
        const uint32_t lo = RANGE_LO(r), hi = RANGE_HI(r);
        if (lo >= hi)
            return *after = PD_SPLIT_NONE;
        const uint64_t nr = front ? RANGE_MAKE(lo + 1, hi) : RANGE_MAKE(lo, hi - 1);
        /* relaxed: the claims of one word are totally ordered, which is all
         * exclusivity needs; the units' results are published by the pool
         * run's own synchronisation */
        if (atomic_compare_exchange_weak_explicit(&s->range[k], &r, nr, memory_order_relaxed,
                                                  memory_order_relaxed)) {
            *after = hi - lo < 2 ? PD_SPLIT_NONE : front ? lo + 1 : hi - 2;
            return front ? lo : hi - 1;
        }
    }
}

uint32_t pd_split_next(pd_split_t *s, int i_task, uint32_t *after)
{
    if (i_task >= 0 && (uint32_t)i_task < s->n_ranges) {
        const uint32_t u = split_claim(s, (uint32_t)i_task, true, after);
        if (u != PD_SPLIT_NONE)
            return u;
    }
    for (;;) { /* ranges only shrink: this ends */
        uint32_t best = PD_SPLIT_NONE, most = 0;
        for (uint32_t k = 0; k < s->n_ranges; k++) {
            const uint64_t r = atomic_load_explicit(&s->range[k], memory_order_relaxed);
            if (RANGE_HI(r) > RANGE_LO(r) && RANGE_HI(r) - RANGE_LO(r) > most) {
                most = RANGE_HI(r) - RANGE_LO(r);
                best = k;
            }
        }
        if (best == PD_SPLIT_NONE)
            return *after = PD_SPLIT_NONE;
        const uint32_t u = split_claim(s, best, false, after);
        if (u != PD_SPLIT_NONE)
            return u;
    }
}
