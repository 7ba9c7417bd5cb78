/* pd-run -- one process, one prompt, no cluster.
 *
 *   pd-run -m FILE -p PROMPT [-n N] [--temp T] [--top-k K] [--top-p P] [--min-p M]
 *          [--repeat-penalty R] [--presence-penalty P] [--frequency-penalty F]
 *          [--seed S] [--ignore-eos] [--threads T] [--tokens] [--dump-top K] [--ctx N]
 *          [--kv-dtype f32|f16]
 *   pd-run -m FILE --bench [--json] [--threads T] [--bench-ctx N] [--kv-dtype f32|f16]
 *
 * Prints the continuation to stdout and nothing else (logs go to stderr).
 * --tokens prints the generated token ids (one line, space-separated)
 * instead of text. --dump-top K prints, for every prompt position and
 * every generated token, one JSON line with the top K (id, probability).
 * --no-batch-invariant lets prefill use OpenBLAS sgemm (faster prefill;
 * results then depend on the batch in the last bits, see forward.h).
 * --kv-dtype f16 keeps the KV cache in IEEE halves (kv.dtype in a worker).
 * --ctx N sizes the engine for N positions (default: the prompt's bytes +
 * n + 8), as llama.cpp's context size: phi3's LongRoPE factors are the
 * long ones when N exceeds the model's original context.
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/clock.h"
#include "base/args.h"
#include "base/err.h"
#include "engine/forward.h"
#include "engine/kernels.h"
#include "engine/kvcache.h"
#include "base/log.h"
#include "engine/model.h"
#include "engine/sampler.h"
#include "engine/tokenizer.h"

#define PD_RUN_CHUNK 512        /* prefill tokens per forward call */
#define PD_RUN_MAX_PROMPT_BYTES (1u << 24)

typedef struct {
    const char *model_path;
    const char *prompt;
    uint32_t n_predict;
    pd_sampling_t sp;
    bool ignore_eos;
    bool print_tokens;
    bool bench;
    bool json;
    bool fast_prefill;          /* batch invariance off: sgemm for prefill */
    bool invariant_quant;       /* batch invariance for quantized weights too */
    int threads;
    uint32_t bench_ctx; /* --bench: decode prompts of this many tokens */
    uint32_t dump_top;
    pd_kv_dtype_t kv_dtype;     /* --kv-dtype */
    uint32_t ctx;       /* --ctx: positions the engine is sized for (0: prompt + n) */
} run_opts_t;

typedef struct {
    pd_model_t *model;
    pd_tok_t *tok;
    pd_kv_t *kv;
    pd_engine_t *eng;
    float *logits;             /* (max_batch_tokens, vocab) */
    pd_sampler_scratch_t *scratch;
} runner_t;

static void runner_free(runner_t *r)
{
    pd_engine_free(r->eng);
    pd_kv_free(r->kv);
    pd_tok_free(r->tok);
    pd_model_free(r->model);
    pd_sampler_scratch_free(r->scratch);
    free(r->logits);
}

/* Loads model and tokenizer, and sizes the cache for n_seqs sequences of
 * up to max_ctx positions. */
static int runner_init(runner_t *r, const char *path, uint32_t n_seqs, uint32_t max_ctx,
                       uint32_t max_batch, int threads, bool invariant, bool invariant_quant,
                       pd_kv_dtype_t kv_dtype,
                       pd_err_t *err)
{
    memset(r, 0, sizeof *r);
    r->model = pd_model_load_weights(path, true, err);
    if (r->model == NULL)
        return PD_EINVAL;
    r->tok = pd_tok_load(r->model->gguf, err);
    if (r->tok == NULL)
        return PD_EINVAL;
    const pd_model_config_t *c = &r->model->cfg;
    if (pd_tok_n_vocab(r->tok) > c->vocab_size)
        return pd_err_set(err, PD_EFORMAT, "%s: tokenizer has %u tokens, model only %u", path,
                          pd_tok_n_vocab(r->tok), c->vocab_size);
    if (max_ctx > c->ctx_len)
        max_ctx = c->ctx_len;
    pd_kv_shape_t ks = { c->n_layers, c->n_kv_heads, c->head_dim, 16, 0, kv_dtype };
    ks.n_blocks = n_seqs * ((max_ctx + ks.block_size - 1) / ks.block_size);
    r->kv = pd_kv_new(&ks, err);
    if (r->kv == NULL)
        return PD_ENOMEM;
    pd_engine_opts_t eo;
    pd_engine_opts_default(&eo);
    eo.max_batch_tokens = max_batch;
    eo.max_ctx = max_ctx;
    eo.n_threads = threads;
    eo.batch_invariant = invariant;
    eo.batch_invariant_quant = invariant_quant;
    r->eng = pd_engine_new(r->model, r->kv, &eo, err);
    if (r->eng == NULL)
        return PD_ENOMEM;
    r->logits = malloc(sizeof(float) * (size_t)max_batch * c->vocab_size);
    r->scratch = pd_sampler_scratch_new(c->vocab_size);
    if (r->logits == NULL || r->scratch == NULL)
        return pd_err_set(err, PD_ENOMEM, "out of memory for logits");
    return 0;
}

/* ====== Generation ====== */

static void dump_top(const float *logits, uint32_t n_vocab, uint32_t k, const char *kind,
                     uint32_t pos)
{
    /* softmax into probabilities, then the k largest (ties: lower id). */
    float mx = -INFINITY;
    for (uint32_t i = 0; i < n_vocab; i++)
        mx = logits[i] > mx ? logits[i] : mx;
    double sum = 0;
    for (uint32_t i = 0; i < n_vocab; i++)
        sum += exp((double)logits[i] - mx);
    printf("{\"kind\":\"%s\",\"pos\":%u,\"top\":[", kind, pos);
    int32_t prev_id = -1;
    float prev = INFINITY;
    for (uint32_t j = 0; j < k && j < n_vocab; j++) {
        int32_t best = -1;
        for (uint32_t i = 0; i < n_vocab; i++) {
            float v = logits[i];
            bool below = v < prev || (v == prev && (int32_t)i > prev_id);
            if (below && (best < 0 || v > logits[best]))
                best = (int32_t)i;
        }
        if (best < 0)
            break;
        printf("%s[%d,%.7f]", j ? "," : "", best, exp((double)logits[best] - mx) / sum);
        prev = logits[best];
        prev_id = best;
    }
    printf("]}\n");
}

/* Runs tokens [0, n) of one sequence through the model in chunks; the
 * logits of the last token end up in r->logits (and every row is dumped
 * when dump_k > 0). */
static int prefill(runner_t *r, pd_kv_seq_t *seq, const int32_t *tokens, uint32_t n,
                   uint32_t dump_k, pd_err_t *err)
{
    const uint32_t V = r->model->cfg.vocab_size;
    int32_t pos[PD_RUN_CHUNK], sq[PD_RUN_CHUNK];
    bool want[PD_RUN_CHUNK];
    if (pd_kv_seq_reserve(r->kv, seq, n) != 0)
        return pd_err_set(err, PD_EFULL, "KV cache too small for %u tokens", n);
    for (uint32_t start = 0; start < n; start += PD_RUN_CHUNK) {
        uint32_t m = n - start < PD_RUN_CHUNK ? n - start : PD_RUN_CHUNK;
        for (uint32_t i = 0; i < m; i++) {
            pos[i] = (int32_t)(start + i);
            sq[i] = 0;
            want[i] = dump_k > 0 || start + i == n - 1;
        }
        const int32_t *tables[1] = { seq->blocks };
        uint32_t n_table[1] = { seq->n_blocks };
        pd_batch_t b = { m, tokens + start, pos, sq, want, 1, tables, n_table };
        if (pd_forward(r->eng, &b, r->logits, err) != 0)
            return PD_EINVAL;
        if (dump_k > 0) {
            for (uint32_t i = 0; i < m; i++)
                dump_top(r->logits + (size_t)i * V, V, dump_k, "prompt", start + i);
            if (start + m == n)
                memmove(r->logits, r->logits + (size_t)(m - 1) * V, sizeof(float) * V);
        }
    }
    return 0;
}

static int generate(runner_t *r, const run_opts_t *o, pd_err_t *err)
{
    const pd_model_config_t *c = &r->model->cfg;
    size_t len = strlen(o->prompt);
    if (len == 0)
        return pd_err_set(err, PD_EINVAL, "empty prompt");
    size_t cap = len + 8, n_prompt = 0;
    int32_t *tokens = malloc(sizeof(int32_t) * (cap + o->n_predict));
    if (tokens == NULL)
        return pd_err_set(err, PD_ENOMEM, "out of memory");
    int rc = pd_tok_encode(r->tok, o->prompt, len, true, tokens, cap, &n_prompt, err);
    if (rc != 0)
        goto out;
    if (n_prompt == 0 || n_prompt + o->n_predict > c->ctx_len) {
        rc = pd_err_set(err, PD_ERANGE, "prompt of %zu tokens + %u to generate exceeds the "
                        "context length %u", n_prompt, o->n_predict, c->ctx_len);
        goto out;
    }
    if (o->dump_top > 0) {
        printf("{\"kind\":\"tokens\",\"ids\":[");
        for (size_t i = 0; i < n_prompt; i++)
            printf("%s%d", i ? "," : "", tokens[i]);
        printf("]}\n");
    }
    pd_kv_seq_t seq = { 0 };
    rc = prefill(r, &seq, tokens, (uint32_t)n_prompt, o->dump_top, err);
    pd_detok_t dt;
    pd_detok_init(&dt, false);
    size_t n = n_prompt;
    char text[256];
    for (uint32_t i = 0; rc == 0 && i < o->n_predict; i++) {
        if (i > 0) {
            /* decode one step for the token sampled last */
            if ((rc = pd_kv_seq_reserve(r->kv, &seq, (uint32_t)n)) != 0) {
                pd_err_set(err, rc, "KV cache full at position %zu", n);
                break;
            }
            int32_t pos = (int32_t)n - 1, sq = 0;
            bool want = true;
            const int32_t *tables[1] = { seq.blocks };
            uint32_t n_table[1] = { seq.n_blocks };
            pd_batch_t b = { 1, &tokens[n - 1], &pos, &sq, &want, 1, tables, n_table };
            if ((rc = pd_forward(r->eng, &b, r->logits, err)) != 0)
                break;
        }
        if (o->dump_top > 0)
            dump_top(r->logits, c->vocab_size, o->dump_top, "gen", (uint32_t)n);
        int32_t id = pd_sample(&o->sp, r->logits, c->vocab_size, n, tokens, n, r->scratch);
        tokens[n++] = id;
        if (!o->ignore_eos && pd_tok_is_eog(r->tok, id))
            break;
        if (o->print_tokens) {
            printf("%s%d", i ? " " : "", id);
        } else if (o->dump_top == 0) {
            int k = pd_detok_push(r->tok, &dt, id, text, sizeof text);
            if (k > 0)
                fwrite(text, 1, (size_t)k, stdout);
        }
        fflush(stdout);
    }
    if (rc == 0 && o->dump_top == 0) {
        if (o->print_tokens) {
            printf("\n");
        } else {
            int k = pd_detok_flush(&dt, text, sizeof text);
            if (k > 0)
                fwrite(text, 1, (size_t)k, stdout);
        }
    }
    pd_kv_seq_release(r->kv, &seq);
out:
    free(tokens);
    return rc;
}

/* ====== Benchmark ====== */

/* Decode tok/s for batch n_seqs: PROMPT-token prompts (--bench-ctx, 16 by
 * default), 48 new tokens each, counted after the first. */
static double bench_decode(runner_t *r, uint32_t n_seqs, uint32_t PROMPT, pd_err_t *err)
{
    enum { NEW = 48 };
    const uint32_t V = r->model->cfg.vocab_size;
    pd_kv_seq_t seqs[32];
    int32_t tok[32], pos[32], sq[32];
    bool want[32];
    const int32_t *tables[32];
    uint32_t n_table[32];
    memset(seqs, 0, sizeof seqs);
    int32_t prompt[512];
    double t_decode = 0;
    for (uint32_t s = 0; s < n_seqs; s++) {
        for (uint32_t i = 0; i < PROMPT; i++)
            prompt[i] = (int32_t)((s * 131u + (uint32_t)i * 7919u) % V);
        if (prefill(r, &seqs[s], prompt, PROMPT, 0, err) != 0)
            return -1;
        tok[s] = (int32_t)((s * 17u + 3u) % V);
    }
    for (uint32_t step = 0; step < NEW; step++) {
        for (uint32_t s = 0; s < n_seqs; s++) {
            if (pd_kv_seq_reserve(r->kv, &seqs[s], PROMPT + step + 1) != 0) {
                pd_err_set(err, PD_EFULL, "bench: KV cache full");
                return -1;
            }
            pos[s] = (int32_t)(PROMPT + step);
            sq[s] = (int32_t)s;
            want[s] = true;
            tables[s] = seqs[s].blocks;
            n_table[s] = seqs[s].n_blocks;
        }
        pd_batch_t b = { n_seqs, tok, pos, sq, want, n_seqs, tables, n_table };
        double t0 = pd_now_s();
        if (pd_forward(r->eng, &b, r->logits, err) != 0)
            return -1;
        /* the greedy pick a decode worker makes (pd_sample at temperature
         * 0): a scalar `l[i] > l[best]` loop here took 113 us a row, a
         * load-compare-select chain through `best`, 2 % of a batch-8 step */
        for (uint32_t s = 0; s < n_seqs; s++)
            tok[s] = pd_argmax(r->logits + (size_t)s * V, V);
        if (step > 0)
            t_decode += pd_now_s() - t0;
    }
    for (uint32_t s = 0; s < n_seqs; s++)
        pd_kv_seq_release(r->kv, &seqs[s]);
    return (double)n_seqs * (NEW - 1) / t_decode;
}

static int bench(runner_t *r, const run_opts_t *o, pd_err_t *err)
{
    const uint32_t V = r->model->cfg.vocab_size;
    enum { N_PREFILL = 512 };
    int32_t *prompt = malloc(sizeof(int32_t) * N_PREFILL);
    if (prompt == NULL)
        return pd_err_set(err, PD_ENOMEM, "out of memory");
    for (uint32_t i = 0; i < N_PREFILL; i++)
        prompt[i] = (int32_t)((i * 2654435761u) % V);
    pd_kv_seq_t seq = { 0 };
    /* warm-up, then the timed run */
    int rc = prefill(r, &seq, prompt, 64, 0, err);
    pd_kv_seq_release(r->kv, &seq);
    double best = 1e30;
    for (int rep = 0; rc == 0 && rep < 2; rep++) {
        double t0 = pd_now_s();
        rc = prefill(r, &seq, prompt, N_PREFILL, 0, err);
        double t = pd_now_s() - t0;
        best = t < best ? t : best;
        pd_kv_seq_release(r->kv, &seq);
    }
    free(prompt);
    if (rc != 0)
        return rc;
    double prefill_tps = N_PREFILL / best;
    uint32_t bctx = o->bench_ctx;
    double d1 = bench_decode(r, 1, bctx, err);
    double d8 = d1 > 0 ? bench_decode(r, 8, bctx, err) : -1;
    double d32 = d8 > 0 ? bench_decode(r, 32, bctx, err) : -1;
    if (d32 < 0)
        return PD_EINVAL;
    if (o->json)
        printf("{\"model\":\"%s\",\"weight_bytes\":%" PRIu64 ",\"n_params\":%" PRIu64
               ",\"head_params\":%" PRIu64 ",\"prefill_tokens\":%d,\"prefill_tok_s\":%.2f,\"decode_b1_tok_s\":%.2f,\"decode_b8_tok_s\":%.2f,"
               "\"decode_b32_tok_s\":%.2f,\"decode_ctx\":%u,\"threads\":%d,\"batch_invariant\":%s,"
               "\"kernels\":\"%s\",\"kv_dtype\":\"%s\"}\n",
               r->model->name, r->model->weight_bytes, r->model->n_params,
               (uint64_t)r->model->output.n_in * r->model->output.n_out, N_PREFILL, prefill_tps,
               d1, d8, d32, bctx, o->threads, o->fast_prefill ? "false" : "true", pd_kern_isa_name(),
               pd_kv_dtype_name(o->kv_dtype));
    else
        printf("model %s (%.1f M params, %.1f MB weights), %d threads, %s kernels, %s KV\n"
               "prefill (512-token prompt): %8.1f tok/s\n"
               "decode batch 1:             %8.1f tok/s  (context %u..%u)\n"
               "decode batch 8:             %8.1f tok/s\n"
               "decode batch 32:            %8.1f tok/s\n",
               r->model->name, r->model->n_params / 1e6, r->model->weight_bytes / 1e6, o->threads,
               pd_kern_isa_name(), pd_kv_dtype_name(o->kv_dtype), prefill_tps, d1, bctx, bctx + 48, d8, d32);
    return 0;
}

/* ====== Command line ====== */

static void usage(void)
{
    fprintf(stderr,
            "usage: pd-run -m FILE -p PROMPT [-n N] [--temp T] [--top-k K] [--top-p P]\n"
            "              [--min-p M] [--repeat-penalty R] [--presence-penalty P]\n"
            "              [--frequency-penalty F] [--seed S] [--ignore-eos] [--threads T]\n"
            "              [--tokens] [--dump-top K] [--ctx N] [--no-batch-invariant]\n"
            "              [--batch-invariant-quant] [--kv-dtype f32|f16]\n"
            "       pd-run -m FILE --bench [--json] [--threads T] [--bench-ctx N]\n"
            "              [--kv-dtype f32|f16]\n");
}

static int parse_num(const char *flag, const char *v, double lo, double hi, double *out)
{
    return pd_arg_double("pd-run", flag, v, lo, hi, out);
}

static int parse_args(int argc, char **argv, run_opts_t *o)
{
    o->n_predict = 64;
    o->threads = 1;
    o->bench_ctx = 16;
    pd_sampling_default(&o->sp);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--ignore-eos") == 0) { o->ignore_eos = true; continue; }
        if (strcmp(a, "--bench") == 0) { o->bench = true; continue; }
        if (strcmp(a, "--json") == 0) { o->json = true; continue; }
        if (strcmp(a, "--tokens") == 0) { o->print_tokens = true; continue; }
        if (strcmp(a, "--no-batch-invariant") == 0) { o->fast_prefill = true; continue; }
        if (strcmp(a, "--batch-invariant-quant") == 0) { o->invariant_quant = true; continue; }
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) { usage(); exit(0); }
        if (i + 1 >= argc) {
            fprintf(stderr, "pd-run: unknown option or missing value: '%s'\n", a);
            return -1;
        }
        const char *v = argv[++i];
        double x = 0;
        int rc = 0;
        if (strcmp(a, "-m") == 0) o->model_path = v;
        else if (strcmp(a, "-p") == 0) o->prompt = v;
        else if (strcmp(a, "-n") == 0) { rc = parse_num(a, v, 0, 1 << 20, &x); o->n_predict = (uint32_t)x; }
        else if (strcmp(a, "--temp") == 0) { rc = parse_num(a, v, 0, 100, &x); o->sp.temperature = (float)x; }
        else if (strcmp(a, "--top-k") == 0) { rc = parse_num(a, v, 0, 1 << 24, &x); o->sp.top_k = (int32_t)x; }
        else if (strcmp(a, "--top-p") == 0) { rc = parse_num(a, v, 0, 1, &x); o->sp.top_p = (float)x; }
        else if (strcmp(a, "--min-p") == 0) { rc = parse_num(a, v, 0, 1, &x); o->sp.min_p = (float)x; }
        else if (strcmp(a, "--repeat-penalty") == 0) { rc = parse_num(a, v, 0, 10, &x); o->sp.repetition_penalty = (float)x; }
        else if (strcmp(a, "--presence-penalty") == 0) { rc = parse_num(a, v, -2, 2, &x); o->sp.presence_penalty = (float)x; }
        else if (strcmp(a, "--frequency-penalty") == 0) { rc = parse_num(a, v, -2, 2, &x); o->sp.frequency_penalty = (float)x; }
        else if (strcmp(a, "--seed") == 0) { uint64_t seed = 0; rc = pd_arg_u64("pd-run", a, v, &seed); o->sp.seed = seed; }
        else if (strcmp(a, "--threads") == 0) { rc = parse_num(a, v, 1, 256, &x); o->threads = (int)x; }
        else if (strcmp(a, "--bench-ctx") == 0) { rc = parse_num(a, v, 1, 512 - 48, &x); o->bench_ctx = (uint32_t)x; }
        else if (strcmp(a, "--dump-top") == 0) { rc = parse_num(a, v, 1, 100, &x); o->dump_top = (uint32_t)x; }
        else if (strcmp(a, "--kv-dtype") == 0) {
            rc = pd_kv_dtype_parse(v, &o->kv_dtype);
            if (rc != 0)
                fprintf(stderr, "pd-run: --kv-dtype: expected f32 or f16, got '%s'\n", v);
        }
        else if (strcmp(a, "--ctx") == 0) { rc = parse_num(a, v, 1, 1 << 24, &x); o->ctx = (uint32_t)x; }
        else {
            fprintf(stderr, "pd-run: unknown option '%s'\n", a);
            return -1;
        }
        if (rc != 0)
            return -1;
    }
    if (o->model_path == NULL || (!o->bench && o->prompt == NULL)) {
        fprintf(stderr, "pd-run: -m FILE and -p PROMPT (or --bench) are required\n");
        return -1;
    }
    if (o->prompt && strlen(o->prompt) > PD_RUN_MAX_PROMPT_BYTES) {
        fprintf(stderr, "pd-run: -p: the prompt is over %u bytes\n", PD_RUN_MAX_PROMPT_BYTES);
        return -1;
    }
    pd_err_t err = { 0 };
    if (pd_sampling_validate(&o->sp, &err) != 0) {
        fprintf(stderr, "pd-run: %s\n", err.msg);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    pd_log_init("pd-run", PD_LOG_WARN);
    run_opts_t o = { 0 };
    if (parse_args(argc, argv, &o) != 0) {
        usage();
        return 2;
    }
    pd_err_t err = { 0 };
    runner_t r;
    uint32_t n_seqs = o.bench ? 32 : 1, ctx = 512;
    if (!o.bench) {
        /* the context is the model's; size the cache for prompt + n
         * (parse_args bounds both, so this is in 8..2^24 + 2^20 + 8) */
        ctx = (uint32_t)(strlen(o.prompt) + 8 + o.n_predict);
    }
    if (o.ctx != 0) /* as llama.cpp's n_ctx (phi3's rope factors depend on it) */
        ctx = o.ctx;
    int rc = runner_init(&r, o.model_path, n_seqs, ctx, PD_RUN_CHUNK, o.threads,
                         !o.fast_prefill, o.invariant_quant, o.kv_dtype, &err);
    if (rc == 0)
        rc = o.bench ? bench(&r, &o, &err) : generate(&r, &o, &err);
    runner_free(&r);
    if (rc != 0) {
        fflush(stdout);
        fprintf(stderr, "pd-run: error: %s\n", err.msg[0] ? err.msg : pd_err_name(rc));
        return 1;
    }
    return 0;
}
