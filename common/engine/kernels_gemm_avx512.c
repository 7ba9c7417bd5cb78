/* kernels_gemm_avx512.c -- the tiled F32 product's micro-kernel
 * (kernels_gemm.h); compiled with AVX-512 flags, called only when
 * pd_gemm_f32_takes.
 *
 * For one packed panel of PD_GEMM_NO outputs and one tile of nr <= 14
 * activation rows, in two halves of up to 7 rows: for each lane j, the
 * outputs in the vector lanes and the rows broadcast, over m = 0 .. M-1
 * from zero, in order: acc = fma(W[o][16m + j], x[r][16m + j], acc), as
 * the skinny kernel's lane j does. A pass takes lanes j and j + 8 together
 * (4 x 7 accumulators: 16 loads per 28 FMAs, as sgemm) and adds them as it
 * ends, the first level of hsum16's tree; the 8 pair sums are kept (8 x 2
 * x 7 vectors, 7 KB on the stack), added with the rest of the tree and
 * stored to y (masked past n_o). The j-th pass reads 2 x M vector pairs of
 * the panel and 2 x M x nr floats of the tile. A fused epilogue (the
 * residual add, or SwiGLU with the gate written by the lockstep panel
 * before) is applied to each stored vector while its rows are in L1,
 * instead of a pass over the whole product afterwards (which cost ~5 % of
 * a llama-110M prefill).
 */
#include <immintrin.h>

#include "engine/kernels_gemm.h"
#include "engine/simd_avx512.h"

#define ALWAYS_INLINE inline __attribute__((always_inline))
#define LANES 16

/* Lines [lo, hi) of the next panels' weights, to be prefetched into L2
 * across a tile's 16 passes: a panel's rows are consecutive in memory, so
 * its lines are n_each consecutive lines from base[k] (64-aligned). */
typedef struct {
    const uint8_t *base[PD_MM_MAX_OUTS];
    size_t n_each, lo, hi;
} pf_lines_t;

/* The lines of pass j: one division per pass, not three per line (they
 * were ~2 % of the kernel's samples). */
static ALWAYS_INLINE void pf_pass(const pf_lines_t *pf, int j)
{
    const size_t n = pf->hi - pf->lo;
    const size_t end = pf->lo + n * (size_t)(j + 1) / LANES;
    size_t l = pf->lo + n * (size_t)j / LANES;
    if (l >= end)
        return;
    size_t k = l / pf->n_each, i = l % pf->n_each;
    for (; l < end; l++) {
        _mm_prefetch((const char *)pf->base[k] + i * 64, _MM_HINT_T1);
        if (++i == pf->n_each) {
            i = 0;
            k++;
        }
    }
}

/* The fused epilogue on one stored vector v of row r (lanes m): a += v, or
 * a = silu(a) * v with pd_kern_swiglu_avx2's operations (exp16 is exp8). */
static ALWAYS_INLINE void fuse_store(const pd_gemm_panel_fuse_t *f, float *a, __mmask16 m,
                                     __m512 v)
{
    const __m512 av = _mm512_maskz_loadu_ps(m, a);
    if (f->op == PD_GEMM_FUSE_ADD) {
        _mm512_mask_storeu_ps(a, m, _mm512_add_ps(av, v));
        return;
    }
    const __m512 e = exp16(_mm512_xor_ps(av, _mm512_set1_ps(-0.0f)));
    const __m512 silu = _mm512_div_ps(av, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
    _mm512_mask_storeu_ps(a, m, _mm512_mul_ps(silu, v));
}

/* Prefetches row r's output lines (and the fused epilogue's) into L2,
 * row r of a half tile in its pass r, ahead of the half's stores: written a
 * panel (or a product) apart, rows n_out floats apart, they are rarely
 * still cached, and the stores and epilogue loads otherwise wait for them
 * (~10 % of the kernel's time; all 56 prefetches at once waited too). */
static ALWAYS_INLINE void out_lines(int r, const float *y, size_t y_stride, uint32_t n_o,
                                    const pd_gemm_panel_fuse_t *fuse)
{
    _mm_prefetch((const char *)(y + (size_t)r * y_stride), _MM_HINT_T1);
    if (n_o > LANES)
        _mm_prefetch((const char *)(y + (size_t)r * y_stride + LANES), _MM_HINT_T1);
    if (fuse != NULL) {
        _mm_prefetch((const char *)(fuse->a + (size_t)r * fuse->stride), _MM_HINT_T1);
        if (n_o > LANES)
            _mm_prefetch((const char *)(fuse->a + (size_t)r * fuse->stride + LANES), _MM_HINT_T1);
    }
}

/* Rows per half tile: a pass holds 4 x HALF accumulators (lanes j and
 * j + 8 of both output vectors), 2 weight vectors and a broadcast. */
#define HALF 7

/* One pass over rows [0, NH) of a half tile (x at xt, nr floats per
 * step: the tile's row count), lanes j and j + 8 of both output vectors,
 * each lane from zero over m = 0 .. M-1 in order; the two lanes' sums
 * added as the pass ends (hsum16's first level, t8[j] = l[j] + l[j + 8])
 * into t[h][r]. */
static ALWAYS_INLINE void lane_pair(const int NH, const float *wp, const float *xt, size_t M,
                                    size_t nr, int j, __m512 t[2][HALF])
{
    const float *w0 = wp + (size_t)j * M * PD_GEMM_NO, *w8 = w0 + 8 * M * PD_GEMM_NO;
    const float *x0 = xt + (size_t)j * M * nr, *x8 = x0 + 8 * M * nr;
    __m512 a0[HALF], a1[HALF], b0[HALF], b1[HALF];
#pragma GCC unroll 7
    for (int r = 0; r < NH; r++) {
        a0[r] = a1[r] = _mm512_setzero_ps();
        b0[r] = b1[r] = _mm512_setzero_ps();
    }
    for (size_t m = 0; m < M; m++) {
        const __m512 u0 = _mm512_loadu_ps(w0 + m * PD_GEMM_NO);
        const __m512 u1 = _mm512_loadu_ps(w0 + m * PD_GEMM_NO + LANES);
#pragma GCC unroll 7
        for (int r = 0; r < NH; r++) {
            const __m512 x = _mm512_set1_ps(x0[m * nr + (size_t)r]);
            a0[r] = _mm512_fmadd_ps(u0, x, a0[r]);
            a1[r] = _mm512_fmadd_ps(u1, x, a1[r]);
        }
        const __m512 v0 = _mm512_loadu_ps(w8 + m * PD_GEMM_NO);
        const __m512 v1 = _mm512_loadu_ps(w8 + m * PD_GEMM_NO + LANES);
#pragma GCC unroll 7
        for (int r = 0; r < NH; r++) {
            const __m512 x = _mm512_set1_ps(x8[m * nr + (size_t)r]);
            b0[r] = _mm512_fmadd_ps(v0, x, b0[r]);
            b1[r] = _mm512_fmadd_ps(v1, x, b1[r]);
        }
    }
#pragma GCC unroll 7
    for (int r = 0; r < NH; r++) {
        t[0][r] = _mm512_add_ps(a0[r], b0[r]);
        t[1][r] = _mm512_add_ps(a1[r], b1[r]);
    }
}

/* Rows [0, NH) of a tile (NH <= HALF; x at xt with nr floats per step, y
 * and the epilogue at the half's first row): the 8 lane pairs, their sums
 * kept (8 x 2 x 7 vectors, 7 KB on the stack), then the rest of hsum16's
 * tree and the stores. pass0: this half's first pass of the tile's 16 (the
 * prefetches are spread over them). Keeping 8 pair sums per output vector
 * instead of 16 lane sums halves the stores and reloads, a fixed cost per
 * output that was ~10 % of the kernel at n_in 768: one panel over 512 rows
 * in cache, 1 thread (Zen 4, FMA peak 117 GFLOPS), went 100 -> 110 GFLOPS
 * (n_in 768) and 108 -> 109 (n_in 2048). */
static ALWAYS_INLINE void half(const int NH, const float *wp, const float *xt, size_t M,
                               size_t nr, uint32_t n_o, float *y, size_t y_stride,
                               const pd_gemm_panel_fuse_t *fuse, const pf_lines_t *pf, int pass0)
{
    __m512 s[8][2][HALF];
    for (int j = 0; j < 8; j++) {
        pf_pass(pf, pass0 + j);
        if (j < NH) /* the lines stored (and read by the epilogue) at the end */
            out_lines(j, y, y_stride, n_o, fuse);
        lane_pair(NH, wp, xt, M, nr, j, s[j]);
    }
    const __mmask16 m0 = n_o >= LANES ? 0xffff : (__mmask16)((1u << n_o) - 1);
    const __mmask16 m1 = n_o >= 2 * LANES ? 0xffff
                         : n_o > LANES ? (__mmask16)((1u << (n_o - LANES)) - 1) : 0;
    for (int r = 0; r < NH; r++)
        for (int h = 0; h < 2; h++) {
            __m512 t4[4], t2[2];
            for (int j = 0; j < 4; j++)
                t4[j] = _mm512_add_ps(s[j][h][r], s[j + 4][h][r]);
            for (int j = 0; j < 2; j++)
                t2[j] = _mm512_add_ps(t4[j], t4[j + 2]);
            const __m512 v = _mm512_add_ps(t2[0], t2[1]);
            _mm512_mask_storeu_ps(y + (size_t)r * y_stride + h * LANES, h ? m1 : m0, v);
            if (fuse != NULL)
                fuse_store(fuse, fuse->a + (size_t)r * fuse->stride + h * LANES, h ? m1 : m0, v);
        }
}

typedef void (*half_fn)(const float *wp, const float *xt, size_t M, size_t nr, uint32_t n_o,
                        float *y, size_t y_stride, const pd_gemm_panel_fuse_t *fuse,
                        const pf_lines_t *pf, int pass0);

#define HALF_N(NH)                                                                             \
    static void half_##NH(const float *wp, const float *xt, size_t M, size_t nr, uint32_t n_o, \
                          float *y, size_t y_stride, const pd_gemm_panel_fuse_t *fuse,         \
                          const pf_lines_t *pf, int pass0)                                     \
    {                                                                                          \
        half(NH, wp, xt, M, nr, n_o, y, y_stride, fuse, pf, pass0);                            \
    }
HALF_N(1) HALF_N(2) HALF_N(3) HALF_N(4) HALF_N(5) HALF_N(6) HALF_N(7)

/* One tile of nr <= PD_GEMM_NR rows (x packed with nr floats per step, y
 * and the epilogue at its first row): rows [0, 7), then [7, nr). */
static void tile(uint32_t nr, const float *wp, const float *xt, size_t M, uint32_t n_o, float *y,
                 size_t y_stride, const pd_gemm_panel_fuse_t *fuse, const pf_lines_t *pf)
{
    static const half_fn tab[HALF + 1] = {NULL,   half_1, half_2, half_3,
                                          half_4, half_5, half_6, half_7};
    const uint32_t n0 = nr < HALF ? nr : HALF;
    tab[n0](wp, xt, M, nr, n_o, y, y_stride, fuse, pf, 0);
    if (nr <= HALF)
        return;
    pd_gemm_panel_fuse_t f1;
    if (fuse != NULL)
        f1 = (pd_gemm_panel_fuse_t){fuse->op, fuse->a + (size_t)HALF * fuse->stride, fuse->stride};
    tab[nr - HALF](wp, xt + HALF, M, nr, n_o, y + (size_t)HALF * y_stride, y_stride,
                   fuse != NULL ? &f1 : NULL, pf, 8);
}

/* The next panel's rows are prefetched over the last PF_TILES tiles only:
 * earlier, the packed x streaming through L2 would evict them first. */
#define PF_TILES 8

void pd_gemm_f32_panels_avx512(const pd_gemm_panel_t *p, int n_p, const float *xp,
                               uint32_t n_in, uint32_t n_rows, uint32_t n_o,
                               const pd_gemm_next_t *next, int n_next)
{
    const size_t M = n_in / LANES;
    const uint32_t n_tiles = (n_rows + PD_GEMM_NR - 1) / PD_GEMM_NR;
    const uint32_t pf_from = n_tiles > PF_TILES ? n_tiles - PF_TILES : 0;
    pf_lines_t pf = {0};
    size_t n_lines = 0;
    if (next != NULL && n_next > 0 && next[0].w != NULL) {
        const pd_mat_t *nw = next[0].w; /* all next[] share n_in, n_out and o0 */
        const uint32_t rows = nw->n_out - next[0].o0 < PD_GEMM_NO ? nw->n_out - next[0].o0
                                                                   : PD_GEMM_NO;
        /* the panel's bytes: rows of n_in floats, or of quantized blocks */
        const size_t bytes = (size_t)rows * nw->row_bytes;
        size_t skew = 0;
        for (int k = 0; k < n_next && k < PD_MM_MAX_OUTS; k++) {
            const uintptr_t a = (uintptr_t)next[k].w->data + (size_t)next[k].o0 * nw->row_bytes;
            pf.base[k] = (const uint8_t *)(a & ~(uintptr_t)63);
            skew = a % 64 > skew ? a % 64 : skew;
        }
        pf.n_each = (skew + bytes + 63) / 64;
        n_lines = pf.n_each * (size_t)(n_next < PD_MM_MAX_OUTS ? n_next : PD_MM_MAX_OUTS);
    }
    const size_t n_steps = (size_t)(n_tiles - pf_from) * (size_t)n_p;
    for (uint32_t t = 0; t < n_tiles; t++) {
        const uint32_t r0 = t * PD_GEMM_NR;
        const uint32_t nr = n_rows - r0 < PD_GEMM_NR ? n_rows - r0 : PD_GEMM_NR;
        for (int k = 0; k < n_p; k++) {
            pf.lo = pf.hi = 0;
            if (n_lines > 0 && t >= pf_from) {
                const size_t step = (size_t)(t - pf_from) * (size_t)n_p + (size_t)k;
                pf.lo = n_lines * step / n_steps;
                pf.hi = n_lines * (step + 1) / n_steps;
            }
            const pd_gemm_panel_fuse_t *fu = p[k].fuse;
            pd_gemm_panel_fuse_t f;
            if (fu != NULL)
                f = (pd_gemm_panel_fuse_t){fu->op, fu->a + (size_t)r0 * fu->stride, fu->stride};
            tile(nr, p[k].wp, xp + (size_t)r0 * n_in, M, n_o, p[k].y + (size_t)r0 * p[k].y_stride,
                 p[k].y_stride, fu != NULL ? &f : NULL, &pf);
        }
    }
}

void pd_gemm_f32_panel_avx512(const float *wp, const float *xp, uint32_t n_in, uint32_t n_rows,
                              uint32_t n_o, float *y, uint32_t y_stride,
                              const pd_gemm_panel_fuse_t *fuse, const pd_gemm_next_t *next)
{
    const pd_gemm_panel_t p = {wp, y, y_stride, fuse};
    pd_gemm_f32_panels_avx512(&p, 1, xp, n_in, n_rows, n_o, next, next != NULL ? 1 : 0);
}

/* ====== Packing the weights: 16 x 16 transposes ====== */

void pd_gemm_f32_pack_w_avx512(const pd_mat_t *w, uint32_t o0, float *wp)
{
    const size_t M = w->n_in / LANES;
    const uint32_t n_o = w->n_out - o0 < PD_GEMM_NO ? w->n_out - o0 : PD_GEMM_NO;
    const uint8_t *base = (const uint8_t *)w->data + (size_t)o0 * w->row_bytes;
    for (size_t m = 0; m < M; m++)
        for (uint32_t h = 0; h < PD_GEMM_NO / LANES; h++) {
            __m512 v[16];
#pragma GCC unroll 16
            for (uint32_t i = 0; i < 16; i++) {
                const uint32_t o = h * LANES + i;
                v[i] = o < n_o ? _mm512_loadu_ps((const float *)(const void *)
                                                 (base + (size_t)o * w->row_bytes) + m * LANES)
                               : _mm512_setzero_ps();
            }
            transpose16(v);
#pragma GCC unroll 16
            for (int j = 0; j < 16; j++)
                _mm512_storeu_ps(wp + ((size_t)j * M + m) * PD_GEMM_NO + h * LANES, v[j]);
        }
}

/* pd_gemm_f32_pack_x's bytes: per 16-element step m, the tile's nr rows
 * transposed (rows past nr read as zeros), lane r of row j stored to
 * xp[(j * M + m) * nr + r] for r < nr. */
void pd_gemm_f32_pack_x_avx512(const float *x, uint32_t x_stride, uint32_t n_in, uint32_t r0,
                               uint32_t nr, float *xp)
{
    const size_t M = n_in / LANES;
    float *t = xp + (size_t)r0 * n_in;
    const __mmask16 keep = (__mmask16)((1u << nr) - 1);
    for (size_t m = 0; m < M; m++) {
        __m512 v[16];
#pragma GCC unroll 16
        for (uint32_t r = 0; r < 16; r++)
            v[r] = r < nr ? _mm512_loadu_ps(x + (size_t)(r0 + r) * x_stride + m * LANES)
                          : _mm512_setzero_ps();
        transpose16(v);
#pragma GCC unroll 16
        for (int j = 0; j < 16; j++)
            _mm512_mask_storeu_ps(t + ((size_t)j * M + m) * nr, keep, v[j]);
    }
}
