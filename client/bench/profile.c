/* profile.c -- pd-bench --profile: the cluster's costs, for pd-plan.
 *
 * A small grid of runs on the live cluster; the workers' own counters (sums
 * of forward-pass times, reported by heartbeat through the router's status)
 * give the compute times, client clocks give the end-to-end ones:
 *   prefill:  L-token prompts (max_tokens 2, so the KV is shipped), first
 *             one at a time, then 8 at once (batched by the worker): ms per
 *             prefill pass (prefill_us / batches) with the mean prompts per
 *             pass (below 1 when a prompt was longer than the workers'
 *             prefill.max_batch_tokens and took several passes), client
 *             TTFT, and KV transfer ms (kv_transfer_us / transfers, single
 *             prompts);
 *   decode:   B requests at once with C-token prompts and 32 output tokens,
 *             3 runs: mean batch (decode_tokens / steps) and the median ms
 *             per step (decode_us / steps) at mean context C + 16;
 *   cached:   prefill after a cached prefix (profile_cached);
 *   overhead: median over the single-prompt runs of TTFT - the prompt's
 *             prefill passes - the queueing the router reported (network,
 *             router, scheduling).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "bench.h"

#define PROFILE_REPEAT 3        /* prefill runs per prompt length */
#define PROFILE_DECODE_OUT 32   /* output tokens per decode-grid request */
#define PROFILE_SETTLE_MS 5000  /* longest wait for a heartbeat after a run */

typedef struct {
    uint64_t prefill_us, prefill_batches, kv_transfers, kv_transfer_us;
    uint64_t steps, decode_us, decode_tokens;
    uint64_t prefill_tokens, prefix_hits; /* tokens computed / found cached by prefill */
    uint32_t decode_blocks; /* smallest total_blocks of a decode-capable worker */
    uint32_t prefill_blocks; /* smallest total_blocks of a prefill-capable worker */
    size_t n_prefill, n_decode;
    size_t n_only_prefill, n_only_decode; /* role prefill / role decode (not both) */
} counters_t;

static int read_counters(pd_client_t *c, counters_t *k, uint64_t *min_fresh_ms, pd_err_t *err)
{
    pd_cluster_status_t *s = NULL;
    int rc = pd_client_status(c, &s, err);
    if (rc != 0)
        return rc;
    memset(k, 0, sizeof *k);
    *min_fresh_ms = UINT64_MAX;
    for (size_t i = 0; i < s->n_workers; i++) {
        const pd_worker_status_t *w = &s->workers[i];
        k->prefill_us += w->prefill_us;
        k->prefill_batches += w->prefill_batches;
        k->kv_transfers += w->kv_transfers;
        k->kv_transfer_us += w->kv_transfer_us;
        k->steps += w->steps;
        k->decode_us += w->decode_us;
        k->decode_tokens += w->decode_tokens;
        k->prefill_tokens += w->prefill_tokens;
        k->prefix_hits += w->prefix_hits;
        bool pre = strcmp(w->role, "decode") != 0, dec = strcmp(w->role, "prefill") != 0;
        k->n_prefill += pre;
        k->n_decode += dec;
        k->n_only_prefill += !dec;
        k->n_only_decode += !pre;
        if (dec && (k->decode_blocks == 0 || w->total_blocks < k->decode_blocks))
            k->decode_blocks = w->total_blocks;
        if (pre && (k->prefill_blocks == 0 || w->total_blocks < k->prefill_blocks))
            k->prefill_blocks = w->total_blocks;
        /* the oldest heartbeat decides whether every worker has reported */
        if (*min_fresh_ms == UINT64_MAX || w->last_seen_ms > *min_fresh_ms)
            *min_fresh_ms = w->last_seen_ms;
    }
    pd_cluster_status_free(s);
    return 0;
}

/* Waits until every worker has sent a heartbeat after done_ns, then reads. */
static int settled_counters(pd_client_t *c, uint64_t done_ns, counters_t *k)
{
    pd_err_t err = { 0 };
    for (;;) {
        uint64_t oldest_ms;
        if (read_counters(c, k, &oldest_ms, &err) != 0) {
            fprintf(stderr, "pd-bench: --profile: status: %s\n", err.msg);
            return -1;
        }
        uint64_t since_ms = (pd_now_ns() - done_ns) / 1000000ull;
        if (oldest_ms + 20 < since_ms)
            return 0;
        if (since_ms > PROFILE_SETTLE_MS) {
            fprintf(stderr, "pd-bench: --profile: no worker heartbeat for %llu ms\n",
                    (unsigned long long)oldest_ms);
            return -1;
        }
        struct timespec ts = { 0, 50000000L };
        nanosleep(&ts, NULL);
    }
}

/* One grid run: n requests of in_len random prompt tokens and out_len output
 * tokens, at most conc in flight; counters before and after into k0 and k1,
 * medians of TTFT and queueing into *ttft_ms / *queue_ms. */
typedef struct {
    uint32_t n, in_len, out_len;
} group_t;

/* Appends n random prompts of in_len tokens and out_len outputs to d. */
static int add_group(const opts_t *base, const pd_tok_t *tok, rng_t *rng, group_t g, dataset_t *d)
{
    opts_t o = *base;
    o.num_prompts = g.n;
    o.input_len = g.in_len;
    o.output_len = g.out_len;
    o.range_ratio = 0;
    o.prefix_len = 0;
    dataset_t e = { 0 };
    int32_t prefix[1];
    if (dataset_random(&o, tok, rng, prefix, 0, &e) != 0)
        return -1;
    int rc = 0;
    for (size_t i = 0; i < e.n; i++) {
        item_t *it = dataset_push(d);
        if (it == NULL) {
            rc = -1;
            break;
        }
        *it = e.items[i]; /* moved: d owns the text and ids now */
        memset(&e.items[i], 0, sizeof e.items[i]);
    }
    dataset_free(&e);
    return rc;
}

/* Runs the requests of d (all at once, or at most conc in flight); counters
 * before and after into k0 and k1, medians of TTFT and queueing into
 * *ttft_ms / *queue_ms (when not NULL). */
static int profile_run_set(const opts_t *base, pd_client_t *c, rng_t *rng, dataset_t *d,
                           uint32_t conc, counters_t *k0, counters_t *k1, double *ttft_ms,
                           double *queue_ms);

static int profile_run(const opts_t *base, pd_client_t *c, const pd_tok_t *tok, rng_t *rng,
                       uint32_t n, uint32_t conc, uint32_t in_len, uint32_t out_len,
                       counters_t *k0, counters_t *k1, double *ttft_ms, double *queue_ms)
{
    dataset_t d = { 0 };
    int rc = -1;
    if (add_group(base, tok, rng, (group_t){ n, in_len, out_len }, &d) == 0)
        rc = profile_run_set(base, c, rng, &d, conc, k0, k1, ttft_ms, queue_ms);
    dataset_free(&d);
    return rc;
}

static int profile_run_set(const opts_t *base, pd_client_t *c, rng_t *rng, dataset_t *d,
                           uint32_t conc, counters_t *k0, counters_t *k1, double *ttft_ms,
                           double *queue_ms)
{
    uint32_t n = (uint32_t)d->n;
    opts_t o = *base;
    o.dataset = DS_RANDOM;
    o.num_prompts = n;
    o.has_num_prompts = true;
    o.duration_s = 0;
    o.rate = INFINITY;
    o.max_concurrency = conc;
    o.range_ratio = 0;
    o.prefix_len = 0;
    o.ignore_eos = true;
    o.has_goodput = false;
    o.progress = false;
    bench_t b = { .o = &o };
    metrics_t m = { 0 };
    int rc = -1;
    if (settled_counters(c, pd_now_ns(), k0) != 0)
        goto done;
    if (bench_run(&b, c, d, rng) != 0 || metrics_compute(&b, &m) != 0)
        goto done;
    if (m.failed || m.completed != n) {
        fprintf(stderr, "pd-bench: --profile: %zu of %u requests failed (%s)\n", m.failed, n,
                b.n_reqs && b.reqs[0].error ? b.reqs[0].error : "?");
        goto done;
    }
    double *q = malloc((n ? n : 1) * sizeof *q);
    if (q == NULL)
        goto done;
    for (size_t i = 0; i < b.n_reqs; i++)
        q[i] = (double)b.reqs[i].queue_us / 1000.0;
    qsort(q, n, sizeof *q, bench_cmp_double);
    if (queue_ms)
        *queue_ms = bench_percentile(q, n, 50);
    free(q);
    if (ttft_ms)
        *ttft_ms = m.st[M_TTFT].median;
    rc = settled_counters(c, b.end_ns, k1);
done:
    metrics_free(&m);
    bench_free(&b);
    return rc;
}

/* Interference: on one machine a prefill pass and a decode step running at
 * the same time on different cores slow each other down (they share the
 * memory bus and caches). Measured as two ratios of the same work done with
 * and without the other phase running beside it:
 *   decode:  B requests (32 -> 64 tokens) alone, then the same with enough
 *            long prompts (max_tokens 1: prefill only) queued behind them
 *            to keep the prefill workers busy for their whole decode:
 *            (decode_us / steps) busy over idle;
 *   prefill: two long prompts behind B short ones with max_tokens 1 (no
 *            decode), then the same with the short ones decoding for
 *            longer than the long prompts take: prefill_us busy over idle.
 * pd-plan scales a step or pass by these factors in proportion to how many
 * workers of the other phase are busy when it starts. */
/* One interference run: groups a and b (b.n may be 0) sent at once. Out:
 * the decode ms per step (when want_steps) or the prefill ms the workers
 * spent, and the decode ms in all; -1 (message printed) when the run failed
 * or the workers reported no steps / passes. */
static int interf_run(const opts_t *o, pd_client_t *c, const pd_tok_t *tok, rng_t *rng,
                      const char *what, group_t a, group_t b, bool want_steps, double *ms,
                      double *decode_ms)
{
    dataset_t d = { 0 };
    counters_t k0, k1;
    int rc = -1;
    fprintf(stderr, "pd-bench: --profile: interference: %s\n", what);
    if (add_group(o, tok, rng, a, &d) != 0 || (b.n && add_group(o, tok, rng, b, &d) != 0) ||
        profile_run_set(o, c, rng, &d, 0, &k0, &k1, NULL, NULL) != 0)
        goto done;
    uint64_t steps = k1.steps - k0.steps, pre_us = k1.prefill_us - k0.prefill_us;
    if (want_steps ? steps == 0 : pre_us == 0) {
        fprintf(stderr, "pd-bench: --profile: the workers reported no %s\n",
                want_steps ? "decode steps" : "prefill passes");
        goto done;
    }
    double dec_ms = (double)(k1.decode_us - k0.decode_us) / 1000.0;
    *ms = want_steps ? dec_ms / (double)steps : (double)pre_us / 1000.0;
    if (decode_ms)
        *decode_ms = dec_ms;
    rc = 0;
done:
    dataset_free(&d);
    return rc;
}

static int profile_interference(const opts_t *o, pd_client_t *c, const pd_tok_t *tok,
                                rng_t *rng, uint32_t max_ctx, json_t **out)
{
    uint32_t bsz = o->profile_max_batch < 4 ? o->profile_max_batch : 4;
    uint32_t long_len = max_ctx < 256 ? max_ctx : 256;
    const group_t none = { 0, 0, 0 }, decoding = { bsz, 32, 64 }, quiet = { bsz, 32, 1 };
    const group_t two_long = { 2, long_len, 1 };
    double dec_idle, dec_busy, pre_idle, pre_busy, dec_run_ms;
    char what[96];

    if (interf_run(o, c, tok, rng, "decode alone", decoding, none, true, &dec_idle, &dec_run_ms) ||
        interf_run(o, c, tok, rng, "prefill alone", quiet, two_long, false, &pre_idle, NULL))
        return -1;
    double pre_prompt_ms = pre_idle / 2.0; /* about: the short prompts are cheap */

    /* long prompts for 1.5x the decode run, spread over the prefill workers */
    uint64_t n_long = (uint64_t)(1.5 * dec_run_ms / pre_prompt_ms) + 1;
    if (n_long > 64)
        n_long = 64;
    snprintf(what, sizeof what, "decode beside %u prefills", (unsigned)n_long);
    if (interf_run(o, c, tok, rng, what, decoding, (group_t){ (uint32_t)n_long, long_len, 1 },
                   true, &dec_busy, NULL))
        return -1;

    /* short requests decoding for 1.5x the two long prompts' prefill */
    uint64_t out2 = (uint64_t)(1.5 * 2.0 * pre_prompt_ms / dec_idle) + 8;
    uint64_t out2_cap = max_ctx > 40 ? max_ctx - 8 : 32; /* prompt + output within max_seq_len */
    if (out2 > out2_cap)
        out2 = out2_cap;
    snprintf(what, sizeof what, "prefill beside %u decodes of %u tokens", bsz, (unsigned)out2);
    if (interf_run(o, c, tok, rng, what, (group_t){ bsz, 32, (uint32_t)out2 }, two_long, false,
                   &pre_busy, NULL))
        return -1;

    *out = json_pack("{s:f,s:f,s:i,s:i}", "decode", dec_busy / dec_idle, "prefill",
                     pre_busy / pre_idle, "decode_batch", (json_int_t)bsz, "prefill_tokens",
                     (json_int_t)long_len);
    fprintf(stderr, "pd-bench: --profile: interference: decode step x%.3f, prefill x%.3f\n",
            dec_busy / dec_idle, pre_busy / pre_idle);
    return *out ? 0 : -1;
}

/* Cached prefixes: prompts of [BOS] + a K-token prefix + T tokens of their
 * own, PROFILE_REPEAT one at a time, after one prompt with the same prefix
 * that put it in the workers' prefix cache (not recorded), for K = max_ctx/4
 * and max_ctx/2 and T = 16 and 64 (up to max_ctx/4). The worker computes
 * only what its cache does not cover (whole blocks): each point says what it
 * measured,
 * tokens = tokens computed per prompt (prefill_tokens), cached = tokens found
 * cached per prompt (prefix_hits), ms per pass, batch = prompts per pass.
 * pd-plan fits them with the uncached points (a pass's attention work counts
 * from the cached offset). No points when the workers found nothing cached
 * (kv.prefix_caching=false): said on stderr. */
static int cached_point(const opts_t *o, pd_client_t *c, const pd_tok_t *tok, rng_t *rng,
                        uint32_t K, uint32_t T, json_t *pre, bool *none)
{
    opts_t g = *o;
    g.num_prompts = 1 + PROFILE_REPEAT;
    g.input_len = T;
    g.output_len = 2;
    g.range_ratio = 0;
    g.prefix_len = K;
    g.num_prefixes = 1;
    dataset_t d = { 0 }, warm = { 0 };
    counters_t k0, k1;
    double ttft;
    int rc = -1;
    int32_t *prefix = malloc((size_t)K * sizeof *prefix);
    fprintf(stderr, "pd-bench: --profile: prefill %u tokens after a cached prefix of %u, %u one "
                    "at a time\n", T, K, PROFILE_REPEAT);
    if (prefix == NULL || dataset_random(&g, tok, rng, prefix, 0, &d) != 0 || d.n < 2)
        goto done;
    item_t *w = dataset_push(&warm);
    if (w == NULL)
        goto done;
    *w = d.items[0]; /* moved: warm owns it now */
    memmove(d.items, d.items + 1, (d.n - 1) * sizeof *d.items);
    d.n--;
    if (profile_run_set(o, c, rng, &warm, 1, &k0, &k1, NULL, NULL) != 0 ||
        profile_run_set(o, c, rng, &d, 1, &k0, &k1, &ttft, NULL) != 0)
        goto done;
    uint64_t nb = k1.prefill_batches - k0.prefill_batches, hit = k1.prefix_hits - k0.prefix_hits;
    if (nb == 0) {
        fprintf(stderr, "pd-bench: --profile: the workers reported no prefill passes\n");
        goto done;
    }
    rc = 0;
    if (hit == 0) {
        *none = true;
        goto done;
    }
    double n = (double)d.n;
    json_t *pt = json_object();
    double computed = (double)(k1.prefill_tokens - k0.prefill_tokens);
    json_object_set_new(pt, "tokens", json_real(computed / n));
    json_object_set_new(pt, "cached", json_real((double)hit / n));
    json_object_set_new(pt, "batch", json_real(n / (double)nb));
    json_object_set_new(pt, "ms", json_real((double)(k1.prefill_us - k0.prefill_us) / 1000.0 /
                                            (double)nb));
    json_object_set_new(pt, "ttft_ms", json_real(ttft));
    json_array_append_new(pre, pt);
done:
    free(prefix);
    dataset_free(&warm);
    dataset_free(&d);
    return rc;
}

static int profile_cached(const opts_t *o, pd_client_t *c, const pd_tok_t *tok, rng_t *rng,
                          uint32_t max_ctx, json_t *pre)
{
    bool none = false;
    for (uint32_t K = max_ctx / 4; K <= max_ctx / 2 && K >= 16 && !none; K *= 2)
        for (uint32_t T = 16; T <= max_ctx / 4 && K + T <= max_ctx && !none; T *= 4)
            if (cached_point(o, c, tok, rng, K, T, pre, &none) != 0)
                return -1;
    if (none)
        fprintf(stderr, "pd-bench: --profile: the workers found no prefix cached (prefix caching "
                        "off?): no cached-prefix points\n");
    return 0;
}

int profile_cluster(const opts_t *o, pd_client_t *c, const pd_cluster_status_t *cs,
                   const pd_tok_t *tok, rng_t *rng)
{
    uint32_t max_ctx = o->profile_max_context;
    if (cs->max_seq_len && max_ctx + PROFILE_DECODE_OUT + 2 > cs->max_seq_len)
        max_ctx = cs->max_seq_len - PROFILE_DECODE_OUT - 2;
    json_t *j = json_object(), *pre = json_array(), *kv = json_array(), *dec = json_array();
    counters_t k0, k1;
    int rc = -1;
    json_object_set_new(j, "version", json_integer(1));
    json_object_set_new(j, "model_id", json_string(cs->model_name));
    json_object_set_new(j, "router", json_string(o->router));
    json_object_set_new(j, "block_size", json_integer(cs->block_size));
    json_object_set_new(j, "max_seq_len", json_integer(cs->max_seq_len));
    double ovh[64];
    size_t n_ovh = 0;
    uint32_t n_bos = pd_tok_add_bos(tok) && pd_tok_bos(tok) >= 0 ? 1 : 0;
    {
        /* Warm-up, not recorded: a worker's first passes fault in the
         * mmapped weights and would weigh on the fit as slow points. */
        double ttft, queue;
        fprintf(stderr, "pd-bench: --profile: warm-up\n");
        if (profile_run(o, c, tok, rng, 2, 1, 16, 4, &k0, &k1, &ttft, &queue) != 0)
            goto done;
    }
    for (uint32_t len = 16; len <= max_ctx; len *= 2) {
        /* one prompt at a time, then a burst the worker batches */
        uint32_t burst = o->profile_max_batch < 8 ? o->profile_max_batch : 8;
        for (int pass = 0; pass < (burst > 1 ? 2 : 1); pass++) {
            double ttft, queue;
            uint32_t n = pass ? burst : PROFILE_REPEAT;
            fprintf(stderr, "pd-bench: --profile: prefill %u tokens, %u %s\n", len, n,
                    pass ? "at once" : "one at a time");
            if (profile_run(o, c, tok, rng, n, pass ? 0 : 1, len, 2, &k0, &k1, &ttft, &queue) != 0)
                goto done;
            uint64_t nb = k1.prefill_batches - k0.prefill_batches;
            uint64_t nt = k1.kv_transfers - k0.kv_transfers;
            if (nb == 0) {
                fprintf(stderr, "pd-bench: --profile: the workers reported no prefill passes\n");
                goto done;
            }
            double pms = (double)(k1.prefill_us - k0.prefill_us) / 1000.0 / (double)nb;
            json_t *pt = json_object();
            json_object_set_new(pt, "tokens", json_integer(len + n_bos));
            json_object_set_new(pt, "batch", json_real((double)n / (double)nb));
            json_object_set_new(pt, "ms", json_real(pms));
            json_object_set_new(pt, "ttft_ms", json_real(ttft));
            json_array_append_new(pre, pt);
            if (pass)
                continue;
            if (nt > 0) {
                json_t *kt = json_object();
                json_object_set_new(kt, "tokens", json_integer(len + n_bos));
                json_object_set_new(kt, "ms", json_real((double)(k1.kv_transfer_us -
                                                                 k0.kv_transfer_us) /
                                                        1000.0 / (double)nt));
                json_array_append_new(kv, kt);
            }
            /* all of a prompt's passes (more than one when it was cut) */
            double per_prompt = (double)(k1.prefill_us - k0.prefill_us) / 1000.0 / (double)n;
            if (n_ovh < 64)
                ovh[n_ovh++] = ttft - per_prompt - queue > 0 ? ttft - per_prompt - queue : 0;
        }
    }
    if (profile_cached(o, c, tok, rng, max_ctx, pre) != 0)
        goto done;
    uint32_t ctxs[3] = { 32, 128, max_ctx }, n_ctx = max_ctx > 128 ? 3 : max_ctx > 32 ? 2 : 1;
    ctxs[n_ctx - 1] = max_ctx;
    for (uint32_t ci = 0; ci < n_ctx; ci++) {
        for (uint32_t bsz = 1; bsz <= o->profile_max_batch; bsz *= 2) {
            /* PROFILE_REPEAT runs, the median step time (a busy moment on a
             * shared machine slows one run, not the point) */
            double step_ms[PROFILE_REPEAT], batch = 0;
            for (int rep = 0; rep < PROFILE_REPEAT; rep++) {
                double ttft, queue;
                fprintf(stderr, "pd-bench: --profile: decode batch %u context %u (%d of %d)\n", bsz,
                        ctxs[ci], rep + 1, PROFILE_REPEAT);
                if (profile_run(o, c, tok, rng, bsz, 0, ctxs[ci], PROFILE_DECODE_OUT, &k0, &k1,
                                &ttft, &queue) != 0)
                    goto done;
                uint64_t steps = k1.steps - k0.steps;
                if (steps == 0) {
                    fprintf(stderr, "pd-bench: --profile: the workers reported no decode steps\n");
                    goto done;
                }
                batch += (double)(k1.decode_tokens - k0.decode_tokens) / (double)steps / PROFILE_REPEAT;
                step_ms[rep] = (double)(k1.decode_us - k0.decode_us) / 1000.0 / (double)steps;
            }
            qsort(step_ms, PROFILE_REPEAT, sizeof *step_ms, bench_cmp_double);
            json_t *pt = json_object();
            json_object_set_new(pt, "batch", json_real(batch));
            json_object_set_new(pt, "context", json_integer(ctxs[ci] + n_bos + PROFILE_DECODE_OUT / 2));
            json_object_set_new(pt, "ms", json_real(bench_percentile(step_ms, PROFILE_REPEAT, 50)));
            json_array_append_new(dec, pt);
        }
    }
    if (k1.n_only_prefill > 0 && k1.n_only_decode > 0) {
        json_t *inf = NULL;
        if (profile_interference(o, c, tok, rng, max_ctx, &inf) != 0)
            goto done;
        json_object_set_new(j, "interference", inf);
    }
    qsort(ovh, n_ovh, sizeof *ovh, bench_cmp_double);
    json_object_set_new(j, "n_prefill_workers", json_integer((json_int_t)k1.n_prefill));
    json_object_set_new(j, "n_decode_workers", json_integer((json_int_t)k1.n_decode));
    json_object_set_new(j, "decode_kv_blocks", json_integer(k1.decode_blocks));
    json_object_set_new(j, "prefill_kv_blocks", json_integer(k1.prefill_blocks));
    json_object_set_new(j, "overhead_ms", json_real(bench_percentile(ovh, n_ovh, 50)));
    json_object_set_new(j, "prefill", pre);
    json_object_set_new(j, "kv_transfer", kv);
    json_object_set_new(j, "decode", dec);
    pre = kv = dec = NULL;
    if (json_dump_file(j, o->profile_path, JSON_INDENT(1) | JSON_PRESERVE_ORDER |
                                               JSON_REAL_PRECISION(8)) != 0) {
        fprintf(stderr, "pd-bench: --profile %s: cannot write\n", o->profile_path);
        goto done;
    }
    fprintf(stderr, "pd-bench: --profile: wrote %s\n", o->profile_path);
    rc = 0;
done:
    json_decref(pre);
    json_decref(kv);
    json_decref(dec);
    json_decref(j);
    return rc;
}
