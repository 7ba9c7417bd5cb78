/* options.c -- pd-bench's command line: the options, their defaults and
 * their checks. See bench.h. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/args.h"
#include "bench.h"

void bench_usage(FILE *f)
{
    fprintf(f,
            "usage: pd-bench [--router ADDR] [-m MODEL.gguf]\n"
            "                [--dataset random|file|sharegpt|mooncake|multi-turn]\n"
            "                [--dataset-path FILE] [--num-prompts N | --duration S]\n"
            "                [--request-rate R|inf] [--burstiness B] [--max-concurrency C]\n"
            "                [--input-len I] [--output-len O] [--range-ratio X] [--prefix-len P]\n"
            "                [--num-prefixes K] [--mooncake-block-size B]\n"
            "                [--num-conversations N] [--num-turns T] [--user-tokens U]\n"
            "                [--think-time MS]   (--dataset multi-turn)\n"
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
int bench_parse_args(int argc, char **argv, opts_t *o)
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
    o->num_conversations = 8;
    o->num_turns = 6;
    o->user_tokens = 32;
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
            else if (!strcmp(v, "multi-turn") || !strcmp(v, "multi_turn"))
                o->dataset = DS_MULTITURN;
            else {
                fprintf(stderr, "pd-bench: --dataset: unknown dataset '%s' (random, file, sharegpt, "
                        "mooncake, multi-turn)\n",
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
        } else if (!strcmp(a, "--mooncake-block-size")) {
            NEED_VALUE;
            if (parse_u32(a, v, 1, 65536, &o->mooncake_block_size) != 0)
                return -1;
        } else if (!strcmp(a, "--num-prefixes") ||
                   !strcmp(a, "--prefix-repetition-num-prefixes")) {
            NEED_VALUE;
            if (parse_u32(a, v, 1, 100000, &o->num_prefixes) != 0)
                return -1;
        } else if (!strcmp(a, "--prefix-len") || !strcmp(a, "--random-prefix-len")) {
            NEED_VALUE;
            if (parse_u32(a, v, 0, BENCH_MAX_LEN, &o->prefix_len) != 0)
                return -1;
        } else if (!strcmp(a, "--num-conversations")) {
            NEED_VALUE;
            if (parse_u32(a, v, 1, BENCH_MAX_CONVS, &o->num_conversations) != 0)
                return -1;
            o->has_chat_opt = true;
        } else if (!strcmp(a, "--num-turns")) {
            NEED_VALUE;
            if (parse_u32(a, v, 1, PD_CHATCONV_MAX_TURNS, &o->num_turns) != 0)
                return -1;
            o->has_chat_opt = true;
        } else if (!strcmp(a, "--user-tokens")) {
            NEED_VALUE;
            if (parse_u32(a, v, 1, BENCH_MAX_LEN, &o->user_tokens) != 0)
                return -1;
            o->has_chat_opt = true;
        } else if (!strcmp(a, "--think-time")) {
            NEED_VALUE;
            if (parse_u32(a, v, 0, 3600000, &o->think_time_ms) != 0)
                return -1;
            o->has_chat_opt = true;
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
    if (o->dataset == DS_MULTITURN) {
        if (o->has_num_prompts || o->duration_s > 0 || o->num_prefixes > 1 || o->dataset_path ||
            o->profile_path) {
            fprintf(stderr, "pd-bench: --dataset multi-turn sends --num-conversations x "
                            "--num-turns requests: not with --num-prompts, --duration, "
                            "--num-prefixes, --dataset-path or --profile\n");
            return -1;
        }
        uint64_t total = (uint64_t)o->num_conversations * o->num_turns;
        if (total > BENCH_MAX_PROMPTS) {
            fprintf(stderr, "pd-bench: --num-conversations x --num-turns = %llu requests, more "
                            "than %u\n", (unsigned long long)total, BENCH_MAX_PROMPTS);
            return -1;
        }
        o->num_prompts = (uint32_t)total;
    } else if (o->has_chat_opt) {
        fprintf(stderr, "pd-bench: --num-conversations, --num-turns, --user-tokens and "
                        "--think-time are for --dataset multi-turn\n");
        return -1;
    }
    if (o->dataset != DS_RANDOM && o->dataset != DS_MULTITURN && o->dataset_path == NULL) {
        fprintf(stderr, "pd-bench: --dataset %s needs --dataset-path FILE\n",
                o->dataset == DS_FILE ? "file" : o->dataset == DS_MOONCAKE ? "mooncake" : "sharegpt");
        return -1;
    }
    if (o->profile_path && o->model == NULL) {
        fprintf(stderr, "pd-bench: --profile needs the model's tokenizer: give -m MODEL.gguf\n");
        return -1;
    }
    if (o->num_prefixes > 1 && (o->dataset != DS_RANDOM || o->prefix_len == 0)) {
        fprintf(stderr, "pd-bench: --num-prefixes needs --dataset random and --prefix-len\n");
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
