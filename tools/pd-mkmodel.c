/* pd-mkmodel -- writes a GGUF model with deterministic random weights.
 *
 *   pd-mkmodel -o FILE [--shape NAME] [--arch ARCH] [--dim N] [--layers N] [--heads N]
 *              [--kv-heads N] [--head-dim N] [--ffn N] [--vocab N] [--ctx N]
 *              [--type TYPE | --mix MIX] [--vocab-kind spm|bpe]
 *              [--pre gpt-2|llama-bpe|qwen2] [--ranks FILE] [--rope-base F]
 *              [--rope-scale F] [--tied] [--seed N] [--logit-std F]
 *              [--sliding-window N] [--rope-orig-ctx N] [--chat FAMILY]
 *
 * Architectures (--arch, or a --shape's): llama, qwen2, qwen3, gemma2,
 * gemma3, phi3, each with the tensors and keys llama.cpp's converter
 * writes for it (model.h lists what each changes). Per architecture:
 * llama shapes with a --rope-orig-ctx get Llama 3.1's rope_freqs (factor
 * --rope-scale, low 1, high 4, as convert_hf_to_gguf.py computes them:
 * then no linear scaling); qwen3 and gemma3 per-head Q/K norms; gemma2/3
 * post-norms, always tied, --sliding-window (gemma3's local layers with
 * rope base 10000, --rope-scale linear on the global ones); phi3 fused
 * attn_qkv and gate/up, LongRoPE long/short factors and attention factor
 * when --rope-orig-ctx is given, its (unused) sliding window. --chat adds
 * a family's special tokens and a tokenizer.chat_template (llama3, chatml,
 * gemma, phi3; the shapes of those architectures pick theirs).
 *
 * --type: every 2-D weight in one type (f32 f16 bf16 q8_0 q4_0 q2_k q3_k q4_k
 * q5_k q6_k iq4_nl), as llama-quantize --pure does; norms and biases stay
 * F32. A K-quant tensor whose rows are not a multiple of 256 falls back as
 * llama.cpp's does (to q4_0 / q8_0, or an error when llama.cpp would pick a
 * type pdserve does not read). --type q4_k_m (and q4_k_s q5_k_m q5_k_s
 * q3_k_s q3_k_m q3_k_l) or --mix MIX (those, q2_k, q6_k, iq4_nl): the
 * per-tensor types llama-quantize chooses for that file type without an
 * importance matrix (common/engine/quant_mix.c).
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
    uint32_t head_dim;      /* attention.key_length; 0: dim / heads */
    const char *chat;       /* chat family, or NULL */
    float rope_base;        /* 0: 10000 */
    float rope_scale;       /* 0: 1 (llama3 rope_freqs: its factor) */
    uint32_t rope_orig_ctx; /* llama: rope_freqs; phi3: LongRoPE; 0: none */
    uint32_t swa;           /* sliding window (gemma, phi3's unused one) */
    bool tied;
    float attn_softcap;     /* gemma2's attention logit cap; 0: 50, Gemma 2's */
} shape_t;

/* Rows are multiples of 256 in the shapes of the newer architectures, so
 * that every K-quant mix quantizes every weight as llama.cpp would. */
#define SHAPE(n_, a_, d_, l_, h_, kv_, f_, v_, c_, vk_, pre_)                                 \
    .name = n_, .arch = a_, .dim = d_, .layers = l_, .heads = h_, .kv_heads = kv_, .ffn = f_,   \
    .vocab = v_, .ctx = c_, .vocab_kind = vk_, .pre = pre_
static const shape_t SHAPES[] = {
    { SHAPE("tiny", "llama", 128, 4, 4, 2, 384, 4000, 2048, "spm", NULL) },
    { SHAPE("llama-110M", "llama", 768, 12, 12, 12, 2048, 32000, 2048, "spm", NULL) },
    { SHAPE("tinyllama-1.1B", "llama", 2048, 22, 32, 4, 5632, 32000, 2048, "spm", NULL) },
    { SHAPE("qwen2-tiny", "qwen2", 128, 3, 4, 2, 320, 4000, 2048, "bpe", "qwen2") },
    { SHAPE("qwen2-small", "qwen2", 512, 8, 8, 2, 1408, 50257, 4096, "bpe", "qwen2") },
    { SHAPE("tiny-k", "llama", 256, 4, 4, 2, 512, 4000, 2048, "spm", NULL) },
    /* Llama 3.2: llama-bpe, rope_freqs (factor 32), tied. The test shape's
     * original context is 32 (Llama 3.2's is 8192) so that the factors bend
     * the rope at the positions a test reaches, as 8192 does at long ones. */
    { SHAPE("llama3-tiny", "llama", 256, 4, 4, 2, 512, 4000, 131072, "bpe", "llama-bpe"),
      .chat = "llama3", .rope_base = 500000, .rope_scale = 32, .rope_orig_ctx = 32, .tied = true },
    { SHAPE("llama3.2-1B", "llama", 2048, 16, 32, 8, 8192, 50000, 131072, "bpe", "llama-bpe"),
      .chat = "llama3", .rope_base = 500000, .rope_scale = 32, .rope_orig_ctx = 8192, .tied = true },
    /* Qwen3: head size 128 from dim 256 / 4 heads, Q/K norms */
    { SHAPE("qwen3-tiny", "qwen3", 256, 4, 4, 2, 512, 4000, 40960, "bpe", "qwen2"),
      .head_dim = 128, .chat = "chatml", .rope_base = 1000000 },
    /* Gemma 2: window 16 on even layers, so the tests' sequences slide; a
     * score cap of 4 (Gemma 2's is 50) that bends this model's scores (~1) */
    { SHAPE("gemma2-tiny", "gemma2", 256, 4, 4, 2, 512, 4000, 8192, "spm", NULL),
      .head_dim = 128, .chat = "gemma", .swa = 16, .tied = true, .attn_softcap = 4 },
    /* Gemma 3 (4B-like): 5 local : 1 global, global rope 1e6 scaled 8 */
    { SHAPE("gemma3-tiny", "gemma3", 256, 6, 4, 2, 512, 4000, 131072, "spm", NULL),
      .head_dim = 128, .chat = "gemma", .rope_base = 1000000, .rope_scale = 8, .swa = 16,
      .tied = true },
    /* Phi-3.5-mini-like: fused tensors, LongRoPE from an original context
     * of 128 (so a context of 256 takes the long factors) */
    { SHAPE("phi3-tiny", "phi3", 256, 4, 4, 2, 512, 4000, 4096, "spm", NULL), .chat = "phi3",
      .rope_orig_ctx = 128, .swa = 2047 },
};
#undef SHAPE

/* A chat family's special tokens and template, appended to the test
 * vocabulary (bos/eos: which of them the file names; NULL keeps the
 * vocabulary's own). The templates are short Jinja texts in the family's
 * official form, which router/chat_template.c and llama.cpp recognise. */
typedef struct {
    const char *name;
    const char *specials[6];
    const char *bos, *eos;
    const char *tmpl;
} chat_spec_t;

static const chat_spec_t CHATS[] = {
    { "llama3", { "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                  "<|end_header_id|>", "<|eot_id|>" }, "<|begin_of_text|>", "<|eot_id|>",
      "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
      "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
      "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
      "{% endif %}" },
    { "chatml", { "<|im_start|>", "<|im_end|>" }, NULL, "<|im_end|>",
      "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + "
      "message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}"
      "{{ '<|im_start|>assistant\n' }}{% endif %}" },
    { "gemma", { "<start_of_turn>", "<end_of_turn>" }, NULL, NULL,
      "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'assistant' %}"
      "{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
      "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
      "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}" },
    { "phi3", { "<|endoftext|>", "<|assistant|>", "<|end|>", "<|user|>", "<|system|>" },
      NULL, "<|endoftext|>",
      "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + "
      "'<|end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}"
      "{% endif %}" },
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
    const chat_spec_t *chat;  /* NULL: no special tokens, no template */
} opts_t;

static bool is_arch(const opts_t *o, const char *a) { return strcmp(o->s.arch, a) == 0; }
static bool is_gemma(const opts_t *o) { return is_arch(o, "gemma2") || is_arch(o, "gemma3"); }
static uint32_t head_dim(const shape_t *s) { return s->head_dim ? s->head_dim : s->dim / s->heads; }

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
    const float *values; /* (n_in) F32 values to write as they are, or NULL */
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
        row[i] = f->values ? f->values[i] : f->mean + f->std * gauss(f->key, r * f->n_in + i);
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

#define MAX_FACTORS 4096 /* rope factors: head_dim / 2 */

typedef struct {
    pd_gguf_writer_t *w;
    fill_t fills[1024];
    int n_fills;
    uint64_t seed;
    pd_pool_t *pool;
    float factors[3][MAX_FACTORS]; /* rope_freqs; phi3's long and short */
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
    f->values = NULL;
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
            "usage: pd-mkmodel -o FILE [--shape NAME] [--arch ARCH] [--dim N] [--layers N]\n"
            "       [--heads N] [--kv-heads N] [--head-dim N] [--ffn N] [--vocab N] [--ctx N]\n"
            "       [--type TYPE | --mix MIX] [--vocab-kind spm|bpe]\n"
            "       [--pre gpt-2|llama-bpe|qwen2] [--ranks FILE] [--rope-base F]\n"
            "       [--rope-scale F] [--tied] [--seed N] [--logit-std F]\n"
            "       [--sliding-window N] [--rope-orig-ctx N] [--chat llama3|chatml|gemma|phi3]\n"
            "shapes: tiny, llama-110M, tinyllama-1.1B, qwen2-tiny, qwen2-small, tiny-k,\n"
            "        llama3-tiny, llama3.2-1B, qwen3-tiny, gemma2-tiny, gemma3-tiny, phi3-tiny\n"
            "archs:  llama, qwen2, qwen3, gemma2, gemma3, phi3\n"
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
    const char *chat = NULL;
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
            static const char *const archs[] = {"llama", "qwen2", "qwen3", "gemma2", "gemma3",
                                                "phi3"};
            size_t k = 0;
            while (k < sizeof archs / sizeof archs[0] && strcmp(archs[k], v) != 0)
                k++;
            if (k == sizeof archs / sizeof archs[0]) {
                fprintf(stderr, "pd-mkmodel: --arch: expected llama, qwen2, qwen3, gemma2, "
                        "gemma3 or phi3, got '%s'\n", v);
                return -1;
            }
            o->s.arch = archs[k];
        } else if (strcmp(a, "--chat") == 0) chat = v;
        else if (strcmp(a, "--head-dim") == 0) rc = parse_u32(a, v, &o->s.head_dim);
        else if (strcmp(a, "--sliding-window") == 0) rc = parse_u32(a, v, &o->s.swa);
        else if (strcmp(a, "--rope-orig-ctx") == 0) rc = parse_u32(a, v, &o->s.rope_orig_ctx);
        else if (strcmp(a, "--dim") == 0) rc = parse_u32(a, v, &o->s.dim);
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
        else if (strcmp(a, "--rope-base") == 0) rc = parse_pos(a, v, &o->s.rope_base);
        else if (strcmp(a, "--rope-scale") == 0) rc = parse_pos(a, v, &o->s.rope_scale);
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
    o->rope_base = o->s.rope_base > 0 ? o->s.rope_base : 10000.0f;
    o->rope_scale = o->s.rope_scale > 0 ? o->s.rope_scale : 1.0f;
    o->tied = o->tied || o->s.tied || is_arch(o, "gemma2"); /* gemma2 has no output.weight */
    if ((o->s.head_dim == 0 && o->s.dim % o->s.heads != 0) || o->s.heads % o->s.kv_heads != 0 ||
        head_dim(&o->s) % 2 != 0 || (is_arch(o, "phi3") && head_dim(&o->s) * o->s.heads != o->s.dim)) {
        fprintf(stderr, "pd-mkmodel: dim %u must divide by heads %u into an even head size "
                "(or --head-dim N, not for phi3), and heads by kv-heads %u\n", o->s.dim,
                o->s.heads, o->s.kv_heads);
        return -1;
    }
    if (!(o->logit_std > 0)) {
        fprintf(stderr, "pd-mkmodel: --logit-std must be > 0\n");
        return -1;
    }
    if (is_gemma(o) && o->s.swa == 0 && is_arch(o, "gemma2")) {
        fprintf(stderr, "pd-mkmodel: gemma2 needs --sliding-window N\n");
        return -1;
    }
    chat = chat ? chat : o->s.chat;
    for (size_t k = 0; chat && k < sizeof CHATS / sizeof CHATS[0]; k++)
        if (strcmp(CHATS[k].name, chat) == 0)
            o->chat = &CHATS[k];
    if (chat && o->chat == NULL) {
        fprintf(stderr, "pd-mkmodel: --chat: expected llama3, chatml, gemma or phi3, got '%s'\n",
                chat);
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
    rc |= pd_gguf_writer_add_u32(w, KEY("rope.dimension_count"), head_dim(s));
    rc |= pd_gguf_writer_add_f32(w, KEY("attention.layer_norm_rms_epsilon"), 1e-5f);
    if (s->head_dim != 0) {
        rc |= pd_gguf_writer_add_u32(w, KEY("attention.key_length"), s->head_dim);
        rc |= pd_gguf_writer_add_u32(w, KEY("attention.value_length"), s->head_dim);
    }
    /* llama with rope_freqs: the factor is in the tensor, no scaling keys */
    bool llama3_rope = is_arch(o, "llama") && s->rope_orig_ctx != 0;
    if (o->rope_scale != 1.0f && !llama3_rope) {
        rc |= pd_gguf_writer_add_str(w, KEY("rope.scaling.type"), "linear");
        rc |= pd_gguf_writer_add_f32(w, KEY("rope.scaling.factor"), o->rope_scale);
    }
    if (is_arch(o, "gemma2")) {
        rc |= pd_gguf_writer_add_u32(w, KEY("attention.sliding_window"), s->swa);
        rc |= pd_gguf_writer_add_f32(w, KEY("attn_logit_softcapping"),
                                     s->attn_softcap > 0 ? s->attn_softcap : 50.0f);
        rc |= pd_gguf_writer_add_f32(w, KEY("final_logit_softcapping"), 30.0f);
    }
    if (is_arch(o, "gemma3") && s->swa != 0) {
        rc |= pd_gguf_writer_add_u32(w, KEY("attention.sliding_window"), s->swa);
        rc |= pd_gguf_writer_add_f32(w, KEY("rope.freq_base_swa"), 10000.0f);
    }
    if (is_arch(o, "phi3")) {
        if (s->swa != 0)
            rc |= pd_gguf_writer_add_u32(w, KEY("attention.sliding_window"), s->swa);
        if (s->rope_orig_ctx != 0) {
            /* convert_hf_to_gguf.py's LongRoPE attention factor */
            double scale = (double)s->ctx / s->rope_orig_ctx;
            float af = scale > 1.0 ? (float)sqrt(1.0 + log(scale) / log(s->rope_orig_ctx)) : 1.0f;
            rc |= pd_gguf_writer_add_u32(w, KEY("rope.scaling.original_context_length"),
                                         s->rope_orig_ctx);
            rc |= pd_gguf_writer_add_f32(w, KEY("rope.scaling.attn_factor"), af);
        }
    }
#undef KEY
    return rc ? PD_EINVAL : 0;
}

static int add_vocab(pd_gguf_writer_t *w, const opts_t *o, pd_vocab_t *v, pd_err_t *err)
{
    pd_vocab_kind_t kind = strcmp(o->s.vocab_kind, "spm") == 0 ? PD_VOCAB_SPM : PD_VOCAB_BPE;
    if (pd_vocab_build(o->ranks, kind, o->s.vocab, v, err) != 0)
        return PD_EINVAL;
    v->no_space_prefix = is_gemma(o); /* as llama.cpp's converter writes Gemma's */
    const chat_spec_t *c = o->chat;
    if (c != NULL) {
        size_t n = 0;
        while (n < sizeof c->specials / sizeof c->specials[0] && c->specials[n])
            n++;
        if (pd_vocab_add_specials(v, c->specials, n, err) != 0)
            return PD_EINVAL;
        v->bos = c->bos ? pd_vocab_find(v, c->bos) : v->bos;
        v->eos = c->eos ? pd_vocab_find(v, c->eos) : v->eos;
        if (pd_gguf_writer_add_str(w, "tokenizer.chat_template", c->tmpl) != 0)
            return pd_err_set(err, PD_EINVAL, "could not add tokenizer.chat_template");
    }
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

/* A 1-D F32 tensor holding values[0..n) (rope factors). */
static int add_values(maker_t *mk, const char *name, const float *values, uint32_t n)
{
    int rc = add_tensor(mk, name, PD_GGML_TYPE_F32, n, 1, 0.0f, 0.0f);
    if (rc == 0)
        mk->fills[mk->n_fills - 1].values = values;
    return rc;
}

/* Llama 3.1's rope_freqs, as convert_hf_to_gguf.py computes them: factor
 * for wavelengths beyond orig_ctx / low (1), 1 below orig_ctx / high (4),
 * a smooth blend between. */
static void llama3_factors(const opts_t *o, float *out)
{
    const uint32_t hd = head_dim(&o->s);
    const double lo_wl = o->s.rope_orig_ctx / 1.0, hi_wl = o->s.rope_orig_ctx / 4.0;
    for (uint32_t i = 0; i < hd / 2; i++) {
        double freq = 1.0 / pow(o->rope_base, (double)(2 * i) / hd);
        double wl = 2.0 * 3.141592653589793 / freq;
        double smooth = (o->s.rope_orig_ctx / wl - 1.0) / (4.0 - 1.0);
        out[i] = wl < hi_wl   ? 1.0f
                 : wl > lo_wl ? o->rope_scale
                              : (float)(1.0 / ((1.0 - smooth) / o->rope_scale + smooth));
    }
}

/* Model-level tensors beside the layers: the rope factors. */
static int add_rope_factors(maker_t *mk, const opts_t *o)
{
    const uint32_t nf = head_dim(&o->s) / 2;
    if (o->s.rope_orig_ctx == 0 || nf > MAX_FACTORS)
        return o->s.rope_orig_ctx == 0 ? 0 : PD_ERANGE;
    if (is_arch(o, "llama")) {
        llama3_factors(o, mk->factors[0]);
        return add_values(mk, "rope_freqs.weight", mk->factors[0], nf);
    }
    if (!is_arch(o, "phi3"))
        return 0;
    /* LongRoPE factors in the ranges Phi-3.5's have: long 1..8, short 1..1.5 */
    for (uint32_t i = 0; i < nf; i++) {
        mk->factors[1][i] = 1.0f + 7.0f * (float)i / (float)(nf > 1 ? nf - 1 : 1);
        mk->factors[2][i] = 1.0f + 0.5f * (float)i / (float)(nf > 1 ? nf - 1 : 1);
    }
    return add_values(mk, "rope_factors_long.weight", mk->factors[1], nf) |
           add_values(mk, "rope_factors_short.weight", mk->factors[2], nf);
}

/* Layer l's tensors, in the order (and so with the weights) the llama and
 * qwen2 test models have always had; the newer architectures' tensors in
 * between. */
static int add_layer(maker_t *mk, const opts_t *o, uint32_t l)
{
    const shape_t *s = &o->s;
    uint32_t hd = head_dim(s), q_dim = s->heads * hd, kv_dim = s->kv_heads * hd;
    float in_std = 1.0f / sqrtf((float)s->dim), ffn_std = 1.0f / sqrtf((float)s->ffn);
    /* GPT-2-style residual scaling: each sublayer adds a small update to the
     * residual stream, as in trained models, so that a rounding difference
     * is not amplified layer after layer (a chaotic random model would make
     * every comparison with llama.cpp a coin toss after the first flip). */
    float res_scale = o->res_scale / sqrtf(2.0f * (float)s->layers);
    bool phi3 = is_arch(o, "phi3");
    char n[96];
    int rc = 0;
#define T(fmt, type, n_in, n_rows, std, mean) \
    (snprintf(n, sizeof n, "blk.%u." fmt, l), add_tensor(mk, n, type, n_in, n_rows, std, mean))
#define W(fmt, n_in, n_rows, std) \
    (snprintf(n, sizeof n, "blk.%u." fmt, l), add_weight(mk, o, n, n_in, n_rows, std))
    rc |= T("attn_norm.weight", PD_GGML_TYPE_F32, s->dim, 1, 0.1f, 1.0f);
    if (phi3) { /* fused: rows q | k | v */
        rc |= W("attn_qkv.weight", s->dim, q_dim + 2 * kv_dim, o->qk_gain * in_std);
    } else {
        rc |= W("attn_q.weight", s->dim, q_dim, o->qk_gain * in_std);
        rc |= W("attn_k.weight", s->dim, kv_dim, o->qk_gain * in_std);
        rc |= W("attn_v.weight", s->dim, kv_dim, in_std);
    }
    if (is_arch(o, "qwen2")) {
        rc |= T("attn_q.bias", PD_GGML_TYPE_F32, q_dim, 1, 0.1f, 0.0f);
        rc |= T("attn_k.bias", PD_GGML_TYPE_F32, kv_dim, 1, 0.1f, 0.0f);
        rc |= T("attn_v.bias", PD_GGML_TYPE_F32, kv_dim, 1, 0.1f, 0.0f);
    }
    if (is_arch(o, "qwen3") || is_arch(o, "gemma3")) {
        rc |= T("attn_q_norm.weight", PD_GGML_TYPE_F32, hd, 1, 0.1f, 1.0f);
        rc |= T("attn_k_norm.weight", PD_GGML_TYPE_F32, hd, 1, 0.1f, 1.0f);
    }
    rc |= W("attn_output.weight", q_dim, s->dim, res_scale / sqrtf((float)q_dim));
    if (is_gemma(o)) /* norm weights as llama.cpp's converter stores Gemma's: 1 + w */
        rc |= T("post_attention_norm.weight", PD_GGML_TYPE_F32, s->dim, 1, 0.1f, 1.0f);
    rc |= T("ffn_norm.weight", PD_GGML_TYPE_F32, s->dim, 1, 0.1f, 1.0f);
    if (phi3) { /* fused: rows gate | up */
        rc |= W("ffn_up.weight", s->dim, 2 * s->ffn, o->qk_gain * in_std);
    } else {
        rc |= W("ffn_gate.weight", s->dim, s->ffn, o->qk_gain * in_std);
        rc |= W("ffn_up.weight", s->dim, s->ffn, in_std);
    }
    rc |= W("ffn_down.weight", s->ffn, s->dim, res_scale * ffn_std);
    if (is_gemma(o))
        rc |= T("post_ffw_norm.weight", PD_GGML_TYPE_F32, s->dim, 1, 0.1f, 1.0f);
#undef T
#undef W
    return rc;
}

/* A tied model's embeddings are small beside the layers' updates: the
 * output projection is the embedding matrix, and a token's own embedding,
 * dominating the residual stream, would otherwise predict that token again
 * every time. The output norm's weights then scale the logits to
 * --logit-std, as output.weight's scale does in an untied model. */
#define TIED_EMBD_STD 0.05f

static int add_weights(maker_t *mk, const opts_t *o, uint32_t vocab)
{
    const shape_t *s = &o->s;
    float in_std = 1.0f / sqrtf((float)s->dim);
    float embd_std = o->tied ? TIED_EMBD_STD : 1.0f;
    float out_norm = o->tied ? o->logit_std / (sqrtf((float)s->dim) * TIED_EMBD_STD) : 1.0f;
    int rc = 0;
    /* Embeddings are quantized too, as llama.cpp's quantizer does. */
    rc |= add_weight(mk, o, "token_embd.weight", s->dim, vocab, embd_std);
    for (uint32_t l = 0; l < s->layers && rc == 0; l++)
        rc |= add_layer(mk, o, l);
    rc |= add_tensor(mk, "output_norm.weight", PD_GGML_TYPE_F32, s->dim, 1, 0.1f * out_norm,
                     out_norm);
    if (!o->tied)
        rc |= add_weight(mk, o, "output.weight", s->dim, vocab, o->logit_std * in_std);
    rc |= add_rope_factors(mk, o);
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
