/* test_forward.c -- the forward pass over flattened batches, on real GGUF
 * test models made by scripts/models.sh ($MODELS, default build/models).
 *
 *  - batching changes nothing: 16 sequences of different lengths in one
 *    mixed batch (some prefill chunks, some single decode tokens) give
 *    exactly the logits (bit for bit) of each sequence evaluated alone, in
 *    the engine's default batch-invariant mode, for every weight type;
 *    with batch invariance off (sgemm for prefill) within 1e-4 of the
 *    logit scale for F32 (the paths differ only in summation order);
 *  - seeded sampling picks the same tokens alone or batched;
 *  - attention through a scrambled block table equals attention through
 *    consecutive blocks (bit for bit);
 *  - a prompt computed on top of cached prefix blocks (a prefix-cache hit)
 *    gives bit-identical logits to the same prompt computed whole (a miss),
 *    with an F32 or an F16 KV cache;
 *  - the same, bit for bit, with an F16 KV cache (kv.dtype f16), Gemma's
 *    windows and soft-cap included;
 *  - the per-layer hook (pd_forward_hooked) is called for layers 0..L-1 in
 *    order, each time with that layer's K/V final and the next layer's not
 *    yet written;
 *  - the newer architectures batch the same way (their sliding windows
 *    over the paged cache included), a sliding-window layer ignores every
 *    position outside its window while a global one does not (F32 and F16
 *    KV), and phi3's rope factors follow the context size as llama.cpp's do;
 *  - a 200-token prefill chunk gives the same logits, bit for bit, on 1, 2
 *    and 3 threads, with batch invariance on and off (the sgemm-path
 *    products, the rounding of their activations and attention are split
 *    over the threads; none of the splits may change a bit or lose a row);
 *  - bad batches are refused with a message naming the field.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/forward.h"
#include "engine/kvcache.h"
#include "engine/model.h"
#include "engine/sampler.h"

#define N_SEQ 16
#define MAX_LEN 48

static bool g_invariant = true; /* engine option under test */
/* Without invariance: the largest logit difference a batch may make, as a
 * fraction of the logit scale (float weights: the summation order only). */
static double g_rel_tol = 1e-4;
static int g_threads = 2;        /* engine threads under test */
static pd_kv_dtype_t g_kv_dtype = PD_KV_F32; /* KV cache type under test */

typedef struct {
    pd_model_t *m;
    pd_kv_t *kv;
    pd_engine_t *e;
    float *logits;
} fx_t;

static const char *model_path(const char *name, char *buf, size_t cap)
{
    const char *dir = getenv("MODELS");
    snprintf(buf, cap, "%s/%s", dir ? dir : "build/models", name);
    return buf;
}

static int fx_open(fx_t *f, const char *name, uint32_t n_blocks, uint32_t max_batch)
{
    char path[512];
    pd_err_t err = { 0 };
    memset(f, 0, sizeof *f);
    f->m = pd_model_load(model_path(name, path, sizeof path), &err);
    if (f->m == NULL) {
        print_error("cannot load %s: %s\n", path, err.msg);
        return -1;
    }
    const pd_model_config_t *c = &f->m->cfg;
    pd_kv_shape_t ks = { c->n_layers, c->n_kv_heads, c->head_dim, 16, n_blocks, g_kv_dtype };
    f->kv = pd_kv_new(&ks, &err);
    assert_non_null(f->kv);
    pd_engine_opts_t o;
    pd_engine_opts_default(&o);
    o.max_batch_tokens = max_batch;
    o.max_ctx = 256;
    o.n_threads = g_threads;
    o.batch_invariant = g_invariant;
    o.batch_invariant_quant = g_invariant;
    f->e = pd_engine_new(f->m, f->kv, &o, &err);
    assert_non_null(f->e);
    f->logits = malloc(sizeof(float) * max_batch * c->vocab_size);
    assert_non_null(f->logits);
    return 0;
}

static void fx_close(fx_t *f)
{
    pd_engine_free(f->e);
    pd_kv_free(f->kv);
    pd_model_free(f->m);
    free(f->logits);
}

static uint32_t seq_len(int s) { return 1 + (uint32_t)(s * 7 + 3) % MAX_LEN; }
static int32_t seq_tok(const fx_t *f, int s, uint32_t i)
{
    return (int32_t)((s * 7919u + i * 104729u + 13u) % f->m->cfg.vocab_size);
}

/* Logits of every position of tokens tok[0..n) as one new sequence, in one
 * call (n <= ONE_SEQ_MAX); the sequence's blocks are released after. */
#define ONE_SEQ_MAX 200
static void eval_one_seq(fx_t *f, const int32_t *tok, uint32_t n, float *out)
{
    int32_t pos[ONE_SEQ_MAX], sq[ONE_SEQ_MAX];
    bool want[ONE_SEQ_MAX];
    assert_true(n <= ONE_SEQ_MAX);
    pd_kv_seq_t seq = { 0 };
    assert_int_equal(pd_kv_seq_reserve(f->kv, &seq, n), 0);
    for (uint32_t i = 0; i < n; i++) {
        pos[i] = (int32_t)i;
        sq[i] = 0;
        want[i] = true;
    }
    const int32_t *tables[1] = { seq.blocks };
    uint32_t nt[1] = { seq.n_blocks };
    pd_batch_t b = { n, tok, pos, sq, want, 1, tables, nt };
    pd_err_t err = { 0 };
    assert_int_equal(pd_forward(f->e, &b, f->logits, &err), 0);
    memcpy(out, f->logits, sizeof(float) * n * f->m->cfg.vocab_size);
    pd_kv_seq_release(f->kv, &seq);
}

/* Logits of every position of sequence s evaluated alone, in one call. */
static void eval_alone(fx_t *f, int s, float *out)
{
    uint32_t n = seq_len(s);
    int32_t tok[MAX_LEN];
    for (uint32_t i = 0; i < n; i++)
        tok[i] = seq_tok(f, s, i);
    eval_one_seq(f, tok, n, out);
}

/* A batch's logits against each sequence's alone. decode_only: every
 * sequence's last token alone in the batch (a pure decode step, whose
 * attention takes adjacent KV heads together: pd_kern_attn_heads); else
 * continuing prefill chunks mixed with decode steps. */
static void check_batching_mode(const char *model, bool decode_only)
{
    fx_t f;
    if (fx_open(&f, model, 256, 1024) != 0)
        fail();
    const uint32_t V = f.m->cfg.vocab_size;
    float *alone = malloc(sizeof(float) * N_SEQ * MAX_LEN * V);
    assert_non_null(alone);
    for (int s = 0; s < N_SEQ; s++)
        eval_alone(&f, s, alone + (size_t)s * MAX_LEN * V);

    /* Step 1: each sequence's first half alone (so the batch below mixes
     * continuing prefill chunks with single-token decode steps). */
    pd_kv_seq_t seqs[N_SEQ];
    memset(seqs, 0, sizeof seqs);
    uint32_t split[N_SEQ];
    pd_err_t err = { 0 };
    for (int s = 0; s < N_SEQ; s++) {
        uint32_t n = seq_len(s);
        /* n-1: a decode step for the last token */
        split[s] = decode_only || s % 3 == 0 ? n - 1 : n / 2;
        assert_int_equal(pd_kv_seq_reserve(f.kv, &seqs[s], n), 0);
        for (uint32_t i = 0; i < split[s]; i++) {
            int32_t tok = seq_tok(&f, s, i), pos = (int32_t)i, sq = 0;
            bool want = false;
            const int32_t *tables[1] = { seqs[s].blocks };
            uint32_t nt[1] = { seqs[s].n_blocks };
            pd_batch_t b = { 1, &tok, &pos, &sq, &want, 1, tables, nt };
            assert_int_equal(pd_forward(f.e, &b, f.logits, &err), 0);
        }
    }
    /* Step 2: the rest of all 16 sequences in one flattened batch. */
    int32_t tok[N_SEQ * MAX_LEN], pos[N_SEQ * MAX_LEN], sq[N_SEQ * MAX_LEN];
    bool want[N_SEQ * MAX_LEN];
    const int32_t *tables[N_SEQ];
    uint32_t nt[N_SEQ];
    uint32_t n = 0;
    for (int s = 0; s < N_SEQ; s++) {
        tables[s] = seqs[s].blocks;
        nt[s] = seqs[s].n_blocks;
        for (uint32_t i = split[s]; i < seq_len(s); i++) {
            tok[n] = seq_tok(&f, s, i);
            pos[n] = (int32_t)i;
            sq[n] = s;
            want[n] = true;
            n++;
        }
    }
    pd_batch_t b = { n, tok, pos, sq, want, N_SEQ, tables, nt };
    assert_int_equal(pd_forward(f.e, &b, f.logits, &err), 0);
    double max_diff = 0, max_rel = 0;
    int n_same_tok = 0, n_cmp = 0;
    pd_sampler_scratch_t *scr = pd_sampler_scratch_new(V);
    pd_sampling_t sp;
    pd_sampling_default(&sp);
    sp.temperature = 0.9f;
    sp.top_p = 0.95f;
    sp.seed = 1234;
    float *l1 = malloc(sizeof(float) * V), *l2 = malloc(sizeof(float) * V);
    for (uint32_t r = 0; r < n; r++) {
        const float *a = alone + ((size_t)sq[r] * MAX_LEN + (size_t)pos[r]) * V;
        const float *bb = f.logits + (size_t)r * V;
        double scale = 1.0;
        for (uint32_t i = 0; i < V; i++)
            scale = fabs(a[i]) > scale ? fabs(a[i]) : scale;
        for (uint32_t i = 0; i < V; i++) {
            double d = fabs((double)a[i] - bb[i]);
            max_diff = d > max_diff ? d : max_diff;
            max_rel = d / scale > max_rel ? d / scale : max_rel;
        }
        memcpy(l1, a, sizeof(float) * V);
        memcpy(l2, bb, sizeof(float) * V);
        int32_t t1 = pd_sample(&sp, l1, V, (uint64_t)pos[r], NULL, 0, scr);
        int32_t t2 = pd_sample(&sp, l2, V, (uint64_t)pos[r], NULL, 0, scr);
        n_same_tok += t1 == t2;
        n_cmp++;
    }
    print_message("%s (%s KV): %u batch rows, max |logit diff| = %.3g (%.3g of the logit scale), "
                  "seeded samples equal %d/%d\n", model, pd_kv_dtype_name(g_kv_dtype), n, max_diff,
                  max_rel, n_same_tok, n_cmp);
    if (g_invariant)
        assert_true(max_diff == 0.0);
    else
        assert_true(max_rel < g_rel_tol);
    assert_int_equal(n_same_tok, n_cmp);
    for (int s = 0; s < N_SEQ; s++)
        pd_kv_seq_release(f.kv, &seqs[s]);
    assert_int_equal(pd_kv_n_used(f.kv), 0);
    free(l1);
    free(l2);
    pd_sampler_scratch_free(scr);
    free(alone);
    fx_close(&f);
}

static void check_batching(const char *model) { check_batching_mode(model, false); }

static void test_batching_llama(void **state) { (void)state; check_batching("tiny-llama-spm-f32.gguf"); }
static void test_batching_qwen2(void **state) { (void)state; check_batching("tiny-qwen2-bpe-f32.gguf"); }
static void test_batching_tied(void **state) { (void)state; check_batching("tiny-llama-spm-tied-f32.gguf"); }
static void test_batching_f16(void **state) { (void)state; check_batching("tiny-llama-spm-f16.gguf"); }
static void test_batching_q8_0(void **state) { (void)state; check_batching("tiny-llama-spm-q8_0.gguf"); }
static void test_batching_q4_0(void **state) { (void)state; check_batching("tiny-llama-spm-q4_0.gguf"); }
/* The K-quants and IQ4_NL (the mixes hold Q4_K, Q6_K; Q2_K, Q3_K, Q6_K). */
static void test_batching_kquants(void **state)
{
    (void)state;
    check_batching("tiny-k-llama-spm-mix-q4_k_m.gguf");
    check_batching("tiny-k-llama-spm-mix-q2_k.gguf");
    check_batching("tiny-k-llama-spm-q5_k.gguf");
    check_batching("tiny-k-llama-spm-iq4_nl.gguf");
}
/* The newer architectures: Llama 3.1 rope_freqs and tied, qwen3 head
 * norms, Gemma 2/3 windows of 16 (the sequences here reach 48), phi3. */
static void test_batching_archs(void **state)
{
    (void)state;
    check_batching("llama3-tiny-f32.gguf");
    check_batching("qwen3-tiny-f32.gguf");
    check_batching("gemma2-tiny-f32.gguf");
    check_batching("gemma3-tiny-f32.gguf");
    check_batching("phi3-tiny-f32.gguf");
    check_batching("gemma3-tiny-q4_k_m.gguf");
}

/* Logits of a 40-token sequence in one call, its first token replaced by
 * first (positions 0..39, through blocks of 16: windows cross them). */
static void eval_seq(fx_t *f, int32_t first, float *out)
{
    const uint32_t n = 40;
    int32_t tok[40], pos[40], sq[40], table[3] = { 0, 1, 2 };
    bool want[40];
    for (uint32_t i = 0; i < n; i++) {
        tok[i] = i == 0 ? first : seq_tok(f, 3, i);
        pos[i] = (int32_t)i;
        sq[i] = 0;
        want[i] = true;
    }
    const int32_t *tables[1] = { table };
    uint32_t nt[1] = { 3 };
    pd_batch_t b = { n, tok, pos, sq, want, 1, tables, nt };
    pd_err_t err = { 0 };
    assert_int_equal(pd_forward(f->e, &b, out, &err), 0);
}

/* gemma2-swa1: one sliding-window layer of 4 positions. Changing token 0
 * changes the logits of positions 0..3 and, bit for bit, none after (they
 * do not see it). gemma2-swa2 adds a global layer: it sees position 0's
 * changed K/V, so every position changes. */
static void check_sliding_window(pd_kv_dtype_t dt)
{
    const char *files[] = { "gemma2-swa1-f32.gguf", "gemma2-swa2-f32.gguf" };
    g_kv_dtype = dt;
    for (int k = 0; k < 2; k++) {
        fx_t f;
        if (fx_open(&f, files[k], 8, 64) != 0)
            fail();
        assert_int_equal(f.m->cfg.swa_window, 4);
        assert_true(f.m->layers[0].is_swa);
        if (k == 1)
            assert_false(f.m->layers[1].is_swa);
        const uint32_t V = f.m->cfg.vocab_size;
        float *a = malloc(sizeof(float) * 40 * V), *b = malloc(sizeof(float) * 40 * V);
        assert_true(a && b);
        eval_seq(&f, 17, a);
        eval_seq(&f, 1234, b);
        for (uint32_t p = 0; p < 40; p++) {
            bool same = memcmp(a + (size_t)p * V, b + (size_t)p * V, sizeof(float) * V) == 0;
            if (same != (k == 0 && p >= 4))
                fail_msg("%s (%s KV) position %u: logits %s", files[k], pd_kv_dtype_name(dt), p,
                         same ? "equal" : "differ");
        }
        free(a);
        free(b);
        fx_close(&f);
    }
    g_kv_dtype = PD_KV_F32;
}

static void test_sliding_window(void **state)
{
    (void)state;
    check_sliding_window(PD_KV_F32);
    check_sliding_window(PD_KV_F16);
}

/* phi3's LongRoPE: the long factors when the context exceeds the original
 * (128 in phi3-tiny), the short ones otherwise, as llama.cpp chooses by
 * n_ctx; the KV identity tells the two apart, the model identity does not
 * depend on it; a model without such factors keeps one identity. */
static void test_rope_factors(void **state)
{
    (void)state;
    char path[512];
    pd_err_t err = { 0 };
    pd_model_t *m = pd_model_load(model_path("phi3-tiny-f32.gguf", path, sizeof path), &err);
    assert_non_null(m);
    assert_int_equal(m->cfg.rope_ctx_orig, 128);
    assert_non_null(m->rope_long);
    assert_non_null(m->rope_short);
    assert_ptr_equal(pd_model_rope_factors(m, 256), m->rope_long);
    assert_ptr_equal(pd_model_rope_factors(m, 128), m->rope_short);
    assert_true(pd_model_kv_identity(m, 256) != pd_model_kv_identity(m, 128));
    assert_true(m->cfg.rope_mscale > 1.0f);
    pd_model_free(m);
    m = pd_model_load(model_path("llama3-tiny-f32.gguf", path, sizeof path), &err);
    assert_non_null(m);
    assert_non_null(m->rope_freqs);
    assert_ptr_equal(pd_model_rope_factors(m, 256), m->rope_freqs);
    assert_true(pd_model_kv_identity(m, 256) == m->identity);
    assert_true(m->rope_freqs[0] == 1.0f && m->rope_freqs[m->cfg.head_dim / 2 - 1] == 32.0f);
    pd_model_free(m);
}

static void test_batching_sgemm_f32(void **state)
{
    (void)state;
    g_invariant = false;
    check_batching("tiny-llama-spm-f32.gguf");
    check_batching("tiny-qwen2-bpe-f32.gguf");
    g_invariant = true;
}

/* The same without invariance for Q8_0 and Q4_0: the 123-row batch runs
 * the integer prefill kernel (pd_kern_qg_takes), a sequence alone the
 * skinny kernels or that kernel by its length. The two add the same block
 * integers in another order, but a last-bit difference can flip an
 * activation's Q8_0 rounding in the next product (1/127 of its block's
 * largest value), so the bound is looser than for float weights: measured
 * 0.0023 (Q8_0) and 0.0034 (Q4_0) of the logit scale with this kernel;
 * 0.0070 for Q8_0 with the dequantize + F32 path it replaced, which also
 * changed one seeded sample of 123. */
static void test_batching_prefill_quant(void **state)
{
    (void)state;
    g_invariant = false;
    g_rel_tol = 1e-2;
    check_batching("tiny-llama-spm-q8_0.gguf");
    check_batching("tiny-llama-spm-q4_0.gguf");
    g_rel_tol = 1e-4;
    g_invariant = true;
}

/* Batch invariance with an F16 KV cache, for float and quantized weights. */
/* Pure decode steps: one token of each of 16 sequences, F32 and F16 KV,
 * with GQA (group 2), a sliding window and a cap (gemma2-tiny). */
static void test_batching_decode(void **state)
{
    (void)state;
    const char *models[] = { "tiny-llama-spm-f32.gguf", "tiny-qwen2-bpe-f32.gguf",
                             "gemma2-tiny-f32.gguf" };
    for (int k = 0; k < 2; k++) {
        g_kv_dtype = k ? PD_KV_F16 : PD_KV_F32;
        for (size_t i = 0; i < sizeof models / sizeof *models; i++)
            check_batching_mode(models[i], true);
    }
    g_kv_dtype = PD_KV_F32;
}

static void test_batching_kv_f16(void **state)
{
    (void)state;
    g_kv_dtype = PD_KV_F16;
    check_batching("tiny-llama-spm-f32.gguf");
    check_batching("tiny-qwen2-bpe-f32.gguf");
    check_batching("tiny-llama-spm-f16.gguf");
    check_batching("tiny-llama-spm-q8_0.gguf");
    check_batching("gemma2-tiny-f32.gguf"); /* windows and Gemma 2's soft-cap */
    check_batching("gemma3-tiny-q4_k_m.gguf");
    g_kv_dtype = PD_KV_F32;
}

/* ====== The per-layer hook ====== */

typedef struct {
    fx_t *f;
    const int32_t *blocks;
    uint32_t n_blocks;
    uint32_t calls;           /* layers seen, in order */
    bool in_order, next_untouched;
    unsigned char *snap;      /* (n_layers, n_blocks, layer_bytes) each layer as its hook saw it */
} hook_ctx_t;

#define SENTINEL 0xa5

static void on_layer(void *ctx, uint32_t layer)
{
    hook_ctx_t *h = ctx;
    pd_kv_t *kv = h->f->kv;
    const uint32_t L = pd_kv_shape(kv)->n_layers;
    size_t lb = pd_kv_layer_bytes(kv);
    h->in_order = h->in_order && layer == h->calls;
    h->calls++;
    for (uint32_t b = 0; b < h->n_blocks; b++) {
        memcpy(h->snap + ((size_t)layer * h->n_blocks + b) * lb,
               pd_kv_block_layer(kv, h->blocks[b], layer), lb);
        if (layer + 1 < L) { /* the next layer's first K row: not yet written */
            const unsigned char *nx = pd_kv_block_layer(kv, h->blocks[b], layer + 1);
            for (size_t i = 0; i < 16; i++)
                h->next_untouched = h->next_untouched && nx[i] == SENTINEL;
        }
    }
}

static void check_hook(pd_kv_dtype_t dt)
{
    g_kv_dtype = dt;
    fx_t f;
    if (fx_open(&f, "tiny-llama-spm-f32.gguf", 8, 64) != 0)
        fail();
    g_kv_dtype = PD_KV_F32;
    const uint32_t n = 40, L = f.m->cfg.n_layers;
    int32_t tok[40], pos[40], sq[40], table[3] = { 5, 2, 7 };
    for (uint32_t i = 0; i < n; i++) {
        tok[i] = seq_tok(&f, 3, i);
        pos[i] = (int32_t)i;
        sq[i] = 0;
    }
    for (int b = 0; b < 3; b++)
        memset(pd_kv_block(f.kv, table[b]), SENTINEL, pd_kv_block_bytes(f.kv));
    size_t lb = pd_kv_layer_bytes(f.kv);
    hook_ctx_t h = { &f, table, 3, 0, true, true, malloc((size_t)L * 3 * lb) };
    assert_non_null(h.snap);
    const int32_t *tables[1] = { table };
    uint32_t nt[1] = { 3 };
    pd_batch_t b = { n, tok, pos, sq, NULL, 1, tables, nt };
    pd_forward_hooks_t hooks = { on_layer, &h };
    pd_err_t err = { 0 };
    assert_int_equal(pd_forward_hooked(f.e, &b, f.logits, &hooks, &err), 0);
    assert_int_equal(h.calls, L);
    assert_true(h.in_order);
    assert_true(h.next_untouched);
    /* What each hook saw of its layer is what the pass left there. */
    for (uint32_t l = 0; l < L; l++)
        for (uint32_t k = 0; k < 3; k++)
            if (memcmp(h.snap + ((size_t)l * 3 + k) * lb, pd_kv_block_layer(f.kv, table[k], l),
                       lb) != 0)
                fail_msg("layer %u block %u changed after its hook", l, k);
    /* Without hooks: the same cache and logits. */
    float *lg = malloc(sizeof(float) * f.m->cfg.vocab_size);
    memcpy(lg, f.logits, sizeof(float) * f.m->cfg.vocab_size);
    assert_int_equal(pd_forward(f.e, &b, f.logits, &err), 0);
    assert_memory_equal(lg, f.logits, sizeof(float) * f.m->cfg.vocab_size);
    free(lg);
    free(h.snap);
    fx_close(&f);
}

static void test_layer_hook(void **state)
{
    (void)state;
    check_hook(PD_KV_F32);
    check_hook(PD_KV_F16);
}

/* The same 40-token sequence through consecutive blocks and through
 * scrambled block ids gives bit-identical logits. */
static void test_block_table_scrambled(void **state)
{
    (void)state;
    fx_t f;
    if (fx_open(&f, "tiny-llama-spm-f32.gguf", 64, 64) != 0)
        fail();
    const uint32_t V = f.m->cfg.vocab_size, n = 40;
    int32_t tok[40], pos[40], sq[40];
    bool want[40];
    for (uint32_t i = 0; i < n; i++) {
        tok[i] = seq_tok(&f, 5, i);
        pos[i] = (int32_t)i;
        sq[i] = 0;
        want[i] = true;
    }
    int32_t straight[3] = { 0, 1, 2 }, scrambled[3] = { 61, 7, 33 };
    float *a = malloc(sizeof(float) * n * V);
    pd_err_t err = { 0 };
    const int32_t *t1[1] = { straight };
    uint32_t nt[1] = { 3 };
    pd_batch_t b = { n, tok, pos, sq, want, 1, t1, nt };
    assert_int_equal(pd_forward(f.e, &b, a, &err), 0);
    const int32_t *t2[1] = { scrambled };
    b.block_tables = t2;
    assert_int_equal(pd_forward(f.e, &b, f.logits, &err), 0);
    assert_memory_equal(a, f.logits, sizeof(float) * n * V);
    free(a);
    fx_close(&f);
}

static void test_bad_batch(void **state)
{
    (void)state;
    fx_t f;
    if (fx_open(&f, "tiny-llama-spm-f32.gguf", 8, 16) != 0)
        fail();
    int32_t tok[2] = { 1, 2 }, pos[2] = { 0, 1 }, sq[2] = { 0, 0 }, table[1] = { 0 };
    bool want[2] = { true, true };
    const int32_t *tables[1] = { table };
    uint32_t nt[1] = { 1 };
    pd_err_t err = { 0 };
    pd_batch_t b = { 2, tok, pos, sq, want, 1, tables, nt };
    tok[1] = (int32_t)f.m->cfg.vocab_size;
    assert_int_equal(pd_forward(f.e, &b, f.logits, &err), PD_EINVAL);
    assert_non_null(strstr(err.msg, "id"));
    tok[1] = 2;
    pos[1] = 16; /* needs a second block */
    assert_int_equal(pd_forward(f.e, &b, f.logits, &err), PD_EINVAL);
    assert_non_null(strstr(err.msg, "block table"));
    pos[1] = 1;
    table[0] = 8; /* not a block id */
    assert_int_equal(pd_forward(f.e, &b, f.logits, &err), PD_EINVAL);
    assert_non_null(strstr(err.msg, "invalid"));
    table[0] = 0;
    b.n_tokens = 17;
    assert_int_equal(pd_forward(f.e, &b, f.logits, &err), PD_EINVAL);
    assert_non_null(strstr(err.msg, "n_tokens"));
    fx_close(&f);
}


/* Prefix cache: prompt P (70 tokens) computed whole and committed; then P
 * again and P' (P's first 50 tokens, then its own) each computed on top of
 * the cached blocks, together in one batch with an unrelated sequence. The
 * hit rows' logits equal the miss's bit for bit. */
static void check_prefix_hit(const char *model)
{
    enum { N = 70, N2 = 60 };
    fx_t f;
    if (fx_open(&f, model, 64, 256) != 0)
        fail();
    const uint32_t V = f.m->cfg.vocab_size;
    pd_err_t err = { 0 };
    assert_int_equal(pd_kv_prefix_enable(f.kv, pd_kv_hash_root(f.m->identity, 16), NULL, 0, &err), 0);
    int32_t p1[N], p2[N2], pos[N], sq[N] = { 0 };
    bool want[N];
    for (uint32_t i = 0; i < N; i++) {
        p1[i] = seq_tok(&f, 3, i);
        pos[i] = (int32_t)i;
        want[i] = true;
    }
    memcpy(p2, p1, 50 * sizeof *p2);
    for (uint32_t i = 50; i < N2; i++)
        p2[i] = seq_tok(&f, 9, i);
    /* Misses: each prompt whole, alone; p1's blocks are cached after. */
    float *miss1 = malloc(sizeof(float) * N * V), *miss2 = malloc(sizeof(float) * N2 * V);
    assert_non_null(miss1);
    assert_non_null(miss2);
    const int32_t *pr[2] = { p1, p2 };
    const uint32_t pn[2] = { N, N2 };
    float *miss[2] = { miss1, miss2 };
    for (int k = 1; k >= 0; k--) {
        pd_kv_seq_t seq = { 0 };
        assert_int_equal(pd_kv_seq_reserve(f.kv, &seq, pn[k]), 0);
        const int32_t *tables[1] = { seq.blocks };
        uint32_t nt[1] = { seq.n_blocks };
        pd_batch_t b = { pn[k], pr[k], pos, sq, want, 1, tables, nt };
        assert_int_equal(pd_forward(f.e, &b, miss[k], &err), 0);
        if (k == 0)
            pd_kv_prefix_commit(f.kv, &seq, pr[k], pn[k]);
        pd_kv_seq_release(f.kv, &seq);
    }
    /* Hits: p1 and p2 on p1's cached blocks, in one batch with 20 tokens of
     * another sequence. */
    pd_kv_seq_t s1 = { 0 }, s2 = { 0 }, s3 = { 0 };
    uint32_t h1 = pd_kv_prefix_match(f.kv, &s1, p1, N), h2 = pd_kv_prefix_match(f.kv, &s2, p2, N2);
    assert_int_equal(h1, 64);
    assert_int_equal(h2, 48);
    assert_int_equal(pd_kv_seq_reserve(f.kv, &s1, N), 0);
    assert_int_equal(pd_kv_seq_reserve(f.kv, &s2, N2), 0);
    assert_int_equal(pd_kv_seq_reserve(f.kv, &s3, 20), 0);
    int32_t tok[N + N2 + 20], bpos[N + N2 + 20], bsq[N + N2 + 20];
    bool bwant[N + N2 + 20];
    uint32_t n = 0;
    const uint32_t from[3] = { h1, h2, 0 }, to[3] = { N, N2, 20 };
    for (int s = 0; s < 3; s++)
        for (uint32_t i = from[s]; i < to[s]; i++, n++) {
            tok[n] = s < 2 ? pr[s][i] : seq_tok(&f, 11, i);
            bpos[n] = (int32_t)i;
            bsq[n] = s;
            bwant[n] = s < 2;
        }
    const int32_t *tables[3] = { s1.blocks, s2.blocks, s3.blocks };
    uint32_t nt[3] = { s1.n_blocks, s2.n_blocks, s3.n_blocks };
    pd_batch_t b = { n, tok, bpos, bsq, bwant, 3, tables, nt };
    assert_int_equal(pd_forward(f.e, &b, f.logits, &err), 0);
    assert_memory_equal(f.logits, miss1 + (size_t)h1 * V, sizeof(float) * (N - h1) * V);
    assert_memory_equal(f.logits + (size_t)(N - h1) * V, miss2 + (size_t)h2 * V,
                        sizeof(float) * (N2 - h2) * V);
    print_message("%s (KV %s): prefix hits of %u and %u tokens, suffix logits bit-identical\n",
                  model, pd_kv_dtype_name(g_kv_dtype), h1, h2);
    pd_kv_seq_release(f.kv, &s1);
    pd_kv_seq_release(f.kv, &s2);
    pd_kv_seq_release(f.kv, &s3);
    free(miss1);
    free(miss2);
    fx_close(&f);
}

static void test_prefix_hit_llama(void **state) { (void)state; check_prefix_hit("tiny-llama-spm-f32.gguf"); }
static void test_prefix_hit_qwen2(void **state) { (void)state; check_prefix_hit("tiny-qwen2-bpe-f32.gguf"); }
static void test_prefix_hit_q8_0(void **state) { (void)state; check_prefix_hit("tiny-llama-spm-q8_0.gguf"); }

/* The same on an F16 KV cache (half the bytes per block: the cached blocks
 * are reused as they are), Gemma 2's windows included. */
static void test_prefix_hit_kv_f16(void **state)
{
    (void)state;
    g_kv_dtype = PD_KV_F16;
    check_prefix_hit("tiny-llama-spm-f32.gguf");
    check_prefix_hit("gemma2-tiny-f32.gguf");
    g_kv_dtype = PD_KV_F32;
}

/* Logits of a PF_TOKENS-token prefill chunk (every row) on `threads`
 * threads; invariance as g_invariant. */
#define PF_TOKENS 200
static void prefill_logits(const char *model, int threads, float *out, size_t *n_out)
{
    fx_t f;
    g_threads = threads;
    const int rc = fx_open(&f, model, 64, PF_TOKENS);
    g_threads = 2;
    if (rc != 0)
        fail();
    const uint32_t V = f.m->cfg.vocab_size;
    int32_t tok[PF_TOKENS];
    for (uint32_t i = 0; i < PF_TOKENS; i++)
        tok[i] = (int32_t)((i * 2654435761u + 7u) % V);
    eval_one_seq(&f, tok, PF_TOKENS, out);
    *n_out = (size_t)PF_TOKENS * V;
    fx_close(&f);
}

static void test_threads_bitwise(void **state)
{
    (void)state;
    static const char *models[] = { "tiny-llama-spm-f32.gguf", "tiny-llama-spm-f16.gguf",
                                    "tiny-llama-spm-q8_0.gguf", "tiny-llama-spm-q4_0.gguf",
                                    "tiny-k-llama-spm-mix-q4_k_m.gguf", "qwen3-tiny-f32.gguf" };
    const size_t cap = (size_t)PF_TOKENS * 65536;
    float *one = malloc(sizeof(float) * cap), *many = malloc(sizeof(float) * cap);
    assert_non_null(one);
    assert_non_null(many);
    for (int inv = 0; inv < 2; inv++)
        for (size_t m = 0; m < sizeof models / sizeof models[0]; m++) {
            g_invariant = inv;
            size_t n1 = 0, n = 0;
            prefill_logits(models[m], 1, one, &n1);
            assert_true(n1 <= cap);
            for (int t = 2; t <= 3; t++) {
                prefill_logits(models[m], t, many, &n);
                assert_int_equal(n, n1);
                if (memcmp(one, many, sizeof(float) * n) != 0) {
                    print_error("%s (invariance %s): %d threads differ from 1\n", models[m],
                                inv ? "on" : "off", t);
                    g_invariant = true;
                    fail();
                }
            }
        }
    g_invariant = true;
    free(many);
    free(one);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batching_llama),
        cmocka_unit_test(test_batching_qwen2),
        cmocka_unit_test(test_batching_tied),
        cmocka_unit_test(test_batching_f16),
        cmocka_unit_test(test_batching_q8_0),
        cmocka_unit_test(test_batching_q4_0),
        cmocka_unit_test(test_batching_prefill_quant),
        cmocka_unit_test(test_batching_kquants),
        cmocka_unit_test(test_batching_archs),
        cmocka_unit_test(test_sliding_window),
        cmocka_unit_test(test_rope_factors),
        cmocka_unit_test(test_batching_sgemm_f32),
        cmocka_unit_test(test_batching_kv_f16),
        cmocka_unit_test(test_batching_decode),
        cmocka_unit_test(test_layer_hook),
        cmocka_unit_test(test_block_table_scrambled),
        cmocka_unit_test(test_prefix_hit_llama),
        cmocka_unit_test(test_prefix_hit_qwen2),
        cmocka_unit_test(test_prefix_hit_q8_0),
        cmocka_unit_test(test_prefix_hit_kv_f16),
        cmocka_unit_test(test_threads_bitwise),
        cmocka_unit_test(test_bad_batch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
