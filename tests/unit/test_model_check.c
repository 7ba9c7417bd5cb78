/* test_model_check.c -- the loader refuses what it would otherwise ignore
 * (model_check.h): each kind of unused tensor and computation-changing key
 * is planted into an otherwise valid file written here with the GGUF
 * writer, and must stop pd_model_load with a message naming it; harmless
 * keys must not. Also the K-quant data checks at load: a block with a
 * NaN or infinite fp16 scale. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "engine/gguf.h"
#include "engine/kernels.h"
#include "engine/model.h"
#include "engine/quants_k.h"

#define DIM 256
#define HEADS 4
#define KV_HEADS 2
#define HEAD_DIM (DIM / HEADS)
#define FFN 512
#define LAYERS 2
#define VOCAB 64

/* ====== A small valid model, written with the GGUF writer ====== */

typedef struct {
    pd_ggml_type_t type;
    uint64_t n_in, n_rows;
    uint64_t seed;
    int64_t bad_block;   /* >= 0: this block's scale becomes bad_bits */
    size_t bad_at;       /* byte offset of that scale in its block */
    uint16_t bad_bits;
} fill_t;

static fill_t fills[256];
static int n_fills;

static float rnd(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((*s >> 40) * (1.0 / 16777216.0)) - 0.5f;
}

static int fill(void *ctx, void *dst, uint64_t n_bytes)
{
    fill_t *f = ctx;
    const uint64_t rb = pd_ggml_row_bytes(f->type, f->n_in);
    if (rb * f->n_rows != n_bytes)
        return PD_EINVAL;
    float *row = malloc(sizeof(float) * f->n_in);
    uint64_t s = f->seed;
    for (uint64_t r = 0; r < f->n_rows; r++) {
        for (uint64_t i = 0; i < f->n_in; i++)
            row[i] = f->type == PD_GGML_TYPE_F32 && f->n_rows == 1 ? 1.0f : rnd(&s);
        uint8_t *d = (uint8_t *)dst + r * rb;
        if (f->type == PD_GGML_TYPE_F32)
            memcpy(d, row, rb);
        else if (f->type == PD_GGML_TYPE_Q8_0)
            pd_quant_row_q8_0(row, d, (uint32_t)f->n_in);
        else
            pd_quant_row_k(f->type, row, d, (uint32_t)f->n_in);
    }
    free(row);
    if (f->bad_block >= 0)
        memcpy((uint8_t *)dst + (size_t)f->bad_block * pd_ggml_block_bytes(f->type) + f->bad_at,
               &f->bad_bits, 2);
    return 0;
}

static fill_t *add(pd_gguf_writer_t *w, const char *name, pd_ggml_type_t t, uint64_t n_in,
                   uint64_t n_rows)
{
    assert_true(n_fills < 256);
    fill_t *f = &fills[n_fills];
    *f = (fill_t){t, n_in, n_rows, 1000u + (uint64_t)n_fills, -1, 0, 0};
    n_fills++;
    const uint64_t ne[2] = {n_in, n_rows};
    assert_int_equal(pd_gguf_writer_add_tensor(w, name, t, n_rows == 1 ? 1 : 2, ne, fill, f), 0);
    return f;
}

static bool is(const char *arch, const char *a) { return strcmp(arch, a) == 0; }

/* The keys and tensors of a valid file of architecture arch (llama, qwen2,
 * qwen3, gemma2, gemma3, phi3; any other name gets llama's tensors);
 * matrices in wt. Returns the writer for the test to add more before
 * writing. */
static pd_gguf_writer_t *base_model(const char *arch, pd_ggml_type_t wt)
{
    pd_gguf_writer_t *w = pd_gguf_writer_new(3);
    assert_non_null(w);
    n_fills = 0;
    char k[128];
#define KEY(s) (snprintf(k, sizeof k, "%s." s, arch), k)
    pd_gguf_writer_add_str(w, "general.architecture", arch);
    pd_gguf_writer_add_u32(w, KEY("context_length"), 128);
    pd_gguf_writer_add_u32(w, KEY("embedding_length"), DIM);
    pd_gguf_writer_add_u32(w, KEY("block_count"), LAYERS);
    pd_gguf_writer_add_u32(w, KEY("feed_forward_length"), FFN);
    pd_gguf_writer_add_u32(w, KEY("attention.head_count"), HEADS);
    pd_gguf_writer_add_u32(w, KEY("attention.head_count_kv"), KV_HEADS);
    pd_gguf_writer_add_f32(w, KEY("attention.layer_norm_rms_epsilon"), 1e-5f);
#undef KEY
    add(w, "token_embd.weight", wt, DIM, VOCAB);
    const bool gemma = is(arch, "gemma2") || is(arch, "gemma3");
    if (is(arch, "gemma2"))
        pd_gguf_writer_add_u32(w, "gemma2.attention.sliding_window", 16);
    for (int l = 0; l < LAYERS; l++) {
        char n[64];
#define T(s, t, i, r) (snprintf(n, sizeof n, "blk.%d." s, l), add(w, n, t, i, r))
        T("attn_norm.weight", PD_GGML_TYPE_F32, DIM, 1);
        if (is(arch, "phi3")) {
            T("attn_qkv.weight", wt, DIM, DIM + 2 * KV_HEADS * HEAD_DIM);
        } else {
            T("attn_q.weight", wt, DIM, DIM);
            T("attn_k.weight", wt, DIM, KV_HEADS * HEAD_DIM);
            T("attn_v.weight", wt, DIM, KV_HEADS * HEAD_DIM);
        }
        if (is(arch, "qwen2")) {
            T("attn_q.bias", PD_GGML_TYPE_F32, DIM, 1);
            T("attn_k.bias", PD_GGML_TYPE_F32, KV_HEADS * HEAD_DIM, 1);
            T("attn_v.bias", PD_GGML_TYPE_F32, KV_HEADS * HEAD_DIM, 1);
        }
        if (is(arch, "qwen3") || is(arch, "gemma3")) {
            T("attn_q_norm.weight", PD_GGML_TYPE_F32, HEAD_DIM, 1);
            T("attn_k_norm.weight", PD_GGML_TYPE_F32, HEAD_DIM, 1);
        }
        T("attn_output.weight", wt, DIM, DIM);
        if (gemma)
            T("post_attention_norm.weight", PD_GGML_TYPE_F32, DIM, 1);
        T("ffn_norm.weight", PD_GGML_TYPE_F32, DIM, 1);
        if (is(arch, "phi3")) {
            T("ffn_up.weight", wt, DIM, 2 * FFN);
        } else {
            T("ffn_gate.weight", wt, DIM, FFN);
            T("ffn_up.weight", wt, DIM, FFN);
        }
        T("ffn_down.weight", wt, FFN, DIM);
        if (gemma)
            T("post_ffw_norm.weight", PD_GGML_TYPE_F32, DIM, 1);
#undef T
    }
    add(w, "output_norm.weight", PD_GGML_TYPE_F32, DIM, 1);
    if (!is(arch, "gemma2")) /* gemma2 always ties */
        add(w, "output.weight", wt, DIM, VOCAB);
    return w;
}

static char path_buf[256];
static char last_msg[PD_ERR_MSG_MAX]; /* the last refusal's message */

/* Writes w (and frees it), loads the file; returns the model or NULL with
 * err filled. */
static pd_model_t *write_and_load(pd_gguf_writer_t *w, pd_err_t *err)
{
    snprintf(path_buf, sizeof path_buf, "/tmp/test_model_check.%d.gguf", (int)getpid());
    pd_err_t werr = {0};
    assert_int_equal(pd_gguf_writer_write(w, path_buf, &werr), 0);
    pd_gguf_writer_free(w);
    memset(err, 0, sizeof *err);
    pd_model_t *m = pd_model_load(path_buf, err);
    unlink(path_buf);
    return m;
}

static void expect_loads(pd_gguf_writer_t *w)
{
    pd_err_t err;
    pd_model_t *m = write_and_load(w, &err);
    if (m == NULL)
        print_error("refused: %s\n", err.msg);
    assert_non_null(m);
    pd_model_free(m);
}

/* The load fails and the message holds every needle. */
static void expect_refused(pd_gguf_writer_t *w, const char *n1, const char *n2, const char *n3)
{
    pd_err_t err;
    pd_model_t *m = write_and_load(w, &err);
    if (m != NULL) {
        print_error("loaded, but should refuse (%s)\n", n1);
        pd_model_free(m);
        fail();
    }
    const char *needles[] = {n1, n2, n3};
    for (int i = 0; i < 3; i++)
        if (needles[i] && strstr(err.msg, needles[i]) == NULL) {
            print_error("message lacks '%s': %s\n", needles[i], err.msg);
            fail();
        }
    assert_true(err.code < 0);
    assert_null(strchr(err.msg, '\n'));
    snprintf(last_msg, sizeof last_msg, "%s", err.msg);
    if (getenv("VERBOSE"))
        print_message("%s\n", err.msg);
}

/* ====== Tests ====== */

static void test_valid_files_load(void **state)
{
    (void)state;
    const char *archs[] = {"llama", "qwen2", "qwen3", "gemma2", "gemma3", "phi3"};
    for (size_t i = 0; i < sizeof archs / sizeof archs[0]; i++)
        expect_loads(base_model(archs[i], PD_GGML_TYPE_F32));
    const pd_ggml_type_t types[] = {PD_GGML_TYPE_Q8_0, PD_GGML_TYPE_Q2_K, PD_GGML_TYPE_Q3_K,
                                    PD_GGML_TYPE_Q4_K, PD_GGML_TYPE_Q5_K, PD_GGML_TYPE_Q6_K,
                                    PD_GGML_TYPE_IQ4_NL};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        expect_loads(base_model("llama", types[i]));
}

/* Tensors the engine does not read: each stops the load, named. */
static void test_unused_tensors_refused(void **state)
{
    (void)state;
    pd_gguf_writer_t *w = base_model("qwen2", PD_GGML_TYPE_F32);
    add(w, "rope_freqs.weight", PD_GGML_TYPE_F32, HEAD_DIM / 2, 1); /* llama's only */
    expect_refused(w, "'rope_freqs.weight'", "Llama 3.1", "it reads token_embd");

    w = base_model("phi3", PD_GGML_TYPE_F32);
    add(w, "rope_freqs.weight", PD_GGML_TYPE_F32, HEAD_DIM / 2, 1);
    expect_refused(w, "'rope_freqs.weight'", "rope_factors_long", NULL);

    w = base_model("llama", PD_GGML_TYPE_F32);
    add(w, "rope_factors_long.weight", PD_GGML_TYPE_F32, HEAD_DIM / 2, 1); /* phi3's only */
    expect_refused(w, "'rope_factors_long.weight'", "LongRoPE", NULL);

    w = base_model("llama", PD_GGML_TYPE_F32);
    add(w, "blk.0.attn_q_norm.weight", PD_GGML_TYPE_F32, HEAD_DIM, 1); /* Qwen3 */
    expect_refused(w, "'blk.0.attn_q_norm.weight'", "per-head RMSNorm", NULL);

    w = base_model("llama", PD_GGML_TYPE_F32);
    add(w, "blk.1.attn_qkv.weight", PD_GGML_TYPE_F32, DIM, 3 * DIM); /* Phi-3 */
    expect_refused(w, "'blk.1.attn_qkv.weight'", "fused QKV", NULL);

    w = base_model("llama", PD_GGML_TYPE_F32);
    add(w, "blk.0.ffn_gate_exps.weight", PD_GGML_TYPE_F32, DIM, FFN);
    expect_refused(w, "'blk.0.ffn_gate_exps.weight'", "mixture of experts", NULL);

    w = base_model("qwen3", PD_GGML_TYPE_F32);
    add(w, "blk.0.post_attention_norm.weight", PD_GGML_TYPE_F32, DIM, 1); /* Gemma's only */
    expect_refused(w, "'blk.0.post_attention_norm.weight'", "Gemma", "attn_q_norm");

    w = base_model("gemma2", PD_GGML_TYPE_F32);
    add(w, "blk.1.attn_k_norm.weight", PD_GGML_TYPE_F32, HEAD_DIM, 1); /* gemma3's, not 2's */
    expect_refused(w, "'blk.1.attn_k_norm.weight'", "per-head RMSNorm", "post_ffw_norm");

    w = base_model("gemma2", PD_GGML_TYPE_F32);
    add(w, "output.weight", PD_GGML_TYPE_F32, DIM, VOCAB); /* gemma2 always ties */
    expect_refused(w, "'output.weight'", "not one the engine reads", NULL);

    w = base_model("gemma3", PD_GGML_TYPE_F32);
    add(w, "blk.0.attn_qkv.weight", PD_GGML_TYPE_F32, DIM, 2 * DIM); /* phi3's only */
    expect_refused(w, "'blk.0.attn_qkv.weight'", "fused QKV", NULL);

    w = base_model("phi3", PD_GGML_TYPE_F32);
    add(w, "blk.0.ffn_gate.weight", PD_GGML_TYPE_F32, DIM, FFN); /* phi3's gate is in ffn_up */
    expect_refused(w, "'blk.0.ffn_gate.weight'", "not one the engine reads", "ffn_up (gate");

    w = base_model("llama", PD_GGML_TYPE_F32);
    add(w, "blk.0.attn_q.bias", PD_GGML_TYPE_F32, DIM, 1); /* qwen2 has them, llama not */
    expect_refused(w, "'blk.0.attn_q.bias'", "bias", NULL);

    w = base_model("llama", PD_GGML_TYPE_F32);
    add(w, "blk.2.attn_norm.weight", PD_GGML_TYPE_F32, DIM, 1); /* a layer past block_count */
    expect_refused(w, "'blk.2.attn_norm.weight'", "not one the engine reads", NULL);

    w = base_model("qwen2", PD_GGML_TYPE_F32);
    add(w, "some.other.thing", PD_GGML_TYPE_F32, 8, 1);
    expect_refused(w, "'some.other.thing'", "attn_{q,k,v}.bias", NULL);
}

static void test_architectures_refused(void **state)
{
    (void)state;
    const char *archs[] = {"qwen3moe", "gemma3n", "phi2", "mistral3", "falcon", "llama4"};
    for (size_t i = 0; i < sizeof archs / sizeof archs[0]; i++) {
        char q[64];
        snprintf(q, sizeof q, "'%s'", archs[i]);
        expect_refused(base_model(archs[i], PD_GGML_TYPE_F32), q,
                       "supported: llama, qwen2, qwen3, gemma2, gemma3, phi3", NULL);
    }
}

/* Keys that change the computation: each stops the load, named. */
static void test_keys_refused(void **state)
{
    (void)state;
    /* llama.cpp applies no window to llama (Mistral's GGUFs carry none) */
    pd_gguf_writer_t *w = base_model("llama", PD_GGML_TYPE_F32);
    pd_gguf_writer_add_u32(w, "llama.attention.sliding_window", 4096);
    expect_refused(w, "'llama.attention.sliding_window' = 4096", "llama.cpp applies none",
                   "runs with 0");

    w = base_model("qwen3", PD_GGML_TYPE_F32);
    pd_gguf_writer_add_u32(w, "qwen3.attention.sliding_window", 4096);
    expect_refused(w, "'qwen3.attention.sliding_window' = 4096", "sliding window", NULL);

    w = base_model("llama", PD_GGML_TYPE_F32);
    pd_gguf_writer_add_f32(w, "llama.attn_logit_softcapping", 50.0f);
    expect_refused(w, "'llama.attn_logit_softcapping'", "soft-capping", "it reads the shape");

    w = base_model("gemma3", PD_GGML_TYPE_F32); /* gemma2's, which llama.cpp's gemma3 ignores */
    pd_gguf_writer_add_f32(w, "gemma3.attn_logit_softcapping", 50.0f);
    expect_refused(w, "'gemma3.attn_logit_softcapping'", "soft-capping", "final_logit_softcapping");

    w = base_model("llama", PD_GGML_TYPE_F32);
    pd_gguf_writer_add_f32(w, "llama.final_logit_softcapping", 30.0f);
    expect_refused(w, "'llama.final_logit_softcapping'", "soft-capping", NULL);

    w = base_model("qwen2", PD_GGML_TYPE_F32);
    pd_gguf_writer_add_f32(w, "qwen2.rope.freq_base_swa", 10000.0f);
    expect_refused(w, "'qwen2.rope.freq_base_swa'", "may change the computation", NULL);

    w = base_model("llama", PD_GGML_TYPE_F32);
    pd_gguf_writer_add_f32(w, "llama.rope.scaling.attn_factor", 1.2f); /* phi3's only */
    expect_refused(w, "'llama.rope.scaling.attn_factor'", "YaRN", NULL);

    w = base_model("llama", PD_GGML_TYPE_F32);
    pd_gguf_writer_add_str(w, "llama.rope.scaling.type", "longrope");
    expect_refused(w, "rope scaling 'longrope'", "supported: none, linear)", NULL);

    w = base_model("gemma2", PD_GGML_TYPE_F32);
    pd_gguf_writer_add_u32(w, "gemma2.attention.sliding_window_pattern", 2);
    pd_gguf_writer_add_f32(w, "gemma2.final_logit_softcapping", -1.0f);
    expect_refused(w, "soft-capping", "-1", NULL);

    w = base_model("gemma3", PD_GGML_TYPE_F32);
    pd_gguf_writer_add_u32(w, "gemma3.attention.sliding_window", 8);
    pd_gguf_writer_add_arr(w, "gemma3.attention.sliding_window_pattern", PD_GGUF_TYPE_BOOL,
                           (const bool[]){true, false, true}, 3); /* 3 for 2 layers */
    expect_refused(w, "'gemma3.attention.sliding_window_pattern'", "one per layer", NULL);

    w = base_model("llama", PD_GGML_TYPE_F32);
    pd_gguf_writer_add_u32(w, "llama.attention.key_length", HEAD_DIM);
    pd_gguf_writer_add_u32(w, "llama.attention.value_length", HEAD_DIM / 2);
    expect_refused(w, "value_length 32 differs from key_length 64", NULL, NULL);

    w = base_model("llama", PD_GGML_TYPE_F32);
    pd_gguf_writer_add_u32(w, "llama.expert_count", 8);
    expect_refused(w, "'llama.expert_count' = 8", "mixture of experts", NULL);

    w = base_model("llama", PD_GGML_TYPE_F32);
    pd_gguf_writer_add_str(w, "llama.rope.scaling.type", "yarn");
    expect_refused(w, "rope scaling 'yarn'", "supported: none, linear", NULL);

    w = base_model("llama", PD_GGML_TYPE_F32);
    pd_gguf_writer_add_f32(w, "llama.rope.scaling.yarn_log_multiplier", 0.1f);
    expect_refused(w, "'llama.rope.scaling.yarn_log_multiplier'", "YaRN", NULL);

    /* a head size of 128: the Q projection must then have 4 x 128 rows */
    w = base_model("llama", PD_GGML_TYPE_F32);
    pd_gguf_writer_add_u32(w, "llama.attention.key_length", 128);
    expect_refused(w, "'blk.0.attn_q.weight'", "expected [256, 512]", NULL);

    w = base_model("llama", PD_GGML_TYPE_F32);
    pd_gguf_writer_add_u32(w, "llama.vocab_size", VOCAB + 1);
    expect_refused(w, "'llama.vocab_size'", "vocabulary", NULL);

    w = base_model("llama", PD_GGML_TYPE_F32);
    pd_gguf_writer_add_f32(w, "llama.attention.layer_norm_epsilon", 1e-5f);
    expect_refused(w, "'llama.attention.layer_norm_epsilon'", "LayerNorm", NULL);

    w = base_model("llama", PD_GGML_TYPE_F32);
    pd_gguf_writer_add_u32(w, "llama.some_future_knob", 1); /* deny by default */
    expect_refused(w, "'llama.some_future_knob'", "may change the computation", NULL);

    w = base_model("qwen2", PD_GGML_TYPE_F32);
    pd_gguf_writer_add_u32(w, "llama.context_length", 128); /* another arch's namespace */
    expect_refused(w, "'llama.context_length'", "not one the engine knows", "qwen2.");

    w = base_model("llama", PD_GGML_TYPE_F32);
    pd_gguf_writer_add_str(w, "adapter.type", "lora");
    expect_refused(w, "'adapter.type'", "adapter", NULL);

    w = base_model("llama", PD_GGML_TYPE_F32);
    pd_gguf_writer_add_val(w, "split.count", PD_GGUF_TYPE_UINT16, &(uint16_t){3});
    expect_refused(w, "'split.count' = 3", "merge", NULL);
}

/* Keys that change nothing pass. */
static void test_harmless_keys_pass(void **state)
{
    (void)state;
    pd_gguf_writer_t *w = base_model("llama", PD_GGML_TYPE_F32);
    pd_gguf_writer_add_str(w, "general.name", "x");
    pd_gguf_writer_add_str(w, "general.license", "apache-2.0");
    pd_gguf_writer_add_u32(w, "general.file_type", 15);
    pd_gguf_writer_add_u32(w, "general.quantization_version", 2);
    pd_gguf_writer_add_str(w, "tokenizer.chat_template", "{{ x }}");
    pd_gguf_writer_add_u32(w, "tokenizer.ggml.eot_token_id", 2);
    pd_gguf_writer_add_str(w, "quantize.imatrix.file", "imatrix.dat");
    pd_gguf_writer_add_u32(w, "llama.vocab_size", VOCAB);
    pd_gguf_writer_add_u32(w, "llama.attention.key_length", HEAD_DIM);
    pd_gguf_writer_add_u32(w, "llama.attention.value_length", HEAD_DIM);
    pd_gguf_writer_add_u32(w, "llama.expert_count", 0);
    pd_gguf_writer_add_u32(w, "llama.rope.dimension_count", HEAD_DIM);
    pd_gguf_writer_add_u32(w, "llama.rope.scaling.original_context_length", 4096);
    pd_gguf_writer_add_val(w, "split.count", PD_GGUF_TYPE_UINT16, &(uint16_t){1});
    pd_gguf_writer_add_val(w, "split.no", PD_GGUF_TYPE_UINT16, &(uint16_t){0});
    pd_gguf_writer_add_u32(w, "llama.attention.sliding_window", 0); /* no window */
    expect_loads(w);

    /* what each newer architecture reads */
    w = base_model("gemma2", PD_GGML_TYPE_F32);
    pd_gguf_writer_add_f32(w, "gemma2.attn_logit_softcapping", 50.0f);
    pd_gguf_writer_add_f32(w, "gemma2.final_logit_softcapping", 30.0f);
    pd_gguf_writer_add_u32(w, "gemma2.attention.key_length", HEAD_DIM);
    expect_loads(w);
    w = base_model("gemma3", PD_GGML_TYPE_F32);
    pd_gguf_writer_add_u32(w, "gemma3.attention.sliding_window", 512);
    pd_gguf_writer_add_f32(w, "gemma3.rope.freq_base_swa", 10000.0f);
    pd_gguf_writer_add_arr(w, "gemma3.attention.sliding_window_pattern", PD_GGUF_TYPE_BOOL,
                           (const bool[]){true, false}, 2);
    expect_loads(w);
    w = base_model("phi3", PD_GGML_TYPE_F32);
    pd_gguf_writer_add_u32(w, "phi3.attention.sliding_window", 2047); /* llama.cpp ignores it */
    pd_gguf_writer_add_u32(w, "phi3.rope.scaling.original_context_length", 4096);
    pd_gguf_writer_add_f32(w, "phi3.rope.scaling.attn_factor", 1.19f);
    pd_gguf_writer_add_str(w, "phi3.rope.scaling.type", "longrope");
    add(w, "rope_factors_long.weight", PD_GGML_TYPE_F32, HEAD_DIM / 2, 1);
    add(w, "rope_factors_short.weight", PD_GGML_TYPE_F32, HEAD_DIM / 2, 1);
    expect_loads(w);
    w = base_model("llama", PD_GGML_TYPE_F32);
    add(w, "rope_freqs.weight", PD_GGML_TYPE_F32, HEAD_DIM / 2, 1); /* Llama 3.1+ */
    expect_loads(w);
    /* a head size that is not dim / heads (Qwen3, Gemma, Mistral Nemo) */
    w = base_model("qwen3", PD_GGML_TYPE_F32);
    pd_gguf_writer_add_u32(w, "qwen3.attention.key_length", HEAD_DIM);
    expect_loads(w);
}

/* A quantized block whose fp16 scale is NaN or infinite (d, or dmin where
 * the type has one) stops the load, naming the tensor, block and field. */
static void test_bad_scales_refused(void **state)
{
    (void)state;
    const struct {
        pd_ggml_type_t type;
        size_t at;
        const char *field;
    } cases[] = {
        {PD_GGML_TYPE_Q2_K, 80, "scale d "}, {PD_GGML_TYPE_Q2_K, 82, "scale dmin"},
        {PD_GGML_TYPE_Q3_K, 108, "scale d "}, {PD_GGML_TYPE_Q4_K, 0, "scale d "},
        {PD_GGML_TYPE_Q4_K, 2, "scale dmin"}, {PD_GGML_TYPE_Q5_K, 2, "scale dmin"},
        {PD_GGML_TYPE_Q6_K, 208, "scale d "}, {PD_GGML_TYPE_IQ4_NL, 0, "scale d "},
        {PD_GGML_TYPE_Q8_0, 0, "scale d "},
    };
    const uint16_t bad[] = {0x7e00 /* NaN */, 0xfc00 /* -inf */, 0x7c00 /* inf */};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        pd_gguf_writer_t *w = base_model("llama", cases[i].type);
        fill_t *f = &fills[3]; /* blk.0.attn_k.weight (128 rows) */
        f->bad_block = (int64_t)(pd_ggml_row_bytes(cases[i].type, DIM) /
                                 pd_ggml_block_bytes(cases[i].type)) * 5 + 0;
        f->bad_at = cases[i].at;
        f->bad_bits = bad[i % 3];
        char bits[32];
        snprintf(bits, sizeof bits, "(fp16 0x%04x)", bad[i % 3]);
        expect_refused(w, "'blk.0.attn_k.weight' (", cases[i].field, bits);
        assert_non_null(strstr(last_msg, "row 5 block 0"));
    }
    /* the largest finite fp16 passes */
    pd_gguf_writer_t *w = base_model("llama", PD_GGML_TYPE_Q4_K);
    fills[3].bad_block = 1;
    fills[3].bad_at = 0;
    fills[3].bad_bits = 0x7bff;
    expect_loads(w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_files_load),
        cmocka_unit_test(test_unused_tensors_refused),
        cmocka_unit_test(test_architectures_refused),
        cmocka_unit_test(test_keys_refused),
        cmocka_unit_test(test_harmless_keys_pass),
        cmocka_unit_test(test_bad_scales_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
