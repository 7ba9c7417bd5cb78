/* kernels_qt_avx512.c -- the batched quantized product (Q8_0, Q4_0 weights
 * times Q8_0 activations) with the tokens across the vector lanes; AVX-512
 * F/BW/VNNI, compiled with those flags, called only when pd_kern_isa() is
 * PD_ISA_AVX512.
 *
 * What must not change. ggml's AVX2 vec_dot for Q8_0 / Q4_0 x Q8_0, and our
 * skinny kernels which give its bits, keep for each (weight row o, token r)
 * 8 float lanes: lane i adds, block after block in order,
 *     acc_i = fma((float)p_i, dw * dx, acc_i)
 * where p_i is the integer dot of the block's elements 4i..4i+3 and dw * dx
 * one rounded product of the two fp16 scales; the 8 lanes are then summed
 * as hsum_float_8 does: ((a4+a0) + (a6+a2)) + ((a5+a1) + (a7+a3)).
 * pd_kern_skinny_qlanes_ref (kernels.c) is that definition in plain C.
 *
 * How it is computed here. The skinny kernels hold one (o, r) accumulator
 * per ymm and spend 5 instructions per block on 32 multiply-adds. Here one
 * zmm holds lane i of 16 tokens: acc[o][i] = (token 0..15). Per block and
 * weight row: 8 vpdpbusd (the weight's 4 bytes of group i broadcast, the 16
 * tokens' group i), 8 converts, 8 FMAs and one multiply for the 16 scales:
 * 25 instructions for 16 x 32 multiply-adds instead of 80. Every token's
 * lane sees the same integer, the same product of scales and the same FMA
 * chain, and the final tree is the same, lane-wise: y[r][o] is
 * bit-identical to the skinny kernels' whatever the batch.
 *
 * The integers. vpdpbusd multiplies unsigned by signed bytes. The weights
 * are made unsigned (Q8_0: u = w + 128 = w ^ 0x80; Q4_0: the stored nibble
 * u = w + 8) and each dot starts from -K * (x0 + x1 + x2 + x3), K = 128 or
 * 8, prepared once per token and group: the int32 is exactly sum(w * x)
 * for every weight byte and every activation in [-127, 127], which is all
 * the activation quantizer gives for finite inputs. (It gives -128 only for
 * NaN or infinity, where the skinny Q8_0 kernels' sign trick wraps; the
 * output is not a number worth having then, either way.)
 *
 * The activations are laid out once per product (pd_kern_qt_prepare, by
 * the thread that calls the pool) in "qt blocks": per group of 16 tokens
 * and per block, the 8 group vectors, their -K sums and the 16 scales; the
 * pool's tasks share them read-only. A task walks panels of QT_PANEL
 * weight rows; for each K-tile of QT_KT blocks and each token group it
 * runs the micro-kernel over pairs of rows, the accumulators of the panel
 * kept on the stack between K-tiles (the K-tile's activations, 17 KB, stay
 * in L1 while the panel's weights stream past). A last group of at most 8
 * tokens runs in ymm registers (mk_qt8: the same operations on the low
 * halves), where 256-bit vectors have three ports against two for 512-bit.
 */
#include <immintrin.h>
#include <stdalign.h>
#include <string.h>

#include "engine/kernels.h"

#define ALWAYS_INLINE inline __attribute__((always_inline))
#define Q8_0_BYTES 34
#define Q4_0_BYTES 18
#define QK 32
#define QT_KT 16    /* K-tile, blocks */
#define QT_PANEL 32 /* weight rows whose accumulators stay on the stack */
#define QT_GROUPS (PD_SKINNY_MAX_ROWS / PD_QT_LANES)
#define QT_NO 2     /* weight rows per micro-kernel call */

/* One block of a group of PD_QT_LANES tokens (1088 bytes, 64-aligned). */
typedef struct {
    int32_t x[8][PD_QT_LANES];    /* x[i][t]: bytes 4i..4i+3 of token t's block */
    int32_t corr[8][PD_QT_LANES]; /* -K * (the sum of those 4 signed bytes) */
    float dx[PD_QT_LANES];        /* token t's block scale */
} qt_blk_t;

_Static_assert(sizeof(qt_blk_t) == PD_QT_BLK_BYTES, "qt block size");

static ALWAYS_INLINE float fp16_load(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

/* ====== The activations, once per product ====== */

void pd_kern_qt_prepare_avx512(pd_ggml_type_t wtype, const void *xq, uint32_t n_in,
                               uint32_t n_rows, void *panel)
{
    const size_t nb = n_in / QK, xq_stride = nb * Q8_0_BYTES;
    const __m512i idx = _mm512_mullo_epi32(
        _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
        _mm512_set1_epi32((int)xq_stride));
    const __m512i kb = _mm512_set1_epi8((char)(wtype == PD_GGML_TYPE_Q8_0 ? 0x80 : 8));
    const __m512i zero = _mm512_setzero_si512();
    qt_blk_t *out = panel;
    for (uint32_t r0 = 0; r0 < n_rows; r0 += PD_QT_LANES) {
        const uint32_t n_tok = n_rows - r0 < PD_QT_LANES ? n_rows - r0 : PD_QT_LANES;
        const __mmask16 m = (__mmask16)((1u << n_tok) - 1);
        const uint8_t *g = (const uint8_t *)xq + (size_t)r0 * xq_stride;
        for (size_t b = 0; b < nb; b++, out++) {
            const uint8_t *base = g + b * Q8_0_BYTES;
            /* the fp16 scale is the low half of the block's first dword */
            const __m512i h = _mm512_mask_i32gather_epi32(zero, m, idx, base, 1);
            _mm512_store_ps(out->dx, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(h)));
            for (int i = 0; i < 8; i++) {
                const __m512i xi = _mm512_mask_i32gather_epi32(zero, m, idx, base + 2 + 4 * i, 1);
                _mm512_store_si512(out->x[i], xi);
                _mm512_store_si512(out->corr[i],
                                   _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, kb, xi)));
            }
        }
    }
}

/* ====== The micro-kernel ====== */

/* acc[o * acc_stride + i] (16 tokens) += blocks [0, nb) of weight rows
 * w + o * rb (o < NO) times the qt blocks xt; `first` starts from 0. */
static ALWAYS_INLINE void mk_qt(const int NO, const bool q8, const uint8_t *w, size_t rb,
                                const qt_blk_t *xt, size_t nb, __m512 *acc_io,
                                size_t acc_stride, bool first)
{
    const size_t bsz = q8 ? Q8_0_BYTES : Q4_0_BYTES;
    __m512 acc[QT_NO][8];
#pragma GCC unroll 2
    for (int o = 0; o < NO; o++)
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++)
            acc[o][i] = first ? _mm512_setzero_ps() : acc_io[o * acc_stride + (size_t)i];
    for (size_t b = 0; b < nb; b++, xt++) {
        alignas(32) uint32_t wu[QT_NO][8]; /* the unsigned weights, group i in wu[o][i] */
        __m512 sc[QT_NO];
        const __m512 dx = _mm512_load_ps(xt->dx);
#pragma GCC unroll 2
        for (int o = 0; o < NO; o++) {
            const uint8_t *wb = w + (size_t)o * rb + b * bsz;
            sc[o] = _mm512_mul_ps(_mm512_set1_ps(fp16_load(wb)), dx);
            if (q8) {
                const __m256i v = _mm256_loadu_si256((const __m256i *)(const void *)(wb + 2));
                _mm256_store_si256((__m256i *)(void *)wu[o],
                                   _mm256_xor_si256(v, _mm256_set1_epi8((char)0x80)));
            } else {
                const __m128i t = _mm_loadu_si128((const __m128i *)(const void *)(wb + 2));
                const __m128i m4 = _mm_set1_epi8(0x0f);
                _mm_store_si128((__m128i *)(void *)wu[o], _mm_and_si128(t, m4));
                _mm_store_si128((__m128i *)(void *)&wu[o][4],
                                _mm_and_si128(_mm_srli_epi16(t, 4), m4));
            }
        }
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++) {
            const __m512i xi = _mm512_load_si512(xt->x[i]);
#pragma GCC unroll 2
            for (int o = 0; o < NO; o++) {
                const __m512i p = _mm512_dpbusd_epi32(_mm512_load_si512(xt->corr[i]),
                                                      _mm512_set1_epi32((int)wu[o][i]), xi);
                acc[o][i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), sc[o], acc[o][i]);
            }
        }
    }
#pragma GCC unroll 2
    for (int o = 0; o < NO; o++)
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++)
            acc_io[o * acc_stride + (size_t)i] = acc[o][i];
}

/* As mk_qt for a group of at most 8 tokens: the low halves of the qt
 * blocks in ymm registers (three ports for 256-bit vectors against two for
 * 512-bit ones on this core family), the same operations per lane. */
static ALWAYS_INLINE void mk_qt8(const int NO, const bool q8, const uint8_t *w, size_t rb,
                                 const qt_blk_t *xt, size_t nb, __m512 *acc_io,
                                 size_t acc_stride, bool first)
{
    const size_t bsz = q8 ? Q8_0_BYTES : Q4_0_BYTES;
    __m256 acc[QT_NO][8];
#pragma GCC unroll 2
    for (int o = 0; o < NO; o++)
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++)
            acc[o][i] = first ? _mm256_setzero_ps()
                              : _mm512_castps512_ps256(acc_io[o * acc_stride + (size_t)i]);
    for (size_t b = 0; b < nb; b++, xt++) {
        alignas(32) uint32_t wu[QT_NO][8];
        __m256 sc[QT_NO];
        const __m256 dx = _mm256_load_ps(xt->dx);
#pragma GCC unroll 2
        for (int o = 0; o < NO; o++) {
            const uint8_t *wb = w + (size_t)o * rb + b * bsz;
            sc[o] = _mm256_mul_ps(_mm256_set1_ps(fp16_load(wb)), dx);
            if (q8) {
                const __m256i v = _mm256_loadu_si256((const __m256i *)(const void *)(wb + 2));
                _mm256_store_si256((__m256i *)(void *)wu[o],
                                   _mm256_xor_si256(v, _mm256_set1_epi8((char)0x80)));
            } else {
                const __m128i t = _mm_loadu_si128((const __m128i *)(const void *)(wb + 2));
                const __m128i m4 = _mm_set1_epi8(0x0f);
                _mm_store_si128((__m128i *)(void *)wu[o], _mm_and_si128(t, m4));
                _mm_store_si128((__m128i *)(void *)&wu[o][4],
                                _mm_and_si128(_mm_srli_epi16(t, 4), m4));
            }
        }
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++) {
            const __m256i xi = _mm256_load_si256((const __m256i *)(const void *)xt->x[i]);
#pragma GCC unroll 2
            for (int o = 0; o < NO; o++) {
                const __m256i p = _mm256_dpbusd_epi32(
                    _mm256_load_si256((const __m256i *)(const void *)xt->corr[i]),
                    _mm256_set1_epi32((int)wu[o][i]), xi);
                acc[o][i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), sc[o], acc[o][i]);
            }
        }
    }
#pragma GCC unroll 2
    for (int o = 0; o < NO; o++)
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++)
            acc_io[o * acc_stride + (size_t)i] = _mm512_zextps256_ps512(acc[o][i]);
}

typedef void (*mk_qt8_fn)(const uint8_t *w, size_t rb, const qt_blk_t *xt, size_t nb,
                          __m512 *acc, size_t acc_stride, bool first);

typedef void (*mk_qt_fn)(const uint8_t *w, size_t rb, const qt_blk_t *xt, size_t nb,
                         __m512 *acc, size_t acc_stride, bool first);

#define MKQT(NO, Q8, SFX)                                                                      \
    static void mkqt_##NO##_##SFX(const uint8_t *w, size_t rb, const qt_blk_t *xt, size_t nb,  \
                                  __m512 *acc, size_t acc_stride, bool first)                  \
    {                                                                                          \
        mk_qt(NO, Q8, w, rb, xt, nb, acc, acc_stride, first);                                  \
    }
#define MKQT8(NO, Q8, SFX)                                                                     \
    static void mkqt8_##NO##_##SFX(const uint8_t *w, size_t rb, const qt_blk_t *xt, size_t nb, \
                                   __m512 *acc, size_t acc_stride, bool first)                 \
    {                                                                                          \
        mk_qt8(NO, Q8, w, rb, xt, nb, acc, acc_stride, first);                                 \
    }
MKQT8(1, true, q8)
MKQT8(2, true, q8)
MKQT8(1, false, q4)
MKQT8(2, false, q4)
MKQT(1, true, q8)
MKQT(2, true, q8)
MKQT(1, false, q4)
MKQT(2, false, q4)

/* hsum_float_8's tree, lane-wise over the 16 tokens: acc[0..8) -> sums. */
static ALWAYS_INLINE __m512 qt_reduce(const __m512 *acc)
{
    const __m512 s0 = _mm512_add_ps(acc[4], acc[0]), s1 = _mm512_add_ps(acc[5], acc[1]);
    const __m512 s2 = _mm512_add_ps(acc[6], acc[2]), s3 = _mm512_add_ps(acc[7], acc[3]);
    return _mm512_add_ps(_mm512_add_ps(s0, s2), _mm512_add_ps(s1, s3));
}

/* ====== The product ====== */

void pd_kern_skinny_qt_avx512(const pd_mat_t *w, uint32_t o_begin, uint32_t o_end,
                              const void *panel, uint32_t n_rows, float *y, uint32_t y_stride)
{
    if (o_begin >= o_end || n_rows == 0)
        return;
    const bool q8 = w->type == PD_GGML_TYPE_Q8_0;
    const mk_qt_fn mk1 = q8 ? mkqt_1_q8 : mkqt_1_q4, mk2 = q8 ? mkqt_2_q8 : mkqt_2_q4;
    const mk_qt8_fn mk81 = q8 ? mkqt8_1_q8 : mkqt8_1_q4, mk82 = q8 ? mkqt8_2_q8 : mkqt8_2_q4;
    const size_t nb_all = w->n_in / QK, rb = w->row_bytes;
    const size_t bsz = q8 ? Q8_0_BYTES : Q4_0_BYTES;
    const uint32_t n_groups = (n_rows + PD_QT_LANES - 1) / PD_QT_LANES;
    const qt_blk_t *xt = panel; /* (n_groups, nb_all) */
    const uint8_t *w0 = (const uint8_t *)w->data;
    const size_t acc_stride = (size_t)QT_GROUPS * 8; /* zmm between weight rows */
    _Static_assert(QT_GROUPS * PD_QT_LANES == PD_SKINNY_MAX_ROWS, "groups");
    alignas(64) __m512 acc[QT_PANEL * QT_GROUPS * 8]; /* (panel row, group, lane i) */
    alignas(64) float out[PD_QT_LANES];

    for (uint32_t g0 = 0; g0 < n_groups; g0 += QT_GROUPS) { /* n_rows > 64: slices */
        const uint32_t ng = n_groups - g0 < QT_GROUPS ? n_groups - g0 : QT_GROUPS;
        for (uint32_t p0 = o_begin; p0 < o_end; p0 += QT_PANEL) {
            const uint32_t np = o_end - p0 < QT_PANEL ? o_end - p0 : QT_PANEL;
            const uint8_t *wp = w0 + (size_t)p0 * rb;
            for (size_t b0 = 0; b0 < nb_all; b0 += QT_KT) {
                const size_t nb = nb_all - b0 < QT_KT ? nb_all - b0 : QT_KT;
                for (uint32_t g = 0; g < ng; g++) {
                    const qt_blk_t *xg = xt + (size_t)(g0 + g) * nb_all + b0;
                    const bool half = n_rows - (g0 + g) * PD_QT_LANES <= PD_QT_LANES / 2;
                    for (uint32_t o = 0; o < np; o += QT_NO) {
                        __m512 *a = acc + (size_t)o * acc_stride + (size_t)g * 8;
                        const uint8_t *wo = wp + (size_t)o * rb + b0 * bsz;
                        const bool two = np - o >= QT_NO;
                        if (half) /* in the low halves of a's zmm */
                            (two ? mk82 : mk81)(wo, rb, xg, nb, a, acc_stride, b0 == 0);
                        else
                            (two ? mk2 : mk1)(wo, rb, xg, nb, a, acc_stride, b0 == 0);
                    }
                }
            }
            for (uint32_t g = 0; g < ng; g++) {
                const uint32_t r0 = (g0 + g) * PD_QT_LANES;
                const uint32_t n_tok = n_rows - r0 < PD_QT_LANES ? n_rows - r0 : PD_QT_LANES;
                for (uint32_t o = 0; o < np; o++) {
                    const __m512 s = nb_all ? qt_reduce(acc + (size_t)o * acc_stride + g * 8)
                                            : _mm512_setzero_ps();
                    _mm512_store_ps(out, s);
                    for (uint32_t t = 0; t < n_tok; t++)
                        y[(size_t)(r0 + t) * y_stride + p0 + o] = out[t];
                }
            }
        }
    }
}
