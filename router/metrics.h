/* metrics.h -- the router's Prometheus metrics (GET /metrics).
 *
 * Names follow vLLM's convention with our prefix, "pdserve:": a dashboard
 * built for vLLM needs only the prefix changed. Two sources:
 *
 *   - per-request observations, pushed by the router's reactor when a
 *     request ends (pd_metrics_request_done / _failed) or is preempted:
 *     counters and histograms kept here;
 *   - cluster state (requests running and waiting, workers by role and
 *     state, KV use per worker, KV transfer totals), read from a
 *     ClusterStatus at scrape time by pd_metrics_render.
 *
 * Thread-safety: one mutex guards the store. The reactor thread writes,
 * the HTTP threads render; each call holds the lock for a few hundred ns.
 * Every function accepts m == NULL and then does nothing, so the router
 * runs the same with or without the HTTP front.
 */
#ifndef PD_METRICS_H
#define PD_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"
#include "proto/pd.pb-c.h"

typedef struct pd_metrics pd_metrics_t;

/* model_name labels every series. NULL and err on allocation failure. */
pd_metrics_t *pd_metrics_new(const char *model_name, pd_err_t *err);
void pd_metrics_free(pd_metrics_t *m); /* accepts NULL */

/* A request ended with a final chunk. finish: Pd__FinishReason; times in
 * microseconds from the request's acceptance (ttft_us 0 = no token). */
void pd_metrics_request_done(pd_metrics_t *m, int finish, uint32_t n_prompt, uint32_t n_gen,
                             uint64_t queue_us, uint64_t ttft_us, uint64_t e2e_us);
/* A request ended with an Error (code: Pd__ErrorCode). */
void pd_metrics_request_failed(pd_metrics_t *m, int code);
/* A decode worker gave a request back (KV pressure). */
void pd_metrics_preempted(pd_metrics_t *m);

/* Prometheus text format (version 0.0.4) of everything, with the cluster
 * gauges from cs (NULL: those series are left out). Returns a malloc'd
 * NUL-terminated string (caller frees), or NULL on allocation failure. */
char *pd_metrics_render(pd_metrics_t *m, const Pd__ClusterStatus *cs);

/* The OpenAI / vLLM name of a finish reason: "length", "stop", "abort"... */
const char *pd_metrics_finish_name(int finish);

#endif
