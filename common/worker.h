/* worker.h -- the worker process: prefill, decode, or both (colocated).
 *
 * pd-prefill and pd-decode are the same program with another default role
 * (their main() calls pd_worker_main), so `--role both` works from either
 * and the colocated worker shares every line with the disaggregated ones.
 *
 * One reactor (worker.c) owns every socket:
 *   router link   DEALER -> router backend: Register, Heartbeat, TokenBatch,
 *                 Preempted, Error / RegisterReply, Heartbeat, PrefillTask,
 *                 DecodeTask, Cancel, Drain, KvResync (and KvEvents out)
 *   KV ingress    ROUTER (decode, both): KvTransfer + block frames / KvAck
 *   KV egress     one DEALER per decode worker's endpoint (prefill)
 * Each loop turn: read every socket, run at most one prefill batch
 * (worker_prefill.c) and one decode step (worker_decode.c), then timers
 * (heartbeats, router liveness, KV leases). The compute thread pool inside
 * the engine is the only other concurrency and touches no sockets.
 */
#ifndef PD_WORKER_H
#define PD_WORKER_H

#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "proto/codec.h"
#include "runtime/config.h"
#include "runtime/kvevents.h"
#include "engine/forward.h"
#include "engine/kvcache.h"
#include "engine/model.h"
#include "runtime/net.h"
#include "runtime/proc.h"
#include "engine/sampler.h"
#include "engine/tokenizer.h"

#define WK_MAX_EGRESS 64       /* decode endpoints a prefill worker ships to */
#define WK_EGRESS_IDLE_MS 5000 /* an egress socket unused this long is closed */
#define WK_MAX_ORPHANS 64      /* KV transfers held until their DecodeTask */
#define WK_OUTBOX 4096         /* messages to the router waiting on back-pressure */
#define WK_CANCELLED 256       /* recently cancelled (request, epoch): their KV is refused */

typedef enum { WK_ROLE_PREFILL = 1, WK_ROLE_DECODE = 2, WK_ROLE_BOTH = 3 } wk_role_t;

/* What a worker needs to generate for one request: pd_gen_params_t
 * (proto/codec.h, from Pd__GenParams). */
typedef pd_gen_params_t wk_params_t;

/* ====== Prefill ====== */

typedef enum { PT_QUEUED = 0, PT_SHIP, PT_LEASED } pt_state_t;

typedef struct wk_egress wk_egress_t;

typedef struct {
    pt_state_t st;
    uint64_t req;
    uint32_t epoch;
    int32_t *tokens;           /* (n_tokens) prompt + re-prefilled output */
    uint32_t n_tokens, n_done; /* positions computed so far */
    wk_params_t params;
    char decode_id[64];
    char kv_endpoint[PD_CFG_STR];
    pd_kv_seq_t seq;           /* its blocks in our cache */
    bool cancelled;
    int32_t first_token;
    uint64_t t_arrive_ms, t_ship_ms, lease_deadline_ms;
    uint64_t t_sent_us;        /* when the transfer went out */
    wk_egress_t *eg;
    atomic_int frames_out;     /* block frames ZeroMQ still holds (zero-copy) */
    bool acked;
} wk_task_t;

struct wk_egress {
    char endpoint[PD_CFG_STR];
    void *sock;                /* DEALER to a decode worker's KV ingress */
    uint64_t last_used_ms;     /* last shipment (closed after WK_EGRESS_IDLE_MS idle) */
};

/* ====== Decode ====== */

typedef enum { DS_EXPECT = 0, DS_WAITING, DS_RUNNING } ds_state_t;

typedef struct {
    ds_state_t st;
    uint64_t req;
    uint32_t epoch;
    wk_params_t params;
    int32_t *hist;             /* (cap_hist) prompt + output: penalties' history */
    uint32_t n_hist, cap_hist;
    pd_kv_seq_t seq;
    bool has_blocks;           /* KV already in our cache (colocated) */
    zmq_msg_t *frames;         /* (n_frames) received blocks awaiting admission */
    uint32_t n_frames;
    uint32_t n_past;           /* positions in the cache */
    int32_t last_token;        /* next token to feed, at position n_past */
    uint32_t last_index;       /* its index in the output */
    bool echo_first;           /* send last_token (the prefill worker's) with the first step */
    uint64_t admit_order;
    uint64_t t_ms;
} wk_seq_t;

typedef struct {
    uint64_t req;
    uint32_t epoch;
    uint32_t n_tokens;
    int32_t first_token;
    zmq_msg_t *frames;
    uint32_t n_frames;
    uint8_t sender[PD_NET_ID_MAX];
    size_t sender_len;
    uint64_t t_ms;
} wk_orphan_t;

typedef pd_worker_counters_t wk_counters_t; /* proto/codec.h */

typedef struct {
    void *data;
    size_t len;
} wk_out_t;

typedef struct {
    pd_config_t cfg;
    wk_role_t role;
    char id[64];
    volatile sig_atomic_t *stop;
    pd_proc_health_t *health;  /* --health-file (proc.h) */
    bool draining;
    bool refused;              /* the router refused our Register */
    uint64_t drain_deadline_ms;
    /* engine */
    pd_model_t *model;
    pd_tok_t *tok;
    pd_kv_t *kv;
    pd_kvev_t *kvev;           /* prefix cache events (NULL: kv.prefix_caching off) */
    pd_engine_t *engine;
    pd_sampler_scratch_t *scratch;
    uint32_t vocab, max_seq_len, max_fwd_tokens, max_fwd_seqs;
    size_t block_bytes;
    float *logits;             /* (max_fwd_seqs, vocab) */
    int32_t *b_tokens, *b_pos, *b_seq; /* (max_fwd_tokens) batch being built */
    bool *b_want;              /* (max_fwd_tokens) */
    const int32_t **b_tables;  /* (max_fwd_seqs) */
    uint32_t *b_ntable;        /* (max_fwd_seqs) */
    /* sockets */
    void *zctx;
    void *rsock;               /* DEALER to the router */
    void *kv_in;               /* ROUTER, KV ingress (decode, both) */
    pd_zap_t *zap;             /* CURVE allow-list for KV ingress */
    char kv_endpoint[PD_CFG_STR]; /* announced to the router (advertised, addr.h) */
    wk_egress_t egress[WK_MAX_EGRESS];
    uint32_t n_egress;
    pd_pb_alloc_t alloc;
    pd_net_in_t *in;
    wk_out_t outbox[WK_OUTBOX];
    uint32_t out_head, out_len;
    /* router link */
    bool registered;
    bool reg_sent;             /* the last Register left the socket */
    uint64_t last_router_ms, last_hb_ms, last_reg_ms;
    uint32_t hb_ms, liveness;
    /* prefill */
    wk_task_t **tasks;         /* (n_tasks) queued, shipping and leased, in arrival order */
    uint32_t n_tasks, cap_tasks;
    /* decode */
    wk_seq_t **seqs;           /* (n_seqs) expected, waiting and running */
    uint32_t n_seqs, cap_seqs;
    uint32_t n_running;
    uint64_t admit_counter;
    wk_orphan_t orphans[WK_MAX_ORPHANS];
    uint32_t n_orphans;
    struct {
        uint64_t req;
        uint32_t epoch;        /* 0 = every epoch */
    } cancelled[WK_CANCELLED]; /* ring */
    uint32_t cancelled_next;
    wk_counters_t c;
    double prefill_us_per_token;  /* running estimate, bounds a pass's length */
} wk_t;

/* Runs a worker process: parses flags, loads the model, registers with the
 * router and serves until SIGINT/SIGTERM (then drains). Returns the exit
 * status for main. */
int pd_worker_main(int argc, char **argv, wk_role_t default_role);

/* ====== Shared by worker*.c ====== */

/* Converts and checks params from the wire (pd_codec_params_from_pb
 * against this worker's vocabulary and context). */
int wk_params_from_pb(const wk_t *w, const Pd__GenParams *p, wk_params_t *out, pd_err_t *err);
/* Why generation ends after token (at output index, sequence position),
 * or FINISH_NONE. */
Pd__FinishReason wk_finish_check(const wk_t *w, const wk_params_t *p, int32_t token,
                                 uint32_t index, uint32_t position);
/* Queues m for the router (sent now unless back-pressure holds it). */
void wk_send_router(wk_t *w, const Pd__Msg *m);
void wk_send_error(wk_t *w, uint64_t req, Pd__ErrorCode code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void wk_send_preempted(wk_t *w, uint64_t req, uint32_t epoch, uint32_t n_generated,
                       const char *why);
/* One message payload from the router, as received: unpacks it under
 * w->alloc's budget and hands it to its handler (every field validated
 * there). The socket loop and tests/fuzz/fuzz_proto_worker.c enter here. */
void wk_on_router_payload(wk_t *w, const void *data, size_t len);

/* worker_prefill.c */
void wk_prefill_on_task(wk_t *w, const Pd__PrefillTask *t);
void wk_prefill_on_ack(wk_t *w, const Pd__KvAck *a);
void wk_prefill_cancel(wk_t *w, uint64_t req, uint32_t epoch);
bool wk_prefill_ready(wk_t *w);  /* a batch should run now */
void wk_prefill_run(wk_t *w);    /* one batched forward pass */
void wk_prefill_timers(wk_t *w); /* shipping retries, lease expiry, freeing */
uint32_t wk_prefill_queued_tokens(const wk_t *w);
/* Tokens one prefill pass may take now: prefill.max_batch_tokens, capped
 * so a pass stays within half a heartbeat at the measured speed. */
uint32_t wk_prefill_pass_tokens(const wk_t *w);
bool wk_prefill_busy(const wk_t *w); /* anything queued, shipping or leased */
void wk_prefill_poll_egress(wk_t *w);
void wk_prefill_drop_all(wk_t *w);
/* Sends the router what changed in the prefix cache (KvEvents), if on. */
void wk_prefill_kv_events(wk_t *w);

/* worker_decode.c */
void wk_decode_on_task(wk_t *w, const Pd__DecodeTask *t);
void wk_decode_on_kv(wk_t *w);   /* read the KV ingress socket */
/* One KV message as received on the ingress ROUTER: in->frames[0] the
 * sender's id, [1] the KvTransfer envelope, [2..] block frames (n_frames >=
 * 2). Validates everything, acks or refuses, keeps the frames it accepts
 * (taken out of in). Used by wk_decode_on_kv and the worker fuzz target. */
void wk_decode_on_transfer(wk_t *w, pd_net_in_t *in);
void wk_decode_cancel(wk_t *w, uint64_t req, uint32_t epoch);
/* Colocated hand-off: takes t's blocks and tokens as a waiting sequence. */
int wk_decode_adopt(wk_t *w, wk_task_t *t);
bool wk_decode_ready(const wk_t *w); /* something to admit or run */
void wk_decode_step(wk_t *w);    /* admit, one decode step, retire */
void wk_decode_timers(wk_t *w);  /* orphan expiry */
uint32_t wk_decode_n_waiting(const wk_t *w);
bool wk_decode_busy(const wk_t *w);
void wk_decode_drop_all(wk_t *w);

#endif
