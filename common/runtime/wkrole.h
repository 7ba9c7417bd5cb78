/* wkrole.h -- the contract between a worker host (wkhost.h) and a worker
 * role (prefill_worker/, decode_worker/), in both directions.
 *
 * A role is an opaque object behind a table of functions, pd_wkrole_ops_t,
 * which the host calls from its loop; the role reaches back only through
 * pd_wkport_t (send to the router, the host's clock). Neither side sees
 * the other's insides, so a role can be driven by a test double of the host
 * (tests/unit/test_prefill_role.c, test_decode_role.c) and the host can
 * change how it runs its roles without touching them: the router link
 * lives on the host's own I/O thread (wkhost.h), which roles never see.
 *
 * Calls a role can expect, all on one thread (the host's compute thread):
 *   on_task, on_cancel   a router message for it (already validated as an
 *                        envelope; every field is the role's to check)
 *   sockets, poll        its own sockets (KV egress or ingress): the host
 *                        polls them with its own and then calls poll, which
 *                        reads what is there without blocking
 *   on_layer             (optional) during a pass of the role alone, after
 *                        each layer has written its K/V (engine/forward.h
 *                        pd_forward_hooked): a prefill role streams that
 *                        layer's KV (kv.transfer: layer). Not called in a
 *                        pass mixing two roles.
 *   ready, fill, done    a forward pass (a prefill pass, a decode step, or
 *                        in a colocated worker one pass mixing both), when
 *                        ready says there is work: fill puts the role's
 *                        rows in it, done reads its logits (pd_wkrole_run,
 *                        pd_wkrole_run_mixed below)
 *   timers               once per loop turn: leases, retries, expiries
 *   busy, load           whether it holds work (drain waits for !busy);
 *                        its share of a heartbeat
 *   held                 how many requests it holds (logged when a drain
 *                        begins: what the drain must finish)
 *   drop_all             the router that gave it its work is gone: free it
 *   kv_events, kv_resync (optional, NULL in a role without a prefix cache)
 *                        kv_events sends the router what changed in the
 *                        prefix cache (KvEvents), called by the compute
 *                        thread every loop turn while registered; kv_resync:
 *                        the router asked for a snapshot (KvResync), which
 *                        the next kv_events sends
 *   on_peers             (optional) the router's list of the cluster's
 *                        decode workers' KV endpoints (KvPeers): a prefill
 *                        role connects its KV egress to each ahead of any
 *                        task that names one
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
    /* A forward pass in two halves, so that one pass can carry several
     * roles' rows. fill appends the role's rows to st (within st->max_rows,
     * the engine's sequences and the role's own limits), remembers what it
     * put there and returns how many rows (0: nothing; done is then not
     * called). done follows the pass: fail NULL, the role reads its logits
     * (from the row st->n_logits had when it filled) and sends its tokens;
     * or fail says why the pass failed. us: the role's share of the pass's
     * time, for its counters. */
    uint32_t (*fill)(void *self, pd_wkstep_t *st);
    void (*done)(void *self, const char *fail, uint64_t us);
    /* Optional (NULL: none): layer `layer` of the pass fill built has
     * written its K/V; the role must not touch the engine. */
    void (*on_layer)(void *self, uint32_t layer);
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
    void (*on_peers)(void *self, const Pd__KvPeers *k); /* optional */
} pd_wkrole_ops_t;

typedef struct {
    const pd_wkrole_ops_t *ops; /* NULL: no such role in this process */
    void *self;
} pd_wkrole_t;

/* ====== Running roles ====== */

/* One forward pass of r alone, within the engine's rows (the role keeps
 * to its own budget). Returns the rows run (0: r had nothing). */
uint32_t pd_wkrole_run(pd_wkengine_t *e, pd_wkrole_t r);

/* One pass mixing first's rows with then's (a colocated worker's step:
 * the decode role's running tokens, then a prefill chunk: SARATHI-style
 * chunked prefill). first puts all it has; then gets what is left of
 * budget rows, and at least budget / 4 so that prompts go on however large
 * the decode batch is. The pass's time is shared between the two in
 * proportion to their rows. Returns the rows run; *n_then: then's. */
uint32_t pd_wkrole_run_mixed(pd_wkengine_t *e, pd_wkrole_t first, pd_wkrole_t then,
                             uint32_t budget, uint32_t *n_then);

#endif
