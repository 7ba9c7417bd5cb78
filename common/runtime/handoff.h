/* handoff.h -- the one thing that passes from prefill to decode: a
 * request whose prompt has been read, with its KV.
 *
 * A prefill role fills one after its pass and gives it to a sink: in a
 * colocated worker (--role both) the sink is the decode role of the same
 * process and the KV stays in the shared cache (seq); between processes the
 * KV goes over the wire (KvTransfer + block frames) and the decode role's
 * ingress, pairing it with the router's DecodeTask, fills one with the
 * received frames. Either way the decode role takes it through the same
 * entry (pd_decode_take), so both paths admit, batch and fail alike.
 */
#ifndef PD_HANDOFF_H
#define PD_HANDOFF_H

#include <stdbool.h>
#include <stdint.h>

#include <zmq.h>

#include "engine/kvcache.h"
#include "proto/codec.h"

typedef struct {
    uint64_t req;
    uint32_t epoch;
    pd_gen_params_t params;
    int32_t *hist;         /* (cap_hist) prompt + generated tokens, n_hist of them; owned */
    uint32_t n_hist, cap_hist;
    int32_t first_token;   /* sampled by prefill: fed next, at position n_hist */
    bool echo_first;       /* the receiver streams first_token again with its first
                            * step (the sender's copy went another way, which can
                            * lose it) */
    /* The KV of positions [0, n_hist), exactly one of: */
    pd_kv_seq_t seq;       /* blocks in this process's cache (colocated) */
    zmq_msg_t *frames;     /* (n_frames) received blocks, block_bytes each; owned */
    uint32_t n_frames;
} pd_kv_handoff_t;

/* Frees what h still owns (history, frames, blocks of kv) and empties it.
 * Accepts an empty h. */
void pd_kv_handoff_release(pd_kv_handoff_t *h, pd_kv_t *kv);

/* Where a prefill role hands its requests over in-process. take returns 0
 * when it took h (h is then empty), or a negative code: it refused and told
 * the router (Preempted), and h is still the caller's to release. */
typedef struct {
    void *ctx;
    int (*take)(void *ctx, pd_kv_handoff_t *h);
} pd_kv_sink_t;

#endif
