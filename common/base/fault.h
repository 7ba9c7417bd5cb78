/* fault.h -- allocation-failure injection (a test hook, SQLite style).
 *
 * Every allocation our code makes on a request's admission path goes
 * through pd_malloc / pd_calloc / pd_realloc / pd_strdup (or consults
 * pd_fault_alloc_fails() itself, as the protobuf allocator in net.c and
 * pd_net_send's message buffer do). Off -- the normal case -- each costs one
 * predictable branch on a thread-local flag.
 *
 * On, the process marks a region per request: code that works for request
 * `key` brackets that work with pd_fault_enter(site, key) ... pd_fault_leave(),
 * possibly several times (a decode worker sees a DecodeTask, later its KV,
 * later admits it), and calls pd_fault_complete(site, key) when the request
 * got through the region (dispatched, admitted). Only allocations made
 * inside an open bracket on the thread that opened it are "armed".
 *
 * Modes (PD_FAULT_ALLOC=SITE:MODE, read once at start by pd_proc_log_start):
 *   sweep  the first request to complete the region runs clean (warm-up:
 *          tables that grow once, like the decode worker's sequence table,
 *          reach their steady size, so every later request makes the same
 *          allocations). Then the k-th request after it fails its k-th armed
 *          allocation (one shot: at most one failure per request), for
 *          k = 1, 2, 3, ... The sweep ends -- and the injector disarms --
 *          at the first request that completes the region without an
 *          injection, i.e. with fewer than k armed allocations. So one
 *          process run fails every allocation of the path once, and every
 *          request after a failure proves the process still serves.
 *   N      (a number >= 1) only the first request to enter the region
 *          fails its N-th armed allocation; then the injector disarms.
 * Sites: router.request (router: a client GenerateRequest from receipt
 * through decoding, validation, tokenization, queueing and dispatch),
 * decode.admit (decode worker: DecodeTask and KV transfer receipt through
 * admission into the running batch, block-table growth included).
 *
 * Log lines (event=...): fault_armed, fault_warmup_done (allocations),
 * fault_injected (site, sweep step k, allocation n, key), fault_sweep_done (requests, injected, allocations
 * of the request that completed). Not thread-safe beyond its flag: enter,
 * leave, complete and armed allocations happen on one thread (the reactor).
 */
#ifndef PD_FAULT_H
#define PD_FAULT_H

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/err.h"

typedef enum {
    PD_FAULT_NONE = 0,
    PD_FAULT_ROUTER_REQUEST, /* "router.request" */
    PD_FAULT_DECODE_ADMIT,   /* "decode.admit" */
} pd_fault_site_t;

/* The environment variable pd_fault_configure_env reads. */
#define PD_FAULT_ENV "PD_FAULT_ALLOC"

/* Sets the injector from spec "SITE:sweep" or "SITE:N" (NULL or "" = off).
 * A bad spec is refused (PD_EINVAL, err names it) and leaves it off. */
int pd_fault_configure(const char *spec, pd_err_t *err);
/* The same from getenv(PD_FAULT_ENV). */
int pd_fault_configure_env(pd_err_t *err);

/* True while site waits for requests (configured, not yet finished). */
bool pd_fault_armed(pd_fault_site_t site);
/* Opens (or reopens) request key's region on this thread; a key other than
 * the current request's starts a new request. No-op unless site is armed. */
void pd_fault_enter(pd_fault_site_t site, uint64_t key);
/* Closes the open region, if any (allocations stop being armed). */
void pd_fault_leave(void);
/* Request key got through site's region (sweep: without an injection, this
 * ends the sweep). No-op for another key or an unarmed site. */
void pd_fault_complete(pd_fault_site_t site, uint64_t key);
/* The key of the request whose region is open on this thread, or 0. */
uint64_t pd_fault_current_key(pd_fault_site_t site);

typedef struct {
    pd_fault_site_t site;
    bool armed;
    uint64_t requests;   /* requests that entered the region */
    uint64_t injected;   /* allocations failed */
    uint64_t k;          /* sweep: the allocation the next new request fails (0: warm-up) */
} pd_fault_stats_t;
void pd_fault_stats(pd_fault_stats_t *out);

/* ====== The allocation hook ====== */

extern _Thread_local bool pd_fault_active_; /* a region is open on this thread */
bool pd_fault_hit_(void);                   /* counts one armed allocation */

/* True when the allocation about to be made must fail. Call it exactly once
 * per allocation (it counts). */
static inline bool pd_fault_alloc_fails(void)
{
    return __builtin_expect(pd_fault_active_, 0) && pd_fault_hit_();
}

static inline void *pd_malloc(size_t n) { return pd_fault_alloc_fails() ? NULL : malloc(n); }
static inline void *pd_calloc(size_t n, size_t size)
{
    return pd_fault_alloc_fails() ? NULL : calloc(n, size);
}
/* Like realloc: on failure p is untouched (and still owned by the caller). */
static inline void *pd_realloc(void *p, size_t n)
{
    return pd_fault_alloc_fails() ? NULL : realloc(p, n);
}
static inline char *pd_strdup(const char *s) { return pd_fault_alloc_fails() ? NULL : strdup(s); }

#endif
