/* forward.c -- the transformer forward pass over a flattened batch.
 *
 * Read it top to bottom like the paper: embed, then per layer
 * (rmsnorm -> q,k,v -> rope -> write K/V into the paged cache -> attention
 * through the block table -> output projection -> residual; rmsnorm ->
 * SwiGLU FFN -> residual), then the final norm and the output projection
 * for the rows whose logits are wanted. Linear layers go through
 * pd_matmul, which picks our skinny kernels for few rows and OpenBLAS
 * sgemm for many. All buffers are allocated once in pd_engine_new.
 *
 * What the other architectures change (model.h) enters as small steps:
 * Q/K head norms and the Q scale beside rope (qkv_post_task), the sliding
 * window and soft-capping in attention (pd_attn_shape_t), post-norms
 * before each residual add, GeGLU for SwiGLU, the embedding scale and the
 * final soft-cap in pd_forward, and per-layer rope tables (rope_cache:
 * frequency factors, a sliding-window layer's own base).
 */
#include "engine/forward.h"

#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/kernels.h"
#include "engine/kernels_gemm.h"
#include "base/log.h"

/* Attention work is split into this many interleaved chunks per thread. */
#define PD_ATTN_CHUNKS_PER_THREAD 4
/* Queries (tokens x grouped heads) per attention call: they share every
 * K/V block load; each needs a row of max_ctx scores in the scratch. */
#define PD_ATTN_TILE_Q 32
#define PD_ALIGN 64

struct pd_engine {
    const pd_model_t *model;
    pd_kv_t *kv;
    pd_pool_t *pool;
    pd_engine_opts_t opts;
    uint32_t n_attn_chunks;
    /* Run state, sized for opts.max_batch_tokens (T) rows. */
    float *x;       /* (T, dim) residual stream */
    float *xn;      /* (T, max(dim, q_dim)) normed input of a sublayer */
    float *q;       /* (T, q_dim) */
    float *k;       /* (T, kv_dim) */
    float *v;       /* (T, kv_dim) */
    float *att;     /* (T, q_dim) attention output */
    float *tmp;     /* (T, dim) projection output before the residual add */
    float *gate;    /* (T, ffn_dim) */
    float *up;      /* (T, ffn_dim) */
    float *rope;    /* (T, head_dim) cos/sin pairs per token */
    float *rope_swa;/* (T, head_dim) the same for sliding-window layers when
                       their rope differs (gemma), else NULL */
    const float *rope_ff; /* (head_dim / 2) rope frequency factors, or NULL */
    float *xr;      /* (T, max(dim, q_dim, ffn_dim)) activations rounded to the
                       weight type's activation format (see round_activations) */
    void *qrow;     /* (T, Q8_K row of max_in) activations quantized as ggml does */
    float *attn_scratch;  /* (n_attn_chunks, attn_scratch_floats) pd_kern_attn scratch */
    size_t attn_scratch_floats;
    const void **attn_blocks; /* (n_attn_chunks, 2, max_seq_blocks) K, V block pointers */
    uint32_t max_seq_blocks;   /* blocks of a max_ctx sequence */
    uint32_t *tiles;      /* (T + 1) first token of each attention tile, then T */
    uint32_t n_tiles;
    uint32_t attn_heads;  /* KV heads per attention unit (make_tiles) */
    void *scratch;  /* pd_matmul scratch */
    size_t scratch_bytes;
    int32_t *rows;  /* (T) batch rows whose logits are wanted */
};

void pd_engine_opts_default(pd_engine_opts_t *o)
{
    o->max_batch_tokens = 512;
    o->max_ctx = 0;
    o->n_threads = 1;
    o->skinny_max_rows = PD_SKINNY_DEFAULT_MAX; /* measured crossover, see kernels.h */
    o->batch_invariant = true;
    o->batch_invariant_quant = false;
}

static void *alloc_aligned(size_t n_bytes)
{
    void *p = NULL;
    if (n_bytes == 0)
        n_bytes = PD_ALIGN;
    n_bytes = (n_bytes + PD_ALIGN - 1) / PD_ALIGN * PD_ALIGN;
    if (posix_memalign(&p, PD_ALIGN, n_bytes) != 0)
        return NULL;
    return p;
}

static size_t mat_scratch(const pd_mat_t *w, uint32_t rows, size_t cur)
{
    size_t n = pd_matmul_scratch_bytes(w, rows);
    return n > cur ? n : cur;
}

pd_engine_t *pd_engine_new(const pd_model_t *m, pd_kv_t *kv, const pd_engine_opts_t *opts,
                           pd_err_t *err)
{
    const pd_model_config_t *c = &m->cfg;
    const pd_kv_shape_t *ks = pd_kv_shape(kv);
    if (ks->n_layers != c->n_layers || ks->n_kv_heads != c->n_kv_heads ||
        ks->head_dim != c->head_dim) {
        pd_err_set(err, PD_EINVAL, "engine: KV cache shape (layers %u, kv_heads %u, head_dim %u) "
                   "does not match the model (%u, %u, %u)", ks->n_layers, ks->n_kv_heads,
                   ks->head_dim, c->n_layers, c->n_kv_heads, c->head_dim);
        return NULL;
    }
    if (opts->max_batch_tokens == 0 || opts->max_batch_tokens > (1u << 20) ||
        opts->n_threads < 1 || opts->n_threads > 256) {
        pd_err_set(err, PD_EINVAL, "engine: max_batch_tokens %u / threads %d out of range",
                   opts->max_batch_tokens, opts->n_threads);
        return NULL;
    }
    const bool f16 = ks->dtype == PD_KV_F16;
    const pd_attn_shape_t ash0 = { c->head_dim, ks->block_size, c->n_kv_heads * c->head_dim, 1.0f,
                                   1, f16, 0, 0.0f };
    if (!pd_kern_attn_supported(&ash0)) {
        pd_err_set(err, PD_EINVAL, "engine: head_dim %u / KV block_size %u: attention supports "
                   "at most %u / %u", c->head_dim, ks->block_size, PD_ATTN_MAX_HEAD_DIM,
                   PD_ATTN_MAX_BLOCK);
        return NULL;
    }
    pd_engine_t *e = calloc(1, sizeof *e);
    if (e == NULL) {
        pd_err_set(err, PD_ENOMEM, "engine: out of memory");
        return NULL;
    }
    e->model = m;
    e->kv = kv;
    e->opts = *opts;
    if (e->opts.max_ctx == 0 || e->opts.max_ctx > c->ctx_len)
        e->opts.max_ctx = c->ctx_len;
    if (e->opts.skinny_max_rows > PD_SKINNY_MAX_ROWS)
        e->opts.skinny_max_rows = PD_SKINNY_MAX_ROWS;
    size_t T = e->opts.max_batch_tokens;
    size_t q_dim = (size_t)c->n_heads * c->head_dim, kv_dim = (size_t)c->n_kv_heads * c->head_dim;
    size_t xn_dim = q_dim > c->dim ? q_dim : c->dim;
    e->pool = pd_pool_new(opts->n_threads);
    e->n_attn_chunks = (uint32_t)opts->n_threads * PD_ATTN_CHUNKS_PER_THREAD;
    e->x = alloc_aligned(sizeof(float) * T * c->dim);
    e->xn = alloc_aligned(sizeof(float) * T * xn_dim);
    e->q = alloc_aligned(sizeof(float) * T * q_dim);
    e->k = alloc_aligned(sizeof(float) * T * kv_dim);
    e->v = alloc_aligned(sizeof(float) * T * kv_dim);
    e->att = alloc_aligned(sizeof(float) * T * q_dim);
    e->tmp = alloc_aligned(sizeof(float) * T * c->dim);
    e->gate = alloc_aligned(sizeof(float) * T * c->ffn_dim);
    e->up = alloc_aligned(sizeof(float) * T * c->ffn_dim);
    e->rope = alloc_aligned(sizeof(float) * T * c->head_dim);
    e->rope_ff = pd_model_rope_factors(m, e->opts.max_ctx);
    bool own_swa_rope = c->swa_window != 0 &&
                        (c->rope_base_swa != c->rope_base || c->rope_scale_swa != c->rope_scale);
    e->rope_swa = own_swa_rope ? alloc_aligned(sizeof(float) * T * c->head_dim) : NULL;
    size_t max_in = xn_dim > c->ffn_dim ? xn_dim : c->ffn_dim;
    e->xr = alloc_aligned(sizeof(float) * T * max_in);
    /* Q8_K rows (1.14 bytes per element, rounded up to 256) bound Q8_0's */
    e->qrow = alloc_aligned(T * pd_ggml_row_bytes(PD_GGML_TYPE_Q8_K, (max_in + 255) / 256 * 256) + 64);
    const pd_attn_shape_t ash = { c->head_dim, ks->block_size, (uint32_t)kv_dim, 1.0f,
                                  e->opts.max_ctx, f16, 0, 0.0f };
    e->attn_scratch_floats = (pd_kern_attn_scratch_floats(&ash, PD_ATTN_TILE_Q) + 15) / 16 * 16;
    e->attn_scratch = alloc_aligned(sizeof(float) * e->n_attn_chunks * e->attn_scratch_floats);
    e->max_seq_blocks = (e->opts.max_ctx + ks->block_size - 1) / ks->block_size;
    e->attn_blocks = alloc_aligned(sizeof(void *) * e->n_attn_chunks * 2 * e->max_seq_blocks);
    e->tiles = alloc_aligned(sizeof(uint32_t) * (T + 1));
    e->rows = alloc_aligned(sizeof(int32_t) * T);
    size_t s = 0;
    for (uint32_t l = 0; l < c->n_layers; l++) {
        const pd_layer_t *L = &m->layers[l];
        s = mat_scratch(&L->wq, (uint32_t)T, s);
        s = mat_scratch(&L->wk, (uint32_t)T, s);
        s = mat_scratch(&L->wv, (uint32_t)T, s);
        s = mat_scratch(&L->wo, (uint32_t)T, s);
        s = mat_scratch(&L->w_gate, (uint32_t)T, s);
        s = mat_scratch(&L->w_up, (uint32_t)T, s);
        s = mat_scratch(&L->w_down, (uint32_t)T, s);
    }
    s = mat_scratch(&m->output, (uint32_t)T, s);
    e->scratch_bytes = s;
    e->scratch = alloc_aligned(s);
    if (e->pool == NULL || !e->x || !e->xn || !e->q || !e->k || !e->v || !e->att || !e->tmp ||
        !e->gate || !e->up || !e->rope || !e->xr || !e->qrow || !e->attn_scratch || !e->attn_blocks || !e->tiles || !e->rows ||
        !e->scratch || (own_swa_rope && !e->rope_swa)) {
        pd_err_set(err, PD_ENOMEM, "engine: out of memory for run state (%zu batch tokens)", T);
        pd_engine_free(e);
        return NULL;
    }
    openblas_set_num_threads(opts->n_threads);
    return e;
}

void pd_engine_free(pd_engine_t *e)
{
    if (e == NULL)
        return;
    pd_pool_free(e->pool);
    free(e->x);
    free(e->xn);
    free(e->q);
    free(e->k);
    free(e->v);
    free(e->att);
    free(e->tmp);
    free(e->gate);
    free(e->up);
    free(e->rope);
    free(e->rope_swa);
    free(e->xr);
    free(e->qrow);
    free(e->attn_scratch);
    free((void *)e->attn_blocks);
    free(e->tiles);
    free(e->rows);
    free(e->scratch);
    free(e);
}

const pd_model_t *pd_engine_model(const pd_engine_t *e) { return e->model; }
pd_kv_t *pd_engine_kv(pd_engine_t *e) { return e->kv; }
pd_pool_t *pd_engine_pool(pd_engine_t *e) { return e->pool; }

/* ====== Batch validation ====== */

static int validate_batch(const pd_engine_t *e, const pd_batch_t *b, pd_err_t *err)
{
    const pd_model_config_t *c = &e->model->cfg;
    uint32_t bs = pd_kv_shape(e->kv)->block_size;
    if (b->n_tokens == 0 || b->n_tokens > e->opts.max_batch_tokens)
        return pd_err_set(err, PD_EINVAL, "forward: n_tokens %u not in [1, %u]", b->n_tokens,
                          e->opts.max_batch_tokens);
    if (b->n_seqs == 0)
        return pd_err_set(err, PD_EINVAL, "forward: n_seqs is 0");
    for (uint32_t t = 0; t < b->n_tokens; t++) {
        if (b->tokens[t] < 0 || (uint32_t)b->tokens[t] >= c->vocab_size)
            return pd_err_set(err, PD_EINVAL, "forward: token %u id %d out of range [0, %u)", t,
                              b->tokens[t], c->vocab_size);
        if (b->pos[t] < 0 || (uint32_t)b->pos[t] >= e->opts.max_ctx)
            return pd_err_set(err, PD_EINVAL, "forward: token %u position %d out of range "
                              "[0, %u)", t, b->pos[t], e->opts.max_ctx);
        if (b->seq[t] < 0 || (uint32_t)b->seq[t] >= b->n_seqs)
            return pd_err_set(err, PD_EINVAL, "forward: token %u sequence %d out of range", t,
                              b->seq[t]);
        uint32_t s = (uint32_t)b->seq[t];
        uint32_t need = (uint32_t)b->pos[t] / bs + 1;
        if (b->n_table[s] < need)
            return pd_err_set(err, PD_EINVAL, "forward: sequence %u block table has %u blocks, "
                              "position %d needs %u", s, b->n_table[s], b->pos[t], need);
    }
    for (uint32_t s = 0; s < b->n_seqs; s++)
        for (uint32_t i = 0; i < b->n_table[s]; i++)
            if (!pd_kv_valid_id(e->kv, b->block_tables[s][i]))
                return pd_err_set(err, PD_EINVAL, "forward: sequence %u block %u has invalid "
                                  "id %d", s, i, b->block_tables[s][i]);
    return 0;
}

/* ====== Building blocks ====== */

/* RoPE cos/sin per token for freq base `base` and linear scale `scale`,
 * computed as ggml does (theta *= theta_scale; each angle divided by its
 * frequency factor ff when there are factors; cos and sin times mscale). */
static void rope_cache(const pd_model_config_t *c, const pd_batch_t *b, float base, float scale,
                       const float *ff, float *cache)
{
    const float theta_scale = powf(base, -2.0f / (float)c->head_dim);
    const float freq_scale = 1.0f / scale;
    const float mscale = c->rope_mscale;
    for (uint32_t t = 0; t < b->n_tokens; t++) {
        float *cs = cache + (size_t)t * c->head_dim;
        float theta = (float)b->pos[t];
        for (uint32_t i = 0; i < c->head_dim; i += 2) {
            float th = freq_scale * (ff ? theta / ff[i / 2] : theta);
            cs[i] = cosf(th) * mscale;
            cs[i + 1] = sinf(th) * mscale;
            theta *= theta_scale;
        }
    }
}

/* Per-head RMSNorm of n_heads heads of one token in place (Q/K norms). */
static void head_norm(float *x, uint32_t n_heads, uint32_t hd, const float *w, float eps)
{
    for (uint32_t h = 0; h < n_heads; h++)
        pd_kern_rmsnorm(x + (size_t)h * hd, x + (size_t)h * hd, w, hd, eps);
}

static void scale_vec(float *x, size_t n, float s)
{
    for (size_t i = 0; i < n; i++)
        x[i] *= s;
}

/* Rotates n_heads heads of one token in place. Normal mode rotates pairs
 * (x[2i], x[2i+1]); NeoX mode rotates (x[i], x[i + d/2]). */
static void rope_apply(float *restrict x, uint32_t n_heads, uint32_t hd,
                       const float *restrict cs, bool neox)
{
    /* one loop per mode, x and cs not aliased: the compiler vectorizes
     * the pairs (same operations per element, so the same bits) */
    for (uint32_t h = 0; h < n_heads; h++) {
        float *restrict v = x + (size_t)h * hd;
        if (neox) {
            for (uint32_t i = 0; i < hd / 2; i++) {
                const float c0 = cs[2 * i], s0 = cs[2 * i + 1];
                const float x0 = v[i], x1 = v[i + hd / 2];
                v[i] = x0 * c0 - x1 * s0;
                v[i + hd / 2] = x0 * s0 + x1 * c0;
            }
            continue;
        }
        for (uint32_t i = 0; i < hd; i += 2) {
            const float c0 = cs[i], s0 = cs[i + 1];
            const float x0 = v[i], x1 = v[i + 1];
            v[i] = x0 * c0 - x1 * s0;
            v[i + 1] = x0 * s0 + x1 * c0;
        }
    }
}

typedef struct {
    pd_engine_t *e;
    const pd_batch_t *b;
    uint32_t layer;
    const float *rope;      /* (T, head_dim) this layer's cos/sin table */
} layer_ctx_t;

/* Per token: bias, rope, and the K/V write into the paged cache (rounded
 * to F16, as ggml's cpy into an F16 cache rounds, when the cache is F16). */
static void qkv_post_task(void *arg, int i, int n)
{
    layer_ctx_t *lc = arg;
    pd_engine_t *e = lc->e;
    const pd_batch_t *b = lc->b;
    const pd_model_config_t *c = &e->model->cfg;
    const pd_layer_t *L = &e->model->layers[lc->layer];
    uint32_t q_dim = c->n_heads * c->head_dim, kv_dim = c->n_kv_heads * c->head_dim;
    uint32_t bs = pd_kv_shape(e->kv)->block_size;
    for (uint32_t t = (uint32_t)i; t < b->n_tokens; t += (uint32_t)n) {
        float *q = e->q + (size_t)t * q_dim, *k = e->k + (size_t)t * kv_dim;
        float *v = e->v + (size_t)t * kv_dim;
        if (L->bq) {
            pd_kern_axpy_f32(q, 1.0f, L->bq, q_dim);
            pd_kern_axpy_f32(k, 1.0f, L->bk, kv_dim);
            pd_kern_axpy_f32(v, 1.0f, L->bv, kv_dim);
        }
        if (L->q_norm) {
            head_norm(q, c->n_heads, c->head_dim, L->q_norm, c->norm_eps);
            head_norm(k, c->n_kv_heads, c->head_dim, L->k_norm, c->norm_eps);
        }
        const float *cs = lc->rope + (size_t)t * c->head_dim;
        rope_apply(q, c->n_heads, c->head_dim, cs, c->rope_neox);
        rope_apply(k, c->n_kv_heads, c->head_dim, cs, c->rope_neox);
        if (c->q_scale != 0.0f)
            scale_vec(q, q_dim, c->q_scale);
        uint32_t pos = (uint32_t)b->pos[t];
        int32_t blk = b->block_tables[b->seq[t]][pos / bs];
        size_t off = (size_t)(pos % bs) * kv_dim;
        if (pd_kv_dtype(e->kv) == PD_KV_F16) {
            pd_kern_fp32_to_fp16((uint16_t *)pd_kv_k(e->kv, blk, lc->layer) + off, k, kv_dim);
            pd_kern_fp32_to_fp16((uint16_t *)pd_kv_v(e->kv, blk, lc->layer) + off, v, kv_dim);
        } else {
            memcpy((float *)pd_kv_k(e->kv, blk, lc->layer) + off, k, sizeof(float) * kv_dim);
            memcpy((float *)pd_kv_v(e->kv, blk, lc->layer) + off, v, sizeof(float) * kv_dim);
        }
    }
}

/* Attention, one work unit per (tile, e->attn_heads KV heads): a tile is
 * a run of consecutive batch tokens of one sequence (one token in a decode
 * batch, up to PD_ATTN_TILE_Q / group tokens of a prefill chunk), and the
 * queries of a KV head are those tokens' heads that share it.
 * pd_kern_attn reads each K/V block of the sequence once for all of them;
 * with several KV heads per unit (decode: make_tiles), one
 * pd_kern_attn_heads call reads every head's rows of a block as one run.
 * Units i, i+n, i+2n... go to task i, which owns scratch i. A token's
 * result depends neither on its tile nor on the heads it is called with
 * (see pd_kern_attn, pd_kern_attn_heads), so tiling is free to follow the
 * batch. */
static void attention_task(void *arg, int i, int n)
{
    layer_ctx_t *lc = arg;
    pd_engine_t *e = lc->e;
    const pd_batch_t *b = lc->b;
    const pd_model_config_t *c = &e->model->cfg;
    const uint32_t hd = c->head_dim, q_dim = c->n_heads * hd;
    const uint32_t group = c->n_heads / c->n_kv_heads, hg = e->attn_heads;
    const pd_kv_shape_t *ks = pd_kv_shape(e->kv);
    const bool f16 = ks->dtype == PD_KV_F16;
    const pd_layer_t *L = &e->model->layers[lc->layer];
    /* scores scaled here unless Q was (cfg.q_scale); a sliding-window
     * layer's window; Gemma 2's cap */
    const pd_attn_shape_t sh = { hd, ks->block_size, c->n_kv_heads * hd,
                                 c->q_scale != 0.0f ? 1.0f : 1.0f / sqrtf((float)hd),
                                 e->opts.max_ctx, f16, L->is_swa ? c->swa_window : 0,
                                 c->attn_softcap };
    const size_t elem = f16 ? 2 : 4;
    float *scratch = e->attn_scratch + (size_t)i * e->attn_scratch_floats;
    const void **kb = e->attn_blocks + (size_t)i * 2 * e->max_seq_blocks;
    const void **vb = kb + e->max_seq_blocks;
    const float *qp[PD_ATTN_TILE_Q];
    float *op[PD_ATTN_TILE_Q];
    uint32_t np[PD_ATTN_TILE_Q];
    const uint32_t n_hgroups = (c->n_kv_heads + hg - 1) / hg, n_units = e->n_tiles * n_hgroups;
    for (uint32_t u = (uint32_t)i; u < n_units; u += (uint32_t)n) {
        const uint32_t tile = u / n_hgroups, h0 = u % n_hgroups * hg;
        const uint32_t h1 = h0 + hg < c->n_kv_heads ? h0 + hg : c->n_kv_heads;
        const uint32_t t0 = e->tiles[tile], t1 = e->tiles[tile + 1], nq = (t1 - t0) * group;
        const int32_t *table = b->block_tables[b->seq[t0]];
        const uint32_t n_blocks = ((uint32_t)b->pos[t1 - 1] + ks->block_size) / ks->block_size;
        for (uint32_t q = 0; q < nq; q++) /* each token's, for each of its heads */
            np[q] = (uint32_t)b->pos[t0 + q / group] + 1;
        /* a tile's heads together when make_tiles chose so, else one by one */
        const uint32_t step = hg > 1 ? h1 - h0 : 1;
        for (uint32_t h = h0; h < h1; h += step) {
            for (uint32_t j = 0; j < n_blocks; j++) {
                kb[j] = (const char *)pd_kv_k(e->kv, table[j], lc->layer) + (size_t)h * hd * elem;
                vb[j] = (const char *)pd_kv_v(e->kv, table[j], lc->layer) + (size_t)h * hd * elem;
            }
            /* queries head-major: head h's, then head h + 1's */
            uint32_t k = 0;
            for (uint32_t hh = h; hh < h + step; hh++)
                for (uint32_t t = t0; t < t1; t++)
                    for (uint32_t g = 0; g < group; g++, k++) {
                        const size_t off = (size_t)t * q_dim + (size_t)(hh * group + g) * hd;
                        qp[k] = e->q + off;
                        op[k] = e->att + off;
                    }
            if (step > 1)
                pd_kern_attn_heads(&sh, step, kb, vb, nq, qp, np, op, scratch);
            else
                pd_kern_attn(&sh, kb, vb, nq, qp, np, op, scratch);
        }
    }
}

/* Splits the batch into attention tiles (see attention_task), and chooses
 * the KV heads per attention unit: all of a tile's (up to
 * PD_ATTN_TILE_Q queries), when every tile has few enough queries per KV
 * head for pd_kern_attn_heads to give pd_kern_attn's bits, and fewer
 * while that leaves fewer units than attention chunks (threads). */
static void make_tiles(pd_engine_t *e, const pd_batch_t *b)
{
    const pd_model_config_t *c = &e->model->cfg;
    uint32_t group = c->n_heads / c->n_kv_heads;
    uint32_t max_tok = group >= PD_ATTN_TILE_Q ? 1 : PD_ATTN_TILE_Q / group;
    uint32_t max_q = 0; /* queries per KV head in the largest tile */
    e->n_tiles = 0;
    for (uint32_t t = 0; t < b->n_tokens; t++) {
        bool start = t == 0 || b->seq[t] != b->seq[t - 1] ||
                     t - e->tiles[e->n_tiles - 1] >= max_tok;
        if (start)
            e->tiles[e->n_tiles++] = t;
        const uint32_t q = (t - e->tiles[e->n_tiles - 1] + 1) * group;
        max_q = q > max_q ? q : max_q;
    }
    e->tiles[e->n_tiles] = b->n_tokens;
    const pd_attn_shape_t sh = { .head_dim = c->head_dim };
    e->attn_heads = 1;
    if (e->n_tiles > 0 && pd_kern_attn_heads_supported(&sh, max_q)) {
        const uint32_t per_tile = (e->n_attn_chunks + e->n_tiles - 1) / e->n_tiles;
        const uint32_t parts = per_tile < c->n_kv_heads ? per_tile : c->n_kv_heads;
        const uint32_t hg = (c->n_kv_heads + parts - 1) / parts, cap = PD_ATTN_TILE_Q / max_q;
        e->attn_heads = hg < cap ? hg : cap > 0 ? cap : 1;
    }
}

typedef struct {
    float *out;
    const float *x;
    const float *g;
    uint32_t dim;
    size_t stride;
    uint32_t n_rows;
    float eps;
    const int32_t *rows; /* NULL: row r; else gather rows[r] */
} norm_ctx_t;

static void norm_task(void *arg, int i, int n)
{
    norm_ctx_t *nc = arg;
    for (uint32_t r = (uint32_t)i; r < nc->n_rows; r += (uint32_t)n) {
        uint32_t src = nc->rows ? (uint32_t)nc->rows[r] : r;
        pd_kern_rmsnorm(nc->out + (size_t)r * nc->dim, nc->x + (size_t)src * nc->stride, nc->g,
                        nc->dim, nc->eps);
    }
}

static void rmsnorm_rows(pd_engine_t *e, float *out, const float *x, const float *g,
                         uint32_t n_rows, const int32_t *rows)
{
    const pd_model_config_t *c = &e->model->cfg;
    norm_ctx_t nc = { out, x, g, c->dim, c->dim, n_rows, c->norm_eps, rows };
    pd_pool_run(n_rows >= 8 ? e->pool : NULL, norm_task, &nc, n_rows >= 8 ? pd_pool_n_threads(e->pool) : 1);
}

typedef enum {
    EW_ADD,    /* a += b */
    EW_SWIGLU, /* a = silu(a) * b */
    EW_GEGLU,  /* a = gelu(a) * b */
} ew_op_t;

/* a[0..n) op= b[0..n) */
static void ew_apply(ew_op_t op, float *a, const float *b, uint32_t n)
{
    if (op == EW_SWIGLU)
        pd_kern_swiglu(a, b, n);
    else if (op == EW_GEGLU)
        pd_kern_geglu(a, b, n);
    else
        pd_kern_axpy_f32(a, 1.0f, b, n);
}

typedef struct {
    float *a;
    const float *b;
    size_t n;
    ew_op_t op;
} ew_ctx_t;

static void ew_task(void *arg, int i, int n)
{
    ew_ctx_t *c = arg;
    size_t chunk = (c->n + (size_t)n - 1) / (size_t)n;
    size_t lo = chunk * (size_t)i, hi = lo + chunk > c->n ? c->n : lo + chunk;
    if (lo >= hi)
        return;
    ew_apply(c->op, c->a + lo, c->b + lo, (uint32_t)(hi - lo));
}

static void elementwise(pd_engine_t *e, float *a, const float *b, size_t n, ew_op_t op)
{
    ew_ctx_t c = { a, b, n, op };
    int tasks = n >= 16384 ? pd_pool_n_threads(e->pool) : 1;
    pd_pool_run(tasks > 1 ? e->pool : NULL, ew_task, &c, tasks);
}

typedef struct {
    pd_ggml_type_t wt;
    const float *x;  /* (n_rows, n_in) */
    uint32_t n_rows, n_in;
    uint8_t *qrow;   /* the rows quantized (pd_kern_xq_bytes each) */
    float *xr;       /* (n_rows, n_in) the result */
} round_ctx_t;

/* Rows [n_rows * i / n, n_rows * (i + 1) / n): each row is rounded on its
 * own, so the split changes no bit. */
static void round_task(void *arg, int i, int n)
{
    const round_ctx_t *rc = arg;
    const uint32_t r0 = (uint32_t)((uint64_t)rc->n_rows * (uint32_t)i / (uint32_t)n);
    const uint32_t r1 = (uint32_t)((uint64_t)rc->n_rows * (uint32_t)(i + 1) / (uint32_t)n);
    const size_t e0 = (size_t)r0 * rc->n_in, n_el = (size_t)(r1 - r0) * rc->n_in;
    float *xr = rc->xr + e0;
    const float *x = rc->x + e0;
    switch (rc->wt) {
    case PD_GGML_TYPE_F16:
        for (size_t k = 0; k < n_el; k++)
            xr[k] = pd_fp16_to_fp32(pd_fp32_to_fp16(x[k]));
        break;
    case PD_GGML_TYPE_BF16:
        for (size_t k = 0; k < n_el; k++)
            xr[k] = pd_bf16_to_fp32(pd_fp32_to_bf16(x[k]));
        break;
    default: /* quantized: through Q8_0 (Q8_0, Q4_0, IQ4_NL) or Q8_K (K-quants),
              * with ggml's activation quantizers */
        if (r1 > r0)
            pd_kern_round_x(rc->wt, x, rc->n_in, r1 - r0,
                            rc->qrow + pd_kern_xq_bytes(rc->wt, rc->n_in, r0), xr);
        break;
    }
}

/* Rows per task at least, and tasks per thread at most, of the rounding:
 * small tasks claimed as threads finish, so a thread preempted on a shared
 * machine holds up a small part only. */
#define PD_ROUND_MIN_ROWS 16
#define PD_ROUND_TASKS_PER_THREAD 4

/* ggml multiplies a quantized or half-precision weight by activations
 * converted to the weight type's "vec_dot" format: Q8_0 for Q8_0/Q4_0/IQ4_NL
 * weights, Q8_K for the K-quants, F16 for F16, BF16 for BF16. We round the
 * activations the same way before either kernel path, so that (1) the
 * skinny kernels and the sgemm path multiply the same values -- batching
 * then changes nothing -- and (2) our numbers match llama.cpp's. The
 * quantized skinny kernels quantize x themselves, with the same quantizer,
 * so matmul() skips this step when the skinny kernel will run. */
static const float *round_activations(pd_engine_t *e, pd_ggml_type_t wt, const float *x,
                                      uint32_t n_rows, uint32_t n_in)
{
    if (wt == PD_GGML_TYPE_F32)
        return x;
    /* on every thread: a 512-row prefill chunk of TinyLlama rounds 5.6 M
     * activations per layer, ~2 % of the product time on one thread */
    const round_ctx_t rc = { wt, x, n_rows, n_in, e->qrow, e->xr };
    const int nt = pd_pool_n_threads(e->pool);
    uint32_t tasks = n_rows / PD_ROUND_MIN_ROWS;
    if (tasks > (uint32_t)nt * PD_ROUND_TASKS_PER_THREAD)
        tasks = (uint32_t)nt * PD_ROUND_TASKS_PER_THREAD;
    if (nt == 1 || tasks < 2)
        tasks = 1;
    pd_pool_run(tasks > 1 ? e->pool : NULL, round_task, (void *)&rc, (int)tasks);
    return e->xr;
}

/* Batch-invariant mode: the skinny kernels compute each row independently of
 * the others (same instructions, same summation order, whatever the row
 * count), so feeding them chunks of rows makes every row's result
 * bit-identical whether the token came alone, in a decode batch or in a
 * prefill chunk. A request re-prefilled on another worker after a fault then
 * continues with exactly the tokens it would have produced. The price is
 * prefill speed (skinny kernels reach ~75% of sgemm's FLOPS at 32-64 rows);
 * docs/benchmarks.md has both figures. */
/* An element-wise epilogue of a product, over batch rows [r0, r0 + n_rows)
 * and output columns [o0, o1): a[r][o] = silu(a[r][o]) * b[r][o] (SwiGLU
 * of gate and up), gelu(a) * b (GeGLU) or a[r][o] += b[r][o] (the residual
 * add). */
typedef struct {
    float *a;
    const float *b;
    uint32_t stride; /* floats per row of a and b */
    uint32_t r0, n_rows;
    ew_op_t op;
} rows_epi_t;

static void rows_epi(void *ctx, int i_out, uint32_t o0, uint32_t o1)
{
    const rows_epi_t *c = ctx;
    (void)i_out;
    for (uint32_t r = c->r0; r < c->r0 + c->n_rows; r++) {
        float *a = c->a + (size_t)r * c->stride + o0;
        const float *b = c->b + (size_t)r * c->stride + o0;
        ew_apply(c->op, a, b, o1 - o0);
    }
}

/* The products outs[0..n) of one input x (n_rows, n_in), then the
 * epilogue epi (NULL, or a rows_epi_t for all rows), in as few pool runs
 * as pd_matmul_multi allows. All products must share type and n_in.
 *
 * Batch-invariant mode: the skinny kernels compute each row independently
 * of the others (same instructions, same summation order, whatever the row
 * count), so feeding them chunks of rows makes every row's result
 * bit-identical whether the token came alone, in a decode batch or in a
 * prefill chunk. A request re-prefilled on another worker after a fault then
 * continues with exactly the tokens it would have produced. The price is
 * prefill speed, except for F32 weights on AVX-512 machines, where the tiled
 * kernel with the skinny kernel's bits takes whole batches of 64 rows or more
 * (kernels_gemm.h); docs/benchmarks.md has the figures. */
static void products(pd_engine_t *e, const pd_mm_out_t *outs, int n, bool lockstep,
                     const float *x, uint32_t n_rows, const rows_epi_t *epi)
{
    const pd_mat_t *w = outs[0].w;
    bool quant = pd_kern_is_quant(w->type);
    bool invariant = quant ? e->opts.batch_invariant_quant : e->opts.batch_invariant;
    uint32_t chunk = invariant ? (quant ? PD_SKINNY_QUANT_MAX : PD_SKINNY_MAX_ROWS) : n_rows;
    /* the tiled F32 kernel has the skinny kernel's bits at any row count
     * (kernels_gemm.h): one call for the whole batch */
    if (invariant && !quant && pd_gemm_f32_takes(w, n_rows))
        chunk = n_rows;
    uint32_t skinny_max = invariant ? chunk : e->opts.skinny_max_rows;
    /* The Q8_0 skinny kernels quantize x themselves, with the same
     * quantizer: rounding it here first would be the same work twice on
     * every decode step. Only the sgemm path needs the rounded floats. */
    bool skinny = invariant || pd_matmul_uses_skinny(w, n_rows, e->opts.skinny_max_rows) ||
                  pd_kern_qg_takes(w, n_rows); /* it quantizes x itself too */
    const float *xin = quant && skinny ? x : round_activations(e, w->type, x, n_rows, w->n_in);
    for (uint32_t r = 0; r < n_rows; r += chunk) {
        uint32_t m = n_rows - r < chunk ? n_rows - r : chunk;
        pd_mm_out_t o[PD_MM_MAX_OUTS];
        for (int i = 0; i < n; i++)
            o[i] = (pd_mm_out_t){ outs[i].w, outs[i].y + (size_t)r * outs[i].w->n_out };
        rows_epi_t ep = epi ? *epi : (rows_epi_t){ 0 };
        ep.r0 = r;
        ep.n_rows = m;
        /* the residual add and SwiGLU in the form the tiled F32 kernel
         * applies as it stores (same bits: pd_gemm_fuse_epi) */
        pd_gemm_fuse_t fu = { epi && epi->op == EW_ADD ? PD_GEMM_FUSE_ADD : PD_GEMM_FUSE_SWIGLU,
                              ep.a + (size_t)r * ep.stride, ep.b + (size_t)r * ep.stride,
                              ep.stride, m };
        const bool fused = epi && epi->op != EW_GEGLU;
        pd_matmul_multi(e->pool, o, n, lockstep, xin + (size_t)r * w->n_in, m, e->scratch,
                        skinny_max, !epi ? NULL : fused ? pd_gemm_fuse_epi : rows_epi,
                        fused ? (void *)&fu : (void *)&ep);
    }
}

static void matmul(pd_engine_t *e, const pd_mat_t *w, const float *x, uint32_t n_rows, float *y)
{
    const pd_mm_out_t o = { w, y };
    products(e, &o, 1, false, x, n_rows, NULL);
}

/* y = x W^T, then x_res += y (stride dim) in the same pool run. */
static void matmul_residual(pd_engine_t *e, const pd_mat_t *w, const float *x, uint32_t n_rows,
                            float *y, float *x_res)
{
    const pd_mm_out_t o = { w, y };
    const rows_epi_t epi = { x_res, y, w->n_out, 0, n_rows, EW_ADD };
    products(e, &o, 1, false, x, n_rows, &epi);
}

/* x += x_in W^T, through RMSNorm(post_norm) first when the model norms a
 * sublayer's output before the residual add (Gemma's post-norms). */
static void residual(pd_engine_t *e, const pd_mat_t *w, const float *x_in, uint32_t n_rows,
                     const float *post_norm)
{
    if (post_norm == NULL) {
        matmul_residual(e, w, x_in, n_rows, e->tmp, e->x);
        return;
    }
    matmul(e, w, x_in, n_rows, e->tmp);
    rmsnorm_rows(e, e->tmp, e->tmp, post_norm, n_rows, NULL);
    elementwise(e, e->x, e->tmp, (size_t)n_rows * e->model->cfg.dim, EW_ADD);
}

static bool same_kind(const pd_mat_t *a, const pd_mat_t *b)
{
    return a->type == b->type && a->n_in == b->n_in;
}

/* ====== The forward pass ====== */

static void layer_forward(pd_engine_t *e, const pd_batch_t *b, uint32_t l,
                          const pd_forward_hooks_t *hooks)
{
    const pd_model_config_t *c = &e->model->cfg;
    const pd_layer_t *L = &e->model->layers[l];
    const uint32_t T = b->n_tokens;
    /* validate_batch already rejects an empty batch; this keeps the
     * attention split's division by T safe on its own (clang-analyzer
     * does not carry that check through pd_forward's calls). */
    if (T == 0)
        return;
    layer_ctx_t lc = { e, b, l, L->is_swa && e->rope_swa ? e->rope_swa : e->rope };
    int nt = pd_pool_n_threads(e->pool);

    /* Attention block. */
    rmsnorm_rows(e, e->xn, e->x, L->attn_norm, T, NULL);
    if (same_kind(&L->wq, &L->wk) && same_kind(&L->wq, &L->wv)) {
        const pd_mm_out_t qkv[3] = { { &L->wq, e->q }, { &L->wk, e->k }, { &L->wv, e->v } };
        products(e, qkv, 3, false, e->xn, T, NULL);
    } else {
        matmul(e, &L->wq, e->xn, T, e->q);
        matmul(e, &L->wk, e->xn, T, e->k);
        matmul(e, &L->wv, e->xn, T, e->v);
    }
    pd_pool_run(T >= 4 ? e->pool : NULL, qkv_post_task, &lc, T >= 4 ? nt : 1);
    if (hooks != NULL && hooks->on_layer != NULL)
        hooks->on_layer(hooks->ctx, l); /* layer l's K/V are final for this call */
    uint32_t n_units = e->n_tiles * ((c->n_kv_heads + e->attn_heads - 1) / e->attn_heads);
    uint32_t chunks = n_units < e->n_attn_chunks ? n_units : e->n_attn_chunks;
    pd_pool_run(e->pool, attention_task, &lc, (int)chunks);
    residual(e, &L->wo, e->att, T, L->post_attn_norm);

    /* Feed-forward block (SwiGLU, or GeGLU for Gemma): gate and up in
     * lockstep, so each task applies act(gate) * up to the rows it has just
     * computed. */
    rmsnorm_rows(e, e->xn, e->x, L->ffn_norm, T, NULL);
    const ew_op_t act = c->ffn_act == PD_FFN_GEGLU ? EW_GEGLU : EW_SWIGLU;
    const rows_epi_t glu = { e->gate, e->up, c->ffn_dim, 0, T, act };
    if (same_kind(&L->w_gate, &L->w_up) && L->w_gate.n_out == L->w_up.n_out) {
        const pd_mm_out_t gu[2] = { { &L->w_gate, e->gate }, { &L->w_up, e->up } };
        products(e, gu, 2, true, e->xn, T, &glu);
    } else {
        matmul(e, &L->w_gate, e->xn, T, e->gate);
        matmul(e, &L->w_up, e->xn, T, e->up);
        elementwise(e, e->gate, e->up, (size_t)T * c->ffn_dim, act);
    }
    residual(e, &L->w_down, e->gate, T, L->post_ffn_norm);
}

int pd_forward(pd_engine_t *e, const pd_batch_t *b, float *logits, pd_err_t *err)
{
    return pd_forward_hooked(e, b, logits, NULL, err);
}

int pd_forward_hooked(pd_engine_t *e, const pd_batch_t *b, float *logits,
                      const pd_forward_hooks_t *hooks, pd_err_t *err)
{
    int rc = validate_batch(e, b, err);
    if (rc != 0)
        return rc;
    const pd_model_t *m = e->model;
    const pd_model_config_t *c = &m->cfg;
    const uint32_t T = b->n_tokens;

    /* Embeddings: dequantized rows of token_embd. */
    for (uint32_t t = 0; t < T; t++) {
        const uint8_t *row = (const uint8_t *)m->tok_embd.data +
                             (size_t)b->tokens[t] * m->tok_embd.row_bytes;
        pd_dequant_row(m->tok_embd.type, row, e->x + (size_t)t * c->dim, c->dim);
        if (c->embd_scale != 1.0f) /* Gemma: embeddings times sqrt(dim) */
            scale_vec(e->x + (size_t)t * c->dim, c->dim, c->embd_scale);
    }
    rope_cache(c, b, c->rope_base, c->rope_scale, e->rope_ff, e->rope);
    if (e->rope_swa)
        rope_cache(c, b, c->rope_base_swa, c->rope_scale_swa, e->rope_ff, e->rope_swa);
    make_tiles(e, b);
    for (uint32_t l = 0; l < c->n_layers; l++)
        layer_forward(e, b, l, hooks);

    /* Final norm and logits, only for the rows asked. */
    uint32_t n_out = 0;
    for (uint32_t t = 0; t < T; t++)
        if (b->want_logits == NULL ? t == T - 1 : b->want_logits[t])
            e->rows[n_out++] = (int32_t)t;
    if (n_out == 0)
        return 0;
    rmsnorm_rows(e, e->xn, e->x, m->out_norm, n_out, e->rows);
    matmul(e, &m->output, e->xn, n_out, logits);
    for (uint32_t r = 0; r < n_out && c->final_softcap != 0.0f; r++) /* Gemma: logits capped */
        pd_kern_softcap(logits + (size_t)r * c->vocab_size, c->vocab_size, c->final_softcap);
    return 0;
}
