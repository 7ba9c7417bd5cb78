/* wkrole.h -- the contract between a worker host (wkhost.h) and a worker
 * role (prefill_worker/, decode_worker/), in both directions.
 *
 * A role is an opaque object behind a table of functions, pd_wkrole_ops_t,
 * which the host calls from its loop; the role reaches back only through
 * pd_wkport_t (send to the router, the host's clock and heartbeat). Neither
 * side sees the other's insides, so a role can be driven by a test double
 * of the host (tests/unit/test_prefill_role.c, test_decode_role.c) and the
 * host can change how it runs its roles (issue 16: sockets on an I/O
 * thread) without touching them.
 *
 * Calls a role can expect, all on one thread today:
 *   on_task, on_cancel   a router message for it (already validated as an
 *                        envelope; every field is the role's to check)
 *   sockets, poll        its own sockets (KV egress or ingress): the host
 *                        polls them with its own and then calls poll, which
 *                        reads what is there without blocking
 *   ready, run           run is one batched forward pass or decode step,
 *                        called when ready says there is work for it
 *   timers               once per loop turn: leases, retries, expiries
 *   busy, load           whether it holds work (drain waits for !busy);
 *                        its share of a heartbeat
 *   held                 how many requests it holds (logged when a drain
 *                        begins: what the drain must finish)
 *   drop_all             the router that gave it its work is gone: free it
 *   kv_events, kv_resync (optional, NULL in a role without a prefix cache)
 *                        kv_events sends the router what changed in the
 *                        prefix cache (KvEvents), called every loop turn and
 *                        before each heartbeat while registered; kv_resync:
 *                        the router asked for a snapshot (KvResync), which
 *                        the next kv_events sends
 *   close                the process stops: close its sockets (the host then
 *                        ends the ZeroMQ context; the role is freed after).
 *                        May be called more than once.
 */
#ifndef PD_WKROLE_H
#define PD_WKROLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <zmq.h>

#include "base/err.h"
#include "proto/codec.h"
#include "proto/pd.pb-c.h"
#include "runtime/config.h"
#include "runtime/wkengine.h"

/* ====== What a role may ask of its host ====== */

typedef struct {
    void *host;
    /* Queues m for the router: sent now, or (back-pressure) later, in order. */
    void (*send)(void *host, const Pd__Msg *m);
    /* The host's monotonic clock, in ms: leases and waits are measured on it. */
    uint64_t (*now_ms)(void *host);
    /* The heartbeat interval agreed with the router (ms): a pass that blocks
     * the loop must stay well inside it. */
    uint32_t (*heartbeat_ms)(void *host);
} pd_wkport_t;

/* An Error about request req (0: none) to the router, also logged. */
void pd_wkport_error(const pd_wkport_t *p, uint64_t req, Pd__ErrorCode code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* The request goes back to the router to be prefilled again (n_generated:
 * output tokens it has streamed, as the router counts them). */
void pd_wkport_preempted(const pd_wkport_t *p, uint64_t req, uint32_t epoch,
                         uint32_t n_generated, const char *why);
/* One TokenBatch of n entries (n may be 0: nothing is sent). */
void pd_wkport_tokens(const pd_wkport_t *p, const pd_token_entry_t *t, uint32_t n);

/* What a role is built with, all borrowed and outliving it. */
typedef struct {
    pd_wkengine_t *eng;       /* model, KV cache, forward pass (shared when colocated) */
    const pd_config_t *cfg;
    const char *id;           /* this worker's id */
    const pd_wkport_t *port;
    void *zctx;               /* ZeroMQ context for the role's own sockets */
} pd_wkrole_env_t;

/* ====== What the host calls ====== */

typedef struct {
    const char *name; /* "prefill" or "decode" */
    void (*on_task)(void *self, const Pd__Msg *m);
    void (*on_cancel)(void *self, uint64_t req, uint32_t epoch); /* epoch 0: any */
    /* Fills up to cap poll items with its sockets; returns how many. */
    int (*sockets)(void *self, zmq_pollitem_t *items, int cap);
    void (*poll)(void *self);
    bool (*ready)(void *self);
    void (*run)(void *self);
    void (*timers)(void *self);
    bool (*busy)(const void *self);
    /* Requests it holds now: prefill tasks, or decode sequences. */
    uint32_t (*held)(const void *self);
    /* Its share of the heartbeat: the fields it knows, the rest left 0
     * (kv_events_seq: the last KvEvents seq it sent). */
    void (*load)(const void *self, pd_worker_load_t *out);
    /* Drops everything (freeing its blocks); writes "key=N ..." of what it
     * held into held. */
    void (*drop_all)(void *self, char *held, size_t cap);
    void (*close)(void *self);
    void (*kv_events)(void *self);  /* optional */
    void (*kv_resync)(void *self);  /* optional */
} pd_wkrole_ops_t;

typedef struct {
    const pd_wkrole_ops_t *ops; /* NULL: no such role in this process */
    void *self;
} pd_wkrole_t;

#endif
