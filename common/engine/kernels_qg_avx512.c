/* kernels_qg_avx512.c -- the integer product for many rows (prefill):
 * Q8_0 and Q4_0 weights as stored times Q8_0 activations, AVX-512
 * F/BW/VNNI; compiled with those flags, called only when pd_kern_qg_takes
 * (kernels.h has the contract and the bits, pd_kern_qg_ref the definition).
 *
 * Before, a quantized product of more than PD_SKINNY_QUANT_MAX rows had
 * each panel of weight rows dequantized to F32 and ran the tiled F32
 * kernel: 16 float multiply-adds per cycle at best. Here the tokens lie
 * across the 16 lanes of a zmm, as in the qt kernel (kernels_qt_avx512.c),
 * but with one int32 per token per block instead of 8 group lanes: per
 * block, weight row and 16 tokens, 8 vpdpbusd (group i of the weight row
 * broadcast, group i of the 16 tokens) sum the whole 32-element dot in one
 * int32, then one convert, one multiply for the 16 products of scales and
 * one FMA: 11 instructions for 512 multiply-adds (the qt kernel: 25).
 *
 * The integers. vpdpbusd multiplies unsigned by signed bytes: the weights
 * are made unsigned (Q8_0: u = w + 128 = w ^ 0x80; Q4_0: the stored nibble
 * u = w + 8) and each block's dot starts from -K * sum(x_block), K = 128 or
 * 8, laid out once per token and block: the int32 is then exactly
 * sum(w * x) over the block for any weight and activation bytes (no
 * saturation in vpdpbusd; |dot| < 2^20).
 *
 * The layouts. Activations: quantized (pd_kern_prepare_x) and laid out
 * once per product, over the pool, in "qg blocks" per group of 16 tokens
 * and block (qg_xblk_t, 640 bytes): the 8 group vectors, the 16
 * corrections and the 16 scales. Weights: each unit of QG_P output rows is
 * made unsigned, its scales converted to float, into the task's panel
 * (qg_wblk_t per QG_NO rows and block) once, then used for every token
 * group. The micro-kernel holds QG_NO rows x QG_NT token groups of float
 * accumulators and as many int32 dots in registers (24 of the 32 zmm) and
 * runs over all blocks; the unit's panel and the token groups' blocks come
 * from L2.
 *
 * Measured (Zen 4, 1 thread, CPU time, 512 rows): 2048 x 2048 Q8_0 13.6 ms
 * (314 GFLOPS; dequantize + F32: 40.6 ms, 106 GFLOPS), 5632 x 2048 and
 * 2048 x 5632 300-325 GFLOPS, Q4_0 alike. The tile (rows x groups), at
 * 2048 x 2048: 4 x 3 and 3 x 4 314 GFLOPS; before x was held in
 * registers 4 x 3 268, 3 x 4 273, 6 x 2 152, 8 x 1 144, 2 x 6 106. The
 * floor is 8 vpdpbusd + 1 multiply + 1 FMA per block on the two 512-bit
 * pipes: ~51 multiply-adds per cycle; this is ~47 if the clock is 3.3 GHz
 * (as the sgemm rate, 106 GFLOPS = 32 flops x 3.3 GHz, suggests).
 */
#include <immintrin.h>
#include <stdalign.h>
#include <string.h>

#include "engine/kernels.h"
#include "engine/kernels_gemm.h"
#include "engine/simd_avx512.h"

#define ALWAYS_INLINE inline __attribute__((always_inline))
#define Q8_0_BYTES 34
#define Q4_0_BYTES 18
#define QK 32
#define LANES 16
#define QG_NO 4        /* weight rows per micro-kernel call */
#define QG_NT 3        /* token groups (of LANES) per micro-kernel call (mkqg_1..3) */
#define QG_P 32        /* output rows per unit of work (a multiple of QG_NO) */
#define QG_MAX_TASKS 16 /* tasks of a product, each with its weight panel */
#define QG_ALIGN 64

_Static_assert(QG_P % QG_NO == 0, "whole micro-kernel rows per unit");

/* One block of a group of LANES tokens (640 bytes). */
typedef struct {
    int32_t x[8][LANES]; /* x[i][t]: bytes 4i..4i+3 of token t's block */
    int32_t corr[LANES]; /* -K * (the sum of token t's 32 bytes) */
    float dx[LANES];     /* token t's block scale */
} qg_xblk_t;

/* One block of QG_NO weight rows. */
typedef struct {
    uint32_t u[QG_NO][8]; /* u[o][i]: row o's unsigned bytes 4i..4i+3 */
    float d[QG_NO];       /* row o's block scale (0 past the last row) */
} qg_wblk_t;

static size_t align_up(size_t v, size_t a)
{
    return (v + a - 1) / a * a;
}

/* ====== Sizes ====== */

bool pd_kern_qg_takes(const pd_mat_t *w, uint32_t n_rows)
{
    return pd_kern_isa() == PD_ISA_AVX512 &&
           (w->type == PD_GGML_TYPE_Q8_0 || w->type == PD_GGML_TYPE_Q4_0) && w->n_in > 0 &&
           w->n_in % QK == 0 && n_rows > PD_SKINNY_QUANT_MAX;
}

static size_t xq_part(uint32_t n_in, uint32_t n_rows)
{
    return align_up((size_t)n_rows * (n_in / QK) * Q8_0_BYTES, QG_ALIGN);
}

static size_t xt_part(uint32_t n_in, uint32_t n_rows)
{
    return (size_t)((n_rows + LANES - 1) / LANES) * (n_in / QK) * sizeof(qg_xblk_t);
}

static size_t wp_part(uint32_t n_in)
{
    return align_up((size_t)(QG_P / QG_NO) * (n_in / QK) * sizeof(qg_wblk_t), QG_ALIGN);
}

/* xq (n_rows Q8_0 rows), the qg blocks, QG_MAX_TASKS weight panels. */
size_t pd_kern_qg_scratch_bytes(uint32_t n_in, uint32_t n_rows)
{
    return xq_part(n_in, n_rows) + align_up(xt_part(n_in, n_rows), QG_ALIGN) +
           QG_MAX_TASKS * wp_part(n_in);
}

/* ====== The activations, once per product ====== */

/* The qg blocks of n_tok <= LANES tokens (Q8_0 rows g, xq_stride apart). */
static void layout_group(__m512i kb, const uint8_t *g, size_t xq_stride, size_t nb,
                         uint32_t n_tok, qg_xblk_t *out)
{
    const __m512i idx = _mm512_mullo_epi32(
        _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
        _mm512_set1_epi32((int)xq_stride));
    const __m512i zero = _mm512_setzero_si512();
    const __mmask16 m = (__mmask16)((1u << n_tok) - 1);
    for (size_t b = 0; b < nb; b++, out++) {
        const uint8_t *base = g + b * Q8_0_BYTES;
        /* the fp16 scale is the low half of the block's first dword */
        const __m512i h = _mm512_mask_i32gather_epi32(zero, m, idx, base, 1);
        _mm512_store_ps(out->dx, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(h)));
        __m512i s = zero;
        for (int i = 0; i < 8; i++) {
            const __m512i xi = _mm512_mask_i32gather_epi32(zero, m, idx, base + 2 + 4 * i, 1);
            _mm512_store_si512(out->x[i], xi);
            s = _mm512_dpbusd_epi32(s, kb, xi); /* + K * (the 4 bytes' sum) */
        }
        _mm512_store_si512(out->corr, _mm512_sub_epi32(zero, s));
    }
}

typedef struct {
    pd_ggml_type_t wtype;
    const pd_mm_out_t *outs;
    int n_outs;
    bool lockstep;
    const float *x;          /* (n_rows, n_in) */
    uint32_t n_in, n_rows, n_groups;
    size_t nb;               /* blocks per row */
    uint8_t *xq;             /* (n_rows, Q8_0 row) */
    qg_xblk_t *xt;           /* (n_groups, nb) */
    qg_wblk_t *wp;           /* QG_MAX_TASKS panels of (QG_P / QG_NO, nb) */
    size_t wp_blks;          /* qg_wblk_t between two tasks' panels */
    uint32_t first_unit[PD_MM_MAX_OUTS + 1]; /* unit where each product starts */
    pd_mm_epilogue_fn epi;
    void *epi_ctx;
    pd_split_t split;        /* the units over the tasks */
} qg_ctx_t;

/* Token group i: quantized, then laid out. */
static void prepare_task(void *arg, int i, int n)
{
    const qg_ctx_t *c = arg;
    (void)n;
    const uint32_t r0 = (uint32_t)i * LANES;
    const uint32_t n_tok = c->n_rows - r0 < LANES ? c->n_rows - r0 : LANES;
    const size_t xq_rb = c->nb * Q8_0_BYTES;
    uint8_t *xq = c->xq + (size_t)r0 * xq_rb;
    pd_kern_prepare_x(c->wtype, c->x + (size_t)r0 * c->n_in, c->n_in, c->n_in, n_tok, xq);
    const __m512i kb = _mm512_set1_epi8((char)(c->wtype == PD_GGML_TYPE_Q8_0 ? 0x80 : 8));
    layout_group(kb, xq, xq_rb, c->nb, n_tok, c->xt + (size_t)i * c->nb);
}

/* ====== The weights, once per unit ====== */

/* Rows [o0, o0 + np) of w into the panel wp, unsigned, np rounded up to
 * whole QG_NO with zero rows. */
static void prepare_panel(const pd_mat_t *w, uint32_t o0, uint32_t np, size_t nb, qg_wblk_t *wp)
{
    const bool q8 = w->type == PD_GGML_TYPE_Q8_0;
    const size_t bsz = q8 ? Q8_0_BYTES : Q4_0_BYTES;
    const uint32_t n_q = (np + QG_NO - 1) / QG_NO;
    for (uint32_t q = 0; q < n_q; q++) {
        qg_wblk_t *wq = wp + (size_t)q * nb;
        for (uint32_t o = 0; o < QG_NO; o++) {
            const uint32_t row = q * QG_NO + o;
            if (row >= np) {
                for (size_t b = 0; b < nb; b++) {
                    memset(wq[b].u[o], 0, sizeof wq[b].u[o]);
                    wq[b].d[o] = 0.0f;
                }
                continue;
            }
            const uint8_t *src = (const uint8_t *)w->data + (size_t)(o0 + row) * w->row_bytes;
            for (size_t b = 0; b < nb; b++, src += bsz) {
                uint16_t h;
                memcpy(&h, src, sizeof h);
                wq[b].d[o] = _cvtsh_ss(h);
                const __m256i u =
                    q8 ? _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(const void *)(src + 2)),
                                          _mm256_set1_epi8((char)0x80))
                       : pd_q4_unpack(src + 2);
                _mm256_storeu_si256((__m256i *)(void *)wq[b].u[o], u);
            }
        }
    }
}

/* ====== The micro-kernel ====== */

/* out[(o * QG_NT + t) * LANES + l] = y of weight row o of the panel rows
 * wq and token l of group t (NT groups from xg, nb blocks apart), over
 * all nb blocks in order: acc = fma((float)dot, dw * dx, acc). */
static ALWAYS_INLINE void mk_qg(const int NT, const qg_wblk_t *wq, const qg_xblk_t *xg,
                                size_t nb, float *out)
{
    __m512 acc[QG_NO][QG_NT];
#pragma GCC unroll 4
    for (int o = 0; o < QG_NO; o++)
#pragma GCC unroll 4
        for (int t = 0; t < NT; t++)
            acc[o][t] = _mm512_setzero_ps();
    for (size_t b = 0; b < nb; b++) {
        const qg_wblk_t *wb = wq + b;
        __m512i dot[QG_NO][QG_NT];
#pragma GCC unroll 4
        for (int t = 0; t < NT; t++) {
            const __m512i corr = _mm512_load_si512(xg[(size_t)t * nb + b].corr);
#pragma GCC unroll 4
            for (int o = 0; o < QG_NO; o++)
                dot[o][t] = corr;
        }
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++) {
            __m512i xv[QG_NT];
#pragma GCC unroll 4
            for (int t = 0; t < NT; t++) {
                xv[t] = _mm512_load_si512(xg[(size_t)t * nb + b].x[i]);
                /* in a register: one load per group, not one per weight
                 * row as a memory operand of each vpdpbusd (the loads were
                 * the bottleneck: 2048 x 2048 x 512, 1 thread, 268 ->
                 * 314 GFLOPS) */
                __asm__("" : "+v"(xv[t]));
            }
#pragma GCC unroll 4
            for (int o = 0; o < QG_NO; o++) {
                const __m512i wv = _mm512_set1_epi32((int)wb->u[o][i]);
#pragma GCC unroll 4
                for (int t = 0; t < NT; t++)
                    dot[o][t] = _mm512_dpbusd_epi32(dot[o][t], wv, xv[t]);
            }
        }
#pragma GCC unroll 4
        for (int t = 0; t < NT; t++) {
            const __m512 dx = _mm512_load_ps(xg[(size_t)t * nb + b].dx);
#pragma GCC unroll 4
            for (int o = 0; o < QG_NO; o++) {
                const __m512 sc = _mm512_mul_ps(_mm512_set1_ps(wb->d[o]), dx);
                acc[o][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[o][t]), sc, acc[o][t]);
            }
        }
    }
#pragma GCC unroll 4
    for (int o = 0; o < QG_NO; o++)
#pragma GCC unroll 4
        for (int t = 0; t < NT; t++)
            _mm512_store_ps(out + ((size_t)o * QG_NT + (size_t)t) * LANES, acc[o][t]);
}

typedef void (*mk_qg_fn)(const qg_wblk_t *wq, const qg_xblk_t *xg, size_t nb, float *out);

#define MKQG(NT)                                                                               \
    static void mkqg_##NT(const qg_wblk_t *wq, const qg_xblk_t *xg, size_t nb, float *out)    \
    {                                                                                          \
        mk_qg(NT, wq, xg, nb, out);                                                            \
    }
MKQG(1)
MKQG(2)
MKQG(3)

/* ====== The product ====== */

/* Output rows [o0, o0 + np) of w for all tokens into y (n_rows, n_out),
 * through the task's panel wp. (The weights' first reads in prepare_panel
 * and the stores below, each output line's first touch, are ~7 % of a
 * TinyLlama prefill; prefetching the next unit's weights into L2 and the
 * next token groups' output lines into L1 changed nothing measurable.) */
static void unit_rows(const qg_ctx_t *c, const pd_mat_t *w, uint32_t o0, uint32_t np, float *y,
                      qg_wblk_t *wp)
{
    static const mk_qg_fn mk[QG_NT + 1] = {NULL, mkqg_1, mkqg_2, mkqg_3};
    alignas(64) float out[QG_NO * QG_NT * LANES];
    prepare_panel(w, o0, np, c->nb, wp);
    for (uint32_t g0 = 0; g0 < c->n_groups; g0 += QG_NT) {
        const uint32_t nt = c->n_groups - g0 < QG_NT ? c->n_groups - g0 : QG_NT;
        for (uint32_t q = 0; q * QG_NO < np; q++) {
            mk[nt](wp + (size_t)q * c->nb, c->xt + (size_t)g0 * c->nb, c->nb, out);
            const uint32_t no = np - q * QG_NO < QG_NO ? np - q * QG_NO : QG_NO;
            for (uint32_t t = 0; t < nt; t++) {
                const uint32_t r0 = (g0 + t) * LANES;
                const uint32_t n_tok = c->n_rows - r0 < LANES ? c->n_rows - r0 : LANES;
                for (uint32_t l = 0; l < n_tok; l++) {
                    float *yr = y + (size_t)(r0 + l) * w->n_out + o0 + q * QG_NO;
                    for (uint32_t o = 0; o < no; o++)
                        yr[o] = out[((size_t)o * QG_NT + t) * LANES + l];
                }
            }
        }
    }
}

static void unit_task(void *arg, int i_task, int n_tasks)
{
    qg_ctx_t *c = arg;
    (void)n_tasks;
    qg_wblk_t *wp = c->wp + (size_t)i_task * c->wp_blks;
    uint32_t after;
    for (uint32_t u = pd_split_next(&c->split, i_task, &after); u != PD_SPLIT_NONE;
         u = pd_split_next(&c->split, i_task, &after)) {
        const int i = pd_mm_unit_product(c->first_unit, c->lockstep, u);
        const uint32_t o0 = (u - c->first_unit[i]) * QG_P;
        const uint32_t n_out = c->outs[i].w->n_out;
        const uint32_t np = n_out - o0 < QG_P ? n_out - o0 : QG_P;
        for (int j = i; j < (c->lockstep ? c->n_outs : i + 1); j++)
            unit_rows(c, c->outs[j].w, o0, np, c->outs[j].y, wp);
        if (c->epi)
            c->epi(c->epi_ctx, c->lockstep ? -1 : i, o0, o0 + np);
    }
}

void pd_kern_qg_multi(pd_pool_t *pool, const pd_mm_out_t *outs, int n_outs, bool lockstep,
                      const float *x, uint32_t n_rows, void *scratch, pd_mm_epilogue_fn epi,
                      void *epi_ctx)
{
    const pd_mat_t *w = outs[0].w;
    qg_ctx_t c = {.wtype = w->type, .outs = outs, .n_outs = n_outs, .lockstep = lockstep,
                  .x = x, .n_in = w->n_in, .n_rows = n_rows, .epi = epi, .epi_ctx = epi_ctx};
    c.nb = w->n_in / QK;
    c.n_groups = (n_rows + LANES - 1) / LANES;
    c.xq = scratch;
    c.xt = (qg_xblk_t *)(void *)(c.xq + xq_part(w->n_in, n_rows));
    c.wp = (qg_wblk_t *)(void *)((uint8_t *)c.xt + align_up(xt_part(w->n_in, n_rows), QG_ALIGN));
    c.wp_blks = wp_part(w->n_in) / sizeof(qg_wblk_t);
    pd_mm_units_init(c.first_unit, outs, n_outs, lockstep, QG_P);
    const int n_threads = pd_pool_n_threads(pool);
    pd_pool_run(n_threads > 1 ? pool : NULL, prepare_task, &c, (int)c.n_groups);
    const uint32_t n_units = c.first_unit[n_outs];
    pd_split_init(&c.split, n_units,
                  n_threads < QG_MAX_TASKS / 2 ? (uint32_t)n_threads : QG_MAX_TASKS / 2);
    const uint32_t n_tasks = n_units == 0 ? 0 : c.split.n_ranges > 1 ? 2 * c.split.n_ranges : 1;
    if (n_tasks > 0)
        pd_pool_run(n_tasks > 1 ? pool : NULL, unit_task, &c, (int)n_tasks);
}
