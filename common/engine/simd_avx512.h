/* simd_avx512.h -- AVX-512 helpers shared by the *_avx512.c kernel files
 * (include it from those only: they are compiled with -mavx512f). */
#ifndef PD_SIMD_AVX512_H
#define PD_SIMD_AVX512_H

#include <immintrin.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>

/* Transposes the 16 x 16 block v[i][k] in place: four levels of swapping
 * the off-diagonal d x d blocks of every 2d x 2d block (d = 8, 4, 2, 1),
 * each level exchanging bit d of the row and the column index. */
static inline __attribute__((always_inline)) void transpose16(__m512 v[16])
{
    /* per level (d = 8, 4, 2, 1): the lanes of the lower and upper row */
    static const int32_t idx[4][2][16] = {
        {{0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23},
         {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31}},
        {{0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27},
         {4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31}},
        {{0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29},
         {2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31}},
        {{0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30},
         {1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31}},
    };
#pragma GCC unroll 4
    for (int lv = 0; lv < 4; lv++) {
        const int d = 8 >> lv;
        const __m512i ilo = _mm512_loadu_si512(idx[lv][0]), ihi = _mm512_loadu_si512(idx[lv][1]);
#pragma GCC unroll 16
        for (int i = 0; i < 16; i++) {
            if (i & d)
                continue;
            const __m512 a = v[i], b = v[i + d];
            v[i] = _mm512_permutex2var_ps(a, ilo, b);
            v[i + d] = _mm512_permutex2var_ps(a, ihi, b);
        }
    }
}

/* The skinny F32 kernels' hsum16 (halves, quarters, movehl, movehdup) of
 * 16 vectors at once: lane i of the result is hsum16(v[i]),
 * the same additions of the same pairs (halves, quarters, then the two
 * pairs of a quarter), done with 15 shuffles pairs instead of 4 shuffles
 * per sum. */
static inline __attribute__((always_inline)) __m512 pd_hsum16x16(const __m512 *v)
{
    __m512 s[8], u[4], w[2];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) /* 256-bit halves: [v2i: 8 sums | v2i+1: 8 sums] */
        s[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44),
                             _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xee));
#pragma GCC unroll 3
    for (int i = 0; i < 4; i++) /* 128-bit quarters: chunk c = v[4i + c]'s 4 sums */
        u[i] = _mm512_add_ps(_mm512_shuffle_f32x4(s[2 * i], s[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(s[2 * i], s[2 * i + 1], 0xdd));
#pragma GCC unroll 2
    for (int i = 0; i < 2; i++) /* r0 + r2, r1 + r3 (movehl) */
        w[i] = _mm512_add_ps(_mm512_shuffle_ps(u[2 * i], u[2 * i + 1], 0x44),
                             _mm512_shuffle_ps(u[2 * i], u[2 * i + 1], 0xee));
    /* (r0 + r2) + (r1 + r3) (movehdup); lane 4c + j holds v[4j + c] */
    const __m512 t = _mm512_add_ps(_mm512_shuffle_ps(w[0], w[1], 0x88),
                                   _mm512_shuffle_ps(w[0], w[1], 0xdd));
    const __m512i idx = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
    return _mm512_permutexvar_ps(idx, t);
}

/* A skinny kernel's panel finishing, shared by the F32 and the F16/BF16
 * kernels: y[r * y_stride + o * yo] for the panel's n_o x n_rows 16-lane
 * sums acc[o * n_rows + r] (row o of the panel at w + o * ws), 16 sums at a
 * time through pd_hsum16x16 (hsum16's tree, a quarter of its shuffles),
 * then the scalar tail k_tail <= k < n_in of each row, element k of a row
 * read by load1(row, k, wt). k_tail == 0: no vector part. Inlined with a
 * constant load1, so each kernel keeps its own element load. */
typedef float (*pd_load1_fn)(const uint8_t *row, size_t k, int wt);

static inline __attribute__((always_inline)) void
pd_finish_panel16(pd_load1_fn load1, int wt, const uint8_t *w, size_t ws, uint32_t n_o,
                  uint32_t n_in, size_t k_tail, const float *x, size_t x_stride, uint32_t n_rows,
                  const __m512 *acc, float *y, size_t y_stride, size_t yo)
{
    const uint32_t n = n_o * n_rows;
    float sums[16] __attribute__((aligned(64)));
    uint32_t o = 0, r = 0;
    float *yo_p = y; /* y + o * yo */
    for (uint32_t i0 = 0; i0 < n; i0 += 16) {
        const uint32_t m = n - i0 < 16 ? n - i0 : 16;
        if (k_tail > 0) {
            __m512 v[16];
            const __m512 *src = acc + i0;
            if (m < 16) { /* the last sums: zeros after them */
                for (uint32_t i = 0; i < 16; i++)
                    v[i] = i < m ? acc[i0 + i] : _mm512_setzero_ps();
                src = v;
            }
            _mm512_store_ps(sums, pd_hsum16x16(src));
        } else {
            _mm512_store_ps(sums, _mm512_setzero_ps());
        }
        if (k_tail == n_in) { /* no scalar tail (n_in % 16 == 0) */
            for (uint32_t i = 0; i < m; i++) {
                yo_p[r * y_stride] = sums[i];
                if (++r == n_rows) {
                    r = 0;
                    yo_p += yo;
                }
            }
            continue;
        }
        for (uint32_t i = 0; i < m; i++) {
            const uint8_t *row = w + o * ws;
            const float *xr = x + r * x_stride;
            float s = sums[i];
            for (size_t k = k_tail; k < n_in; k++)
                s += load1(row, k, wt) * xr[k];
            y[r * y_stride + o * yo] = s;
            if (++r == n_rows) {
                r = 0;
                o++;
            }
        }
    }
}

/* exp8 (simd_avx2.h) on 16 lanes: the same operations in the same order,
 * so every lane has exp8's bits (Cephes polynomial; -inf and anything
 * below -87.3 give 0, NaN stays NaN). */
static inline __attribute__((always_inline)) __m512 exp16(__m512 x)
{
    const __m512 hi = _mm512_set1_ps(88.0f), lo = _mm512_set1_ps(-87.3f);
    const __mmask16 nan_mask = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    const __mmask16 zero_mask = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
    x = _mm512_min_ps(_mm512_max_ps(x, lo), hi);
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    const __m512i e = _mm512_slli_epi32(
        _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    const __m512 res = _mm512_maskz_mul_ps((__mmask16)~zero_mask, p, _mm512_castsi512_ps(e));
    return _mm512_mask_blend_ps(nan_mask, res, _mm512_set1_ps(NAN));
}

/* The 32 stored nibbles of a Q4_0 block (qs: its 16 bytes) as bytes,
 * groups 0..7 in order: the 16 bytes in both halves, the upper half
 * shifted right by 4 (per dword: the bits a byte gets from its neighbour
 * are masked off). The qt and qg kernels' unsigned Q4_0 weights. */
static inline __attribute__((always_inline)) __m256i pd_q4_unpack(const uint8_t *qs)
{
    const __m256i t =
        _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(const void *)qs));
    return _mm256_and_si256(_mm256_srlv_epi32(t, _mm256_set_epi32(4, 4, 4, 4, 0, 0, 0, 0)),
                            _mm256_set1_epi8(0x0f));
}

#endif
