/* metrics.c -- see metrics.h. */
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"
#include "base/grow.h"

/* ====== Histograms ====== */

/* Bucket upper bounds in seconds, vLLM's (vllm/engine/metrics.py). */
static const double g_ttft_s[] = { 0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5,
                                   0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0 };
static const double g_tpot_s[] = { 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5,
                                   0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0 };
static const double g_e2e_s[] = { 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0,
                                  30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0,
                                  7680.0 };
#define N_OF(a) (sizeof(a) / sizeof((a)[0]))
#define MAX_BUCKETS 24

typedef struct {
    const double *le;              /* (n_le) upper bounds, ascending */
    size_t n_le;
    uint64_t counts[MAX_BUCKETS];  /* (n_le) observations <= le[i] (not cumulative) */
    uint64_t count;                /* all observations (+Inf) */
    double sum;
} hist_t;

static void hist_init(hist_t *h, const double *le, size_t n)
{
    memset(h, 0, sizeof *h);
    h->le = le;
    h->n_le = n < MAX_BUCKETS ? n : MAX_BUCKETS;
}

static void hist_observe(hist_t *h, double v)
{
    for (size_t i = 0; i < h->n_le; i++)
        if (v <= h->le[i]) {
            h->counts[i]++;
            break;
        }
    h->count++;
    h->sum += v;
}

/* Finish reasons as vLLM labels them; index = Pd__FinishReason. */
#define N_FINISH 8
static const char *const g_finish_names[N_FINISH] = { "none", "length", "stop", "stop", "stop",
                                                       "abort", "error", "length" };
/* Distinct labels in output order. */
static const char *const g_finish_labels[] = { "stop", "length", "abort" };
#define N_CODES 7
static const char *const g_code_names[N_CODES] = {
    "none", "invalid_argument", "resource_exhausted", "unavailable", "deadline_exceeded",
    "cancelled", "internal"
};

struct pd_metrics {
    pthread_mutex_t mu;
    char model[128];
    uint64_t prompt_tokens, generation_tokens, preemptions;
    uint64_t success[N_OF(g_finish_labels)];
    uint64_t failure[N_CODES];
    hist_t ttft, tpot, e2e, queue;
};

const char *pd_metrics_finish_name(int finish)
{
    return finish >= 0 && finish < N_FINISH ? g_finish_names[finish] : "unknown";
}

pd_metrics_t *pd_metrics_new(const char *model_name, pd_err_t *err)
{
    pd_metrics_t *m = calloc(1, sizeof *m);
    if (m == NULL) {
        pd_err_set(err, PD_ENOMEM, "metrics store");
        return NULL;
    }
    pthread_mutex_init(&m->mu, NULL);
    /* Label values: keep printable ASCII, never a quote or backslash. */
    size_t j = 0;
    for (const char *s = model_name ? model_name : ""; *s && j + 1 < sizeof m->model; s++)
        m->model[j++] = (*s >= 0x20 && *s < 0x7f && *s != '"' && *s != '\\') ? *s : '_';
    m->model[j] = '\0';
    hist_init(&m->ttft, g_ttft_s, N_OF(g_ttft_s));
    hist_init(&m->tpot, g_tpot_s, N_OF(g_tpot_s));
    hist_init(&m->e2e, g_e2e_s, N_OF(g_e2e_s));
    hist_init(&m->queue, g_ttft_s, N_OF(g_ttft_s));
    return m;
}

void pd_metrics_free(pd_metrics_t *m)
{
    if (m == NULL)
        return;
    pthread_mutex_destroy(&m->mu);
    free(m);
}

/* ====== Updates (reactor thread) ====== */

void pd_metrics_request_done(pd_metrics_t *m, int finish, uint32_t n_prompt, uint32_t n_gen,
                             uint64_t queue_us, uint64_t ttft_us, uint64_t e2e_us)
{
    if (m == NULL)
        return;
    const char *name = pd_metrics_finish_name(finish);
    pthread_mutex_lock(&m->mu);
    m->prompt_tokens += n_prompt;
    m->generation_tokens += n_gen;
    for (size_t i = 0; i < N_OF(g_finish_labels); i++)
        if (strcmp(name, g_finish_labels[i]) == 0)
            m->success[i]++;
    hist_observe(&m->e2e, (double)e2e_us / 1e6);
    hist_observe(&m->queue, (double)queue_us / 1e6);
    if (ttft_us > 0 && n_gen > 0)
        hist_observe(&m->ttft, (double)ttft_us / 1e6);
    if (n_gen > 1 && e2e_us > ttft_us)
        hist_observe(&m->tpot, (double)(e2e_us - ttft_us) / 1e6 / (double)(n_gen - 1));
    pthread_mutex_unlock(&m->mu);
}

void pd_metrics_request_failed(pd_metrics_t *m, int code)
{
    if (m == NULL)
        return;
    pthread_mutex_lock(&m->mu);
    m->failure[code > 0 && code < N_CODES ? code : N_CODES - 1]++;
    pthread_mutex_unlock(&m->mu);
}

void pd_metrics_preempted(pd_metrics_t *m)
{
    if (m == NULL)
        return;
    pthread_mutex_lock(&m->mu);
    m->preemptions++;
    pthread_mutex_unlock(&m->mu);
}

/* ====== Rendering (HTTP threads) ====== */

typedef struct {
    char *buf;
    size_t len, cap;
    bool failed;
} sbuf_t;

static void sb_printf(sbuf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf_t *b, const char *fmt, ...)
{
    if (b->failed)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->buf + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->failed = true;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        if (pd_grow((void **)&b->buf, &b->cap, b->len + (size_t)n + 1, 1, 4096) != 0) {
            b->failed = true;
            return;
        }
    }
}

static void head(sbuf_t *b, const char *name, const char *type, const char *help)
{
    sb_printf(b, "# HELP pdserve:%s %s\n# TYPE pdserve:%s %s\n", name, help, name, type);
}

static void hist_render(sbuf_t *b, const char *model, const char *name, const char *help,
                        const hist_t *h)
{
    head(b, name, "histogram", help);
    uint64_t cum = 0;
    for (size_t i = 0; i < h->n_le; i++) {
        cum += h->counts[i];
        sb_printf(b, "pdserve:%s_bucket{model_name=\"%s\",le=\"%g\"} %llu\n", name, model,
                  h->le[i], (unsigned long long)cum);
    }
    sb_printf(b, "pdserve:%s_bucket{model_name=\"%s\",le=\"+Inf\"} %llu\n", name, model,
              (unsigned long long)h->count);
    sb_printf(b, "pdserve:%s_sum{model_name=\"%s\"} %.6f\n", name, model, h->sum);
    sb_printf(b, "pdserve:%s_count{model_name=\"%s\"} %llu\n", name, model,
              (unsigned long long)h->count);
}

static const char *role_name(Pd__Role r)
{
    switch (r) {
    case PD__ROLE__ROLE_PREFILL: return "prefill";
    case PD__ROLE__ROLE_DECODE: return "decode";
    case PD__ROLE__ROLE_BOTH: return "both";
    default: return "none";
    }
}

/* A label value from the wire: printable ASCII, quotes and backslashes
 * replaced, at most cap-1 bytes. */
static const char *label(char *dst, size_t cap, const char *src)
{
    size_t j = 0;
    for (const char *s = src ? src : ""; *s && j + 1 < cap; s++)
        dst[j++] = (*s >= 0x20 && *s < 0x7f && *s != '"' && *s != '\\') ? *s : '_';
    dst[j] = '\0';
    return dst;
}

static void cluster_render(sbuf_t *b, const char *model, const Pd__ClusterStatus *cs)
{
    uint32_t active = cs->active_requests, queued = cs->queued_requests;
    head(b, "num_requests_running", "gauge", "Requests dispatched to workers.");
    sb_printf(b, "pdserve:num_requests_running{model_name=\"%s\"} %u\n", model,
              active > queued ? active - queued : 0);
    head(b, "num_requests_waiting", "gauge", "Requests waiting in the router's queue.");
    sb_printf(b, "pdserve:num_requests_waiting{model_name=\"%s\"} %u\n", model, queued);

    head(b, "kv_cache_usage_perc", "gauge", "Fraction of a worker's KV blocks in use (0..1).");
    uint64_t kv_bytes = 0, kv_n = 0, kv_us = 0;
    char id[80];
    for (size_t i = 0; i < cs->n_workers; i++) {
        const Pd__WorkerStatus *w = cs->workers[i];
        if (w == NULL)
            continue;
        double use = w->total_blocks ? 1.0 - (double)w->free_blocks / (double)w->total_blocks
                                     : 0.0;
        sb_printf(b, "pdserve:kv_cache_usage_perc{model_name=\"%s\",worker=\"%s\",role=\"%s\"} "
                     "%.6f\n",
                  model, label(id, sizeof id, w->worker_id), role_name(w->role),
                  use < 0 ? 0.0 : use);
        if (w->counters) {
            kv_bytes += w->counters->kv_sent_bytes;
            kv_n += w->counters->kv_transfers;
            kv_us += w->counters->kv_transfer_us;
        }
    }
    head(b, "kv_transfer_bytes_total", "counter",
         "KV bytes shipped prefill -> decode by the workers now registered.");
    sb_printf(b, "pdserve:kv_transfer_bytes_total{model_name=\"%s\"} %llu\n", model,
              (unsigned long long)kv_bytes);
    /* Workers report only the count and the sum of ship->ack times, so the
     * histogram has its +Inf bucket only (valid Prometheus; rate(sum) /
     * rate(count) gives the mean). */
    head(b, "kv_transfer_seconds", "histogram",
         "KV transfer time, ship to acknowledgement (sum and count only).");
    sb_printf(b, "pdserve:kv_transfer_seconds_bucket{model_name=\"%s\",le=\"+Inf\"} %llu\n",
              model, (unsigned long long)kv_n);
    sb_printf(b, "pdserve:kv_transfer_seconds_sum{model_name=\"%s\"} %.6f\n", model,
              (double)kv_us / 1e6);
    sb_printf(b, "pdserve:kv_transfer_seconds_count{model_name=\"%s\"} %llu\n", model,
              (unsigned long long)kv_n);

    /* vLLM's prefix cache counters count tokens: queried, and of them hit. */
    static const struct {
        const char *name, *type, *help;
    } px[] = {
        { "prefix_cache_queries", "counter", "Prompt tokens looked up in a worker's prefix cache." },
        { "prefix_cache_hits", "counter", "Prompt tokens found in a worker's prefix cache." },
        { "prefix_cache_evictions", "counter", "Cached prefix blocks evicted for new data." },
        { "prefix_cache_blocks", "gauge", "Prefix blocks a worker caches now (in use or not)." },
        { "prefix_routed_requests", "counter",
          "Requests the router sent to a worker whose cache it knew held their prefix." },
    };
    for (size_t k = 0; k < N_OF(px); k++) {
        bool is_counter = px[k].type[0] == 'c';
        char nm[64];
        snprintf(nm, sizeof nm, "%s%s", px[k].name, is_counter ? "_total" : "");
        head(b, nm, px[k].type, px[k].help);
        for (size_t i = 0; i < cs->n_workers; i++) {
            const Pd__WorkerStatus *w = cs->workers[i];
            if (w == NULL || !w->prefix_caching || w->counters == NULL)
                continue;
            const Pd__WorkerCounters *c = w->counters;
            uint64_t v = k == 0 ? c->prefix_queries : k == 1 ? c->prefix_hits
                       : k == 2 ? c->prefix_evictions : k == 3 ? c->prefix_cached_blocks
                                : w->routed_cached_requests;
            sb_printf(b, "pdserve:%s{model_name=\"%s\",worker=\"%s\"} %llu\n", nm, model,
                      label(id, sizeof id, w->worker_id), (unsigned long long)v);
        }
    }

    head(b, "prefix_index_hashes", "gauge",
         "Distinct prefix block hashes in the router's index (workers now registered).");
    sb_printf(b, "pdserve:prefix_index_hashes{model_name=\"%s\"} %u\n", model,
              cs->prefix_index_hashes);

    head(b, "workers", "gauge", "Registered workers by role and state.");
    static const Pd__Role roles[] = { PD__ROLE__ROLE_PREFILL, PD__ROLE__ROLE_DECODE,
                                      PD__ROLE__ROLE_BOTH };
    static const char *const states[] = { "ready", "cordoned", "draining" };
    for (size_t r = 0; r < N_OF(roles); r++)
        for (size_t s = 0; s < N_OF(states); s++) {
            unsigned n = 0;
            for (size_t i = 0; i < cs->n_workers; i++) {
                const Pd__WorkerStatus *w = cs->workers[i];
                if (w && w->role == roles[r] && w->state && strcmp(w->state, states[s]) == 0)
                    n++;
            }
            sb_printf(b, "pdserve:workers{model_name=\"%s\",role=\"%s\",state=\"%s\"} %u\n",
                      model, role_name(roles[r]), states[s], n);
        }
}

char *pd_metrics_render(pd_metrics_t *m, const Pd__ClusterStatus *cs)
{
    if (m == NULL)
        return NULL;
    sbuf_t b = { .cap = 16384 };
    b.buf = malloc(b.cap);
    if (b.buf == NULL)
        return NULL;
    b.buf[0] = '\0';
    const char *model = m->model;
    if (cs)
        cluster_render(&b, model, cs);
    pthread_mutex_lock(&m->mu);
    head(&b, "prompt_tokens_total", "counter", "Prompt tokens of finished requests.");
    sb_printf(&b, "pdserve:prompt_tokens_total{model_name=\"%s\"} %llu\n", model,
              (unsigned long long)m->prompt_tokens);
    head(&b, "generation_tokens_total", "counter", "Tokens generated by finished requests.");
    sb_printf(&b, "pdserve:generation_tokens_total{model_name=\"%s\"} %llu\n", model,
              (unsigned long long)m->generation_tokens);
    head(&b, "request_success_total", "counter", "Requests finished, by finish reason.");
    for (size_t i = 0; i < N_OF(g_finish_labels); i++)
        sb_printf(&b, "pdserve:request_success_total{model_name=\"%s\",finished_reason=\"%s\"} "
                      "%llu\n",
                  model, g_finish_labels[i], (unsigned long long)m->success[i]);
    head(&b, "request_failure_total", "counter", "Requests ended by an error, by error code.");
    for (int i = 1; i < N_CODES; i++)
        sb_printf(&b, "pdserve:request_failure_total{model_name=\"%s\",code=\"%s\"} %llu\n",
                  model, g_code_names[i], (unsigned long long)m->failure[i]);
    head(&b, "num_preemptions_total", "counter", "Requests preempted by decode workers.");
    sb_printf(&b, "pdserve:num_preemptions_total{model_name=\"%s\"} %llu\n", model,
              (unsigned long long)m->preemptions);
    hist_render(&b, model, "time_to_first_token_seconds", "Time to first token.", &m->ttft);
    hist_render(&b, model, "time_per_output_token_seconds",
                "Mean time per output token after the first, per request.", &m->tpot);
    hist_render(&b, model, "e2e_request_latency_seconds", "End-to-end request latency.",
                &m->e2e);
    hist_render(&b, model, "request_queue_time_seconds",
                "Time from acceptance to the first dispatch to a prefill worker.", &m->queue);
    pthread_mutex_unlock(&m->mu);
    if (b.failed) {
        free(b.buf);
        return NULL;
    }
    return b.buf;
}
