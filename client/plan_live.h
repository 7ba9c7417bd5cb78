/* plan_live.h -- what `pd-plan --router` observes of a running cluster.
 *
 * Two snapshots `window_s` apart of the router's status (libpdclient:
 * workers by role and state, their counters) and of its /metrics (the HTTP
 * front: finished and failed requests, prompt and output tokens, the TTFT
 * and TPOT histograms). The differences are the load the cluster served in
 * the window and how it served it; pd-plan sizes a cluster for that load.
 *
 * /metrics is untrusted text: every line is bounded by httpc (1 MiB body),
 * every number is parsed with a range check, unknown series are ignored and
 * a histogram keeps at most PD_OBS_MAX_BUCKETS buckets.
 */
#ifndef PD_PLAN_LIVE_H
#define PD_PLAN_LIVE_H

#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

#include "base/err.h"

#define PD_OBS_MAX_BUCKETS 40

/* A histogram's increase over the window: cumulative counts per bound. */
typedef struct {
    uint32_t n;
    double le[PD_OBS_MAX_BUCKETS];      /* upper bounds, seconds, ascending; +Inf last */
    double count[PD_OBS_MAX_BUCKETS];   /* observations <= le[i] in the window */
} pd_obs_hist_t;

typedef struct {
    double window_s;                    /* measured between the snapshots */
    uint32_t n_prefill, n_decode, n_both; /* workers taking work at the end (state ready) */
    uint32_t n_other;                   /* cordoned or draining at the end */
    double done, failed;                /* requests finished / failed in the window */
    double prompt_tokens, output_tokens; /* of the finished ones */
    uint32_t queued, active;            /* router's queue and requests in flight at the end */
    pd_obs_hist_t ttft, tpot;
    /* Worker-side work in the window (status counters of workers present at
     * both ends): prefill passes, prompt tokens and their forward time;
     * decode steps, tokens and time. */
    double prefill_passes, prefill_tokens, prefill_ms;
    double decode_steps, decode_tokens, decode_ms;
} pd_plan_obs_t;

/* Observes the cluster at router (a libpdclient address; NULL = $PD_ROUTER
 * or the local default) and metrics_url (http://HOST:PORT, the router's
 * http.listen) for window_s seconds. 0, or PD_EIO / PD_EINVAL with err
 * naming what could not be read. */
int pd_plan_observe(const char *router, const char *metrics_url, double window_s,
                    pd_plan_obs_t *obs, pd_err_t *err);

/* The fraction of a window's observations at or under x seconds, by linear
 * interpolation inside the bucket that holds x (the Prometheus way); -1
 * when the histogram is empty. */
double pd_obs_fraction_le(const pd_obs_hist_t *h, double x);

/* The q-quantile (0..1) in seconds, interpolated the same way; -1 when
 * empty; the largest finite bound when it falls in the +Inf bucket. */
double pd_obs_quantile(const pd_obs_hist_t *h, double q);

/* Parses Prometheus text (the router's /metrics) into a snapshot: the
 * counters above and the two histograms' cumulative counts (not deltas).
 * For the fuzz and unit tests; pd_plan_observe uses it. 0 or PD_EINVAL. */
typedef struct {
    double done, failed, prompt_tokens, output_tokens;
    pd_obs_hist_t ttft, tpot;
} pd_obs_metrics_t;
int pd_obs_parse_metrics(const char *text, size_t len, pd_obs_metrics_t *m, pd_err_t *err);

/* What was observed, as text lines on f (the SLOs, ms, say what fraction
 * of requests met each) or as a JSON object (caller owns it). */
void pd_plan_obs_print(const pd_plan_obs_t *o, double ttft_slo_ms, double tpot_slo_ms, FILE *f);
json_t *pd_plan_obs_json(const pd_plan_obs_t *o, double ttft_slo_ms, double tpot_slo_ms);

#endif
