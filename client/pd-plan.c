/* pd-plan -- size a disaggregated cluster from a measured profile.
 *
 *   pd-plan --profile FILE --request-rate R --input-len I --output-len O
 *           --ttft-slo MS --tpot-slo MS [--max-workers N] [--attainment A]
 *           [--num-requests N] [--seed S] [--prefill-batch-tokens T]
 *           [--prefill-batch-size B] [--arrivals FILE]
 *           [--decode-batch-size B] [--kv-blocks N] [--json FILE]
 *           [--prefix-len P [--num-prefixes N] [--prefix-cache-blocks B]]
 *           [--routing kv_aware|least_loaded|round_robin]
 *
 * FILE is what `pd-bench --profile` measured on a live cluster: prefill pass
 * time against prompt tokens, decode step time against batch size and
 * context, KV transfer time against tokens, and the fixed overhead a first
 * token pays (router, network). pd-plan fits
 *     prefill_ms(n, T, K) = a + b*n*T + c*n*T*(2K + T)  (a pass over n prompts
 *                                   computing T tokens each after K cached ones;
 *                                   K = 0 unless the profile point says "cached";
 *                                   c >= 0; n < 1 when prompts took several passes)
 *     decode_ms(B, C) = a + b*B + c*B*C         (c >= 0)
 *     kv_ms(T)        = a + b*T
 * by least squares and runs a discrete-event simulation of P prefill and D
 * decode workers under the router's rules:
 *   - a request arrives (Poisson, rate R; or at the submit times of a
 *     pd-bench --save-requests file, --arrivals) and goes to a prefill worker
 *     by --routing (the router's router.routing): kv_aware (default) the
 *     least queued tokens + tokens the prompt would cost there (what its
 *     cached prefix does not cover), least_loaded the fewest queued tokens,
 *     round_robin in turn;
 *   - with --prefix-len P the first P tokens (after BOS) of each prompt are
 *     one of --num-prefixes shared prefixes; a prefill worker keeps the
 *     prefixes it prefilled last (LRU, as many as --prefix-cache-blocks or
 *     the profile's prefill_kv_blocks hold), and a prompt whose prefix its
 *     worker holds computes only the rest (plan_sim.h);
 *   - a prefill worker runs FIFO batches (at most --prefill-batch-size
 *     prompts and --prefill-batch-tokens tokens, the workers'
 *     prefill.max_batch_tokens: a prompt longer than what is left of it goes
 *     on in the next pass) and emits each first token when its last chunk
 *     is done (TTFT = prefill end - arrival + overhead);
 *   - the KV goes to the decode worker with the most free KV blocks, arrives
 *     after kv_ms, and joins the running batch at a step boundary when the
 *     batch has room (--decode-batch-size) and the worker has the blocks;
 *   - each decode step gives every running sequence one token;
 *   - interference (when the profile measured it, see pd-bench): a decode
 *     step costs decode_ms * (1 + (f_d - 1) * busy prefill workers / P), a
 *     prefill pass prefill_ms * (1 + (f_p - 1) * busy decode workers / D):
 *     on one machine the two phases slow each other down through the memory
 *     bus. --no-interference ignores it (prefill and decode on separate
 *     machines).
 * A request is good when TTFT <= --ttft-slo and TPOT = (last token - first
 * token) / (O - 1) <= --tpot-slo; goodput = good requests / simulated time,
 * attainment = good / all. A cluster meets the SLOs when attainment >=
 * --attainment (default 0.9). pd-plan tries every P:D with P + D <=
 * --max-workers (up to 16; above that, a binary search for the smallest D at
 * each P), prints goodput and attainment for each, and the smallest cluster
 * that meets the SLOs.
 *
 * Live: `pd-plan --router ADDR --metrics http://HOST:PORT --window S
 * --profile FILE --ttft-slo MS --tpot-slo MS` watches a running cluster for
 * S seconds (default 30; client/plan_live.h): the request rate and the mean
 * prompt and output lengths it served become --request-rate, --input-len
 * and --output-len (unless given), it prints what it saw (workers by role,
 * p90 TTFT and TPOT and the share within the SLOs, the workers' pass and step
 * times beside what the profile predicts for them) and then the plan, with
 * the change from the current P:D: which service to scale, and by how much.
 *
 * Exit: 0 a cluster meets the SLOs, 1 none within --max-workers (or, live,
 * no request finished in the window), 2 bad options or a malformed profile.
 */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "base/args.h"
#include "base/grow.h"
#include "plan_live.h"
#include "plan_sim.h"

#define EXIT_NONE 1
#define EXIT_USAGE 2
#define PLAN_EXHAUSTIVE_MAX 16 /* --max-workers up to this: try every P:D */
#define PLAN_MAX_WORKERS 100000
#define PLAN_MAX_ARRIVALS 10000000u /* --arrivals records */

/* ====== Options ====== */

typedef struct {
    const char *profile_path, *json_path;
    double rate, ttft_slo_ms, tpot_slo_ms, attainment;
    uint32_t input_len, output_len, max_workers, num_requests;
    uint32_t prefill_batch_tokens, prefill_batch_size, decode_batch_size, kv_blocks;
    uint64_t seed;
    const char *arrivals_path; /* --arrivals: replay these submit times */
    bool no_interference;      /* --no-interference: ignore the profile's factors */
    const char *router, *metrics_url; /* live: --router, --metrics */
    double window_s;           /* live: --window */
    double *arrivals;          /* (num_requests) seconds from the first, ascending */
    uint32_t prefix_len, num_prefixes, prefix_cache_blocks; /* shared prefixes (plan_sim.h) */
    plan_route_t routing;      /* --routing, the router's router.routing */
} opts_t;

/* The simulation's view of the options. */
static plan_load_t load_of(const opts_t *o)
{
    return (plan_load_t){ .rate = o->rate, .arrivals = o->arrivals,
                          .num_requests = o->num_requests, .input_len = o->input_len,
                          .output_len = o->output_len,
                          .prefill_batch_tokens = o->prefill_batch_tokens,
                          .prefill_batch_size = o->prefill_batch_size,
                          .decode_batch_size = o->decode_batch_size, .seed = o->seed,
                          .ttft_slo_ms = o->ttft_slo_ms, .tpot_slo_ms = o->tpot_slo_ms,
                          .prefix_len = o->prefix_len, .num_prefixes = o->num_prefixes,
                          .prefix_cache_blocks = o->prefix_cache_blocks, .routing = o->routing };
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* --arrivals FILE: pd-bench --save-requests records (one JSON object per
 * line); their start_ms become the simulated arrival times, so a
 * prediction and a measurement see the very same arrivals (no sampling
 * noise between them). Sets o->arrivals, o->num_requests and, unless
 * given, o->rate (requests / span). */
static int load_arrivals(opts_t *o)
{
    FILE *f = fopen(o->arrivals_path, "r");
    if (f == NULL) {
        fprintf(stderr, "pd-plan: --arrivals %s: %s\n", o->arrivals_path, strerror(errno));
        return -1;
    }
    size_t n = 0, cap = 0, line_no = 0;
    double *t = NULL;
    char *line = NULL;
    size_t line_cap = 0;
    int rc = -1;
    while (getline(&line, &line_cap, f) > 0) {
        line_no++;
        if (line[0] == '\n')
            continue;
        json_error_t je;
        json_t *j = json_loads(line, 0, &je);
        json_t *v = json_is_object(j) ? json_object_get(j, "start_ms") : NULL;
        double x = json_is_number(v) ? json_number_value(v) : -1;
        json_decref(j);
        if (!(x >= 0 && x < 1e12)) {
            fprintf(stderr, "pd-plan: --arrivals %s: line %zu: no start_ms >= 0 (a pd-bench "
                            "--save-requests record?)\n", o->arrivals_path, line_no);
            goto done;
        }
        if (n >= PLAN_MAX_ARRIVALS || pd_grow((void **)&t, &cap, n + 1, sizeof *t, 256) != 0) {
            fprintf(stderr, "pd-plan: --arrivals %s: too many records\n", o->arrivals_path);
            goto done;
        }
        t[n++] = x / 1000.0;
    }
    if (n == 0) {
        fprintf(stderr, "pd-plan: --arrivals %s: no records\n", o->arrivals_path);
        goto done;
    }
    qsort(t, n, sizeof *t, cmp_double);
    for (size_t i = n; i-- > 0;)
        t[i] -= t[0];
    o->arrivals = t;
    o->num_requests = (uint32_t)n;
    if (o->rate < 0)
        o->rate = t[n - 1] > 0 ? (double)(n - 1) / t[n - 1] : 1;
    t = NULL;
    rc = 0;
done:
    free(t);
    free(line);
    fclose(f);
    return rc;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: pd-plan --profile FILE --request-rate R --input-len I --output-len O\n"
               "               --ttft-slo MS --tpot-slo MS [--max-workers N] [--attainment A]\n"
               "               [--num-requests N] [--seed S] [--prefill-batch-tokens T]\n"
               "               [--prefill-batch-size B] [--arrivals FILE]\n"
               "               [--decode-batch-size B] [--kv-blocks N] [--no-interference]\n"
               "               [--prefix-len P [--num-prefixes N] [--prefix-cache-blocks B]]\n"
               "               [--routing kv_aware|least_loaded|round_robin] [--json FILE]\n"
               "       pd-plan --router ADDR --metrics http://HOST:PORT [--window S] --profile FILE\n"
               "               --ttft-slo MS --tpot-slo MS [the options above]\n"
               "FILE comes from `pd-bench --profile FILE`. Exit: 0 a cluster meets the SLOs,\n"
               "1 none within --max-workers, 2 bad options or profile.\n");
}

static int parse_double(const char *opt, const char *s, double lo, double hi, double *out)
{
    return pd_arg_double("pd-plan", opt, s, lo, hi, out);
}

static int parse_u32(const char *opt, const char *s, uint32_t lo, uint32_t hi, uint32_t *out)
{
    return pd_arg_u32("pd-plan", opt, s, lo, hi, out);
}

/* 0, 1 for --help, -1 on a bad option (message printed). */
static int parse_args(int argc, char **argv, opts_t *o)
{
    memset(o, 0, sizeof *o);
    o->rate = o->ttft_slo_ms = o->tpot_slo_ms = -1;
    o->attainment = 0.9;
    o->max_workers = 8;
    o->num_requests = 2000;
    o->prefill_batch_tokens = 2048; /* configs/example-full.yaml defaults */
    o->prefill_batch_size = 16;
    o->decode_batch_size = 32;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help"))
            return 1;
        if (!strcmp(a, "--no-interference")) {
            o->no_interference = true;
            continue;
        }
        if (v == NULL) {
            fprintf(stderr, "pd-plan: %s: unknown option or missing value (--help for usage)\n", a);
            return -1;
        }
        i++;
        int rc = 0;
        if (!strcmp(a, "--profile"))
            o->profile_path = v;
        else if (!strcmp(a, "--router"))
            o->router = v;
        else if (!strcmp(a, "--metrics"))
            o->metrics_url = v;
        else if (!strcmp(a, "--window"))
            rc = parse_double(a, v, 1, 86400, &o->window_s);
        else if (!strcmp(a, "--json"))
            o->json_path = v;
        else if (!strcmp(a, "--request-rate")) {
            rc = parse_double(a, v, -1e12, 1e12, &o->rate);
            if (rc == 0 && o->rate <= 0) {
                fprintf(stderr, "pd-plan: --request-rate: %s must be > 0\n", v);
                rc = -1;
            }
        } else if (!strcmp(a, "--ttft-slo"))
            rc = parse_double(a, v, 1e-6, 1e12, &o->ttft_slo_ms);
        else if (!strcmp(a, "--tpot-slo"))
            rc = parse_double(a, v, 1e-6, 1e12, &o->tpot_slo_ms);
        else if (!strcmp(a, "--attainment"))
            rc = parse_double(a, v, 0, 1, &o->attainment);
        else if (!strcmp(a, "--input-len"))
            rc = parse_u32(a, v, 1, 10000000, &o->input_len);
        else if (!strcmp(a, "--output-len"))
            rc = parse_u32(a, v, 1, 10000000, &o->output_len);
        else if (!strcmp(a, "--max-workers"))
            rc = parse_u32(a, v, 2, PLAN_MAX_WORKERS, &o->max_workers);
        else if (!strcmp(a, "--num-requests"))
            rc = parse_u32(a, v, 1, 10000000, &o->num_requests);
        else if (!strcmp(a, "--prefill-batch-tokens"))
            rc = parse_u32(a, v, 1, 100000000, &o->prefill_batch_tokens);
        else if (!strcmp(a, "--arrivals"))
            o->arrivals_path = v;
        else if (!strcmp(a, "--prefill-batch-size"))
            rc = parse_u32(a, v, 1, 100000, &o->prefill_batch_size);
        else if (!strcmp(a, "--decode-batch-size"))
            rc = parse_u32(a, v, 1, 100000, &o->decode_batch_size);
        else if (!strcmp(a, "--kv-blocks"))
            rc = parse_u32(a, v, 1, 1000000000, &o->kv_blocks);
        else if (!strcmp(a, "--prefix-len"))
            rc = parse_u32(a, v, 0, 10000000, &o->prefix_len);
        else if (!strcmp(a, "--num-prefixes"))
            rc = parse_u32(a, v, 1, 1000000, &o->num_prefixes);
        else if (!strcmp(a, "--prefix-cache-blocks"))
            rc = parse_u32(a, v, 1, 1000000000, &o->prefix_cache_blocks);
        else if (!strcmp(a, "--routing")) {
            if (plan_route_parse(v, &o->routing) != 0) {
                fprintf(stderr, "pd-plan: --routing: '%s' is not kv_aware, least_loaded or "
                                "round_robin\n", v);
                rc = -1;
            }
        }
        else if (!strcmp(a, "--seed")) {
            char *end;
            errno = 0;
            o->seed = strtoull(v, &end, 10);
            if (errno || end == v || *end || v[0] == '-') {
                fprintf(stderr, "pd-plan: --seed: '%s' is not an unsigned integer\n", v);
                rc = -1;
            }
        } else {
            fprintf(stderr, "pd-plan: unknown option '%s' (--help for usage)\n", a);
            rc = -1;
        }
        if (rc != 0)
            return -1;
    }
    if (o->prefix_len && !o->num_prefixes)
        o->num_prefixes = 1;
    if (o->prefix_len && o->input_len && o->prefix_len > o->input_len) {
        fprintf(stderr, "pd-plan: --prefix-len %u is longer than --input-len %u\n", o->prefix_len,
                o->input_len);
        return -1;
    }
    bool live = o->router || o->metrics_url;
    if (o->window_s == 0)
        o->window_s = 30;
    const char *missing = !o->profile_path      ? "--profile"
                          : live && !o->router  ? "--router (with --metrics)"
                          : live && !o->metrics_url ? "--metrics (with --router)"
                          : o->rate < 0 && !o->arrivals_path && !live ? "--request-rate"
                          : !o->input_len && !live ? "--input-len"
                          : !o->output_len && !live ? "--output-len"
                          : o->ttft_slo_ms < 0  ? "--ttft-slo"
                          : o->tpot_slo_ms < 0  ? "--tpot-slo"
                                                : NULL;
    if (missing) {
        fprintf(stderr, "pd-plan: %s is required (--help for usage)\n", missing);
        return -1;
    }
    return 0;
}

/* ====== Profile and cost model ====== */


/* Least squares: k (<= 3) features x[i*k + j], targets y (n); coef out.
 * Returns -1 when the normal equations are singular. */
static int lstsq(const double *x, const double *y, size_t n, int k, double *coef)
{
    double a[3][4] = { { 0 } };
    for (size_t i = 0; i < n; i++)
        for (int r = 0; r < k; r++) {
            for (int c = 0; c < k; c++)
                a[r][c] += x[i * k + r] * x[i * k + c];
            a[r][k] += x[i * k + r] * y[i];
        }
    for (int c = 0; c < k; c++) {
        int p = c;
        for (int r = c + 1; r < k; r++)
            if (fabs(a[r][c]) > fabs(a[p][c]))
                p = r;
        if (fabs(a[p][c]) < 1e-12)
            return -1;
        for (int j = 0; j <= k; j++) {
            double t = a[c][j];
            a[c][j] = a[p][j];
            a[p][j] = t;
        }
        for (int r = 0; r < k; r++) {
            if (r == c)
                continue;
            double f = a[r][c] / a[c][c];
            for (int j = c; j <= k; j++)
                a[r][j] -= f * a[c][j];
        }
    }
    for (int c = 0; c < k; c++)
        coef[c] = a[c][k] / a[c][c];
    return 0;
}

/* The number at obj[key], which must be finite and >= 0. */
static int get_num(const char *path, json_t *obj, const char *arr, size_t i, const char *key,
                   double *out)
{
    json_t *v = json_object_get(obj, key);
    if (!json_is_number(v) || !isfinite(json_number_value(v)) || json_number_value(v) < 0) {
        if (arr)
            fprintf(stderr, "pd-plan: --profile %s: %s[%zu].%s: missing or not a number >= 0\n",
                    path, arr, i, key);
        else
            fprintf(stderr, "pd-plan: --profile %s: %s: missing or not a number >= 0\n", path, key);
        return -1;
    }
    *out = json_number_value(v);
    return 0;
}

/* Reads the points of array name: fields f0 (and f1) as features, "ms" as
 * the target. Needs at least min_n points. */
static int get_points(const char *path, json_t *root, const char *name, const char *f0,
                      const char *f1, size_t min_n, double **a0, double **a1, double **ms,
                      size_t *n)
{
    json_t *arr = json_object_get(root, name);
    if (!json_is_array(arr) || json_array_size(arr) < min_n || json_array_size(arr) > 100000) {
        fprintf(stderr, "pd-plan: --profile %s: %s: needs an array of at least %zu points\n", path,
                name, min_n);
        return -1;
    }
    *n = json_array_size(arr);
    *a0 = calloc(*n + 1, sizeof **a0);
    *a1 = calloc(*n + 1, sizeof **a1);
    *ms = calloc(*n + 1, sizeof **ms);
    if (!*a0 || !*a1 || !*ms)
        return -1;
    for (size_t i = 0; i < *n; i++) {
        json_t *p = json_array_get(arr, i);
        if (get_num(path, p, name, i, f0, &(*a0)[i]) || (f1 && get_num(path, p, name, i, f1, &(*a1)[i])) ||
            get_num(path, p, name, i, "ms", &(*ms)[i]))
            return -1;
    }
    return 0;
}

static int load_model(const opts_t *o, plan_model_t *m)
{
    memset(m, 0, sizeof *m);
    json_error_t je;
    json_t *root = json_load_file(o->profile_path, 0, &je);
    if (root == NULL) {
        fprintf(stderr, "pd-plan: --profile %s: line %d column %d: %s\n", o->profile_path, je.line,
                je.column, je.text);
        return -1;
    }
    double *t = NULL, *u = NULL, *ms = NULL, *x = NULL;
    size_t n = 0;
    int rc = -1;
    double bs, blocks;
    if (!json_is_object(root)) {
        fprintf(stderr, "pd-plan: --profile %s: not a pd-bench profile (an object)\n", o->profile_path);
        goto done;
    }
    if (get_num(o->profile_path, root, NULL, 0, "overhead_ms", &m->overhead_ms) ||
        get_num(o->profile_path, root, NULL, 0, "block_size", &bs) ||
        get_num(o->profile_path, root, NULL, 0, "decode_kv_blocks", &blocks))
        goto done;
    if (bs < 1 || bs > 1e6 || blocks < 1 || blocks > 1e12) {
        fprintf(stderr, "pd-plan: --profile %s: block_size %g / decode_kv_blocks %g out of range\n",
                o->profile_path, bs, blocks);
        goto done;
    }
    m->block_size = (uint32_t)bs;
    m->kv_blocks = o->kv_blocks ? o->kv_blocks : (uint32_t)blocks;
    /* Optional: the prefill workers' KV pool (room for cached prefixes). */
    double pblocks = 0;
    if (json_object_get(root, "prefill_kv_blocks") != NULL &&
        get_num(o->profile_path, root, NULL, 0, "prefill_kv_blocks", &pblocks) != 0)
        goto done;
    m->prefill_blocks = pblocks >= 1 && pblocks <= 1e9 ? (uint32_t)pblocks : 0;
    /* Older profiles also carry prefill_pass_tokens, the cap a prefill pass
     * had while a worker could not beat during one (half a heartbeat): a
     * pass is now bounded by prefill.max_batch_tokens alone
     * (--prefill-batch-tokens), so it is ignored; their points with
     * batch < 1 (prompts cut into passes) are still read below. */
    /* Optional: interference between the phases (1 = none, or not measured). */
    m->inf_dec = m->inf_pre = 1;
    json_t *inf = json_object_get(root, "interference");
    if (inf != NULL && !o->no_interference) {
        if (!json_is_object(inf)) {
            fprintf(stderr, "pd-plan: --profile %s: interference: not an object {decode, "
                            "prefill}\n", o->profile_path);
            goto done;
        }
        if (get_num(o->profile_path, inf, NULL, 0, "decode", &m->inf_dec) != 0 ||
            get_num(o->profile_path, inf, NULL, 0, "prefill", &m->inf_pre) != 0)
            goto done;
        if (!(m->inf_dec >= 0.5 && m->inf_dec <= 10) || !(m->inf_pre >= 0.5 && m->inf_pre <= 10)) {
            fprintf(stderr, "pd-plan: --profile %s: interference factors %g / %g are not in "
                            "[0.5, 10]\n", o->profile_path, m->inf_dec, m->inf_pre);
            goto done;
        }
    }
    const char *name = json_string_value(json_object_get(root, "model_id"));
    snprintf(m->model, sizeof m->model, "%s", name ? name : "?");

    /* prefill: a + b*n*T + c*n*T*(2*K + T), c >= 0 (else a + b*n*T); n =
     * "batch", T = "tokens" computed per prompt, K = "cached" tokens before
     * them (optional: a prompt on a cached prefix; 0 gives n*T^2) */
    if (get_points(o->profile_path, root, "prefill", "tokens", "batch", 2, &t, &u, &ms, &n) != 0)
        goto done;
    json_t *pre_arr = json_object_get(root, "prefill");
    x = malloc(n * 3 * sizeof *x);
    if (x == NULL)
        goto done;
    m->min_pre_ms = INFINITY;
    for (size_t i = 0; i < n; i++) {
        /* batch < 1: prompts cut into several passes (longer than the
         * budget, or, in older profiles, than the old pass cap);
         * n*T is still the tokens per pass and n*T^2 its attention work */
        if (!(u[i] > 0) || u[i] > 1e6) {
            fprintf(stderr, "pd-plan: --profile %s: prefill[%zu].batch: %g is not in (0, 1e6]\n",
                    o->profile_path, i, u[i]);
            goto done;
        }
        double K = 0;
        json_t *pt_i = json_array_get(pre_arr, i);
        if (json_object_get(pt_i, "cached") != NULL &&
            get_num(o->profile_path, pt_i, "prefill", i, "cached", &K) != 0)
            goto done;
        x[i * 3] = 1, x[i * 3 + 1] = u[i] * t[i], x[i * 3 + 2] = u[i] * t[i] * (2 * K + t[i]);
        if (ms[i] < m->min_pre_ms)
            m->min_pre_ms = ms[i];
    }
    if (n < 3 || lstsq(x, ms, n, 3, m->pre) != 0 || m->pre[2] < 0) {
        m->pre[2] = 0;
        for (size_t i = 0; i < n; i++)
            x[i * 2] = 1, x[i * 2 + 1] = u[i] * t[i];
        if (lstsq(x, ms, n, 2, m->pre) != 0) {
            fprintf(stderr, "pd-plan: --profile %s: prefill: the points do not determine a line "
                            "(need two distinct token counts)\n", o->profile_path);
            goto done;
        }
    }
    free(t), free(u), free(ms), free(x);
    t = u = ms = x = NULL;

    /* decode: a + b*B + c*B*C, c >= 0 (else a + b*B): attention work cannot
     * shrink with context; a negative c from a noisy grid would make steps at
     * contexts beyond the grid cheaper than the measured ones */
    if (get_points(o->profile_path, root, "decode", "batch", "context", 3, &t, &u, &ms, &n) != 0)
        goto done;
    x = malloc(n * 3 * sizeof *x);
    if (x == NULL)
        goto done;
    m->min_dec_ms = INFINITY;
    for (size_t i = 0; i < n; i++) {
        x[i * 3] = 1, x[i * 3 + 1] = t[i], x[i * 3 + 2] = t[i] * u[i];
        if (ms[i] < m->min_dec_ms)
            m->min_dec_ms = ms[i];
    }
    if (lstsq(x, ms, n, 3, m->dec) != 0 || m->dec[2] < 0) {
        m->dec[2] = 0;
        for (size_t i = 0; i < n; i++)
            x[i * 2] = 1, x[i * 2 + 1] = t[i];
        if (lstsq(x, ms, n, 2, m->dec) != 0) {
            fprintf(stderr, "pd-plan: --profile %s: decode: the points do not determine a fit "
                            "(need distinct batch sizes)\n", o->profile_path);
            goto done;
        }
    }
    free(t), free(u), free(ms), free(x);
    t = u = ms = x = NULL;

    /* KV transfer: a + b*T (optional: no points = free) */
    if (json_array_size(json_object_get(root, "kv_transfer")) > 0) {
        if (get_points(o->profile_path, root, "kv_transfer", "tokens", NULL, 1, &t, &u, &ms, &n))
            goto done;
        x = malloc(n * 2 * sizeof *x);
        if (x == NULL)
            goto done;
        for (size_t i = 0; i < n; i++)
            x[i * 2] = 1, x[i * 2 + 1] = t[i];
        if (n < 2 || lstsq(x, ms, n, 2, m->kv) != 0 || m->kv[1] < 0) {
            double s = 0;
            for (size_t i = 0; i < n; i++)
                s += ms[i];
            m->kv[0] = s / (double)n, m->kv[1] = 0;
        }
    }
    rc = 0;
done:
    free(t), free(u), free(ms), free(x);
    json_decref(root);
    return rc;
}

/* ====== Search and report ====== */

typedef struct {
    uint32_t P, D;
    plan_result_t r;
    bool meets;
} row_t;

static int cmp_row(const void *a, const void *b)
{
    const row_t *x = a, *y = b;
    uint32_t tx = x->P + x->D, ty = y->P + y->D;
    if (tx != ty)
        return tx < ty ? -1 : 1;
    return (x->P > y->P) - (x->P < y->P);
}

typedef struct {
    row_t *v;
    size_t n, cap;
} rows_t;

static row_t *try_config(const opts_t *o, const plan_model_t *m, rows_t *rows, uint32_t P, uint32_t D)
{
    for (size_t i = 0; i < rows->n; i++)
        if (rows->v[i].P == P && rows->v[i].D == D)
            return &rows->v[i];
    if (pd_grow((void **)&rows->v, &rows->cap, rows->n + 1, sizeof *rows->v, 64) != 0)
        return NULL;
    row_t *r = &rows->v[rows->n];
    r->P = P, r->D = D;
    plan_load_t l = load_of(o);
    if (plan_simulate(&l, m, P, D, &r->r) != 0)
        return NULL;
    r->meets = r->r.attainment >= o->attainment;
    rows->n++;
    return r;
}

static int search(const opts_t *o, const plan_model_t *m, rows_t *rows)
{
    uint32_t N = o->max_workers;
    for (uint32_t P = 1; P < N; P++) {
        if (N <= PLAN_EXHAUSTIVE_MAX) {
            for (uint32_t D = 1; P + D <= N; D++)
                if (try_config(o, m, rows, P, D) == NULL)
                    return -1;
            continue;
        }
        /* binary search the smallest D that meets the SLOs at this P */
        uint32_t lo = 1, hi = N - P;
        row_t *r = try_config(o, m, rows, P, hi);
        if (r == NULL)
            return -1;
        if (!r->meets)
            continue;
        while (lo < hi) {
            uint32_t mid = lo + (hi - lo) / 2;
            if ((r = try_config(o, m, rows, P, mid)) == NULL)
                return -1;
            if (r->meets)
                hi = mid;
            else
                lo = mid + 1;
        }
    }
    if (rows->n > 1) /* rows->v is NULL while empty */
        qsort(rows->v, rows->n, sizeof *rows->v, cmp_row);
    return 0;
}

/* In binary-search mode, the row worth printing for its P: the smallest D
 * that meets the SLOs, or the largest D tried when none does. */
static bool shown(const rows_t *rows, const row_t *r)
{
    for (size_t i = 0; i < rows->n; i++) {
        const row_t *q = &rows->v[i];
        if (q->P != r->P || q == r)
            continue;
        if (r->meets ? (q->meets && q->D < r->D) : (q->meets || q->D > r->D))
            return false;
    }
    return true;
}

static json_t *row_json(const row_t *r)
{
    json_t *j = json_object();
    json_object_set_new(j, "prefill", json_integer(r->P));
    json_object_set_new(j, "decode", json_integer(r->D));
    json_object_set_new(j, "workers", json_integer(r->P + r->D));
    json_object_set_new(j, "goodput", json_real(r->r.goodput));
    json_object_set_new(j, "attainment", json_real(r->r.attainment));
    json_object_set_new(j, "p90_ttft_ms", isfinite(r->r.p90_ttft_ms) ? json_real(r->r.p90_ttft_ms) : json_null());
    json_object_set_new(j, "p90_tpot_ms", json_real(r->r.p90_tpot_ms));
    json_object_set_new(j, "mean_ttft_ms", json_real(r->r.mean_ttft_ms));
    json_object_set_new(j, "mean_tpot_ms", json_real(r->r.mean_tpot_ms));
    json_object_set_new(j, "duration_s", json_real(r->r.duration_s));
    json_object_set_new(j, "prefix_hit_rate", json_real(r->r.prefix_hit_rate));
    json_object_set_new(j, "meets", json_boolean(r->meets));
    return j;
}

/* ====== Live: plan for the load a running cluster serves ====== */

/* Watches the cluster and sets the load options it served (those not given).
 * 0, or an exit status. */
static int observe(opts_t *o, const plan_model_t *m, pd_plan_obs_t *obs)
{
    pd_err_t err = { 0 };
    fprintf(stderr, "pd-plan: watching %s for %g s\n", o->router, o->window_s);
    if (pd_plan_observe(o->router, o->metrics_url, o->window_s, obs, &err) != 0) {
        fprintf(stderr, "pd-plan: %s\n", err.msg);
        return EXIT_USAGE;
    }
    pd_plan_obs_print(obs, o->ttft_slo_ms, o->tpot_slo_ms, stdout);
    if (obs->done < 1) {
        printf("no request finished in the window: nothing to plan for (a longer --window?)\n");
        return EXIT_NONE;
    }
    if (o->rate < 0)
        o->rate = (obs->done + obs->failed) / obs->window_s;
    if (!o->input_len)
        o->input_len = (uint32_t)fmax(1, round(obs->prompt_tokens / obs->done));
    if (!o->output_len)
        o->output_len = (uint32_t)fmax(1, round(obs->output_tokens / obs->done));
    /* The profile against what the workers did: a pass of the observed size,
     * a step of the observed batch at a mid-answer context. */
    if (obs->prefill_passes > 0 && obs->decode_steps > 0) {
        double T = obs->prefill_tokens / obs->prefill_passes, B = obs->decode_tokens / obs->decode_steps;
        double pre = plan_prefill_ms(m, T, T * T), dec = plan_decode_ms(m, B, o->input_len + o->output_len / 2.0);
        double rp = obs->prefill_ms / obs->prefill_passes / pre, rd = obs->decode_ms / obs->decode_steps / dec;
        printf("profile check: prefill pass %.2fx, decode step %.2fx what the profile predicts%s\n", rp,
               rd, rp > 1.3 || rp < 0.77 || rd > 1.3 || rd < 0.77
                       ? ": the cluster no longer runs like the profile, re-profile (pd-bench --profile)"
                       : "");
    }
    return 0;
}

static void recommend(const opts_t *o, const pd_plan_obs_t *obs, const row_t *best)
{
    uint32_t P = obs->n_prefill, D = obs->n_decode;
    if (best == NULL) {
        printf("recommendation: none: no cluster of at most %u workers meets the SLOs at the observed "
               "load (raise --max-workers)\n", o->max_workers);
        return;
    }
    if (best->P == P && best->D == D) {
        printf("recommendation: keep %u prefill + %u decode: the smallest cluster that meets the SLOs "
               "at the observed load\n", P, D);
        return;
    }
    printf("recommendation: %u prefill + %u decode (now %u + %u):", best->P, best->D, P, D);
    if (best->P != P)
        printf(" scale prefill %s %u -> %u%s", best->P > P ? "up" : "down", P, best->P, best->D != D ? ";" : "");
    if (best->D != D)
        printf(" scale decode %s %u -> %u", best->D > D ? "up" : "down", D, best->D);
    printf("\n");
}

int main(int argc, char **argv)
{
    opts_t o;
    int prc = parse_args(argc, argv, &o);
    if (prc != 0) {
        usage(prc > 0 ? stdout : stderr);
        return prc > 0 ? 0 : EXIT_USAGE;
    }
    if (o.arrivals_path && load_arrivals(&o) != 0)
        return EXIT_USAGE;
    plan_model_t m;
    if (load_model(&o, &m) != 0) {
        free(o.arrivals);
        return EXIT_USAGE;
    }
    pd_plan_obs_t obs;
    if (o.router) {
        int orc = observe(&o, &m, &obs);
        if (orc != 0) {
            free(o.arrivals);
            return orc;
        }
    }
    rows_t rows = { 0 };
    if (search(&o, &m, &rows) != 0) {
        fprintf(stderr, "pd-plan: out of memory\n");
        free(rows.v);
        free(o.arrivals);
        return EXIT_NONE;
    }
    printf("pd-plan: model %s, rate %g req/s, input %u, output %u tokens; SLOs TTFT <= %g ms, "
           "TPOT <= %g ms, attainment >= %g; %u requests simulated per config\n",
           m.model, o.rate, o.input_len, o.output_len, o.ttft_slo_ms, o.tpot_slo_ms, o.attainment,
           o.num_requests);
    if (o.prefix_len)
        printf("shared prefixes: %u of %u tokens (+ BOS), routing %s, prefix cache %u blocks per "
               "prefill worker%s\n", o.num_prefixes, o.prefix_len, plan_route_name(o.routing),
               o.prefix_cache_blocks ? o.prefix_cache_blocks : m.prefill_blocks,
               o.prefix_cache_blocks || m.prefill_blocks ? "" : " (unknown: unbounded)");
    printf("cost model: prefill_ms(n,T,K) = %.4g + %.4g*n*T + %.4g*n*T*(2K+T); decode_ms(B,C) = %.4g + %.4g*B + "
           "%.4g*B*C; kv_ms(T) = %.4g + %.4g*T; overhead %.3g ms; prefill pass budget %u tokens; "
           "interference: decode step x%.3g, prefill pass x%.3g\n",
           m.pre[0], m.pre[1], m.pre[2], m.dec[0], m.dec[1], m.dec[2], m.kv[0], m.kv[1],
           m.overhead_ms, o.prefill_batch_tokens, m.inf_dec, m.inf_pre);
    printf("%5s %5s %8s %15s %11s %14s %14s %6s\n", "P", "D", "workers", "goodput(req/s)",
           "attainment", "p90 TTFT(ms)", "p90 TPOT(ms)", "meets");
    const row_t *best = NULL;
    bool all = o.max_workers <= PLAN_EXHAUSTIVE_MAX;
    if (!all)
        printf("(binary search: for each P, the smallest D that meets the SLOs, or the largest "
               "D tried when none does; --json lists every configuration simulated)\n");
    for (size_t i = 0; i < rows.n; i++) {
        const row_t *r = &rows.v[i];
        if (r->meets && (best == NULL || r->P + r->D < best->P + best->D ||
                         (r->P + r->D == best->P + best->D && r->r.goodput > best->r.goodput)))
            best = r;
        if (!all && !shown(&rows, r))
            continue;
        printf("%5u %5u %8u %15.3f %11.3f %14.2f %14.3f %6s\n", r->P, r->D, r->P + r->D,
               r->r.goodput, r->r.attainment, r->r.p90_ttft_ms, r->r.p90_tpot_ms,
               r->meets ? "yes" : "no");
    }
    if (best)
        printf("smallest cluster meeting the SLOs at %g req/s: %u prefill + %u decode (%u workers), "
               "predicted goodput %.3f req/s, attainment %.3f\n",
               o.rate, best->P, best->D, best->P + best->D, best->r.goodput, best->r.attainment);
    else
        printf("no cluster of at most %u workers meets the SLOs at %g req/s\n", o.max_workers,
               o.rate);
    if (o.router)
        recommend(&o, &obs, best);
    int status = best ? 0 : EXIT_NONE;
    if (o.json_path) {
        json_t *j = json_object(), *arr = json_array();
        json_object_set_new(j, "model_id", json_string(m.model));
        json_object_set_new(j, "request_rate", json_real(o.rate));
        json_object_set_new(j, "input_len", json_integer(o.input_len));
        json_object_set_new(j, "output_len", json_integer(o.output_len));
        json_object_set_new(j, "ttft_slo_ms", json_real(o.ttft_slo_ms));
        json_object_set_new(j, "tpot_slo_ms", json_real(o.tpot_slo_ms));
        json_object_set_new(j, "attainment_target", json_real(o.attainment));
        json_object_set_new(j, "num_requests", json_integer(o.num_requests));
        json_object_set_new(j, "prefill_batch_tokens", json_integer(o.prefill_batch_tokens));
        json_object_set_new(j, "prefix_len", json_integer(o.prefix_len));
        json_object_set_new(j, "num_prefixes", json_integer(o.num_prefixes));
        json_object_set_new(j, "routing", json_string(plan_route_name(o.routing)));
        json_object_set_new(j, "cost_model", json_pack("{s:[f,f,f],s:[f,f,f],s:[f,f],s:f,s:{s:f,s:f}}",
                                                       "prefill", m.pre[0], m.pre[1], m.pre[2],
                                                       "decode", m.dec[0], m.dec[1], m.dec[2],
                                                       "kv", m.kv[0], m.kv[1], "overhead_ms",
                                                       m.overhead_ms, "interference", "decode",
                                                       m.inf_dec, "prefill", m.inf_pre));
        json_object_set_new(j, "arrivals", o.arrivals_path ? json_string(o.arrivals_path)
                                                           : json_null());
        for (size_t i = 0; i < rows.n; i++)
            json_array_append_new(arr, row_json(&rows.v[i]));
        json_object_set_new(j, "configs", arr);
        json_object_set_new(j, "smallest", best ? row_json(best) : json_null());
        if (o.router)
            json_object_set_new(j, "observed", pd_plan_obs_json(&obs, o.ttft_slo_ms, o.tpot_slo_ms));
        if (json_dump_file(j, o.json_path, JSON_INDENT(1) | JSON_PRESERVE_ORDER) != 0) {
            fprintf(stderr, "pd-plan: --json %s: cannot write\n", o.json_path);
            status = EXIT_NONE;
        }
        json_decref(j);
    }
    free(rows.v);
    free(o.arrivals);
    return status;
}
