/* kernels_f32_avx512.c -- the AVX-512 skinny product of F32 weights for
 * decode batches of 2..PD_SKINNY_MAX_ROWS rows (sliced above); compiled
 * with AVX-512 flags, called only when pd_kern_isa() == PD_ISA_AVX512.
 * Two kernels: small batches (up to PD_F32_SMALL_MAX_ROWS rows, streaming
 * the weights: below) and more rows (decode batch 32, compute-bound: the
 * "More rows" section).
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
 * 10-20 % faster than kernels_avx512.c's 4 x 6 kernel, 16 rows 5-15 %.
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

/* ====== More rows (decode batch 32): the whole K per micro-kernel call ======
 *
 * Above PD_F32_SMALL_MAX_ROWS rows a product is compute-bound (32 rows:
 * 32 FMAs per weight vector), and what cost time in kernels_avx512.c's
 * 4 x 6 kernel was around the FMAs, not the loads (10 per 24 FMAs):
 *   - K-tiles of 384 (a 768-long row in two): every micro-kernel call
 *     loaded and stored its 24 accumulators and started and drained its
 *     FMA chains for 576 FMAs. The 4 x 6 loop alone, all in L1, 1 thread:
 *     94 GFLOPS at K 384, 104 at K 768 (any shape from 2 x 8 to 6 x 4 the
 *     same); so here a call runs over the whole K (up to KT_M), the
 *     accumulators never leave the registers before the end, and x and W
 *     come from L2 (a 16-row panel of 768 is 48 KB, 6 x rows 18 KB);
 *   - the 16-lane sums were reduced 16 at a time in the (output, row)
 *     order of the accumulators, so each sum went out as a scalar store
 *     (staged, then flushed); here a panel is OB = 16 adjacent outputs and
 *     the accumulators are kept (row, output), so pd_hsum16x16 of a row's
 *     16 gives its 16 outputs as one vector: one store per row and panel.
 * The panel's weight rows are adjacent (one sequential run of 16 rows
 * that the hardware prefetchers follow), and each call also brings a part
 * of the next panel into L2. The sums are the ones defined above: each
 * (o, r) is 16 lanes over k in order from zero (across K-tiles through
 * acc), hsum16's tree, then the scalar tail in order.
 * llama-110M's products of one b32 step (12 layers and the head, weights
 * streamed from memory, 1 thread, best of 15 interleaved): 87.1 ms (the
 * 4 x 6 kernel, 80 GFLOPS) -> 74.4 ms (94 GFLOPS); 17 rows 48.7 -> 44.5
 * ms, 24 rows 63.5 -> 53.8 ms. At 12 rows the small kernel stays faster
 * (34.4 against 40.5 ms), at 16 the two are level. */

#define OB 16     /* outputs per panel: one pd_hsum16x16 per activation row */
#define RB 6      /* activation rows per block (the 4 x 6 micro-kernel) */
#define KT_M 2048 /* K-tile, elements (at most): all of these models' rows */

/* acc[r * OB + o] += sum over k in [0, n) (n % 16 == 0) of W[o][k] *
 * x[r][k] lane-wise, for o < NO, r < NR; `first` starts from 0. pf (or
 * NULL): n floats of the next panel's weights, one line per 16 elements
 * brought into L2. */
static ALWAYS_INLINE void mkm(const int NO, const int NR, const float *w, size_t w_stride,
                              const float *x, size_t x_stride, size_t n, __m512 *acc_io,
                              bool first, const float *pf)
{
    __m512 acc[8][RB];
#pragma GCC unroll 8
    for (int o = 0; o < NO; o++)
#pragma GCC unroll 6
        for (int r = 0; r < NR; r++)
            acc[o][r] = first ? _mm512_setzero_ps() : acc_io[r * OB + o];
    for (size_t k = 0; k < n; k += 16) {
        if (pf != NULL)
            _mm_prefetch((const char *)(pf + k), _MM_HINT_T1);
        __m512 wv[8];
#pragma GCC unroll 8
        for (int o = 0; o < NO; o++) {
            wv[o] = _mm512_loadu_ps(w + o * w_stride + k);
            if (NR > 1)
                __asm__("" : "+v"(wv[o])); /* keep it in a register (see kernels_avx2.c) */
        }
#pragma GCC unroll 6
        for (int r = 0; r < NR; r++) {
            __m512 xv = _mm512_loadu_ps(x + r * x_stride + k);
            if (NO > 1)
                __asm__("" : "+v"(xv));
#pragma GCC unroll 8
            for (int o = 0; o < NO; o++)
                acc[o][r] = _mm512_fmadd_ps(wv[o], xv, acc[o][r]);
        }
    }
#pragma GCC unroll 8
    for (int o = 0; o < NO; o++)
#pragma GCC unroll 6
        for (int r = 0; r < NR; r++)
            acc_io[r * OB + o] = acc[o][r];
}

typedef void (*mkm_fn)(const float *w, size_t w_stride, const float *x, size_t x_stride,
                       size_t n, __m512 *acc, bool first, const float *pf);

#define MKM(NO, NR)                                                                            \
    static void mkm_##NO##x##NR(const float *w, size_t w_stride, const float *x,              \
                                size_t x_stride, size_t n, __m512 *acc, bool first,           \
                                const float *pf)                                               \
    {                                                                                          \
        mkm(NO, NR, w, w_stride, x, x_stride, n, acc, first, pf);                              \
    }
#define MKM_NO(NO) MKM(NO, 1) MKM(NO, 2) MKM(NO, 3) MKM(NO, 4) MKM(NO, 5) MKM(NO, 6)
MKM_NO(1)
MKM_NO(4)
MKM(8, 1)
MKM(8, 2)

/* The micro-kernel for nr (1..RB) activation rows and at most `left`
 * weight rows: 8 weight rows for one or two activation rows, 4 for more
 * (4 x 6 accumulators), 1 for what is left under 4; *no: the rows it takes. */
static mkm_fn mkm_pick(int nr, uint32_t left, int *no)
{
    static const mkm_fn t1[RB] = {mkm_1x1, mkm_1x2, mkm_1x3, mkm_1x4, mkm_1x5, mkm_1x6};
    static const mkm_fn t4[RB] = {mkm_4x1, mkm_4x2, mkm_4x3, mkm_4x4, mkm_4x5, mkm_4x6};
    if (nr <= 2 && left >= 8) {
        *no = 8;
        return nr == 1 ? mkm_8x1 : mkm_8x2;
    }
    *no = left >= 4 ? 4 : 1;
    return left >= 4 ? t4[nr - 1] : t1[nr - 1];
}

/* One product as the many-row kernel walks it. */
typedef struct {
    const float *w;   /* (n_out, wsf) */
    size_t wsf;       /* floats per weight row */
    uint32_t n_in;
    size_t n16, kt;   /* the vector part of a row; its K-tile */
    const float *x;   /* (n_rows, x_stride) */
    size_t x_stride;
    float *y;         /* (n_rows, y_stride) */
    size_t y_stride;
} many_t;

/* Rows [r0, r0 + nr) of the panel of n_o (<= OB) outputs from row o0: the
 * 16-lane sums over K, tile by tile, then hsum16's tree for the OB outputs
 * of a row at once (one vector, stored masked to n_o) and the scalar tail
 * k >= n16 one by one. *c counts the panel's micro-kernel calls: call c
 * brings part c (its K-tile's length) of the next panel's weights nx
 * (nx_floats; NULL: none) into L2. */
static void many_rows(const many_t *m, uint32_t o0, uint32_t n_o, uint32_t r0, int nr,
                      const float *nx, size_t nx_floats, uint32_t *c)
{
    const float *w0 = m->w + (size_t)o0 * m->wsf, *xr = m->x + (size_t)r0 * m->x_stride;
    __m512 acc[RB * OB]; /* (nr, OB) 16-lane sums, zero past n_o */
    if (n_o < OB)
        for (int i = 0; i < nr * OB; i++)
            acc[i] = _mm512_setzero_ps();
    for (size_t k0 = 0; k0 < m->n16; k0 += m->kt) {
        const size_t n = m->n16 - k0 < m->kt ? m->n16 - k0 : m->kt;
        for (uint32_t o = 0; o < n_o; (*c)++) {
            int no;
            const mkm_fn f = mkm_pick(nr, n_o - o, &no);
            const float *pf = nx != NULL && (*c + 1) * n <= nx_floats ? nx + *c * n : NULL;
            f(w0 + o * m->wsf + k0, m->wsf, xr + k0, m->x_stride, n, acc + o, k0 == 0, pf);
            o += (uint32_t)no;
        }
    }
    const __mmask16 mask = (__mmask16)((1u << n_o) - 1u);
    for (int r = 0; r < nr; r++) {
        const float *xrr = xr + (size_t)r * m->x_stride;
        float *yr = m->y + (size_t)(r0 + (uint32_t)r) * m->y_stride + o0;
        _mm512_mask_storeu_ps(yr, mask,
                              m->n16 > 0 ? pd_hsum16x16(acc + r * OB) : _mm512_setzero_ps());
        for (uint32_t o = 0; m->n16 < m->n_in && o < n_o; o++)
            for (size_t k = m->n16; k < m->n_in; k++)
                yr[o] += w0[o * m->wsf + k] * xrr[k];
    }
}

/* PD_F32_SMALL_MAX_ROWS < n_rows <= PD_SKINNY_MAX_ROWS. Panels of OB
 * adjacent outputs; per block of RB activation rows, each micro-kernel
 * call runs over a whole K-tile (all of K up to KT_M), then the block's
 * sums are reduced and stored, a row's OB outputs as one vector. */
static void skinny_f32_many(const pd_mat_t *w, uint32_t o_begin, uint32_t o_end, const float *x,
                            size_t x_stride, uint32_t n_rows, float *y, size_t y_stride)
{
    many_t m = {(const float *)w->data, w->row_bytes / sizeof(float), w->n_in, w->n_in & ~15u,
                0, x, x_stride, y, y_stride};
    m.kt = m.n16;
    if (m.n16 > KT_M) { /* equal K-tiles of at most KT_M */
        const size_t nt = (m.n16 + KT_M - 1) / KT_M;
        m.kt = ((m.n16 + nt - 1) / nt + 15) & ~(size_t)15;
    }
    for (uint32_t o0 = o_begin; o0 < o_end; o0 += OB) {
        const uint32_t n_o = o_end - o0 < OB ? o_end - o0 : OB;
        const uint32_t o1 = o0 + n_o, n_next = o_end - o1 < OB ? o_end - o1 : OB;
        const float *nx = n_next > 0 ? m.w + (size_t)o1 * m.wsf : NULL;
        uint32_t c = 0;
        for (uint32_t r0 = 0; r0 < n_rows; r0 += RB) {
            const int nr = n_rows - r0 < RB ? (int)(n_rows - r0) : RB;
            many_rows(&m, o0, n_o, r0, nr, nx, n_next * m.wsf, &c);
        }
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
        if (nr > PD_F32_SMALL_MAX_ROWS)
            skinny_f32_many(w, o_begin, o_end, x, x_stride, nr, y, y_stride);
        else
            skinny_f32(w, o_begin, o_end, x, x_stride, nr, y, y_stride);
        x += (size_t)nr * x_stride;
        y += (size_t)nr * y_stride;
        n_rows -= nr;
    }
}
