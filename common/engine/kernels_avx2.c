/* kernels_avx2.c -- AVX2/FMA/F16C versions of the kernels in kernels.c.
 * Compiled with -mavx2 -mfma -mf16c; called only when pd_kern_has_avx2().
 *
 * The skinny matmul (y[r][o] = x[r] . W[o] for a few rows r):
 *
 *   for each panel of PANEL (12) output rows
 *     prefetch the next panel, a slice per micro-kernel call
 *     for each K-tile of the input dimension (KT_F elements)
 *       for each block of NR (4) activation rows
 *         for each block of NO (3) weight rows in the panel
 *           micro-kernel: NO x NR accumulators of 8 lanes; per 8 inputs,
 *           NO weight loads (converted from F16/BF16 in registers), NR
 *           activation loads, NO x NR FMAs -- 7 loads per 12 FMAs.
 *
 * One activation row uses 8 x 1 blocks, two use 4 x 2... (pick_no): enough
 * independent accumulators to hide the FMA latency.
 *
 * Every weight byte comes from memory once per call. The software
 * prefetch of the next panel overlaps that stream with the arithmetic on
 * the current panel (without it, a batch of 8 costs memory time plus
 * compute time). A panel's K-tile of weights then stays in L1 while all
 * activation rows pass over it; an r-block's K-tile of activations stays in
 * L1 while the panel's weight rows pass under it.
 *
 * The accumulators are kept as 8-lane vectors in `acc` between K-tiles and
 * reduced to a scalar once at the end (always with the same tree), so
 * y[r][o] is computed by the same operations whatever the tiling, the
 * blocking and n_rows: results do not depend on batch composition.
 *
 * Quantized weights (Q8_0, Q4_0) use the same loop nest over 32-blocks
 * with an integer micro-kernel against Q8_0 activations (4 x 2 blocks).
 */
#include "engine/kernels.h"
#include "engine/simd_avx2.h"

#include <immintrin.h>

#include "engine/quants_k.h"
#include <math.h>
#include <string.h>

#define ALWAYS_INLINE inline __attribute__((always_inline))

#define Q8_0_BYTES 34
#define Q4_0_BYTES 18
#define QK 32

/* Tunables, measured on a 2-core Zen 3 (figures at the top of
 * tools/pd-kbench.c); the -D overrides exist for such experiments. */
#ifndef PANEL
#define PANEL 12      /* output rows per panel: 4 blocks of 3 weight rows */
#endif
#ifndef KT_F
#define KT_F 512      /* K-tile, elements, n_rows >= 3: a panel's tile is 24 KB of fp32 */
#endif
#ifndef KT_F_SMALL
#define KT_F_SMALL 512 /* K-tile, elements, n_rows <= 2 */
#endif
#ifndef KT_QB
#define KT_QB 32      /* K-tile, Q blocks, n_rows >= 3 (1024 elements) */
#endif
#ifndef KT_QB_SMALL
#define KT_QB_SMALL 16 /* K-tile, Q blocks, n_rows <= 2 */
#endif
#ifndef MAIN_NR
#define MAIN_NR 4     /* activation rows per float micro-kernel (<= MAX_NR) */
#endif
#ifndef MAIN_NO
#define MAIN_NO 3     /* weight rows per float micro-kernel when nr >= 3 (1..4) */
#endif
#ifndef NO_FOR_2
#define NO_FOR_2 4    /* weight rows per float micro-kernel when nr == 2 */
#endif
#ifndef MAIN_NR_Q
#define MAIN_NR_Q 2   /* activation rows per quantized micro-kernel (<= 3) */
#endif
#ifndef MAIN_NO_Q
#define MAIN_NO_Q 4   /* weight rows per quantized micro-kernel (1 or 4) */
#endif
#ifndef PF_MIN_ROWS
#define PF_MIN_ROWS 2 /* software prefetch of the next panel from this many rows (F32) */
#endif
#ifndef PF_MIN_ROWS_16
#define PF_MIN_ROWS_16 1 /* the same for F16/BF16 weights */
#endif
#ifndef PF_MIN_ROWS_Q
#define PF_MIN_ROWS_Q 1 /* the same for quantized weights */
#endif
#ifndef PF_HINT
#define PF_HINT _MM_HINT_T0
#endif
_Static_assert(PANEL <= 16,
               "acc holds PANEL x PD_SKINNY_MAX_ROWS vectors on the stack");

#include "engine/kernels_pf.h"

/* ====== Small helpers ====== */

static ALWAYS_INLINE float fp16_load(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

/* Sums of 4 vectors: lane i of the result is the sum of the 8 lanes of
 * vector i, always as ((v0+v1)+(v2+v3)) + ((v4+v5)+(v6+v7)). */
static ALWAYS_INLINE __m128 reduce4(__m256 a, __m256 b, __m256 c, __m256 d)
{
    __m256 ab = _mm256_hadd_ps(a, b);
    __m256 cd = _mm256_hadd_ps(c, d);
    __m256 abcd = _mm256_hadd_ps(ab, cd);
    return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

static ALWAYS_INLINE float hsum8(__m256 a)
{
    return _mm_cvtss_f32(reduce4(a, a, a, a));
}

/* ggml's hsum_float_8, in its exact order (high half + low half, then
 * movehl, then movehdup): the quantized kernels end with it so that a
 * single-row product is bit-identical to ggml_vec_dot_q8_0_q8_0 on AVX2,
 * which is what the llama.cpp referee runs for every decode step. */
static ALWAYS_INLINE float hsum8_ggml(__m256 a)
{
    __m128 r = _mm_add_ps(_mm256_extractf128_ps(a, 1), _mm256_castps256_ps128(a));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

/* Loads 8 weights starting at element k of a float-type row, as fp32. */
static ALWAYS_INLINE __m256 load_w8(const uint8_t *row, size_t k, int wt)
{
    if (wt == PD_GGML_TYPE_F32)
        return _mm256_loadu_ps((const float *)(const void *)row + k);
    const __m128i h = _mm_loadu_si128((const __m128i *)(const void *)(row + 2 * k));
    if (wt == PD_GGML_TYPE_F16)
        return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

static ALWAYS_INLINE float load_w1(const uint8_t *row, size_t k, int wt)
{
    if (wt == PD_GGML_TYPE_F32) {
        float f;
        memcpy(&f, row + 4 * k, 4);
        return f;
    }
    uint16_t h;
    memcpy(&h, row + 2 * k, 2);
    if (wt == PD_GGML_TYPE_F16)
        return _cvtsh_ss(h);
    return pd_bf16_to_fp32(h);
}

/* ====== Float micro-kernel ======
 * acc[o * acc_stride + r] += sum over k in [0, n) (n % 8 == 0) of
 * W[o][k] * x[r][k] (lane-wise), for o < NO, r < NR; `first` starts from 0.
 * w: NO rows w_stride bytes apart; x: NR rows x_stride floats apart. */
static ALWAYS_INLINE void mk_float(const int NO, const int NR, const int wt, const uint8_t *w,
                                   size_t w_stride, const float *x, size_t x_stride, size_t n,
                                   __m256 *acc_io, size_t acc_stride, bool first)
{
    __m256 acc[8][4];
#pragma GCC unroll 8
    for (int o = 0; o < NO; o++)
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++)
            acc[o][r] = first ? _mm256_setzero_ps() : acc_io[o * acc_stride + r];
    for (size_t k = 0; k < n; k += 8) {
        /* The weight vectors stay in registers; each activation vector is
         * loaded once and used NO times. The empty asm pins a value to a
         * register so that the compiler does not fold its load into every
         * FMA that uses it (which would cost NO or NR loads per vector). */
        __m256 wv[8];
#pragma GCC unroll 8
        for (int o = 0; o < NO; o++) {
            wv[o] = load_w8(w + o * w_stride, k, wt);
            if (NR > 1)
                __asm__("" : "+x"(wv[o]));
        }
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++) {
            __m256 xv = _mm256_loadu_ps(x + r * x_stride + k);
            if (NO > 1)
                __asm__("" : "+x"(xv));
#pragma GCC unroll 8
            for (int o = 0; o < NO; o++)
                acc[o][r] = _mm256_fmadd_ps(wv[o], xv, acc[o][r]);
        }
    }
#pragma GCC unroll 8
    for (int o = 0; o < NO; o++)
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++)
            acc_io[o * acc_stride + r] = acc[o][r];
}

typedef void (*mk_float_fn)(const uint8_t *w, size_t w_stride, const float *x, size_t x_stride,
                            size_t n, __m256 *acc, size_t acc_stride, bool first);

#define MK_FLOAT(NO, NR, WT, NAME)                                                             \
    static void NAME(const uint8_t *w, size_t w_stride, const float *x, size_t x_stride,     \
                     size_t n, __m256 *acc, size_t acc_stride, bool first)                   \
    {                                                                                          \
        mk_float(NO, NR, WT, w, w_stride, x, x_stride, n, acc, acc_stride, first);             \
    }
#define MK_FLOAT_NO(NO, WT, SFX)                                                               \
    MK_FLOAT(NO, 1, WT, mkf_##NO##x1_##SFX)                                                    \
    MK_FLOAT(NO, 2, WT, mkf_##NO##x2_##SFX)                                                    \
    MK_FLOAT(NO, 3, WT, mkf_##NO##x3_##SFX)                                                    \
    MK_FLOAT(NO, 4, WT, mkf_##NO##x4_##SFX)
#define MK_FLOAT_TYPE(WT, SFX)                                                                 \
    MK_FLOAT_NO(1, WT, SFX) MK_FLOAT_NO(2, WT, SFX) MK_FLOAT_NO(3, WT, SFX)                     \
    MK_FLOAT_NO(4, WT, SFX)                                                                    \
    MK_FLOAT(8, 1, WT, mkf_8x1_##SFX)

MK_FLOAT_TYPE(PD_GGML_TYPE_F32, f32)
MK_FLOAT_TYPE(PD_GGML_TYPE_F16, f16)
MK_FLOAT_TYPE(PD_GGML_TYPE_BF16, bf16)

#define MKF_ROW(NO, SFX)                                                                       \
    {mkf_##NO##x1_##SFX, mkf_##NO##x2_##SFX, mkf_##NO##x3_##SFX, mkf_##NO##x4_##SFX}
#define MKF_TYPE(SFX)                                                                          \
    {MKF_ROW(1, SFX), MKF_ROW(2, SFX), MKF_ROW(3, SFX), MKF_ROW(4, SFX),                        \
     {mkf_8x1_##SFX, 0, 0, 0}}

/* The micro-kernel for no (1..4, or 8 with nr 1) weight rows by nr
 * (1..MAX_NR) activation rows. */
#define MAX_NR 4
_Static_assert(MAIN_NR <= MAX_NR, "no micro-kernel for that many activation rows");
static mk_float_fn mkf_pick(int wt, int no, int nr)
{
    static const mk_float_fn tab[3][5][MAX_NR] = {MKF_TYPE(f32), MKF_TYPE(f16), MKF_TYPE(bf16)};
    int ti = wt == PD_GGML_TYPE_F32 ? 0 : wt == PD_GGML_TYPE_F16 ? 1 : 2;
    int ni = no <= 4 ? no - 1 : 4;
    return tab[ti][ni][nr - 1];
}

/* Reduces acc (n_o x n_rows vectors) and adds the scalar tail products
 * (elements [k_tail, n_in)), writing y. */
static void finish_float(int wt, const uint8_t *w, size_t row_bytes, uint32_t n_o,
                         uint32_t n_in, size_t k_tail, const float *x, size_t x_stride,
                         uint32_t n_rows, const __m256 *acc, float *y, size_t y_stride)
{
    for (uint32_t o = 0; o < n_o; o++) {
        const uint8_t *row = w + o * row_bytes;
        for (uint32_t r = 0; r < n_rows; r++) {
            float s = k_tail > 0 ? hsum8(acc[o * n_rows + r]) : 0.0f;
            const float *xr = x + r * x_stride;
            for (size_t k = k_tail; k < n_in; k++)
                s += load_w1(row, k, wt) * xr[k];
            y[r * y_stride + o] = s;
        }
    }
}

/* ====== Prefetch ====== (kernels_pf.h) */

/* Weight rows per micro-kernel for nr activation rows with `left` rows
 * left in the panel: enough accumulators to hide the FMA latency (8 for
 * one activation row, 4 x 2 for two), few enough to keep weights,
 * activations and accumulators in the 16 registers (3 x 4 for more). */
static int pick_no(int nr, uint32_t left)
{
    uint32_t want = nr == 1 ? 8 : nr == 2 ? NO_FOR_2 : MAIN_NO;
    if (want <= left)
        return (int)want;
    return left >= 4 ? 4 : (int)left; /* 1..3 */
}

static void skinny_float(const pd_mat_t *w, uint32_t o_begin, uint32_t o_end, const float *x,
                         size_t x_stride, uint32_t n_rows, float *y, size_t y_stride)
{
    const int wt = (int)w->type;
    const uint32_t n_in = w->n_in;
    const size_t n8 = n_in & ~7u;
    const size_t rb = w->row_bytes;
    const size_t esz = wt == PD_GGML_TYPE_F32 ? 4 : 2;
    /* KT_F_SMALL and KT_F are separate -D tunables that measure the same
     * (512) on the reference machine; the branch stays for experiments. */
    // NOLINTNEXTLINE(bugprone-branch-clone): equal tunables by default, see above
    const size_t kt = n_rows <= 2 ? KT_F_SMALL : KT_F;
    const uint8_t *w0 = (const uint8_t *)w->data;
    __m256 acc[PANEL * PD_SKINNY_MAX_ROWS];   /* (PANEL, n_rows) 8-lane sums */
    pf_t pf = {0};

    const size_t n_rb = (n_rows + MAIN_NR - 1) / MAIN_NR;
    for (uint32_t p0 = o_begin; p0 < o_end; p0 += PANEL) {
        const uint32_t np = o_end - p0 < PANEL ? o_end - p0 : PANEL;
        const uint8_t *wp = w0 + (size_t)p0 * rb;
        for (size_t k0 = 0; k0 < n8; k0 += kt) {
            const size_t n = n8 - k0 < kt ? n8 - k0 : kt;
            const bool first = k0 == 0;
            /* the next weights' lines, spread over this tile's kernel calls */
            const size_t pf_per_call =
                pf_plan(&pf, n_rows >= (wt == PD_GGML_TYPE_F32 ? PF_MIN_ROWS : PF_MIN_ROWS_16),
                        w0, rb, p0, o_end, k0, kt, n8, n_rb * np + 1);
            const uint8_t *wk = wp + k0 * esz;
            /* activation rows outer: their tile stays in L1 while the
             * panel's weight tile (also in L1) passes under it */
            for (uint32_t r = 0; r < n_rows; r += MAIN_NR) {
                const int nr = n_rows - r >= MAIN_NR ? MAIN_NR : (int)(n_rows - r);
                for (uint32_t o = 0; o < np;) {
                    const int no = pick_no(nr, np - o);
                    pf_step(&pf, pf_per_call * (size_t)no);
                    mkf_pick(wt, no, nr)(wk + o * rb, rb, x + r * x_stride + k0, x_stride, n,
                                         acc + o * n_rows + r, n_rows, first);
                    o += (uint32_t)no;
                }
            }
        }
        pf_step(&pf, pf.left);
        finish_float(wt, wp, rb, np, n_in, n8, x, x_stride, n_rows, acc, y + p0, y_stride);
    }
}

/* ====== Quantized micro-kernel (Q8_0 / Q4_0 weights, Q8_0 activations) ======
 * Per 32-block: the integer dot product of the block's weights and the
 * activation block (exact, via maddubs on |w| and sign(x, w)), converted to
 * fp32 lanes and accumulated with the scale d_w * d_x, as
 * ggml_vec_dot_q8_0_q8_0 / q4_0_q8_0 do. */

/* The 32 signed weights of a block as bytes. */
static ALWAYS_INLINE __m256i load_qw(const uint8_t *blk, int wt)
{
    if (wt == PD_GGML_TYPE_Q8_0)
        return _mm256_loadu_si256((const __m256i *)(const void *)(blk + 2));
    const __m128i t = _mm_loadu_si128((const __m128i *)(const void *)(blk + 2));
    const __m256i nib = _mm256_and_si256(
        _mm256_inserti128_si256(_mm256_castsi128_si256(t), _mm_srli_epi16(t, 4), 1),
        _mm256_set1_epi8(0x0f));
    return _mm256_sub_epi8(nib, _mm256_set1_epi8(8));
}

static ALWAYS_INLINE void mk_quant(const int NO, const int NR, const int wt, const uint8_t *w,
                                   size_t w_stride, const uint8_t *xq, size_t xq_stride,
                                   size_t nb, __m256 *acc_io, size_t acc_stride, bool first)
{
    const size_t bsz = wt == PD_GGML_TYPE_Q8_0 ? Q8_0_BYTES : Q4_0_BYTES;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[4][4];
#pragma GCC unroll 4
    for (int o = 0; o < NO; o++)
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++)
            acc[o][r] = first ? _mm256_setzero_ps() : acc_io[o * acc_stride + r];
    for (size_t b = 0; b < nb; b++) {
        __m256i xv[4];
        float dx[4];
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++) {
            const uint8_t *xb = xq + r * xq_stride + b * Q8_0_BYTES;
            xv[r] = _mm256_loadu_si256((const __m256i *)(const void *)(xb + 2));
            dx[r] = fp16_load(xb);
        }
#pragma GCC unroll 4
        for (int o = 0; o < NO; o++) {
            const uint8_t *wb = w + o * w_stride + b * bsz;
            const __m256i wv = load_qw(wb, wt);
            const float dw = fp16_load(wb);
            const __m256i aw = _mm256_sign_epi8(wv, wv);
#pragma GCC unroll 4
            for (int r = 0; r < NR; r++) {
                const __m256i sx = _mm256_sign_epi8(xv[r], wv);
                const __m256i p16 = _mm256_maddubs_epi16(aw, sx);
                const __m256 p = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones));
                acc[o][r] = _mm256_fmadd_ps(p, _mm256_set1_ps(dw * dx[r]), acc[o][r]);
            }
        }
    }
#pragma GCC unroll 4
    for (int o = 0; o < NO; o++)
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++)
            acc_io[o * acc_stride + r] = acc[o][r];
}

typedef void (*mk_quant_fn)(const uint8_t *w, size_t w_stride, const uint8_t *xq,
                            size_t xq_stride, size_t nb, __m256 *acc, size_t acc_stride,
                            bool first);

#define MK_QUANT(NO, NR, WT, NAME)                                                             \
    static void NAME(const uint8_t *w, size_t w_stride, const uint8_t *xq, size_t xq_stride, \
                     size_t nb, __m256 *acc, size_t acc_stride, bool first)                  \
    {                                                                                          \
        mk_quant(NO, NR, WT, w, w_stride, xq, xq_stride, nb, acc, acc_stride, first);          \
    }
#define MK_QUANT_TYPE(WT, SFX)                                                                 \
    MK_QUANT(1, 1, WT, mkq_1x1_##SFX)                                                          \
    MK_QUANT(1, 2, WT, mkq_1x2_##SFX)                                                          \
    MK_QUANT(1, 3, WT, mkq_1x3_##SFX)                                                          \
    MK_QUANT(4, 1, WT, mkq_4x1_##SFX)                                                          \
    MK_QUANT(4, 2, WT, mkq_4x2_##SFX)                                                          \
    MK_QUANT(4, 3, WT, mkq_4x3_##SFX)

MK_QUANT_TYPE(PD_GGML_TYPE_Q8_0, q8)
MK_QUANT_TYPE(PD_GGML_TYPE_Q4_0, q4)

static mk_quant_fn mkq_pick(int wt, int no, int nr)
{
    static const mk_quant_fn tab[2][2][3] = {
        {{mkq_1x1_q8, mkq_1x2_q8, mkq_1x3_q8}, {mkq_4x1_q8, mkq_4x2_q8, mkq_4x3_q8}},
        {{mkq_1x1_q4, mkq_1x2_q4, mkq_1x3_q4}, {mkq_4x1_q4, mkq_4x2_q4, mkq_4x3_q4}},
    };
    return tab[wt == PD_GGML_TYPE_Q8_0 ? 0 : 1][no == 4 ? 1 : 0][nr - 1];
}

static void skinny_quant(const pd_mat_t *w, uint32_t o_begin, uint32_t o_end, const void *xq,
                         uint32_t n_rows, float *y, size_t y_stride)
{
    const int wt = (int)w->type;
    const size_t nb_all = w->n_in / QK;
    const size_t bsz = wt == PD_GGML_TYPE_Q8_0 ? Q8_0_BYTES : Q4_0_BYTES;
    const size_t rb = w->row_bytes;
    const size_t xq_stride = nb_all * Q8_0_BYTES;
    const size_t kt = n_rows <= 2 ? KT_QB_SMALL : KT_QB;
    const uint8_t *w0 = (const uint8_t *)w->data;
    __m256 acc[PANEL * PD_SKINNY_MAX_ROWS]; /* (PANEL, n_rows) 8-lane sums */
    pf_t pf = {0};

    const size_t n_rb = (n_rows + MAIN_NR_Q - 1) / MAIN_NR_Q;
    for (uint32_t p0 = o_begin; p0 < o_end; p0 += PANEL) {
        const uint32_t np = o_end - p0 < PANEL ? o_end - p0 : PANEL;
        const uint8_t *wp = w0 + (size_t)p0 * rb;
        for (size_t b0 = 0; b0 < nb_all; b0 += kt) {
            const size_t nb = nb_all - b0 < kt ? nb_all - b0 : kt;
            const bool first = b0 == 0;
            const size_t pf_per_call = pf_plan(&pf, n_rows >= PF_MIN_ROWS_Q, w0, rb, p0, o_end, b0,
                                               kt, nb_all, n_rb * np + 1);
            for (uint32_t r = 0; r < n_rows; r += MAIN_NR_Q) {
                const int nr = n_rows - r >= MAIN_NR_Q ? MAIN_NR_Q : (int)(n_rows - r);
                for (uint32_t o = 0; o < np;) {
                    const int no = np - o >= MAIN_NO_Q ? MAIN_NO_Q : 1;
                    pf_step(&pf, pf_per_call * (size_t)no);
                    mkq_pick(wt, no, nr)(wp + o * rb + b0 * bsz, rb,
                                         (const uint8_t *)xq + r * xq_stride + b0 * Q8_0_BYTES,
                                         xq_stride, nb, acc + o * n_rows + r, n_rows, first);
                    o += (uint32_t)no;
                }
            }
        }
        pf_step(&pf, pf.left);
        for (uint32_t o = 0; o < np; o++)
            for (uint32_t r = 0; r < n_rows; r++)
                y[r * y_stride + p0 + o] = nb_all ? hsum8_ggml(acc[o * n_rows + r]) : 0.0f;
    }
}

void pd_kern_skinny_avx2(const pd_mat_t *w, uint32_t o_begin, uint32_t o_end, const float *x,
                         uint32_t x_stride, const void *xq, uint32_t n_rows, float *y,
                         uint32_t y_stride)
{
    if (o_begin >= o_end || n_rows == 0)
        return;
    /* acc holds PD_SKINNY_MAX_ROWS rows; more rows go in slices. */
    const size_t xq_row = pd_kern_xq_bytes(w->type, w->n_in, 1);
    while (n_rows > 0) {
        const uint32_t nr = n_rows < PD_SKINNY_MAX_ROWS ? n_rows : PD_SKINNY_MAX_ROWS;
        switch (w->type) {
        case PD_GGML_TYPE_F32:
        case PD_GGML_TYPE_F16:
        case PD_GGML_TYPE_BF16:
            skinny_float(w, o_begin, o_end, x, x_stride, nr, y, y_stride);
            x += (size_t)nr * x_stride;
            break;
        case PD_GGML_TYPE_Q8_0:
        case PD_GGML_TYPE_Q4_0:
            skinny_quant(w, o_begin, o_end, xq, nr, y, y_stride);
            xq = (const uint8_t *)xq + (size_t)nr * xq_row;
            break;
        case PD_GGML_TYPE_IQ4_NL: case PD_GGML_TYPE_Q2_K: case PD_GGML_TYPE_Q3_K:
        case PD_GGML_TYPE_Q4_K: case PD_GGML_TYPE_Q5_K: case PD_GGML_TYPE_Q6_K:
            pd_kern_skinny_k_avx2(w, o_begin, o_end, xq, nr, y, y_stride);
            xq = (const uint8_t *)xq + (size_t)nr * xq_row;
            break;
        case PD_GGML_TYPE_Q8_K:
            return; /* an activation format, never a weight */
        }
        y += (size_t)nr * y_stride;
        n_rows -= nr;
    }
}

/* ====== Activation quantization (ggml's x86 quantize_row_q8_0) ====== */

static void quant_block_q8_0(const float *x, uint8_t *blk)
{
    __m256 v0 = _mm256_loadu_ps(x);
    __m256 v1 = _mm256_loadu_ps(x + 8);
    __m256 v2 = _mm256_loadu_ps(x + 16);
    __m256 v3 = _mm256_loadu_ps(x + 24);
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 m = _mm256_andnot_ps(sign, v0);
    m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v1));
    m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v2));
    m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v3));
    __m128 m4 = _mm_max_ps(_mm256_extractf128_ps(m, 1), _mm256_castps256_ps128(m));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float amax = _mm_cvtss_f32(m4);
    const uint16_t d = pd_fp32_to_fp16(amax / 127.0f);
    memcpy(blk, &d, 2);
    const __m256 id = _mm256_set1_ps(amax != 0.0f ? 127.0f / amax : 0.0f);
#define RND (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
    __m256i i0 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v0, id), RND));
    __m256i i1 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v1, id), RND));
    __m256i i2 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v2, id), RND));
    __m256i i3 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v3, id), RND));
    i0 = _mm256_packs_epi32(i0, i1);
    i2 = _mm256_packs_epi32(i2, i3);
    i0 = _mm256_packs_epi16(i0, i2);
    i0 = _mm256_permutevar8x32_epi32(i0, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)(void *)(blk + 2), i0);
#undef RND
}

void pd_kern_prepare_x_avx2(pd_ggml_type_t wtype, const float *x, uint32_t x_stride,
                            uint32_t n_in, uint32_t n_rows, void *xq)
{
    if (pd_kern_act_type(wtype) == PD_GGML_TYPE_Q8_K) {
        pd_quant_rows_q8_k_avx2(x, x_stride, n_in, n_rows, xq);
        return;
    }
    if (pd_kern_act_type(wtype) != PD_GGML_TYPE_Q8_0)
        return;
    const size_t nb = n_in / QK;
    for (uint32_t r = 0; r < n_rows; r++)
        for (size_t b = 0; b < nb; b++)
            quant_block_q8_0(x + (size_t)r * x_stride + b * QK,
                             (uint8_t *)xq + (r * nb + b) * Q8_0_BYTES);
}

/* ====== Dequantization ====== */

void pd_dequant_row_avx2(pd_ggml_type_t type, const void *src, float *dst, uint32_t n)
{
    const uint8_t *s = src;
    uint32_t i = 0;
    switch (type) {
    case PD_GGML_TYPE_F32:
        memcpy(dst, src, (size_t)n * 4);
        return;
    case PD_GGML_TYPE_F16:
    case PD_GGML_TYPE_BF16:
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(dst + i, load_w8(s, i, (int)type));
        for (; i < n; i++)
            dst[i] = load_w1(s, i, (int)type);
        return;
    case PD_GGML_TYPE_Q8_0:
    case PD_GGML_TYPE_Q4_0: {
        const size_t bsz = type == PD_GGML_TYPE_Q8_0 ? Q8_0_BYTES : Q4_0_BYTES;
        for (uint32_t b = 0; b < n / QK; b++) {
            const uint8_t *blk = s + b * bsz;
            const __m256 d = _mm256_set1_ps(fp16_load(blk));
            const __m256i q = load_qw(blk, (int)type);
            const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
            float *o = dst + (size_t)b * QK;
            _mm256_storeu_ps(o, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo)), d));
            _mm256_storeu_ps(o + 8, _mm256_mul_ps(
                _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8))), d));
            _mm256_storeu_ps(o + 16, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi)), d));
            _mm256_storeu_ps(o + 24, _mm256_mul_ps(
                _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8))), d));
        }
        return;
    }
    case PD_GGML_TYPE_IQ4_NL: case PD_GGML_TYPE_Q2_K: case PD_GGML_TYPE_Q3_K:
    case PD_GGML_TYPE_Q4_K: case PD_GGML_TYPE_Q5_K: case PD_GGML_TYPE_Q6_K:
        pd_dequant_row_k_avx2(type, src, dst, n);
        return;
    case PD_GGML_TYPE_Q8_K:
        pd_dequant_row_q8_k(src, dst, n);
        return;
    }
}

/* ====== Small vector kernels ====== */

void pd_kern_rmsnorm_avx2(float *out, const float *x, const float *g, uint32_t n, float eps)
{
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    uint32_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_loadu_ps(x + i);
        const __m256 sq = _mm256_mul_ps(v, v);
        s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(sq)));
        s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(sq, 1)));
    }
    double lanes[4];
    _mm256_storeu_pd(lanes, _mm256_add_pd(s0, s1));
    double sum = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
    for (; i < n; i++)
        sum += (double)(x[i] * x[i]);
    const float mean = n ? (float)(sum / n) : 0.0f;
    const float scale = 1.0f / sqrtf(mean + eps);
    const __m256 vs = _mm256_set1_ps(scale);
    for (i = 0; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), vs),
                                                _mm256_loadu_ps(g + i)));
    for (; i < n; i++)
        out[i] = (x[i] * scale) * g[i];
}

void pd_kern_softmax_avx2(float *x, uint32_t n)
{
    if (n == 0)
        return;
    float max = -INFINITY;
    uint32_t i = 0;
    if (n >= 8) {
        __m256 m = _mm256_set1_ps(-INFINITY);
        for (; i + 8 <= n; i += 8)
            m = _mm256_max_ps(m, _mm256_loadu_ps(x + i));
        __m128 m4 = _mm_max_ps(_mm256_extractf128_ps(m, 1), _mm256_castps256_ps128(m));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        max = _mm_cvtss_f32(m4);
    }
    for (; i < n; i++)
        max = x[i] > max ? x[i] : max;
    const __m256 vmax = _mm256_set1_ps(max);
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    for (i = 0; i + 8 <= n; i += 8) {
        const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), vmax));
        _mm256_storeu_ps(x + i, e);
        s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
        s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
    }
    double lanes[4];
    _mm256_storeu_pd(lanes, _mm256_add_pd(s0, s1));
    double sum = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
    for (; i < n; i++) {
        x[i] = expf(x[i] - max);
        sum += (double)x[i];
    }
    const float inv = (float)(1.0 / sum);
    const __m256 vinv = _mm256_set1_ps(inv);
    for (i = 0; i + 8 <= n; i += 8)
        _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), vinv));
    for (; i < n; i++)
        x[i] *= inv;
}

void pd_kern_swiglu_avx2(float *gate, const float *up, uint32_t n)
{
    uint32_t i = 0;
    const __m256 one = _mm256_set1_ps(1.0f);
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (; i + 8 <= n; i += 8) {
        const __m256 g = _mm256_loadu_ps(gate + i);
        const __m256 e = exp8(_mm256_xor_ps(g, sign));
        const __m256 silu = _mm256_div_ps(g, _mm256_add_ps(one, e));
        _mm256_storeu_ps(gate + i, _mm256_mul_ps(silu, _mm256_loadu_ps(up + i)));
    }
    for (; i < n; i++) {
        const float g = gate[i];
        gate[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

float pd_kern_dot_f32_avx2(const float *a, const float *b, uint32_t n)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    __m256 s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    uint32_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
        s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
        s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
    }
    for (; i + 8 <= n; i += 8)
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    float s = hsum8(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

void pd_kern_fp32_to_fp16_avx2(uint16_t *dst, const float *x, uint32_t n)
{
    uint32_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++)
        dst[i] = pd_fp32_to_fp16(x[i]);
}

void pd_kern_axpy_f32_avx2(float *y, float a, const float *x, uint32_t n)
{
    const __m256 va = _mm256_set1_ps(a);
    uint32_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i),
                                                _mm256_loadu_ps(y + i)));
    for (; i < n; i++)
        y[i] += a * x[i];
}
