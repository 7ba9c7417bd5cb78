/* kernels_avx512.c -- AVX-512 (F, BW, VL, VNNI) versions of the skinny
 * matmul; compiled with those flags, called only when pd_kern_has_avx512().
 *
 * Float weights (F32, F16, BF16): the loop nest of kernels_avx2.c's
 * skinny_float (panels of PANEL weight rows, K-tiles, a micro-kernel of NO
 * weight rows x NR activation rows) with 16-lane accumulators and the 32
 * registers AVX-512 has: 4 x 6 accumulators for many rows (10 loads per 24
 * FMAs), 8 x 2 for two, 8 x 1 for one. y[r][o] is the same sequence of
 * operations whatever n_rows, o_begin/o_end and the blocking (16-lane
 * sums over k in order, one fixed reduction tree, then the scalar tail),
 * so results do not depend on batch composition on a given machine; they
 * differ in the last bits from the AVX2 kernel's (8-lane sums), which is
 * why the kernel choice is per machine, not per call (pd_kern_isa).
 *
 * A panel's PANEL weight rows are taken a stride apart within the call's
 * range (kernels_rows.h), then the tail rows as one panel: the weights
 * stream as PANEL long sequential runs that the hardware prefetchers
 * follow, with no software prefetch (1 row, F32, streamed from DRAM,
 * 1 thread: 11-27 % faster than adjacent rows + prefetch, 2026-12-07).
 * Above PD_F32_SMALL_MAX_ROWS rows (decode batch 32) skinny_float stages
 * the far panels' outputs and prefetches the next tile (its comment); F32
 * weights take kernels_f32_avx512.c from 2 rows on (pd_kern_skinny), so
 * that is the F16 and BF16 path.
 *
 * Quantized weights (Q8_0, Q4_0): kernels_q_avx512.c (VNNI), whose bits
 * are the AVX2 kernel's (and ggml's AVX2 vec_dot's, the referee's).
 */
#include <immintrin.h>
#include <string.h>

#include "engine/kernels.h"
#include "engine/simd_avx512.h"

#define ALWAYS_INLINE inline __attribute__((always_inline))
#define PANEL 12      /* weight rows per panel */
#define KT_F 512      /* K-tile, elements (at most): a panel's tile is 24 KB of fp32 */
#define MAIN_NR 6     /* activation rows per float micro-kernel */
#define MAX_NR 6
#define MAX_NO 8
#define YB 16        /* far panels whose outputs are stored together (pd_rowmap_flush16) */

#include "engine/kernels_rows.h"

/* Loads 16 weights starting at element k of a float-type row, as fp32. */
static ALWAYS_INLINE __m512 load_w16(const uint8_t *row, size_t k, int wt)
{
    if (wt == PD_GGML_TYPE_F32)
        return _mm512_loadu_ps((const float *)(const void *)row + k);
    const __m256i h = _mm256_loadu_si256((const __m256i *)(const void *)(row + 2 * k));
    if (wt == PD_GGML_TYPE_F16)
        return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
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

/* Sum of 16 lanes, always the same tree: halves, then quarters, then
 * movehl, then movehdup. */
static ALWAYS_INLINE float hsum16(__m512 v)
{
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

/* acc[o * acc_stride + r] += sum over k in [0, n) (n % 16 == 0) of
 * W[o][k] * x[r][k] lane-wise, for o < NO, r < NR; `first` starts from 0.
 * pf (or NULL): a weight row of the next tile, one line brought into L2
 * per 16 elements (skinny_float). */
static ALWAYS_INLINE void mk_float(const int NO, const int NR, const int wt, const uint8_t *w,
                                   size_t w_stride, const float *x, size_t x_stride, size_t n,
                                   __m512 *acc_io, size_t acc_stride, bool first,
                                   const uint8_t *pf)
{
    const size_t esz = wt == PD_GGML_TYPE_F32 ? 4 : 2;
    __m512 acc[MAX_NO][MAX_NR];
#pragma GCC unroll 8
    for (int o = 0; o < NO; o++)
#pragma GCC unroll 6
        for (int r = 0; r < NR; r++)
            acc[o][r] = first ? _mm512_setzero_ps() : acc_io[o * acc_stride + r];
    for (size_t k = 0; k < n; k += 16) {
        if (pf != NULL)
            _mm_prefetch((const char *)pf + k * esz, _MM_HINT_T1);
        __m512 wv[MAX_NO];
#pragma GCC unroll 8
        for (int o = 0; o < NO; o++) {
            wv[o] = load_w16(w + o * w_stride, k, wt);
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
            acc_io[o * acc_stride + r] = acc[o][r];
}

typedef void (*mk_float_fn)(const uint8_t *w, size_t w_stride, const float *x, size_t x_stride,
                            size_t n, __m512 *acc, size_t acc_stride, bool first,
                            const uint8_t *pf);

#define MKF(NO, NR, WT, SFX)                                                                   \
    static void mkf_##NO##x##NR##_##SFX(const uint8_t *w, size_t w_stride, const float *x,   \
                                        size_t x_stride, size_t n, __m512 *acc,               \
                                        size_t acc_stride, bool first, const uint8_t *pf)     \
    {                                                                                          \
        mk_float(NO, NR, WT, w, w_stride, x, x_stride, n, acc, acc_stride, first, pf);         \
    }
#define MKF_NO(NO, WT, SFX)                                                                    \
    MKF(NO, 1, WT, SFX) MKF(NO, 2, WT, SFX) MKF(NO, 3, WT, SFX) MKF(NO, 4, WT, SFX)             \
    MKF(NO, 5, WT, SFX) MKF(NO, 6, WT, SFX)
#define MKF_TYPE(WT, SFX) MKF_NO(1, WT, SFX) MKF_NO(4, WT, SFX) MKF(8, 1, WT, SFX) MKF(8, 2, WT, SFX)

MKF_TYPE(PD_GGML_TYPE_F32, f32)
MKF_TYPE(PD_GGML_TYPE_F16, f16)
MKF_TYPE(PD_GGML_TYPE_BF16, bf16)

#define ROW(NO, SFX)                                                                           \
    {mkf_##NO##x1_##SFX, mkf_##NO##x2_##SFX, mkf_##NO##x3_##SFX, mkf_##NO##x4_##SFX,          \
     mkf_##NO##x5_##SFX, mkf_##NO##x6_##SFX}
#define TAB(SFX) {ROW(1, SFX), ROW(4, SFX), {mkf_8x1_##SFX, mkf_8x2_##SFX, 0, 0, 0, 0}}

/* The micro-kernel for no (1, 4 or 8) weight rows by nr activation rows. */
static mk_float_fn mkf_pick(int wt, int no, int nr)
{
    static const mk_float_fn tab[3][3][MAX_NR] = {TAB(f32), TAB(f16), TAB(bf16)};
    const int ti = wt == PD_GGML_TYPE_F32 ? 0 : wt == PD_GGML_TYPE_F16 ? 1 : 2;
    return tab[ti][no == 1 ? 0 : no == 4 ? 1 : 2][nr - 1];
}

/* Weight rows per micro-kernel: 8 for one or two activation rows (8 or 16
 * FMA chains), 4 for more (4 x 6 = 24 accumulators); 1 for a tail. */
static int pick_no(int nr, uint32_t left)
{
    const uint32_t want = nr <= 2 ? 8 : 4;
    if (want <= left)
        return (int)want;
    return left >= 4 ? 4 : 1;
}

/* The panel's outputs (pd_finish_panel16), the tail's elements by load_w1. */
static void finish_float(int wt, const uint8_t *w, size_t ws, uint32_t n_o, uint32_t n_in,
                         size_t k_tail, const float *x, size_t x_stride, uint32_t n_rows,
                         const __m512 *acc, float *y, size_t y_stride, size_t yo)
{
    pd_finish_panel16(load_w1, wt, w, ws, n_o, n_in, k_tail, x, x_stride, n_rows, acc, y,
                      y_stride, yo);
}

/* The weights of the tile after (panel i, K-tile from k0) of rows that the
 * next micro-kernel calls prefetch: the panel's next K-tile, else the next
 * panel's first; n == 0: none. */
typedef struct {
    const uint8_t *row0; /* the tile's first row, at its first element */
    size_t step;         /* bytes between its rows */
    uint32_t n;          /* its rows */
} next_tile_t;

static next_tile_t next_tile(const pd_mat_t *w, const pd_rowmap_t *map, uint32_t o_end,
                             const pd_rowpanel_t *pn, uint32_t i, size_t k1, size_t n16)
{
    const size_t rb = w->row_bytes, esz = w->type == PD_GGML_TYPE_F32 ? 4 : 2;
    const uint8_t *w0 = (const uint8_t *)w->data;
    if (k1 < n16)
        return (next_tile_t){w0 + (size_t)pn->first * rb + k1 * esz, (size_t)pn->step * rb, pn->n};
    pd_rowpanel_t nx;
    if (!pd_rowmap_panel(map, o_end, PANEL, i + 1, &nx))
        return (next_tile_t){NULL, 0, 0};
    return (next_tile_t){w0 + (size_t)nx.first * rb, (size_t)nx.step * rb, nx.n};
}

/* Panels of PANEL rows taken far apart (kernels_rows.h), then the tail.
 *
 * Above PD_F32_SMALL_MAX_ROWS activation rows the product is compute-bound
 * per tile (a panel's K-tile is used by every 6-row block from L1), and two
 * things are done differently:
 *   - the outputs of YB consecutive far panels are staged and stored YB at
 *     a time: a panel's n_rows x PANEL outputs are far apart in y (rows
 *     step apart, y rows n_out apart: with n_out 2048, the 32 rows' stores
 *     of one output fall into one L1 set), and storing them one by one
 *     missed L1 on every store (11 % of a 32-row step, perf);
 *   - each micro-kernel call also brings one weight row of the next tile
 *     into L2 (one line per 16 elements), with K-tiles made equal (a
 *     768-long row: 2 x 384, not 512 + 256) so that a call's range covers
 *     the next tile's row: the hardware prefetchers, driven by demand
 *     misses, fetch nothing while the later row blocks compute from L1.
 * Only where sums are stored and the order of loads change, not any sum. */
static void skinny_float(const pd_mat_t *w, uint32_t o_begin, uint32_t o_end, const float *x,
                         size_t x_stride, uint32_t n_rows, float *y, size_t y_stride)
{
    const int wt = (int)w->type;
    const uint32_t n_in = w->n_in;
    const size_t n16 = n_in & ~15u;
    const size_t rb = w->row_bytes;
    const size_t esz = wt == PD_GGML_TYPE_F32 ? 4 : 2;
    const uint8_t *w0 = (const uint8_t *)w->data;
    const bool many = n_rows > PD_F32_SMALL_MAX_ROWS;
    size_t kt = KT_F;
    if (many && n16 > 0) { /* equal K-tiles of at most KT_F */
        const size_t nt = (n16 + KT_F - 1) / KT_F;
        kt = ((n16 + nt - 1) / nt + 15) & ~(size_t)15;
    }
    __m512 acc[PANEL * PD_SKINNY_MAX_ROWS]; /* (PANEL, n_rows) 16-lane sums */
    /* (n_rows, PANEL, YB) outputs of YB far panels */
    float stage[PD_SKINNY_MAX_ROWS * PANEL * YB] __attribute__((aligned(64)));

    const pd_rowmap_t map = pd_rowmap(o_begin, o_end, PANEL);
    pd_rowpanel_t pn;
    for (uint32_t i = 0; pd_rowmap_panel(&map, o_end, PANEL, i, &pn); i++) {
        const uint32_t np = pn.n;
        const size_t ws = (size_t)pn.step * rb;
        const uint8_t *wp = w0 + (size_t)pn.first * rb;
        for (size_t k0 = 0; k0 < n16; k0 += kt) {
            const size_t n = n16 - k0 < kt ? n16 - k0 : kt;
            const uint8_t *wk = wp + k0 * esz;
            const next_tile_t nx = many ? next_tile(w, &map, o_end, &pn, i, k0 + kt, n16)
                                        : (next_tile_t){NULL, 0, 0};
            uint32_t c = 0; /* micro-kernel calls of this tile: call c prefetches row c */
            for (uint32_t r = 0; r < n_rows; r += MAIN_NR) {
                const int nr = n_rows - r >= MAIN_NR ? MAIN_NR : (int)(n_rows - r);
                for (uint32_t o = 0; o < np; c++) {
                    const int no = pick_no(nr, np - o);
                    const uint8_t *pf = c < nx.n ? nx.row0 + c * nx.step : NULL;
                    mkf_pick(wt, no, nr)(wk + o * ws, ws, x + r * x_stride + k0, x_stride, n,
                                         acc + o * n_rows + r, n_rows, k0 == 0, pf);
                    o += (uint32_t)no;
                }
            }
        }
        if (!many || i >= map.n_panels) { /* stored directly; the tail's rows are adjacent */
            finish_float(wt, wp, ws, np, n_in, n16, x, x_stride, n_rows, acc, y + pn.first,
                         y_stride, pn.step);
            continue;
        }
        const uint32_t j = i % YB;
        finish_float(wt, wp, ws, np, n_in, n16, x, x_stride, n_rows, acc, stage + j, PANEL * YB,
                     YB);
        if (j == YB - 1 || i + 1 == map.n_panels)
            pd_rowmap_flush16(&map, PANEL, i - j, j + 1, stage, n_rows, y, y_stride);
    }
}

void pd_kern_skinny_avx512(const pd_mat_t *w, uint32_t o_begin, uint32_t o_end, const float *x,
                           uint32_t x_stride, const void *xq, uint32_t n_rows, float *y,
                           uint32_t y_stride)
{
    if (o_begin >= o_end || n_rows == 0)
        return;
    if (w->type == PD_GGML_TYPE_Q8_0 || w->type == PD_GGML_TYPE_Q4_0) {
        pd_kern_skinny_q_avx512(w, o_begin, o_end, xq, n_rows, y, y_stride);
        return;
    }
    while (n_rows > 0) { /* acc holds PD_SKINNY_MAX_ROWS rows */
        const uint32_t nr = n_rows < PD_SKINNY_MAX_ROWS ? n_rows : PD_SKINNY_MAX_ROWS;
        skinny_float(w, o_begin, o_end, x, x_stride, nr, y, y_stride);
        x += (size_t)nr * x_stride;
        y += (size_t)nr * y_stride;
        n_rows -= nr;
    }
}
