/* kvevents.h -- a worker's side of the prefix cache events (KvEvents,
 * docs/protocol.md "Prefix cache: block hashes and events"): turns what the
 * KV pool queued (engine/kvcache.h, pd_kv_prefix_take_events) into
 * sequence-numbered KvEvents messages, and answers the router's KvResync
 * with a snapshot of every cached hash (chunked: the first message is the
 * snapshot, the rest continue it as deltas of stored hashes). The pool's
 * own overflow (events dropped) also turns into a snapshot.
 *
 * The caller owns the pool and the link: pd_kvev_flush hands each message
 * to its send function, in order. No sockets here.
 */
#ifndef PD_KVEVENTS_H
#define PD_KVEVENTS_H

#include <stdbool.h>
#include <stdint.h>

#include "base/err.h"
#include "engine/kvcache.h"
#include "proto/pd.pb-c.h"

typedef struct pd_kvev pd_kvev_t;

/* Sends one message (borrowed for the call). */
typedef void (*pd_kvev_send_fn)(void *ctx, const Pd__Msg *m);

/* For a pool with prefix caching on; max_per_msg events per message (1 ..
 * PD_KV_EVENTS_MAX; sized so a message fits net.max_msg_bytes). NULL on
 * allocation failure (err says). */
pd_kvev_t *pd_kvev_new(uint32_t max_per_msg, pd_err_t *err);
void pd_kvev_free(pd_kvev_t *e); /* accepts NULL */

/* The router asked for a snapshot (KvResync): the next flush sends one. */
void pd_kvev_resync(pd_kvev_t *e);

/* Sends what is pending: a snapshot when one was asked for (or the pool
 * dropped events), else the queued events as deltas. Returns the number of
 * messages sent. */
uint32_t pd_kvev_flush(pd_kvev_t *e, pd_kv_t *kv, pd_kvev_send_fn send, void *ctx);

uint64_t pd_kvev_last_seq(const pd_kvev_t *e); /* the last seq sent (0: none) */
uint64_t pd_kvev_snapshots(const pd_kvev_t *e); /* snapshots sent */

/* Events per message that fit in max_msg_bytes (a KvEvents costs at most 9
 * bytes per event plus a few dozen of framing), capped at PD_KV_EVENTS_MAX. */
uint32_t pd_kvev_per_msg(uint64_t max_msg_bytes);

#endif
