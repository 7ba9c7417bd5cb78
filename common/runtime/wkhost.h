/* wkhost.h -- the worker host: what a worker process does whatever its
 * role. It owns the ZeroMQ context and the link to the router (a DEALER to
 * router.worker_endpoint): Register and RegisterReply, heartbeats both ways
 * (the router's silence past liveness beats drops the router's work and
 * registers again on a fresh connection), the outbox that holds messages
 * under back-pressure, in order, drain on SIGTERM or a router Drain, and the
 * one reactor loop. Router messages are dispatched to the role that owns
 * them (PrefillTask to the prefill role, DecodeTask to the decode role,
 * Cancel to both, KvResync to the prefill role); everything else about a request is the role's (see
 * wkrole.h for the contract).
 *
 * A process runs one host with one or two roles (prefill, decode, or both
 * for a colocated worker): worker/worker.c builds them.
 *
 * Each loop turn: poll the router socket and the roles' sockets (5 ms, or
 * not at all when a role is ready to compute), read the router, let each
 * role read its sockets, run each ready role once (a prefill pass, a decode
 * step), then timers (the router's backlog first, so a long pass is not
 * mistaken for the router's silence; registration, heartbeats, liveness;
 * the roles' timers, then their prefix cache events, KvEvents).
 *
 * Meant to change here alone (issue 16): today a pass blocks the loop, so
 * heartbeats wait for it (a role caps its pass to half a heartbeat). A host
 * with an I/O thread that owns the sockets, beats and reads while a compute
 * thread calls ready/run, can be written behind this same interface: the
 * roles already reach the router only through their port (whose send the
 * host may make a queue for the I/O thread) and their own sockets only from
 * sockets/poll/timers, apart from run; the host would hold one lock around
 * every call into a role.
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
#include "runtime/wkrole.h"

typedef struct pd_wkhost pd_wkhost_t;

/* Who this worker is, for its Register. Strings are copied. */
typedef struct {
    Pd__Role role;
    const char *kv_endpoint;  /* where prefill workers ship KV ("" for prefill only) */
    uint64_t model_identity;
    const char *model_name;
    pd_worker_limits_t limits;
    bool prefix_caching;      /* its prefill role keeps a prefix cache (KvEvents) */
} pd_wkhost_info_t;

/* A host for worker id with cfg (borrowed, outlives it), and its ZeroMQ
 * context. stop is the process's stop flag (SIGTERM; the host also sets it
 * on Drain and when the router refuses us). NULL on failure (err says). */
pd_wkhost_t *pd_wkhost_new(const pd_config_t *cfg, const char *id,
                           volatile sig_atomic_t *stop, pd_err_t *err);
/* Closes the router link and the roles' sockets (their close), ends the
 * ZeroMQ context (waiting for zero-copy frames to be let go), frees the
 * host. The roles are freed after, by their owner. Accepts NULL. */
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

/* Connects to worker.router and sends Register. */
int pd_wkhost_start(pd_wkhost_t *h, const pd_wkhost_info_t *info, pd_err_t *err);

/* Serves until *stop, then drains (finishes what the roles hold, takes no
 * new prefill task) until idle or worker.drain_timeout_ms, and deregisters.
 * Returns the process's exit status: 0, or 1 when the loop failed or the
 * router refused us. */
int pd_wkhost_run(pd_wkhost_t *h);

/* One message payload from the router, as received: unpacked under the
 * host's byte budget and dispatched. The socket loop and
 * tests/fuzz/fuzz_proto_worker.c enter here. */
void pd_wkhost_on_router_payload(pd_wkhost_t *h, const void *data, size_t len);

/* For tests and the fuzz target: mark the link registered (or not), clear
 * the draining state and forget what waits in the outbox. */
void pd_wkhost_test_reset(pd_wkhost_t *h, bool registered);

#endif
