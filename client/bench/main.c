/* main.c -- pd-bench: load-test a pdserve cluster or any OpenAI-compatible
 * server. What it measures and how: bench.h. */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"
#include "engine/gguf.h"

/* Fails early (before any load) on an output file that cannot be written:
 * opens it for appending, which creates it but changes nothing. */
static int check_writable(const char *opt, const char *path)
{
    FILE *f = fopen(path, "a");
    if (f == NULL || fclose(f) != 0) {
        fprintf(stderr, "pd-bench: %s %s: %s\n", opt, path, strerror(errno));
        return -1;
    }
    return 0;
}

/* The directory of --plot PREFIX must be writable. */
static int check_plot_prefix(const char *prefix)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", prefix);
    char *slash = strrchr(dir, '/');
    if (slash == NULL)
        snprintf(dir, sizeof dir, ".");
    else if (slash == dir)
        dir[1] = 0;
    else
        *slash = 0;
    if (access(dir, W_OK) != 0) {
        fprintf(stderr, "pd-bench: --plot %s: directory %s: %s\n", prefix, dir, strerror(errno));
        return -1;
    }
    return 0;
}

static pd_tok_t *load_tokenizer(const char *path)
{
    pd_err_t err = { 0 };
    pd_gguf_t *g = pd_gguf_open(path, &err);
    pd_tok_t *t = g ? pd_tok_load(g, &err) : NULL;
    if (t == NULL)
        fprintf(stderr, "pd-bench: -m %s: %s\n", path, err.msg);
    pd_gguf_free(g);
    return t;
}

int main(int argc, char **argv)
{
    opts_t o;
    int prc = bench_parse_args(argc, argv, &o);
    if (prc != 0) {
        bench_usage(prc > 0 ? stdout : stderr);
        return prc > 0 ? 0 : EXIT_USAGE;
    }
    int status = EXIT_USAGE;
    pd_tok_t *tok = NULL;
    pd_client_t *c = NULL;
    pd_cluster_status_t *cs = NULL;
    dataset_t ds = { 0 };
    int32_t *prefix = NULL;
    chat_t chat = { 0 };
    bench_t b = { .o = &o };
    metrics_t m = { 0 };
    pd_err_t err = { 0 };
    pd_httpc_url_t url;
    char base[540];
    rng_t rng;
    rng_seed(&rng, o.seed);
    /* From the start: a Ctrl-C while loading or connecting ends with 130 too. */
    pd_interrupt_install();

    if (o.dataset_path && access(o.dataset_path, R_OK) != 0) {
        fprintf(stderr, "pd-bench: --dataset-path %s: %s\n", o.dataset_path, strerror(errno));
        goto done;
    }
    if ((o.json_path && check_writable("--json", o.json_path) != 0) ||
        (o.save_path && check_writable("--save-requests", o.save_path) != 0) ||
        (o.profile_path && check_writable("--profile", o.profile_path) != 0) ||
        (o.plot_prefix && check_plot_prefix(o.plot_prefix) != 0))
        goto done;
    if (o.model && (tok = load_tokenizer(o.model)) == NULL)
        goto done;

    if (o.target) {
        /* An OpenAI-compatible server: its model and context length. */
        int urc = pd_httpc_url_parse(o.target, &url, &err);
        if (urc != 0) {
            fprintf(stderr, "pd-bench: --target %s\n", err.msg);
            status = urc == PD_EIO ? EXIT_UNREACHABLE : EXIT_USAGE; /* name does not resolve */
            goto done;
        }
        size_t pl = strlen(url.path);
        snprintf(base, sizeof base, "%s%s", url.path,
                 pl >= 3 && !strcmp(url.path + pl - 3, "/v1") ? "" : "/v1");
        snprintf(b.http_path, sizeof b.http_path, "%s/completions", base);
        cs = calloc(1, sizeof *cs);
        if (cs == NULL)
            goto done;
        if (run_http_models(&o, &url, base, cs->model_name, sizeof cs->model_name,
                        &cs->max_seq_len) != 0) {
            status = EXIT_UNREACHABLE;
            goto done;
        }
        b.http = &url;
        b.http_model = cs->model_name;
        goto have_server;
    }
    /* Is the router there? (Connecting is lazy: ask for its status.) */
    c = pd_client_new(o.router, &err);
    if (c == NULL) {
        fprintf(stderr, "pd-bench: --router %s: %s\n", o.router, err.msg);
        goto done;
    }
    pd_client_set_timeout(c, o.connect_timeout_ms);
    if (pd_client_status(c, &cs, &err) != 0) {
        fprintf(stderr, "pd-bench: cannot reach the router at %s within %u ms: %s\n", o.router,
                o.connect_timeout_ms, err.msg);
        status = EXIT_UNREACHABLE;
        goto done;
    }
    pd_client_set_timeout(c, o.request_timeout_ms);
    if (cs->n_workers == 0)
        fprintf(stderr, "pd-bench: warning: the router has no workers registered\n");
    if (o.profile_path) {
        status = profile_cluster(&o, c, cs, tok, &rng) == 0 ? 0 : EXIT_FAILED;
        goto done;
    }

have_server:
    prefix = malloc(((size_t)o.prefix_len + 1) * sizeof *prefix);
    if (prefix == NULL)
        goto done;
    if (o.dataset == DS_MULTITURN) {
        if (dataset_multiturn(&o, tok, &rng, cs->max_seq_len, &chat) != 0)
            goto done;
        goto have_dataset;
    }
    int drc = o.dataset == DS_RANDOM ? dataset_random(&o, tok, &rng, prefix, cs->max_seq_len, &ds)
              : o.dataset == DS_FILE ? dataset_file(&o, tok, prefix, &ds)
              : o.dataset == DS_MOONCAKE ? dataset_mooncake(&o, tok, cs->max_seq_len, &ds)
                                     : dataset_sharegpt(&o, tok, prefix, cs->max_seq_len, &rng, &ds);
    if (drc != 0)
        goto done;
    if (o.dataset != DS_RANDOM && !o.has_num_prompts && o.duration_s == 0)
        o.num_prompts = (uint32_t)ds.n; /* the whole file */
    b.ds = &ds;

have_dataset:;
    char rate[32], conc[32];
    snprintf(rate, sizeof rate, isinf(o.rate) ? "inf" : "%g", o.rate);
    snprintf(conc, sizeof conc, o.max_concurrency ? "%u" : "unlimited", o.max_concurrency);
    if (o.dataset == DS_MULTITURN)
        fprintf(stderr,
                "pd-bench: %s, model %s, %u conversations of %u turns (think time %u ms), "
                "conversation starts at %s/s, burstiness %g, max concurrency %s\n",
                o.target ? o.target : o.router, cs->model_name, o.num_conversations, o.num_turns,
                o.think_time_ms, rate, o.burstiness, conc);
    else
        fprintf(stderr,
                "pd-bench: %s, model %s, %zu distinct prompts, request rate %s/s, burstiness %g "
                "(%s), max concurrency %s\n",
                o.target ? o.target : o.router, cs->model_name, ds.n, rate, o.burstiness,
                o.burstiness == 1.0 ? "Poisson" : "gamma", conc);
    int rrc = o.dataset == DS_MULTITURN ? bench_run_chat(&b, c, &chat, tok, &rng)
                                        : bench_run(&b, c, &ds, &rng);
    if (rrc != 0 || metrics_compute(&b, &m) != 0) {
        status = EXIT_FAILED;
        goto done;
    }
    report_summary(&b, &m);
    if (o.dataset == DS_MULTITURN)
        report_turns(&b, o.num_turns);
    status = 0;
    if (m.completed == 0) {
        fprintf(stderr, "pd-bench: all requests failed%s%s\n",
                b.n_reqs && b.reqs[0].error ? ": " : "", b.n_reqs && b.reqs[0].error ? b.reqs[0].error : "");
        status = EXIT_FAILED;
    }
    if (o.json_path) {
        json_t *j = report_json(&b, &m, cs->model_name);
        if (j && o.dataset == DS_MULTITURN)
            json_object_set_new(j, "multi_turn", report_turns_json(&b, o.num_turns));
        if (j == NULL || report_write_json(o.json_path, o.append, j) != 0)
            status = EXIT_FAILED;
        json_decref(j);
    }
    if (o.save_path && report_save_requests(&b, o.save_path) != 0)
        status = EXIT_FAILED;
    if (o.plot_prefix && report_plot(&b, &m, o.plot_prefix) != 0)
        status = EXIT_FAILED;
    if (b.interrupted)
        status = EXIT_INTERRUPTED;
done:
    if (pd_interrupted && !b.interrupted) { /* while loading, connecting or profiling */
        fprintf(stderr, "pd-bench: interrupted\n");
        status = EXIT_INTERRUPTED;
    }
    metrics_free(&m);
    bench_free(&b);
    free(prefix);
    dataset_free(&ds);
    chat_free(&chat);
    pd_cluster_status_free(cs);
    pd_client_free(c);
    pd_tok_free(tok);
    return status;
}
