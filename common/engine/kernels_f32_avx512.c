/* kernels_f32_avx512.c -- the AVX-512 skinny product of F32 weights for
 * small decode batches (2..PD_F32_SMALL_MAX_ROWS rows; correct for any
 * count up to PD_SKINNY_MAX_ROWS, sliced above); compiled with AVX-512
 * flags, called only when pd_kern_isa() == PD_ISA_AVX512.
 *
 * Same definition as kernels_avx512.c's skinny_float, bit for bit: y[r][o]
 * is 16 float lanes, lane j accumulating W[o][k] * x[r][k] for k = j,
 * j + 16, ... in order with one FMA each (from zero), then hsum16's tree,
 * then the scalar tail k >= n_in & ~15. Only the blocking differs, and
 * blocking does not change the sequence of roundings of any (o, r), so a
 * row gives the same bits alone (the 1-row kernel) or in any batch.
 *
 * At these batch sizes the product streams the weights from memory with
 * compute to spare (8 rows: 8 FMAs per weight vector), so what matters is
 * that the memory traffic overlaps the arithmetic:
 *   - micro-kernels of 3 weight rows x 8 activation rows (24 accumulators,
 *     11 loads per 24 FMAs): up to 8 rows, every weight vector is loaded
 *     once, so the weights pass through the core once;
 *   - K-tiles of 256 (32 rows of x are 32 KB, the L1 holds them);
 *   - a panel's 12 weight rows are taken a stride apart in the call's
 *     range (kernels_rows.h), so the weights stream as 12 long sequential
 *     runs the hardware prefetchers follow;
 *   - each weight load is paired with a prefetch into L2 of the same row
 *     PF_BYTES ahead (two K-tiles; past a row's end it is the next row in
 *     memory, which is the next far panel's row in the same slot). With
 *     8 FMAs per weight vector the core is busy for 60-90 % of the time
 *     the memory needs to deliver the weights (this kernel on L2-resident
 *     weights: 22-23 GB/s of weights against a 14-25 GB/s read limit),
 *     so demand misses that the hardware prefetchers have not yet covered
 *     stall the FMAs instead of overlapping them;
 *   - the 16-lane sums of a panel are reduced 16 at a time (pd_hsum16x16,
 *     simd_avx512.h), and the outputs of 16 consecutive far panels are
 *     staged and stored 16 adjacent floats at a time (pd_rowmap_flush16):
 *     a far panel's outputs are a stride apart in y and y's rows n_out
 *     apart (2048: one L1 set for all rows of an output), so storing them
 *     one by one missed L1 on most stores (skinny_f32's own samples at
 *     batch 8: 6.3 % of the step -> 4.0 % for finish + skinny_f32, perf).
 * Measured on llama-110M shapes streamed from memory, 1 thread: 8 rows
 * 10-20 % faster than kernels_avx512.c's 4 x 6 kernel, 16 rows 5-15 %;
 * from about 20 rows the older kernel is as fast or faster (compute-bound;
 * docs/benchmarks.md), so pd_kern_skinny sends those rows there.
 */
#include <immintrin.h>
#include <string.h>

#include "engine/kernels.h"
#include "engine/simd_avx512.h"

#define ALWAYS_INLINE inline __attribute__((always_inline))
#define PANEL 12      /* weight rows per panel */
#define KT_F 256      /* K-tile, elements */
#define MAIN_NO 3     /* weight rows per micro-kernel */
#define MAIN_NR 8     /* activation rows per micro-kernel */
#define MAX_NO 3
#define MAX_NR 8
#define YB 16       /* far panels whose outputs are stored together (pd_rowmap_flush16) */
#define PF_BYTES 2048 /* software prefetch distance along a weight row, bytes */

#include "engine/kernels_rows.h"

/* Sum of 16 lanes, kernels_avx512.c's tree. */
static ALWAYS_INLINE float hsum16(__m512 v)
{
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

/* acc[o * acc_stride + r] += sum over k in [0, n) (n % 16 == 0) of
 * W[o][k] * x[r][k] lane-wise, for o < NO, r < NR; `first` starts from 0. */
static ALWAYS_INLINE void mk(const int NO, const int NR, const float *w, size_t w_stride,
                             const float *x, size_t x_stride, size_t n, __m512 *acc_io,
                             size_t acc_stride, bool first)
{
    __m512 acc[MAX_NO][MAX_NR];
#pragma GCC unroll 3
    for (int o = 0; o < NO; o++)
#pragma GCC unroll 8
        for (int r = 0; r < NR; r++)
            acc[o][r] = first ? _mm512_setzero_ps() : acc_io[o * acc_stride + r];
    for (size_t k = 0; k < n; k += 16) {
        __m512 wv[MAX_NO];
#pragma GCC unroll 3
        for (int o = 0; o < NO; o++) {
            _mm_prefetch((const char *)(w + o * w_stride + k) + PF_BYTES, _MM_HINT_T1);
            wv[o] = _mm512_loadu_ps(w + o * w_stride + k);
            __asm__("" : "+v"(wv[o])); /* keep it in a register (see kernels_avx2.c) */
        }
#pragma GCC unroll 8
        for (int r = 0; r < NR; r++) {
            __m512 xv = _mm512_loadu_ps(x + r * x_stride + k);
            if (NO > 1)
                __asm__("" : "+v"(xv));
#pragma GCC unroll 3
            for (int o = 0; o < NO; o++)
                acc[o][r] = _mm512_fmadd_ps(wv[o], xv, acc[o][r]);
        }
    }
#pragma GCC unroll 3
    for (int o = 0; o < NO; o++)
#pragma GCC unroll 8
        for (int r = 0; r < NR; r++)
            acc_io[o * acc_stride + r] = acc[o][r];
}

typedef void (*mk_fn)(const float *w, size_t w_stride, const float *x, size_t x_stride, size_t n,
                      __m512 *acc, size_t acc_stride, bool first);

#define MK(NO, NR)                                                                             \
    static void mk_##NO##x##NR(const float *w, size_t w_stride, const float *x,               \
                               size_t x_stride, size_t n, __m512 *acc, size_t acc_stride,     \
                               bool first)                                                     \
    {                                                                                          \
        mk(NO, NR, w, w_stride, x, x_stride, n, acc, acc_stride, first);                       \
    }
#define MK_NO(NO) MK(NO, 1) MK(NO, 2) MK(NO, 3) MK(NO, 4) MK(NO, 5) MK(NO, 6) MK(NO, 7) MK(NO, 8)
MK_NO(1)
MK_NO(2)
MK_NO(3)

#define ROW(NO) {mk_##NO##x1, mk_##NO##x2, mk_##NO##x3, mk_##NO##x4, mk_##NO##x5, mk_##NO##x6, \
                 mk_##NO##x7, mk_##NO##x8}

/* The micro-kernel for no (1..3) weight rows by nr (1..8) activation rows. */
static mk_fn mk_pick(int no, int nr)
{
    static const mk_fn tab[MAX_NO][MAX_NR] = {ROW(1), ROW(2), ROW(3)};
    return tab[no - 1][nr - 1];
}

static ALWAYS_INLINE float load_f32(const uint8_t *row, size_t k, int wt)
{
    (void)wt;
    return ((const float *)(const void *)row)[k];
}

/* The panel's outputs (pd_finish_panel16), the tail's elements F32. */
static void finish(const uint8_t *w, size_t ws, uint32_t n_o, uint32_t n_in, size_t k_tail,
                   const float *x, size_t x_stride, uint32_t n_rows, const __m512 *acc, float *y,
                   size_t y_stride, size_t yo)
{
    pd_finish_panel16(load_f32, 0, w, ws, n_o, n_in, k_tail, x, x_stride, n_rows, acc, y,
                      y_stride, yo);
}

/* n_rows <= PD_SKINNY_MAX_ROWS. Panels of PANEL rows taken far apart
 * (kernels_rows.h), then the tail. */
static void skinny_f32(const pd_mat_t *w, uint32_t o_begin, uint32_t o_end, const float *x,
                       size_t x_stride, uint32_t n_rows, float *y, size_t y_stride)
{
    const uint32_t n_in = w->n_in;
    const size_t n16 = n_in & ~15u;
    const size_t rb = w->row_bytes;
    const uint8_t *w0 = (const uint8_t *)w->data;
    __m512 acc[PANEL * PD_SKINNY_MAX_ROWS]; /* (PANEL, n_rows) 16-lane sums */
    /* (n_rows, PANEL, YB) outputs of YB far panels */
    float stage[PD_SKINNY_MAX_ROWS * PANEL * YB] __attribute__((aligned(64)));

    const pd_rowmap_t map = pd_rowmap(o_begin, o_end, PANEL);
    pd_rowpanel_t pn;
    for (uint32_t i = 0; pd_rowmap_panel(&map, o_end, PANEL, i, &pn); i++) {
        const uint32_t np = pn.n;
        const size_t ws = (size_t)pn.step * rb, wsf = ws / sizeof(float);
        const uint8_t *wp = w0 + (size_t)pn.first * rb;
        for (size_t k0 = 0; k0 < n16; k0 += KT_F) {
            const size_t n = n16 - k0 < KT_F ? n16 - k0 : KT_F;
            const float *wk = (const float *)(const void *)wp + k0;
            for (uint32_t r = 0; r < n_rows; r += MAIN_NR) {
                const int nr = n_rows - r >= MAIN_NR ? MAIN_NR : (int)(n_rows - r);
                for (uint32_t o = 0; o < np;) {
                    const int no = np - o >= MAIN_NO ? MAIN_NO : (int)(np - o);
                    mk_pick(no, nr)(wk + o * wsf, wsf, x + r * x_stride + k0, x_stride, n,
                                    acc + o * n_rows + r, n_rows, k0 == 0);
                    o += (uint32_t)no;
                }
            }
        }
        if (i >= map.n_panels) { /* the tail's rows are adjacent: stored directly */
            finish(wp, ws, np, n_in, n16, x, x_stride, n_rows, acc, y + pn.first, y_stride,
                   pn.step);
            continue;
        }
        const uint32_t j = i % YB;
        finish(wp, ws, np, n_in, n16, x, x_stride, n_rows, acc, stage + j, PANEL * YB, YB);
        if (j == YB - 1 || i + 1 == map.n_panels)
            pd_rowmap_flush16(&map, PANEL, i - j, j + 1, stage, n_rows, y, y_stride);
    }
}

void pd_kern_skinny_f32_avx512(const pd_mat_t *w, uint32_t o_begin, uint32_t o_end,
                               const float *x, uint32_t x_stride, uint32_t n_rows, float *y,
                               uint32_t y_stride)
{
    if (o_begin >= o_end)
        return;
    while (n_rows > 0) { /* acc holds PD_SKINNY_MAX_ROWS rows */
        const uint32_t nr = n_rows < PD_SKINNY_MAX_ROWS ? n_rows : PD_SKINNY_MAX_ROWS;
        skinny_f32(w, o_begin, o_end, x, x_stride, nr, y, y_stride);
        x += (size_t)nr * x_stride;
        y += (size_t)nr * y_stride;
        n_rows -= nr;
    }
}
