/* pd-mkmodel -- writes a GGUF model with deterministic random weights.
 *
 *   pd-mkmodel -o FILE [--shape tiny|llama-110M|tinyllama-1.1B|qwen2-tiny|qwen2-small]
 *              [--arch llama|qwen2] [--dim N] [--layers N] [--heads N] [--kv-heads N]
 *              [--ffn N] [--vocab N] [--ctx N] [--type TYPE | --mix MIX]
 *              [--vocab-kind spm|bpe] [--pre gpt-2|llama-bpe|qwen2] [--ranks FILE]
 *              [--rope-base F] [--rope-scale F] [--tied] [--seed N] [--logit-std F]
 *
 * --type: every 2-D weight in one type (f32 f16 bf16 q8_0 q4_0 q2_k q3_k q4_k
 * q5_k q6_k iq4_nl), as llama-quantize --pure does; norms and biases stay
 * F32. A K-quant tensor whose rows are not a multiple of 256 falls back as
 * llama.cpp's does (to q4_0 / q8_0, or an error when llama.cpp would pick a
 * type pdserve does not read). --type q4_k_m (and q4_k_s q5_k_m q5_k_s
 * q3_k_s q3_k_m q3_k_l) or --mix MIX (those, q2_k, q6_k, iq4_nl): the
 * per-tensor types llama-quantize chooses for that file type without an
 * importance matrix (common/quant_mix.c).
 *
 * The weights are drawn from a counter-based generator keyed on (seed,
 * tensor, element), so a file is a pure function of its flags. The output
 * projection is scaled so that next-token distributions are peaked (top-1
 * probability usually above 0.5): greedy comparisons against llama.cpp
 * then mean something. The tokenizer section is a real one (see vocab.h):
 * a SentencePiece-style or a byte-level BPE vocabulary built from GPT-2's
 * ranks, so llama.cpp loads the file like any other.
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/args.h"
#include "base/err.h"
#include "engine/gguf.h"
#include "engine/kernels.h"
#include "engine/pool.h"
#include "engine/quant_mix.h"
#include "engine/quants_k.h"
#include "engine/vocab.h"

typedef struct {
    const char *name;
    const char *arch;
    uint32_t dim, layers, heads, kv_heads, ffn, vocab, ctx;
    const char *vocab_kind;
    const char *pre;
} shape_t;

static const shape_t SHAPES[] = {
    { "tiny", "llama", 128, 4, 4, 2, 384, 4000, 2048, "spm", NULL },
    { "llama-110M", "llama", 768, 12, 12, 12, 2048, 32000, 2048, "spm", NULL },
    { "tinyllama-1.1B", "llama", 2048, 22, 32, 4, 5632, 32000, 2048, "spm", NULL },
    { "qwen2-tiny", "qwen2", 128, 3, 4, 2, 320, 4000, 2048, "bpe", "qwen2" },
    { "qwen2-small", "qwen2", 512, 8, 8, 2, 1408, 50257, 4096, "bpe", "qwen2" },
    /* rows that are multiples of 256, for the K-quants (dim 256, ffn 512) */
    { "tiny-k", "llama", 256, 4, 4, 2, 512, 4000, 2048, "spm", NULL },
};

typedef struct {
    const char *out;
    shape_t s;
    const char *type;         /* the --type or --mix name, for general.name */
    pd_quant_mix_t mix;       /* PD_MIX_PURE: every weight in pure */
    pd_ggml_type_t pure;
    const char *ranks;
    float rope_base, rope_scale, logit_std, qk_gain, res_scale;
    bool tied;
    uint64_t seed;
} opts_t;

/* ====== Deterministic weights ====== */

static uint64_t mix64(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Standard normal draw number i of stream key (Box-Muller). */
static float gauss(uint64_t key, uint64_t i)
{
    uint64_t r = mix64(key ^ mix64(i));
    double u1 = ((r >> 11) + 1.0) * (1.0 / 9007199254740993.0);
    double u2 = (double)(mix64(r) >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

typedef struct {
    uint64_t key;     /* stream key: seed and tensor index */
    pd_ggml_type_t type;
    uint64_t n_in, n_rows;
    float std, mean;
    pd_pool_t *pool;  /* rows are made in parallel (each is a pure function of
                         its index, so the file does not depend on threads) */
} fill_t;

/* Row r of f: its draws, converted or quantized into d. */
static void fill_row(const fill_t *f, uint64_t r, float *row, uint8_t *d)
{
    for (uint64_t i = 0; i < f->n_in; i++)
        row[i] = f->mean + f->std * gauss(f->key, r * f->n_in + i);
    switch (f->type) {
    case PD_GGML_TYPE_F32: memcpy(d, row, sizeof(float) * f->n_in); break;
    case PD_GGML_TYPE_F16:
        for (uint64_t i = 0; i < f->n_in; i++) {
            uint16_t h = pd_fp32_to_fp16(row[i]);
            memcpy(d + 2 * i, &h, 2);
        }
        break;
    case PD_GGML_TYPE_BF16:
        for (uint64_t i = 0; i < f->n_in; i++) {
            uint16_t h = pd_fp32_to_bf16(row[i]);
            memcpy(d + 2 * i, &h, 2);
        }
        break;
    case PD_GGML_TYPE_Q8_0: pd_quant_row_q8_0(row, d, (uint32_t)f->n_in); break;
    case PD_GGML_TYPE_Q4_0: pd_quant_row_q4_0(row, d, (uint32_t)f->n_in); break;
    case PD_GGML_TYPE_Q2_K: case PD_GGML_TYPE_Q3_K: case PD_GGML_TYPE_Q4_K:
    case PD_GGML_TYPE_Q5_K: case PD_GGML_TYPE_Q6_K: case PD_GGML_TYPE_IQ4_NL:
        pd_quant_row_k(f->type, row, d, (uint32_t)f->n_in);
        break;
    case PD_GGML_TYPE_Q8_K: break; /* not a weight type: refused by pd-mkmodel's type choice */
    }
}

typedef struct {
    const fill_t *f;
    uint8_t *dst;
    uint64_t row_bytes;
    int failed;        /* a task could not allocate its row buffer */
} fill_job_t;

static void fill_task(void *arg, int i_task, int n_tasks)
{
    fill_job_t *j = arg;
    const uint64_t n = j->f->n_rows, r0 = n * (uint64_t)i_task / (uint64_t)n_tasks;
    const uint64_t r1 = n * (uint64_t)(i_task + 1) / (uint64_t)n_tasks;
    float *row = malloc(sizeof(float) * j->f->n_in);
    if (row == NULL) {
        __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    for (uint64_t r = r0; r < r1; r++)
        fill_row(j->f, r, row, j->dst + r * j->row_bytes);
    free(row);
}

static int fill_tensor(void *arg, void *dst, uint64_t n_bytes)
{
    fill_t *f = arg;
    uint64_t row_bytes = pd_ggml_row_bytes(f->type, f->n_in);
    if (f->type == PD_GGML_TYPE_Q8_K || row_bytes * f->n_rows != n_bytes)
        return PD_EINVAL;
    fill_job_t j = {f, dst, row_bytes, 0};
    const int n_tasks = f->n_rows < 64 ? 1 : 4 * pd_pool_n_threads(f->pool);
    pd_pool_run(n_tasks > 1 ? f->pool : NULL, fill_task, &j, n_tasks);
    return j.failed ? PD_ENOMEM : 0;
}

typedef struct {
    pd_gguf_writer_t *w;
    fill_t fills[1024];
    int n_fills;
    uint64_t seed;
    pd_pool_t *pool;
} maker_t;

static int add_tensor(maker_t *mk, const char *name, pd_ggml_type_t type, uint64_t n_in,
                      uint64_t n_rows, float std, float mean)
{
    if (mk->n_fills >= (int)(sizeof mk->fills / sizeof mk->fills[0]))
        return PD_ERANGE;
    fill_t *f = &mk->fills[mk->n_fills];
    f->key = mix64(mk->seed * 1000003u + (uint64_t)mk->n_fills);
    f->type = type;
    f->n_in = n_in;
    f->n_rows = n_rows;
    f->std = std;
    f->mean = mean;
    f->pool = mk->pool;
    mk->n_fills++;
    uint64_t ne[2] = { n_in, n_rows };
    return pd_gguf_writer_add_tensor(mk->w, name, type, n_rows == 1 ? 1 : 2, ne, fill_tensor, f);
}

/* ====== Command line ====== */

#define TYPE_NAMES "f32 f16 bf16 q8_0 q4_0 q2_k q3_k q4_k q5_k q6_k iq4_nl"

static void usage(void)
{
    fprintf(stderr,
            "usage: pd-mkmodel -o FILE [--shape NAME] [--arch llama|qwen2] [--dim N] [--layers N]\n"
            "       [--heads N] [--kv-heads N] [--ffn N] [--vocab N] [--ctx N]\n"
            "       [--type TYPE | --mix MIX] [--vocab-kind spm|bpe]\n"
            "       [--pre gpt-2|llama-bpe|qwen2] [--ranks FILE] [--rope-base F]\n"
            "       [--rope-scale F] [--tied] [--seed N] [--logit-std F]\n"
            "shapes: tiny, llama-110M, tinyllama-1.1B, qwen2-tiny, qwen2-small, tiny-k\n"
            "--type: every weight in one type: " TYPE_NAMES ",\n"
            "        or a llama.cpp mix: q3_k_s q3_k_m q3_k_l q4_k_s q4_k_m q5_k_s q5_k_m\n"
            "--mix:  llama.cpp's per-tensor types for a file type: " PD_QUANT_MIX_NAMES "\n"
            "--ranks: GPT-2 ranks exported by tools/export-gpt2-ranks.mjs (default $PD_GPT2_RANKS)\n");
}

static int parse_type(const char *s, pd_ggml_type_t *t)
{
    static const struct { const char *n; pd_ggml_type_t t; } T[] = {
        { "f32", PD_GGML_TYPE_F32 }, { "f16", PD_GGML_TYPE_F16 }, { "bf16", PD_GGML_TYPE_BF16 },
        { "q8_0", PD_GGML_TYPE_Q8_0 }, { "q4_0", PD_GGML_TYPE_Q4_0 },
        { "q2_k", PD_GGML_TYPE_Q2_K }, { "q3_k", PD_GGML_TYPE_Q3_K }, { "q4_k", PD_GGML_TYPE_Q4_K },
        { "q5_k", PD_GGML_TYPE_Q5_K }, { "q6_k", PD_GGML_TYPE_Q6_K },
        { "iq4_nl", PD_GGML_TYPE_IQ4_NL },
    };
    for (size_t i = 0; i < sizeof T / sizeof T[0]; i++)
        if (strcmp(s, T[i].n) == 0) {
            *t = T[i].t;
            return 0;
        }
    return -1;
}

static int parse_u32(const char *flag, const char *v, uint32_t *out)
{
    return pd_arg_u32("pd-mkmodel", flag, v, 1, 1u << 24, out);
}

/* A positive float flag (rope base and scale, logit std, gains). */
static int parse_pos(const char *flag, const char *v, float *out)
{
    double d;
    if (pd_arg_double("pd-mkmodel", flag, v, 1e-30, 1e30, &d) != 0)
        return -1;
    *out = (float)d;
    return 0;
}

static int parse_args(int argc, char **argv, opts_t *o)
{
    o->s = SHAPES[0];
    o->type = "f32";
    o->ranks = getenv("PD_GPT2_RANKS");
    o->rope_base = 10000.0f;
    o->rope_scale = 1.0f;
    o->logit_std = 7.0f;
    o->qk_gain = 1.0f;
    o->res_scale = 0.5f;
    o->seed = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--tied") == 0) {
            o->tied = true;
            continue;
        }
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage();
            exit(0);
        }
        if (v == NULL) {
            fprintf(stderr, "pd-mkmodel: %s needs a value (or is unknown)\n", a);
            return -1;
        }
        i++;
        int rc = 0;
        if (strcmp(a, "-o") == 0) o->out = v;
        else if (strcmp(a, "--shape") == 0) {
            size_t k;
            for (k = 0; k < sizeof SHAPES / sizeof SHAPES[0]; k++)
                if (strcmp(SHAPES[k].name, v) == 0)
                    break;
            if (k == sizeof SHAPES / sizeof SHAPES[0]) {
                fprintf(stderr, "pd-mkmodel: unknown shape '%s'\n", v);
                return -1;
            }
            o->s = SHAPES[k];
        } else if (strcmp(a, "--arch") == 0) {
            if (strcmp(v, "llama") != 0 && strcmp(v, "qwen2") != 0) {
                fprintf(stderr, "pd-mkmodel: --arch: expected llama or qwen2, got '%s'\n", v);
                return -1;
            }
            o->s.arch = v;
        } else if (strcmp(a, "--dim") == 0) rc = parse_u32(a, v, &o->s.dim);
        else if (strcmp(a, "--layers") == 0) rc = parse_u32(a, v, &o->s.layers);
        else if (strcmp(a, "--heads") == 0) rc = parse_u32(a, v, &o->s.heads);
        else if (strcmp(a, "--kv-heads") == 0) rc = parse_u32(a, v, &o->s.kv_heads);
        else if (strcmp(a, "--ffn") == 0) rc = parse_u32(a, v, &o->s.ffn);
        else if (strcmp(a, "--vocab") == 0) rc = parse_u32(a, v, &o->s.vocab);
        else if (strcmp(a, "--ctx") == 0) rc = parse_u32(a, v, &o->s.ctx);
        else if (strcmp(a, "--type") == 0) o->type = v;
        else if (strcmp(a, "--mix") == 0) {
            o->type = v;
            if (pd_quant_mix_parse(v, &o->mix) != 0) {
                fprintf(stderr, "pd-mkmodel: --mix: expected one of %s, got '%s'\n",
                        PD_QUANT_MIX_NAMES, v);
                return -1;
            }
        }
        else if (strcmp(a, "--vocab-kind") == 0) o->s.vocab_kind = v;
        else if (strcmp(a, "--pre") == 0) o->s.pre = v;
        else if (strcmp(a, "--ranks") == 0) o->ranks = v;
        else if (strcmp(a, "--rope-base") == 0) rc = parse_pos(a, v, &o->rope_base);
        else if (strcmp(a, "--rope-scale") == 0) rc = parse_pos(a, v, &o->rope_scale);
        else if (strcmp(a, "--logit-std") == 0) rc = parse_pos(a, v, &o->logit_std);
        else if (strcmp(a, "--qk-gain") == 0) rc = parse_pos(a, v, &o->qk_gain);
        else if (strcmp(a, "--res-scale") == 0) rc = parse_pos(a, v, &o->res_scale);
        else if (strcmp(a, "--seed") == 0) rc = pd_arg_u64("pd-mkmodel", a, v, &o->seed);
        else {
            fprintf(stderr, "pd-mkmodel: unknown option '%s'\n", a);
            return -1;
        }
        if (rc != 0)
            return -1;
    }
    if (o->out == NULL) {
        fprintf(stderr, "pd-mkmodel: -o FILE is required\n");
        return -1;
    }
    if (o->s.dim % o->s.heads != 0 || o->s.heads % o->s.kv_heads != 0 ||
        (o->s.dim / o->s.heads) % 2 != 0) {
        fprintf(stderr, "pd-mkmodel: dim %u must divide by heads %u into an even head size, "
                "and heads by kv-heads %u\n", o->s.dim, o->s.heads, o->s.kv_heads);
        return -1;
    }
    if (!(o->rope_base > 0) || !(o->rope_scale > 0) || !(o->logit_std > 0)) {
        fprintf(stderr, "pd-mkmodel: --rope-base, --rope-scale and --logit-std must be > 0\n");
        return -1;
    }
    if (strcmp(o->s.vocab_kind, "spm") != 0 && strcmp(o->s.vocab_kind, "bpe") != 0) {
        fprintf(stderr, "pd-mkmodel: --vocab-kind: expected spm or bpe, got '%s'\n",
                o->s.vocab_kind);
        return -1;
    }
    /* --type: a tensor type, or a mix with a suffix (q4_k_m); the mixes
     * without one (q2_k, q6_k, iq4_nl) share their name with a type, which
     * --type means: they are --mix only. */
    if (o->mix == PD_MIX_PURE && parse_type(o->type, &o->pure) != 0 &&
        (strlen(o->type) < 6 || pd_quant_mix_parse(o->type, &o->mix) != 0)) {
        fprintf(stderr, "pd-mkmodel: --type: expected one of %s, or a mix (q4_k_m...), got "
                "'%s'\n", TYPE_NAMES, o->type);
        return -1;
    }
    if (o->ranks == NULL) {
        fprintf(stderr, "pd-mkmodel: no GPT-2 ranks file: pass --ranks FILE or set "
                "PD_GPT2_RANKS (make one with: node tools/export-gpt2-ranks.mjs FILE)\n");
        return -1;
    }
    return 0;
}

/* ====== Metadata ====== */

static int add_hparams(pd_gguf_writer_t *w, const opts_t *o)
{
    const shape_t *s = &o->s;
    char key[128];
    int rc = 0;
#define KEY(suffix) (snprintf(key, sizeof key, "%s." suffix, s->arch), key)
    rc |= pd_gguf_writer_add_str(w, "general.architecture", s->arch);
    char name[160];
    snprintf(name, sizeof name, "pdserve-%s-%s-%s", s->name, s->vocab_kind, o->type);
    rc |= pd_gguf_writer_add_str(w, "general.name", name);
    rc |= pd_gguf_writer_add_u32(w, KEY("context_length"), s->ctx);
    rc |= pd_gguf_writer_add_u32(w, KEY("embedding_length"), s->dim);
    rc |= pd_gguf_writer_add_u32(w, KEY("block_count"), s->layers);
    rc |= pd_gguf_writer_add_u32(w, KEY("feed_forward_length"), s->ffn);
    rc |= pd_gguf_writer_add_u32(w, KEY("attention.head_count"), s->heads);
    rc |= pd_gguf_writer_add_u32(w, KEY("attention.head_count_kv"), s->kv_heads);
    rc |= pd_gguf_writer_add_f32(w, KEY("rope.freq_base"), o->rope_base);
    rc |= pd_gguf_writer_add_u32(w, KEY("rope.dimension_count"), s->dim / s->heads);
    rc |= pd_gguf_writer_add_f32(w, KEY("attention.layer_norm_rms_epsilon"), 1e-5f);
    if (o->rope_scale != 1.0f) {
        rc |= pd_gguf_writer_add_str(w, KEY("rope.scaling.type"), "linear");
        rc |= pd_gguf_writer_add_f32(w, KEY("rope.scaling.factor"), o->rope_scale);
    }
#undef KEY
    return rc ? PD_EINVAL : 0;
}

static int add_vocab(pd_gguf_writer_t *w, const opts_t *o, pd_vocab_t *v, pd_err_t *err)
{
    pd_vocab_kind_t kind = strcmp(o->s.vocab_kind, "spm") == 0 ? PD_VOCAB_SPM : PD_VOCAB_BPE;
    if (pd_vocab_build(o->ranks, kind, o->s.vocab, v, err) != 0)
        return PD_EINVAL;
    const char *pre = kind == PD_VOCAB_SPM ? "" : (o->s.pre ? o->s.pre : "gpt-2");
    return pd_vocab_write_gguf(v, pre, w, err);
}

/* ====== Tensors ====== */

/* The type of weight `name` (n_in elements per row) in this file. */
static int weight_type(const opts_t *o, const char *name, uint64_t n_in, pd_ggml_type_t *t)
{
    const pd_quant_mix_model_t m = {o->s.layers, o->s.heads, o->s.kv_heads, o->tied};
    pd_err_t err = {0};
    if (pd_quant_mix_type(o->mix, o->pure, &m, name, n_in, t, &err) != 0) {
        fprintf(stderr, "pd-mkmodel: --type %s: %s\n", o->type, err.msg);
        return PD_EUNSUPPORTED;
    }
    return 0;
}

/* A 2-D weight in the type the file's --type / --mix gives it. */
static int add_weight(maker_t *mk, const opts_t *o, const char *name, uint64_t n_in,
                      uint64_t n_rows, float std)
{
    pd_ggml_type_t t;
    int rc = weight_type(o, name, n_in, &t);
    return rc ? rc : add_tensor(mk, name, t, n_in, n_rows, std, 0.0f);
}

static int add_weights(maker_t *mk, const opts_t *o, uint32_t vocab)
{
    const shape_t *s = &o->s;
    uint32_t hd = s->dim / s->heads, q_dim = s->heads * hd, kv_dim = s->kv_heads * hd;
    float in_std = 1.0f / sqrtf((float)s->dim), ffn_std = 1.0f / sqrtf((float)s->ffn);
    bool qwen = strcmp(s->arch, "qwen2") == 0;
    /* GPT-2-style residual scaling: each sublayer adds a small update to the
     * residual stream, as in trained models, so that a rounding difference
     * is not amplified layer after layer (a chaotic random model would make
     * every comparison with llama.cpp a coin toss after the first flip). */
    float res_scale = o->res_scale / sqrtf(2.0f * (float)s->layers);
    int rc = 0;
    /* Embeddings are quantized too, as llama.cpp's quantizer does. */
    rc |= add_weight(mk, o, "token_embd.weight", s->dim, vocab, 1.0f);
    for (uint32_t l = 0; l < s->layers && rc == 0; l++) {
        char n[96];
#define T(fmt, type, n_in, n_rows, std, mean) \
    (snprintf(n, sizeof n, "blk.%u." fmt, l), add_tensor(mk, n, type, n_in, n_rows, std, mean))
#define W(fmt, n_in, n_rows, std) \
    (snprintf(n, sizeof n, "blk.%u." fmt, l), add_weight(mk, o, n, n_in, n_rows, std))
        rc |= T("attn_norm.weight", PD_GGML_TYPE_F32, s->dim, 1, 0.1f, 1.0f);
        rc |= W("attn_q.weight", s->dim, q_dim, o->qk_gain * in_std);
        rc |= W("attn_k.weight", s->dim, kv_dim, o->qk_gain * in_std);
        rc |= W("attn_v.weight", s->dim, kv_dim, in_std);
        if (qwen) {
            rc |= T("attn_q.bias", PD_GGML_TYPE_F32, q_dim, 1, 0.1f, 0.0f);
            rc |= T("attn_k.bias", PD_GGML_TYPE_F32, kv_dim, 1, 0.1f, 0.0f);
            rc |= T("attn_v.bias", PD_GGML_TYPE_F32, kv_dim, 1, 0.1f, 0.0f);
        }
        rc |= W("attn_output.weight", q_dim, s->dim, res_scale / sqrtf((float)q_dim));
        rc |= T("ffn_norm.weight", PD_GGML_TYPE_F32, s->dim, 1, 0.1f, 1.0f);
        rc |= W("ffn_gate.weight", s->dim, s->ffn, o->qk_gain * in_std);
        rc |= W("ffn_up.weight", s->dim, s->ffn, in_std);
        rc |= W("ffn_down.weight", s->ffn, s->dim, res_scale * ffn_std);
#undef T
#undef W
    }
    rc |= add_tensor(mk, "output_norm.weight", PD_GGML_TYPE_F32, s->dim, 1, 0.1f, 1.0f);
    if (!o->tied)
        rc |= add_weight(mk, o, "output.weight", s->dim, vocab, o->logit_std * in_std);
    return rc ? PD_EINVAL : 0;
}

int main(int argc, char **argv)
{
    opts_t o = { 0 };
    if (parse_args(argc, argv, &o) != 0) {
        usage();
        return 2;
    }
    pd_err_t err = { 0 };
    static maker_t mk;
    mk.seed = o.seed;
    /* every core: quantizing a 1.1B model is minutes of make_qkx2 searches */
    long n_cpu = sysconf(_SC_NPROCESSORS_ONLN);
    mk.pool = pd_pool_new(n_cpu < 1 ? 1 : n_cpu > 16 ? 16 : (int)n_cpu);
    mk.w = pd_gguf_writer_new(3);
    pd_vocab_t v;
    memset(&v, 0, sizeof v);
    int rc = 1;
    if (mk.w == NULL) {
        fprintf(stderr, "pd-mkmodel: out of memory\n");
        return 1;
    }
    if (add_hparams(mk.w, &o) != 0 || add_vocab(mk.w, &o, &v, &err) != 0) {
        fprintf(stderr, "pd-mkmodel: %s\n", err.msg[0] ? err.msg : "metadata failed");
        goto out;
    }
    if (add_weights(&mk, &o, v.n_vocab) != 0) {
        fprintf(stderr, "pd-mkmodel: adding tensors failed\n");
        goto out;
    }
    if (pd_gguf_writer_write(mk.w, o.out, &err) != 0) {
        fprintf(stderr, "pd-mkmodel: %s\n", err.msg);
        goto out;
    }
    fprintf(stderr, "pd-mkmodel: wrote %s (%s %s, dim %u, %u layers, vocab %" PRIu64 ")\n", o.out,
            o.s.arch, o.type, o.s.dim, o.s.layers, (uint64_t)v.n_vocab);
    rc = 0;
out:
    pd_vocab_free(&v);
    pd_gguf_writer_free(mk.w);
    pd_pool_free(mk.pool);
    return rc;
}
