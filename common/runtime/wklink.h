/* wklink.h -- a worker's link to the router, on its own I/O thread.
 *
 * The link owns the DEALER to router.worker_endpoint and everything about
 * it: Register and RegisterReply, heartbeats both ways (Paranoid Pirate:
 * the router's silence past liveness beats makes the worker drop the
 * router's work and register again on a fresh connection; an "unknown
 * worker" Error from a restarted router the same), the outbox that keeps
 * messages in order under back-pressure, the health file, and the leaving
 * Drain. It runs on a thread of its own, so none of that waits for a
 * forward pass: a worker beats, reads the router and judges the router's
 * silence while it computes, and its pass sizes are chosen for speed alone.
 *
 * The compute thread (the worker host's loop, wkhost.h) and the link talk
 * over an inproc PAIR, one socket each (STYLE: a socket belongs to one
 * thread; the engine's pool touches none):
 *   compute -> link   a message for the router (two frames: header, the
 *                     packed Pd__Msg, moved zero-copy), "beat now" (drain
 *                     started), "leave" (send Drain, end the thread)
 *   link -> compute   a router message for the roles (a task, a cancel, a
 *                     drain: the received frame itself, zero-copy), "drop
 *                     your work" (the router that gave it is gone), "the
 *                     router refused us" (stop)
 * and share, without a socket, what a heartbeat carries: the load the
 * compute thread publishes after each turn of its loop (under a mutex held
 * only to copy it), and its progress (atomics): turns completed, and since
 * when it has been in the current one (0: waiting in its poll).
 *
 * A heartbeat's kv_events_seq (the last KvEvents the worker sent) must be
 * exactly the seq of the last KvEvents ahead of it on the way to the router,
 * or the router sees a gap and asks for a snapshot needlessly. The link
 * therefore never takes it straight from the published load, which may be
 * published before the link has read the KvEvents the compute thread sent
 * just before: it uses the larger of the last KvEvents seq it has read
 * (the compute thread tags those frames with their seq) and the published
 * seq of the newest load published after no frame the link has yet to
 * read. A KvEvents the compute thread never handed over (a test hook, a
 * failed send) still shows as a gap, as it must.
 *
 * A link must not keep a dead worker alive. Its heartbeats carry that
 * progress (WorkerCounters.compute_turns, compute_busy_ms), and the link
 * itself judges it: when the compute thread has been inside one turn (a
 * pass, a step, a message handler) for longer than
 * worker.compute_timeout_ms, the link declares the worker stalled: it
 * logs event=compute_stalled, sends the router a Drain with the reason
 * (the router forgets the worker at once and re-dispatches its requests),
 * stops beating and registering, drops whatever the compute thread still
 * sends, and stops refreshing the health file (a container probe then sees
 * it age). When the compute thread finishes that turn after all, the link
 * has it drop the work it held (re-dispatched long ago), reconnects and
 * registers afresh (event=compute_recovered). A whole process that stops
 * (SIGSTOP, a machine gone) stops its link too: the router's own missed
 * heartbeat rule covers it, as before.
 *
 * Messages from the compute thread carry the link generation it knows; the
 * link bumps it whenever the compute thread must drop its work (router
 * lost, restarted, or a stall), and discards what carries an older one, so
 * that no output of a dropped request reaches a router that has since
 * re-dispatched it.
 */
#ifndef PD_WKLINK_H
#define PD_WKLINK_H

#include <stdbool.h>
#include <stdint.h>

#include <zmq.h>

#include "base/err.h"
#include "proto/codec.h"
#include "proto/pd.pb-c.h"
#include "runtime/config.h"
#include "runtime/proc.h"

typedef struct pd_wklink pd_wklink_t;

/* Who this worker is, for its Register. Strings are copied. */
typedef struct {
    Pd__Role role;
    const char *kv_endpoint;  /* where prefill workers ship KV ("" for prefill only) */
    uint64_t model_identity;
    const char *model_name;
    pd_worker_limits_t limits;
    bool prefix_caching;      /* its prefill role keeps a prefix cache (KvEvents) */
} pd_wklink_info_t;

/* What the link hands the compute thread (pd_wklink_recv). */
typedef enum {
    PD_WKLINK_NONE = 0,
    PD_WKLINK_ROUTER,   /* body: one router message, for the roles */
    PD_WKLINK_DROP,     /* drop all work; gen: the new generation; body: why */
    PD_WKLINK_REFUSED,  /* the router refused our Register: stop (exit 1) */
} pd_wklink_kind_t;

typedef struct {
    pd_wklink_kind_t kind;
    uint32_t gen;
    zmq_msg_t body;     /* the caller closes it (zmq_msg_close) */
} pd_wklink_event_t;

/* A link for worker id with cfg (borrowed, outlives it) in ZeroMQ context
 * zctx; health: the --health-file (borrowed; NULL: none); load: the
 * compute thread's load to start from (copied). Creates the PAIR between
 * the two threads and the router DEALER, connects it, and starts the I/O
 * thread, which registers at once. NULL on failure (err says). */
pd_wklink_t *pd_wklink_start(const pd_config_t *cfg, const char *id, void *zctx,
                             const pd_wklink_info_t *info, pd_proc_health_t *health,
                             const pd_worker_load_t *load, pd_err_t *err);
/* From the compute thread: tells the link to leave (it flushes what it can,
 * sends the router a Drain when registered), joins it, closes both sockets
 * and frees it. Accepts NULL. */
void pd_wklink_stop(pd_wklink_t *l);

/* ====== For the compute thread ====== */

/* Its end of the PAIR, to poll (ZMQ_POLLIN: events are waiting). */
void *pd_wklink_socket(pd_wklink_t *l);
/* Reads one event without waiting: 1 (ev filled), 0 (none), or a negative
 * code. */
int pd_wklink_recv(pd_wklink_t *l, pd_wklink_event_t *ev);
/* Queues m for the router, tagged with generation gen (the last DROP's, 0
 * before any), and a KvEvents with its seq. 0, or PD_ENOMEM (m is lost, as
 * a failed send would be). */
int pd_wklink_send(pd_wklink_t *l, uint32_t gen, const Pd__Msg *m, pd_err_t *err);
/* Asks for a heartbeat now (draining started). */
void pd_wklink_beat_now(pd_wklink_t *l);
/* The compute thread's progress: it leaves its poll to work (begin) and
 * comes back to it (end: one more turn). */
void pd_wklink_turn_begin(pd_wklink_t *l);
void pd_wklink_turn_end(pd_wklink_t *l);
/* Its share of the next heartbeats (copied), as of every message sent so
 * far (kv_events_seq: the roles' last KvEvents seq). */
void pd_wklink_publish(pd_wklink_t *l, const pd_worker_load_t *load);
/* Whether the router has accepted our Register (and not lost us since). */
bool pd_wklink_registered(const pd_wklink_t *l);

#endif
