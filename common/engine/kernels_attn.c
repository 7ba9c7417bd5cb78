/* kernels_attn.c -- attention over the paged KV cache: the plain C
 * reference, the scratch size and the dispatch (the AVX2 version is in
 * kernels_attn_avx2.c). The contract is in kernels.h. */
#include <math.h>

#include "engine/kernels.h"

size_t pd_kern_attn_row_floats(const pd_attn_shape_t *s)
{
    /* scores are written 4 (AVX2) or 16 (AVX-512) positions at a time: up
     * to 15 past max_pos */
    return ((size_t)s->max_pos + 16 + 7) / 8 * 8;
}

/* Per query its scores row; with an F16 cache also its rounded copy
 * (head_dim floats, 8-aligned) after all the rows. */
size_t pd_kern_attn_scratch_floats(const pd_attn_shape_t *s, uint32_t n_q)
{
    size_t q_round = s->is_f16 ? ((size_t)s->head_dim + 7) / 8 * 8 : 0;
    return (size_t)n_q * (pd_kern_attn_row_floats(s) + q_round);
}

bool pd_kern_attn_supported(const pd_attn_shape_t *s)
{
    return s->head_dim > 0 && s->head_dim <= PD_ATTN_MAX_HEAD_DIM && s->block_size > 0 &&
           s->block_size <= PD_ATTN_MAX_BLOCK && s->max_pos > 0;
}

/* Element j of the K or V row of position p (F32 or F16 cache). */
static double ref_elem(const pd_attn_shape_t *s, const void *const *blk, uint32_t p, uint32_t j)
{
    const size_t at = (size_t)(p % s->block_size) * s->row_stride + j;
    if (s->is_f16)
        return (double)pd_fp16_to_fp32(((const uint16_t *)blk[p / s->block_size])[at]);
    return (double)((const float *)blk[p / s->block_size])[at];
}

/* Per query, in double: the maximum score, then the sum of exponentials,
 * then the weighted sum of V rows (three passes over K, none over memory
 * of its own: no allocation, so it also serves machines without AVX2).
 * Each query is computed alone, so it is batch-invariant too. q is the
 * query as the cache's type sees it (rounded to F16 for an F16 cache; the
 * probabilities are rounded too, in pd_kern_attn_ref). */
static double ref_score(const pd_attn_shape_t *s, const void *const *k_blk, const float *q,
                        uint32_t p)
{
    double d = 0.0;
    for (uint32_t j = 0; j < s->head_dim; j++)
        d += (double)q[j] * ref_elem(s, k_blk, p, j);
    d *= (double)s->scale;
    return s->softcap != 0.0f ? (double)s->softcap * tanh(d / (double)s->softcap) : d;
}

uint32_t pd_kern_attn_first(const pd_attn_shape_t *s, uint32_t n_pos)
{
    return s->window != 0 && n_pos > s->window ? n_pos - s->window : 0;
}

void pd_kern_attn_ref(const pd_attn_shape_t *s, const void *const *k_blk,
                      const void *const *v_blk, uint32_t n_q, const float *const *q,
                      const uint32_t *n_pos, float *const *out, float *scratch)
{
    const uint32_t hd = s->head_dim;
    double acc[PD_ATTN_MAX_HEAD_DIM];
    float qr[PD_ATTN_MAX_HEAD_DIM];
    (void)scratch;
    for (uint32_t i = 0; i < n_q; i++) {
        const uint32_t first = pd_kern_attn_first(s, n_pos[i]);
        for (uint32_t j = 0; j < hd; j++)
            qr[j] = s->is_f16 ? pd_fp16_to_fp32(pd_fp32_to_fp16(q[i][j])) : q[i][j];
        double max = -INFINITY, sum = 0.0;
        for (uint32_t p = first; p < n_pos[i]; p++) {
            const double sc = ref_score(s, k_blk, qr, p);
            max = sc > max ? sc : max;
        }
        for (uint32_t p = first; p < n_pos[i]; p++)
            sum += exp(ref_score(s, k_blk, qr, p) - max);
        for (uint32_t j = 0; j < hd; j++)
            acc[j] = 0.0;
        for (uint32_t p = first; p < n_pos[i]; p++) {
            double w = exp(ref_score(s, k_blk, qr, p) - max) / sum;
            if (s->is_f16) /* ggml rounds the probabilities for its F16 V product */
                w = (double)pd_fp16_to_fp32(pd_fp32_to_fp16((float)w));
            for (uint32_t j = 0; j < hd; j++)
                acc[j] += w * ref_elem(s, v_blk, p, j);
        }
        for (uint32_t j = 0; j < hd; j++)
            out[i][j] = n_pos[i] ? (float)acc[j] : 0.0f;
    }
}

/* The AVX-512 kernel pays from this many queries per call on. */
#define AVX512_MIN_Q 4

bool pd_kern_attn_heads_supported(const pd_attn_shape_t *s, uint32_t n_q)
{
    return pd_kern_has_avx2() && s->head_dim % 8 == 0 &&
           !(pd_kern_isa() == PD_ISA_AVX512 && s->head_dim % 16 == 0 && n_q >= AVX512_MIN_Q);
}

void pd_kern_attn(const pd_attn_shape_t *s, const void *const *k_blk, const void *const *v_blk,
                  uint32_t n_q, const float *const *q, const uint32_t *n_pos, float *const *out,
                  float *scratch)
{
    /* the AVX-512 kernel transposes each K group once for all n_q queries:
     * from 4 on that pays (same bits either way, so the choice is free) */
    if (pd_kern_isa() == PD_ISA_AVX512 && s->head_dim % 16 == 0 && n_q >= AVX512_MIN_Q)
        pd_kern_attn_avx512(s, k_blk, v_blk, n_q, q, n_pos, out, scratch);
    else if (pd_kern_has_avx2() && s->head_dim % 8 == 0)
        pd_kern_attn_avx2(s, k_blk, v_blk, n_q, q, n_pos, out, scratch);
    else
        pd_kern_attn_ref(s, k_blk, v_blk, n_q, q, n_pos, out, scratch);
}
