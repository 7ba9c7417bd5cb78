/* kernels_attn_avx2.c -- attention over the paged KV cache, AVX2/FMA
 * (the contract is in kernels.h, the reference in kernels_attn.c).
 *
 *   for each KV block j (block_size positions) up to the largest n_pos
 *     scores, 2 queries x 4 positions (or 1 x 8) per micro-kernel (each
 *       K row load serves both queries):
 *       s[q][p] = scale * hsum(sum over 8-float chunks c of q[c] * k_p[c])
 *     online softmax per query: m' = max(m, max_p s), corr = exp(m - m'),
 *       e_p = exp(s_p - m') (0 at masked positions), l = l * corr + sum e_p
 *     P V, 4 queries x 16 dims (or 2 x 32, 1 x 64) per micro-kernel:
 *       acc[q][d] = acc[q][d] * corr[q] + sum_p e[q][p] * v[p][d]  (in p order)
 *   out[q] = acc[q] * (1 / l[q])
 *
 * A query's numbers depend only on its own q, n_pos and the cache: lanes of
 * other queries never mix with its lanes, positions past its n_pos give
 * e = +0 exactly (fma(0, v, acc) == acc), and the order of every sum is
 * fixed by the position and dimension indices. Hence batch invariance.
 */
#include <string.h>

#include "kernels.h"
#include "simd_avx2.h"

#define ALWAYS_INLINE inline __attribute__((always_inline))
#define QB 4 /* queries per micro-kernel */

/* Lane sums of 4 vectors: lane i of the result is the sum of the 8 lanes
 * of vector i, always ((l0+l1)+(l2+l3)) + ((l4+l5)+(l6+l7)). */
static ALWAYS_INLINE __m128 reduce4(__m256 a, __m256 b, __m256 c, __m256 d)
{
    const __m256 abcd = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

/* s[i][p0 .. p0+NP) = scale * q_i . k_p for NQ queries and NP (4 or 8)
 * positions (lanes are head dimensions: one FMA chain over the head's
 * 8-float chunks per (query, position), then reduce4; NQ and NP change no
 * result). k[j] is the K row of position p0 + j. */
static ALWAYS_INLINE void scores_mk(const int NQ, const int NP, const float *const *q,
                                    const float *const *k, uint32_t hd, uint32_t p0,
                                    __m128 scale, float *const *s)
{
    __m256 acc[2][8];
#pragma GCC unroll 2
    for (int i = 0; i < NQ; i++)
#pragma GCC unroll 8
        for (int j = 0; j < NP; j++)
            acc[i][j] = _mm256_setzero_ps();
    for (uint32_t d = 0; d < hd; d += 8) {
        __m256 qv[2];
#pragma GCC unroll 2
        for (int i = 0; i < NQ; i++)
            qv[i] = _mm256_loadu_ps(q[i] + d);
#pragma GCC unroll 8
        for (int j = 0; j < NP; j++) {
            const __m256 kv = _mm256_loadu_ps(k[j] + d);
#pragma GCC unroll 2
            for (int i = 0; i < NQ; i++)
                acc[i][j] = _mm256_fmadd_ps(qv[i], kv, acc[i][j]);
        }
    }
#pragma GCC unroll 2
    for (int i = 0; i < NQ; i++)
#pragma GCC unroll 2
        for (int j = 0; j < NP; j += 4)
            _mm_store_ps(s[i] + p0 + j, _mm_mul_ps(reduce4(acc[i][j], acc[i][j + 1], acc[i][j + 2],
                                                           acc[i][j + 3]), scale));
}

/* acc[i][d0 .. d0+ND*8) = acc * corr[i] + sum_{p < nv} e[i][p] * v[p][same]
 * for NQ queries and ND chunks of 8 dims (NQ * ND <= 8 accumulators: the
 * FMA chains are per element, so NQ and ND change no result, only how
 * many chains run side by side). */
static ALWAYS_INLINE void pv_mk(const int NQ, const int ND, float *const *acc_p,
                                const float *const *e, const float *corr, const float *v,
                                uint32_t row_stride, uint32_t nv, uint32_t d0)
{
    __m256 acc[QB][8];
#pragma GCC unroll 4
    for (int i = 0; i < NQ; i++)
#pragma GCC unroll 8
        for (int j = 0; j < ND; j++)
            acc[i][j] = _mm256_mul_ps(_mm256_load_ps(acc_p[i] + d0 + 8 * j),
                                      _mm256_set1_ps(corr[i]));
    for (uint32_t p = 0; p < nv; p++) {
        const float *vr = v + (size_t)p * row_stride + d0;
        __m256 ep[QB];
#pragma GCC unroll 4
        for (int i = 0; i < NQ; i++)
            ep[i] = _mm256_broadcast_ss(e[i] + p);
#pragma GCC unroll 8
        for (int j = 0; j < ND; j++) {
            const __m256 vv = _mm256_loadu_ps(vr + 8 * j);
#pragma GCC unroll 4
            for (int i = 0; i < NQ; i++)
                acc[i][j] = _mm256_fmadd_ps(ep[i], vv, acc[i][j]);
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < NQ; i++)
#pragma GCC unroll 8
        for (int j = 0; j < ND; j++)
            _mm256_store_ps(acc_p[i] + d0 + 8 * j, acc[i][j]);
}

/* Scores of nq queries for the bs_pad positions of a block whose first
 * nv rows are at k (row_stride apart); rows past nv read as zeros. */
static void scores_group(uint32_t nq, const float *const *q, const float *k, uint32_t row_stride,
                         uint32_t nv, uint32_t hd, uint32_t bs_pad, float scale, float *const *s)
{
    static const float zeros[PD_ATTN_MAX_HEAD_DIM];
    const __m128 vs = _mm_set1_ps(scale);
    for (uint32_t p0 = 0; p0 < bs_pad; p0 += 8) { /* bs_pad % 8 == 0 */
        const float *kr[8];
        for (uint32_t j = 0; j < 8; j++)
            kr[j] = p0 + j < nv ? k + (size_t)(p0 + j) * row_stride : zeros;
        uint32_t i = 0;
        for (; i + 2 <= nq; i += 2) {
            scores_mk(2, 4, q + i, kr, hd, p0, vs, s + i);
            scores_mk(2, 4, q + i, kr + 4, hd, p0 + 4, vs, s + i);
        }
        if (i < nq)
            scores_mk(1, 8, q + i, kr, hd, p0, vs, s + i);
    }
}

static void pv_group(uint32_t nq, float *const *acc, const float *const *e, const float *corr,
                     const float *v, uint32_t row_stride, uint32_t nv, uint32_t hd)
{
    /* as many 8-dim chunks per pass as 8 accumulators allow, then halves */
    for (uint32_t d0 = 0; d0 < hd;) {
        const uint32_t left = (hd - d0) / 8;
        switch (nq) {
        case 1:
            if (left >= 8) { pv_mk(1, 8, acc, e, corr, v, row_stride, nv, d0); d0 += 64; }
            else if (left >= 4) { pv_mk(1, 4, acc, e, corr, v, row_stride, nv, d0); d0 += 32; }
            else if (left >= 2) { pv_mk(1, 2, acc, e, corr, v, row_stride, nv, d0); d0 += 16; }
            else { pv_mk(1, 1, acc, e, corr, v, row_stride, nv, d0); d0 += 8; }
            break;
        case 2:
            if (left >= 4) { pv_mk(2, 4, acc, e, corr, v, row_stride, nv, d0); d0 += 32; }
            else if (left >= 2) { pv_mk(2, 2, acc, e, corr, v, row_stride, nv, d0); d0 += 16; }
            else { pv_mk(2, 1, acc, e, corr, v, row_stride, nv, d0); d0 += 8; }
            break;
        case 3:
            if (left >= 2) { pv_mk(3, 2, acc, e, corr, v, row_stride, nv, d0); d0 += 16; }
            else { pv_mk(3, 1, acc, e, corr, v, row_stride, nv, d0); d0 += 8; }
            break;
        default:
            if (left >= 2) { pv_mk(4, 2, acc, e, corr, v, row_stride, nv, d0); d0 += 16; }
            else { pv_mk(4, 1, acc, e, corr, v, row_stride, nv, d0); d0 += 8; }
            break;
        }
    }
}

/* Prefetches the rows [0, nv) of one head's K and V in block j (the rows
 * are a whole KV row apart, a stride the hardware prefetcher does not
 * follow: without this, decode attention waits on every row). */
static void prefetch_block(const float *k, const float *v, uint32_t row_stride, uint32_t nv,
                           uint32_t hd)
{
    for (uint32_t p = 0; p < nv; p++)
        for (uint32_t d = 0; d < hd; d += 16) {
            _mm_prefetch((const char *)(k + (size_t)p * row_stride + d), _MM_HINT_T0);
            _mm_prefetch((const char *)(v + (size_t)p * row_stride + d), _MM_HINT_T0);
        }
}

/* Online softmax step for one query over one block: s (bs_pad scores, the
 * first lim valid) becomes e; updates m, l; returns the correction for
 * the query's accumulator. */
static float softmax_step(float *s, uint32_t lim, uint32_t bs_pad, float *m, float *l)
{
    const __m256 ninf = _mm256_set1_ps(-INFINITY);
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256 mx = ninf;
    for (uint32_t c = 0; c < bs_pad; c += 8) {
        const __m256 valid = _mm256_castsi256_ps(
            _mm256_cmpgt_epi32(_mm256_set1_epi32((int)lim - (int)c), lane));
        const __m256 v = _mm256_blendv_ps(ninf, _mm256_load_ps(s + c), valid);
        _mm256_store_ps(s + c, v);
        mx = _mm256_max_ps(mx, v);
    }
    const float m_blk = hmax8(mx);
    const float m_new = m_blk > *m ? m_blk : *m;
    const float corr = expf(*m - m_new); /* 0 on the first block (m = -inf) */
    const __m256 vm = _mm256_set1_ps(m_new);
    __m256 sum = _mm256_setzero_ps();
    for (uint32_t c = 0; c < bs_pad; c += 8) {
        const __m256 v = _mm256_load_ps(s + c);
        const __m256 e = _mm256_and_ps(exp8(_mm256_sub_ps(v, vm)), _mm256_cmp_ps(v, ninf, _CMP_NEQ_OQ));
        _mm256_store_ps(s + c, e);
        sum = _mm256_add_ps(sum, e);
    }
    *l = *l * corr + hadd8(sum);
    *m = m_new;
    return corr;
}

void pd_kern_attn_avx2(const pd_attn_shape_t *sh, const float *const *k_blk,
                       const float *const *v_blk, uint32_t n_q, const float *const *q,
                       const uint32_t *n_pos, float *const *out, float *scratch)
{
    const uint32_t hd = sh->head_dim, bs = sh->block_size, bs_pad = (bs + 7) / 8 * 8;
    /* scratch: s (n_q, bs_pad) | acc (n_q, hd) | m, l (n_q) */
    float *s = (float *)(((uintptr_t)scratch + 31) & ~(uintptr_t)31);
    float *acc = s + (size_t)n_q * bs_pad;
    float *m = acc + (size_t)n_q * hd, *l = m + n_q;
    uint32_t max_pos = 0;
    for (uint32_t i = 0; i < n_q; i++) {
        m[i] = -INFINITY;
        l[i] = 0.0f;
        memset(acc + (size_t)i * hd, 0, sizeof(float) * hd);
        max_pos = n_pos[i] > max_pos ? n_pos[i] : max_pos;
    }
#define PF_BLOCKS_AHEAD 2
    for (uint32_t p0 = 0, j = 0; p0 < max_pos && j < PF_BLOCKS_AHEAD; p0 += bs, j++)
        prefetch_block(k_blk[j], v_blk[j], sh->row_stride, max_pos - p0 < bs ? max_pos - p0 : bs, hd);
    for (uint32_t p0 = 0, j = 0; p0 < max_pos; p0 += bs, j++) {
        const uint32_t nv = max_pos - p0 < bs ? max_pos - p0 : bs;
        const uint32_t pf0 = p0 + PF_BLOCKS_AHEAD * bs;
        if (pf0 < max_pos)
            prefetch_block(k_blk[j + PF_BLOCKS_AHEAD], v_blk[j + PF_BLOCKS_AHEAD], sh->row_stride,
                           max_pos - pf0 < bs ? max_pos - pf0 : bs, hd);
        /* the queries that see this block, in groups of QB */
        for (uint32_t i0 = 0; i0 < n_q;) {
            const float *qg[QB];
            float *sg[QB], *ag[QB];
            float cg[QB];
            uint32_t ig[QB], nq = 0;
            for (; i0 < n_q && nq < QB; i0++) {
                if (n_pos[i0] <= p0)
                    continue;
                ig[nq] = i0;
                qg[nq] = q[i0];
                sg[nq] = s + (size_t)i0 * bs_pad;
                ag[nq] = acc + (size_t)i0 * hd;
                nq++;
            }
            if (nq == 0)
                break;
            scores_group(nq, qg, k_blk[j], sh->row_stride, nv, hd, bs_pad, sh->scale, sg);
            for (uint32_t g = 0; g < nq; g++) {
                const uint32_t i = ig[g], lim = n_pos[i] - p0 < bs ? n_pos[i] - p0 : bs;
                cg[g] = softmax_step(sg[g], lim, bs_pad, &m[i], &l[i]);
            }
            pv_group(nq, ag, (const float *const *)sg, cg, v_blk[j], sh->row_stride, nv, hd);
        }
    }
    for (uint32_t i = 0; i < n_q; i++) {
        const __m256 inv = _mm256_set1_ps(n_pos[i] ? 1.0f / l[i] : 0.0f);
        for (uint32_t d = 0; d < hd; d += 8)
            _mm256_storeu_ps(out[i] + d, _mm256_mul_ps(_mm256_load_ps(acc + (size_t)i * hd + d), inv));
    }
}
