/* prefill.h -- the prefill role: takes PrefillTasks, packs several prompts
 * into one forward pass (prefill.max_batch_tokens / max_batch_size; a
 * prompt longer than what is left of the budget goes on in the next pass;
 * in a colocated worker, chunks that share a pass with the decode tokens:
 * wkrole.h pd_wkrole_run_mixed), samples each first token
 * and streams it to the router, then hands the request with its KV over:
 * to the decode worker the router chose, as one multipart KvTransfer of
 * zero-copy block frames, holding the blocks under a lease (worker.lease_ms)
 * until that worker's KvAck; or, in a colocated worker, to the decode role
 * of the same process through a pd_kv_sink_t (runtime/handoff.h).
 *
 * An opaque role driven by a worker host (runtime/wkrole.h). It knows
 * nothing of the decode role but the hand-off.
 */
#ifndef PD_PREFILL_H
#define PD_PREFILL_H

#include <stdint.h>

#include "base/err.h"
#include "proto/pd.pb-c.h"
#include "runtime/handoff.h"
#include "runtime/wkrole.h"

typedef struct pd_prefill pd_prefill_t;

/* A prefill role in env. colocated: where requests whose decode worker is
 * this worker go (NULL: such a task is refused). Copied. NULL on failure. */
pd_prefill_t *pd_prefill_new(const pd_wkrole_env_t *env, const pd_kv_sink_t *colocated,
                             pd_err_t *err);
/* Frees every task and its blocks. Call after the ZeroMQ context ended
 * (zero-copy frames may still read blocks until then). Accepts NULL. */
void pd_prefill_free(pd_prefill_t *p);

/* The role's table for its host. */
pd_wkrole_t pd_prefill_role(pd_prefill_t *p);

/* A KvAck from a decode worker, as its egress socket reads it (also the
 * worker fuzz target's entry). */
void pd_prefill_on_ack(pd_prefill_t *p, const Pd__KvAck *a);

/* Tasks held (queued, shipping or leased): for tests. */
uint32_t pd_prefill_n_tasks(const pd_prefill_t *p);

#endif
