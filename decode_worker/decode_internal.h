/* decode_internal.h -- what decode.c (the role), ingress.c (DecodeTasks,
 * KV transfers) and batch.c (sequences, continuous batching) share. Not for
 * outside decode_worker/. */
#ifndef PD_DECODE_INTERNAL_H
#define PD_DECODE_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "decode.h"

#define DC_MAX_SEQS 4096  /* requests held at once (expected, waiting, running) */
#define DC_MAX_ORPHANS 64 /* KV transfers held until their DecodeTask */
#define DC_CANCELLED 256  /* recently cancelled (request, epoch): their KV is refused */
#define DC_MAX_STREAMS 256 /* layer streams being received at once (kv.transfer: layer) */
#define DC_REFUSED 256    /* recently refused streams: their later frames are refused quietly */
#define DC_MAX_EARLY 256  /* stream messages held until their DecodeTask (stream_early.c) */
#define DC_EARLY_BYTES ((size_t)64 << 20) /* and their frames' bytes, at most */

/* A DecodeTask whose KV has not come yet. */
typedef struct {
    uint64_t req;
    uint32_t epoch;
    pd_gen_params_t params;
    int32_t *hist;             /* (cap_hist) prompt + output: penalties' history */
    uint32_t n_hist, cap_hist;
    uint64_t ticket;           /* arrival order: the order sequences are admitted in */
} dc_expect_t;

/* A KV transfer whose DecodeTask has not come yet. */
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
} dc_orphan_t;

/* A stream message (KvLayer or its commit) that came before its
 * DecodeTask: the whole message, its frames moved here. */
typedef struct {
    uint64_t req;
    uint32_t epoch;
    zmq_msg_t *frames;         /* (n_frames) [0] the sender, [1] the envelope, [2..] blocks */
    uint32_t n_frames;
    size_t bytes;
    uint64_t t_ms;
} dc_early_t;

/* A layer stream being received (stream_in.c) for an expected request: its
 * blocks reserved, each layer's frames copied in as they come. */
typedef struct {
    uint64_t req;
    uint32_t epoch;
    uint8_t sender[PD_NET_ID_MAX]; /* the prefill worker's routing id */
    size_t sender_len;
    pd_kv_seq_t seq;           /* n_blocks reserved blocks */
    uint32_t n_tokens, n_blocks;
    uint32_t *next;            /* (n_layers) blocks of each layer arrived (the next one due) */
    uint32_t layers_done;      /* layers with all n_blocks */
    uint64_t t_ms;             /* its last frame */
} dc_stream_t;

typedef enum { DS_WAITING = 1, DS_RUNNING } dc_state_t;

/* A request taken through pd_decode_take. */
typedef struct {
    dc_state_t st;
    uint64_t req;
    uint32_t epoch;
    pd_gen_params_t params;
    int32_t *hist;             /* (cap_hist) prompt + output: penalties' history */
    uint32_t n_hist, cap_hist;
    pd_kv_seq_t seq;
    bool has_blocks;           /* KV in our cache (colocated, or copied in at admission) */
    zmq_msg_t *frames;         /* (n_frames) received blocks awaiting admission */
    uint32_t n_frames;
    uint32_t n_past;           /* positions in the cache */
    int32_t last_token;        /* next token to feed, at position n_past */
    uint32_t last_index;       /* its index in the output */
    bool echo_first;           /* send last_token (the prefill worker's) with the first step */
    uint64_t ticket;           /* arrival order */
    uint64_t admit_order;
} dc_seq_t;

struct pd_decode {
    pd_wkrole_env_t env;
    pd_wkengine_t *eng;        /* env.eng */
    const pd_config_t *cfg;    /* env.cfg */
    const pd_wkport_t *port;   /* env.port */
    char id[64];
    /* KV ingress */
    void *kv_in;               /* ROUTER */
    pd_zap_t *zap;             /* CURVE allow-list for it */
    char kv_endpoint[PD_CFG_STR];
    pd_pb_alloc_t alloc;
    pd_net_in_t *in;
    dc_expect_t *expects;      /* (n_expects) in arrival order */
    size_t n_expects, cap_expects;
    dc_orphan_t orphans[DC_MAX_ORPHANS];
    uint32_t n_orphans;
    struct {
        uint64_t req;
        uint32_t epoch;        /* 0 = every epoch */
    } cancelled[DC_CANCELLED]; /* ring */
    uint32_t cancelled_next;
    dc_stream_t streams[DC_MAX_STREAMS];
    uint32_t n_streams;
    struct {
        uint64_t req;
        uint32_t epoch;
    } refused[DC_REFUSED];     /* ring: streams refused (stream_in.c) */
    uint32_t refused_next;
    dc_early_t early[DC_MAX_EARLY]; /* in arrival order */
    uint32_t n_early;
    size_t early_bytes;
    uint64_t tickets;
    /* batching */
    dc_seq_t **seqs;           /* (n_seqs) waiting and running, in ticket order */
    size_t n_seqs, cap_seqs;
    uint32_t n_running;
    uint64_t admit_counter;
    dc_seq_t **step;           /* (max_fwd_seqs) the sequences in the pass being run */
    uint32_t n_step;
    uint32_t step_logit0;      /* the pass's logits row of step[0] */
    pd_worker_counters_t c;
};

static inline uint64_t dc_now_ms(const pd_decode_t *d) { return d->port->now_ms(d->port->host); }

/* How long KV waits for what it belongs to (an orphan for its DecodeTask,
 * an early stream message for it, an idle stream for its next frame):
 * half a lease, at least 200 ms. */
static inline uint64_t dc_hold_ms(const pd_decode_t *d)
{
    return d->cfg->worker.lease_ms / 2 > 200 ? d->cfg->worker.lease_ms / 2 : 200;
}

void dc_close_frames(zmq_msg_t *frames, uint32_t n);

/* ingress.c */
void dc_on_task(pd_decode_t *d, const Pd__DecodeTask *m);
void dc_on_kv(pd_decode_t *d);                 /* reads the ingress socket */
void dc_ingress_cancel(pd_decode_t *d, uint64_t req, uint32_t epoch);
void dc_ingress_timers(pd_decode_t *d);        /* orphan expiry */
void dc_ingress_drop_all(pd_decode_t *d);
void dc_expect_remove(pd_decode_t *d, size_t i);
int dc_expect_index(const pd_decode_t *d, uint64_t req, uint32_t epoch);
bool dc_was_cancelled(const pd_decode_t *d, uint64_t req, uint32_t epoch);
/* KvAck to the sender `to`; a refusal (ok false, reason not "cancelled")
 * is counted in kv_rejected and logged. */
void dc_send_ack(pd_decode_t *d, const uint8_t *to, size_t to_len, uint64_t req, uint32_t epoch,
                 bool ok, const char *reason);
/* The KV of expected (req, epoch) cannot be used: kv.load_failure applies
 * (Preempted or Error); the expectation goes. No-op when not expected. */
void dc_load_failed(pd_decode_t *d, uint64_t req, uint32_t epoch, const char *why);
/* Expected request i and its KV become one hand-off for the batcher: the
 * nb received frames, or (frames NULL) the blocks of *seq, which is then
 * emptied. 0 when taken; PD_EINVAL when n_tokens does not match the task
 * (nothing taken); another code when the batcher refused it (it told the
 * router; the frames or blocks are gone). */
int dc_deliver(pd_decode_t *d, size_t i, uint32_t n_tokens, int32_t first, zmq_msg_t *frames,
               uint32_t nb, pd_kv_seq_t *seq);

/* stream_in.c (kv.transfer: layer) */
/* A KvLayer (in->frames[0] the sender, [1] the envelope, [2..] frames). */
void dc_on_layer(pd_decode_t *d, const Pd__KvLayer *k, pd_net_in_t *in);
/* A KvTransfer with streamed set: the stream's commit. */
void dc_on_commit(pd_decode_t *d, const Pd__KvTransfer *k, pd_net_in_t *in);
/* Drops the streams of req (epoch 0: every epoch; below_epoch: only those
 * older than it), freeing their blocks; incomplete ones are counted in
 * kv_streams_dropped. */
void dc_stream_drop(pd_decode_t *d, uint64_t req, uint32_t epoch, uint32_t below_epoch,
                    const char *why);
bool dc_stream_refused(const pd_decode_t *d, uint64_t req, uint32_t epoch);
/* Its later frames are refused quietly (a ring of DC_REFUSED). */
void dc_stream_mark_refused(pd_decode_t *d, uint64_t req, uint32_t epoch);
void dc_stream_timers(pd_decode_t *d);      /* idle streams */
void dc_stream_drop_all(pd_decode_t *d);
int dc_stream_check(const pd_decode_t *d, pd_err_t *why);

/* stream_early.c: stream messages that came before their DecodeTask (it
 * travels router -> decode while the layers travel router -> prefill ->
 * decode, on another socket, so either may be read first). */
/* Whether a stream message for (req, epoch), which this worker does not
 * expect, may still get its DecodeTask: no task or sequence of req at this
 * epoch or a newer one, not cancelled, not refused. */
bool dc_early_wanted(const pd_decode_t *d, uint64_t req, uint32_t epoch);
bool dc_early_has(const pd_decode_t *d, uint64_t req, uint32_t epoch);
/* Holds the message (its frames are moved out of in): 0, or -1 when the
 * hold is full or out of memory (in untouched). */
int dc_early_hold(pd_decode_t *d, uint64_t req, uint32_t epoch, pd_net_in_t *in);
/* (req, epoch)'s task came: its held messages, in arrival order, go
 * through the stream path as if they arrived now. */
void dc_early_replay(pd_decode_t *d, uint64_t req, uint32_t epoch);
/* Forgets req's held messages (epoch 0: every epoch): the first refused to
 * its sender with why (not counted when why is "cancelled"), the rest
 * counted in kv_rejected quietly; marked refused. */
void dc_early_drop(pd_decode_t *d, uint64_t req, uint32_t epoch, const char *why);
void dc_early_timers(pd_decode_t *d);       /* held past worker.lease_ms / 2: refused */
void dc_early_drop_all(pd_decode_t *d);
int dc_early_check(const pd_decode_t *d, pd_err_t *why);

/* batch.c */
int dc_seq_index(const pd_decode_t *d, uint64_t req, uint32_t epoch);
void dc_seq_remove(pd_decode_t *d, size_t i);
/* pd_decode_take with the request's place in the admission order. */
int dc_take(pd_decode_t *d, pd_kv_handoff_t *h, uint64_t ticket);
bool dc_ready(const pd_decode_t *d);
/* One decode step in two halves (wkrole.h fill / done): admit, make room or
 * preempt, put every running sequence's next token in st; then sample,
 * send one TokenBatch, retire. */
uint32_t dc_fill(pd_decode_t *d, pd_wkstep_t *st);
void dc_done(pd_decode_t *d, const char *fail, uint64_t us);
uint32_t dc_n_waiting(const pd_decode_t *d);

#endif
