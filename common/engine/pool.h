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

typedef struct pd_pool pd_pool_t;

typedef void (*pd_pool_fn)(void *ctx, int i_task, int n_tasks);

/* n_threads counts the caller: 1 means no extra thread. Returns NULL on
 * failure (bad n_threads, or thread creation failed). */
pd_pool_t *pd_pool_new(int n_threads);
void pd_pool_free(pd_pool_t *pool); /* accepts NULL; joins the threads */
int pd_pool_n_threads(const pd_pool_t *pool); /* 1 for a NULL pool */

/* Runs fn for every task index. pool may be NULL (runs inline). */
void pd_pool_run(pd_pool_t *pool, pd_pool_fn fn, void *ctx, int n_tasks);

#endif
