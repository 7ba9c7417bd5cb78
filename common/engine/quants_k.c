/* quants_k.c -- K-quants and IQ4_NL: dequantization, quantization, scale
 * checks and the reference skinny product. See quants_k.h for the layouts.
 *
 * The arithmetic follows ggml's reference functions operation by operation
 * (ggml-quants.c: dequantize_row_*, quantize_row_*_ref, make_qkx2_quants,
 * make_q3_quants, make_qx_quants, quantize_iq4_nl), so that a file written
 * here has the bytes llama-quantize would write for the same floats and a
 * dequantized row has the floats ggml computes. This file is compiled for
 * baseline x86-64 with -std=c11, so no multiply-add is contracted into an
 * FMA, like ggml's own reference build.
 */
#include "engine/quants_k.h"

#include <math.h>
#include <string.h>

#include "engine/kernels.h"
#include "engine/quants_k_internal.h"

#define QK_K PD_QK_K

const int8_t pd_iq4nl_values[16] = {
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
};

bool pd_quant_is_k(pd_ggml_type_t t)
{
    return t == PD_GGML_TYPE_Q2_K || t == PD_GGML_TYPE_Q3_K || t == PD_GGML_TYPE_Q4_K ||
           t == PD_GGML_TYPE_Q5_K || t == PD_GGML_TYPE_Q6_K;
}


/* ====== Dequantization (ggml's dequantize_row_*) ====== */

static void deq_q2_k(const uint8_t *b, float *y)
{
    const uint8_t *scales = b, *q = b + 16;
    const float d = ld_f16(b + 80), min = ld_f16(b + 82);
    int is = 0;
    for (int n = 0; n < QK_K; n += 128) {
        for (int shift = 0; shift < 8; shift += 2) {
            for (int half = 0; half < 2; half++) {
                const uint8_t sc = scales[is++];
                const float dl = d * (float)(sc & 0xF), ml = min * (float)(sc >> 4);
                for (int l = 0; l < 16; l++)
                    *y++ = dl * (float)((q[l + 16 * half] >> shift) & 3) - ml;
            }
        }
        q += 32;
    }
}

static void deq_q3_k(const uint8_t *b, float *y)
{
    const uint8_t *hm = b, *q = b + 32;
    int8_t sc[16];
    q3k_scales(b + 96, sc);
    const float d_all = ld_f16(b + 108);
    int is = 0;
    uint8_t m = 1;
    for (int n = 0; n < QK_K; n += 128) {
        for (int shift = 0; shift < 8; shift += 2) {
            for (int half = 0; half < 2; half++) {
                const float dl = d_all * (float)sc[is++];
                for (int l = 16 * half; l < 16 * half + 16; l++)
                    *y++ = dl * (float)(((q[l] >> shift) & 3) - ((hm[l] & m) ? 0 : 4));
            }
            m = (uint8_t)(m << 1);
        }
        q += 32;
    }
}

/* Q4_K (has_high false) and Q5_K: the same scales, Q5_K adds bit 5 from qh. */
static void deq_q45_k(const uint8_t *b, float *y, bool has_high)
{
    const float d = ld_f16(b), min = ld_f16(b + 2);
    const uint8_t *scales = b + 4, *qh = b + 16, *q = has_high ? b + 48 : b + 16;
    uint8_t u1 = 1, u2 = 2;
    for (int j = 0; j < 8; j += 2) {
        uint8_t sc, m;
        k4_scale_min(j, scales, &sc, &m);
        const float d1 = d * (float)sc, m1 = min * (float)m;
        k4_scale_min(j + 1, scales, &sc, &m);
        const float d2 = d * (float)sc, m2 = min * (float)m;
        for (int l = 0; l < 32; l++)
            *y++ = d1 * (float)((q[l] & 0xF) + (has_high && (qh[l] & u1) ? 16 : 0)) - m1;
        for (int l = 0; l < 32; l++)
            *y++ = d2 * (float)((q[l] >> 4) + (has_high && (qh[l] & u2) ? 16 : 0)) - m2;
        q += 32;
        u1 = (uint8_t)(u1 << 2);
        u2 = (uint8_t)(u2 << 2);
    }
}

static void deq_q6_k(const uint8_t *b, float *y)
{
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    const float d = ld_f16(b + 208);
    for (int n = 0; n < QK_K; n += 128) {
        for (int l = 0; l < 32; l++) {
            const int is = l / 16;
            const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
            const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
            const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            y[l] = d * (float)sc[is] * (float)q1;
            y[l + 32] = d * (float)sc[is + 2] * (float)q2;
            y[l + 64] = d * (float)sc[is + 4] * (float)q3;
            y[l + 96] = d * (float)sc[is + 6] * (float)q4;
        }
        y += 128;
        ql += 64;
        qh += 32;
        sc += 8;
    }
}

static void deq_iq4_nl(const uint8_t *b, float *y)
{
    const float d = ld_f16(b);
    for (int j = 0; j < 16; j++) {
        y[j] = d * (float)pd_iq4nl_values[b[2 + j] & 0xF];
        y[j + 16] = d * (float)pd_iq4nl_values[b[2 + j] >> 4];
    }
}

void pd_dequant_row_k_ref(pd_ggml_type_t t, const void *src, float *dst, uint32_t n)
{
    const uint8_t *s = src;
    const uint32_t be = pd_ggml_block_elems(t), bb = pd_ggml_block_bytes(t);
    for (uint32_t i = 0; be != 0 && i < n / be; i++) {
        const uint8_t *b = s + (size_t)i * bb;
        float *y = dst + (size_t)i * be;
        switch (t) {
        case PD_GGML_TYPE_Q2_K: deq_q2_k(b, y); break;
        case PD_GGML_TYPE_Q3_K: deq_q3_k(b, y); break;
        case PD_GGML_TYPE_Q4_K: deq_q45_k(b, y, false); break;
        case PD_GGML_TYPE_Q5_K: deq_q45_k(b, y, true); break;
        case PD_GGML_TYPE_Q6_K: deq_q6_k(b, y); break;
        case PD_GGML_TYPE_IQ4_NL: deq_iq4_nl(b, y); break;
        default: return;
        }
    }
}


/* ====== Q8_K activations ====== */

void pd_dequant_row_q8_k(const void *src, float *dst, uint32_t n)
{
    for (uint32_t b = 0; b < n / QK_K; b++) {
        const uint8_t *blk = (const uint8_t *)src + (size_t)b * PD_Q8_K_BYTES;
        float d;
        memcpy(&d, blk, 4);
        for (int j = 0; j < QK_K; j++)
            dst[(size_t)b * QK_K + j] = d * (float)(int8_t)blk[4 + j];
    }
}

/* ====== Scale checks ====== */

int64_t pd_quant_find_bad_scale(pd_ggml_type_t t, const void *data, uint64_t n_blocks,
                                uint16_t *bits, const char **field)
{
    size_t d_at, dmin_at = SIZE_MAX; /* byte offsets of the fp16 scales in a block */
    switch (t) {
    case PD_GGML_TYPE_Q8_0: case PD_GGML_TYPE_Q4_0: case PD_GGML_TYPE_IQ4_NL: d_at = 0; break;
    case PD_GGML_TYPE_Q2_K: d_at = 80; dmin_at = 82; break;
    case PD_GGML_TYPE_Q3_K: d_at = 108; break;
    case PD_GGML_TYPE_Q4_K: case PD_GGML_TYPE_Q5_K: d_at = 0; dmin_at = 2; break;
    case PD_GGML_TYPE_Q6_K: d_at = 208; break;
    default: return -1;
    }
    const size_t bb = pd_ggml_block_bytes(t);
    const uint8_t *p = data;
    for (uint64_t i = 0; i < n_blocks; i++, p += bb) {
        uint16_t h;
        memcpy(&h, p + d_at, 2);
        if ((h & 0x7c00) == 0x7c00) { /* exponent all ones: Inf or NaN */
            *bits = h;
            *field = "d";
            return (int64_t)i;
        }
        if (dmin_at == SIZE_MAX)
            continue;
        memcpy(&h, p + dmin_at, 2);
        if ((h & 0x7c00) == 0x7c00) {
            *bits = h;
            *field = "dmin";
            return (int64_t)i;
        }
    }
    return -1;
}

/* ====== Reference skinny product ====== */

/* The elements of one weight block as exact doubles (an fp16 scale times
 * small integers is exact in a double), read from the layout element by
 * element: an independent derivation from the one the dequantizers use. */
static void block_values(pd_ggml_type_t t, const uint8_t *b, double *v)
{
    for (int e = 0; e < (t == PD_GGML_TYPE_IQ4_NL ? PD_QK4_NL : QK_K); e++) {
        const int c = e / 32, l = e % 32; /* 32-chunk, position in it */
        uint8_t sc, m;
        switch (t) {
        case PD_GGML_TYPE_Q2_K: {
            const uint8_t s = b[e / 16];
            const int q = (b[16 + (e / 128) * 32 + l] >> (2 * ((e % 128) / 32))) & 3;
            v[e] = (double)ld_f16(b + 80) * (s & 0xF) * q - (double)ld_f16(b + 82) * (s >> 4);
            break;
        }
        case PD_GGML_TYPE_Q3_K: {
            int8_t s[16];
            q3k_scales(b + 96, s);
            const int low = (b[32 + (e / 128) * 32 + l] >> (2 * ((e % 128) / 32))) & 3;
            const int high = (b[l] >> c) & 1;
            const int8_t sc = s[e / 16];
            v[e] = (double)ld_f16(b + 108) * sc * (low - (high ? 0 : 4));
            break;
        }
        case PD_GGML_TYPE_Q4_K: {
            const uint8_t qb = b[16 + (e / 64) * 32 + l];
            k4_scale_min(c, b + 4, &sc, &m);
            v[e] = (double)ld_f16(b) * sc * ((e % 64) < 32 ? qb & 0xF : qb >> 4) -
                   (double)ld_f16(b + 2) * m;
            break;
        }
        case PD_GGML_TYPE_Q5_K: {
            const uint8_t qb = b[48 + (e / 64) * 32 + l];
            const int q = ((e % 64) < 32 ? qb & 0xF : qb >> 4) + 16 * ((b[16 + l] >> c) & 1);
            k4_scale_min(c, b + 4, &sc, &m);
            v[e] = (double)ld_f16(b) * sc * q - (double)ld_f16(b + 2) * m;
            break;
        }
        case PD_GGML_TYPE_Q6_K: {
            const int n = e / 128, k = (e % 128) / 32; /* half, quarter */
            const uint8_t lb = b[n * 64 + (k & 1) * 32 + l];
            const int low = k < 2 ? lb & 0xF : lb >> 4;
            const int high = (b[128 + n * 32 + l] >> (2 * k)) & 3;
            v[e] = (double)ld_f16(b + 208) * (int8_t)b[192 + e / 16] * ((low | (high << 4)) - 32);
            break;
        }
        case PD_GGML_TYPE_IQ4_NL:
            v[e] = (double)ld_f16(b) *
                   pd_iq4nl_values[e < 16 ? b[2 + e] & 0xF : b[2 + e - 16] >> 4];
            break;
        default:
            v[e] = 0;
        }
    }
}

void pd_kern_skinny_k_ref(pd_ggml_type_t wtype, const uint8_t *w, uint64_t row_bytes,
                          uint32_t n_in, uint32_t o_begin, uint32_t o_end, const void *xq,
                          uint32_t n_rows, float *y, uint32_t y_stride)
{
    const bool is_nl = wtype == PD_GGML_TYPE_IQ4_NL;
    const uint32_t be = is_nl ? PD_QK4_NL : QK_K;
    const size_t wbb = pd_ggml_block_bytes(wtype);
    const size_t xbb = is_nl ? 34 : PD_Q8_K_BYTES; /* Q8_0 or Q8_K block */
    const size_t x_rb = (size_t)(n_in / be) * xbb;
    double wv[QK_K];
    for (uint32_t o = o_begin; o < o_end; o++) {
        const uint8_t *row = w + (size_t)o * row_bytes;
        for (uint32_t r = 0; r < n_rows; r++) {
            const uint8_t *xr = (const uint8_t *)xq + r * x_rb;
            double acc = 0;
            for (uint32_t b = 0; b < n_in / be; b++) {
                const uint8_t *xb = xr + b * xbb;
                double dx;
                if (is_nl) {
                    dx = ld_f16(xb);
                } else {
                    float f;
                    memcpy(&f, xb, 4);
                    dx = f;
                }
                const int8_t *q8 = (const int8_t *)(xb + (is_nl ? 2 : 4));
                block_values(wtype, row + b * wbb, wv);
                for (uint32_t e = 0; e < be; e++)
                    acc += wv[e] * (dx * q8[e]);
            }
            y[(size_t)r * y_stride + o] = (float)acc;
        }
    }
}
