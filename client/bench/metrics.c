/* metrics.c -- pd-bench's numbers, as vLLM's benchmark_serving.py
 * computes them (see bench.h): per-request TTFT, TPOT, ITL and E2EL,
 * throughputs, goodput, and mean/median/std/percentiles of each. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

int bench_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* numpy.percentile with linear interpolation over sorted v. */
double bench_percentile(const double *v, size_t n, double p)
{
    if (n == 0)
        return 0;
    double pos = p / 100.0 * (double)(n - 1);
    size_t lo = (size_t)floor(pos), hi = (size_t)ceil(pos);
    return v[lo] + (v[hi] - v[lo]) * (pos - (double)lo);
}

/* Sorts v in place; an empty list gives zeros (vLLM's `x or 0`). */
static void stats_of(double *v, size_t n, const opts_t *o, stats_t *s)
{
    memset(s, 0, sizeof *s);
    if (n == 0)
        return;
    qsort(v, n, sizeof *v, bench_cmp_double);
    double sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += v[i];
    s->mean = sum / (double)n;
    double ss = 0;
    for (size_t i = 0; i < n; i++)
        ss += (v[i] - s->mean) * (v[i] - s->mean);
    s->std = sqrt(ss / (double)n);
    s->median = bench_percentile(v, n, 50);
    for (size_t k = 0; k < o->n_pcts; k++)
        s->pct[k] = bench_percentile(v, n, o->pcts[k]);
}

const char *const METRIC_KEY[M_COUNT] = { "ttft", "tpot", "itl", "e2el" };
const char *const METRIC_NAME[M_COUNT] = { "TTFT", "TPOT", "ITL", "E2EL" };
const char *const METRIC_HEADER[M_COUNT] = { "Time to First Token",
                                                    "Time per Output Token (excl. 1st token)",
                                                    "Inter-token Latency", "End-to-end Latency" };

double bench_ms_between(uint64_t a, uint64_t b) { return (double)(b - a) / 1e6; }

double bench_req_ttft_ms(const req_t *r)
{
    return bench_ms_between(r->send_ns, r->n_tok ? r->tok_ns[0] : r->end_ns);
}

int metrics_compute(const bench_t *b, metrics_t *m)
{
    const opts_t *o = b->o;
    memset(m, 0, sizeof *m);
    size_t n_itl = 0;
    for (size_t i = 0; i < b->n_reqs; i++)
        if (b->reqs[i].ok && b->reqs[i].n_chunks > 1)
            n_itl += b->reqs[i].n_chunks - 1;
    for (int k = 0; k < M_COUNT; k++) {
        m->vals[k] = malloc(((k == M_ITL ? n_itl : b->n_reqs) + 1) * sizeof(double));
        if (m->vals[k] == NULL)
            return -1;
    }
    m->duration_s = (double)(b->end_ns - b->start_ns) / 1e9;
    size_t n_sec = (size_t)ceil(m->duration_s) + 1;
    uint64_t *per_sec = calloc(n_sec, sizeof *per_sec);
    if (per_sec == NULL)
        return -1;
    for (size_t i = 0; i < b->n_reqs; i++) {
        const req_t *r = &b->reqs[i];
        if (r->state != REQ_DONE) {
            m->unfinished++;
            continue;
        }
        if (!r->ok) {
            m->failed++;
            continue;
        }
        m->completed++;
        m->total_input += r->prompt_len;
        m->total_output += r->n_tok;
        double ttft = bench_req_ttft_ms(r), e2el = bench_ms_between(r->send_ns, r->end_ns), tpot = 0;
        if (r->n_tok > 1) {
            tpot = (e2el - ttft) / (double)(r->n_tok - 1);
            m->vals[M_TPOT][m->n_vals[M_TPOT]++] = tpot;
        }
        m->vals[M_TTFT][m->n_vals[M_TTFT]++] = ttft;
        m->vals[M_E2EL][m->n_vals[M_E2EL]++] = e2el;
        for (size_t k = 1; k < r->n_chunks; k++)
            m->vals[M_ITL][m->n_vals[M_ITL]++] = bench_ms_between(r->chunk_ns[k - 1], r->chunk_ns[k]);
        for (size_t k = 0; k < r->n_tok; k++) {
            size_t s = (size_t)((r->tok_ns[k] - b->start_ns) / 1000000000ull);
            per_sec[s < n_sec ? s : n_sec - 1]++;
        }
        bool good = (o->slo_ttft_ms < 0 || ttft <= o->slo_ttft_ms) &&
                    (o->slo_tpot_ms < 0 || tpot <= o->slo_tpot_ms) &&
                    (o->slo_e2el_ms < 0 || e2el <= o->slo_e2el_ms);
        if (o->has_goodput && good)
            m->good++;
    }
    for (size_t s = 0; s < n_sec; s++)
        if ((double)per_sec[s] > m->max_output_tokens_per_s)
            m->max_output_tokens_per_s = (double)per_sec[s];
    free(per_sec);
    double dur = m->duration_s > 0 ? m->duration_s : 1e-9;
    m->request_throughput = (double)m->completed / dur;
    m->request_goodput = (double)m->good / dur;
    m->output_throughput = (double)m->total_output / dur;
    m->total_token_throughput = (double)(m->total_input + m->total_output) / dur;
    for (int k = 0; k < M_COUNT; k++)
        stats_of(m->vals[k], m->n_vals[k], o, &m->st[k]);
    return 0;
}

void metrics_free(metrics_t *m)
{
    for (int k = 0; k < M_COUNT; k++)
        free(m->vals[k]);
}
