/* pd-bench -- load-test a pdserve cluster from one process (libpdclient, async).
 *
 *   pd-bench [--router ADDR] [-m MODEL.gguf] [--dataset random|file|sharegpt]
 *            [--dataset-path FILE] [--num-prompts N | --duration S]
 *            [--request-rate R|inf] [--burstiness B] [--max-concurrency C]
 *            [--input-len I] [--output-len O] [--range-ratio X] [--prefix-len P]
 *            [--num-prefixes K] [--mooncake-block-size B]
 *            [--ignore-eos] [--temperature T] [--seed S]
 *            [--goodput ttft:MS [tpot:MS] [e2el:MS]] [--percentiles 50,90,99]
 *            [--json FILE [--append]] [--save-requests FILE] [--plot PREFIX]
 *            [--connect-timeout MS] [--request-timeout MS] [--no-progress]
 *   pd-bench --target http://HOST:PORT[/v1] [--api-key KEY] ...   any OpenAI-compatible
 *            server (the key defaults to $OPENAI_API_KEY; sent as a Bearer token)
 *
 * With --target the same arrivals, datasets and metrics drive POST
 * /v1/completions ("stream": true, usage included) on plain non-blocking
 * sockets, one connection per request in flight (client/httpc.h), timed as
 * vLLM's backend_request_func does for openai-completions: TTFT at the first
 * event with non-empty choices[0].text, ITL between such events, E2E at
 * "data: [DONE]", output_len = usage.completion_tokens (else the number of
 * text events).
 *
 * Metrics carry the names and definitions of vLLM's benchmarks/benchmark_serving.py
 * (calculate_metrics), so numbers compare side by side:
 *   duration            s from the first submit to the last final chunk
 *   completed / failed  requests whose stream ended OK / with an error
 *   total_input_tokens  sum of prompt lengths of completed requests
 *   total_output_tokens sum of output tokens received by completed requests
 *   request_throughput = completed / duration, output_throughput =
 *   total_output_tokens / duration, total_token_throughput = (input + output) / duration
 *   ttft_ms   send -> first chunk carrying a token
 *   tpot_ms   (e2el - ttft) / (output_len - 1), only requests with output_len > 1
 *   itl_ms    gaps between consecutive token-carrying chunks, all requests pooled
 *   e2el_ms   send -> final chunk
 *   mean, median, std (population, as numpy) and pNN (linear interpolation, as
 *   numpy.percentile) of each; request_goodput = completed requests meeting every
 *   --goodput SLO (tpot counted as 0 when output_len <= 1, as vLLM) / duration.
 *
 * Exit status: 0 the benchmark ran (failed requests are part of the numbers),
 * 1 nothing completed or an output file could not be written, 2 bad options
 * or dataset, 3 the router (or the --target server) cannot be reached, 130
 * interrupted (Ctrl-C: the requests in flight are cancelled -- with --target
 * their connections closed -- and what finished is reported).
 */
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "base/args.h"
#include "engine/gguf.h"
#include "httpc.h"
#include "mooncake.h"
#include "pdclient.h"
#include "engine/tokenizer.h"

extern char **environ;

#define EXIT_FAILED 1
#define EXIT_USAGE 2
#define EXIT_UNREACHABLE 3
#define EXIT_INTERRUPTED 130

#define BENCH_MAX_PROMPTS 10000000u    /* --num-prompts upper bound */
#define BENCH_MAX_LEN 1000000u         /* token-length options upper bound */
#define BENCH_MAX_PCTS 16              /* --percentiles entries */
#define BENCH_POLL_MS 50               /* longest poll wait (progress, Ctrl-C) */
#define BENCH_PROGRESS_NS 200000000ull /* progress bar refresh, ns */
#define BENCH_DRAIN_MS 3000            /* after Ctrl-C: wait for cancelled finals */
#define SHAREGPT_MIN_LEN 4             /* vLLM's ShareGPT pruning: min tokens */
#define SHAREGPT_MAX_PROMPT 1024       /* ... max prompt tokens */
#define SHAREGPT_MAX_TOTAL 2048        /* ... max prompt + output tokens */

static volatile sig_atomic_t g_interrupted; /* Ctrl-C count (signal handler) */

static void on_sigint(int sig)
{
    (void)sig;
    g_interrupted++;
    if (g_interrupted >= 2)
        _exit(EXIT_INTERRUPTED);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ====== Random numbers (xoshiro256**, seeded by splitmix64) ====== */

typedef struct {
    uint64_t s[4];
} rng_t;

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void rng_seed(rng_t *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t rng_next(rng_t *r)
{
    uint64_t *s = r->s;
    uint64_t out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return out;
}

/* Uniform in (0, 1): never 0, so log() is safe. */
static double rng_unit(rng_t *r) { return ((double)(rng_next(r) >> 11) + 0.5) * 0x1.0p-53; }

/* Uniform integer in [lo, hi]. */
static uint32_t rng_range(rng_t *r, uint32_t lo, uint32_t hi)
{
    return lo + (uint32_t)(rng_next(r) % ((uint64_t)hi - lo + 1));
}

static double rng_normal(rng_t *r)
{
    return sqrt(-2.0 * log(rng_unit(r))) * cos(2.0 * M_PI * rng_unit(r));
}

/* Gamma(shape, scale) by Marsaglia & Tsang; shape < 1 by the u^(1/shape) boost. */
static double rng_gamma(rng_t *r, double shape, double scale)
{
    if (shape < 1.0)
        return rng_gamma(r, shape + 1.0, scale) * pow(rng_unit(r), 1.0 / shape);
    double d = shape - 1.0 / 3.0, c = 1.0 / sqrt(9.0 * d);
    for (;;) {
        double x = rng_normal(r), v = 1.0 + c * x;
        if (v <= 0)
            continue;
        v = v * v * v;
        if (log(rng_unit(r)) < 0.5 * x * x + d - d * v + d * log(v))
            return d * v * scale;
    }
}

/* ====== Options ====== */

typedef enum { DS_RANDOM, DS_FILE, DS_SHAREGPT, DS_MOONCAKE } dataset_kind_t;

typedef struct {
    const char *router;
    const char *target;          /* --target http://HOST:PORT, or NULL */
    const char *api_key;         /* --api-key, else $OPENAI_API_KEY, or NULL */
    const char *model;           /* GGUF for the tokenizer, or NULL */
    dataset_kind_t dataset;
    const char *dataset_path;
    uint32_t num_prompts;
    bool has_num_prompts;
    double duration_s;           /* 0 = run num_prompts */
    double rate;                 /* requests/s, INFINITY = all at once */
    double burstiness;
    uint32_t max_concurrency;    /* 0 = unlimited */
    uint32_t input_len, output_len, prefix_len;
    uint32_t num_prefixes;       /* random dataset: distinct prefixes (1 = one shared) */
    uint32_t mooncake_block_size; /* tokens per trace hash id (0 = 512) */
    bool has_output_len;
    double range_ratio;
    bool ignore_eos;
    float temperature;
    uint64_t seed;
    double slo_ttft_ms, slo_tpot_ms, slo_e2el_ms; /* < 0 = not set */
    bool has_goodput;
    double pcts[BENCH_MAX_PCTS];
    size_t n_pcts;
    const char *json_path;
    bool append;
    const char *save_path;
    const char *plot_prefix;
    uint32_t connect_timeout_ms, request_timeout_ms;
    bool progress;
    const char *profile_path;    /* --profile: measure the cluster instead */
    uint32_t profile_max_batch, profile_max_context;
} opts_t;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: pd-bench [--router ADDR] [-m MODEL.gguf] [--dataset random|file|sharegpt]\n"
            "                [--dataset-path FILE] [--num-prompts N | --duration S]\n"
            "                [--request-rate R|inf] [--burstiness B] [--max-concurrency C]\n"
            "                [--input-len I] [--output-len O] [--range-ratio X] [--prefix-len P]\n"
            "                [--num-prefixes K] [--mooncake-block-size B]\n"
            "                [--ignore-eos] [--temperature T] [--seed S]\n"
            "                [--goodput ttft:MS [tpot:MS] [e2el:MS]] [--percentiles 50,90,99]\n"
            "                [--json FILE [--append]] [--save-requests FILE] [--plot PREFIX]\n"
            "                [--connect-timeout MS] [--request-timeout MS] [--no-progress]\n"
            "       pd-bench --target http://HOST:PORT[/v1] [--api-key KEY] ...  (same options)\n"
            "       pd-bench --profile FILE -m MODEL.gguf [--router ADDR] [--profile-max-batch B]\n"
            "                [--profile-max-context C]   (measure the cluster for pd-plan)\n"
            "The router defaults to $PD_ROUTER, else tcp://127.0.0.1:5555. --target\n"
            "http://HOST:PORT[/v1] measures any OpenAI-compatible server instead (pdserve's HTTP\n"
            "front, vLLM, llama.cpp server) with streamed POST /v1/completions. The random and\n"
            "sharegpt datasets need the model's tokenizer (-m). Exit: 0 ran, 1 nothing completed\n"
            "or output not written, 2 bad options, 3 server unreachable, 130 interrupted.\n");
}

static int parse_double(const char *opt, const char *s, double lo, double hi, double *out)
{
    return pd_arg_double("pd-bench", opt, s, lo, hi, out);
}

static int parse_u32(const char *opt, const char *s, uint32_t lo, uint32_t hi, uint32_t *out)
{
    return pd_arg_u32("pd-bench", opt, s, lo, hi, out);
}

/* One "name:ms" goodput SLO. */
static int parse_slo(opts_t *o, const char *s)
{
    const char *colon = strchr(s, ':');
    if (colon == NULL) {
        fprintf(stderr, "pd-bench: --goodput: '%s' is not NAME:MS (ttft, tpot, e2el)\n", s);
        return -1;
    }
    size_t n = (size_t)(colon - s);
    double *dst = n == 4 && !strncmp(s, "ttft", 4)   ? &o->slo_ttft_ms
                  : n == 4 && !strncmp(s, "tpot", 4) ? &o->slo_tpot_ms
                  : n == 4 && !strncmp(s, "e2el", 4) ? &o->slo_e2el_ms
                                                     : NULL;
    if (dst == NULL) {
        fprintf(stderr, "pd-bench: --goodput: unknown metric '%.*s' (ttft, tpot, e2el)\n", (int)n,
                s);
        return -1;
    }
    if (parse_double("--goodput", colon + 1, 0, 1e12, dst) != 0)
        return -1;
    o->has_goodput = true;
    return 0;
}

static int parse_pcts(opts_t *o, const char *s)
{
    char buf[256];
    if (strlen(s) >= sizeof buf) {
        fprintf(stderr, "pd-bench: --percentiles: list too long\n");
        return -1;
    }
    memcpy(buf, s, strlen(s) + 1); /* fits: checked above */
    o->n_pcts = 0;
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (o->n_pcts == BENCH_MAX_PCTS) {
            fprintf(stderr, "pd-bench: --percentiles: at most %d values\n", BENCH_MAX_PCTS);
            return -1;
        }
        if (parse_double("--percentiles", t, 0, 100, &o->pcts[o->n_pcts]) != 0)
            return -1;
        o->n_pcts++;
    }
    if (o->n_pcts == 0) {
        fprintf(stderr, "pd-bench: --percentiles: empty list\n");
        return -1;
    }
    return 0;
}

/* Parses argv into o; returns 0, 1 for --help, or -1 (message printed). */
static int parse_args(int argc, char **argv, opts_t *o)
{
    memset(o, 0, sizeof *o);
    o->router = getenv("PD_ROUTER") ? getenv("PD_ROUTER") : "tcp://127.0.0.1:5555";
    o->dataset = DS_RANDOM;
    o->num_prompts = 1000;
    o->rate = INFINITY;
    o->burstiness = 1.0;
    o->input_len = 128;
    o->output_len = 32;
    o->slo_ttft_ms = o->slo_tpot_ms = o->slo_e2el_ms = -1;
    o->pcts[0] = 50, o->pcts[1] = 90, o->pcts[2] = 99;
    o->n_pcts = 3;
    o->connect_timeout_ms = 5000;
    o->request_timeout_ms = 60000;
    o->progress = isatty(2);
    o->profile_max_batch = 16;
    o->profile_max_context = 512;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define NEED_VALUE                                                              \
    do {                                                                        \
        if (v == NULL) {                                                        \
            fprintf(stderr, "pd-bench: %s needs a value (--help for usage)\n", a); \
            return -1;                                                          \
        }                                                                       \
        i++;                                                                    \
    } while (0)
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            return 1;
        } else if (!strcmp(a, "--router")) {
            NEED_VALUE;
            o->router = v;
        } else if (!strcmp(a, "--target") || !strcmp(a, "--base-url")) {
            NEED_VALUE;
            o->target = v;
        } else if (!strcmp(a, "--api-key")) {
            NEED_VALUE;
            o->api_key = v;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            NEED_VALUE;
            o->model = v;
        } else if (!strcmp(a, "--dataset") || !strcmp(a, "--dataset-name")) {
            NEED_VALUE;
            if (!strcmp(v, "random"))
                o->dataset = DS_RANDOM;
            else if (!strcmp(v, "file"))
                o->dataset = DS_FILE;
            else if (!strcmp(v, "sharegpt"))
                o->dataset = DS_SHAREGPT;
            else if (!strcmp(v, "mooncake"))
                o->dataset = DS_MOONCAKE;
            else {
                fprintf(stderr, "pd-bench: --dataset: unknown dataset '%s' (random, file, sharegpt, "
                        "mooncake)\n",
                        v);
                return -1;
            }
        } else if (!strcmp(a, "--dataset-path")) {
            NEED_VALUE;
            o->dataset_path = v;
        } else if (!strcmp(a, "--num-prompts") || !strcmp(a, "-n")) {
            NEED_VALUE;
            if (parse_u32(a, v, 1, BENCH_MAX_PROMPTS, &o->num_prompts) != 0)
                return -1;
            o->has_num_prompts = true;
        } else if (!strcmp(a, "--duration")) {
            NEED_VALUE;
            if (parse_double(a, v, 1e-3, 1e7, &o->duration_s) != 0)
                return -1;
        } else if (!strcmp(a, "--request-rate")) {
            NEED_VALUE;
            if (!strcmp(v, "inf")) {
                o->rate = INFINITY;
            } else if (parse_double(a, v, -1e12, 1e12, &o->rate) != 0) {
                return -1;
            } else if (o->rate <= 0) {
                fprintf(stderr, "pd-bench: --request-rate: %s must be > 0 (or inf)\n", v);
                return -1;
            }
        } else if (!strcmp(a, "--burstiness")) {
            NEED_VALUE;
            if (parse_double(a, v, 0, 1e6, &o->burstiness) != 0)
                return -1;
            if (o->burstiness <= 0) {
                fprintf(stderr, "pd-bench: --burstiness: %s must be > 0\n", v);
                return -1;
            }
        } else if (!strcmp(a, "--max-concurrency")) {
            NEED_VALUE;
            if (parse_u32(a, v, 1, BENCH_MAX_PROMPTS, &o->max_concurrency) != 0)
                return -1;
        } else if (!strcmp(a, "--input-len") || !strcmp(a, "--random-input-len")) {
            NEED_VALUE;
            if (parse_u32(a, v, 1, BENCH_MAX_LEN, &o->input_len) != 0)
                return -1;
        } else if (!strcmp(a, "--output-len") || !strcmp(a, "--random-output-len")) {
            NEED_VALUE;
            if (parse_u32(a, v, 1, BENCH_MAX_LEN, &o->output_len) != 0)
                return -1;
            o->has_output_len = true;
        } else if (!strcmp(a, "--range-ratio") || !strcmp(a, "--random-range-ratio")) {
            NEED_VALUE;
            if (parse_double(a, v, 0, 0.999999, &o->range_ratio) != 0)
                return -1;
        } else if (!strcmp(a, "--prefix-len") || !strcmp(a, "--random-prefix-len")) {
            NEED_VALUE;
            if (parse_u32(a, v, 0, BENCH_MAX_LEN, &o->prefix_len) != 0)
                return -1;
        } else if (!strcmp(a, "--mooncake-block-size")) {
            NEED_VALUE;
            if (parse_u32(a, v, 1, 65536, &o->mooncake_block_size) != 0)
                return -1;
        } else if (!strcmp(a, "--num-prefixes") ||
                   !strcmp(a, "--prefix-repetition-num-prefixes")) {
            NEED_VALUE;
            if (parse_u32(a, v, 1, 100000, &o->num_prefixes) != 0)
                return -1;
        } else if (!strcmp(a, "--ignore-eos")) {
            o->ignore_eos = true;
        } else if (!strcmp(a, "--temperature")) {
            NEED_VALUE;
            double t;
            if (parse_double(a, v, 0, 100, &t) != 0)
                return -1;
            o->temperature = (float)t;
        } else if (!strcmp(a, "--seed")) {
            NEED_VALUE;
            char *end;
            errno = 0;
            o->seed = strtoull(v, &end, 10);
            if (errno || end == v || *end || v[0] == '-') {
                fprintf(stderr, "pd-bench: --seed: '%s' is not an unsigned integer\n", v);
                return -1;
            }
        } else if (!strcmp(a, "--goodput")) {
            NEED_VALUE;
            if (parse_slo(o, v) != 0)
                return -1;
            while (i + 1 < argc && argv[i + 1][0] != '-' && strchr(argv[i + 1], ':'))
                if (parse_slo(o, argv[++i]) != 0)
                    return -1;
        } else if (!strcmp(a, "--percentiles") || !strcmp(a, "--metric-percentiles")) {
            NEED_VALUE;
            if (parse_pcts(o, v) != 0)
                return -1;
        } else if (!strcmp(a, "--json")) {
            NEED_VALUE;
            o->json_path = v;
        } else if (!strcmp(a, "--append")) {
            o->append = true;
        } else if (!strcmp(a, "--save-requests")) {
            NEED_VALUE;
            o->save_path = v;
        } else if (!strcmp(a, "--plot")) {
            NEED_VALUE;
            o->plot_prefix = v;
        } else if (!strcmp(a, "--connect-timeout")) {
            NEED_VALUE;
            if (parse_u32(a, v, 1, 3600000, &o->connect_timeout_ms) != 0)
                return -1;
        } else if (!strcmp(a, "--request-timeout")) {
            NEED_VALUE;
            if (parse_u32(a, v, 1, 86400000, &o->request_timeout_ms) != 0)
                return -1;
        } else if (!strcmp(a, "--profile")) {
            NEED_VALUE;
            o->profile_path = v;
        } else if (!strcmp(a, "--profile-max-batch")) {
            NEED_VALUE;
            if (parse_u32(a, v, 1, 4096, &o->profile_max_batch) != 0)
                return -1;
        } else if (!strcmp(a, "--profile-max-context")) {
            NEED_VALUE;
            if (parse_u32(a, v, 16, BENCH_MAX_LEN, &o->profile_max_context) != 0)
                return -1;
        } else if (!strcmp(a, "--no-progress")) {
            o->progress = false;
        } else if (!strcmp(a, "--progress")) {
            o->progress = true;
        } else {
            fprintf(stderr, "pd-bench: unknown option '%s' (--help for usage)\n", a);
            return -1;
        }
#undef NEED_VALUE
    }
    if (o->dataset != DS_RANDOM && o->dataset_path == NULL) {
        fprintf(stderr, "pd-bench: --dataset %s needs --dataset-path FILE\n",
                o->dataset == DS_FILE ? "file" : o->dataset == DS_MOONCAKE ? "mooncake" : "sharegpt");
        return -1;
    }
    if (o->num_prefixes > 1 && (o->dataset != DS_RANDOM || o->prefix_len == 0)) {
        fprintf(stderr, "pd-bench: --num-prefixes needs --dataset random and --prefix-len\n");
        return -1;
    }
    if (o->profile_path && o->model == NULL) {
        fprintf(stderr, "pd-bench: --profile needs the model's tokenizer: give -m MODEL.gguf\n");
        return -1;
    }
    if ((o->dataset != DS_FILE || o->prefix_len > 0) && o->model == NULL) {
        fprintf(stderr, "pd-bench: %s needs the model's tokenizer: give -m MODEL.gguf\n",
                o->dataset == DS_FILE ? "--prefix-len" : "this dataset");
        return -1;
    }
    const char *env_key = getenv("OPENAI_API_KEY");
    if (o->api_key == NULL && o->target && env_key && *env_key)
        o->api_key = env_key;
    if (o->api_key && o->target == NULL) {
        fprintf(stderr, "pd-bench: --api-key is for --target http://...\n");
        return -1;
    }
    for (const char *k = o->api_key; k && *k; k++)
        if ((unsigned char)*k < 0x20 || *k == 0x7f) {
            fprintf(stderr, "pd-bench: --api-key: control character at offset %zu\n",
                    (size_t)(k - o->api_key));
            return -1;
        }
    if (o->target && o->profile_path) {
        fprintf(stderr, "pd-bench: --profile measures a pdserve cluster: use --router, not "
                        "--target\n");
        return -1;
    }
    if (o->append && o->json_path == NULL) {
        fprintf(stderr, "pd-bench: --append needs --json FILE\n");
        return -1;
    }
    return 0;
}

/* ====== Dataset ====== */

typedef struct {
    char *text;          /* prompt text (sent as text when ids is NULL) */
    int32_t *ids;        /* (n_ids) prompt token ids, or NULL */
    size_t n_ids;
    uint32_t prompt_len; /* tokens; 0 = unknown (taken from the router's usage) */
    uint32_t output_len; /* max_tokens */
    uint64_t at_ms;      /* arrival from the start (timed datasets) */
} item_t;

typedef struct {
    item_t *items;
    size_t n, cap;
    bool timed;          /* arrivals from the items (a trace), not the gamma process */
} dataset_t;

static void dataset_free(dataset_t *d)
{
    for (size_t i = 0; i < d->n; i++) {
        free(d->items[i].text);
        free(d->items[i].ids);
    }
    free(d->items);
    memset(d, 0, sizeof *d);
}

static item_t *dataset_push(dataset_t *d)
{
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 64;
        item_t *p = realloc(d->items, cap * sizeof *p);
        if (p == NULL)
            return NULL;
        d->items = p;
        d->cap = cap;
    }
    item_t *it = &d->items[d->n++];
    memset(it, 0, sizeof *it);
    return it;
}

/* Token ids a random prompt may use: ids with printable bytes, no control,
 * end-of-generation or raw byte tokens. */
typedef struct {
    int32_t *ids;
    size_t n;
} vocab_pick_t;

static int vocab_pick_init(vocab_pick_t *vp, const pd_tok_t *tok)
{
    uint32_t nv = pd_tok_n_vocab(tok);
    vp->ids = malloc((size_t)nv * sizeof *vp->ids);
    vp->n = 0;
    if (vp->ids == NULL)
        return -1;
    char buf[64];
    for (uint32_t id = 0; id < nv; id++) {
        size_t tl = 0;
        const char *t = pd_tok_text(tok, (int32_t)id, &tl);
        if (t && tl == 6 && !strncmp(t, "<0x", 3))
            continue;
        if ((int32_t)id == pd_tok_bos(tok) || pd_tok_is_eog(tok, (int32_t)id))
            continue;
        if (pd_tok_piece(tok, (int32_t)id, buf, sizeof buf) > 0)
            vp->ids[vp->n++] = (int32_t)id;
    }
    return vp->n ? 0 : -1;
}

/* Builds ids = [BOS] + prefix + body into it (takes ownership of nothing). */
static int item_set_ids(item_t *it, const pd_tok_t *tok, const int32_t *prefix, size_t n_prefix,
                        const int32_t *body, size_t n_body)
{
    bool bos = pd_tok_add_bos(tok) && pd_tok_bos(tok) >= 0;
    size_t n = (bos ? 1 : 0) + n_prefix + n_body;
    it->ids = malloc((n ? n : 1) * sizeof *it->ids);
    if (it->ids == NULL)
        return -1;
    size_t k = 0;
    if (bos)
        it->ids[k++] = pd_tok_bos(tok);
    if (n_prefix)
        memcpy(it->ids + k, prefix, n_prefix * sizeof *prefix);
    k += n_prefix;
    if (n_body)
        memcpy(it->ids + k, body, n_body * sizeof *body);
    it->n_ids = n;
    it->prompt_len = (uint32_t)n;
    return 0;
}

/* Len range of --range-ratio: [len * (1 - r), len * (1 + r)], at least 1. */
static void len_range(uint32_t len, double r, uint32_t *lo, uint32_t *hi)
{
    double l = floor(len * (1.0 - r)), h = floor(len * (1.0 + r));
    *lo = l < 1 ? 1 : (uint32_t)l;
    *hi = h < *lo ? *lo : (uint32_t)h;
}

static int build_random(const opts_t *o, const pd_tok_t *tok, rng_t *rng, int32_t *prefix,
                        uint32_t max_seq, dataset_t *d)
{
    vocab_pick_t vp;
    if (vocab_pick_init(&vp, tok) != 0) {
        free(vp.ids);
        fprintf(stderr, "pd-bench: the model's vocabulary has no plain tokens\n");
        return -1;
    }
    uint32_t ilo, ihi, olo, ohi;
    len_range(o->input_len, o->range_ratio, &ilo, &ihi);
    len_range(o->output_len, o->range_ratio, &olo, &ohi);
    uint64_t worst = 1ull + o->prefix_len + ihi + ohi;
    if (max_seq && worst > max_seq) {
        fprintf(stderr,
                "pd-bench: BOS + --prefix-len %u + input up to %u + output up to %u tokens exceed "
                "the router's max_seq_len %u\n",
                o->prefix_len, ihi, ohi, max_seq);
        free(vp.ids);
        return -1;
    }
    int32_t *body = malloc((size_t)ihi * sizeof *body);
    /* --num-prefixes K: K prefixes, each prompt takes one at random (the
     * first is `prefix`, drawn as with one, so K = 1 changes nothing). */
    uint32_t n_pre = o->num_prefixes > 1 && o->prefix_len > 0 ? o->num_prefixes : 1;
    int32_t *more = n_pre > 1 ? malloc((size_t)(n_pre - 1) * o->prefix_len * sizeof *more) : NULL;
    int rc = body && (n_pre == 1 || more) ? 0 : -1;
    for (uint32_t p = 0; p < o->prefix_len; p++)
        prefix[p] = vp.ids[rng_next(rng) % vp.n];
    for (uint64_t p = 0; rc == 0 && p < (uint64_t)(n_pre - 1) * o->prefix_len; p++)
        more[p] = vp.ids[rng_next(rng) % vp.n];
    for (uint32_t i = 0; rc == 0 && i < o->num_prompts; i++) {
        uint32_t which = n_pre > 1 ? (uint32_t)(rng_next(rng) % n_pre) : 0;
        const int32_t *pre = which == 0 ? prefix : more + (size_t)(which - 1) * o->prefix_len;
        uint32_t in = rng_range(rng, ilo, ihi);
        for (uint32_t k = 0; k < in; k++)
            body[k] = vp.ids[rng_next(rng) % vp.n];
        item_t *it = dataset_push(d);
        if (it == NULL || item_set_ids(it, tok, pre, o->prefix_len, body, in) != 0)
            rc = -1;
        else
            it->output_len = rng_range(rng, olo, ohi);
    }
    if (rc != 0)
        fprintf(stderr, "pd-bench: out of memory building the random dataset\n");
    free(body);
    free(more);
    free(vp.ids);
    return rc;
}

/* Encodes text (no specials) into a fresh array; NULL and message on failure. */
static int32_t *encode(const pd_tok_t *tok, const char *text, size_t len, bool add_special,
                       size_t *n_out, pd_err_t *err)
{
    size_t cap = len + 8;
    int32_t *ids = malloc(cap * sizeof *ids);
    if (ids == NULL)
        return NULL;
    int rc = pd_tok_encode(tok, text, len, add_special, ids, cap, n_out, err);
    if (rc == PD_ERANGE) {
        cap = *n_out;
        int32_t *p = realloc(ids, cap * sizeof *ids);
        if (p == NULL) {
            free(ids);
            return NULL;
        }
        ids = p;
        rc = pd_tok_encode(tok, text, len, add_special, ids, cap, n_out, err);
    }
    if (rc != 0) {
        free(ids);
        return NULL;
    }
    return ids;
}

/* Fills it from prompt text: with a tokenizer the prompt is sent as ids
 * ([BOS] + prefix + text), without one as text. */
static int item_from_text(item_t *it, const char *text, size_t len, const pd_tok_t *tok,
                          const int32_t *prefix, size_t n_prefix, const char *where)
{
    it->text = strndup(text, len);
    if (it->text == NULL)
        return -1;
    if (tok == NULL)
        return 0;
    pd_err_t err = { 0 };
    size_t n = 0;
    int32_t *ids = encode(tok, text, len, n_prefix == 0, &n, &err);
    if (ids == NULL) {
        fprintf(stderr, "pd-bench: %s: %s\n", where, err.code ? err.msg : "out of memory");
        return -1;
    }
    int rc = 0;
    if (n_prefix == 0) {
        it->ids = ids;
        it->n_ids = n;
        it->prompt_len = (uint32_t)n;
    } else {
        rc = item_set_ids(it, tok, prefix, n_prefix, ids, n);
        free(ids);
    }
    return rc;
}

static int load_file(const opts_t *o, const pd_tok_t *tok, const int32_t *prefix, dataset_t *d)
{
    FILE *f = fopen(o->dataset_path, "r");
    if (f == NULL) {
        fprintf(stderr, "pd-bench: --dataset-path %s: %s\n", o->dataset_path, strerror(errno));
        return -1;
    }
    char *line = NULL;
    size_t cap = 0, lineno = 0;
    ssize_t n;
    int rc = 0;
    while (rc == 0 && d->n < o->num_prompts && (n = getline(&line, &cap, f)) >= 0) {
        lineno++;
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            line[--n] = 0;
        if (n == 0)
            continue;
        char where[600];
        snprintf(where, sizeof where, "%s line %zu", o->dataset_path, lineno);
        item_t *it = dataset_push(d);
        if (it == NULL || item_from_text(it, line, (size_t)n, tok, prefix, o->prefix_len, where))
            rc = -1;
        else
            it->output_len = o->output_len;
    }
    if (rc == 0 && ferror(f)) {
        fprintf(stderr, "pd-bench: --dataset-path %s: read error\n", o->dataset_path);
        rc = -1;
    }
    if (rc == 0 && d->n == 0) {
        fprintf(stderr, "pd-bench: --dataset-path %s: no prompts (one per line)\n", o->dataset_path);
        rc = -1;
    }
    free(line);
    fclose(f);
    return rc;
}

/* A Mooncake trace (mooncake.h): each hash id becomes block_size tokens
 * drawn from the id alone (so requests sharing an id share those tokens),
 * the prompt is its ids' blocks cut to input_length, after BOS; arrivals
 * are the trace's timestamps. */
static int load_mooncake(const opts_t *o, const pd_tok_t *tok, uint32_t max_seq, dataset_t *d)
{
    uint32_t bs = o->mooncake_block_size ? o->mooncake_block_size : 512;
    pd_mooncake_req_t *r = NULL;
    size_t n = 0;
    char msg[700];
    if (pd_mooncake_load(o->dataset_path, bs, o->has_num_prompts ? o->num_prompts : SIZE_MAX, &r,
                         &n, msg, sizeof msg) != 0) {
        fprintf(stderr, "pd-bench: --dataset mooncake: %s\n", msg);
        return -1;
    }
    vocab_pick_t vp;
    int rc = vocab_pick_init(&vp, tok);
    int32_t *body = NULL;
    if (rc != 0)
        fprintf(stderr, "pd-bench: the model's vocabulary has no plain tokens\n");
    for (size_t i = 0; rc == 0 && i < n; i++) {
        if (max_seq && 1ull + r[i].input_length + r[i].output_length > max_seq) {
            fprintf(stderr, "pd-bench: --dataset mooncake: request %zu: %u + %u tokens exceed the "
                    "router's max_seq_len %u\n", i + 1, r[i].input_length, r[i].output_length,
                    max_seq);
            rc = -1;
            break;
        }
        int32_t *nb = realloc(body, (size_t)r[i].input_length * sizeof *body);
        if (nb == NULL) {
            rc = -1;
            break;
        }
        body = nb;
        for (uint32_t k = 0; k < r[i].input_length; k++) {
            if (k % bs == 0) {
                rng_t g;
                rng_seed(&g, o->seed ^ (r[i].hash_ids[k / bs] * 0x9e3779b97f4a7c15ull + 1));
                for (uint32_t j = 0; j < bs && k + j < r[i].input_length; j++)
                    body[k + j] = vp.ids[rng_next(&g) % vp.n];
            }
        }
        item_t *it = dataset_push(d);
        if (it == NULL || item_set_ids(it, tok, NULL, 0, body, r[i].input_length) != 0) {
            rc = -1;
            break;
        }
        it->output_len = r[i].output_length;
        it->at_ms = r[i].at_ms;
    }
    if (rc != 0 && vp.ids)
        fprintf(stderr, "pd-bench: --dataset mooncake: could not build the prompts\n");
    d->timed = true;
    free(body);
    free(vp.ids);
    pd_mooncake_free(r, n);
    return rc;
}

/* The ShareGPT layout: [{"conversations": [{"from": "human", "value": ...},
 * {"from": "gpt", "value": ...}, ...]}, ...]. The first human turn is the
 * prompt, the turn after it the reply whose token length is the output
 * length. Entries are shuffled by --seed and pruned as vLLM does (under 4
 * tokens, prompt over 1024, prompt + reply over 2048 or the router's limit). */
static int load_sharegpt(const opts_t *o, const pd_tok_t *tok, const int32_t *prefix,
                         uint32_t max_seq, rng_t *rng, dataset_t *d)
{
    json_error_t je = { 0 };
    json_t *root = json_load_file(o->dataset_path, 0, &je);
    if (root == NULL) {
        fprintf(stderr, "pd-bench: --dataset-path %s: line %d column %d: %s\n", o->dataset_path,
                je.line, je.column, je.text);
        return -1;
    }
    if (!json_is_array(root)) {
        fprintf(stderr, "pd-bench: %s: not a ShareGPT file (the top level must be an array)\n",
                o->dataset_path);
        json_decref(root);
        return -1;
    }
    size_t n = json_array_size(root), malformed = 0, pruned = 0;
    size_t *order = malloc((n ? n : 1) * sizeof *order);
    int rc = order ? 0 : -1;
    for (size_t i = 0; rc == 0 && i < n; i++)
        order[i] = i;
    for (size_t i = n; rc == 0 && i > 1; i--) {
        size_t j = rng_next(rng) % i, t = order[i - 1];
        order[i - 1] = order[j];
        order[j] = t;
    }
    for (size_t k = 0; rc == 0 && k < n && d->n < o->num_prompts; k++) {
        json_t *conv = json_object_get(json_array_get(root, order[k]), "conversations");
        const char *prompt = NULL, *reply = NULL;
        size_t nt = json_array_size(conv);
        for (size_t t = 0; t + 1 < nt && prompt == NULL; t++) {
            json_t *turn = json_array_get(conv, t);
            const char *from = json_string_value(json_object_get(turn, "from"));
            if (from && !strcmp(from, "human")) {
                prompt = json_string_value(json_object_get(turn, "value"));
                reply = json_string_value(json_object_get(json_array_get(conv, t + 1), "value"));
            }
        }
        if (prompt == NULL || reply == NULL) {
            malformed++;
            continue;
        }
        pd_err_t err = { 0 };
        size_t n_reply = 0;
        int32_t *rids = encode(tok, reply, strlen(reply), false, &n_reply, &err);
        free(rids);
        if (rids == NULL) {
            malformed++;
            continue;
        }
        item_t *it = dataset_push(d);
        if (it == NULL) {
            rc = -1;
            break;
        }
        char where[600];
        snprintf(where, sizeof where, "%s entry %zu", o->dataset_path, order[k]);
        if (item_from_text(it, prompt, strlen(prompt), tok, prefix, o->prefix_len, where) != 0) {
            free(it->text);
            free(it->ids);
            d->n--;
            malformed++;
            continue;
        }
        it->output_len = o->has_output_len ? o->output_len : (uint32_t)n_reply;
        uint64_t total = (uint64_t)it->prompt_len + it->output_len;
        if (it->prompt_len < SHAREGPT_MIN_LEN || it->output_len < SHAREGPT_MIN_LEN ||
            it->prompt_len > SHAREGPT_MAX_PROMPT + o->prefix_len || total > SHAREGPT_MAX_TOTAL + o->prefix_len ||
            (max_seq && total > max_seq)) {
            free(it->text);
            free(it->ids);
            d->n--;
            pruned++;
        }
    }
    if (rc == 0 && d->n == 0) {
        fprintf(stderr,
                "pd-bench: %s: no usable conversations (%zu entries, %zu malformed, %zu pruned "
                "by length)\n",
                o->dataset_path, n, malformed, pruned);
        rc = -1;
    } else if (rc != 0) {
        fprintf(stderr, "pd-bench: out of memory loading %s\n", o->dataset_path);
    } else if (malformed) {
        fprintf(stderr, "pd-bench: %s: skipped %zu malformed entries\n", o->dataset_path,
                malformed);
    }
    free(order);
    json_decref(root);
    return rc;
}

/* ====== Requests in flight ====== */

typedef enum { REQ_PENDING = 0, REQ_INFLIGHT, REQ_DONE } req_state_t;

typedef struct {
    size_t item;                /* dataset index */
    uint64_t id;                /* the client's request id */
    req_state_t state;
    bool ok;
    uint32_t prompt_len, expected_len;
    uint64_t send_ns, end_ns;   /* absolute monotonic times */
    uint64_t *tok_ns;           /* (n_tok) arrival time of each output token */
    size_t n_tok, cap_tok;
    uint64_t *chunk_ns;         /* (n_chunks) arrival of each token-carrying chunk */
    size_t n_chunks, cap_chunks;
    char *error;                /* "STATUS: message" when !ok */
    pd_http_conn_t *conn;       /* --target: the request's connection while in flight */
    bool http_done, http_usage; /* --target: "[DONE]" seen, usage seen */
    int finish;
    uint32_t usage_prompt, usage_completion, n_preemptions;
    uint64_t queue_us, router_ttft_us, router_e2e_us;
} req_t;

typedef struct {
    const opts_t *o;
    req_t *reqs;                /* (n_reqs) one per submitted request, in order */
    size_t n_reqs, cap_reqs;
    uint64_t *map_id;           /* (map_cap) open addressing: id -> index + 1 */
    size_t *map_idx;
    size_t map_cap, map_used;
    size_t inflight, done, max_inflight;
    uint64_t start_ns, end_ns;
    bool interrupted;
    const pd_http_url_t *http;  /* --target, or NULL */
    const char *http_model;     /* the served model id ("model" of each request) */
    char http_path[600];        /* ".../v1/completions" */
    size_t *live;               /* (n_live) --target: indexes of requests in flight */
    size_t n_live, cap_live;
    struct pollfd *pfd;         /* (cap_live) */
} bench_t;

static int map_put(bench_t *b, uint64_t id, size_t idx)
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

static req_t *map_get(bench_t *b, uint64_t id)
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

static int push_ns(uint64_t **arr, size_t *n, size_t *cap, uint64_t v)
{
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 16;
        uint64_t *p = realloc(*arr, c * sizeof *p);
        if (p == NULL)
            return -1;
        *arr = p;
        *cap = c;
    }
    (*arr)[(*n)++] = v;
    return 0;
}

static void req_fail(req_t *r, const char *fmt, const char *a, const char *b)
{
    if (r->error)
        return;
    size_t len = strlen(fmt) + strlen(a) + strlen(b) + 1;
    r->error = malloc(len);
    if (r->error)
        snprintf(r->error, len, fmt, a, b);
    r->ok = false;
}

static int on_chunk(const pd_chunk_t *ch, void *user)
{
    bench_t *b = user;
    uint64_t t = now_ns();
    req_t *r = map_get(b, ch->request_id);
    if (r == NULL || r->state != REQ_INFLIGHT)
        return 0;
    if (ch->n_tokens > 0) {
        if (ch->index != r->n_tok)
            req_fail(r, "%s%s", "chunk index gap: tokens lost or duplicated", "");
        if (push_ns(&r->chunk_ns, &r->n_chunks, &r->cap_chunks, t) != 0)
            req_fail(r, "%s%s", "out of memory", "");
        for (size_t k = 0; k < ch->n_tokens; k++)
            if (push_ns(&r->tok_ns, &r->n_tok, &r->cap_tok, t) != 0)
                req_fail(r, "%s%s", "out of memory", "");
    }
    if (!ch->is_final)
        return 0;
    r->end_ns = t;
    r->state = REQ_DONE;
    r->finish = ch->finish;
    r->usage_prompt = ch->prompt_tokens;
    r->usage_completion = ch->completion_tokens;
    r->queue_us = ch->queue_us;
    r->router_ttft_us = ch->ttft_us;
    r->router_e2e_us = ch->e2e_us;
    r->n_preemptions = ch->n_preemptions;
    if (ch->status != PD_STATUS_OK)
        req_fail(r, "%s: %s", pd_status_name(ch->status), ch->error ? ch->error : "");
    else if (r->error == NULL)
        r->ok = true;
    if (r->prompt_len == 0)
        r->prompt_len = ch->prompt_tokens;
    b->inflight--;
    b->done++;
    if (b->done == b->n_reqs)
        b->end_ns = t;
    return 0;
}

static void progress(const bench_t *b, size_t total, bool final)
{
    double el = (double)(now_ns() - b->start_ns) / 1e9;
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

/* Submits request number i (dataset item i % n). 0, or -1 when out of memory. */
static int submit_one(bench_t *b, pd_client_t *c, const dataset_t *d, size_t i)
{
    if (b->n_reqs == b->cap_reqs) {
        size_t cap = b->cap_reqs ? b->cap_reqs * 2 : 256;
        req_t *p = realloc(b->reqs, cap * sizeof *p);
        if (p == NULL)
            return -1;
        b->reqs = p;
        b->cap_reqs = cap;
    }
    req_t *r = &b->reqs[b->n_reqs];
    memset(r, 0, sizeof *r);
    r->item = i % d->n;
    const item_t *it = &d->items[r->item];
    r->prompt_len = it->prompt_len;
    r->expected_len = it->output_len;
    pd_gen_request_t g;
    pd_gen_request_default(&g);
    if (it->ids) {
        g.prompt_tokens = it->ids;
        g.n_prompt_tokens = it->n_ids;
    } else {
        g.prompt = it->text;
    }
    g.max_tokens = it->output_len;
    g.ignore_eos = b->o->ignore_eos;
    g.temperature = b->o->temperature;
    g.seed = b->o->seed + i;
    g.stream = true;
    pd_err_t err = { 0 };
    r->send_ns = now_ns();
    int rc = pd_client_submit(c, &g, &r->id, &err);
    if (rc == PD_EFULL)
        return 1; /* retry later */
    b->n_reqs++;
    if (rc != 0) {
        r->state = REQ_DONE;
        r->end_ns = now_ns();
        req_fail(r, "submit: %s%s", err.msg, "");
        b->done++;
        return 0;
    }
    if (map_put(b, r->id, b->n_reqs - 1) != 0)
        return -1;
    r->state = REQ_INFLIGHT;
    b->inflight++;
    if (b->inflight > b->max_inflight)
        b->max_inflight = b->inflight;
    return 0;
}

/* ====== --target: an OpenAI-compatible HTTP server ====== */

/* One SSE data payload of request r (user). Returns 1 at "[DONE]". */
static int on_sse(void *user, const char *data, size_t len)
{
    req_t *r = user;
    uint64_t t = now_ns();
    if (len == 6 && memcmp(data, "[DONE]", 6) == 0) {
        r->http_done = true;
        r->end_ns = t;
        return 1;
    }
    json_error_t je = { 0 };
    json_t *j = json_loadb(data, len, 0, &je);
    if (!json_is_object(j)) {
        json_decref(j);
        req_fail(r, "malformed event (%s): %.80s", je.text, data);
        return 1;
    }
    json_t *e = json_object_get(j, "error");
    if (e && !json_is_null(e)) {
        const char *msg = json_string_value(json_object_get(e, "message"));
        req_fail(r, "%s%s", "error event: ", msg ? msg : "(no message)");
    }
    json_t *ch = json_object_get(j, "choices");
    json_t *c0 = json_is_array(ch) && json_array_size(ch) > 0 ? json_array_get(ch, 0) : NULL;
    if (c0) {
        const char *text = json_string_value(json_object_get(c0, "text"));
        if (text && *text && push_ns(&r->chunk_ns, &r->n_chunks, &r->cap_chunks, t) != 0)
            req_fail(r, "%s%s", "out of memory", "");
        const char *fr = json_string_value(json_object_get(c0, "finish_reason"));
        if (fr)
            r->finish = !strcmp(fr, "length")  ? PD_FINISH_LENGTH
                        : !strcmp(fr, "stop")  ? PD_FINISH_STOP
                        : !strcmp(fr, "abort") ? PD_FINISH_CANCELLED
                                               : PD_FINISH_NONE;
    }
    json_t *u = json_object_get(j, "usage");
    if (json_is_object(u)) {
        json_int_t pt = json_integer_value(json_object_get(u, "prompt_tokens"));
        json_int_t ct = json_integer_value(json_object_get(u, "completion_tokens"));
        if (pt >= 0 && pt <= BENCH_MAX_LEN * 16ll && ct >= 0 && ct <= BENCH_MAX_LEN * 16ll) {
            r->usage_prompt = (uint32_t)pt;
            r->usage_completion = (uint32_t)ct;
            r->http_usage = json_is_integer(json_object_get(u, "completion_tokens"));
        }
    }
    json_decref(j);
    return 0;
}

/* Ends request idx (in flight) at time t: success when the stream ended with
 * [DONE] and no error was seen, else fails it with why (may be NULL). */
static void http_finish(bench_t *b, size_t idx, uint64_t t, const char *why)
{
    req_t *r = &b->reqs[idx];
    if (why)
        req_fail(r, "%s%s", why, "");
    if (r->conn && r->error == NULL && pd_http_conn_status(r->conn) != 200) {
        size_t len;
        const char *body = pd_http_conn_body(r->conn, &len);
        json_t *j = json_loadb(body, len, 0, NULL);
        const char *msg = json_string_value(json_object_get(json_object_get(j, "error"), "message"));
        if (msg == NULL) /* llama.cpp nests it the same way; else show the start of the body */
            msg = json_string_value(json_object_get(j, "message"));
        char st[32];
        snprintf(st, sizeof st, "HTTP %d: ", pd_http_conn_status(r->conn));
        char brief[201];
        snprintf(brief, sizeof brief, "%s", msg ? msg : body);
        req_fail(r, "%s%s", st, brief);
        json_decref(j);
    }
    if (r->error == NULL && !r->http_done)
        req_fail(r, "%s%s",
                 r->conn && !pd_http_conn_is_sse(r->conn)
                     ? "HTTP 200 but not an event stream (Content-Type text/event-stream)"
                     : "the stream ended without data: [DONE]",
                 "");
    pd_http_conn_free(r->conn);
    r->conn = NULL;
    if (!r->http_done)
        r->end_ns = t;
    r->state = REQ_DONE;
    if (r->error == NULL) {
        r->ok = true;
        /* Output tokens: usage.completion_tokens, else one per text event.
         * Tokens past the events' count arrived with the last text event. */
        size_t n = r->http_usage ? r->usage_completion : r->n_chunks;
        r->tok_ns = n ? malloc(n * sizeof *r->tok_ns) : NULL;
        if (n && r->tok_ns == NULL) {
            req_fail(r, "%s%s", "out of memory", "");
        } else {
            for (size_t k = 0; k < n; k++)
                r->tok_ns[k] = r->n_chunks == 0        ? r->end_ns
                               : k < r->n_chunks       ? r->chunk_ns[k]
                                                       : r->chunk_ns[r->n_chunks - 1];
            r->n_tok = r->cap_tok = n;
        }
        if (r->prompt_len == 0)
            r->prompt_len = r->usage_prompt;
    }
    b->inflight--;
    b->done++;
    if (b->done == b->n_reqs)
        b->end_ns = t;
}

/* JSON body of request number i (dataset item it); NULL when out of memory. */
static char *http_body(const bench_t *b, const item_t *it, size_t i, size_t *len)
{
    const opts_t *o = b->o;
    json_t *j = json_object(), *prompt;
    if (it->ids) {
        prompt = json_array();
        for (size_t k = 0; k < it->n_ids; k++)
            json_array_append_new(prompt, json_integer(it->ids[k]));
    } else {
        prompt = json_string(it->text);
    }
    if (b->http_model)
        json_object_set_new(j, "model", json_string(b->http_model));
    json_object_set_new(j, "prompt", prompt);
    json_object_set_new(j, "max_tokens", json_integer(it->output_len));
    json_object_set_new(j, "temperature", json_real(o->temperature));
    json_object_set_new(j, "seed", json_integer((json_int_t)((o->seed + i) & INT64_MAX)));
    json_object_set_new(j, "stream", json_true());
    json_t *so = json_object();
    json_object_set_new(so, "include_usage", json_true());
    json_object_set_new(j, "stream_options", so);
    if (o->ignore_eos)
        json_object_set_new(j, "ignore_eos", json_true());
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    *len = s ? strlen(s) : 0;
    return s;
}

/* Submits request number i over HTTP: 0, 1 to retry later (no file
 * descriptor free), or -1 when out of memory. */
static int submit_http(bench_t *b, const dataset_t *d, size_t i)
{
    if (b->n_reqs == b->cap_reqs) {
        size_t cap = b->cap_reqs ? b->cap_reqs * 2 : 256;
        req_t *p = realloc(b->reqs, cap * sizeof *p);
        if (p == NULL)
            return -1;
        b->reqs = p;
        b->cap_reqs = cap;
    }
    if (b->n_live == b->cap_live) {
        size_t cap = b->cap_live ? b->cap_live * 2 : 64;
        size_t *l = realloc(b->live, cap * sizeof *l);
        if (l == NULL)
            return -1;
        b->live = l;
        struct pollfd *pf = realloc(b->pfd, cap * sizeof *pf);
        if (pf == NULL)
            return -1;
        b->pfd = pf;
        b->cap_live = cap;
    }
    req_t *r = &b->reqs[b->n_reqs];
    memset(r, 0, sizeof *r);
    r->item = i % d->n;
    r->id = b->n_reqs + 1;
    const item_t *it = &d->items[r->item];
    r->prompt_len = it->prompt_len;
    r->expected_len = it->output_len;
    size_t len;
    char *body = http_body(b, it, i, &len);
    if (body == NULL)
        return -1;
    pd_err_t err = { 0 };
    r->send_ns = now_ns();
    r->conn = pd_http_conn_new(b->http, "POST", b->http_path, body, len, b->o->api_key, &err);
    free(body);
    if (r->conn == NULL && err.code == PD_EFULL && b->inflight > 0)
        return 1; /* out of file descriptors: retry when a request ends */
    b->n_reqs++;
    r->state = REQ_INFLIGHT;
    b->inflight++;
    if (b->inflight > b->max_inflight)
        b->max_inflight = b->inflight;
    if (r->conn == NULL) {
        char why[PD_ERR_MSG_MAX + 16];
        snprintf(why, sizeof why, "submit: %s", err.msg);
        http_finish(b, b->n_reqs - 1, now_ns(), why);
        return 0;
    }
    b->live[b->n_live++] = b->n_reqs - 1;
    return 0;
}

/* Waits up to wait_ms for the HTTP requests in flight and advances them;
 * enforces --connect-timeout (until connected) and --request-timeout. */
static void poll_http(bench_t *b, int wait_ms)
{
    const opts_t *o = b->o;
    for (size_t k = 0; k < b->n_live; k++) {
        req_t *r = &b->reqs[b->live[k]];
        b->pfd[k].fd = pd_http_conn_fd(r->conn);
        b->pfd[k].events = pd_http_conn_events(r->conn);
        b->pfd[k].revents = 0;
    }
    int n = poll(b->pfd, b->n_live, wait_ms);
    if (n < 0 && errno != EINTR)
        n = 0;
    uint64_t t = now_ns();
    size_t keep = 0;
    for (size_t k = 0; k < b->n_live; k++) {
        size_t idx = b->live[k];
        req_t *r = &b->reqs[idx];
        const char *why = NULL;
        char buf[PD_ERR_MSG_MAX + 64];
        int rc = 0;
        if (n > 0 && b->pfd[k].revents) {
            pd_err_t err = { 0 };
            rc = pd_http_conn_io(r->conn, b->pfd[k].revents, on_sse, r, &err);
            if (rc < 0) {
                snprintf(buf, sizeof buf, "http: %s", err.msg);
                why = buf;
            }
        }
        if (rc == 0 && !pd_http_conn_connected(r->conn) &&
            t - r->send_ns >= (uint64_t)o->connect_timeout_ms * 1000000ull) {
            snprintf(buf, sizeof buf, "http: connect timed out after %u ms", o->connect_timeout_ms);
            why = buf;
            rc = -1;
        } else if (rc == 0 && t - r->send_ns >= (uint64_t)o->request_timeout_ms * 1000000ull) {
            snprintf(buf, sizeof buf, "http: no complete response within %u ms (--request-timeout)",
                     o->request_timeout_ms);
            why = buf;
            rc = -1;
        }
        if (rc != 0)
            http_finish(b, idx, t, why);
        else
            b->live[keep++] = idx;
    }
    b->n_live = keep;
}

/* Ctrl-C with --target: closing a connection cancels its request. */
static void cancel_http(bench_t *b)
{
    uint64_t t = now_ns();
    for (size_t k = 0; k < b->n_live; k++)
        http_finish(b, b->live[k], t, "cancelled (interrupted)");
    b->n_live = 0;
}

/* GET /v1/models (blocking, within --connect-timeout): the served model's
 * id and max_model_len. 0, or -1 with a message printed. */
static int http_models(const opts_t *o, const pd_http_url_t *u, const char *base, char *model,
                       size_t cap, uint32_t *max_len)
{
    char path[600];
    snprintf(path, sizeof path, "%s/models", base);
    pd_err_t err = { 0 };
    pd_http_conn_t *c = pd_http_conn_new(u, "GET", path, NULL, 0, o->api_key, &err);
    uint64_t until = now_ns() + (uint64_t)o->connect_timeout_ms * 1000000ull;
    int rc = c ? 0 : -1;
    while (rc == 0) {
        uint64_t t = now_ns();
        if (t >= until) {
            pd_err_set(&err, PD_EIO, "no answer to GET %s", path);
            rc = -1;
            break;
        }
        struct pollfd pf = { .fd = pd_http_conn_fd(c), .events = pd_http_conn_events(c) };
        int ms = (int)((until - t) / 1000000ull) + 1;
        if (poll(&pf, 1, ms > BENCH_POLL_MS ? BENCH_POLL_MS : ms) > 0)
            rc = pd_http_conn_io(c, pf.revents, NULL, NULL, &err);
        if (g_interrupted)
            rc = pd_err_set(&err, PD_EIO, "interrupted");
    }
    if (rc < 0) {
        fprintf(stderr, "pd-bench: cannot reach the server at %s within %u ms: %s\n", o->target,
                o->connect_timeout_ms, err.msg);
        pd_http_conn_free(c);
        return -1;
    }
    size_t len;
    const char *body = pd_http_conn_body(c, &len);
    json_t *j = json_loadb(body, len, 0, NULL);
    json_t *m0 = json_array_get(json_object_get(j, "data"), 0);
    const char *id = json_string_value(json_object_get(m0, "id"));
    if (pd_http_conn_status(c) != 200 || id == NULL) {
        const char *msg = json_string_value(json_object_get(json_object_get(j, "error"), "message"));
        fprintf(stderr, "pd-bench: GET http://%s%s: HTTP %d: %.200s\n", u->hostport, path,
                pd_http_conn_status(c), msg ? msg : pd_http_conn_status(c) == 200 ? "no model listed" : body);
        json_decref(j);
        pd_http_conn_free(c);
        return -1;
    }
    snprintf(model, cap, "%s", id);
    json_int_t ml = json_integer_value(json_object_get(m0, "max_model_len"));
    *max_len = ml > 0 && ml <= (json_int_t)UINT32_MAX ? (uint32_t)ml : 0;
    json_decref(j);
    pd_http_conn_free(c);
    return 0;
}

/* Runs the load: arrivals by the gamma process, at most max_concurrency in
 * flight, until num_prompts are done or --duration has passed, or Ctrl-C. */
static int run(bench_t *b, pd_client_t *c, const dataset_t *d, rng_t *rng)
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
    b->start_ns = now_ns();
    uint64_t next_at = b->start_ns, last_bar = 0;
    if (d->timed)
        next_at += d->items[0].at_ms * 1000000ull;
    size_t next = 0;
    bool stop_submitting = false;
    uint64_t drain_until = 0;
    for (;;) {
        uint64_t t = now_ns();
        if (g_interrupted && !b->interrupted) {
            b->interrupted = true;
            stop_submitting = true;
            if (b->http)
                cancel_http(b);
            for (size_t i = 0; c && i < b->n_reqs; i++)
                if (b->reqs[i].state == REQ_INFLIGHT)
                    pd_client_cancel(c, b->reqs[i].id, NULL);
            drain_until = t + BENCH_DRAIN_MS * 1000000ull;
        }
        if (by_duration && t - b->start_ns >= dur_ns)
            stop_submitting = true;
        while (!stop_submitting && next < limit && t >= next_at &&
               (o->max_concurrency == 0 || b->inflight < o->max_concurrency)) {
            int rc = b->http ? submit_http(b, d, next) : submit_one(b, c, d, next);
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
            t = now_ns();
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
        pd_err_t err = { 0 };
        if (b->inflight > 0 || wait_ms > 0) {
            int rc = 0;
            if (b->inflight > 0 && b->http)
                poll_http(b, wait_ms);
            else if (b->inflight > 0)
                rc = pd_client_poll(c, wait_ms, on_chunk, b, &err);
            if (rc < 0) {
                fprintf(stderr, "pd-bench: %s\n", err.msg);
                return -1;
            }
            if (b->inflight == 0 && wait_ms > 0) {
                struct timespec ts = { 0, (long)wait_ms * 1000000L };
                nanosleep(&ts, NULL);
            }
        }
        if (o->progress && now_ns() - last_bar > BENCH_PROGRESS_NS) {
            last_bar = now_ns();
            progress(b, limit == SIZE_MAX ? 0 : limit, false);
        }
    }
    if (b->end_ns == 0 || b->interrupted || b->done != b->n_reqs)
        b->end_ns = now_ns();
    if (o->progress)
        progress(b, limit == SIZE_MAX ? 0 : limit, true);
    return 0;
}

/* ====== Metrics ====== */

typedef struct {
    double mean, median, std;
    double pct[BENCH_MAX_PCTS];
} stats_t;

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* numpy.percentile with linear interpolation over sorted v. */
static double percentile(const double *v, size_t n, double p)
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
    qsort(v, n, sizeof *v, cmp_double);
    double sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += v[i];
    s->mean = sum / (double)n;
    double ss = 0;
    for (size_t i = 0; i < n; i++)
        ss += (v[i] - s->mean) * (v[i] - s->mean);
    s->std = sqrt(ss / (double)n);
    s->median = percentile(v, n, 50);
    for (size_t k = 0; k < o->n_pcts; k++)
        s->pct[k] = percentile(v, n, o->pcts[k]);
}

enum { M_TTFT, M_TPOT, M_ITL, M_E2EL, M_COUNT };
static const char *const METRIC_KEY[M_COUNT] = { "ttft", "tpot", "itl", "e2el" };
static const char *const METRIC_NAME[M_COUNT] = { "TTFT", "TPOT", "ITL", "E2EL" };
static const char *const METRIC_HEADER[M_COUNT] = { "Time to First Token",
                                                    "Time per Output Token (excl. 1st token)",
                                                    "Inter-token Latency", "End-to-end Latency" };

typedef struct {
    size_t completed, failed, unfinished, good;
    uint64_t total_input, total_output;
    double duration_s;
    double request_throughput, request_goodput, output_throughput, total_token_throughput;
    double max_output_tokens_per_s;
    double *vals[M_COUNT];       /* (n_vals[m]) sorted samples, ms */
    size_t n_vals[M_COUNT];
    stats_t st[M_COUNT];
} metrics_t;

static double ms_between(uint64_t a, uint64_t b) { return (double)(b - a) / 1e6; }

static double req_ttft_ms(const req_t *r)
{
    return ms_between(r->send_ns, r->n_tok ? r->tok_ns[0] : r->end_ns);
}

static void bench_free(bench_t *b);

static int compute_metrics(const bench_t *b, metrics_t *m)
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
        double ttft = req_ttft_ms(r), e2el = ms_between(r->send_ns, r->end_ns), tpot = 0;
        if (r->n_tok > 1) {
            tpot = (e2el - ttft) / (double)(r->n_tok - 1);
            m->vals[M_TPOT][m->n_vals[M_TPOT]++] = tpot;
        }
        m->vals[M_TTFT][m->n_vals[M_TTFT]++] = ttft;
        m->vals[M_E2EL][m->n_vals[M_E2EL]++] = e2el;
        for (size_t k = 1; k < r->n_chunks; k++)
            m->vals[M_ITL][m->n_vals[M_ITL]++] = ms_between(r->chunk_ns[k - 1], r->chunk_ns[k]);
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

static void metrics_free(metrics_t *m)
{
    for (int k = 0; k < M_COUNT; k++)
        free(m->vals[k]);
}

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

static void print_summary(const bench_t *b, const metrics_t *m)
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

/* ====== Output files ====== */

static void set_num(json_t *o, const char *k, double v)
{
    json_object_set_new(o, k, isfinite(v) ? json_real(v) : json_null());
}

static json_t *result_json(const bench_t *b, const metrics_t *m, const char *model_id)
{
    const opts_t *o = b->o;
    static const char *const DS[] = { "random", "file", "sharegpt", "mooncake" };
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
static int write_json_line(const char *path, bool append, json_t *j)
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

/* --save-requests: one JSON object per line and request, in submit order.
 * Times in ms; token_times_ms are relative to the request's send. */
static int save_requests(const bench_t *b, const char *path)
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
        set_num(j, "start_ms", ms_between(b->start_ns, r->send_ns));
        if (r->state == REQ_DONE) {
            double ttft = req_ttft_ms(r), e2el = ms_between(r->send_ns, r->end_ns);
            set_num(j, "ttft_ms", ttft);
            set_num(j, "e2el_ms", e2el);
            if (r->n_tok > 1)
                set_num(j, "tpot_ms", (e2el - ttft) / (double)(r->n_tok - 1));
        }
        json_t *tt = json_array(), *itl = json_array();
        for (size_t k = 0; k < r->n_tok; k++)
            json_array_append_new(tt, json_real(ms_between(r->send_ns, r->tok_ns[k])));
        for (size_t k = 1; k < r->n_chunks; k++)
            json_array_append_new(itl, json_real(ms_between(r->chunk_ns[k - 1], r->chunk_ns[k])));
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
static int plot(const bench_t *b, const metrics_t *m, const char *prefix)
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

/* ====== --profile: the cluster's costs, for pd-plan ======
 *
 * A small grid of runs on the live cluster; the workers' own counters (sums
 * of forward-pass times, reported by heartbeat through the router's status)
 * give the compute times, client clocks give the end-to-end ones:
 *   prefill:  L-token prompts (max_tokens 2, so the KV is shipped), first
 *             one at a time, then 8 at once (batched by the worker): ms per
 *             prefill pass (prefill_us / batches) with the mean prompts per
 *             pass (below 1 when the worker cut prompts into chunks to keep
 *             a pass within half a heartbeat), client TTFT, and KV transfer
 *             ms (kv_transfer_us / transfers, single prompts);
 *   prefill_pass_tokens: the workers' pass cap at the end (pd-plan
 *             simulates the chunking with it);
 *   decode:   B requests at once with C-token prompts and 32 output tokens,
 *             3 runs: mean batch (decode_tokens / steps) and the median ms
 *             per step (decode_us / steps) at mean context C + 16;
 *   overhead: median over the single-prompt runs of TTFT - the prompt's
 *             prefill passes - the queueing the router reported (network,
 *             router, scheduling).
 */

#define PROFILE_REPEAT 3        /* prefill runs per prompt length */
#define PROFILE_DECODE_OUT 32   /* output tokens per decode-grid request */
#define PROFILE_SETTLE_MS 5000  /* longest wait for a heartbeat after a run */

typedef struct {
    uint64_t prefill_us, prefill_batches, kv_transfers, kv_transfer_us;
    uint64_t steps, decode_us, decode_tokens;
    uint32_t decode_blocks; /* smallest total_blocks of a decode-capable worker */
    uint32_t pass_tokens;   /* smallest prefill pass cap of a prefill-capable worker */
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
        bool pre = strcmp(w->role, "decode") != 0, dec = strcmp(w->role, "prefill") != 0;
        k->n_prefill += pre;
        k->n_decode += dec;
        k->n_only_prefill += !dec;
        k->n_only_decode += !pre;
        if (dec && (k->decode_blocks == 0 || w->total_blocks < k->decode_blocks))
            k->decode_blocks = w->total_blocks;
        if (pre && w->prefill_pass_tokens &&
            (k->pass_tokens == 0 || w->prefill_pass_tokens < k->pass_tokens))
            k->pass_tokens = w->prefill_pass_tokens;
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
        uint64_t since_ms = (now_ns() - done_ns) / 1000000ull;
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
    if (build_random(&o, tok, rng, prefix, 0, &e) != 0)
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
    if (settled_counters(c, now_ns(), k0) != 0)
        goto done;
    if (run(&b, c, d, rng) != 0 || compute_metrics(&b, &m) != 0)
        goto done;
    if (m.failed || m.completed != n) {
        fprintf(stderr, "pd-bench: --profile: %zu of %u requests failed (%s)\n", m.failed, n,
                b.n_reqs && b.reqs[0].error ? b.reqs[0].error : "?");
        goto done;
    }
    double *q = malloc(n * sizeof *q);
    if (q == NULL)
        goto done;
    for (size_t i = 0; i < b.n_reqs; i++)
        q[i] = (double)b.reqs[i].queue_us / 1000.0;
    qsort(q, n, sizeof *q, cmp_double);
    if (queue_ms)
        *queue_ms = percentile(q, n, 50);
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

static int profile(const opts_t *o, pd_client_t *c, const pd_cluster_status_t *cs,
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
            qsort(step_ms, PROFILE_REPEAT, sizeof *step_ms, cmp_double);
            json_t *pt = json_object();
            json_object_set_new(pt, "batch", json_real(batch));
            json_object_set_new(pt, "context", json_integer(ctxs[ci] + n_bos + PROFILE_DECODE_OUT / 2));
            json_object_set_new(pt, "ms", json_real(percentile(step_ms, PROFILE_REPEAT, 50)));
            json_array_append_new(dec, pt);
        }
    }
    if (k1.n_only_prefill > 0 && k1.n_only_decode > 0) {
        json_t *inf = NULL;
        if (profile_interference(o, c, tok, rng, max_ctx, &inf) != 0)
            goto done;
        json_object_set_new(j, "interference", inf);
    }
    qsort(ovh, n_ovh, sizeof *ovh, cmp_double);
    json_object_set_new(j, "n_prefill_workers", json_integer((json_int_t)k1.n_prefill));
    json_object_set_new(j, "n_decode_workers", json_integer((json_int_t)k1.n_decode));
    json_object_set_new(j, "decode_kv_blocks", json_integer(k1.decode_blocks));
    json_object_set_new(j, "overhead_ms", json_real(percentile(ovh, n_ovh, 50)));
    /* the cap a prefill pass had at the end (workers keep a pass within
     * half a heartbeat at their measured speed; 0 = not reported) */
    json_object_set_new(j, "prefill_pass_tokens", json_integer(k1.pass_tokens));
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

/* ====== main ====== */

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

static void bench_free(bench_t *b)
{
    for (size_t i = 0; i < b->n_reqs; i++) {
        free(b->reqs[i].tok_ns);
        free(b->reqs[i].chunk_ns);
        free(b->reqs[i].error);
        pd_http_conn_free(b->reqs[i].conn);
    }
    free(b->live);
    free(b->pfd);
    free(b->reqs);
    free(b->map_id);
    free(b->map_idx);
}

int main(int argc, char **argv)
{
    opts_t o;
    int prc = parse_args(argc, argv, &o);
    if (prc != 0) {
        usage(prc > 0 ? stdout : stderr);
        return prc > 0 ? 0 : EXIT_USAGE;
    }
    int status = EXIT_USAGE;
    pd_tok_t *tok = NULL;
    pd_client_t *c = NULL;
    pd_cluster_status_t *cs = NULL;
    dataset_t ds = { 0 };
    int32_t *prefix = NULL;
    bench_t b = { .o = &o };
    metrics_t m = { 0 };
    pd_err_t err = { 0 };
    pd_http_url_t url;
    char base[540];
    rng_t rng;
    rng_seed(&rng, o.seed);

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
        int urc = pd_http_url_parse(o.target, &url, &err);
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
        if (http_models(&o, &url, base, cs->model_name, sizeof cs->model_name,
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
        status = profile(&o, c, cs, tok, &rng) == 0 ? 0 : EXIT_FAILED;
        goto done;
    }

have_server:
    prefix = malloc(((size_t)o.prefix_len + 1) * sizeof *prefix);
    if (prefix == NULL)
        goto done;
    int drc = o.dataset == DS_RANDOM ? build_random(&o, tok, &rng, prefix, cs->max_seq_len, &ds)
              : o.dataset == DS_FILE ? load_file(&o, tok, prefix, &ds)
              : o.dataset == DS_MOONCAKE ? load_mooncake(&o, tok, cs->max_seq_len, &ds)
                                     : load_sharegpt(&o, tok, prefix, cs->max_seq_len, &rng, &ds);
    if (drc != 0)
        goto done;
    if (o.dataset != DS_RANDOM && !o.has_num_prompts && o.duration_s == 0)
        o.num_prompts = (uint32_t)ds.n; /* the whole file */

    char rate[32], conc[32];
    snprintf(rate, sizeof rate, isinf(o.rate) ? "inf" : "%g", o.rate);
    snprintf(conc, sizeof conc, o.max_concurrency ? "%u" : "unlimited", o.max_concurrency);
    fprintf(stderr,
            "pd-bench: %s, model %s, %zu distinct prompts, request rate %s/s, burstiness %g "
            "(%s), max concurrency %s\n",
            o.target ? o.target : o.router, cs->model_name, ds.n, rate, o.burstiness,
            o.burstiness == 1.0 ? "Poisson" : "gamma", conc);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    if (run(&b, c, &ds, &rng) != 0 || compute_metrics(&b, &m) != 0) {
        status = EXIT_FAILED;
        goto done;
    }
    print_summary(&b, &m);
    status = 0;
    if (m.completed == 0) {
        fprintf(stderr, "pd-bench: all requests failed%s%s\n",
                b.n_reqs && b.reqs[0].error ? ": " : "", b.n_reqs && b.reqs[0].error ? b.reqs[0].error : "");
        status = EXIT_FAILED;
    }
    if (o.json_path) {
        json_t *j = result_json(&b, &m, cs->model_name);
        if (j == NULL || write_json_line(o.json_path, o.append, j) != 0)
            status = EXIT_FAILED;
        json_decref(j);
    }
    if (o.save_path && save_requests(&b, o.save_path) != 0)
        status = EXIT_FAILED;
    if (o.plot_prefix && plot(&b, &m, o.plot_prefix) != 0)
        status = EXIT_FAILED;
    if (b.interrupted)
        status = EXIT_INTERRUPTED;
done:
    metrics_free(&m);
    bench_free(&b);
    free(prefix);
    dataset_free(&ds);
    pd_cluster_status_free(cs);
    pd_client_free(c);
    pd_tok_free(tok);
    return status;
}
