/* kernels_k_avx2.c -- AVX2/FMA kernels for K-quant (Q2_K..Q6_K) and IQ4_NL
 * weights: the skinny product (decode), dequantization (the prefill tiles)
 * and the Q8_K activation quantizer. Compiled with -mavx2 -mfma -mf16c;
 * called only when pd_kern_has_avx2(). The plain C references are in
 * quants_k.c / quantize_k.c.
 *
 * The skinny product y[r][o] = x[r] . W[o]:
 *
 *   for each panel of KPANEL (4) output rows
 *     for each K-tile of KT_SB (8) super-blocks
 *       for each block of up to KNR (4) activation rows
 *         for each weight row of the panel
 *           micro-kernel: per super-block, each 32-element chunk of weights
 *           is unpacked to bytes once and multiplied into every activation
 *           row of the block (maddubs, then madd with the chunk's scales).
 *
 * Summation order. Within a super-block the products are summed exactly
 * (int32 lanes; lane k collects the elements 4k..4k+3 of every 32-chunk,
 * as ggml's maddubs/madd pairs them), then each lane is converted to float
 * and added with one FMA per super-block into 8 float lanes, which a
 * final ggml hsum_float_8 reduces. This is the order of ggml's AVX2
 * ggml_vec_dot_qN_K_q8_K and ggml_vec_dot_iq4_nl_q8_0 (the mins of
 * Q2_K/Q4_K/Q5_K and Q6_K's offset of 32 go through bsums exactly as ggml
 * routes them), so a product is bit-identical to the one llama.cpp computes
 * with those functions (tests/oracle/t_ggml_kernels.sh checks it), and
 * y[r][o] does not depend on n_rows or on [o_begin, o_end): each (r, o) is
 * computed by the same operations whatever it is batched with.
 */
#include <immintrin.h>
#include <string.h>

#include "engine/kernels.h"
#include "engine/quants_k.h"
#include "engine/quants_k_internal.h"

#define ALWAYS_INLINE inline __attribute__((always_inline))
#define QK_K PD_QK_K
#define Q8_0_BYTES 34

#ifndef KPANEL
#define KPANEL 4  /* output rows per panel */
#endif
#ifndef KT_SB
#define KT_SB 8   /* K-tile, super-blocks (2048 elements; IQ4_NL: 8 x 8 blocks) */
#endif
#define KNR 4     /* activation rows per micro-kernel call (1..4) */

/* Per (output row, activation row): the float lanes a ggml vec_dot keeps.
 * a: the main 8-lane accumulator. b: Q4_K's 4-lane mins accumulator (low
 * half), Q5_K's scalar sum of mins (lane 0), IQ4_NL's second accumulator
 * (odd blocks). */
typedef struct {
    __m256 a, b;
} kacc_t;

/* ====== Small helpers ====== */

static ALWAYS_INLINE float fp16_at(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

static ALWAYS_INLINE float f32_at(const uint8_t *p)
{
    float f;
    memcpy(&f, p, 4);
    return f;
}

static ALWAYS_INLINE __m256i load256(const uint8_t *p)
{
    return _mm256_loadu_si256((const __m256i *)(const void *)p);
}

static ALWAYS_INLINE __m128i load128(const uint8_t *p)
{
    return _mm_loadu_si128((const __m128i *)(const void *)p);
}

/* ggml's hsum_float_8: (high + low), then movehl, then movehdup. */
static ALWAYS_INLINE float hsum8_ggml(__m256 a)
{
    __m128 r = _mm_add_ps(_mm256_extractf128_ps(a, 1), _mm256_castps256_ps128(a));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

/* i16 lanes 0..7 = s[2c], lanes 8..15 = s[2c + 1] where s (16 x i16, both
 * 128-bit halves equal to the group of 8 holding 2c) are a group's scales:
 * the scales of chunk c of a 16-scale super-block (Q2_K, Q3_K). */
static ALWAYS_INLINE __m256i chunk_scales16(__m256i half_scales, int t)
{
    const __m256i lo = _mm256_set1_epi16((short)(0x0100 + 0x0404 * t));     /* bytes 4t, 4t+1 */
    const __m256i hi = _mm256_set1_epi16((short)(0x0302 + 0x0404 * t));     /* bytes 4t+2, 4t+3 */
    return _mm256_shuffle_epi8(half_scales, _mm256_permute2x128_si256(lo, hi, 0x20));
}

/* Broadcasts i16 lane k (0..7) of the low half of s to every lane. */
static ALWAYS_INLINE __m256i bcast16(__m256i s, int k)
{
    return _mm256_shuffle_epi8(s, _mm256_set1_epi16((short)(0x0100 + 0x0202 * k)));
}

/* The 16 scales of a Q3_K super-block minus 32, as bytes (ggml's layout:
 * low 4 bits in bytes 0..7, high 2 bits in bytes 8..11). */
static ALWAYS_INLINE __m128i q3k_scales_v(const uint8_t *s12)
{
    uint32_t aux[3];
    memcpy(aux, s12, 12);
    const uint32_t m2 = 0x0f0f0f0f, m1 = 0x03030303;
    const __m128i s = _mm_set_epi32(
        (int)(((aux[1] >> 4) & m2) | (((aux[2] >> 6) & m1) << 4)),
        (int)(((aux[0] >> 4) & m2) | (((aux[2] >> 4) & m1) << 4)),
        (int)((aux[1] & m2) | (((aux[2] >> 2) & m1) << 4)),
        (int)((aux[0] & m2) | (((aux[2] >> 0) & m1) << 4)));
    return _mm_sub_epi8(s, _mm_set1_epi8(32));
}

/* Q4_K/Q5_K: 8 scales (low half) and 8 mins (high half) as i16. */
static ALWAYS_INLINE __m256i k4_scales_mins(const uint8_t *s12)
{
    uint32_t u[4];
    memcpy(u, s12, 12);
    const uint32_t m1 = 0x3f3f3f3f, m2 = 0x0f0f0f0f, m3 = 0x03030303;
    u[3] = ((u[2] >> 4) & m2) | (((u[1] >> 6) & m3) << 4);
    const uint32_t mins_lo = u[1] & m1;
    u[1] = (u[2] & m2) | (((u[0] >> 6) & m3) << 4);
    u[2] = mins_lo;
    u[0] &= m1;
    return _mm256_cvtepu8_epi16(_mm_set_epi32((int)u[3], (int)u[2], (int)u[1], (int)u[0]));
}

/* The i32 lane sums of a 32-chunk: madd(scales, maddubs(w, x)). */
static ALWAYS_INLINE __m256i chunk_dot(__m256i w, const uint8_t *x, __m256i scales)
{
    return _mm256_madd_epi16(scales, _mm256_maddubs_epi16(w, load256(x)));
}

/* ====== Micro-kernels: one weight row, NR activation rows, nb blocks ======
 * w: the row's first block; x: activation row 0's first block, rows xs
 * bytes apart; acc: NR accumulators (consecutive). */

#define XQS(r, b) (x + (r) * xs + (b) * PD_Q8_K_BYTES) /* Q8_K block b of row r */

static ALWAYS_INLINE void mk_q2k(const int NR, const uint8_t *w, const uint8_t *x, size_t xs,
                                 size_t nb, kacc_t *acc_io)
{
    /* accumulators in registers: stores through acc_io would be redone after
     * every (aliasing) byte load */
    kacc_t acc[4];
#pragma GCC unroll 4
    for (int r = 0; r < NR; r++)
        acc[r] = acc_io[r];
    const __m256i m3 = _mm256_set1_epi8(3);
    const __m128i m4 = _mm_set1_epi8(0xF);
    for (size_t b = 0; b < nb; b++) {
        const uint8_t *wb = w + b * PD_Q2_K_BYTES;
        const float dw = fp16_at(wb + 80), dminw = fp16_at(wb + 82);
        const __m128i ms = load128(wb);
        const __m256i mins = _mm256_cvtepi8_epi16(_mm_and_si128(_mm_srli_epi16(ms, 4), m4));
        const __m256i scales = _mm256_cvtepi8_epi16(_mm_and_si128(ms, m4));
        /* The mins first: ggml adds them into the same accumulator before
         * the super-block's sum. */
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++) {
            const float dy = f32_at(XQS(r, b));
            const __m256i prod = _mm256_madd_epi16(mins, load256(XQS(r, b) + 260));
            acc[r].a = _mm256_fmadd_ps(_mm256_set1_ps(-dy * dminw), _mm256_cvtepi32_ps(prod),
                                       acc[r].a);
        }
        __m256i sumi[4];
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++)
            sumi[r] = _mm256_setzero_si256();
#pragma GCC unroll 2
        for (int j = 0; j < 2; j++) {
            const __m256i bits = load256(wb + 16 + 32 * j);
            const __m256i half = j ? _mm256_permute4x64_epi64(scales, 0xEE)
                                 : _mm256_permute4x64_epi64(scales, 0x44);
#pragma GCC unroll 4
            for (int t = 0; t < 4; t++) {
                const __m256i q = _mm256_and_si256(_mm256_srli_epi16(bits, 2 * t), m3);
                const __m256i sc = chunk_scales16(half, t);
#pragma GCC unroll 4
                for (int r = 0; r < NR; r++)
                    sumi[r] = _mm256_add_epi32(
                        sumi[r], chunk_dot(q, XQS(r, b) + 4 + 32 * (4 * j + t), sc));
            }
        }
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++)
            acc[r].a = _mm256_fmadd_ps(_mm256_set1_ps(f32_at(XQS(r, b)) * dw),
                                       _mm256_cvtepi32_ps(sumi[r]), acc[r].a);
    }
#pragma GCC unroll 4
    for (int r = 0; r < NR; r++)
        acc_io[r] = acc[r];
}

static ALWAYS_INLINE void mk_q3k(const int NR, const uint8_t *w, const uint8_t *x, size_t xs,
                                 size_t nb, kacc_t *acc_io)
{
    /* accumulators in registers: stores through acc_io would be redone after
     * every (aliasing) byte load */
    kacc_t acc[4];
#pragma GCC unroll 4
    for (int r = 0; r < NR; r++)
        acc[r] = acc_io[r];
    const __m256i m3 = _mm256_set1_epi8(3), mone = _mm256_set1_epi8(1);
    for (size_t b = 0; b < nb; b++) {
        const uint8_t *wb = w + b * PD_Q3_K_BYTES;
        const float dw = fp16_at(wb + 108);
        const __m256i scales = _mm256_cvtepi8_epi16(q3k_scales_v(wb + 96));
        const __m256i hbits = load256(wb);
        __m256i sumi[4];
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++)
            sumi[r] = _mm256_setzero_si256();
#pragma GCC unroll 2
        for (int j = 0; j < 2; j++) {
            const __m256i bits = load256(wb + 32 + 32 * j);
            const __m256i half = j ? _mm256_permute4x64_epi64(scales, 0xEE)
                                 : _mm256_permute4x64_epi64(scales, 0x44);
#pragma GCC unroll 4
            for (int t = 0; t < 4; t++) {
                const int c = 4 * j + t;
                const __m256i lo = _mm256_and_si256(_mm256_srli_epi16(bits, 2 * t), m3);
                /* 4 where the high bit is clear (the code is lo - 4), else 0 */
                const __m256i hi = _mm256_slli_epi16(
                    _mm256_srli_epi16(_mm256_andnot_si256(hbits, _mm256_slli_epi16(mone, c)), c),
                    2);
                const __m256i sc = chunk_scales16(half, t);
#pragma GCC unroll 4
                for (int r = 0; r < NR; r++) {
                    const __m256i xv = load256(XQS(r, b) + 4 + 32 * c);
                    const __m256i p16 = _mm256_sub_epi16(_mm256_maddubs_epi16(lo, xv),
                                                         _mm256_maddubs_epi16(hi, xv));
                    sumi[r] = _mm256_add_epi32(sumi[r], _mm256_madd_epi16(sc, p16));
                }
            }
        }
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++)
            acc[r].a = _mm256_fmadd_ps(_mm256_set1_ps(f32_at(XQS(r, b)) * dw),
                                       _mm256_cvtepi32_ps(sumi[r]), acc[r].a);
    }
#pragma GCC unroll 4
    for (int r = 0; r < NR; r++)
        acc_io[r] = acc[r];
}

/* Q4_K (HIGH false) and Q5_K (HIGH true: the fifth bit from qh). The mins
 * go to acc.b: 4 float lanes for Q4_K, one scalar (lane 0) for Q5_K, as the
 * two ggml functions differ there. */
static ALWAYS_INLINE void mk_q45k(const int NR, const bool HIGH, const uint8_t *w,
                                  const uint8_t *x, size_t xs, size_t nb, kacc_t *acc_io)
{
    /* accumulators in registers: stores through acc_io would be redone after
     * every (aliasing) byte load */
    kacc_t acc[4];
#pragma GCC unroll 4
    for (int r = 0; r < NR; r++)
        acc[r] = acc_io[r];
    const __m256i m4 = _mm256_set1_epi8(0xF);
    const size_t bb = HIGH ? PD_Q5_K_BYTES : PD_Q4_K_BYTES;
    for (size_t b = 0; b < nb; b++) {
        const uint8_t *wb = w + b * bb, *qs = wb + (HIGH ? 48 : 16);
        const float dw = fp16_at(wb), dminw = fp16_at(wb + 2);
        const __m256i sm = k4_scales_mins(wb + 4);
        const __m128i mins = _mm256_extracti128_si256(sm, 1);
        const __m256i scales = _mm256_permute4x64_epi64(sm, 0x44);
        const __m256i hbits = HIGH ? load256(wb + 16) : _mm256_setzero_si256();
        __m256i sumi[4];
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++)
            sumi[r] = _mm256_setzero_si256();
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            const __m256i bits = load256(qs + 32 * j);
            __m256i lo = _mm256_and_si256(bits, m4);
            __m256i hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
            if (HIGH) {
                const __m256i b0 = _mm256_set1_epi8((char)(1 << (2 * j)));
                const __m256i b1 = _mm256_set1_epi8((char)(2 << (2 * j)));
                lo = _mm256_add_epi8(lo, _mm256_slli_epi16(
                    _mm256_srli_epi16(_mm256_and_si256(hbits, b0), 2 * j), 4));
                hi = _mm256_add_epi8(hi, _mm256_slli_epi16(
                    _mm256_srli_epi16(_mm256_and_si256(hbits, b1), 2 * j + 1), 4));
            }
            const __m256i sc_lo = bcast16(scales, 2 * j), sc_hi = bcast16(scales, 2 * j + 1);
#pragma GCC unroll 4
            for (int r = 0; r < NR; r++) {
                const uint8_t *q8 = XQS(r, b) + 4 + 64 * j;
                sumi[r] = _mm256_add_epi32(sumi[r], _mm256_add_epi32(chunk_dot(lo, q8, sc_lo),
                                                                     chunk_dot(hi, q8 + 32, sc_hi)));
            }
        }
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++) {
            const float dy = f32_at(XQS(r, b));
            const __m256i bs = load256(XQS(r, b) + 260);
            const __m128i q8s = _mm_hadd_epi16(_mm256_castsi256_si128(bs),
                                               _mm256_extracti128_si256(bs, 1));
            const __m128i prod = _mm_madd_epi16(mins, q8s);
            const float dmin = -dy * dminw;
            if (HIGH) {
                const __m128i z = _mm_setzero_si128();
                const int s = _mm_cvtsi128_si32(_mm_hadd_epi32(_mm_hadd_epi32(prod, z), z));
                /* ggml: summs += dmin * s, which its build contracts to an FMA */
                const __m128 sm1 = _mm_fmadd_ss(_mm_set_ss(dmin), _mm_set_ss((float)s),
                                                _mm256_castps256_ps128(acc[r].b));
                acc[r].b = _mm256_castps128_ps256(sm1);
            } else {
                const __m128 am = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(prod),
                                               _mm256_castps256_ps128(acc[r].b));
                acc[r].b = _mm256_castps128_ps256(am);
            }
            acc[r].a = _mm256_fmadd_ps(_mm256_set1_ps(dy * dw), _mm256_cvtepi32_ps(sumi[r]),
                                       acc[r].a);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < NR; r++)
        acc_io[r] = acc[r];
}

static ALWAYS_INLINE void mk_q6k(const int NR, const uint8_t *w, const uint8_t *x, size_t xs,
                                 size_t nb, kacc_t *acc_io)
{
    /* accumulators in registers: stores through acc_io would be redone after
     * every (aliasing) byte load */
    kacc_t acc[4];
#pragma GCC unroll 4
    for (int r = 0; r < NR; r++)
        acc[r] = acc_io[r];
    const __m256i m15 = _mm256_set1_epi8(15);
    for (size_t b = 0; b < nb; b++) {
        const uint8_t *wb = w + b * PD_Q6_K_BYTES;
        const float dw = fp16_at(wb + 208);
        const __m128i sc8 = load128(wb + 192);
        const __m256i sc16 = _mm256_cvtepi8_epi16(sc8);
        __m256i sumi[4];
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++)
            sumi[r] = _mm256_setzero_si256();
#pragma GCC unroll 2
        for (int j = 0; j < 2; j++) {
            const __m256i b1 = load256(wb + 64 * j), b2 = load256(wb + 64 * j + 32);
            const __m256i hb = load256(wb + 128 + 32 * j);
            const __m256i half = j ? _mm256_permute4x64_epi64(sc16, 0xEE)
                                 : _mm256_permute4x64_epi64(sc16, 0x44);
#pragma GCC unroll 4
            for (int t = 0; t < 4; t++) {
                const __m256i lowsrc = (t & 1) ? b2 : b1;
                const __m256i low = t < 2 ? _mm256_and_si256(lowsrc, m15)
                                          : _mm256_and_si256(_mm256_srli_epi16(lowsrc, 4), m15);
                /* bits 2t, 2t+1 of qh to bits 4, 5 */
                const __m256i high = _mm256_and_si256(
                    t < 2 ? _mm256_slli_epi16(hb, 4 - 2 * t) : _mm256_srli_epi16(hb, 2 * t - 4),
                    _mm256_set1_epi8(0x30));
                const __m256i q = _mm256_or_si256(low, high);
                const __m256i sc = chunk_scales16(half, t);
#pragma GCC unroll 4
                for (int r = 0; r < NR; r++)
                    sumi[r] = _mm256_add_epi32(
                        sumi[r], chunk_dot(q, XQS(r, b) + 4 + 32 * (4 * j + t), sc));
            }
        }
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++) {
            /* q is stored plus 32: subtract 32 * scale * (sum of x) per pair
             * of 16-groups, in the lanes where ggml subtracts it */
            const __m256i sub = _mm256_slli_epi32(
                _mm256_madd_epi16(load256(XQS(r, b) + 260), sc16), 5);
            acc[r].a = _mm256_fmadd_ps(_mm256_set1_ps(f32_at(XQS(r, b)) * dw),
                                       _mm256_cvtepi32_ps(_mm256_sub_epi32(sumi[r], sub)),
                                       acc[r].a);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < NR; r++)
        acc_io[r] = acc[r];
}

#undef XQS
/* IQ4_NL: blocks in pairs, even blocks into acc.a and odd ones into acc.b
 * (ggml's accum1 / accum2); nb is even. dx: the activation blocks' scales
 * as floats, row r at dx + r * dxs (converted once per tile by the caller:
 * an fp16 conversion per block and weight row would cost more than the
 * product). */
static ALWAYS_INLINE void mk_iq4nl(const int NR, const uint8_t *w, const uint8_t *x, size_t xs,
                                   size_t nb, const float *dx, size_t dxs, kacc_t *acc_io)
{
    kacc_t acc[4];
#pragma GCC unroll 4
    for (int r = 0; r < NR; r++)
        acc[r] = acc_io[r];
    const __m256i values = _mm256_broadcastsi128_si256(
        _mm_loadu_si128((const __m128i *)(const void *)pd_iq4nl_values));
    const __m256i m4 = _mm256_set1_epi8(0xF);
    const __m256i ones = _mm256_set1_epi16(1);
    for (size_t b = 0; b < nb; b += 2) {
#pragma GCC unroll 2
        for (int k = 0; k < 2; k++) {
            const uint8_t *wb = w + (b + k) * PD_IQ4_NL_BYTES;
            /* low nibbles (elements 0..15) in the low half, high in the high */
            const __m256i bits = _mm256_broadcastsi128_si256(load128(wb + 2));
            const __m256i idx = _mm256_blend_epi32(
                _mm256_and_si256(bits, m4), _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4), 0xF0);
            const __m256i q = _mm256_shuffle_epi8(values, idx);
            const __m256i aq = _mm256_sign_epi8(q, q);
            /* the fp16 scale from a 4-byte load (the 2 bytes after it are
             * codes, ignored): no port-5 insert */
            const __m128 dw = _mm_cvtph_ps(_mm_loadu_si32(wb));
#pragma GCC unroll 4
            for (int r = 0; r < NR; r++) {
                const uint8_t *xb = x + r * xs + (b + k) * 34;
                const __m256i sx = _mm256_sign_epi8(load256(xb + 2), q);
                const __m256 p = _mm256_cvtepi32_ps(
                    _mm256_madd_epi16(_mm256_maddubs_epi16(aq, sx), ones));
                /* ggml: fp16(y.d) * fp16(x.d), one float product */
                const __m256 d = _mm256_broadcastss_ps(_mm_mul_ss(_mm_load_ss(dx + r * dxs + b + k), dw));
                if (k == 0)
                    acc[r].a = _mm256_fmadd_ps(d, p, acc[r].a);
                else
                    acc[r].b = _mm256_fmadd_ps(d, p, acc[r].b);
            }
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < NR; r++)
        acc_io[r] = acc[r];
}


/* w, x, xs, nb: as the micro-kernels; dx, dxs: IQ4_NL's activation scales
 * (unused by the K-quants, whose Q8_K scales are floats already). */
typedef void (*mk_k_fn)(const uint8_t *w, const uint8_t *x, size_t xs, size_t nb,
                        const float *dx, size_t dxs, kacc_t *acc);

#define MK_K1(NAME, CALL, NR)                                                                  \
    static void NAME##_##NR(const uint8_t *w, const uint8_t *x, size_t xs, size_t nb,          \
                            const float *dx, size_t dxs, kacc_t *a)                            \
    {                                                                                          \
        (void)dx;                                                                              \
        (void)dxs;                                                                             \
        CALL(NR);                                                                              \
    }
#define MK_K(NAME, CALL) MK_K1(NAME, CALL, 1) MK_K1(NAME, CALL, 2) MK_K1(NAME, CALL, 3) \
                         MK_K1(NAME, CALL, 4)

#define CALL_Q2K(NR) mk_q2k(NR, w, x, xs, nb, a)
#define CALL_Q3K(NR) mk_q3k(NR, w, x, xs, nb, a)
#define CALL_Q4K(NR) mk_q45k(NR, false, w, x, xs, nb, a)
#define CALL_Q5K(NR) mk_q45k(NR, true, w, x, xs, nb, a)
#define CALL_Q6K(NR) mk_q6k(NR, w, x, xs, nb, a)
#define CALL_NL(NR) mk_iq4nl(NR, w, x, xs, nb, dx, dxs, a)
MK_K(mkk_q2, CALL_Q2K)
MK_K(mkk_q3, CALL_Q3K)
MK_K(mkk_q4, CALL_Q4K)
MK_K(mkk_q5, CALL_Q5K)
MK_K(mkk_q6, CALL_Q6K)
MK_K(mkk_nl, CALL_NL)

static mk_k_fn mkk_pick(pd_ggml_type_t t, int nr)
{
#define ROW(N) {N##_1, N##_2, N##_3, N##_4}
    static const mk_k_fn tab[6][KNR] = {ROW(mkk_q2), ROW(mkk_q3), ROW(mkk_q4),
                                        ROW(mkk_q5), ROW(mkk_q6), ROW(mkk_nl)};
#undef ROW
    int i = t == PD_GGML_TYPE_IQ4_NL ? 5 : (int)t - PD_GGML_TYPE_Q2_K;
    return tab[i][nr - 1];
}

/* ====== Reduction ====== */

/* y for one (row, activation row) from its accumulators, in ggml's order.
 * IQ4_NL with an odd number of blocks adds the last one as ggml's scalar
 * tail does (w_tail / x_tail: that block of the weights / activations). */
static float finish_k(pd_ggml_type_t t, const kacc_t *acc, const uint8_t *w_tail,
                      const uint8_t *x_tail)
{
    switch (t) {
    case PD_GGML_TYPE_Q4_K: {
        __m128 m = _mm256_castps256_ps128(acc->b);
        m = _mm_add_ps(m, _mm_movehl_ps(m, m));
        m = _mm_add_ss(m, _mm_movehdup_ps(m));
        return hsum8_ggml(acc->a) + _mm_cvtss_f32(m);
    }
    case PD_GGML_TYPE_Q5_K:
        return hsum8_ggml(acc->a) + _mm_cvtss_f32(_mm256_castps256_ps128(acc->b));
    case PD_GGML_TYPE_IQ4_NL: {
        float s = hsum8_ggml(_mm256_add_ps(acc->a, acc->b));
        if (w_tail != NULL) {
            int sumi = 0;
            for (int j = 0; j < 16; j++)
                sumi += (int8_t)x_tail[2 + j] * pd_iq4nl_values[w_tail[2 + j] & 0xF] +
                        (int8_t)x_tail[2 + 16 + j] * pd_iq4nl_values[w_tail[2 + j] >> 4];
            const float d = fp16_at(x_tail) * fp16_at(w_tail);
            /* ggml: sumf += d * sumi, contracted to an FMA in its build */
            s = _mm_cvtss_f32(_mm_fmadd_ss(_mm_set_ss(d), _mm_set_ss((float)sumi), _mm_set_ss(s)));
        }
        return s;
    }
    default:
        return hsum8_ggml(acc->a);
    }
}

/* ====== Skinny product ====== */

void pd_kern_skinny_k_avx2(const pd_mat_t *w, uint32_t o_begin, uint32_t o_end, const void *xq,
                           uint32_t n_rows, float *y, uint32_t y_stride)
{
    const pd_ggml_type_t t = w->type;
    const bool is_nl = t == PD_GGML_TYPE_IQ4_NL;
    const size_t be = is_nl ? PD_QK4_NL : QK_K, bb = pd_ggml_block_bytes(t);
    const size_t xbb = is_nl ? Q8_0_BYTES : PD_Q8_K_BYTES;
    const size_t nb_all = w->n_in / be, nb_pairs = is_nl ? nb_all & ~(size_t)1 : nb_all;
    const size_t xs = nb_all * xbb, rb = w->row_bytes;
    const size_t kt = is_nl ? KT_SB * 8 : KT_SB; /* even for IQ4_NL's pairs */
    const uint8_t *w0 = (const uint8_t *)w->data, *x0 = (const uint8_t *)xq;
    kacc_t acc[KPANEL * PD_SKINNY_MAX_ROWS]; /* (KPANEL, n_rows) */
    float dx[KNR * KT_SB * 8] = {0};         /* (KNR, kt) IQ4_NL activation scales */

    for (uint32_t p0 = o_begin; p0 < o_end; p0 += KPANEL) {
        const uint32_t np = o_end - p0 < KPANEL ? o_end - p0 : KPANEL;
        const uint8_t *wp = w0 + (size_t)p0 * rb;
        for (size_t i = 0; i < (size_t)np * n_rows; i++)
            acc[i].a = acc[i].b = _mm256_setzero_ps();
        for (size_t b0 = 0; b0 < nb_pairs; b0 += kt) {
            const size_t nb = nb_pairs - b0 < kt ? nb_pairs - b0 : kt;
            for (uint32_t r = 0; r < n_rows; r += KNR) {
                const int nr = n_rows - r >= KNR ? KNR : (int)(n_rows - r);
                const mk_k_fn mk = mkk_pick(t, nr);
                for (int i = 0; is_nl && i < nr; i++)
                    for (size_t b = 0; b < nb; b++)
                        dx[(size_t)i * kt + b] = fp16_at(x0 + (r + i) * xs + (b0 + b) * xbb);
                for (uint32_t o = 0; o < np; o++)
                    mk(wp + o * rb + b0 * bb, x0 + r * xs + b0 * xbb, xs, nb, dx, kt,
                       acc + o * n_rows + r);
            }
        }
        for (uint32_t o = 0; o < np; o++) {
            const uint8_t *w_tail = nb_pairs < nb_all ? wp + o * rb + nb_pairs * bb : NULL;
            for (uint32_t r = 0; r < n_rows; r++)
                y[(size_t)r * y_stride + p0 + o] =
                    finish_k(t, &acc[o * n_rows + r], w_tail, x0 + r * xs + nb_pairs * xbb);
        }
    }
}

/* ====== Q8_K activations (ggml's quantize_row_q8_K_ref, vectorized) ======
 * Same results as pd_quant_row_q8_k_ref for every input, NaN included: the
 * rounding is the same float add of 1.5 * 2^23, and an int8 keeps the low
 * byte of the clamped int as the C conversion does. */

static void quant_block_q8_k(const float *x, uint8_t *blk)
{
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 m = _mm256_setzero_ps();
    for (int j = 0; j < QK_K; j += 8) /* max(v, m): a NaN lane of v keeps m */
        m = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + j)), m);
    __m128 m4 = _mm_max_ps(_mm256_extractf128_ps(m, 1), _mm256_castps256_ps128(m));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float amax = _mm_cvtss_f32(m4);
    int8_t *qs = (int8_t *)(blk + 4);
    float d = 0;
    if (amax == 0) {
        memset(qs, 0, QK_K);
    } else {
        float max = 0;
        for (int j = 0; j < QK_K; j++) /* the first x of largest magnitude */
            if (__builtin_fabsf(x[j]) == amax) {
                max = x[j];
                break;
            }
        const float iscale = -127.f / max;
        const __m256 vs = _mm256_set1_ps(iscale), magic = _mm256_set1_ps(12582912.0f);
        const __m256i mant = _mm256_set1_epi32(0x007fffff), off = _mm256_set1_epi32(0x00400000);
        const __m256i lim = _mm256_set1_epi32(127);
        const __m256i pick = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                              -1, -1, -1, 0, 4, 8, 12, -1, -1, -1, -1, -1, -1,
                                              -1, -1, -1, -1, -1, -1);
        for (int j = 0; j < QK_K; j += 8) {
            const __m256 v = _mm256_add_ps(_mm256_mul_ps(vs, _mm256_loadu_ps(x + j)), magic);
            __m256i q = _mm256_sub_epi32(_mm256_and_si256(_mm256_castps_si256(v), mant), off);
            q = _mm256_shuffle_epi8(_mm256_min_epi32(q, lim), pick); /* low bytes */
            const uint32_t lo = (uint32_t)_mm256_extract_epi32(q, 0);
            const uint32_t hi = (uint32_t)_mm256_extract_epi32(q, 4);
            memcpy(qs + j, &lo, 4);
            memcpy(qs + j + 4, &hi, 4);
        }
        d = 1 / iscale;
    }
    /* bsums: sums of 16 bytes, via sums of (q + 128) over 8 bytes */
    int16_t bsums[16];
    const __m256i bias = _mm256_set1_epi8((char)0x80);
    for (int g = 0; g < 16; g += 4) {
        const __m256i a = _mm256_sad_epu8(_mm256_xor_si256(load256((const uint8_t *)qs + 16 * g),
                                                           bias), _mm256_setzero_si256());
        const __m256i c = _mm256_sad_epu8(
            _mm256_xor_si256(load256((const uint8_t *)qs + 16 * g + 32), bias),
            _mm256_setzero_si256());
        int64_t s[8];
        _mm256_storeu_si256((__m256i *)(void *)s, a);
        _mm256_storeu_si256((__m256i *)(void *)(s + 4), c);
        for (int k = 0; k < 4; k++)
            bsums[g + k] = (int16_t)(s[2 * k] + s[2 * k + 1] - 16 * 128);
    }
    memcpy(blk, &d, 4);
    memcpy(blk + 4 + QK_K, bsums, sizeof bsums);
}

void pd_quant_rows_q8_k_avx2(const float *x, uint32_t x_stride, uint32_t n, uint32_t n_rows,
                             void *xq)
{
    const size_t nb = n / QK_K;
    for (uint32_t r = 0; r < n_rows; r++)
        for (size_t b = 0; b < nb; b++)
            quant_block_q8_k(x + (size_t)r * x_stride + b * QK_K,
                             (uint8_t *)xq + (r * nb + b) * PD_Q8_K_BYTES);
}

/* ====== Dequantization ======
 * The same operations as pd_dequant_row_k_ref (dl * q - ml, no fused
 * multiply-add), so the same floats: 32 codes at a time. */

/* y[0..32) = dl * q - ml for the 32 signed codes in q; the first 16 with
 * (dl0, ml0), the last 16 with (dl1, ml1). has_min false: y = dl * q. */
static ALWAYS_INLINE void deq32(float *y, __m256i q, float dl0, float ml0, float dl1, float ml1,
                                bool has_min)
{
    const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
    const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
#pragma GCC unroll 4
    for (int k = 0; k < 4; k++) {
        const __m256 v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(parts[k]));
        const __m256 d = _mm256_set1_ps(k < 2 ? dl0 : dl1);
        __m256 r = _mm256_mul_ps(d, v);
        if (has_min)
            r = _mm256_sub_ps(r, _mm256_set1_ps(k < 2 ? ml0 : ml1));
        _mm256_storeu_ps(y + 8 * k, r);
    }
}

static void deq_q2_k_avx2(const uint8_t *b, float *y)
{
    const float d = fp16_at(b + 80), min = fp16_at(b + 82);
    const __m256i m3 = _mm256_set1_epi8(3);
    for (int c = 0; c < 8; c++) {
        const __m256i q = _mm256_and_si256(
            _mm256_srli_epi16(load256(b + 16 + 32 * (c / 4)), 2 * (c % 4)), m3);
        const uint8_t s0 = b[2 * c], s1 = b[2 * c + 1];
        deq32(y + 32 * c, q, d * (float)(s0 & 0xF), min * (float)(s0 >> 4), d * (float)(s1 & 0xF),
              min * (float)(s1 >> 4), true);
    }
}

static void deq_q3_k_avx2(const uint8_t *b, float *y)
{
    int8_t sc[16];
    _mm_storeu_si128((__m128i *)(void *)sc, q3k_scales_v(b + 96));
    const float d = fp16_at(b + 108);
    const __m256i m3 = _mm256_set1_epi8(3), hbits = load256(b);
    for (int c = 0; c < 8; c++) {
        const __m256i lo = _mm256_and_si256(
            _mm256_srli_epi16(load256(b + 32 + 32 * (c / 4)), 2 * (c % 4)), m3);
        const __m256i hi = _mm256_slli_epi16(
            _mm256_srli_epi16(_mm256_andnot_si256(hbits, _mm256_set1_epi8((char)(1 << c))), c), 2);
        deq32(y + 32 * c, _mm256_sub_epi8(lo, hi), d * (float)sc[2 * c], 0,
              d * (float)sc[2 * c + 1], 0, false);
    }
}

static void deq_q45_k_avx2(const uint8_t *b, float *y, bool high)
{
    const float d = fp16_at(b), min = fp16_at(b + 2);
    const uint8_t *qs = b + (high ? 48 : 16);
    const __m256i m4 = _mm256_set1_epi8(0xF), hbits = load256(b + 16);
    for (int c = 0; c < 8; c++) {
        const __m256i bits = load256(qs + 32 * (c / 2));
        __m256i q = _mm256_and_si256(c % 2 ? _mm256_srli_epi16(bits, 4) : bits, m4);
        if (high)
            q = _mm256_add_epi8(q, _mm256_slli_epi16(_mm256_srli_epi16(
                    _mm256_and_si256(hbits, _mm256_set1_epi8((char)(1 << c))), c), 4));
        uint8_t sc, m;
        k4_scale_min(c, b + 4, &sc, &m);
        const float dl = d * (float)sc, ml = min * (float)m;
        deq32(y + 32 * c, q, dl, ml, dl, ml, true);
    }
}

static void deq_q6_k_avx2(const uint8_t *b, float *y)
{
    const int8_t *sc = (const int8_t *)(b + 192);
    const float d = fp16_at(b + 208);
    const __m256i m15 = _mm256_set1_epi8(15), m30 = _mm256_set1_epi8(0x30);
    const __m256i off = _mm256_set1_epi8(32);
    for (int c = 0; c < 8; c++) {
        const int j = c / 4, t = c % 4;
        const __m256i lowsrc = load256(b + 64 * j + 32 * (t & 1));
        const __m256i low = _mm256_and_si256(t < 2 ? lowsrc : _mm256_srli_epi16(lowsrc, 4), m15);
        const __m256i hb = load256(b + 128 + 32 * j);
        const __m256i high = _mm256_and_si256(
            t < 2 ? _mm256_slli_epi16(hb, 4 - 2 * t) : _mm256_srli_epi16(hb, 2 * t - 4), m30);
        const __m256i q = _mm256_sub_epi8(_mm256_or_si256(low, high), off);
        deq32(y + 32 * c, q, d * (float)sc[2 * c], 0, d * (float)sc[2 * c + 1], 0, false);
    }
}

static void deq_iq4_nl_avx2(const uint8_t *b, float *y)
{
    const __m256i values = _mm256_broadcastsi128_si256(
        _mm_loadu_si128((const __m128i *)(const void *)pd_iq4nl_values));
    const __m256i m4 = _mm256_set1_epi8(0xF);
    const __m256i bits = _mm256_broadcastsi128_si256(load128(b + 2));
    const __m256i idx = _mm256_blend_epi32(
        _mm256_and_si256(bits, m4), _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4), 0xF0);
    const float d = fp16_at(b);
    deq32(y, _mm256_shuffle_epi8(values, idx), d, 0, d, 0, false);
}

void pd_dequant_row_k_avx2(pd_ggml_type_t t, const void *src, float *dst, uint32_t n)
{
    const uint8_t *s = src;
    const uint32_t be = pd_ggml_block_elems(t), bb = pd_ggml_block_bytes(t);
    for (uint32_t i = 0; be != 0 && i < n / be; i++) {
        const uint8_t *b = s + (size_t)i * bb;
        float *y = dst + (size_t)i * be;
        switch (t) {
        case PD_GGML_TYPE_Q2_K: deq_q2_k_avx2(b, y); break;
        case PD_GGML_TYPE_Q3_K: deq_q3_k_avx2(b, y); break;
        case PD_GGML_TYPE_Q4_K: deq_q45_k_avx2(b, y, false); break;
        case PD_GGML_TYPE_Q5_K: deq_q45_k_avx2(b, y, true); break;
        case PD_GGML_TYPE_Q6_K: deq_q6_k_avx2(b, y); break;
        case PD_GGML_TYPE_IQ4_NL: deq_iq4_nl_avx2(b, y); break;
        default: return;
        }
    }
}
