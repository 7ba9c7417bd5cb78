/* report.c -- pd-bench's output: the text summary (vLLM's layout), the
 * --json result line, --save-requests, --plot (gnuplot). See bench.h. */
#include <errno.h>
#include <math.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

extern char **environ;

/* "99", "99.9": vLLM's p_word. */
static void pct_word(double p, char *buf, size_t cap)
{
    if (p == floor(p))
        snprintf(buf, cap, "%d", (int)p);
    else
        snprintf(buf, cap, "%g", p);
}

static void print_row_u(const char *name, uint64_t v) { printf("%-40s %-10llu\n", name, (unsigned long long)v); }
static void print_row_f(const char *name, double v) { printf("%-40s %-10.2f\n", name, v); }

static void print_title(const char *s, char fill)
{
    size_t len = strlen(s), n = 50, left = len < n ? (n - len) / 2 : 0;
    size_t right = len < n ? n - len - left : 0;
    for (size_t i = 0; i < left; i++)
        putchar(fill);
    fputs(s, stdout);
    for (size_t i = 0; i < right; i++)
        putchar(fill);
    putchar('\n');
}

void report_summary(const bench_t *b, const metrics_t *m)
{
    const opts_t *o = b->o;
    print_title(" Serving Benchmark Result ", '=');
    print_row_u("Successful requests:", m->completed);
    print_row_u("Failed requests:", m->failed);
    if (b->interrupted)
        print_row_u("Unfinished (interrupted) requests:", m->unfinished);
    if (o->max_concurrency)
        print_row_u("Maximum request concurrency:", o->max_concurrency);
    print_row_f("Benchmark duration (s):", m->duration_s);
    print_row_u("Total input tokens:", m->total_input);
    print_row_u("Total generated tokens:", m->total_output);
    print_row_f("Request throughput (req/s):", m->request_throughput);
    if (o->has_goodput)
        print_row_f("Request goodput (req/s):", m->request_goodput);
    print_row_f("Output token throughput (tok/s):", m->output_throughput);
    print_row_f("Total Token throughput (tok/s):", m->total_token_throughput);
    for (int k = 0; k < M_COUNT; k++) {
        char name[64], w[16];
        print_title(METRIC_HEADER[k], '-');
        snprintf(name, sizeof name, "Mean %s (ms):", METRIC_NAME[k]);
        print_row_f(name, m->st[k].mean);
        snprintf(name, sizeof name, "Median %s (ms):", METRIC_NAME[k]);
        print_row_f(name, m->st[k].median);
        for (size_t p = 0; p < o->n_pcts; p++) {
            pct_word(o->pcts[p], w, sizeof w);
            snprintf(name, sizeof name, "P%s %s (ms):", w, METRIC_NAME[k]);
            print_row_f(name, m->st[k].pct[p]);
        }
    }
    print_title("", '=');
    fflush(stdout);
}

static void set_num(json_t *o, const char *k, double v)
{
    json_object_set_new(o, k, isfinite(v) ? json_real(v) : json_null());
}

json_t *report_json(const bench_t *b, const metrics_t *m, const char *model_id)
{
    const opts_t *o = b->o;
    static const char *const DS[] = { "random", "file", "sharegpt", "mooncake", "multi-turn" };
    json_t *j = json_object();
    char date[32];
    time_t now = time(NULL);
    struct tm tm;
    strftime(date, sizeof date, "%Y%m%d-%H%M%S", gmtime_r(&now, &tm));
    json_object_set_new(j, "date", json_string(date));
    json_object_set_new(j, "backend", json_string(o->target ? "openai" : "pdserve"));
    if (o->target)
        json_object_set_new(j, "base_url", json_string(o->target));
    else
        json_object_set_new(j, "router", json_string(o->router));
    json_object_set_new(j, "model_id", json_string(model_id));
    json_object_set_new(j, "tokenizer_id", o->model ? json_string(o->model) : json_null());
    json_object_set_new(j, "dataset", json_string(DS[o->dataset]));
    json_object_set_new(j, "num_prompts", json_integer((json_int_t)b->n_reqs));
    json_object_set_new(j, "request_rate", isinf(o->rate) ? json_string("inf") : json_real(o->rate));
    json_object_set_new(j, "burstiness", json_real(o->burstiness));
    json_object_set_new(j, "max_concurrency",
                        o->max_concurrency ? json_integer(o->max_concurrency) : json_null());
    json_object_set_new(j, "seed", json_integer((json_int_t)o->seed));
    json_object_set_new(j, "ignore_eos", json_boolean(o->ignore_eos));
    if (o->dataset == DS_RANDOM) {
        json_object_set_new(j, "input_len", json_integer(o->input_len));
        json_object_set_new(j, "output_len", json_integer(o->output_len));
        json_object_set_new(j, "range_ratio", json_real(o->range_ratio));
    }
    json_object_set_new(j, "prefix_len", json_integer(o->prefix_len));
    json_object_set_new(j, "num_prefixes", json_integer(o->num_prefixes ? o->num_prefixes : 1));
    json_t *g = json_object();
    if (o->slo_ttft_ms >= 0)
        set_num(g, "ttft", o->slo_ttft_ms);
    if (o->slo_tpot_ms >= 0)
        set_num(g, "tpot", o->slo_tpot_ms);
    if (o->slo_e2el_ms >= 0)
        set_num(g, "e2el", o->slo_e2el_ms);
    json_object_set_new(j, "goodput", g);
    json_object_set_new(j, "interrupted", json_boolean(b->interrupted));
    set_num(j, "duration", m->duration_s);
    json_object_set_new(j, "completed", json_integer((json_int_t)m->completed));
    json_object_set_new(j, "failed", json_integer((json_int_t)m->failed));
    json_object_set_new(j, "unfinished", json_integer((json_int_t)m->unfinished));
    json_object_set_new(j, "total_input_tokens", json_integer((json_int_t)m->total_input));
    json_object_set_new(j, "total_output_tokens", json_integer((json_int_t)m->total_output));
    set_num(j, "request_throughput", m->request_throughput);
    if (o->has_goodput)
        set_num(j, "request_goodput", m->request_goodput);
    else
        json_object_set_new(j, "request_goodput", json_null());
    set_num(j, "output_throughput", m->output_throughput);
    set_num(j, "total_token_throughput", m->total_token_throughput);
    set_num(j, "max_output_tokens_per_s", m->max_output_tokens_per_s);
    json_object_set_new(j, "max_concurrent_requests", json_integer((json_int_t)b->max_inflight));
    for (int k = 0; k < M_COUNT; k++) {
        char key[64], w[16];
        snprintf(key, sizeof key, "mean_%s_ms", METRIC_KEY[k]);
        set_num(j, key, m->st[k].mean);
        snprintf(key, sizeof key, "median_%s_ms", METRIC_KEY[k]);
        set_num(j, key, m->st[k].median);
        snprintf(key, sizeof key, "std_%s_ms", METRIC_KEY[k]);
        set_num(j, key, m->st[k].std);
        for (size_t p = 0; p < o->n_pcts; p++) {
            pct_word(o->pcts[p], w, sizeof w);
            snprintf(key, sizeof key, "p%s_%s_ms", w, METRIC_KEY[k]);
            set_num(j, key, m->st[k].pct[p]);
        }
    }
    /* Distinct error messages with their counts (first 16). */
    json_t *errs = json_object();
    for (size_t i = 0; i < b->n_reqs && json_object_size(errs) < 16; i++) {
        const char *e = b->reqs[i].error;
        if (b->reqs[i].state != REQ_DONE || e == NULL)
            continue;
        json_t *c = json_object_get(errs, e);
        json_object_set_new(errs, e, json_integer(c ? json_integer_value(c) + 1 : 1));
    }
    json_object_set_new(j, "errors", errs);
    return j;
}

/* Writes j as one line to path (appended with --append). */
int report_write_json(const char *path, bool append, json_t *j)
{
    FILE *f = fopen(path, append ? "a" : "w");
    if (f == NULL) {
        fprintf(stderr, "pd-bench: --json %s: %s\n", path, strerror(errno));
        return -1;
    }
    int rc = json_dumpf(j, f, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10));
    if (rc == 0 && fputc('\n', f) == EOF)
        rc = -1;
    if (fclose(f) != 0 || rc != 0) {
        fprintf(stderr, "pd-bench: --json %s: write failed\n", path);
        return -1;
    }
    return 0;
}

static json_t *ids_json(const int32_t *ids, size_t n)
{
    json_t *a = json_array();
    for (size_t k = 0; k < n; k++)
        json_array_append_new(a, json_integer(ids[k]));
    return a;
}

/* A multi-turn request's record: its conversation and turn, the prompt's
 * ids, the answer (ids from the router; text with --target). */
static void save_turn(const bench_t *b, const req_t *r, json_t *j)
{
    json_object_set_new(j, "conversation", json_integer(r->conv));
    json_object_set_new(j, "turn", json_integer(r->turn));
    const item_t *it = b->ds && r->item < b->ds->n ? &b->ds->items[r->item] : NULL;
    if (it)
        json_object_set_new(j, "prompt_ids", ids_json(it->ids, it->n_ids));
    if (!b->http)
        json_object_set_new(j, "output_ids", ids_json(r->out_ids, r->n_out));
    else
        json_object_set_new(j, "output_text", json_stringn(r->out_text ? r->out_text : "",
                                                           r->n_text));
}

/* TTFT of the completed requests of one turn, sorted (*n of them); NULL
 * when out of memory. */
static double *turn_ttfts(const bench_t *b, uint32_t turn, size_t *n)
{
    double *v = malloc((b->n_reqs ? b->n_reqs : 1) * sizeof *v);
    *n = 0;
    for (size_t i = 0; v && i < b->n_reqs; i++) {
        const req_t *r = &b->reqs[i];
        if (r->turn == turn && r->state == REQ_DONE && r->ok && r->n_tok > 0)
            v[(*n)++] = bench_req_ttft_ms(r);
    }
    if (v)
        qsort(v, *n, sizeof *v, bench_cmp_double);
    return v;
}

/* Median and p90 TTFT of one turn (NAN when none completed). */
static size_t turn_stats(const bench_t *b, uint32_t turn, double *p50, double *p90)
{
    size_t n = 0;
    double *v = turn_ttfts(b, turn, &n);
    *p50 = v && n ? bench_percentile(v, n, 50) : NAN;
    *p90 = v && n ? bench_percentile(v, n, 90) : NAN;
    free(v);
    return n;
}

void report_turns(const bench_t *b, uint32_t turns)
{
    print_title(" Multi-turn TTFT by turn ", '-');
    printf("%-6s %-10s %-18s %-18s\n", "Turn", "Completed", "Median TTFT (ms)", "P90 TTFT (ms)");
    double first50 = NAN, first90 = NAN, last50 = NAN, last90 = NAN;
    for (uint32_t t = 1; t <= turns; t++) {
        double p50, p90;
        size_t n = turn_stats(b, t, &p50, &p90);
        printf("%-6u %-10zu %-18.2f %-18.2f\n", t, n, p50, p90);
        if (t == 1)
            first50 = p50, first90 = p90;
        if (t == turns)
            last50 = p50, last90 = p90;
    }
    char name[64];
    snprintf(name, sizeof name, "Median TTFT turn %u / turn 1:", turns);
    print_row_f(name, last50 / first50);
    snprintf(name, sizeof name, "P90 TTFT turn %u / turn 1:", turns);
    print_row_f(name, last90 / first90);
    print_title("", '=');
    fflush(stdout);
}

json_t *report_turns_json(const bench_t *b, uint32_t turns)
{
    const opts_t *o = b->o;
    json_t *j = json_object(), *arr = json_array();
    json_object_set_new(j, "num_conversations", json_integer(o->num_conversations));
    json_object_set_new(j, "num_turns", json_integer(turns));
    json_object_set_new(j, "user_tokens", json_integer(o->user_tokens));
    json_object_set_new(j, "output_len", json_integer(o->output_len));
    json_object_set_new(j, "think_time_ms", json_integer(o->think_time_ms));
    double first50 = NAN, first90 = NAN, last50 = NAN, last90 = NAN;
    for (uint32_t t = 1; t <= turns; t++) {
        double p50, p90;
        size_t n = turn_stats(b, t, &p50, &p90);
        json_t *e = json_object();
        json_object_set_new(e, "turn", json_integer(t));
        json_object_set_new(e, "completed", json_integer((json_int_t)n));
        set_num(e, "median_ttft_ms", p50);
        set_num(e, "p90_ttft_ms", p90);
        json_array_append_new(arr, e);
        if (t == 1)
            first50 = p50, first90 = p90;
        if (t == turns)
            last50 = p50, last90 = p90;
    }
    json_object_set_new(j, "turns", arr);
    set_num(j, "median_ttft_ratio_last_first", last50 / first50);
    set_num(j, "p90_ttft_ratio_last_first", last90 / first90);
    return j;
}

/* --save-requests: one JSON object per line and request, in submit order.
 * Times in ms; token_times_ms are relative to the request's send. */
int report_save_requests(const bench_t *b, const char *path)
{
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        fprintf(stderr, "pd-bench: --save-requests %s: %s\n", path, strerror(errno));
        return -1;
    }
    int rc = 0;
    for (size_t i = 0; i < b->n_reqs && rc == 0; i++) {
        const req_t *r = &b->reqs[i];
        json_t *j = json_object();
        json_object_set_new(j, "index", json_integer((json_int_t)i));
        json_object_set_new(j, "request_id", json_integer((json_int_t)r->id));
        json_object_set_new(j, "dataset_item", json_integer((json_int_t)r->item));
        json_object_set_new(j, "success", json_boolean(r->ok && r->state == REQ_DONE));
        json_object_set_new(j, "finished", json_boolean(r->state == REQ_DONE));
        json_object_set_new(j, "error", r->error ? json_string(r->error) : json_null());
        json_object_set_new(j, "finish", json_string(pd_finish_name(r->finish)));
        json_object_set_new(j, "prompt_len", json_integer(r->prompt_len));
        json_object_set_new(j, "expected_output_len", json_integer(r->expected_len));
        json_object_set_new(j, "output_len", json_integer((json_int_t)r->n_tok));
        set_num(j, "start_ms", bench_ms_between(b->start_ns, r->send_ns));
        if (r->state == REQ_DONE) {
            double ttft = bench_req_ttft_ms(r), e2el = bench_ms_between(r->send_ns, r->end_ns);
            set_num(j, "ttft_ms", ttft);
            set_num(j, "e2el_ms", e2el);
            if (r->n_tok > 1)
                set_num(j, "tpot_ms", (e2el - ttft) / (double)(r->n_tok - 1));
        }
        json_t *tt = json_array(), *itl = json_array();
        for (size_t k = 0; k < r->n_tok; k++)
            json_array_append_new(tt, json_real(bench_ms_between(r->send_ns, r->tok_ns[k])));
        for (size_t k = 1; k < r->n_chunks; k++)
            json_array_append_new(itl, json_real(bench_ms_between(r->chunk_ns[k - 1], r->chunk_ns[k])));
        json_object_set_new(j, "token_times_ms", tt);
        json_object_set_new(j, "itl_ms", itl);
        json_t *rt = json_object();
        json_object_set_new(rt, "prompt_tokens", json_integer(r->usage_prompt));
        json_object_set_new(rt, "completion_tokens", json_integer(r->usage_completion));
        json_object_set_new(rt, "queue_us", json_integer((json_int_t)r->queue_us));
        json_object_set_new(rt, "ttft_us", json_integer((json_int_t)r->router_ttft_us));
        json_object_set_new(rt, "e2e_us", json_integer((json_int_t)r->router_e2e_us));
        json_object_set_new(rt, "preemptions", json_integer(r->n_preemptions));
        json_object_set_new(j, "router", rt);
        if (r->turn > 0) /* multi-turn: what was sent and what came back */
            save_turn(b, r, j);
        if (json_dumpf(j, f, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10)) != 0 ||
            fputc('\n', f) == EOF)
            rc = -1;
        json_decref(j);
    }
    if (fclose(f) != 0 || rc != 0) {
        fprintf(stderr, "pd-bench: --save-requests %s: write failed\n", path);
        return -1;
    }
    return 0;
}

/* Writes "value cdf" rows of sorted v (n) to path. */
static int write_cdf(const char *path, const double *v, size_t n)
{
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return -1;
    for (size_t i = 0; i < n; i++)
        fprintf(f, "%.6f %.6f\n", v[i], (double)(i + 1) / (double)n);
    if (n == 0)
        fprintf(f, "0 0\n");
    return fclose(f);
}

/* Throughput over time: rows "t_s out_tok_per_s completed_per_s in_flight". */
static int write_timeline(const char *path, const bench_t *b, double dur_s)
{
    double bucket = dur_s / 60.0 < 0.1 ? 0.1 : dur_s / 60.0;
    size_t n = (size_t)ceil(dur_s / bucket) + 1;
    double *tok = calloc(n, sizeof *tok), *done = calloc(n, sizeof *done);
    FILE *f = tok && done ? fopen(path, "w") : NULL;
    if (f == NULL) {
        free(tok);
        free(done);
        return -1;
    }
    for (size_t i = 0; i < b->n_reqs; i++) {
        const req_t *r = &b->reqs[i];
        for (size_t k = 0; k < r->n_tok; k++) {
            size_t s = (size_t)((double)(r->tok_ns[k] - b->start_ns) / 1e9 / bucket);
            tok[s < n ? s : n - 1] += 1;
        }
        if (r->state == REQ_DONE && r->ok) {
            size_t s = (size_t)((double)(r->end_ns - b->start_ns) / 1e9 / bucket);
            done[s < n ? s : n - 1] += 1;
        }
    }
    for (size_t s = 0; s < n; s++) {
        uint64_t t = b->start_ns + (uint64_t)(((double)s + 0.5) * bucket * 1e9);
        size_t fl = 0;
        for (size_t i = 0; i < b->n_reqs; i++)
            if (b->reqs[i].send_ns <= t && (b->reqs[i].state != REQ_DONE || b->reqs[i].end_ns > t))
                fl++;
        fprintf(f, "%.3f %.3f %.3f %zu\n", ((double)s + 0.5) * bucket, tok[s] / bucket,
                done[s] / bucket, fl);
    }
    free(tok);
    free(done);
    return fclose(f);
}

static int run_gnuplot(const char *script)
{
    char *argv[] = { "gnuplot", (char *)script, NULL };
    pid_t pid;
    int rc = posix_spawnp(&pid, "gnuplot", NULL, NULL, argv, environ);
    if (rc != 0) {
        fprintf(stderr, "pd-bench: --plot: cannot run gnuplot: %s\n", strerror(rc));
        return -1;
    }
    int st;
    if (waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "pd-bench: --plot: gnuplot failed\n");
        return -1;
    }
    return 0;
}

/* --plot PREFIX: PREFIX_latency_cdf.png (CDFs of TTFT, TPOT, ITL, E2EL) and
 * PREFIX_throughput.png (tokens/s, requests/s and requests in flight over time). */
int report_plot(const bench_t *b, const metrics_t *m, const char *prefix)
{
    char dir[] = "/tmp/pd-bench.XXXXXX";
    if (mkdtemp(dir) == NULL) {
        fprintf(stderr, "pd-bench: --plot: mkdtemp: %s\n", strerror(errno));
        return -1;
    }
    char path[4096], script[4096];
    int rc = 0;
    for (int k = 0; k < M_COUNT && rc == 0; k++) {
        snprintf(path, sizeof path, "%s/%s.dat", dir, METRIC_KEY[k]);
        rc = write_cdf(path, m->vals[k], m->n_vals[k]);
    }
    snprintf(path, sizeof path, "%s/timeline.dat", dir);
    if (rc == 0)
        rc = write_timeline(path, b, m->duration_s);
    snprintf(script, sizeof script, "%s/plot.gp", dir);
    FILE *f = rc == 0 ? fopen(script, "w") : NULL;
    if (f) {
        fprintf(f, "set terminal pngcairo size 1000,750 font ',10'\n");
        fprintf(f, "set output '%s_latency_cdf.png'\nset multiplot layout 2,2 title "
                   "'pd-bench latency CDFs (%zu completed)'\nset grid\nset ylabel 'fraction'\n"
                   "set yrange [0:1]\nunset key\n",
                prefix, m->completed);
        for (int k = 0; k < M_COUNT; k++)
            fprintf(f, "set title '%s'\nset xlabel '%s (ms)'\nplot '%s/%s.dat' using 1:2 with "
                       "steps lw 2\n",
                    METRIC_HEADER[k], METRIC_NAME[k], dir, METRIC_KEY[k]);
        fprintf(f, "unset multiplot\nset output '%s_throughput.png'\nset autoscale y\nset key "
                   "top left\nset title 'pd-bench throughput over time'\nset xlabel 'time (s)'\n"
                   "set ylabel 'output tokens/s'\nset y2label 'requests/s, in flight'\n"
                   "set y2tics\nset ytics nomirror\n"
                   "plot '%s/timeline.dat' using 1:2 with lines lw 2 title 'output tok/s', "
                   "'' using 1:3 axes x1y2 with lines title 'completed req/s', "
                   "'' using 1:4 axes x1y2 with steps title 'in flight'\n",
                prefix, dir);
        rc = fclose(f) == 0 ? run_gnuplot(script) : -1;
    } else {
        rc = -1;
    }
    if (rc != 0)
        fprintf(stderr, "pd-bench: --plot %s: could not write the plots (data in %s)\n", prefix,
                dir);
    else {
        for (int k = 0; k < M_COUNT; k++) {
            snprintf(path, sizeof path, "%s/%s.dat", dir, METRIC_KEY[k]);
            unlink(path);
        }
        snprintf(path, sizeof path, "%s/timeline.dat", dir);
        unlink(path);
        unlink(script);
        rmdir(dir);
    }
    return rc;
}
