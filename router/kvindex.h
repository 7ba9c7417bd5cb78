/* kvindex.h -- the router's index of the prefix blocks its workers cache.
 *
 * Each prefill (or colocated) worker with prefix caching reports the hashes
 * of the blocks it caches and evicts (KvEvents, docs/protocol.md "Prefix
 * cache events"): a hash names a whole prefix (common/engine/kvcache.h), so
 * the index maps hash -> the set of workers (a bit per worker slot) and the
 * router, which tokenizes, computes a prompt's chain itself and asks how
 * many of its leading blocks each worker holds.
 *
 * Each worker's messages carry a sequence number, 1, 2, 3, ... from its
 * registration. A snapshot message replaces what the worker held; a delta
 * applies on top, and only when its number is the next one. A gap (a lost
 * or reordered message, a router that missed the start) puts the worker out
 * of sync: its entries stay until the snapshot it is asked for arrives
 * (they are hints, never trusted for correctness), its deltas are ignored.
 * Pure data: no sockets.
 */
#ifndef RT_KVINDEX_H
#define RT_KVINDEX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define RT_KVI_MAX_WORKERS 64 /* worker slots: one bit each (RT_MAX_WORKERS) */

typedef struct rt_kvi rt_kvi_t;

typedef enum {
    RT_KVI_APPLIED = 0, /* in order: applied */
    RT_KVI_GAP,         /* out of order: ignored, ask the worker for a snapshot */
    RT_KVI_WAITING,     /* out of sync already: ignored until the snapshot */
} rt_kvi_result_t;

/* An empty index. NULL on allocation failure. Free with rt_kvi_free. */
rt_kvi_t *rt_kvi_new(void);
void rt_kvi_free(rt_kvi_t *x); /* accepts NULL */

/* Starts worker slot w afresh (it registered): no entries, waiting for its
 * first message (sequence 1, a snapshot). max_hashes bounds what it may
 * hold (its total blocks): stored hashes beyond it are ignored and counted
 * in rt_kvi_refused. */
void rt_kvi_reset_worker(rt_kvi_t *x, int w, uint32_t max_hashes);
/* Forgets worker slot w's entries (it died or left) and stops tracking it. */
void rt_kvi_drop_worker(rt_kvi_t *x, int w);

/* Starts applying one message of worker w (seq, snapshot). RT_KVI_APPLIED:
 * the caller then passes each of its events, in order, to rt_kvi_event; a
 * snapshot has already cleared what w held. RT_KVI_GAP / RT_KVI_WAITING:
 * the message is ignored (GAP: ask the worker for a snapshot). */
rt_kvi_result_t rt_kvi_begin(rt_kvi_t *x, int w, uint64_t seq, bool snapshot);
/* One event of the message begun: hash stored (removed false) or evicted.
 * Returns RT_KVI_APPLIED, or RT_KVI_GAP when the table could not grow (the
 * worker is out of sync: stop, ask for a snapshot). */
rt_kvi_result_t rt_kvi_event(rt_kvi_t *x, int w, uint64_t hash, bool removed);
/* rt_kvi_begin, then every event: hash[i], removed[i] (tests, tools). */
rt_kvi_result_t rt_kvi_apply(rt_kvi_t *x, int w, uint64_t seq, bool snapshot,
                             const uint64_t *hash, const bool *removed, size_t n);

/* Worker w says (Heartbeat.kv_events_seq) that the last KvEvents it sent
 * is last_seq. Messages arrive in order on its link, so when the index is
 * in sync and has applied less, a message was lost at the end of the
 * stream, where no later seq would reveal it: RT_KVI_GAP (ask for a
 * snapshot). Else RT_KVI_APPLIED (nothing to do) or RT_KVI_WAITING. */
rt_kvi_result_t rt_kvi_check_seq(rt_kvi_t *x, int w, uint64_t last_seq);

/* For a prompt's chain (hashes of its full blocks, in order): out[w] = the
 * number of leading blocks worker slot w holds, for every slot (out has
 * RT_KVI_MAX_WORKERS entries; slots not tracked get 0). */
void rt_kvi_match(const rt_kvi_t *x, const uint64_t *chain, uint32_t n_chain, uint32_t *out);

/* Introspection, for /metrics and tests. */
bool rt_kvi_synced(const rt_kvi_t *x, int w);
uint32_t rt_kvi_worker_hashes(const rt_kvi_t *x, int w); /* entries of w */
size_t rt_kvi_size(const rt_kvi_t *x);                   /* distinct hashes */
bool rt_kvi_holds(const rt_kvi_t *x, int w, uint64_t hash);
uint64_t rt_kvi_refused(const rt_kvi_t *x); /* stored events beyond a worker's max_hashes */

#endif
