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

#include "engine/kernels.h"
#include "engine/simd_avx2.h"

#define ALWAYS_INLINE inline __attribute__((always_inline))
#define QB 4 /* queries per micro-kernel */

/* Lane sums of 4 vectors: lane i of the result is the sum of the 8 lanes
 * of vector i, always ((l0+l1)+(l2+l3)) + ((l4+l5)+(l6+l7)). */
static ALWAYS_INLINE __m128 reduce4(__m256 a, __m256 b, __m256 c, __m256 d)
{
    const __m256 abcd = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

/* s[p0 .. p0+4) = scale * q . k_p for one query and 4 positions, each dot
 * product summed exactly as pd_kern_dot_f32_avx2 sums it (4 partial sums
 * over 32-float steps, 8-float steps into the first, (s0+s1)+(s2+s3), then
 * the same lane tree): the attention is then bit for bit the engine's
 * earlier dot / softmax / axpy loop, which the referee has measured.
 * k[j] is the K row of position p0 + j. */
static ALWAYS_INLINE void scores_mk(const float *q, const float *const *k, uint32_t hd,
                                    uint32_t p0, __m128 scale, float *s)
{
    __m256 acc[4][4];
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++)
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++)
            acc[j][c] = _mm256_setzero_ps();
    uint32_t d = 0;
    for (; d + 32 <= hd; d += 32) {
        __m256 qv[4];
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++)
            qv[c] = _mm256_loadu_ps(q + d + 8 * c);
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++)
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++)
                acc[j][c] = _mm256_fmadd_ps(qv[c], _mm256_loadu_ps(k[j] + d + 8 * c), acc[j][c]);
    }
    for (; d + 8 <= hd; d += 8) {
        const __m256 qv = _mm256_loadu_ps(q + d);
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++)
            acc[j][0] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k[j] + d), acc[j][0]);
    }
    __m256 t[4];
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++)
        t[j] = _mm256_add_ps(_mm256_add_ps(acc[j][0], acc[j][1]), _mm256_add_ps(acc[j][2], acc[j][3]));
    _mm_storeu_ps(s + p0, _mm_mul_ps(reduce4(t[0], t[1], t[2], t[3]), scale));
}

/* acc[i][d0 .. d0+ND*8) += sum_{p < nv} e[i][p] * v[p][same], one FMA per
 * position in position order (as pd_kern_axpy_f32 did it)
 * for NQ queries and ND chunks of 8 dims (NQ * ND <= 8 accumulators: the
 * FMA chains are per element, so NQ and ND change no result, only how
 * many chains run side by side). */
static ALWAYS_INLINE void pv_mk(const int NQ, const int ND, float *const *acc_p,
                                const float *const *e, const float *v, uint32_t row_stride,
                                uint32_t nv, uint32_t d0)
{
    __m256 acc[QB][8];
#pragma GCC unroll 4
    for (int i = 0; i < NQ; i++)
#pragma GCC unroll 8
        for (int j = 0; j < ND; j++)
            acc[i][j] = _mm256_loadu_ps(acc_p[i] + d0 + 8 * j);
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
            _mm256_storeu_ps(acc_p[i] + d0 + 8 * j, acc[i][j]);
}

/* Scores of the queries qs[0..nq) for positions [p0, p0 + nv) of a block
 * whose rows are at k (row_stride apart), into s_i[p0 ..] (a few floats
 * past p0 + nv are written too: rows past nv read as zeros). */
static void scores_group(uint32_t nq, const float *const *q, const float *k, uint32_t row_stride,
                         uint32_t p0, uint32_t nv, uint32_t hd, float scale, float *const *s)
{
    static const float zeros[PD_ATTN_MAX_HEAD_DIM];
    const __m128 vs = _mm_set1_ps(scale);
    for (uint32_t j0 = 0; j0 < nv; j0 += 4) {
        const float *kr[4];
        for (uint32_t j = 0; j < 4; j++)
            kr[j] = j0 + j < nv ? k + (size_t)(j0 + j) * row_stride : zeros;
        for (uint32_t i = 0; i < nq; i++)
            scores_mk(q[i], kr, hd, p0 + j0, vs, s[i]);
    }
}

static void pv_group(uint32_t nq, float *const *acc, const float *const *e, const float *v,
                     uint32_t row_stride, uint32_t nv, uint32_t hd)
{
    /* as many 8-dim chunks per pass as 8 accumulators allow, then halves */
    for (uint32_t d0 = 0; d0 < hd;) {
        const uint32_t left = (hd - d0) / 8;
        switch (nq) {
        case 1:
            if (left >= 8) { pv_mk(1, 8, acc, e, v, row_stride, nv, d0); d0 += 64; }
            else if (left >= 4) { pv_mk(1, 4, acc, e, v, row_stride, nv, d0); d0 += 32; }
            else if (left >= 2) { pv_mk(1, 2, acc, e, v, row_stride, nv, d0); d0 += 16; }
            else { pv_mk(1, 1, acc, e, v, row_stride, nv, d0); d0 += 8; }
            break;
        case 2:
            if (left >= 4) { pv_mk(2, 4, acc, e, v, row_stride, nv, d0); d0 += 32; }
            else if (left >= 2) { pv_mk(2, 2, acc, e, v, row_stride, nv, d0); d0 += 16; }
            else { pv_mk(2, 1, acc, e, v, row_stride, nv, d0); d0 += 8; }
            break;
        case 3:
            if (left >= 2) { pv_mk(3, 2, acc, e, v, row_stride, nv, d0); d0 += 16; }
            else { pv_mk(3, 1, acc, e, v, row_stride, nv, d0); d0 += 8; }
            break;
        default:
            if (left >= 2) { pv_mk(4, 2, acc, e, v, row_stride, nv, d0); d0 += 16; }
            else { pv_mk(4, 1, acc, e, v, row_stride, nv, d0); d0 += 8; }
            break;
        }
    }
}

/* Prefetches the rows [0, nv) of one head's K and V in block j (the rows
 * are a whole KV row apart, a stride the hardware prefetcher does not
 * follow: without this, decode attention waits on every row). */
static void prefetch_block(const float *kv, uint32_t row_stride, uint32_t nv, uint32_t hd)
{
    for (uint32_t p = 0; p < nv; p++)
        for (uint32_t d = 0; d < hd; d += 16)
            _mm_prefetch((const char *)(kv + (size_t)p * row_stride + d), _MM_HINT_T0);
}

/* The queries of [0, n_q) that see positions from p0 on, at most QB from
 * *i0 on, with their rows of p and out; advances *i0. */
static uint32_t active_group(uint32_t *i0, uint32_t n_q, const uint32_t *n_pos, uint32_t p0,
                             const float *const *q, float *const *out, float *s, size_t rs,
                             const float **qg, float **sg, float **og)
{
    uint32_t nq = 0;
    for (; *i0 < n_q && nq < QB; (*i0)++) {
        if (n_pos[*i0] <= p0)
            continue;
        qg[nq] = q[*i0];
        sg[nq] = s + (size_t)*i0 * rs;
        og[nq] = out[*i0];
        nq++;
    }
    return nq;
}

#define PF_BLOCKS_AHEAD 2

void pd_kern_attn_avx2(const pd_attn_shape_t *sh, const float *const *k_blk,
                       const float *const *v_blk, uint32_t n_q, const float *const *q,
                       const uint32_t *n_pos, float *const *out, float *scratch)
{
    const uint32_t hd = sh->head_dim, bs = sh->block_size;
    uint32_t max_pos = 0, min_first = UINT32_MAX;
    for (uint32_t i = 0; i < n_q; i++) {
        const uint32_t f = pd_kern_attn_first(sh, n_pos[i]);
        max_pos = n_pos[i] > max_pos ? n_pos[i] : max_pos;
        min_first = f < min_first ? f : min_first;
    }
    /* blocks wholly before every query's window are not read */
    const uint32_t j_start = n_q ? min_first / bs : 0, p_start = j_start * bs;
    const size_t rs = pd_kern_attn_row_floats(sh); /* scores per query: (max_pos + bs + 4) */
    float *s = scratch;
    const float *qg[QB];
    float *sg[QB], *og[QB];
    /* 1. scores of every query for the blocks it sees, K streamed once */
    for (uint32_t p0 = p_start, j = j_start; p0 < max_pos && j < j_start + PF_BLOCKS_AHEAD;
         p0 += bs, j++)
        prefetch_block(k_blk[j], sh->row_stride, max_pos - p0 < bs ? max_pos - p0 : bs, hd);
    for (uint32_t p0 = p_start, j = j_start; p0 < max_pos; p0 += bs, j++) {
        const uint32_t nv = max_pos - p0 < bs ? max_pos - p0 : bs, pf0 = p0 + PF_BLOCKS_AHEAD * bs;
        if (pf0 < max_pos)
            prefetch_block(k_blk[j + PF_BLOCKS_AHEAD], sh->row_stride,
                           max_pos - pf0 < bs ? max_pos - pf0 : bs, hd);
        for (uint32_t i0 = 0, nq; (nq = active_group(&i0, n_q, n_pos, p0, q, out, s, rs, qg, sg, og));)
            scores_group(nq, qg, k_blk[j], sh->row_stride, p0, nv, hd, sh->scale, sg);
    }
    /* 2. softmax per query over its own positions (those of its window,
     *    capped first when the model caps scores); zeros elsewhere, so that
     *    a tile's longer rows add exact zeros to its shorter ones */
    for (uint32_t i = 0; i < n_q; i++) {
        float *si = s + (size_t)i * rs;
        const uint32_t first = pd_kern_attn_first(sh, n_pos[i]);
        if (sh->softcap != 0.0f)
            pd_kern_softcap(si + first, n_pos[i] - first, sh->softcap);
        pd_kern_softmax_avx2(si + first, n_pos[i] - first);
        memset(si + p_start, 0, sizeof(float) * (first - p_start));
        memset(si + n_pos[i], 0, sizeof(float) * (max_pos - n_pos[i]));
        memset(out[i], 0, sizeof(float) * hd);
    }
    /* 3. out += p * V, V streamed once */
    for (uint32_t p0 = p_start, j = j_start; p0 < max_pos && j < j_start + PF_BLOCKS_AHEAD;
         p0 += bs, j++)
        prefetch_block(v_blk[j], sh->row_stride, max_pos - p0 < bs ? max_pos - p0 : bs, hd);
    for (uint32_t p0 = p_start, j = j_start; p0 < max_pos; p0 += bs, j++) {
        const uint32_t nv = max_pos - p0 < bs ? max_pos - p0 : bs, pf0 = p0 + PF_BLOCKS_AHEAD * bs;
        if (pf0 < max_pos)
            prefetch_block(v_blk[j + PF_BLOCKS_AHEAD], sh->row_stride,
                           max_pos - pf0 < bs ? max_pos - pf0 : bs, hd);
        for (uint32_t i0 = 0, nq; (nq = active_group(&i0, n_q, n_pos, p0, q, out, s, rs, qg, sg, og));) {
            const float *eg[QB];
            for (uint32_t g = 0; g < nq; g++)
                eg[g] = sg[g] + p0;
            pv_group(nq, og, eg, v_blk[j], sh->row_stride, nv, hd);
        }
    }
}
