/* router.h -- the router's state: requests, workers, and the reactor that
 * moves requests through their life.
 *
 * A request's life (rt_req_t.state):
 *
 *   QUEUED --dispatch--> PREFILL --first token--> DECODE --finish--> (freed)
 *      ^                    |                        |
 *      +---- preempted / worker dead (epoch + 1) ----+
 *
 * Every dispatch bumps the request's epoch; workers tag everything with
 * (request id, epoch), and the router drops anything from an old epoch, so
 * a late message from a preempted or dead attempt can never reach the
 * client. Tokens carry their index in the output; the router appends only
 * index == n_gen (duplicates are dropped, early ones stashed), which is what
 * keeps a client's stream gap-free and duplicate-free across re-prefills.
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
#include "engine/sampler.h"
#include "engine/tokenizer.h"

#define RT_MAX_WORKERS 64
#define RT_MAX_STOP 16          /* stop strings per request */
#define RT_MAX_STOP_LEN 256     /* bytes per stop string */
#define RT_MAX_STOP_IDS 64
#define RT_STASH 16             /* tokens that may arrive ahead of a gap */
#define RT_SLOT_BITS 20         /* request id = (sequence << 20) | slot */

typedef enum { RQ_FREE = 0, RQ_QUEUED, RQ_PREFILL, RQ_DECODE, RQ_DONE } rt_state_t;

typedef struct {
    uint64_t steps, multi_seq_steps, joins_while_running, retirements, preemptions;
    uint64_t prefill_batches, prefill_multi, prefill_tokens;
    uint64_t kv_sent_bytes, kv_recv_bytes, kv_rejected, decode_tokens, max_running;
    uint64_t kv_transfers, kv_transfer_us, prefill_us, decode_us;
    uint32_t prefill_pass_tokens; /* the worker's current cap per prefill pass */
    uint64_t prefix_queries, prefix_hits, prefix_requests, prefix_evictions, prefix_cached_blocks;
} rt_counters_t;

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
    rt_counters_t counters;
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
    uint32_t gen_at_dispatch;        /* n_gen when the current epoch started */
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
    bool finished;
    bool assigned;                   /* holds a dispatch (workers, charges) */
    Pd__FinishReason finish;
    Pd__ErrorCode err_code;          /* != 0: ends with an Error, not a final chunk */
    char *err_msg;
    uint64_t t_accept_us, t_dispatch_us, t_first_us, deadline_us;
    /* Output held back (a send refused, or queued behind its client's held
     * requests): a ticket from rt_t.next_ticket, retried oldest first; 0:
     * nothing held. The held output is what r keeps anyway (tokens, text:
     * bounded by its max_tokens), so holding costs no extra memory. */
    uint64_t block_ticket, t_blocked_us;
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
    uint64_t retry_pass;             /* count of rt_req_retry passes */
    struct rt_held { uint64_t ticket; uint32_t slot; } *held; /* (n_slots) rt_req_retry's scratch */
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
 * router.c: setup, sockets, status, timers, reactor, small lookups;
 * requests.c: a request's admission, output and end; sched.c: the worker
 * registry and scheduling. Handlers (rt_on_*) take decoded, not yet
 * validated messages and validate every field they use. */

/* router.c */
uint32_t rt_blocks_for(uint32_t block_size, uint64_t n_tokens); /* UINT32_MAX if block_size 0 */
rt_req_t *rt_req_by_id(rt_t *rt, uint64_t id);                  /* NULL: unknown or finished */
rt_worker_t *rt_worker_of(rt_t *rt, int idx, uint32_t gen);     /* NULL: gone or replaced */
int rt_worker_by_zid(rt_t *rt, const void *zid, size_t len);    /* index, or -1 */
/* Sends m to w without blocking; logs a failure and returns pd_net_send's
 * result (PD_EFULL: back-pressure, PD_NET_EGONE: the worker is gone). */
int rt_send_worker(rt_t *rt, rt_worker_t *w, const Pd__Msg *m);
void rt_send_cancel(rt_t *rt, rt_worker_t *w, uint64_t id, uint32_t epoch); /* w may be NULL */
void rt_on_status(rt_t *rt, const uint8_t *cid, size_t cid_len);
/* Client liveness (router.c). rt_client_attach binds a newly accepted
 * request r (r->cid set) to its client's entry, creating it (PD_ENOMEM if it
 * cannot: refuse the request); beats: the client declared heartbeats.
 * rt_client_detach undoes it when r leaves the table; rt_client_sent notes
 * a message just sent to r's client (no heartbeat needed for a while). */
int rt_client_attach(rt_t *rt, rt_req_t *r, bool beats);
void rt_client_detach(rt_t *rt, rt_req_t *r);
void rt_client_sent(rt_t *rt, const rt_req_t *r);
/* rt_client_refused: a send to r's client was refused (back-pressure, or no
 * memory for the message); starts the connection's stall clock. */
void rt_client_refused(rt_t *rt, const rt_req_t *r, uint64_t now_us);
rt_client_t *rt_client_of(rt_t *rt, const rt_req_t *r); /* NULL: r never attached */
/* One client (cid) or worker (zid) message payload, as received: unpacks it
 * under rt->alloc's budget, answers a malformed one with an Error and hands
 * a decoded one to its rt_on_* handler. The socket loops and the protocol
 * fuzz target (tests/fuzz/fuzz_proto_router.c) both enter here. */
void rt_on_client_payload(rt_t *rt, const uint8_t *cid, size_t cid_len, const void *data,
                          size_t len);
void rt_on_worker_payload(rt_t *rt, const uint8_t *zid, size_t zlen, const void *data,
                          size_t len);

/* requests.c */
void rt_req_clear(rt_req_t *r); /* frees what r owns; r becomes RQ_FREE */
/* Takes back r's charges on its workers (telling them to drop it when notify). */
void rt_req_unassign(rt_t *rt, rt_req_t *r, bool notify);
void rt_req_release(rt_t *rt, rt_req_t *r, bool notify); /* forgets r entirely */
void rt_req_settle(rt_t *rt, rt_req_t *r); /* finished: leaves queue and workers, RQ_DONE */
/* Ends r with an Error (its terminal message, kept until it can be sent). */
void rt_req_fail(rt_t *rt, rt_req_t *r, Pd__ErrorCode code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Sends what the client has not seen; releases r after its final message.
 * While its client has held requests, r queues behind them (rt_req_retry). */
void rt_req_flush(rt_t *rt, rt_req_t *r);
/* The timer's pass over held output: cuts the held streams of a client
 * whose connection made no progress for router.stream_stall_ms
 * (event=stream_stalled), retries the others oldest-held first, and stops
 * trying a connection for this pass at its first refusal, so no stream
 * overtakes an older one and none starves. */
void rt_req_retry(rt_t *rt, uint64_t now_us);
bool rt_have_workers(rt_t *rt); /* a prefill+decode pair or a colocated worker */
void rt_on_generate(rt_t *rt, const uint8_t *cid, size_t cid_len, const Pd__GenerateRequest *g);
void rt_on_cancel(rt_t *rt, const uint8_t *cid, size_t cid_len, const Pd__Cancel *c);
void rt_on_tokens(rt_t *rt, int wi, const Pd__TokenBatch *b);

/* sched.c */
void rt_dispatch(rt_t *rt); /* queued requests to workers while there is room */
/* Back to the head of the queue for a re-prefill at a new epoch. */
void rt_requeue(rt_t *rt, rt_req_t *r, const char *why);
void rt_worker_drop(rt_t *rt, int wi, const char *why); /* re-dispatches its requests */
/* Whether worker wi holds request r: what rt_worker_drop would re-dispatch
 * (status reports the count per worker as `assigned`). */
bool rt_req_held_by(const rt_t *rt, const rt_req_t *r, int wi);
/* Moves w to state `to` (see rt_wstate_t); false (and nothing changes) for a
 * transition that does not exist: a LEAVING worker never comes back. */
bool rt_worker_set_state(rt_worker_t *w, rt_wstate_t to, const char *why);
/* "ready", "cordoned" or "draining" (status, metrics). */
const char *rt_worker_state_name(rt_wstate_t s);
void rt_on_register(rt_t *rt, const uint8_t *zid, size_t len, const Pd__Register *g);
void rt_on_heartbeat(rt_t *rt, rt_worker_t *w, const Pd__Heartbeat *h);
void rt_on_preempted(rt_t *rt, int wi, const Pd__Preempted *p);
void rt_on_worker_error(rt_t *rt, int wi, const Pd__Error *e);
void rt_on_drain_request(rt_t *rt, const uint8_t *cid, size_t cid_len, const Pd__Drain *d);

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
