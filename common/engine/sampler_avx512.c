/* sampler_avx512.c -- the greedy argmax in one AVX-512 pass; compiled with
 * AVX-512 flags, called only when pd_kern_isa() == PD_ISA_AVX512
 * (pd_argmax in sampler.c).
 *
 * Same id as pd_argmax_ref (sampler.c), which is the definition: the
 * lowest index holding the largest value, NaN never wins, 0 when every
 * value is NaN or -inf. Each of 4 x 16 lanes keeps its largest value and
 * the first index that held it (a strictly greater value replaces it, so
 * an equal later one does not, and NaN compares false); the lanes are
 * merged by value, then lowest index among equal values (== counts -0 and
 * +0 as equal, as the reference's scan does). A decode step of batch 32
 * takes this for 32 rows of 32000 logits: the reference's two passes
 * (a max, then a scan for its first index) read each row twice and the
 * scan is scalar.
 */
#include <immintrin.h>
#include <math.h>

#include "engine/sampler.h"

#define CHAINS 4 /* independent 16-lane maxima: the compare-blend latency overlaps */

/* Lane-wise merge of (vb, ib) into (va, ia): the larger value, the lower
 * index among equal values. */
static inline __attribute__((always_inline)) void merge(__m512 *va, __m512i *ia, __m512 vb,
                                                        __m512i ib)
{
    const __mmask16 gt = _mm512_cmp_ps_mask(vb, *va, _CMP_GT_OQ);
    const __mmask16 eq = _mm512_cmp_ps_mask(vb, *va, _CMP_EQ_OQ);
    const __mmask16 lo = _mm512_cmplt_epi32_mask(ib, *ia);
    const __mmask16 take = gt | (eq & lo);
    *va = _mm512_mask_mov_ps(*va, take, vb);
    *ia = _mm512_mask_mov_epi32(*ia, take, ib);
}

int32_t pd_argmax_avx512(const float *x, uint32_t n)
{
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    const __m512i iota = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    __m512 m[CHAINS];
    __m512i id[CHAINS];
    for (int c = 0; c < CHAINS; c++) {
        m[c] = ninf;
        id[c] = _mm512_setzero_si512();
    }
    uint32_t i = 0;
    for (; i + 16 * CHAINS <= n; i += 16 * CHAINS) {
#pragma GCC unroll 4
        for (int c = 0; c < CHAINS; c++) {
            const __m512 v = _mm512_loadu_ps(x + i + 16 * c);
            const __mmask16 gt = _mm512_cmp_ps_mask(v, m[c], _CMP_GT_OQ);
            m[c] = _mm512_mask_mov_ps(m[c], gt, v);
            id[c] = _mm512_mask_mov_epi32(id[c], gt,
                                          _mm512_add_epi32(iota, _mm512_set1_epi32((int)(i + 16 * c))));
        }
    }
    for (; i < n; i += 16) { /* the rest, 16 at a time; missing lanes read as -inf */
        const __mmask16 in = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1u);
        const __m512 v = _mm512_mask_loadu_ps(ninf, in, x + i);
        const __mmask16 gt = _mm512_cmp_ps_mask(v, m[0], _CMP_GT_OQ);
        m[0] = _mm512_mask_mov_ps(m[0], gt, v);
        id[0] = _mm512_mask_mov_epi32(id[0], gt, _mm512_add_epi32(iota, _mm512_set1_epi32((int)i)));
    }
    for (int c = 1; c < CHAINS; c++)
        merge(&m[0], &id[0], m[c], id[c]);
    const float best = _mm512_reduce_max_ps(m[0]); /* m holds no NaN */
    if (best == -INFINITY)
        return 0;
    const __mmask16 at = _mm512_cmp_ps_mask(m[0], _mm512_set1_ps(best), _CMP_EQ_OQ);
    return _mm512_mask_reduce_min_epi32(at, id[0]);
}
