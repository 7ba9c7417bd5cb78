/* bench.h -- pd-bench: load-test a pdserve cluster from one process
 * (libpdclient, async), or any OpenAI-compatible server.
 *
 *   pd-bench [--router ADDR] [-m MODEL.gguf] [--dataset random|file|sharegpt|mooncake]
 *            [--dataset-path FILE] [--num-prompts N | --duration S]
 *            [--request-rate R|inf] [--burstiness B] [--max-concurrency C]
 *            [--input-len I] [--output-len O] [--range-ratio X] [--prefix-len P]
 *            [--num-prefixes K] [--mooncake-block-size B]
 *   pd-bench --dataset multi-turn [--num-conversations N] [--num-turns T]
 *            [--user-tokens U] [--output-len O] [--think-time MS] ...
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
 *
 * --dataset multi-turn: N conversations of T turns (client/chatconv.h); each
 * turn's prompt is [BOS] + --prefix-len shared tokens + the conversation so
 * far (user messages and the answers the server returned) + a new user
 * message of --user-tokens; a conversation's next turn is sent when its
 * previous answer has completed, after --think-time ms; conversations start
 * by the arrival process (--request-rate, default all at once) and run
 * concurrently (at most --max-concurrency requests in flight). The report
 * adds TTFT median and p90 per turn index and turn T / turn 1.
 *
 * The files: main.c (start, checks, the order of things), options.c (the
 * command line), dataset.c (the prompts), rng.c (random draws), run.c (the
 * load loop and the requests in flight), run_chat.c (the multi-turn loop),
 * run_zmq.c (a pdserve router),
 * run_http.c (--target), metrics.c (the numbers), report.c (summary, JSON,
 * per-request records, plots), profile.c (--profile, for pd-plan).
 */
#ifndef PD_BENCH_H
#define PD_BENCH_H

#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

#include "base/clock.h"
#include "chatconv.h"
#include "httpc.h"
#include "interrupt.h"
#include "pdclient.h"
#include "engine/tokenizer.h"

#define EXIT_FAILED 1
#define EXIT_USAGE 2
#define EXIT_UNREACHABLE 3
#define EXIT_INTERRUPTED PD_EXIT_INTERRUPTED

#define BENCH_MAX_PROMPTS 10000000u    /* --num-prompts upper bound */
#define BENCH_MAX_LEN 1000000u         /* token-length options upper bound */
#define BENCH_MAX_CONVS 100000u        /* --num-conversations upper bound */
#define BENCH_MAX_PCTS 16              /* --percentiles entries */
#define BENCH_POLL_MS 50               /* longest poll wait (progress, Ctrl-C) */
#define BENCH_PROGRESS_NS 200000000ull /* progress bar refresh, ns */
#define BENCH_DRAIN_MS 3000            /* after Ctrl-C: wait for cancelled finals */
#define SHAREGPT_MIN_LEN 4             /* vLLM's ShareGPT pruning: min tokens */
#define SHAREGPT_MAX_PROMPT 1024       /* ... max prompt tokens */
#define SHAREGPT_MAX_TOTAL 2048        /* ... max prompt + output tokens */

/* Ctrl-C: pd_interrupted (interrupt.h); the load loop stops at the first. */


/* ====== rng.c: xoshiro256**, seeded by splitmix64 ====== */

typedef struct {
    uint64_t s[4];
} rng_t;

void rng_seed(rng_t *r, uint64_t seed);
uint64_t rng_next(rng_t *r);
double rng_unit(rng_t *r);                           /* uniform in (0, 1) */
uint32_t rng_range(rng_t *r, uint32_t lo, uint32_t hi); /* uniform in [lo, hi] */
double rng_gamma(rng_t *r, double shape, double scale);

/* ====== options.c ====== */

typedef enum { DS_RANDOM, DS_FILE, DS_SHAREGPT, DS_MOONCAKE, DS_MULTITURN } dataset_kind_t;

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
    uint32_t num_conversations, num_turns, user_tokens; /* --dataset multi-turn */
    uint32_t think_time_ms;      /* multi-turn: pause after an answer before the next turn */
    bool has_chat_opt;           /* one of the four above was given */
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

void bench_usage(FILE *f);
/* Parses argv into o; returns 0, 1 for --help, or -1 (message printed). */
int bench_parse_args(int argc, char **argv, opts_t *o);

/* ====== dataset.c ====== */

typedef struct {
    char *text;          /* prompt text (sent as text when ids is NULL) */
    int32_t *ids;        /* (n_ids) prompt token ids, or NULL */
    size_t n_ids;
    uint32_t prompt_len; /* tokens; 0 = unknown (taken from the router's usage) */
    uint32_t output_len; /* max_tokens */
    uint64_t at_ms;      /* arrival from the start (timed datasets) */
    uint32_t conv, turn; /* multi-turn: conversation (0-based) and turn (1-based); turn 0 = not */
} item_t;

typedef struct {
    item_t *items;
    size_t n, cap;
    bool timed;          /* arrivals from the items (a trace), not the gamma process */
} dataset_t;

void dataset_free(dataset_t *d);
item_t *dataset_push(dataset_t *d); /* a zeroed new item, or NULL (no memory) */
/* o->num_prompts random prompts of printable-token ids: [BOS] + a shared
 * prefix (o->prefix_len ids, written to prefix) + o->input_len ids (within
 * --range-ratio), output o->output_len (same); max_seq (0: no limit) bounds
 * the worst case. 0, or -1 with a message printed. */
int dataset_random(const opts_t *o, const pd_tok_t *tok, rng_t *rng, int32_t *prefix,
                   uint32_t max_seq, dataset_t *d);
/* --dataset file: one prompt per line (ids when tok is given, else text). */
int dataset_file(const opts_t *o, const pd_tok_t *tok, const int32_t *prefix, dataset_t *d);
/* --dataset sharegpt: shuffled by rng, pruned as vLLM does. */
int dataset_sharegpt(const opts_t *o, const pd_tok_t *tok, const int32_t *prefix,
                     uint32_t max_seq, rng_t *rng, dataset_t *d);
/* --dataset mooncake: a Mooncake-format trace (client/mooncake.h) replayed
 * at its timestamps (d->timed). */
int dataset_mooncake(const opts_t *o, const pd_tok_t *tok, uint32_t max_seq, dataset_t *d);

/* --dataset multi-turn: the conversations, their user messages drawn before
 * the run; the prompts (items of d) are built turn by turn as answers come. */
typedef struct {
    pd_chatconv_t *conv;        /* (n) */
    size_t n;
    uint32_t *out_len;          /* (n * turns) max_tokens of conversation k's turn t at [k * turns + t] */
    size_t *req;                /* (n) b->reqs index + 1 of the turn in flight, 0 none */
    uint64_t *ready_ns;         /* (n) when the next turn may be sent (absolute monotonic) */
    bool *stopped;              /* (n) a turn failed: the conversation ends there */
    uint32_t turns;
    dataset_t items;            /* one item per request sent, in order */
} chat_t;

int dataset_multiturn(const opts_t *o, const pd_tok_t *tok, rng_t *rng, uint32_t max_seq,
                      chat_t *ch);
void chat_free(chat_t *ch);
/* Item of the next turn of conversation k, pushed onto ch->items (its ids
 * a fresh copy of the prompt). 0, or -1 when out of memory. */
int chat_push_turn(chat_t *ch, size_t k);
/* ====== run.c, run_zmq.c, run_http.c: the requests in flight ====== */

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
    pd_httpc_conn_t *conn;       /* --target: the request's connection while in flight */
    bool http_done, http_usage; /* --target: "[DONE]" seen, usage seen */
    int finish;
    uint32_t usage_prompt, usage_completion, n_preemptions;
    uint64_t queue_us, router_ttft_us, router_e2e_us;
    uint32_t conv, turn;        /* the item's (multi-turn), turn 0 = not */
    bool keep;                  /* keep the output: out_ids (router) or out_text (--target) */
    int32_t *out_ids;           /* (n_out, cap_out) output token ids */
    size_t n_out, cap_out;
    char *out_text;             /* (n_text, cap_text) output text, NUL-terminated */
    size_t n_text, cap_text;
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
    const pd_httpc_url_t *http;  /* --target, or NULL */
    const char *http_model;     /* the served model id ("model" of each request) */
    char http_path[600];        /* ".../v1/completions" */
    size_t *live;               /* (n_live, cap_live) --target: indexes of requests in flight */
    size_t n_live, cap_live;
    struct pollfd *pfd;         /* (cap_pfd >= n_live) */
    size_t cap_pfd;
    const dataset_t *ds;        /* the prompts requests were sent with (--save-requests) */
    bool keep_output;           /* multi-turn: requests keep their output */
} bench_t;

/* Runs the load: arrivals by the gamma process, at most max_concurrency in
 * flight, until num_prompts are done or --duration has passed, or Ctrl-C.
 * c: the router's client, NULL with --target (b->http). 0, or -1 with a
 * message printed. */
int bench_run(bench_t *b, pd_client_t *c, const dataset_t *d, rng_t *rng);
void bench_free(bench_t *b);
/* --dataset multi-turn: the conversations' turns as answers arrive (run_chat.c). */
int bench_run_chat(bench_t *b, pd_client_t *c, chat_t *ch, const pd_tok_t *tok, rng_t *rng);
/* One step of a run: Ctrl-C handling (cancels what is in flight once; sets
 * *drain_until), then waits up to wait_ms for chunks or HTTP events. 0, or
 * -1 with a message printed. */
int bench_step(bench_t *b, pd_client_t *c, int wait_ms, uint64_t *drain_until);
req_t *bench_new_req(bench_t *b); /* the next zeroed slot of b->reqs (not counted yet), or NULL */
int bench_map_put(bench_t *b, uint64_t id, size_t idx);
req_t *bench_map_get(bench_t *b, uint64_t id);
int bench_push_ns(uint64_t **arr, size_t *n, size_t *cap, uint64_t v);
/* Fails r once with fmt formatted with the strings a and b. */
void bench_req_fail(req_t *r, const char *fmt, const char *a, const char *b);
/* Submits request number i (dataset item i % n): 0, 1 to retry later, -1
 * when out of memory. */
int run_zmq_submit(bench_t *b, pd_client_t *c, const dataset_t *d, size_t i);
/* Waits up to wait_ms for chunks and takes them in. */
int run_zmq_poll(bench_t *b, pd_client_t *c, int wait_ms, pd_err_t *err);
void run_zmq_cancel(bench_t *b, pd_client_t *c); /* Ctrl-C: cancels every request in flight */
int run_http_submit(bench_t *b, const dataset_t *d, size_t i);
/* Waits up to wait_ms for the HTTP requests in flight and advances them;
 * enforces --connect-timeout (until connected) and --request-timeout. */
void run_http_poll(bench_t *b, int wait_ms);
void run_http_cancel(bench_t *b); /* Ctrl-C: closing a connection cancels its request */
/* GET /v1/models (blocking, within --connect-timeout): the served model's
 * id and max_model_len. 0, or -1 with a message printed. */
int run_http_models(const opts_t *o, const pd_httpc_url_t *u, const char *base, char *model,
                    size_t cap, uint32_t *max_len);

/* ====== metrics.c ====== */

typedef struct {
    double mean, median, std;
    double pct[BENCH_MAX_PCTS];
} stats_t;

enum { M_TTFT, M_TPOT, M_ITL, M_E2EL, M_COUNT };
extern const char *const METRIC_KEY[M_COUNT];    /* "ttft", ... (JSON keys, file names) */
extern const char *const METRIC_NAME[M_COUNT];   /* "TTFT", ... */
extern const char *const METRIC_HEADER[M_COUNT]; /* "Time to First Token", ... */

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

int bench_cmp_double(const void *a, const void *b); /* qsort, ascending */
double bench_percentile(const double *v, size_t n, double p); /* numpy's, over sorted v */
double bench_ms_between(uint64_t a, uint64_t b);
double bench_req_ttft_ms(const req_t *r);
/* The numbers of a finished run; 0, or -1 when out of memory. */
int metrics_compute(const bench_t *b, metrics_t *m);
void metrics_free(metrics_t *m);

/* ====== report.c ====== */

void report_summary(const bench_t *b, const metrics_t *m); /* stdout */
json_t *report_json(const bench_t *b, const metrics_t *m, const char *model_id);
int report_write_json(const char *path, bool append, json_t *j);
int report_save_requests(const bench_t *b, const char *path);
int report_plot(const bench_t *b, const metrics_t *m, const char *prefix);
/* Multi-turn: TTFT median / p90 per turn index, turn T / turn 1 (stdout, JSON). */
void report_turns(const bench_t *b, uint32_t turns);
json_t *report_turns_json(const bench_t *b, uint32_t turns);

/* ====== profile.c ====== */

/* --profile: measures the cluster's costs into o->profile_path. */
int profile_cluster(const opts_t *o, pd_client_t *c, const pd_cluster_status_t *cs,
                    const pd_tok_t *tok, rng_t *rng);

#endif
