/* router.h -- the router's state: requests, clients, workers, and the
 * reactor that moves requests through their life.
 *
 * A request's life is one enum (rt_req_t.state), changed only by
 * rt_req_to (requests.c), which does everything entering and leaving a
 * state entails (the queue, the workers' charges, telling workers to drop
 * it, the client's table):
 *
 *   FREE --accept--> QUEUED --dispatch--> PREFILL --first token--> HANDOFF
 *                     ^  ^                   |                        |
 *                     |  +-- task not sent --+                 next token
 *                     |                      |                        v
 *                     +-- preempted / worker lost (epoch + 1) --- DECODE
 *
 *   QUEUED, PREFILL, HANDOFF, DECODE --finished, cancelled--> DONE
 *                                    --error, deadline-----> FAILED
 *   DONE, FAILED --terminal message sent--> FREE
 *   any live state --client gone, stalled or timed out--> FREE
 *
 * PREFILL: a prefill worker is computing the prompt's KV (its tokens are
 * charged to it). HANDOFF: the epoch's first token is out and the KV is on
 * its way to the decode worker; the prefill worker still answers for the
 * request until the decode worker's first token (DECODE). DONE / FAILED:
 * no worker holds it; only its final chunk / Error waits to be sent.
 *
 * Every dispatch bumps the request's epoch; workers tag everything with
 * (request id, epoch), and the router drops anything from an old epoch, so
 * a late message from a preempted or dead attempt can never reach the
 * client. Tokens carry their index in the output; the router appends only
 * index == n_gen (duplicates are dropped, early ones stashed), which is what
 * keeps a client's stream gap-free and duplicate-free across re-prefills.
 *
 * Whether a request's output is held back (block_ticket) is not part of
 * its life but of its client's connection (clients.c): a request in DECODE,
 * DONE or FAILED may wait behind its client's older held output.
 */
#ifndef PD_ROUTER_H
#define PD_ROUTER_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

#include "runtime/config.h"
#include "kvindex.h"
#include "metrics.h"
#include "engine/model.h"
#include "runtime/net.h"
#include "runtime/proc.h"
#include "proto/codec.h"
#include "engine/sampler.h"
#include "engine/tokenizer.h"

#define RT_MAX_WORKERS 64
#define RT_MAX_STOP 16          /* stop strings per request */
#define RT_MAX_STOP_LEN 256     /* bytes per stop string */
#define RT_MAX_STOP_IDS 64
#define RT_STASH 16             /* tokens that may arrive ahead of a gap */
#define RT_SLOT_BITS 20         /* request id = (sequence << 20) | slot */

typedef enum {
    RQ_FREE = 0, /* slot unused */
    RQ_QUEUED,   /* in rt_t.queue, waiting for workers */
    RQ_PREFILL,  /* dispatched: prefill running */
    RQ_HANDOFF,  /* first token out, KV moving to the decode worker */
    RQ_DECODE,   /* the decode worker streams tokens */
    RQ_DONE,     /* finished (length, stop, EOS, cancel): final chunk pending */
    RQ_FAILED,   /* ended by an error: its Error pending */
    RQ_N_STATES
} rt_state_t;


/* Whether a worker takes new work. READY -> CORDONED (pd-cli drain --keep)
 * -> READY (pd-cli undrain); READY or CORDONED -> LEAVING (SIGTERM, seen in
 * its heartbeat, or pd-cli drain): it finishes what it holds and exits. The
 * only transition function is rt_worker_set_state. */
typedef enum {
    RT_W_READY = 0,
    RT_W_CORDONED,                   /* held back by the router; stays registered */
    RT_W_LEAVING,                    /* draining to exit */
} rt_wstate_t;

typedef struct {
    bool used;
    rt_wstate_t state;
    uint32_t gen;                    /* bumped whenever the slot is reused */
    uint8_t zid[PD_NET_ID_MAX];      /* ZMQ routing id on the backend socket */
    size_t zid_len;
    char id[64];
    Pd__Role role;
    char kv_endpoint[PD_CFG_STR];
    uint32_t block_size, total_blocks, max_batch_size, max_batch_tokens;
    /* As the worker last reported (Heartbeat). */
    uint32_t hb_queued_tokens, hb_running, hb_free_blocks, hb_waiting;
    pd_worker_counters_t counters;
    /* The router's own accounting, exact between heartbeats. */
    uint64_t prefill_tokens;         /* tokens of prefill tasks not yet answered */
    uint32_t n_decoding;             /* requests decoding (or about to) here */
    uint64_t blocks_est;             /* KV blocks those requests hold */
    uint64_t last_seen_ms;
    /* Prefix caching (prefix.c): announced in Register; KvEvents applied,
     * KvResync sent and when. */
    bool prefix_caching;
    uint64_t kv_events, kv_resyncs, kv_resync_ms;
    uint64_t routed_cached_reqs, routed_cached_tokens; /* dispatches onto its cache */
} rt_worker_t;

/* A client with requests in flight (rt_req_t.client indexes it). Created
 * by its first accepted request, freed with its last: the table never holds
 * more entries than there are requests. A client that declared heartbeats
 * (GenerateRequest.heartbeats, or a Heartbeat) and then stays silent for
 * router.client_liveness x router.client_heartbeat_ms loses all its
 * requests (event=client_timeout); one that never declared them (an old
 * client, the HTTP front's in-process bridge) is held to deadlines alone. */
typedef struct {
    bool used;
    bool beats;                      /* the client heartbeats */
    uint8_t cid[PD_NET_ID_MAX];      /* ZMQ routing id on the client socket */
    size_t cid_len;
    uint32_t n_reqs;                 /* requests of this client in the table */
    uint64_t last_rx_ms;             /* its last message of any kind */
    uint64_t last_tx_ms;             /* our last message to it (0: never) */
    /* Back-pressure is per connection (one ZeroMQ pipe, router's net.hwm),
     * so a stalled stream is judged here, not per request: stuck_since_us
     * is the first send refused since the last one that went through (0:
     * the connection is keeping up). Once it is older than
     * router.stream_stall_ms the client's held streams are cut. */
    uint64_t stuck_since_us;
    uint32_t n_blocked;              /* its requests with output held (block_ticket != 0) */
    uint64_t retry_pass;             /* the retry pass in which its connection last refused */
} rt_client_t;

typedef struct rt_req {
    rt_state_t state;
    uint64_t id;                     /* router-wide, sent to workers */
    uint8_t cid[PD_NET_ID_MAX];      /* client's routing id */
    size_t cid_len;
    uint32_t client;                 /* index into rt_t.clients (held while not RQ_FREE) */
    uint64_t client_req;             /* the client's request id */
    uint32_t epoch;
    int32_t *tokens;                 /* (cap_tokens) prompt, then output */
    uint32_t n_prompt, n_gen, cap_tokens;
    pd_sampling_t sampling;
    uint32_t max_tokens;
    int32_t stop_ids[RT_MAX_STOP_IDS];
    uint32_t n_stop_ids;
    bool ignore_eos, stream;
    char *stop[RT_MAX_STOP];
    uint32_t n_stop;
    pd_detok_t detok;
    char *text;                      /* (text_cap) output text so far */
    size_t text_len, text_cap;
    size_t text_ok;                  /* text[0..text_ok) may be sent (no stop-string prefix) */
    size_t text_sent;
    uint32_t tok_sent;               /* output tokens already sent */
    Pd__FinishReason finish;         /* set once the output is complete (DONE, FAILED) */
    Pd__ErrorCode err_code;          /* FAILED: the Error to send */
    char *err_msg;
    uint64_t t_accept_us, t_dispatch_us, t_first_us, deadline_us;
    /* Output held back (a send refused, or queued behind its client's held
     * requests): a ticket from rt_t.next_ticket, retried oldest first; 0:
     * nothing held. The held output is what r keeps anyway (tokens, text:
     * bounded by its max_tokens), so holding costs no extra memory. */
    uint64_t block_ticket, t_blocked_us;
    /* The workers of the current epoch (PREFILL, HANDOFF, DECODE) and what
     * is charged to them (sched.c, "Charges"). */
    int p_worker, d_worker;          /* indexes into workers, -1 = none */
    uint32_t p_gen, d_gen;
    uint64_t prefill_charged;        /* tokens charged to the prefill worker */
    uint32_t prefix_cached;          /* of them, tokens its cache holds (the index says) */
    uint64_t blocks_charged;         /* blocks charged to the decode worker */
    uint32_t n_preempt;
    struct {
        uint32_t index;
        int32_t token;
        Pd__FinishReason finish;
    } stash[RT_STASH];
    uint32_t n_stash;
} rt_req_t;

typedef struct {
    pd_config_t cfg;
    pd_model_t *model;               /* tokenizer source and identity; weights unused */
    pd_tok_t *tok;
    uint32_t max_seq_len;
    uint64_t identity;               /* pd_model_kv_identity(model, max_seq_len): a
                                        worker must register with the same */
    void *zctx;
    void *front;                     /* ROUTER, clients */
    void *back;                      /* ROUTER, workers */
    pd_zap_t *zap;                   /* CURVE allow-list (security.curve) */
    char front_ep[PD_CFG_STR], back_ep[PD_CFG_STR];
    pd_pb_alloc_t alloc;
    rt_worker_t workers[RT_MAX_WORKERS];
    rt_req_t *reqs;                  /* (n_slots) */
    uint32_t n_slots;
    uint32_t *queue;                 /* (n_slots) ring of slot indexes, QUEUED requests */
    uint32_t q_head, q_len;
    rt_client_t *clients;            /* (n_clients, cap_clients) slots; used ones have requests */
    uint64_t next_ticket;            /* last rt_req_t.block_ticket handed out */
    uint32_t n_blocked;              /* requests with a block_ticket */
    uint64_t retry_pass;             /* count of rt_stream_retry passes */
    struct rt_held { uint64_t ticket; uint32_t slot; } *held; /* (n_slots) rt_stream_retry's scratch */
    size_t n_clients, cap_clients;   /* n_clients: high-water mark of used slots */
    uint32_t n_active, n_dispatched;
    uint64_t next_seq;
    uint64_t requests_total, requests_failed;
    uint64_t last_hb_ms, last_sweep_ms, last_client_check_ms;
    int32_t *tok_buf;                /* (max_seq_len + 1) tokenizer output */
    pd_net_in_t *in;
    volatile sig_atomic_t *stop;
    pd_metrics_t *metrics;           /* borrowed, may be NULL (metrics.h; main sets it) */
    rt_kvi_t *kvi;                   /* what each worker caches (prefix.c) */
    uint64_t kv_root;                /* block hash chain's root (engine/kvcache.h) */
    uint64_t *chain;                 /* (max_seq_len / block_size + 1) a prompt's chain */
    int rr_last;                     /* round_robin: the last worker picked */
    pd_proc_health_t *health;        /* borrowed, may be NULL (--health-file; main sets it) */
} rt_t;

/* Sets up everything from cfg (model, sockets). err names what failed. */
int rt_init(rt_t *rt, const pd_config_t *cfg, volatile sig_atomic_t *stop, pd_err_t *err);
/* Runs the reactor until *stop. */
int rt_run(rt_t *rt);
void rt_destroy(rt_t *rt);

/* ====== Inside router/ ======
 * One file per concern; a request's path is walked in docs/architecture.md.
 * Handlers (rt_on_*) take decoded, not yet validated messages and validate
 * every field they use. */

/* router.c: setup, the two sockets, timers, the reactor.
 * One client (cid) or worker (zid) message payload, as received: unpacks it
 * under rt->alloc's budget, answers a malformed one with an Error and hands
 * a decoded one to its rt_on_* handler. The socket loops and the protocol
 * fuzz target (tests/fuzz/fuzz_proto_router.c) both enter here. */
void rt_on_client_payload(rt_t *rt, const uint8_t *cid, size_t cid_len, const void *data,
                          size_t len);
void rt_on_worker_payload(rt_t *rt, const uint8_t *zid, size_t zlen, const void *data,
                          size_t len);

/* requests.c: a request's admission, its life (the one transition
 * function), its output (tokens, text, stop strings) and its end. */
bool rt_req_can(rt_state_t from, rt_state_t to); /* the arrows of the diagram above */
const char *rt_state_name(rt_state_t s);
/* Moves r to state `to` (which rt_req_can must allow) and does what leaving
 * and entering entail: QUEUED joins or leaves the queue (at its head when
 * coming back from the workers); PREFILL takes a new epoch and the charges
 * of the workers set in r->p_worker / r->d_worker; HANDOFF returns the
 * prefill charge; leaving the workers returns every charge and tells them
 * to drop the request; FREE forgets it (client entry, held output, memory). */
void rt_req_to(rt_t *rt, rt_req_t *r, rt_state_t to);
void rt_req_clear(rt_req_t *r); /* frees what r owns; r becomes RQ_FREE (no accounting) */
rt_req_t *rt_req_by_id(rt_t *rt, uint64_t id);  /* NULL: unknown or freed */
bool rt_req_on_workers(const rt_req_t *r);      /* PREFILL, HANDOFF or DECODE */
bool rt_req_is_live(const rt_req_t *r);         /* QUEUED or on workers: output still to come */
/* Ends r with an Error (FAILED; its terminal message, kept until it can be
 * sent) and tries to send it. */
void rt_req_fail(rt_t *rt, rt_req_t *r, Pd__ErrorCode code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Back to the head of the queue for a re-prefill at a new epoch;
 * preempted: counts in the request's n_preemptions (a task that could not
 * be sent does not). */
void rt_req_requeue(rt_t *rt, rt_req_t *r, const char *why, bool preempted);
/* The timer's pass over live requests: fails those past their deadline. */
void rt_req_sweep(rt_t *rt, uint64_t now_us);
void rt_on_generate(rt_t *rt, const uint8_t *cid, size_t cid_len, const Pd__GenerateRequest *g);
void rt_on_cancel(rt_t *rt, const uint8_t *cid, size_t cid_len, const Pd__Cancel *c);
void rt_on_tokens(rt_t *rt, int wi, const Pd__TokenBatch *b);

/* clients.c: the client table (liveness, heartbeats) and the output
 * streams (chunks, errors, back-pressure, held output).
 * rt_client_attach binds a newly accepted request r (r->cid set) to its
 * client's entry, creating it (PD_ENOMEM if it cannot: refuse the
 * request); beats: the client declared heartbeats. rt_client_detach undoes
 * it when r leaves the table. The liveness rule is rt_client_t's comment. */
int rt_client_attach(rt_t *rt, rt_req_t *r, bool beats);
void rt_client_detach(rt_t *rt, rt_req_t *r);
rt_client_t *rt_client_of(rt_t *rt, const rt_req_t *r); /* NULL: r never attached */
/* Any message from a client is a beat; heartbeat: it was a Heartbeat
 * (which also declares that the client heartbeats). */
void rt_client_heard(rt_t *rt, const uint8_t *cid, size_t len, bool heartbeat);
/* Judges and heartbeats the clients that heartbeat (every sweep). */
void rt_clients_check(rt_t *rt, uint64_t now_ms);
/* Sends what r's client has not seen (a chunk; at DONE the final chunk, at
 * FAILED the Error) and frees r after its terminal message. While its
 * client has held output, r queues behind it (rt_stream_retry). */
void rt_stream_flush(rt_t *rt, rt_req_t *r);
/* The timer's pass over held output: cuts the held streams of a client
 * whose connection made no progress for router.stream_stall_ms
 * (event=stream_stalled), retries the others oldest-held first, and stops
 * trying a connection for this pass at its first refusal, so no stream
 * overtakes an older one and none starves. */
void rt_stream_retry(rt_t *rt, uint64_t now_us);
void rt_stream_unhold(rt_t *rt, rt_req_t *r); /* r's output is no longer held */

/* sched.c: scheduling -- choosing workers, dispatching, and what a
 * request is charged on its workers (the one place charges change). */
void rt_dispatch(rt_t *rt); /* queued requests to workers while there is room */
uint32_t rt_blocks_for(uint32_t block_size, uint64_t n_tokens); /* UINT32_MAX if block_size 0 */
void rt_charge_take(rt_t *rt, rt_req_t *r);        /* entering PREFILL */
void rt_charge_prefill_done(rt_t *rt, rt_req_t *r); /* PREFILL -> HANDOFF */
void rt_charge_grow(rt_t *rt, rt_req_t *r);        /* after an output token */
/* Leaving the workers (from state `from`): returns every charge and tells
 * the workers that hold r to drop it. */
void rt_charge_return(rt_t *rt, rt_req_t *r, rt_state_t from);

/* workers.c: the worker registry (register, heartbeats, drain, removal),
 * what workers report about requests (preempted, errors) and the cluster
 * status. */
rt_worker_t *rt_worker_of(rt_t *rt, int idx, uint32_t gen);     /* NULL: gone or replaced */
int rt_worker_by_zid(rt_t *rt, const void *zid, size_t len);    /* index, or -1 */
bool rt_have_workers(rt_t *rt); /* a prefill+decode pair or a colocated worker */
/* Sends m to w without blocking; logs a failure and returns pd_net_send's
 * result (PD_EFULL: back-pressure, PD_NET_EGONE: the worker is gone). */
int rt_send_worker(rt_t *rt, rt_worker_t *w, const Pd__Msg *m);
void rt_send_cancel(rt_t *rt, rt_worker_t *w, uint64_t id, uint32_t epoch); /* w may be NULL */
void rt_worker_drop(rt_t *rt, int wi, const char *why); /* requeues the requests it held */
/* Whether worker wi holds request r: what rt_worker_drop would requeue
 * (status reports the count per worker as `assigned`). */
bool rt_req_held_by(const rt_t *rt, const rt_req_t *r, int wi);
/* Moves w to state `to` (see rt_wstate_t); false (and nothing changes) for a
 * transition that does not exist: a LEAVING worker never comes back. */
bool rt_worker_set_state(rt_worker_t *w, rt_wstate_t to, const char *why);
/* "ready", "cordoned" or "draining" (status, metrics). */
const char *rt_worker_state_name(rt_wstate_t s);
void rt_workers_check(rt_t *rt, uint64_t now_ms);      /* heartbeats out, silent ones dropped */
void rt_on_register(rt_t *rt, const uint8_t *zid, size_t len, const Pd__Register *g);
void rt_on_heartbeat(rt_t *rt, rt_worker_t *w, const Pd__Heartbeat *h);
void rt_on_preempted(rt_t *rt, int wi, const Pd__Preempted *p);
void rt_on_worker_error(rt_t *rt, int wi, const Pd__Error *e);
void rt_on_drain_request(rt_t *rt, const uint8_t *cid, size_t cid_len, const Pd__Drain *d);
void rt_on_status(rt_t *rt, const uint8_t *cid, size_t cid_len);

/* prefix.c: the prefix index and router.routing */
int rt_prefix_init(rt_t *rt, pd_err_t *err);
void rt_prefix_destroy(rt_t *rt);
void rt_prefix_on_register(rt_t *rt, int wi, const Pd__Register *g); /* after the slot is set */
void rt_prefix_on_drop(rt_t *rt, int wi);
void rt_prefix_on_events(rt_t *rt, int wi, const Pd__KvEvents *m);
void rt_prefix_on_heartbeat(rt_t *rt, int wi, const Pd__Heartbeat *h);
/* The prefill worker for r among eligible[RT_MAX_WORKERS] by router.routing
 * (-1: none); sets r->prefix_cached. */
int rt_prefix_pick(rt_t *rt, rt_req_t *r, const bool *eligible);

#endif
