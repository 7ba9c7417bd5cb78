/* kernels_attn_avx512.c -- attention over the paged KV cache with AVX-512,
 * bit for bit the AVX2 kernel's (kernels_attn_avx2.c, whose comment has
 * the three steps and why they are batch-invariant); head_dim % 16 == 0.
 *
 * The AVX2 kernel computes a score as 4 x 8 lane chains over the head's
 * dimensions (chain (c, l) takes d = 32 i + 8 c + l, then the 8-dim steps
 * of a tail into c = 0), adds them (c0+c1)+(c2+c3) per lane and then the
 * 8 lanes with a fixed tree. Here the positions are in the vector lanes
 * instead: K rows of 16 positions are transposed once per group (shared by
 * every query of the tile), and each chain (c, l) is an FMA chain over
 * 16 positions at once, broadcasting q[d]; the same sums in the same order
 * per position, 16 positions per instruction. P V keeps its one FMA per
 * position and dimension in position order, 16 dimensions per vector
 * (4 queries x 64 dimensions per micro-kernel). Softmax is the AVX2 one.
 */
#include <immintrin.h>
#include <string.h>

#include "engine/kernels.h"
#include "engine/simd_avx2.h"
#include "engine/simd_avx512.h"

#define ALWAYS_INLINE inline __attribute__((always_inline))
#define QB 4  /* queries per micro-kernel */
#define PG 16 /* positions per score group */
#define PF_BLOCKS_AHEAD 2
/* From this many queries on, a call is a prefill tile: it computes long
 * enough on each block for the hardware prefetchers, and its 128
 * prefetches per block cost more than they save (~14 % of the kernel). */
#define PF_MAX_Q 8

static ALWAYS_INLINE __m512 ld16(const void *row, size_t i, const int f16)
{
    if (f16)
        return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)row + i)));
    return _mm512_loadu_ps((const float *)row + i);
}

static ALWAYS_INLINE const void *row_at(const void *blk, size_t p, uint32_t row_stride,
                                        const int f16)
{
    return f16 ? (const void *)((const uint16_t *)blk + p * row_stride)
               : (const void *)((const float *)blk + p * row_stride);
}

/* kt[d] = (K[p][d] for the n <= 16 rows p of k; zeros past n). */
static ALWAYS_INLINE void transpose_k(const void *k, uint32_t row_stride, uint32_t n, uint32_t hd,
                                      __m512 *kt, const int f16)
{
    for (uint32_t d0 = 0; d0 < hd; d0 += 16) {
        __m512 v[16];
#pragma GCC unroll 16
        for (uint32_t i = 0; i < 16; i++)
            v[i] = i < n ? ld16(row_at(k, i, row_stride, f16), d0, f16) : _mm512_setzero_ps();
        transpose16(v);
#pragma GCC unroll 16
        for (int i = 0; i < 16; i++)
            kt[d0 + (uint32_t)i] = v[i];
    }
}

/* s_i[p .. p+16) = scale * q_i . k_p for NQ queries and the 16 positions
 * of kt, each sum the AVX2 scores_mk's: chain (c, l) over d = 32 i + 8 c +
 * l, then the 8-dim tail steps into c = 0, (c0+c1)+(c2+c3), then
 * ((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7)), times scale. */
static ALWAYS_INLINE void scores_mk(const int NQ, const float *const *q, const __m512 *kt,
                                    uint32_t hd, __m512 scale, float *const *s, uint32_t p)
{
    const uint32_t n32 = hd / 32;
    __m512 t[QB][8];
#pragma GCC unroll 8
    for (int l = 0; l < 8; l++) {
        __m512 a[QB][4];
#pragma GCC unroll 4
        for (int i = 0; i < NQ; i++)
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++)
                a[i][c] = _mm512_setzero_ps();
        for (uint32_t i32 = 0; i32 < n32; i32++)
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++) {
                const uint32_t d = 32 * i32 + 8 * (uint32_t)c + (uint32_t)l;
                const __m512 kv = kt[d];
#pragma GCC unroll 4
                for (int i = 0; i < NQ; i++)
                    a[i][c] = _mm512_fmadd_ps(_mm512_set1_ps(q[i][d]), kv, a[i][c]);
            }
        for (uint32_t d0 = 32 * n32; d0 + 8 <= hd; d0 += 8) {
            const __m512 kv = kt[d0 + (uint32_t)l];
#pragma GCC unroll 4
            for (int i = 0; i < NQ; i++)
                a[i][0] = _mm512_fmadd_ps(_mm512_set1_ps(q[i][d0 + (uint32_t)l]), kv, a[i][0]);
        }
#pragma GCC unroll 4
        for (int i = 0; i < NQ; i++)
            t[i][l] = _mm512_add_ps(_mm512_add_ps(a[i][0], a[i][1]), _mm512_add_ps(a[i][2], a[i][3]));
    }
#pragma GCC unroll 4
    for (int i = 0; i < NQ; i++) {
        const __m512 r = _mm512_add_ps(
            _mm512_add_ps(_mm512_add_ps(t[i][0], t[i][1]), _mm512_add_ps(t[i][2], t[i][3])),
            _mm512_add_ps(_mm512_add_ps(t[i][4], t[i][5]), _mm512_add_ps(t[i][6], t[i][7])));
        _mm512_storeu_ps(s[i] + p, _mm512_mul_ps(r, scale));
    }
}

/* acc[i][d0 .. d0 + 16 ND) += sum_{p < nv} e[i][p] * v[p][same], one FMA per
 * position in position order (as the AVX2 pv_mk). */
static ALWAYS_INLINE void pv_mk(const int NQ, const int ND, float *const *acc_p,
                                const float *const *e, const void *v, uint32_t row_stride,
                                uint32_t nv, uint32_t d0, const int f16)
{
    __m512 acc[QB][4];
#pragma GCC unroll 4
    for (int i = 0; i < NQ; i++)
#pragma GCC unroll 4
        for (int j = 0; j < ND; j++)
            acc[i][j] = _mm512_loadu_ps(acc_p[i] + d0 + 16 * j);
    for (uint32_t p = 0; p < nv; p++) {
        const void *vr = row_at(v, p, row_stride, f16);
        __m512 ep[QB];
#pragma GCC unroll 4
        for (int i = 0; i < NQ; i++)
            ep[i] = _mm512_set1_ps(e[i][p]);
#pragma GCC unroll 4
        for (int j = 0; j < ND; j++) {
            __m512 vv = ld16(vr, d0 + 16 * (size_t)j, f16);
            /* one load for the NQ FMAs: GCC otherwise folds it into each
             * of them, NQ loads of the same vector per position (llama-110M
             * prefill attention alone, 1 thread: 6.65-6.87 -> 6.31-6.63 ms
             * per layer) */
            __asm__("" : "+v"(vv));
#pragma GCC unroll 4
            for (int i = 0; i < NQ; i++)
                acc[i][j] = _mm512_fmadd_ps(ep[i], vv, acc[i][j]);
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < NQ; i++)
#pragma GCC unroll 4
        for (int j = 0; j < ND; j++)
            _mm512_storeu_ps(acc_p[i] + d0 + 16 * j, acc[i][j]);
}

#define PV_CASE(NQ)                                                                            \
    do {                                                                                       \
        if (left >= 4) { pv_mk(NQ, 4, acc, e, v, row_stride, nv, d0, f16); d0 += 64; }         \
        else if (left >= 2) { pv_mk(NQ, 2, acc, e, v, row_stride, nv, d0, f16); d0 += 32; }    \
        else { pv_mk(NQ, 1, acc, e, v, row_stride, nv, d0, f16); d0 += 16; }                   \
    } while (0)

static ALWAYS_INLINE void pv_group(uint32_t nq, float *const *acc, const float *const *e,
                                   const void *v, uint32_t row_stride, uint32_t nv, uint32_t hd,
                                   const int f16)
{
    for (uint32_t d0 = 0; d0 < hd;) {
        const uint32_t left = (hd - d0) / 16;
        switch (nq) {
        case 1: PV_CASE(1); break;
        case 2: PV_CASE(2); break;
        case 3: PV_CASE(3); break;
        default: PV_CASE(4); break;
        }
    }
}

static ALWAYS_INLINE void prefetch_block(const void *kv, uint32_t row_stride, uint32_t nv,
                                         uint32_t hd, const int f16)
{
    const size_t elem = f16 ? 2 : 4, row = (size_t)row_stride * elem;
    for (uint32_t p = 0; p < nv; p++)
        for (size_t b = 0; b < hd * elem; b += 64)
            _mm_prefetch((const char *)kv + p * row + b, _MM_HINT_T0);
}

/* pd_kern_softmax_avx2, 16 lanes at a time with its bits: the same max (in
 * its 8-lane order: a max of equal zeros picks by order), exp16 = exp8 lane
 * by lane, and the exponentials added into its two 4-double sums in the
 * same order (lanes 0-3 of each 8 into the first, 4-7 into the second). */
static void softmax16(float *x, uint32_t n)
{
    if (n == 0)
        return;
    float max = -INFINITY;
    uint32_t i = 0;
    if (n >= 8) {
        __m256 m = _mm256_set1_ps(-INFINITY);
        for (; i + 8 <= n; i += 8)
            m = _mm256_max_ps(m, _mm256_loadu_ps(x + i));
        max = hmax8(m);
    }
    for (; i < n; i++)
        max = x[i] > max ? x[i] : max;
    const __m512 vmax = _mm512_set1_ps(max);
    __m512d s = _mm512_setzero_pd(); /* (s0 | s1) */
    for (i = 0; i + 16 <= n; i += 16) {
        const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i), vmax));
        _mm512_storeu_ps(x + i, e);
        s = _mm512_add_pd(s, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
        s = _mm512_add_pd(s, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(
                                 _mm512_castps_pd(e), 1))));
    }
    if (i + 8 <= n) {
        const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), _mm256_set1_ps(max)));
        _mm256_storeu_ps(x + i, e);
        s = _mm512_add_pd(s, _mm512_cvtps_pd(e));
        i += 8;
    }
    double lanes[4];
    _mm256_storeu_pd(lanes, _mm256_add_pd(_mm512_castpd512_pd256(s), _mm512_extractf64x4_pd(s, 1)));
    double sum = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
    for (; i < n; i++) {
        x[i] = expf(x[i] - max);
        sum += (double)x[i];
    }
    const float inv = (float)(1.0 / sum);
    const __m512 vinv = _mm512_set1_ps(inv);
    for (i = 0; i + 16 <= n; i += 16)
        _mm512_storeu_ps(x + i, _mm512_mul_ps(_mm512_loadu_ps(x + i), vinv));
    for (; i < n; i++)
        x[i] *= inv;
}

/* The queries of [0, n_q) that see position p0, at most QB from *i0 on
 * (as the AVX2 kernel's active_group). */
static uint32_t active_group(uint32_t *i0, uint32_t n_q, const uint32_t *n_pos, uint32_t p0,
                             const float *const *q, const float *qr, size_t qs, float *const *out,
                             float *s, size_t rs, const float **qg, float **sg, float **og)
{
    uint32_t nq = 0;
    for (; *i0 < n_q && nq < QB; (*i0)++) {
        if (n_pos[*i0] <= p0)
            continue;
        qg[nq] = qr ? qr + (size_t)*i0 * qs : q[*i0];
        sg[nq] = s + (size_t)*i0 * rs;
        og[nq] = out[*i0];
        nq++;
    }
    return nq;
}

static void round_queries(uint32_t n_q, const float *const *q, uint32_t hd, float *qr, size_t qs)
{
    for (uint32_t i = 0; i < n_q; i++)
        for (uint32_t d = 0; d < hd; d += 16)
            _mm512_storeu_ps(qr + i * qs + d,
                             _mm512_cvtph_ps(_mm512_cvtps_ph(_mm512_loadu_ps(q[i] + d),
                                                             _MM_FROUND_TO_NEAREST_INT)));
}

/* Step 1: the scores of every query for the positions [p0, p0 + nv) of one
 * K block, 16 positions at a time. */
static ALWAYS_INLINE void scores_block(const pd_attn_shape_t *sh, const void *k, uint32_t p0,
                                       uint32_t nv, uint32_t n_q, const uint32_t *n_pos,
                                       const float *const *q, const float *qr, size_t qs,
                                       float *const *out, float *s, size_t rs, const int f16)
{
    const uint32_t hd = sh->head_dim;
    const __m512 vs = _mm512_set1_ps(sh->scale);
    __m512 kt[PD_ATTN_MAX_HEAD_DIM];
    const float *qg[QB];
    float *sg[QB], *og[QB];
    for (uint32_t g = 0; g < nv; g += PG) {
        transpose_k(row_at(k, g, sh->row_stride, f16), sh->row_stride,
                    nv - g < PG ? nv - g : PG, hd, kt, f16);
        for (uint32_t i0 = 0, nq; (nq = active_group(&i0, n_q, n_pos, p0 + g, q, qr, qs, out, s, rs, qg, sg, og));) {
            switch (nq) {
            case 1: scores_mk(1, qg, kt, hd, vs, sg, p0 + g); break;
            case 2: scores_mk(2, qg, kt, hd, vs, sg, p0 + g); break;
            case 3: scores_mk(3, qg, kt, hd, vs, sg, p0 + g); break;
            default: scores_mk(4, qg, kt, hd, vs, sg, p0 + g); break;
            }
        }
    }
}

static ALWAYS_INLINE void attn(const pd_attn_shape_t *sh, const void *const *k_blk,
                               const void *const *v_blk, uint32_t n_q, const float *const *q,
                               const uint32_t *n_pos, float *const *out, float *scratch,
                               const int f16)
{
    const uint32_t hd = sh->head_dim, bs = sh->block_size;
    uint32_t max_pos = 0, min_first = UINT32_MAX;
    for (uint32_t i = 0; i < n_q; i++) {
        const uint32_t f = pd_kern_attn_first(sh, n_pos[i]);
        max_pos = n_pos[i] > max_pos ? n_pos[i] : max_pos;
        min_first = f < min_first ? f : min_first;
    }
    const uint32_t j_start = n_q ? min_first / bs : 0, p_start = j_start * bs;
    const size_t rs = pd_kern_attn_row_floats(sh);
    float *s = scratch;
    const size_t qs = ((size_t)hd + 7) / 8 * 8;
    float *qr = f16 ? scratch + (size_t)n_q * rs : NULL;
    if (f16)
        round_queries(n_q, q, hd, qr, qs);
    const int pf = n_q < PF_MAX_Q;
    for (uint32_t p0 = p_start, j = j_start; pf && p0 < max_pos && j < j_start + PF_BLOCKS_AHEAD;
         p0 += bs, j++)
        prefetch_block(k_blk[j], sh->row_stride, max_pos - p0 < bs ? max_pos - p0 : bs, hd, f16);
    for (uint32_t p0 = p_start, j = j_start; p0 < max_pos; p0 += bs, j++) {
        const uint32_t nv = max_pos - p0 < bs ? max_pos - p0 : bs, pf0 = p0 + PF_BLOCKS_AHEAD * bs;
        if (pf && pf0 < max_pos)
            prefetch_block(k_blk[j + PF_BLOCKS_AHEAD], sh->row_stride,
                           max_pos - pf0 < bs ? max_pos - pf0 : bs, hd, f16);
        scores_block(sh, k_blk[j], p0, nv, n_q, n_pos, q, qr, qs, out, s, rs, f16);
    }
    for (uint32_t i = 0; i < n_q; i++) {
        float *si = s + (size_t)i * rs;
        const uint32_t first = pd_kern_attn_first(sh, n_pos[i]);
        if (sh->softcap != 0.0f)
            pd_kern_softcap(si + first, n_pos[i] - first, sh->softcap);
        softmax16(si + first, n_pos[i] - first);
        if (f16)
            for (uint32_t p = first; p < n_pos[i]; p++)
                si[p] = pd_fp16_to_fp32(pd_fp32_to_fp16(si[p]));
        memset(si + p_start, 0, sizeof(float) * (first - p_start));
        memset(si + n_pos[i], 0, sizeof(float) * (max_pos - n_pos[i]));
        memset(out[i], 0, sizeof(float) * hd);
    }
    const float *qg[QB];
    float *sg[QB], *og[QB];
    for (uint32_t p0 = p_start, j = j_start; pf && p0 < max_pos && j < j_start + PF_BLOCKS_AHEAD;
         p0 += bs, j++)
        prefetch_block(v_blk[j], sh->row_stride, max_pos - p0 < bs ? max_pos - p0 : bs, hd, f16);
    for (uint32_t p0 = p_start, j = j_start; p0 < max_pos; p0 += bs, j++) {
        const uint32_t nv = max_pos - p0 < bs ? max_pos - p0 : bs, pf0 = p0 + PF_BLOCKS_AHEAD * bs;
        if (pf && pf0 < max_pos)
            prefetch_block(v_blk[j + PF_BLOCKS_AHEAD], sh->row_stride,
                           max_pos - pf0 < bs ? max_pos - pf0 : bs, hd, f16);
        for (uint32_t i0 = 0, nq; (nq = active_group(&i0, n_q, n_pos, p0, q, qr, qs, out, s, rs, qg, sg, og));) {
            const float *eg[QB];
            for (uint32_t g = 0; g < nq; g++)
                eg[g] = sg[g] + p0;
            pv_group(nq, og, eg, v_blk[j], sh->row_stride, nv, hd, f16);
        }
    }
}

void pd_kern_attn_avx512(const pd_attn_shape_t *sh, const void *const *k_blk,
                         const void *const *v_blk, uint32_t n_q, const float *const *q,
                         const uint32_t *n_pos, float *const *out, float *scratch)
{
    if (sh->is_f16)
        attn(sh, k_blk, v_blk, n_q, q, n_pos, out, scratch, 1);
    else
        attn(sh, k_blk, v_blk, n_q, q, n_pos, out, scratch, 0);
}
