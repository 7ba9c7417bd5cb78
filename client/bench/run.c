/* run.c -- pd-bench's load: arrivals by a gamma process, the concurrency
 * cap, the requests in flight and their bookkeeping, Ctrl-C. Sending and
 * receiving is run_zmq.c's (a pdserve router) or run_http.c's (--target).
 * See bench.h. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench.h"
#include "base/grow.h"

int bench_map_put(bench_t *b, uint64_t id, size_t idx)
{
    if ((b->map_used + 1) * 2 > b->map_cap) {
        size_t cap = b->map_cap ? b->map_cap * 2 : 1024;
        uint64_t *ids = calloc(cap, sizeof *ids);
        size_t *idxs = calloc(cap, sizeof *idxs);
        if (ids == NULL || idxs == NULL) {
            free(ids);
            free(idxs);
            return -1;
        }
        for (size_t i = 0; i < b->map_cap; i++) {
            if (b->map_idx[i] == 0)
                continue;
            size_t h = (size_t)(b->map_id[i] * 0x9e3779b97f4a7c15ull) & (cap - 1);
            while (idxs[h])
                h = (h + 1) & (cap - 1);
            ids[h] = b->map_id[i];
            idxs[h] = b->map_idx[i];
        }
        free(b->map_id);
        free(b->map_idx);
        b->map_id = ids;
        b->map_idx = idxs;
        b->map_cap = cap;
    }
    size_t h = (size_t)(id * 0x9e3779b97f4a7c15ull) & (b->map_cap - 1);
    while (b->map_idx[h])
        h = (h + 1) & (b->map_cap - 1);
    b->map_id[h] = id;
    b->map_idx[h] = idx + 1;
    b->map_used++;
    return 0;
}

req_t *bench_map_get(bench_t *b, uint64_t id)
{
    if (b->map_cap == 0)
        return NULL;
    size_t h = (size_t)(id * 0x9e3779b97f4a7c15ull) & (b->map_cap - 1);
    while (b->map_idx[h]) {
        if (b->map_id[h] == id)
            return &b->reqs[b->map_idx[h] - 1];
        h = (h + 1) & (b->map_cap - 1);
    }
    return NULL;
}

int bench_push_ns(uint64_t **arr, size_t *n, size_t *cap, uint64_t v)
{
    if (pd_grow((void **)arr, cap, *n + 1, sizeof **arr, 16) != 0)
        return -1;
    (*arr)[(*n)++] = v;
    return 0;
}

req_t *bench_new_req(bench_t *b)
{
    if (pd_grow((void **)&b->reqs, &b->cap_reqs, b->n_reqs + 1, sizeof *b->reqs, 256) != 0)
        return NULL;
    req_t *r = &b->reqs[b->n_reqs];
    memset(r, 0, sizeof *r);
    return r;
}

void bench_req_fail(req_t *r, const char *fmt, const char *a, const char *b)
{
    if (r->error)
        return;
    size_t len = strlen(fmt) + strlen(a) + strlen(b) + 1;
    r->error = malloc(len);
    if (r->error)
        snprintf(r->error, len, fmt, a, b);
    r->ok = false;
}

static void progress(const bench_t *b, size_t total, bool final)
{
    double el = (double)(pd_now_ns() - b->start_ns) / 1e9;
    char bar[31];
    size_t fill = total ? b->done * 30 / total : 0;
    for (size_t i = 0; i < 30; i++)
        bar[i] = i < fill ? '#' : '.';
    bar[30] = 0;
    if (total)
        fprintf(stderr, "\r[%s] %zu/%zu done, %zu in flight, %.1f s ", bar, b->done, total,
                b->inflight, el);
    else
        fprintf(stderr, "\r%zu done, %zu in flight, %.1f s ", b->done, b->inflight, el);
    if (final)
        fputc('\n', stderr);
}

/* Ctrl-C: cancels every request in flight (once) and gives their final
 * chunks BENCH_DRAIN_MS. */
static void bench_interrupt(bench_t *b, pd_client_t *c, uint64_t *drain_until)
{
    b->interrupted = true;
    if (b->http)
        run_http_cancel(b);
    if (c)
        run_zmq_cancel(b, c);
    *drain_until = pd_now_ns() + BENCH_DRAIN_MS * 1000000ull;
}

int bench_step(bench_t *b, pd_client_t *c, int wait_ms, uint64_t *drain_until)
{
    if (pd_interrupted && !b->interrupted)
        bench_interrupt(b, c, drain_until);
    pd_err_t err = { 0 };
    if (b->inflight > 0 || wait_ms > 0) {
        int rc = 0;
        if (b->inflight > 0 && b->http)
            run_http_poll(b, wait_ms);
        else if (b->inflight > 0)
            rc = run_zmq_poll(b, c, wait_ms, &err);
        if (rc < 0) {
            fprintf(stderr, "pd-bench: %s\n", err.msg);
            return -1;
        }
        if (b->inflight == 0 && wait_ms > 0) {
            struct timespec ts = { 0, (long)wait_ms * 1000000L };
            nanosleep(&ts, NULL);
        }
    }
    return 0;
}

/* Runs the load: arrivals by the gamma process, at most max_concurrency in
 * flight, until num_prompts are done or --duration has passed, or Ctrl-C. */
int bench_run(bench_t *b, pd_client_t *c, const dataset_t *d, rng_t *rng)
{
    const opts_t *o = b->o;
    if (d->n == 0) { /* the loaders refuse an empty dataset; request i uses item i % n */
        fprintf(stderr, "pd-bench: the dataset has no prompts\n");
        return -1;
    }
    bool by_duration = o->duration_s > 0;
    size_t limit = by_duration && !o->has_num_prompts ? SIZE_MAX : o->num_prompts;
    uint64_t dur_ns = (uint64_t)(o->duration_s * 1e9);
    double theta = isinf(o->rate) ? 0 : 1.0 / (o->rate * o->burstiness);
    b->start_ns = pd_now_ns();
    uint64_t next_at = b->start_ns, last_bar = 0;
    if (d->timed)
        next_at += d->items[0].at_ms * 1000000ull;
    size_t next = 0;
    bool stop_submitting = false;
    uint64_t drain_until = 0;
    for (;;) {
        uint64_t t = pd_now_ns();
        if (pd_interrupted && !b->interrupted)
            bench_interrupt(b, c, &drain_until);
        if (b->interrupted) /* here or in bench_step */
            stop_submitting = true;
        if (by_duration && t - b->start_ns >= dur_ns)
            stop_submitting = true;
        while (!stop_submitting && next < limit && t >= next_at &&
               (o->max_concurrency == 0 || b->inflight < o->max_concurrency)) {
            int rc = b->http ? run_http_submit(b, d, next) : run_zmq_submit(b, c, d, next);
            if (rc < 0) {
                fprintf(stderr, "pd-bench: out of memory\n");
                return -1;
            }
            if (rc > 0)
                break;
            next++;
            if (d->timed) /* a trace: its own arrivals, each item once */
                next_at = next < d->n ? b->start_ns + d->items[next].at_ms * 1000000ull : UINT64_MAX;
            else if (theta > 0)
                next_at += (uint64_t)(rng_gamma(rng, o->burstiness, theta) * 1e9);
            t = pd_now_ns();
        }
        if ((next >= limit || stop_submitting) && b->inflight == 0)
            break;
        if (b->interrupted && t >= drain_until)
            break;
        int wait_ms = BENCH_POLL_MS;
        if (!stop_submitting && next < limit && next_at > t &&
            (o->max_concurrency == 0 || b->inflight < o->max_concurrency)) {
            uint64_t ms = (next_at - t) / 1000000ull;
            if (ms < (uint64_t)wait_ms)
                wait_ms = (int)ms;
        }
        if (bench_step(b, c, wait_ms, &drain_until) != 0)
            return -1;
        if (o->progress && pd_now_ns() - last_bar > BENCH_PROGRESS_NS) {
            last_bar = pd_now_ns();
            progress(b, limit == SIZE_MAX ? 0 : limit, false);
        }
    }
    if (b->end_ns == 0 || b->interrupted || b->done != b->n_reqs)
        b->end_ns = pd_now_ns();
    if (o->progress)
        progress(b, limit == SIZE_MAX ? 0 : limit, true);
    return 0;
}

void bench_free(bench_t *b)
{
    for (size_t i = 0; i < b->n_reqs; i++) {
        free(b->reqs[i].tok_ns);
        free(b->reqs[i].chunk_ns);
        free(b->reqs[i].error);
        free(b->reqs[i].out_ids);
        free(b->reqs[i].out_text);
        pd_httpc_conn_free(b->reqs[i].conn);
    }
    free(b->live);
    free(b->pfd);
    free(b->reqs);
    free(b->map_id);
    free(b->map_idx);
}
