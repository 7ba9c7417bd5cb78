/* quantize_k.c -- the K-quant and IQ4_NL quantizers that llama-quantize runs
 * without an importance matrix, and ggml's Q8_K activation quantizer.
 *
 * Each function follows its ggml counterpart (ggml-quants.c:
 * quantize_row_q{2..6}_K_ref, quantize_iq4_nl, quantize_row_q8_K_ref and
 * their helpers make_qkx2_quants, make_q3_quants, make_qx_quants,
 * best_index_int8) operation by operation, so that the same floats give the
 * same bytes (tests/oracle checks this against llama.cpp's own library).
 * Compiled for baseline x86-64 with -std=c11: no multiply-add is contracted
 * into an FMA, as in ggml's reference build.
 */
#include "engine/quants_k.h"

#include <math.h>
#include <string.h>

#include "engine/quants_k_internal.h"

#define QK_K PD_QK_K
#define GROUP_MAX_EPS 1e-15f /* ggml: a group whose largest |x| is below this is all zero */
#define ROUND_MAGIC 12582912.0f /* 1.5 * 2^23: adding it rounds to an integer (half to even) */

/* ggml's nearest_int: round half to even through the float adder, valid for
 * |v| < 2^22 (other inputs, NaN included, give some int: no UB). */
static int nearest_int(float v)
{
    float t = v + ROUND_MAGIC;
    int32_t i;
    memcpy(&i, &t, sizeof i);
    return (i & 0x007fffff) - 0x00400000;
}

static int imin(int a, int b) { return a < b ? a : b; }
static int imax(int a, int b) { return a > b ? a : b; }

/* ====== Quantization helpers (ggml's make_*_quants) ====== */

/* Scale and min of a group for an asymmetric nmax-level code, searching
 * nstep + 1 candidate scales for the least weighted error (squared, or
 * absolute when use_mad). L gets the levels, *the_min the (positive) min. */
static float make_qkx2(int n, int nmax, const float *x, const float *weights, uint8_t *L,
                       float *the_min, uint8_t *Laux, float rmin, float rdelta, int nstep,
                       bool use_mad)
{
    float min = x[0], max = x[0];
    float sum_w = weights[0], sum_x = sum_w * x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        sum_w += weights[i];
        sum_x += weights[i] * x[i];
    }
    if (min > 0) min = 0;
    if (max == min) {
        memset(L, 0, (size_t)n);
        *the_min = -min;
        return 0.0f;
    }
    float iscale = (float)nmax / (max - min), scale = 1 / iscale, best_error = 0;
    for (int i = 0; i < n; i++) {
        L[i] = (uint8_t)imax(0, imin(nmax, nearest_int(iscale * (x[i] - min))));
        float diff = scale * (float)L[i] + min - x[i];
        diff = use_mad ? fabsf(diff) : diff * diff;
        best_error += weights[i] * diff;
    }
    if (nstep < 1) {
        *the_min = -min;
        return scale;
    }
    for (int is = 0; is <= nstep; is++) {
        iscale = (rmin + rdelta * (float)is + (float)nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; i++) {
            int l = imax(0, imin(nmax, nearest_int(iscale * (x[i] - min))));
            Laux[i] = (uint8_t)l;
            float w = weights[i];
            sum_l += w * (float)l;
            sum_l2 += w * (float)l * (float)l;
            sum_xl += w * (float)l * x[i];
        }
        float D = sum_w * sum_l2 - sum_l * sum_l;
        if (!(D > 0))
            continue;
        float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
        float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
        if (this_min > 0) {
            this_min = 0;
            this_scale = sum_xl / sum_l2;
        }
        float cur_error = 0;
        for (int i = 0; i < n; i++) {
            float diff = this_scale * (float)Laux[i] + this_min - x[i];
            diff = use_mad ? fabsf(diff) : diff * diff;
            cur_error += weights[i] * diff;
        }
        if (cur_error < best_error) {
            memcpy(L, Laux, (size_t)n);
            best_error = cur_error;
            scale = this_scale;
            min = this_min;
        }
    }
    *the_min = -min;
    return scale;
}

/* The x of largest magnitude (the first one), and that magnitude. */
static float signed_max(int n, const float *x, float *amax_out)
{
    float max = 0, amax = 0;
    for (int i = 0; i < n; i++) {
        float ax = fabsf(x[i]);
        if (ax > amax) {
            amax = ax;
            max = x[i];
        }
    }
    *amax_out = amax;
    return max;
}

/* Symmetric 2 * nmax-level code with an x^2-weighted least-squares refinement
 * (Q3_K's groups of 16). L gets levels + nmax. */
static float make_q3(int n, int nmax, const float *x, int8_t *L)
{
    float amax, max = signed_max(n, x, &amax);
    if (amax < GROUP_MAX_EPS) {
        memset(L, 0, (size_t)n);
        return 0.0f;
    }
    float iscale = (float)-nmax / max, sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        int l = imax(-nmax, imin(nmax - 1, nearest_int(iscale * x[i])));
        L[i] = (int8_t)l;
        float w = x[i] * x[i];
        sumlx += w * x[i] * (float)l;
        suml2 += w * (float)l * (float)l;
    }
    for (int itry = 0; itry < 5; itry++) {
        int n_changed = 0;
        for (int i = 0; i < n; i++) {
            float w = x[i] * x[i];
            float slx = sumlx - w * x[i] * (float)L[i];
            if (!(slx > 0))
                continue;
            float sl2 = suml2 - w * (float)L[i] * (float)L[i];
            int new_l = imax(-nmax, imin(nmax - 1, nearest_int(x[i] * sl2 / slx)));
            if (new_l == L[i])
                continue;
            slx += w * x[i] * (float)new_l;
            sl2 += w * (float)new_l * (float)new_l;
            if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
                L[i] = (int8_t)new_l;
                sumlx = slx;
                suml2 = sl2;
                n_changed++;
            }
        }
        if (n_changed == 0)
            break;
    }
    for (int i = 0; i < n; i++)
        L[i] = (int8_t)(L[i] + nmax);
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

/* Symmetric code with an x^2-weighted scale search over 18 nearby scales
 * (make_qx_quants with rmse_type 1, Q6_K's groups of 16). L: levels + nmax. */
static float make_qx(int n, int nmax, const float *x, int8_t *L)
{
    float amax, max = signed_max(n, x, &amax);
    if (amax < GROUP_MAX_EPS) {
        memset(L, 0, (size_t)n);
        return 0.0f;
    }
    float iscale = (float)-nmax / max, sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        int l = imax(-nmax, imin(nmax - 1, nearest_int(iscale * x[i])));
        L[i] = (int8_t)(l + nmax);
        float w = x[i] * x[i];
        sumlx += w * x[i] * (float)l;
        suml2 += w * (float)l * (float)l;
    }
    float scale = suml2 != 0 ? sumlx / suml2 : 0.0f, best = scale * sumlx;
    for (int is = -9; is <= 9; is++) {
        if (is == 0)
            continue;
        iscale = -((float)nmax + 0.1f * (float)is) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; i++) {
            int l = imax(-nmax, imin(nmax - 1, nearest_int(iscale * x[i])));
            float w = x[i] * x[i];
            sumlx += w * x[i] * (float)l;
            suml2 += w * (float)l * (float)l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; i++)
                L[i] = (int8_t)(nmax + imax(-nmax, imin(nmax - 1, nearest_int(iscale * x[i]))));
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/* Index of the table value nearest to x (ties to the lower), ggml's
 * best_index_int8. */
static int best_index(int n, const int8_t *val, float x)
{
    if (x <= val[0])
        return 0;
    if (x >= val[n - 1])
        return n - 1;
    int ml = 0, mu = n - 1;
    while (mu - ml > 1) {
        int mav = (ml + mu) / 2;
        if (x < val[mav])
            mu = mav;
        else
            ml = mav;
    }
    return x - val[mu - 1] < val[mu] - x ? mu - 1 : mu;
}

/* Packs 256 levels of 2 bits (Q2_K, and Q3_K's low bits) into 64 bytes. */
static void pack_2bit(const uint8_t *L, uint8_t *qs)
{
    for (int j = 0; j < QK_K; j += 128)
        for (int l = 0; l < 32; l++)
            qs[j / 4 + l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) |
                                      (L[j + l + 96] << 6));
}

/* ====== Quantizers, one (super-)block each ====== */

/* Q2_K: per 16, a 2-bit asymmetric code (make_qkx2 with |x| weights); the 16
 * scales and mins quantized to 4 bits against d = max / 15, dmin likewise;
 * then the levels recomputed against the stored scales. */
static void quant_q2_k(const float *x, uint8_t *y)
{
    uint8_t L[QK_K], Laux[16], *scales = y, *qs = y + 16;
    float weights[16], mins[QK_K / 16], sc[QK_K / 16], max_scale = 0, max_min = 0;
    const float q4scale = 15.f;
    for (int j = 0; j < QK_K / 16; j++) {
        for (int l = 0; l < 16; l++)
            weights[l] = fabsf(x[16 * j + l]);
        sc[j] = make_qkx2(16, 3, x + 16 * j, weights, L + 16 * j, &mins[j], Laux, -0.5f, 0.1f,
                          15, true);
        if (sc[j] > max_scale) max_scale = sc[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    memset(scales, 0, 16);
    st_f16(y + 80, 0.f);
    if (max_scale > 0) {
        const float iscale = q4scale / max_scale;
        for (int j = 0; j < QK_K / 16; j++)
            scales[j] = (uint8_t)nearest_int(iscale * sc[j]);
        st_f16(y + 80, max_scale / q4scale);
    }
    st_f16(y + 82, 0.f);
    if (max_min > 0) {
        const float iscale = q4scale / max_min;
        for (int j = 0; j < QK_K / 16; j++)
            scales[j] = (uint8_t)(scales[j] | (nearest_int(iscale * mins[j]) << 4));
        st_f16(y + 82, max_min / q4scale);
    }
    for (int j = 0; j < QK_K / 16; j++) {
        const float d = ld_f16(y + 80) * (float)(scales[j] & 0xF);
        if (d == 0)
            continue;
        const float dm = ld_f16(y + 82) * (float)(scales[j] >> 4);
        for (int i = 0; i < 16; i++)
            L[16 * j + i] = (uint8_t)imax(0, imin(3, nearest_int((x[16 * j + i] + dm) / d)));
    }
    pack_2bit(L, qs);
}

/* Q3_K: per 16, a symmetric 3-bit code (make_q3); the 16 scales quantized
 * to 6 bits (biased by 32) against d = -max / 32; levels recomputed; the
 * third bit goes to hmask (bit k of byte l for element 32 k + l). */
static void quant_q3_k(const float *x, uint8_t *y)
{
    int8_t L[QK_K];
    float sc[QK_K / 16], max_scale = 0, amax = 0;
    uint8_t *hmask = y, *qs = y + 32, *scales = y + 96;
    for (int j = 0; j < QK_K / 16; j++) {
        sc[j] = make_q3(16, 4, x + 16 * j, L + 16 * j);
        if (fabsf(sc[j]) > amax) {
            amax = fabsf(sc[j]);
            max_scale = sc[j];
        }
    }
    memset(scales, 0, 12);
    if (max_scale != 0) {
        const float iscale = -32.f / max_scale;
        for (int j = 0; j < QK_K / 16; j++) {
            int8_t l8 = (int8_t)nearest_int(iscale * sc[j]); /* int8_t, as ggml stores it */
            int l = imax(-32, imin(31, l8)) + 32;
            if (j < 8)
                scales[j] = (uint8_t)(l & 0xF);
            else
                scales[j - 8] = (uint8_t)(scales[j - 8] | ((l & 0xF) << 4));
            scales[j % 4 + 8] = (uint8_t)(scales[j % 4 + 8] | ((l >> 4) << (2 * (j / 4))));
        }
        st_f16(y + 108, 1 / iscale);
    } else {
        st_f16(y + 108, 0.f);
    }
    int8_t s6[16];
    q3k_scales(scales, s6);
    for (int j = 0; j < QK_K / 16; j++) {
        const float d = ld_f16(y + 108) * (float)s6[j];
        if (d == 0)
            continue;
        for (int i = 0; i < 16; i++)
            L[16 * j + i] = (int8_t)(imax(-4, imin(3, nearest_int(x[16 * j + i] / d))) + 4);
    }
    memset(hmask, 0, 32);
    uint8_t lu[QK_K];
    for (int j = 0; j < QK_K; j++) {
        int l = L[j]; // NOLINT(bugprone-signed-char-misuse,cert-str34-c): a level 0..7
        if (l > 3) {
            hmask[j % 32] = (uint8_t)(hmask[j % 32] | (1 << (j / 32)));
            l -= 4;
        }
        lu[j] = (uint8_t)l;
    }
    pack_2bit(lu, qs);
}

/* Q4_K (nmax 15) and Q5_K (nmax 31): per 32, an asymmetric code
 * (make_qkx2 with weights rms + |x|); 8 scales and 8 mins quantized to 6
 * bits against d = max / 63, dmin likewise; levels recomputed. */
static void quant_q45_k(const float *x, uint8_t *y, bool is_q5)
{
    const int nmax = is_q5 ? 31 : 15;
    uint8_t L[QK_K], Laux[32], *scales = y + 4;
    float weights[32], mins[QK_K / 32], sc[QK_K / 32], max_scale = 0, max_min = 0;
    for (int j = 0; j < QK_K / 32; j++) {
        float sum_x2 = 0;
        for (int l = 0; l < 32; l++)
            sum_x2 += x[32 * j + l] * x[32 * j + l];
        const float av_x = sqrtf(sum_x2 / 32);
        for (int l = 0; l < 32; l++)
            weights[l] = av_x + fabsf(x[32 * j + l]);
        sc[j] = make_qkx2(32, nmax, x + 32 * j, weights, L + 32 * j, &mins[j], Laux,
                          is_q5 ? -0.5f : -1.f, 0.1f, is_q5 ? 15 : 20, false);
        if (sc[j] > max_scale) max_scale = sc[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    memset(scales, 0, 12);
    for (int j = 0; j < QK_K / 32; j++) {
        uint8_t ls = (uint8_t)nearest_int(inv_scale * sc[j]);
        uint8_t lm = (uint8_t)nearest_int(inv_min * mins[j]);
        ls = ls < 63 ? ls : 63;
        lm = lm < 63 ? lm : 63;
        if (j < 4) {
            scales[j] = ls;
            scales[j + 4] = lm;
        } else {
            scales[j + 4] = (uint8_t)((ls & 0xF) | ((lm & 0xF) << 4));
            scales[j - 4] = (uint8_t)(scales[j - 4] | ((ls >> 4) << 6));
            scales[j] = (uint8_t)(scales[j] | ((lm >> 4) << 6));
        }
    }
    st_f16(y, max_scale / 63.f);
    st_f16(y + 2, max_min / 63.f);
    for (int j = 0; j < QK_K / 32; j++) {
        uint8_t s, m;
        k4_scale_min(j, scales, &s, &m);
        const float d = ld_f16(y) * (float)s;
        if (d == 0)
            continue;
        const float dm = ld_f16(y + 2) * (float)m;
        for (int i = 0; i < 32; i++)
            L[32 * j + i] = (uint8_t)imax(0, imin(nmax, nearest_int((x[32 * j + i] + dm) / d)));
    }
    uint8_t *qh = y + 16, *q = is_q5 ? y + 48 : y + 16;
    if (is_q5)
        memset(qh, 0, 32);
    uint8_t m1 = 1, m2 = 2;
    for (int n = 0; n < QK_K; n += 64) {
        for (int j = 0; j < 32; j++) {
            int l1 = L[n + j], l2 = L[n + j + 32];
            if (is_q5 && l1 > 15) {
                l1 -= 16;
                qh[j] |= m1;
            }
            if (is_q5 && l2 > 15) {
                l2 -= 16;
                qh[j] |= m2;
            }
            q[j] = (uint8_t)(l1 | (l2 << 4));
        }
        m1 = (uint8_t)(m1 << 2);
        m2 = (uint8_t)(m2 << 2);
        q += 32;
    }
}

/* Q6_K: per 16, a symmetric 6-bit code (make_qx); the 16 scales quantized
 * to int8 against d = -max / 128; levels recomputed. */
static void quant_q6_k(const float *x, uint8_t *y)
{
    int8_t L[QK_K], *scales = (int8_t *)(y + 192);
    float sc[QK_K / 16], max_scale = 0, max_abs_scale = 0;
    for (int ib = 0; ib < QK_K / 16; ib++) {
        sc[ib] = make_qx(16, 32, x + 16 * ib, L + 16 * ib);
        if (fabsf(sc[ib]) > max_abs_scale) {
            max_abs_scale = fabsf(sc[ib]);
            max_scale = sc[ib];
        }
    }
    if (max_abs_scale < GROUP_MAX_EPS) {
        memset(y, 0, PD_Q6_K_BYTES);
        return;
    }
    const float iscale = -128.f / max_scale;
    st_f16(y + 208, 1 / iscale);
    for (int ib = 0; ib < QK_K / 16; ib++)
        scales[ib] = (int8_t)(uint8_t)(imin(127, nearest_int(iscale * sc[ib])) & 0xff);
    for (int j = 0; j < QK_K / 16; j++) {
        const float d = ld_f16(y + 208) * (float)scales[j];
        if (d == 0)
            continue;
        for (int i = 0; i < 16; i++)
            L[16 * j + i] = (int8_t)(imax(-32, imin(31, nearest_int(x[16 * j + i] / d))) + 32);
    }
    uint8_t *ql = y, *qh = y + 128;
    for (int j = 0; j < QK_K; j += 128) {
        for (int l = 0; l < 32; l++) {
            const int q1 = L[j + l] & 0xF, q2 = L[j + l + 32] & 0xF;
            const int q3 = L[j + l + 64] & 0xF, q4 = L[j + l + 96] & 0xF;
            ql[l] = (uint8_t)(q1 | (q3 << 4));
            ql[l + 32] = (uint8_t)(q2 | (q4 << 4));
            qh[l] = (uint8_t)((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) |
                              ((L[j + l + 64] >> 4) << 4) | ((L[j + l + 96] >> 4) << 6));
        }
        ql += 64;
        qh += 32;
    }
}

/* IQ4_NL (quantize_iq4_nl without weights: x^2 weights, 7 tries each side):
 * the scale that best fits the table by weighted least squares, then each
 * element's nearest table value. */
static void quant_iq4_nl(const float *x, uint8_t *y)
{
    const int8_t *values = pd_iq4nl_values;
    const int ntry = 7;
    float weight[32], amax;
    uint8_t L[32];
    const float max = signed_max(32, x, &amax);
    float scale = 0;
    for (int j = 0; j < 32; j++)
        weight[j] = x[j] * x[j];
    if (!(amax < GROUP_MAX_EPS)) {
        float d = -max / (float)values[0], id = 1 / d, sumqx = 0, sumq2 = 0;
        for (int j = 0; j < 32; j++) {
            const float q = (float)values[best_index(16, values, id * x[j])];
            sumqx += weight[j] * q * x[j];
            sumq2 += weight[j] * q * q;
        }
        d = sumq2 > 0 ? sumqx / sumq2 : 0.f;
        float best = d * sumqx;
        for (int itry = -ntry; itry <= ntry; itry++) {
            id = (float)(itry + values[0]) / max;
            sumqx = sumq2 = 0;
            for (int j = 0; j < 32; j++) {
                const float q = (float)values[best_index(16, values, id * x[j])];
                sumqx += weight[j] * q * x[j];
                sumq2 += weight[j] * q * q;
            }
            if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
                d = sumqx / sumq2;
                best = d * sumqx;
            }
        }
        scale = d;
    }
    st_f16(y, scale);
    const float id = scale != 0 ? 1 / scale : 0;
    for (int j = 0; j < 32; j++)
        L[j] = (uint8_t)best_index(16, values, id * x[j]);
    for (int j = 0; j < 16; j++)
        y[2 + j] = (uint8_t)(L[j] | (L[16 + j] << 4));
}

void pd_quant_row_k(pd_ggml_type_t t, const float *src, void *dst, uint32_t n)
{
    const uint32_t be = pd_ggml_block_elems(t), bb = pd_ggml_block_bytes(t);
    for (uint32_t i = 0; be != 0 && i < n / be; i++) {
        const float *x = src + (size_t)i * be;
        uint8_t *y = (uint8_t *)dst + (size_t)i * bb;
        switch (t) {
        case PD_GGML_TYPE_Q2_K: quant_q2_k(x, y); break;
        case PD_GGML_TYPE_Q3_K: quant_q3_k(x, y); break;
        case PD_GGML_TYPE_Q4_K: quant_q45_k(x, y, false); break;
        case PD_GGML_TYPE_Q5_K: quant_q45_k(x, y, true); break;
        case PD_GGML_TYPE_Q6_K: quant_q6_k(x, y); break;
        case PD_GGML_TYPE_IQ4_NL: quant_iq4_nl(x, y); break;
        default: return;
        }
    }
}

/* ====== Q8_K activations ====== */

void pd_quant_row_q8_k_ref(const float *x, void *dst, uint32_t n)
{
    for (uint32_t b = 0; b < n / QK_K; b++, x += QK_K) {
        uint8_t *blk = (uint8_t *)dst + (size_t)b * PD_Q8_K_BYTES;
        int8_t *qs = (int8_t *)(blk + 4);
        int16_t bsums[16];
        float amax, max = signed_max(QK_K, x, &amax);
        float d = 0;
        if (amax == 0) {
            memset(qs, 0, QK_K);
        } else {
            const float iscale = -127.f / max;
            for (int j = 0; j < QK_K; j++) /* int8 keeps the low byte, as C does on GCC */
                qs[j] = (int8_t)(uint8_t)(imin(127, nearest_int(iscale * x[j])) & 0xff);
            d = 1 / iscale;
        }
        for (int g = 0; g < 16; g++) {
            int sum = 0;
            for (int l = 0; l < 16; l++)
                sum += qs[16 * g + l];
            bsums[g] = (int16_t)sum;
        }
        memcpy(blk, &d, 4);
        memcpy(blk + 4 + QK_K, bsums, sizeof bsums);
    }
}

