/* pool.h -- a small persistent thread pool (no per-call thread creation).
 *
 * pd_pool_run(pool, fn, ctx, n_tasks) calls fn(ctx, i, n_tasks) for i in
 * [0, n_tasks) spread over the pool's threads and the caller, and returns
 * when all calls have returned. Workers spin briefly, then sleep on a
 * condition variable, so an idle pool costs no CPU. Not reentrant: only one
 * thread submits work to a pool at a time. The pool touches no sockets.
 */
#ifndef PD_POOL_H
#define PD_POOL_H

#include <stdatomic.h>
#include <stdint.h>

typedef struct pd_pool pd_pool_t;

typedef void (*pd_pool_fn)(void *ctx, int i_task, int n_tasks);

/* n_threads counts the caller: 1 means no extra thread. Returns NULL on
 * failure (bad n_threads, or thread creation failed). */
pd_pool_t *pd_pool_new(int n_threads);
void pd_pool_free(pd_pool_t *pool); /* accepts NULL; joins the threads */
int pd_pool_n_threads(const pd_pool_t *pool); /* 1 for a NULL pool */

/* Runs fn for every task index. pool may be NULL (runs inline). */
void pd_pool_run(pd_pool_t *pool, pd_pool_fn fn, void *ctx, int n_tasks);

/* ====== Splitting units of work over a pool run's tasks ======
 *
 * n_units units, cut into n_ranges contiguous ranges (one per thread).
 * Task i < n_ranges owns range i and gets its units front to back; a task
 * whose range is empty, and every task i >= n_ranges, gets units from the
 * back of the range with the most left. Run it with 2 * n_ranges tasks:
 * a thread that comes late (or is preempted) leaves its range to the
 * others, and a thread's units stay consecutive, so it can prefetch the
 * next one's data while it works on the current one. Every unit is handed
 * out exactly once (one compare-and-swap on its range's word). */
#define PD_SPLIT_MAX_RANGES 16
#define PD_SPLIT_NONE UINT32_MAX

typedef struct {
    uint32_t n_ranges;
    _Atomic uint64_t range[PD_SPLIT_MAX_RANGES]; /* units [lo, hi) left: lo | hi << 32 */
} pd_split_t;

/* n_ranges is clamped to [1, PD_SPLIT_MAX_RANGES] and to n_units (when
 * n_units > 0). Not thread-safe: call before the pool run. */
void pd_split_init(pd_split_t *s, uint32_t n_units, uint32_t n_ranges);
/* The next unit for task i_task, or PD_SPLIT_NONE when none is left.
 * *after: the unit this task will likely get next (PD_SPLIT_NONE: none
 * known), for prefetching only -- another task may take it first. */
uint32_t pd_split_next(pd_split_t *s, int i_task, uint32_t *after);

#endif
