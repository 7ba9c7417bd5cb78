/* kernels_attn_avx2.c -- attention over the paged KV cache, AVX2/FMA
 * (the contract is in kernels.h, the reference in kernels_attn.c).
 *
 *   1. for each KV block j (block_size positions) up to the largest n_pos:
 *      scores, 1 query x 4 positions per micro-kernel, up to 4 queries per
 *      K block read:
 *        s[q][p] = scale * hsum(sum over 8-float chunks c of q[c] * k_p[c])
 *   2. per query: softmax over its own positions (pd_kern_softmax_avx2),
 *      zeros past them
 *   3. for each V block j: P V, 4 queries x 16 dims (or 2 x 32, 1 x 64) per
 *      micro-kernel, one FMA per position in position order:
 *        out[q][d] += p[q][p] * v[p][d]
 *
 * A query's numbers depend only on its own q, n_pos and the cache: lanes of
 * other queries never mix with its lanes, positions past its n_pos give
 * p = +0 exactly (fma(0, v, acc) == acc), and the order of every sum is
 * fixed by the position and dimension indices. Hence batch invariance.
 *
 * An F16 cache (sh->is_f16) runs the same code with every K/V load widened
 * by F16C (vcvtph2ps, exact) and each query rounded to F16 first (into the
 * scratch after the score rows): the same sums in the same order as the
 * F32 path on the widened cache.
 *
 * pd_kern_attn_heads runs n_h adjacent heads in one call: steps 1 and 3
 * take each block for every head before the next block, so a block's rows
 * (all the heads' parts of a position are adjacent) are read and
 * prefetched as one run per position instead of n_h strided passes. Each
 * head's queries go through the same micro-kernels with the same
 * operands as in a call of their own: the same bits. Measured on decode
 * attention alone (llama-110M shape, 12 heads of 64, 16-position blocks,
 * 17..64 positions, 1 thread, KV out of cache): 1.4-1.6x faster than the
 * per-head calls, F32 and F16 (docs/benchmarks.md, branch attn1).
 */
#include <string.h>

#include "engine/kernels.h"
#include "engine/simd_avx2.h"

#define ALWAYS_INLINE inline __attribute__((always_inline))
#define QB 4 /* queries per micro-kernel */

/* 8 K/V elements at row + i as floats: loaded (F32) or widened (F16, exact). */
static ALWAYS_INLINE __m256 ld8(const void *row, size_t i, const int f16)
{
    if (f16)
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + i)));
    return _mm256_loadu_ps((const float *)row + i);
}

/* The row of position p in a block whose rows are row_stride elements apart. */
static ALWAYS_INLINE const void *row_at(const void *blk, size_t p, uint32_t row_stride,
                                        const int f16)
{
    return f16 ? (const void *)((const uint16_t *)blk + p * row_stride)
               : (const void *)((const float *)blk + p * row_stride);
}

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
static ALWAYS_INLINE void scores_mk(const float *q, const void *const *k, uint32_t hd,
                                    uint32_t p0, __m128 scale, float *s, const int f16)
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
                acc[j][c] = _mm256_fmadd_ps(qv[c], ld8(k[j], d + 8 * c, f16), acc[j][c]);
    }
    for (; d + 8 <= hd; d += 8) {
        const __m256 qv = _mm256_loadu_ps(q + d);
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++)
            acc[j][0] = _mm256_fmadd_ps(qv, ld8(k[j], d, f16), acc[j][0]);
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
                                const float *const *e, const void *v, uint32_t row_stride,
                                uint32_t nv, uint32_t d0, const int f16)
{
    __m256 acc[QB][8];
#pragma GCC unroll 4
    for (int i = 0; i < NQ; i++)
#pragma GCC unroll 8
        for (int j = 0; j < ND; j++)
            acc[i][j] = _mm256_loadu_ps(acc_p[i] + d0 + 8 * j);
    for (uint32_t p = 0; p < nv; p++) {
        const void *vr = row_at(v, p, row_stride, f16);
        __m256 ep[QB];
#pragma GCC unroll 4
        for (int i = 0; i < NQ; i++)
            ep[i] = _mm256_broadcast_ss(e[i] + p);
#pragma GCC unroll 8
        for (int j = 0; j < ND; j++) {
            const __m256 vv = ld8(vr, d0 + 8 * (size_t)j, f16);
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
static ALWAYS_INLINE void scores_group(uint32_t nq, const float *const *q, const void *k,
                                       uint32_t row_stride, uint32_t p0, uint32_t nv, uint32_t hd,
                                       float scale, float *const *s, const int f16)
{
    static const float zeros[PD_ATTN_MAX_HEAD_DIM]; /* read as F32 or F16: 0 either way */
    const __m128 vs = _mm_set1_ps(scale);
    for (uint32_t j0 = 0; j0 < nv; j0 += 4) {
        const void *kr[4];
        for (uint32_t j = 0; j < 4; j++)
            kr[j] = j0 + j < nv ? row_at(k, j0 + j, row_stride, f16) : (const void *)zeros;
        for (uint32_t i = 0; i < nq; i++)
            scores_mk(q[i], kr, hd, p0 + j0, vs, s[i], f16);
    }
}

static ALWAYS_INLINE void pv_group(uint32_t nq, float *const *acc, const float *const *e,
                                   const void *v, uint32_t row_stride, uint32_t nv, uint32_t hd,
                                   const int f16)
{
    /* as many 8-dim chunks per pass as 8 accumulators allow, then halves */
    for (uint32_t d0 = 0; d0 < hd;) {
        const uint32_t left = (hd - d0) / 8;
        switch (nq) {
        case 1:
            if (left >= 8) { pv_mk(1, 8, acc, e, v, row_stride, nv, d0, f16); d0 += 64; }
            else if (left >= 4) { pv_mk(1, 4, acc, e, v, row_stride, nv, d0, f16); d0 += 32; }
            else if (left >= 2) { pv_mk(1, 2, acc, e, v, row_stride, nv, d0, f16); d0 += 16; }
            else { pv_mk(1, 1, acc, e, v, row_stride, nv, d0, f16); d0 += 8; }
            break;
        case 2:
            if (left >= 4) { pv_mk(2, 4, acc, e, v, row_stride, nv, d0, f16); d0 += 32; }
            else if (left >= 2) { pv_mk(2, 2, acc, e, v, row_stride, nv, d0, f16); d0 += 16; }
            else { pv_mk(2, 1, acc, e, v, row_stride, nv, d0, f16); d0 += 8; }
            break;
        case 3:
            if (left >= 2) { pv_mk(3, 2, acc, e, v, row_stride, nv, d0, f16); d0 += 16; }
            else { pv_mk(3, 1, acc, e, v, row_stride, nv, d0, f16); d0 += 8; }
            break;
        default:
            if (left >= 2) { pv_mk(4, 2, acc, e, v, row_stride, nv, d0, f16); d0 += 16; }
            else { pv_mk(4, 1, acc, e, v, row_stride, nv, d0, f16); d0 += 8; }
            break;
        }
    }
}

/* Prefetches the rows [0, nv) of one head's K and V in block j (the rows
 * are a whole KV row apart, a stride the hardware prefetcher does not
 * follow: without this, decode attention waits on every row). */
static ALWAYS_INLINE void prefetch_block(const void *kv, uint32_t row_stride, uint32_t nv,
                                         uint32_t hd, const int f16)
{
    const size_t elem = f16 ? 2 : 4, row = (size_t)row_stride * elem;
    for (uint32_t p = 0; p < nv; p++)
        for (size_t b = 0; b < hd * elem; b += 64)
            _mm_prefetch((const char *)kv + p * row + b, _MM_HINT_T0);
}

/* The queries of [0, n_q) that see positions from p0 on, at most QB from
 * *i0 on, with their rows of p and out; advances *i0. qr: the queries'
 * rounded copies (qs floats apart) to use instead of q, or NULL. */
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

#define PF_BLOCKS_AHEAD 2

/* Each query rounded to F16 (kept as floats: widening is exact) into qr,
 * rows qs floats apart. */
static void round_queries(uint32_t n_q, const float *const *q, uint32_t hd, float *qr, size_t qs)
{
    for (uint32_t i = 0; i < n_q; i++)
        for (uint32_t d = 0; d < hd; d += 8)
            _mm256_storeu_ps(qr + i * qs + d,
                             _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_loadu_ps(q[i] + d),
                                                             _MM_FROUND_TO_NEAREST_INT)));
}

/* One call: n_h heads of n_q queries (head-major), their K/V blocks (head
 * h's rows head_bytes * h past the first head's), the positions read
 * [p_start, max_pos) from block j_start on, the score rows (rs floats
 * apart) and, with an F16 cache, the rounded queries (qr, qs floats apart). */
typedef struct {
    const pd_attn_shape_t *sh;
    const void *const *k_blk, *const *v_blk;
    uint32_t n_h, n_q, max_pos, p_start, j_start;
    size_t head_bytes;
    const float *const *q;
    const uint32_t *n_pos;
    float *const *out;
    float *s, *qr;
    size_t rs, qs;
} call_t;

/* Prefetches region r of the call's stream: its K blocks, then its V
 * blocks, every head's rows of a position at once (adjacent heads' rows
 * are adjacent: one run per position). */
static ALWAYS_INLINE void prefetch_region(const call_t *c, uint32_t r, const int f16)
{
    const uint32_t bs = c->sh->block_size, n_b = (c->max_pos - c->p_start + bs - 1) / bs;
    if (r >= 2 * n_b)
        return;
    const uint32_t jj = r % n_b, p0 = c->p_start + jj * bs;
    const uint32_t nv = c->max_pos - p0 < bs ? c->max_pos - p0 : bs;
    prefetch_block((r < n_b ? c->k_blk : c->v_blk)[c->j_start + jj], c->sh->row_stride, nv,
                   c->n_h * c->sh->head_dim, f16);
}

/* The active queries of head h for position p0 from *i0 on (active_group). */
static ALWAYS_INLINE uint32_t head_group(const call_t *c, uint32_t h, uint32_t *i0, uint32_t p0,
                                         const float **qg, float **sg, float **og)
{
    const size_t hq = (size_t)h * c->n_q;
    return active_group(i0, c->n_q, c->n_pos, p0, c->q + hq, c->qr ? c->qr + hq * c->qs : NULL,
                        c->qs, c->out + hq, c->s + hq * c->rs, c->rs, qg, sg, og);
}

/* 1. scores of every query for the blocks it sees, K streamed once, block
 *    by block for every head. */
static ALWAYS_INLINE void scores_pass(const call_t *c, const int f16)
{
    const pd_attn_shape_t *sh = c->sh;
    const uint32_t bs = sh->block_size;
    const float *qg[QB];
    float *sg[QB], *og[QB];
    for (uint32_t a = 0; a < PF_BLOCKS_AHEAD; a++)
        prefetch_region(c, a, f16);
    for (uint32_t p0 = c->p_start, j = c->j_start, r = 0; p0 < c->max_pos; p0 += bs, j++, r++) {
        const uint32_t nv = c->max_pos - p0 < bs ? c->max_pos - p0 : bs;
        prefetch_region(c, r + PF_BLOCKS_AHEAD, f16);
        for (uint32_t h = 0; h < c->n_h; h++)
            for (uint32_t i0 = 0, nq; (nq = head_group(c, h, &i0, p0, qg, sg, og));)
                scores_group(nq, qg, (const char *)c->k_blk[j] + h * c->head_bytes,
                             sh->row_stride, p0, nv, sh->head_dim, sh->scale, sg, f16);
    }
}

/* 2. softmax per query over its own positions (those of its window, capped
 *    first when the model caps scores); zeros elsewhere, so that a tile's
 *    longer rows add exact zeros to its shorter ones. */
static ALWAYS_INLINE void softmax_pass(const call_t *c, const int f16)
{
    const pd_attn_shape_t *sh = c->sh;
    for (uint32_t i = 0; i < c->n_h * c->n_q; i++) {
        float *si = c->s + (size_t)i * c->rs;
        const uint32_t np = c->n_pos[i % c->n_q], first = pd_kern_attn_first(sh, np);
        if (sh->softcap != 0.0f)
            pd_kern_softcap(si + first, np - first, sh->softcap);
        pd_kern_softmax_avx2(si + first, np - first);
        if (f16) /* ggml rounds the probabilities for its F16 V product */
            for (uint32_t p = first; p < np; p++)
                si[p] = pd_fp16_to_fp32(pd_fp32_to_fp16(si[p]));
        memset(si + c->p_start, 0, sizeof(float) * (first - c->p_start));
        memset(si + np, 0, sizeof(float) * (c->max_pos - np));
        memset(c->out[i], 0, sizeof(float) * sh->head_dim);
    }
}

/* 3. out += p * V, V streamed once (its first blocks were prefetched
 *    during step 1's last ones). */
static ALWAYS_INLINE void pv_pass(const call_t *c, const int f16)
{
    const pd_attn_shape_t *sh = c->sh;
    const uint32_t bs = sh->block_size, n_b = (c->max_pos - c->p_start + bs - 1) / bs;
    const float *qg[QB];
    float *sg[QB], *og[QB];
    for (uint32_t p0 = c->p_start, j = c->j_start, r = n_b; p0 < c->max_pos; p0 += bs, j++, r++) {
        const uint32_t nv = c->max_pos - p0 < bs ? c->max_pos - p0 : bs;
        prefetch_region(c, r + PF_BLOCKS_AHEAD, f16);
        for (uint32_t h = 0; h < c->n_h; h++)
            for (uint32_t i0 = 0, nq; (nq = head_group(c, h, &i0, p0, qg, sg, og));) {
                const float *eg[QB];
                for (uint32_t g = 0; g < nq; g++)
                    eg[g] = sg[g] + p0;
                pv_group(nq, og, eg, (const char *)c->v_blk[j] + h * c->head_bytes,
                         sh->row_stride, nv, sh->head_dim, f16);
            }
    }
}

static ALWAYS_INLINE void attn(const pd_attn_shape_t *sh, uint32_t n_h, const void *const *k_blk,
                               const void *const *v_blk, uint32_t n_q, const float *const *q,
                               const uint32_t *n_pos, float *const *out, float *scratch,
                               const int f16)
{
    const uint32_t hd = sh->head_dim;
    uint32_t max_pos = 0, min_first = UINT32_MAX;
    for (uint32_t i = 0; i < n_q; i++) {
        const uint32_t f = pd_kern_attn_first(sh, n_pos[i]);
        max_pos = n_pos[i] > max_pos ? n_pos[i] : max_pos;
        min_first = f < min_first ? f : min_first;
    }
    if (max_pos == 0) { /* nothing to read: every output is zero */
        for (uint32_t i = 0; i < n_h * n_q; i++)
            memset(out[i], 0, sizeof(float) * hd);
        return;
    }
    /* blocks wholly before every query's window are not read */
    const uint32_t j_start = min_first / sh->block_size;
    const call_t c = { sh, k_blk, v_blk, n_h, n_q, max_pos, j_start * sh->block_size, j_start,
                       (size_t)hd * (f16 ? 2 : 4), q, n_pos, out, scratch,
                       f16 ? scratch + (size_t)n_h * n_q * pd_kern_attn_row_floats(sh) : NULL,
                       pd_kern_attn_row_floats(sh), ((size_t)hd + 7) / 8 * 8 };
    /* F16: the queries as the cache's type sees them, after the score rows */
    if (f16)
        round_queries(n_h * n_q, q, hd, c.qr, c.qs);
    scores_pass(&c, f16);
    softmax_pass(&c, f16);
    pv_pass(&c, f16);
}

void pd_kern_attn_avx2(const pd_attn_shape_t *sh, const void *const *k_blk,
                       const void *const *v_blk, uint32_t n_q, const float *const *q,
                       const uint32_t *n_pos, float *const *out, float *scratch)
{
    if (sh->is_f16)
        attn(sh, 1, k_blk, v_blk, n_q, q, n_pos, out, scratch, 1);
    else
        attn(sh, 1, k_blk, v_blk, n_q, q, n_pos, out, scratch, 0);
}

void pd_kern_attn_heads(const pd_attn_shape_t *sh, uint32_t n_h, const void *const *k_blk,
                        const void *const *v_blk, uint32_t n_q, const float *const *q,
                        const uint32_t *n_pos, float *const *out, float *scratch)
{
    if (sh->is_f16)
        attn(sh, n_h, k_blk, v_blk, n_q, q, n_pos, out, scratch, 1);
    else
        attn(sh, n_h, k_blk, v_blk, n_q, q, n_pos, out, scratch, 0);
}
