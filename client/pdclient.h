/* pdclient.h -- libpdclient: the C client of a pdserve cluster.
 *
 * One pd_client_t is one connection (a ZeroMQ DEALER) to a router's client
 * endpoint (tcp://127.0.0.1:5555 by default). Two ways to generate:
 *
 *   blocking:  pd_client_generate(c, &req, on_chunk, user, &err) streams
 *              every chunk of one request to on_chunk and returns when the
 *              request has ended (finished, failed, cancelled or timed out);
 *   async:     pd_client_submit() any number of requests, then call
 *              pd_client_poll() in a loop: it hands each arriving chunk (of
 *              any request) to the callback. pd-bench is built on this.
 *
 * Every request ends with exactly one final chunk (is_final): either with a
 * finish reason (length, eos, stop...) or with an error code and message.
 * Chunk indexes count output tokens from 0 and are contiguous, so a caller
 * can check that nothing was lost or duplicated.
 *
 * Not thread-safe: use one client per thread.
 */
#ifndef PD_CLIENT_H
#define PD_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

typedef struct pd_client pd_client_t;

/* Error codes carried by a final chunk (the protocol's ErrorCode). */
typedef enum {
    PD_STATUS_OK = 0,
    PD_STATUS_INVALID_ARGUMENT = 1,
    PD_STATUS_RESOURCE_EXHAUSTED = 2,
    PD_STATUS_UNAVAILABLE = 3,
    PD_STATUS_DEADLINE_EXCEEDED = 4,
    PD_STATUS_CANCELLED = 5,
    PD_STATUS_INTERNAL = 6,
} pd_status_t;

/* Why a stream ended (the protocol's FinishReason). */
typedef enum {
    PD_FINISH_NONE = 0,     /* not final, or ended by an error */
    PD_FINISH_LENGTH = 1,   /* max_tokens */
    PD_FINISH_EOS = 2,      /* end-of-generation token */
    PD_FINISH_STOP_ID = 3,  /* a stop token id */
    PD_FINISH_STOP = 4,     /* a stop string */
    PD_FINISH_CANCELLED = 5,
    PD_FINISH_ERROR = 6,
    PD_FINISH_CONTEXT = 7,  /* the context is full */
} pd_finish_t;

const char *pd_status_name(int code);   /* "INVALID_ARGUMENT"... never NULL */
const char *pd_finish_name(int reason); /* "length", "eos", "stop"... never NULL */

typedef struct {
    const char *prompt;              /* UTF-8 text, or NULL when prompt_tokens are given */
    const int32_t *prompt_tokens;    /* token ids (used when n_prompt_tokens > 0) */
    size_t n_prompt_tokens;
    float temperature;               /* 0 = greedy */
    int32_t top_k;                   /* 0 = off */
    float top_p;                     /* 1 = off */
    float min_p;                     /* 0 = off */
    float repetition_penalty;        /* 1 = off */
    float presence_penalty, frequency_penalty;
    uint64_t seed;
    uint32_t max_tokens;
    const char *const *stop;         /* stop strings (not part of the output) */
    size_t n_stop;
    const int32_t *stop_ids;
    size_t n_stop_ids;
    bool ignore_eos;
    bool stream;                     /* false: one final chunk with everything */
    uint32_t deadline_ms;            /* 0 = the router's default */
} pd_gen_request_t;

/* Defaults: greedy, max_tokens 16, stream on, everything else off. */
void pd_gen_request_default(pd_gen_request_t *r);

typedef struct {
    uint64_t request_id;
    const int32_t *tokens;           /* (n_tokens) new output token ids */
    size_t n_tokens;
    uint32_t index;                  /* output index of tokens[0] */
    const char *text;                /* (text_len) new output text, complete UTF-8 */
    size_t text_len;
    bool is_final;
    pd_finish_t finish;              /* on the final chunk */
    pd_status_t status;              /* != OK: the request failed (final chunk) */
    const char *error;               /* the router's message when status != OK */
    uint32_t prompt_tokens, completion_tokens; /* usage, on the final chunk */
    uint64_t queue_us, ttft_us, e2e_us;        /* router-side timings, final chunk */
    uint32_t n_preemptions;
} pd_chunk_t;

/* Called for every chunk; the chunk is valid only during the call. Return
 * nonzero to cancel that request (a final CANCELLED chunk follows). */
typedef int (*pd_chunk_fn)(const pd_chunk_t *chunk, void *user);

/* Connects to router_addr ("tcp://host:port"; NULL = $PD_ROUTER or
 * tcp://127.0.0.1:5555). Connecting is lazy: a router that is not up yet
 * is waited for by the calls below, within their timeouts. With
 * $PD_CURVE_SERVER_KEY set (the router's public key), the link uses CURVE
 * with this client's keys from $PD_CURVE_PUBLIC_KEY / $PD_CURVE_SECRET_KEY
 * (Z85, as `pd-cli keygen` prints them). */
pd_client_t *pd_client_new(const char *router_addr, pd_err_t *err);
void pd_client_free(pd_client_t *c); /* accepts NULL; in-flight requests are abandoned */

/* Client-side timeout: how long a request may go without any chunk from the
 * router (default 60000 ms; the request's deadline_ms + 5 s when that is
 * larger), and how long pd_client_status waits. On expiry the request is
 * cancelled and a final chunk with PD_STATUS_DEADLINE_EXCEEDED is delivered.
 * The router enforces the request's own deadline_ms; a request with a
 * deadline_ms is never waited for beyond deadline_ms + 5 s from its submit,
 * however recently it streamed (its router may have died mid-stream). */
void pd_client_set_timeout(pd_client_t *c, uint32_t timeout_ms);

/* Blocking: sends req and delivers its chunks to fn until the final one.
 * Returns 0 when the request finished normally, PD_EINVAL/PD_ERANGE/... when
 * it failed (err holds "STATUS: message"; the final chunk said the same). */
int pd_client_generate(pd_client_t *c, const pd_gen_request_t *req, pd_chunk_fn fn, void *user,
                       pd_err_t *err);

/* Async: sends req and returns at once with its id in *id. Returns 0, or
 * PD_EFULL when too many requests are in flight, PD_EIO when the message
 * cannot be queued. */
int pd_client_submit(pd_client_t *c, const pd_gen_request_t *req, uint64_t *id, pd_err_t *err);

/* Waits up to timeout_ms for chunks and delivers each to fn (any request).
 * Returns the number of chunks delivered (0 on timeout), or a negative code.
 *
 * Liveness: while requests are in flight, poll (and generate) send the
 * router a Heartbeat whenever the client has sent it nothing for the client
 * heartbeat interval, so call poll at least that often (and return from
 * callbacks within the router's window): a client silent for
 * router.client_liveness intervals has all its requests cancelled by the
 * router. Both values come from the router (1000 ms and 5 by default). A
 * router silent that long ends every in-flight request with a final chunk
 * PD_STATUS_UNAVAILABLE ("router ADDR silent for N ms"). */
int pd_client_poll(pd_client_t *c, int timeout_ms, pd_chunk_fn fn, void *user, pd_err_t *err);

/* Requests that have not had their final chunk yet. */
size_t pd_client_inflight(const pd_client_t *c);

/* Asks the router to stop request id; its final chunk (CANCELLED, or its
 * natural end if that came first) still arrives through poll/generate. */
int pd_client_cancel(pd_client_t *c, uint64_t id, pd_err_t *err);

/* ====== Cluster status (pd-cli status) ====== */

typedef struct {
    char id[64];
    char role[16];                   /* "prefill", "decode", "both" */
    char kv_endpoint[256];
    char state[16];
    uint32_t queued_prefill_tokens, running_seqs, free_blocks, total_blocks, assigned;
    uint64_t last_seen_ms;
    uint64_t steps, multi_seq_steps, joins_while_running, retirements, preemptions;
    uint64_t prefill_batches, prefill_multi, prefill_tokens;
    uint64_t kv_sent_bytes, kv_recv_bytes, kv_rejected, decode_tokens, max_running;
    uint64_t kv_transfers, kv_transfer_us; /* acknowledged transfers, sum of ship->ack us */
    uint64_t prefill_us, decode_us;        /* sums of forward-pass times */
    uint32_t prefill_pass_tokens;          /* tokens one prefill pass may take */
    uint64_t compute_turns;                /* the compute thread's loop turns (progress) */
    uint32_t compute_busy_ms;              /* its current turn at the last heartbeat (0: idle) */
    uint64_t mixed_steps;                  /* colocated passes mixing decode tokens and a prefill chunk */
    /* prefix cache: tokens looked up / found cached, lookups, evicted
     * blocks, blocks cached now (the worker's counts) */
    uint64_t prefix_queries, prefix_hits, prefix_requests, prefix_evictions, prefix_cached_blocks;
    /* the router's: caching announced, blocks its index holds for the
     * worker, dispatches routed onto its cache and their cached tokens,
     * KvResync sent */
    bool prefix_caching;
    uint32_t prefix_index_blocks;
    uint64_t routed_cached_requests, routed_cached_tokens, kv_resyncs;
} pd_worker_status_t;

typedef struct {
    char model_name[128];
    uint64_t model_identity;
    uint32_t active_requests, queued_requests;
    uint64_t requests_total, requests_failed;
    uint32_t block_size, max_seq_len, max_tokens_limit;
    uint32_t prefix_index_hashes; /* distinct hashes in the router's prefix index */
    size_t n_workers;
    pd_worker_status_t *workers;     /* (n_workers) */
} pd_cluster_status_t;

/* Asks the router to drain worker_id (finish what it holds, take nothing
 * new, deregister, exit). Returns 0 once the router forwarded it, PD_EINVAL
 * for an unknown worker id (err names it). */
int pd_client_drain(pd_client_t *c, const char *worker_id, pd_err_t *err);

typedef enum {
    PD_DRAIN_LEAVE = 0,  /* pd_client_drain: finish, deregister, exit */
    PD_DRAIN_KEEP = 1,   /* the router sends it nothing new; it stays registered (cordoned) */
    PD_DRAIN_RESUME = 2, /* a kept worker takes new work again */
} pd_drain_mode_t;

/* The same with a mode. KEEP and RESUME are refused (PD_EINVAL, err says
 * why) for a worker already draining to leave. */
int pd_client_drain_mode(pd_client_t *c, const char *worker_id, pd_drain_mode_t mode,
                         pd_err_t *err);

/* Asks the router for the cluster's state. Caller frees *out with
 * pd_cluster_status_free. */
int pd_client_status(pd_client_t *c, pd_cluster_status_t **out, pd_err_t *err);
void pd_cluster_status_free(pd_cluster_status_t *s);

#endif
