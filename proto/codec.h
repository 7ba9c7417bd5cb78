/* codec.h -- the one place where wire structures (pd.proto, protobuf-c)
 * become C structs and back: sampling parameters, a request's generation
 * parameters, a worker's limits (Register), its load and counters
 * (Heartbeat), token entries (TokenBatch) and prefix cache events
 * (KvEvents).
 *
 * Decoding, pd_codec_*_from_pb, treats the message as hostile: every field
 * is checked and a refusal is a pd_err_t naming the field as it is spelled
 * on the wire ("params.stop_ids[3]: 9000 outside the vocabulary [0, 4000)"),
 * with *out left in an unspecified state. An absent optional field takes its
 * .proto default.
 *
 * Encoding, pd_codec_*_to_pb, fills a message the caller initialised
 * nothing of: it is (re)initialised here, every field is marked present, and
 * its pointers borrow from the C struct and from the sub-messages the caller
 * passes, so nothing is allocated and the message lives as long as those
 * (typically the caller's stack, until pd_net_send).
 *
 * Runtime side only (libpdruntime): the engine never sees protobuf. The
 * sampling parameters are the engine's own pd_sampling_t.
 */
#ifndef PD_PROTO_CODEC_H
#define PD_PROTO_CODEC_H

#include <stdbool.h>
#include <stdint.h>

#include "base/err.h"
#include "engine/sampler.h"
#include "proto/pd.pb-c.h"

#define PD_MAX_STOP_IDS 64 /* GenParams.stop_ids a worker takes */

/* ====== Sampling (Sampling) ====== */

/* Defaults (pd_sampling_default) overridden by the fields present, then
 * validated: "sampling.top_p: must be in (0, 1], got 0". m may be NULL (all
 * defaults). */
int pd_codec_sampling_from_pb(const Pd__Sampling *m, pd_sampling_t *out, pd_err_t *err);
void pd_codec_sampling_to_pb(const pd_sampling_t *s, Pd__Sampling *m);

/* ====== Generation parameters (GenParams) ====== */

/* What a worker needs to generate for one request. */
typedef struct {
    pd_sampling_t s;
    uint32_t max_tokens;              /* total output budget, >= 1 */
    int32_t stop_ids[PD_MAX_STOP_IDS]; /* (n_stop_ids) */
    uint32_t n_stop_ids;
    bool ignore_eos;
    uint32_t n_prompt;                /* prompt tokens, without generated ones */
    uint32_t n_generated;             /* output tokens before this epoch */
    uint32_t max_seq_len;             /* this request's context limit */
} pd_gen_params_t;

/* What the receiver checks parameters against. */
typedef struct {
    uint32_t vocab;       /* token ids are in [0, vocab) */
    uint32_t max_seq_len; /* the receiver's context */
} pd_gen_limits_t;

/* Converts and checks: sampling as above; max_tokens >= 1; at most
 * PD_MAX_STOP_IDS stop ids, each in the vocabulary; 1 <= n_prompt <
 * max_seq_len; n_generated < max_tokens; max_seq_len absent, 0 or above
 * the receiver's means the receiver's; n_prompt + n_generated below it.
 * m NULL is refused ("params: missing"). */
int pd_codec_params_from_pb(const Pd__GenParams *m, const pd_gen_limits_t *lim,
                            pd_gen_params_t *out, pd_err_t *err);
/* m->sampling = s (filled); m->stop_ids borrows p->stop_ids. */
void pd_codec_params_to_pb(const pd_gen_params_t *p, Pd__GenParams *m, Pd__Sampling *s);

/* ====== A worker's limits (Register) ====== */

typedef struct {
    uint32_t block_size;       /* KV positions per block */
    uint32_t total_blocks;     /* KV blocks of the worker's cache */
    uint32_t max_batch_size;   /* sequences per pass (its role's) */
    uint32_t max_batch_tokens; /* tokens per prefill pass */
    uint32_t max_seq_len;      /* its context */
    char kv_dtype[8];          /* its KV cache's element type: "f32" or "f16" */
} pd_worker_limits_t;

/* Sets the limit fields of m (m's other fields are the caller's: this one
 * does not reinitialise it). */
void pd_codec_limits_to_pb(const pd_worker_limits_t *l, Pd__Register *m);
/* Checks presence: block_size >= 1 is required; the others default to 0
 * (whether 0 is acceptable depends on the role, which the router judges),
 * kv_dtype to "f32" (a peer from before F16 KV); a kv_dtype other than
 * "f32" or "f16" is refused, naming it. */
int pd_codec_limits_from_pb(const Pd__Register *m, pd_worker_limits_t *out, pd_err_t *err);
/* True for "f32", "f16" and NULL (absent: f32). */
bool pd_codec_kv_dtype_known(const char *kv_dtype);

/* ====== Load and counters (Heartbeat, WorkerCounters) ====== */

/* Monotonic counters a worker reports (docs/protocol.md). */
typedef struct {
    uint64_t steps, multi_seq_steps, joins_while_running, retirements, preemptions;
    uint64_t prefill_batches, prefill_multi, prefill_tokens;
    uint64_t kv_sent_bytes, kv_recv_bytes, kv_rejected, decode_tokens, max_running;
    uint64_t kv_transfers, kv_transfer_us, prefill_us, decode_us;
    uint32_t prefill_pass_tokens; /* tokens one prefill pass may take */
    uint64_t compute_turns;       /* the compute thread's loop turns so far */
    uint32_t compute_busy_ms;     /* how long it has been in the current one (0: idle) */
    uint64_t mixed_steps;         /* colocated passes of decode tokens + a prefill chunk */
    /* prefix cache: tokens looked up / found, lookups, evicted blocks, cached blocks now */
    uint64_t prefix_queries, prefix_hits, prefix_requests, prefix_evictions, prefix_cached_blocks;
} pd_worker_counters_t;

void pd_codec_counters_to_pb(const pd_worker_counters_t *c, Pd__WorkerCounters *m);
/* m NULL gives zeros. Counters are plain numbers: nothing to refuse. */
void pd_codec_counters_from_pb(const Pd__WorkerCounters *m, pd_worker_counters_t *out);

/* A worker's load, as a heartbeat carries it. */
typedef struct {
    uint32_t queued_prefill_tokens;
    uint32_t running_seqs;
    uint32_t waiting_seqs;
    uint32_t free_blocks;
    uint32_t total_blocks;
    bool draining;
    uint64_t kv_events_seq;       /* last KvEvents seq sent (0: none) */
    pd_worker_counters_t counters;
} pd_worker_load_t;

/* m->counters = c (filled). */
void pd_codec_load_to_pb(const pd_worker_load_t *l, Pd__Heartbeat *m, Pd__WorkerCounters *c);
/* Refuses free_blocks above total_blocks; absent counters are zeros. */
int pd_codec_load_from_pb(const Pd__Heartbeat *m, pd_worker_load_t *out, pd_err_t *err);

/* ====== Prefix cache events (KvEvents) ====== */

/* Events one KvEvents message may carry (a longer snapshot continues in
 * deltas): 8192 x 9 bytes, well inside net.max_msg_bytes' default. */
#define PD_KV_EVENTS_MAX 8192

typedef struct {
    uint64_t seq;                       /* >= 1 */
    bool snapshot;
    size_t n;                           /* events */
    const uint64_t *hashes;             /* (n) borrowed from the message */
    const protobuf_c_boolean *removed;  /* (n) borrowed: nonzero = evicted */
} pd_kv_events_t;

/* m borrows e's arrays. */
void pd_codec_kv_events_to_pb(const pd_kv_events_t *e, Pd__KvEvents *m);
/* Requires seq >= 1, as many removed flags as hashes, at most
 * PD_KV_EVENTS_MAX of them. out borrows m's arrays. */
int pd_codec_kv_events_from_pb(const Pd__KvEvents *m, pd_kv_events_t *out, pd_err_t *err);

/* ====== Token entries (TokenBatch) ====== */

typedef struct {
    uint64_t req;
    uint32_t epoch;
    int32_t token;
    uint32_t index;          /* in the request's output (0 = first token) */
    Pd__FinishReason finish; /* FINISH_NONE: more follow */
} pd_token_entry_t;

/* finish_reason is present only when it is not FINISH_NONE. */
void pd_codec_token_to_pb(const pd_token_entry_t *t, Pd__TokenEntry *m);
/* Requires request_id (non-zero), epoch, token and index; the token must
 * be in [0, vocab) and finish_reason a known value. */
int pd_codec_token_from_pb(const Pd__TokenEntry *m, uint32_t vocab, pd_token_entry_t *out,
                           pd_err_t *err);

#endif
