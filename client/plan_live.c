/* plan_live.c -- see plan_live.h */
#include "plan_live.h"

#include <errno.h>
#include <stdbool.h>
#include <math.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/clock.h"
#include "httpc.h"
#include "pdclient.h"

#define OBS_HTTP_TIMEOUT_MS 5000  /* one GET /metrics */
#define OBS_STATUS_TIMEOUT_MS 3000
#define OBS_NAME_MAX 128          /* longest series name we look at */
#define OBS_NUM_MAX 64            /* longest number token */

/* ====== Prometheus text ====== */

static void hist_add(pd_obs_hist_t *h, double le, double count)
{
    uint32_t i = 0;
    while (i < h->n && h->le[i] < le)
        i++;
    if (i < h->n && h->le[i] == le) {
        h->count[i] += count;
        return;
    }
    if (h->n == PD_OBS_MAX_BUCKETS)
        return; /* more buckets than any router exports: ignore the rest */
    memmove(&h->le[i + 1], &h->le[i], (h->n - i) * sizeof h->le[0]);
    memmove(&h->count[i + 1], &h->count[i], (h->n - i) * sizeof h->count[0]);
    h->le[i] = le;
    h->count[i] = count;
    h->n++;
}

/* A number token [s, end): finite (or +Inf where allowed), at most
 * OBS_NUM_MAX characters. */
static int parse_num(const char *s, const char *end, bool inf_ok, double *out)
{
    char buf[OBS_NUM_MAX + 1];
    size_t n = (size_t)(end - s);
    if (n == 0 || n > OBS_NUM_MAX)
        return -1;
    memcpy(buf, s, n);
    buf[n] = '\0';
    if (inf_ok && strcmp(buf, "+Inf") == 0) {
        *out = INFINITY;
        return 0;
    }
    char *e;
    errno = 0;
    double v = strtod(buf, &e);
    if (errno || *e || !isfinite(v) || v < 0)
        return -1;
    *out = v;
    return 0;
}

/* One line: NAME[{LABELS}] VALUE. Unknown names are skipped. */
static int parse_line(const char *s, const char *end, pd_obs_metrics_t *m)
{
    const char *p = s;
    while (p < end && *p != '{' && *p != ' ')
        p++;
    size_t nlen = (size_t)(p - s);
    if (nlen == 0 || nlen > OBS_NAME_MAX)
        return nlen == 0 ? -1 : 0;
    char name[OBS_NAME_MAX + 1];
    memcpy(name, s, nlen);
    name[nlen] = '\0';
    const char *lab = NULL, *lab_end = NULL;
    if (p < end && *p == '{') {
        lab = ++p;
        bool quoted = false;
        for (; p < end && (quoted || *p != '}'); p++) {
            if (*p == '\\' && quoted && p + 1 < end)
                p++;
            else if (*p == '"')
                quoted = !quoted;
        }
        if (p == end)
            return -1;
        lab_end = p++;
    }
    while (p < end && *p == ' ')
        p++;
    const char *v = p;
    while (p < end && *p != ' ')
        p++; /* an optional timestamp may follow */
    double val;
    if (parse_num(v, p, false, &val) != 0)
        return -1;
    if (!strcmp(name, "pdserve:request_success_total"))
        m->done += val;
    else if (!strcmp(name, "pdserve:request_failure_total"))
        m->failed += val;
    else if (!strcmp(name, "pdserve:prompt_tokens_total"))
        m->prompt_tokens += val;
    else if (!strcmp(name, "pdserve:generation_tokens_total"))
        m->output_tokens += val;
    else {
        pd_obs_hist_t *h = !strcmp(name, "pdserve:time_to_first_token_seconds_bucket") ? &m->ttft
                           : !strcmp(name, "pdserve:time_per_output_token_seconds_bucket") ? &m->tpot
                                                                                             : NULL;
        if (h == NULL)
            return 0;
        const char *le = NULL;
        for (const char *q = lab; q && q + 4 <= lab_end; q++)
            if ((q == lab || q[-1] == ',') && !strncmp(q, "le=\"", 4)) {
                le = q + 4;
                break;
            }
        const char *le_end = le ? memchr(le, '"', (size_t)(lab_end - le)) : NULL;
        double bound;
        if (le_end == NULL || parse_num(le, le_end, true, &bound) != 0)
            return -1;
        hist_add(h, bound, val);
    }
    return 0;
}

int pd_obs_parse_metrics(const char *text, size_t len, pd_obs_metrics_t *m, pd_err_t *err)
{
    memset(m, 0, sizeof *m);
    const char *s = text, *end = text + len;
    size_t line = 0;
    while (s < end) {
        const char *nl = memchr(s, '\n', (size_t)(end - s));
        const char *e = nl ? nl : end;
        line++;
        if (e > s && *s != '#' && parse_line(s, e, m) != 0)
            return pd_err_set(err, PD_EINVAL, "/metrics line %zu: not NAME{LABELS} VALUE", line);
        s = e + 1;
    }
    return 0;
}

/* ====== Histogram arithmetic ====== */

double pd_obs_fraction_le(const pd_obs_hist_t *h, double x)
{
    if (h->n == 0 || h->count[h->n - 1] <= 0)
        return -1;
    double total = h->count[h->n - 1], lo = 0, c_lo = 0;
    for (uint32_t i = 0; i < h->n; i++) {
        if (x <= h->le[i]) {
            if (isinf(h->le[i])) /* beyond the last finite bound: all we know is c_lo */
                return c_lo / total;
            return (c_lo + (h->count[i] - c_lo) * (x - lo) / (h->le[i] - lo)) / total;
        }
        lo = h->le[i];
        c_lo = h->count[i];
    }
    return c_lo / total;
}

double pd_obs_quantile(const pd_obs_hist_t *h, double q)
{
    if (h->n == 0 || h->count[h->n - 1] <= 0)
        return -1;
    double target = q * h->count[h->n - 1], lo = 0, c_lo = 0;
    for (uint32_t i = 0; i < h->n; i++) {
        if (h->count[i] >= target) {
            if (isinf(h->le[i]))
                return lo;
            double span = h->count[i] - c_lo;
            return span > 0 ? lo + (h->le[i] - lo) * (target - c_lo) / span : h->le[i];
        }
        lo = h->le[i];
        c_lo = h->count[i];
    }
    return lo;
}

/* ====== Snapshots ====== */

static int get_metrics(const pd_httpc_url_t *u, pd_obs_metrics_t *m, pd_err_t *err)
{
    memset(m, 0, sizeof *m);
    char path[600];
    snprintf(path, sizeof path, "%s/metrics", u->path);
    pd_httpc_conn_t *c = pd_httpc_conn_new(u, "GET", path, NULL, 0, NULL, err);
    if (c == NULL)
        return PD_EIO;
    double until = pd_now_s() + OBS_HTTP_TIMEOUT_MS / 1000.0;
    int rc = 0;
    while (rc == 0) {
        double left = until - pd_now_s();
        if (left <= 0) {
            rc = pd_err_set(err, PD_EIO, "no answer to GET http://%s%s", u->hostport, path);
            break;
        }
        struct pollfd pf = { .fd = pd_httpc_conn_fd(c), .events = pd_httpc_conn_events(c) };
        if (poll(&pf, 1, (int)(left * 1000) + 1) > 0)
            rc = pd_httpc_conn_io(c, pf.revents, NULL, NULL, err);
    }
    if (rc == 1 && pd_httpc_conn_status(c) != 200)
        rc = pd_err_set(err, PD_EIO, "GET http://%s%s: HTTP %d", u->hostport, path,
                        pd_httpc_conn_status(c));
    if (rc == 1) {
        size_t len;
        const char *body = pd_httpc_conn_body(c, &len);
        rc = pd_obs_parse_metrics(body, len, m, err);
    }
    pd_httpc_conn_free(c);
    return rc < 0 ? rc : 0;
}

static const pd_worker_status_t *worker_by_id(const pd_cluster_status_t *s, const char *id)
{
    for (size_t i = 0; i < s->n_workers; i++)
        if (!strcmp(s->workers[i].id, id))
            return &s->workers[i];
    return NULL;
}

/* b - a, when the counter did not go back (a worker restarted under the same id). */
static double delta(uint64_t a, uint64_t b) { return b >= a ? (double)(b - a) : 0; }

static void worker_deltas(const pd_cluster_status_t *s0, const pd_cluster_status_t *s1,
                          pd_plan_obs_t *o)
{
    for (size_t i = 0; i < s1->n_workers; i++) {
        const pd_worker_status_t *w1 = &s1->workers[i], *w0 = worker_by_id(s0, w1->id);
        bool ready = !strcmp(w1->state, "ready");
        o->n_prefill += ready && !strcmp(w1->role, "prefill");
        o->n_decode += ready && !strcmp(w1->role, "decode");
        o->n_both += ready && !strcmp(w1->role, "both");
        o->n_other += !ready;
        if (w0 == NULL)
            continue;
        o->prefill_passes += delta(w0->prefill_batches, w1->prefill_batches);
        o->prefill_tokens += delta(w0->prefill_tokens, w1->prefill_tokens);
        o->prefill_ms += delta(w0->prefill_us, w1->prefill_us) / 1000;
        o->decode_steps += delta(w0->steps, w1->steps);
        o->decode_tokens += delta(w0->decode_tokens, w1->decode_tokens);
        o->decode_ms += delta(w0->decode_us, w1->decode_us) / 1000;
    }
}

static void hist_delta(const pd_obs_hist_t *a, const pd_obs_hist_t *b, pd_obs_hist_t *out)
{
    *out = *b;
    for (uint32_t i = 0; i < out->n; i++)
        for (uint32_t k = 0; k < a->n; k++)
            if (a->le[k] == out->le[i])
                out->count[i] = out->count[i] >= a->count[k] ? out->count[i] - a->count[k] : 0;
}

int pd_plan_observe(const char *router, const char *metrics_url, double window_s,
                    pd_plan_obs_t *o, pd_err_t *err)
{
    memset(o, 0, sizeof *o);
    pd_httpc_url_t u;
    int rc = pd_httpc_url_parse(metrics_url, &u, err);
    if (rc)
        return rc;
    pd_client_t *c = pd_client_new(router, err);
    if (c == NULL)
        return PD_EIO;
    pd_client_set_timeout(c, OBS_STATUS_TIMEOUT_MS);
    pd_cluster_status_t *s0 = NULL, *s1 = NULL;
    pd_obs_metrics_t m0, m1;
    double t0 = pd_now_s();
    rc = pd_client_status(c, &s0, err);
    if (rc == 0)
        rc = get_metrics(&u, &m0, err);
    while (rc == 0 && pd_now_s() - t0 < window_s) {
        struct timespec ts = { 0, 100 * 1000000L };
        nanosleep(&ts, NULL);
    }
    if (rc == 0)
        rc = pd_client_status(c, &s1, err);
    if (rc == 0)
        rc = get_metrics(&u, &m1, err);
    if (rc == 0) {
        o->window_s = pd_now_s() - t0;
        o->done = m1.done >= m0.done ? m1.done - m0.done : 0;
        o->failed = m1.failed >= m0.failed ? m1.failed - m0.failed : 0;
        o->prompt_tokens = m1.prompt_tokens >= m0.prompt_tokens ? m1.prompt_tokens - m0.prompt_tokens : 0;
        o->output_tokens = m1.output_tokens >= m0.output_tokens ? m1.output_tokens - m0.output_tokens : 0;
        hist_delta(&m0.ttft, &m1.ttft, &o->ttft);
        hist_delta(&m0.tpot, &m1.tpot, &o->tpot);
        o->queued = s1->queued_requests;
        o->active = s1->active_requests;
        worker_deltas(s0, s1, o);
    }
    pd_cluster_status_free(s0);
    pd_cluster_status_free(s1);
    pd_client_free(c);
    return rc;
}

/* ====== Reporting ====== */

void pd_plan_obs_print(const pd_plan_obs_t *o, double ttft_slo_ms, double tpot_slo_ms, FILE *f)
{
    double n = o->done > 0 ? o->done : 1;
    fprintf(f, "observed over %.1f s: %.3g req/s (%.0f finished, %.0f failed), mean input %.0f, "
               "output %.0f tokens; %u waiting, %u in flight at the end\n",
            o->window_s, (o->done + o->failed) / o->window_s, o->done, o->failed,
            o->prompt_tokens / n, o->output_tokens / n, o->queued, o->active);
    fprintf(f, "workers taking work: %u prefill, %u decode, %u colocated (%u cordoned or draining)\n",
            o->n_prefill, o->n_decode, o->n_both, o->n_other);
    double t90 = pd_obs_quantile(&o->ttft, 0.9), p90 = pd_obs_quantile(&o->tpot, 0.9);
    double tf = pd_obs_fraction_le(&o->ttft, ttft_slo_ms / 1000);
    double pf = pd_obs_fraction_le(&o->tpot, tpot_slo_ms / 1000);
    if (t90 >= 0)
        fprintf(f, "served: p90 TTFT %.1f ms (%.0f %% within %g ms)", t90 * 1000, tf * 100,
                ttft_slo_ms);
    if (p90 >= 0)
        fprintf(f, ", p90 TPOT %.2f ms (%.0f %% within %g ms)", p90 * 1000, pf * 100, tpot_slo_ms);
    if (t90 >= 0 || p90 >= 0)
        fprintf(f, " (from the router's histograms)\n");
    if (o->prefill_passes > 0)
        fprintf(f, "workers: %.0f prefill passes, %.1f tokens and %.2f ms each; ", o->prefill_passes,
                o->prefill_tokens / o->prefill_passes, o->prefill_ms / o->prefill_passes);
    if (o->decode_steps > 0)
        fprintf(f, "%.0f decode steps, batch %.2f and %.2f ms each", o->decode_steps,
                o->decode_tokens / o->decode_steps, o->decode_ms / o->decode_steps);
    if (o->prefill_passes > 0 || o->decode_steps > 0)
        fprintf(f, "\n");
}

json_t *pd_plan_obs_json(const pd_plan_obs_t *o, double ttft_slo_ms, double tpot_slo_ms)
{
    double t90 = pd_obs_quantile(&o->ttft, 0.9), p90 = pd_obs_quantile(&o->tpot, 0.9);
    json_t *j = json_object();
    json_object_set_new(j, "window_s", json_real(o->window_s));
    json_object_set_new(j, "finished", json_real(o->done));
    json_object_set_new(j, "failed", json_real(o->failed));
    json_object_set_new(j, "request_rate", json_real((o->done + o->failed) / o->window_s));
    json_object_set_new(j, "prefill_workers", json_integer(o->n_prefill));
    json_object_set_new(j, "decode_workers", json_integer(o->n_decode));
    json_object_set_new(j, "colocated_workers", json_integer(o->n_both));
    json_object_set_new(j, "p90_ttft_ms", t90 >= 0 ? json_real(t90 * 1000) : json_null());
    json_object_set_new(j, "p90_tpot_ms", p90 >= 0 ? json_real(p90 * 1000) : json_null());
    double tf = pd_obs_fraction_le(&o->ttft, ttft_slo_ms / 1000);
    double pf = pd_obs_fraction_le(&o->tpot, tpot_slo_ms / 1000);
    json_object_set_new(j, "ttft_within_slo", tf >= 0 ? json_real(tf) : json_null());
    json_object_set_new(j, "tpot_within_slo", pf >= 0 ? json_real(pf) : json_null());
    json_object_set_new(j, "prefill_passes", json_real(o->prefill_passes));
    json_object_set_new(j, "prefill_pass_ms",
                        o->prefill_passes > 0 ? json_real(o->prefill_ms / o->prefill_passes) : json_null());
    json_object_set_new(j, "decode_steps", json_real(o->decode_steps));
    json_object_set_new(j, "decode_step_ms",
                        o->decode_steps > 0 ? json_real(o->decode_ms / o->decode_steps) : json_null());
    return j;
}
