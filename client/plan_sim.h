/* plan_sim.h -- pd-plan's cost model and its discrete-event simulation of
 * a P prefill + D decode cluster under the router's and the workers' rules
 * (the rules themselves are described at the top of client/pd-plan.c and in
 * docs/benchmarks.md "Sizing clusters").
 *
 * Prefix caching: with prefix_len > 0 the first 1 + prefix_len tokens of
 * every prompt (BOS included) are one of num_prefixes shared prefixes, drawn
 * uniformly per request. Each prefill worker keeps the prefixes it prefilled
 * last (LRU, as many as prefill_blocks holds); a request whose prefix its
 * worker holds when its prefill starts computes only the rest (whole blocks
 * only, at most (T - 1) / block_size of them, as the worker does), and its
 * chunks' attention work counts from the cached offset. The routing policy is
 * the router's (router.routing): kv_aware weighs the tokens a worker would
 * have to compute against its queued ones, least_loaded looks at the queue
 * alone, round_robin at neither.
 */
#ifndef PD_PLAN_SIM_H
#define PD_PLAN_SIM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The fitted costs (pd-plan.c, from a pd-bench --profile). */
typedef struct {
    double pre[3];  /* prefill_ms = pre[0] + pre[1]*tokens + pre[2]*attention work */
    double dec[3];  /* decode_ms(B, C) = dec[0] + dec[1]*B + dec[2]*B*C */
    double kv[2];   /* kv_ms(T) = kv[0] + kv[1]*T */
    double min_pre_ms, min_dec_ms; /* floors: the fastest measured pass/step */
    double overhead_ms;
    uint32_t block_size, kv_blocks;
    uint32_t prefill_blocks; /* a prefill worker's KV pool (prefix cache room); 0 = unknown */
    double inf_dec, inf_pre; /* interference: a step / pass beside the other phase costs x this */
    char model[128];
} plan_model_t;

typedef enum {
    PLAN_ROUTE_KV_AWARE = 0,
    PLAN_ROUTE_LEAST_LOADED,
    PLAN_ROUTE_ROUND_ROBIN,
} plan_route_t;

/* The load and the cluster's limits. */
typedef struct {
    double rate;                /* requests/s (Poisson) unless arrivals */
    const double *arrivals;     /* (num_requests) s from the first, ascending; or NULL */
    uint32_t num_requests, input_len, output_len;
    uint32_t prefill_batch_tokens, prefill_batch_size, decode_batch_size;
    uint64_t seed;
    double ttft_slo_ms, tpot_slo_ms;
    uint32_t prefix_len, num_prefixes; /* 0: no shared prefixes */
    uint32_t prefix_cache_blocks;      /* per prefill worker; 0: the model's prefill_blocks */
    plan_route_t routing;
} plan_load_t;

typedef struct {
    double goodput, attainment, duration_s, p90_ttft_ms, p90_tpot_ms, mean_ttft_ms, mean_tpot_ms;
    double prefix_hit_rate;     /* prompt tokens served from cache / prompt tokens */
    size_t good, n;
} plan_result_t;

/* The cost of one prefill pass of `tokens` tokens with attention work
 * `att` (a chunk of c tokens at offset o counts c * (2o + c)), a decode
 * step of `batch` sequences at mean context ctx, a KV transfer. */
double plan_prefill_ms(const plan_model_t *m, double tokens, double att);
double plan_decode_ms(const plan_model_t *m, double batch, double ctx);
double plan_kv_ms(const plan_model_t *m, double tokens);

/* Simulates P prefill + D decode workers under load l; fills res. 0, or
 * -1 when out of memory. */
int plan_simulate(const plan_load_t *l, const plan_model_t *m, uint32_t P, uint32_t D,
                  plan_result_t *res);

const char *plan_route_name(plan_route_t r);
/* "kv_aware", "least_loaded", "round_robin": 0, else -1. */
int plan_route_parse(const char *s, plan_route_t *out);

#endif
