/* wkhost.h -- the worker host: what a worker process does whatever its
 * role. It owns the ZeroMQ context, the process's two threads and the
 * roles' loop:
 *
 *   the I/O thread (wklink.h) owns the link to the router: Register,
 *   heartbeats both ways, the outbox under back-pressure, the router's
 *   silence, the health file, and the watchdog that declares the worker
 *   stalled when the compute thread stops making progress;
 *
 *   the compute thread (the caller of pd_wkhost_run) runs the roles: it
 *   polls its end of the link and the roles' own sockets (KV egress or
 *   ingress), dispatches router messages to the role that owns them
 *   (PrefillTask to the prefill role, DecodeTask to the decode role, Cancel
 *   to both, KvResync to the prefill role), lets each role read its
 *   sockets, runs the forward passes, then the roles' timers and their
 *   prefix cache events (KvEvents, while registered), drain on SIGTERM or
 *   a router Drain; and publishes its load and progress for the link's
 *   heartbeats.
 *
 * Each compute turn: poll (5 ms, or not at all when a role is ready to
 * compute), the link's events, the roles' sockets, one forward pass per
 * ready role -- or, in a colocated worker with prefill.chunk_tokens, one
 * pass mixing the running decode tokens with a prefill chunk
 * (pd_wkrole_run_mixed) -- then the roles' timers and KvEvents. A pass may
 * take as long as its size says: the link beats meanwhile.
 *
 * A process runs one host with one or two roles (prefill, decode, or both
 * for a colocated worker): worker/worker.c builds them.
 */
#ifndef PD_WKHOST_H
#define PD_WKHOST_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/err.h"
#include "proto/codec.h"
#include "proto/pd.pb-c.h"
#include "runtime/config.h"
#include "runtime/proc.h"
#include "runtime/wkengine.h"
#include "runtime/wklink.h"
#include "runtime/wkrole.h"

typedef struct pd_wkhost pd_wkhost_t;

/* Who this worker is, for its Register (wklink.h). Strings are copied. */
typedef pd_wklink_info_t pd_wkhost_info_t;

/* A host for worker id with cfg and eng (the engine its roles compute with;
 * both borrowed, outliving it), and its ZeroMQ context. stop is the
 * process's stop flag (SIGTERM; the host also sets it on Drain and when the
 * router refuses us). Reads the test hook PD_TEST_STALL (docs/config.md).
 * NULL on failure (err says). */
pd_wkhost_t *pd_wkhost_new(const pd_config_t *cfg, const char *id, pd_wkengine_t *eng,
                           volatile sig_atomic_t *stop, pd_err_t *err);
/* Stops the link (if started), closes the roles' sockets (their close),
 * ends the ZeroMQ context (waiting for zero-copy frames to be let go),
 * frees the host. The roles are freed after, by their owner. Accepts NULL. */
void pd_wkhost_free(pd_wkhost_t *h);

/* For the roles: the port to reach the host, the context for their sockets. */
const pd_wkport_t *pd_wkhost_port(pd_wkhost_t *h);
void *pd_wkhost_zctx(pd_wkhost_t *h);

/* The process's health file (--health-file; proc.h), rewritten every beat
 * with the link's state (registering, registered, draining). Borrowed;
 * NULL: none. */
void pd_wkhost_set_health(pd_wkhost_t *h, pd_proc_health_t *health);

/* Gives the host its roles (either may have ops NULL). Borrowed. */
void pd_wkhost_set_roles(pd_wkhost_t *h, pd_wkrole_t prefill, pd_wkrole_t decode);

/* Starts the link's I/O thread, which connects to worker.router and
 * registers. */
int pd_wkhost_start(pd_wkhost_t *h, const pd_wkhost_info_t *info, pd_err_t *err);

/* Serves until *stop, then drains (finishes what the roles hold, takes no
 * new prefill task) until idle or worker.drain_timeout_ms, and deregisters.
 * Returns the process's exit status: 0, or 1 when the loop failed or the
 * router refused us. */
int pd_wkhost_run(pd_wkhost_t *h);

/* One router message for the roles, as the link passed it on: unpacked
 * under the host's byte budget and dispatched. The compute loop and
 * tests/fuzz/fuzz_proto_worker.c enter here (on the compute thread). */
void pd_wkhost_on_router_payload(pd_wkhost_t *h, const void *data, size_t len);

/* The router that gave the roles their work is gone (why): they drop it
 * all, freeing their blocks. What the link asks on a new generation gen
 * (the compute loop), or the fuzz target directly. */
void pd_wkhost_drop_work(pd_wkhost_t *h, uint32_t gen, const char *why);

/* For tests and the fuzz target: clear the draining state. */
void pd_wkhost_test_reset(pd_wkhost_t *h);

#endif
