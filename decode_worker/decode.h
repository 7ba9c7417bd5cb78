/* decode.h -- the decode role: takes requests whose prompt has been read,
 * with their KV, and runs continuous batching: every step admits waiting
 * sequences within decode.max_batch_size and the free KV blocks, runs one
 * forward pass for the whole running batch, samples, sends one TokenBatch
 * and retires finished sequences at once, freeing their blocks. Under
 * block pressure the youngest sequence is preempted: its blocks are freed
 * and the router re-prefills it. A request comes in one way,
 * pd_decode_take (runtime/handoff.h): from the KV ingress (a DecodeTask
 * from the router paired with a KvTransfer from a prefill worker, checked
 * block by block, or with a layer stream: KvLayer messages copied into
 * reserved blocks, then their commit) or from the prefill role of the same
 * process (colocated).
 *
 * An opaque role driven by a worker host (runtime/wkrole.h). It knows
 * nothing of the prefill role but the hand-off.
 */
#ifndef PD_DECODE_H
#define PD_DECODE_H

#include <stdint.h>

#include "base/err.h"
#include "runtime/handoff.h"
#include "runtime/net.h"
#include "runtime/wkrole.h"

typedef struct pd_decode pd_decode_t;

/* A decode role in env: binds its KV ingress (decode.kv_endpoint; with
 * security.curve, a ZAP handler admits only the allowed keys). NULL on
 * failure (err says). */
pd_decode_t *pd_decode_new(const pd_wkrole_env_t *env, pd_err_t *err);
/* Frees every sequence and its blocks. After the ZeroMQ context ended.
 * Accepts NULL. */
void pd_decode_free(pd_decode_t *d);

pd_wkrole_t pd_decode_role(pd_decode_t *d);
/* The KV ingress endpoint Register announces (the bound one, or the
 * advertised one: runtime/addr.h). */
const char *pd_decode_kv_endpoint(const pd_decode_t *d);

/* The one entry of a request with its KV. Returns 0 when taken (h is then
 * empty: the history and the blocks or frames are the role's), or a
 * negative code when it cannot hold it (table full, out of memory): the
 * router was told (Preempted) and h is still the caller's. */
int pd_decode_take(pd_decode_t *d, pd_kv_handoff_t *h);
/* pd_decode_take as a sink, for a colocated prefill role. */
pd_kv_sink_t pd_decode_sink(pd_decode_t *d);

/* One KV message as received on the ingress ROUTER: in->frames[0] the
 * sender's id, [1] the KvTransfer or KvLayer envelope, [2..] block (or
 * block-layer) frames (n_frames >= 2). Validates everything, acks or refuses, keeps the frames it accepts
 * (taken out of in). The socket loop and the worker fuzz target enter here. */
void pd_decode_on_transfer(pd_decode_t *d, pd_net_in_t *in);

/* What the role holds (for tests): DecodeTasks waiting for KV, sequences
 * waiting or running, KV transfers waiting for their DecodeTask. */
typedef struct {
    uint32_t expected, waiting, running, orphans;
    uint32_t streams; /* layer streams being received (kv.transfer: layer) */
    uint32_t early;   /* stream messages held until their DecodeTask */
} pd_decode_held_t;
void pd_decode_held(const pd_decode_t *d, pd_decode_held_t *out);

/* Checks the role's invariants (histories within capacity, received frames
 * matching positions, counts): 0, or PD_EINVAL with why. For tests and the
 * fuzz target. */
int pd_decode_check(const pd_decode_t *d, pd_err_t *why);

#endif
