/* worker.h -- the worker process, as pd-prefill and pd-decode run it.
 *
 * Both programs are this one with another default role (--role overrides
 * it), so `--role both` works from either. It loads the engine
 * (runtime/wkengine.h), builds the roles --role asks for
 * (prefill_worker/prefill.h, decode_worker/decode.h) and gives them to a
 * worker host (runtime/wkhost.h), which registers with the router and runs
 * the loop. A colocated worker (--role both) wires its prefill role's
 * hand-off to its decode role (runtime/handoff.h): the KV stays in the one
 * cache. This is the only place that knows both roles.
 */
#ifndef PD_WORKER_H
#define PD_WORKER_H

#include "proto/pd.pb-c.h"

/* Runs a worker process: parses flags, loads the model, registers with the
 * router and serves until SIGINT/SIGTERM (then drains). default_role:
 * PREFILL or DECODE. Returns the exit status for main. */
int pd_worker_main(int argc, char **argv, Pd__Role default_role);

#endif
