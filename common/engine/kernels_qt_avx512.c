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
 * in L1 while the panel's weights stream past), and the next panel's
 * weights are prefetched while it runs (kernels_pf.h, as the skinny
 * kernels do): at 8 tokens the product is close to memory-bound. The
 * weights' fp16 scales are converted once per panel and K-tile (one
 * gather per row: qt_scales), not per block, row and token group, and a
 * Q4_0 block's nibbles are unpacked with one shift and one mask
 * (pd_q4_unpack, simd_avx512.h).
 *
 * A last group of at most 8 tokens (pd_matmul: a batch of 6..8, or the
 * tail of a larger one) is laid out in "qt8 blocks" instead: two of a token's 8
 * group lanes per token in the 16 lanes, lane 2t + j holding group
 * 2m + j of token t in vector m (4 vectors per block). One qword broadcast
 * of the weight's groups 2m, 2m + 1 feeds both halves, so a block and a
 * weight row cost 4 vpdpbusd, 4 converts, 4 FMAs and one multiply for 8
 * tokens (mk_qt8), half the 16-token kernel's work, where the ymm form of
 * the 16-token layout spends 25 256-bit instructions. Each lane still runs
 * its own (token, group) FMA chain; the final tree pairs the vectors
 * m and m + 2 (groups i and i + 4), then m = 0 and 1, then the two lanes
 * of a token: ((a4 + a0) + (a6 + a2)) + ((a5 + a1) + (a7 + a3)), the same
 * tree (float addition commutes bit for bit).
 */
#include <immintrin.h>
#include <stdalign.h>
#include <string.h>

#include "engine/kernels.h"
#include "engine/simd_avx512.h"

#define ALWAYS_INLINE inline __attribute__((always_inline))
#define Q8_0_BYTES 34
#define Q4_0_BYTES 18
#define QK 32
#define QT_KT 16    /* K-tile, blocks */
#define QT_PANEL 32 /* weight rows whose accumulators stay on the stack */
#define QT_GROUPS (PD_SKINNY_MAX_ROWS / PD_QT_LANES)
#define QT_NO 2     /* weight rows per micro-kernel call */
#define QT8_NO 4    /* weight rows per qt8 micro-kernel call */
#define PANEL QT_PANEL
#ifndef QT_PF_HINT
#define QT_PF_HINT _MM_HINT_T0
#endif
#define PF_HINT QT_PF_HINT

#include "engine/kernels_pf.h"

/* One block of a group of PD_QT_LANES tokens (1088 bytes, 64-aligned). */
typedef struct {
    int32_t x[8][PD_QT_LANES];    /* x[i][t]: bytes 4i..4i+3 of token t's block */
    int32_t corr[8][PD_QT_LANES]; /* -K * (the sum of those 4 signed bytes) */
    float dx[PD_QT_LANES];        /* token t's block scale */
} qt_blk_t;

_Static_assert(sizeof(qt_blk_t) == PD_QT_BLK_BYTES, "qt block size");

/* One block of a group of at most 8 tokens (576 bytes, 64-aligned); it
 * takes the place of a qt_blk_t in the panel (the last group only), so
 * pd_kern_qt_bytes covers it. */
typedef struct {
    int32_t x[4][PD_QT_LANES];    /* x[m][2t + j]: bytes 4(2m+j)..+3 of token t's block */
    int32_t corr[4][PD_QT_LANES]; /* -K * (the sum of those 4 signed bytes) */
    float dx[PD_QT_LANES];        /* dx[2t + j]: token t's block scale */
} qt8_blk_t;

_Static_assert(sizeof(qt8_blk_t) == 576 && sizeof(qt8_blk_t) <= sizeof(qt_blk_t),
               "qt8 block size");

/* ====== The activations, once per product ====== */

/* The qt8 blocks of n_tok <= 8 tokens (rows g, xq_stride apart). */
static void qt8_prepare(__m512i kb, const uint8_t *g, size_t xq_stride, size_t nb,
                        uint32_t n_tok, qt8_blk_t *out)
{
    /* lane 2t + j: token t, group 2m + j (4 bytes further for j = 1) */
    const __m512i tok = _mm512_mullo_epi32(
        _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0),
        _mm512_set1_epi32((int)xq_stride));
    const __m512i idx = _mm512_add_epi32(
        tok, _mm512_set_epi32(4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0));
    const __m512i zero = _mm512_setzero_si512();
    const __mmask16 m = (__mmask16)((1u << (2 * n_tok)) - 1);
    for (size_t b = 0; b < nb; b++, out++) {
        const uint8_t *base = g + b * Q8_0_BYTES;
        const __m512i h = _mm512_mask_i32gather_epi32(zero, m, tok, base, 1);
        _mm512_store_ps(out->dx, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(h)));
        for (int i = 0; i < 4; i++) {
            const __m512i xi = _mm512_mask_i32gather_epi32(zero, m, idx, base + 2 + 8 * i, 1);
            _mm512_store_si512(out->x[i], xi);
            _mm512_store_si512(out->corr[i],
                               _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, kb, xi)));
        }
    }
}

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
        if (n_tok <= PD_QT_LANES / 2) { /* the last group: qt8 blocks */
            qt8_prepare(kb, g, xq_stride, nb, n_tok, (qt8_blk_t *)(void *)out);
            break;
        }
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
                                const float *ds, const qt_blk_t *xt, size_t nb, __m512 *acc_io,
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
            sc[o] = _mm512_mul_ps(_mm512_set1_ps(ds[(size_t)o * QT_KT + b]), dx);
            if (q8) {
                const __m256i v = _mm256_loadu_si256((const __m256i *)(const void *)(wb + 2));
                _mm256_store_si256((__m256i *)(void *)wu[o],
                                   _mm256_xor_si256(v, _mm256_set1_epi8((char)0x80)));
            } else {
                _mm256_store_si256((__m256i *)(void *)wu[o], pd_q4_unpack(wb + 2));
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

/* As mk_qt for a group of at most 8 tokens in qt8 blocks: acc[o *
 * acc_stride + m] (lane 2t + j: token t, group 2m + j; m < 4) += blocks
 * [0, nb) of weight rows w + o * rb (o < NO). */
static ALWAYS_INLINE void mk_qt8(const int NO, const bool q8, const uint8_t *w, size_t rb,
                                 const float *ds, const qt8_blk_t *xt, size_t nb,
                                 __m512 *acc_io, size_t acc_stride, bool first)
{
    const size_t bsz = q8 ? Q8_0_BYTES : Q4_0_BYTES;
    __m512 acc[QT8_NO][4];
#pragma GCC unroll 4
    for (int o = 0; o < NO; o++)
#pragma GCC unroll 4
        for (int m = 0; m < 4; m++)
            acc[o][m] = first ? _mm512_setzero_ps() : acc_io[o * acc_stride + (size_t)m];
    for (size_t b = 0; b < nb; b++, xt++) {
        /* the unsigned weights: groups 2m and 2m + 1 in wu[o][m] */
        alignas(32) uint64_t wu[QT8_NO][4];
        __m512 sc[QT8_NO];
        const __m512 dx = _mm512_load_ps(xt->dx);
#pragma GCC unroll 4
        for (int o = 0; o < NO; o++) {
            const uint8_t *wb = w + (size_t)o * rb + b * bsz;
            sc[o] = _mm512_mul_ps(_mm512_set1_ps(ds[(size_t)o * QT_KT + b]), dx);
            if (q8) {
                const __m256i v = _mm256_loadu_si256((const __m256i *)(const void *)(wb + 2));
                _mm256_store_si256((__m256i *)(void *)wu[o],
                                   _mm256_xor_si256(v, _mm256_set1_epi8((char)0x80)));
            } else {
                _mm256_store_si256((__m256i *)(void *)wu[o], pd_q4_unpack(wb + 2));
            }
        }
#pragma GCC unroll 4
        for (int m = 0; m < 4; m++) {
            const __m512i xm = _mm512_load_si512(xt->x[m]);
            const __m512i cm = _mm512_load_si512(xt->corr[m]);
#pragma GCC unroll 4
            for (int o = 0; o < NO; o++) {
                const __m512i p =
                    _mm512_dpbusd_epi32(cm, _mm512_set1_epi64((long long)wu[o][m]), xm);
                acc[o][m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), sc[o], acc[o][m]);
            }
        }
    }
#pragma GCC unroll 4
    for (int o = 0; o < NO; o++)
#pragma GCC unroll 4
        for (int m = 0; m < 4; m++)
            acc_io[o * acc_stride + (size_t)m] = acc[o][m];
}

typedef void (*mk_qt8_fn)(const uint8_t *w, size_t rb, const float *ds, const qt8_blk_t *xt,
                          size_t nb, __m512 *acc, size_t acc_stride, bool first);

typedef void (*mk_qt_fn)(const uint8_t *w, size_t rb, const float *ds, const qt_blk_t *xt,
                         size_t nb, __m512 *acc, size_t acc_stride, bool first);

#define MKQT(NO, Q8, SFX)                                                                      \
    static void mkqt_##NO##_##SFX(const uint8_t *w, size_t rb, const float *ds,                \
                                  const qt_blk_t *xt, size_t nb, __m512 *acc,                  \
                                  size_t acc_stride, bool first)                               \
    {                                                                                          \
        mk_qt(NO, Q8, w, rb, ds, xt, nb, acc, acc_stride, first);                              \
    }
#define MKQT8(NO, Q8, SFX)                                                                     \
    static void mkqt8_##NO##_##SFX(const uint8_t *w, size_t rb, const float *ds,               \
                                   const qt8_blk_t *xt, size_t nb, __m512 *acc,                \
                                   size_t acc_stride, bool first)                              \
    {                                                                                          \
        mk_qt8(NO, Q8, w, rb, ds, xt, nb, acc, acc_stride, first);                             \
    }
MKQT8(1, true, q8)
MKQT8(4, true, q8)
MKQT8(1, false, q4)
MKQT8(4, false, q4)
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

/* The same tree for the qt8 layout, lanes 2t (token t) of the result:
 * acc[m] lane 2t + j holds a_(2m+j). */
static ALWAYS_INLINE __m512 qt8_reduce(const __m512 *acc)
{
    const __m512 s0 = _mm512_add_ps(acc[2], acc[0]); /* a4+a0 | a5+a1 */
    const __m512 s1 = _mm512_add_ps(acc[3], acc[1]); /* a6+a2 | a7+a3 */
    const __m512 u = _mm512_add_ps(s0, s1);
    return _mm512_add_ps(u, _mm512_permute_ps(u, 0xb1)); /* + the token's other lane */
}

/* ====== The product ====== */

/* ds[o * QT_KT + b] = the fp16 scale of block b0 + b of weight row o, as
 * float, for o < np, b < nb: once per K-tile of a panel instead of once
 * per block, row and token group in the micro-kernels. */
static void qt_scales(const uint8_t *wk, size_t rb, size_t bsz, uint32_t np, size_t nb,
                      float *ds)
{
    const __m512i idx = _mm512_mullo_epi32(
        _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
        _mm512_set1_epi32((int)bsz));
    const __mmask16 m = (__mmask16)((1u << nb) - 1);
    for (uint32_t o = 0; o < np; o++) {
        const __m512i h =
            _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m, idx, wk + (size_t)o * rb, 1);
        _mm512_store_ps(ds + (size_t)o * QT_KT, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(h)));
    }
}

/* The outputs of one group (tokens r0 .. r0 + n_tok) for the np rows of
 * the panel at p0. */
static void qt_store(const __m512 *acc, size_t acc_stride, uint32_t np, bool half, size_t nb_all,
                     uint32_t r0, uint32_t n_tok, uint32_t p0, float *y, uint32_t y_stride)
{
    alignas(64) float out[PD_QT_LANES];
    const uint32_t step = half ? 2 : 1; /* qt8: token t in lane 2t */
    for (uint32_t o = 0; o < np; o++) {
        const __m512 *a = acc + (size_t)o * acc_stride;
        const __m512 s = nb_all == 0 ? _mm512_setzero_ps() : half ? qt8_reduce(a) : qt_reduce(a);
        _mm512_store_ps(out, s);
        for (uint32_t t = 0; t < n_tok; t++)
            y[(size_t)(r0 + t) * y_stride + p0 + o] = out[step * t];
    }
}

void pd_kern_skinny_qt_avx512(const pd_mat_t *w, uint32_t o_begin, uint32_t o_end,
                              const void *panel, uint32_t n_rows, float *y, uint32_t y_stride)
{
    if (o_begin >= o_end || n_rows == 0)
        return;
    const bool q8 = w->type == PD_GGML_TYPE_Q8_0;
    const mk_qt_fn mk1 = q8 ? mkqt_1_q8 : mkqt_1_q4, mk2 = q8 ? mkqt_2_q8 : mkqt_2_q4;
    const mk_qt8_fn mk81 = q8 ? mkqt8_1_q8 : mkqt8_1_q4, mk84 = q8 ? mkqt8_4_q8 : mkqt8_4_q4;
    const size_t nb_all = w->n_in / QK, rb = w->row_bytes;
    const size_t bsz = q8 ? Q8_0_BYTES : Q4_0_BYTES;
    const uint32_t n_groups = (n_rows + PD_QT_LANES - 1) / PD_QT_LANES;
    const qt_blk_t *xt = panel; /* (n_groups, nb_all); a last group of <= 8 in qt8 blocks */
    const uint8_t *w0 = (const uint8_t *)w->data;
    const size_t acc_stride = (size_t)QT_GROUPS * 8; /* zmm between weight rows */
    _Static_assert(QT_GROUPS * PD_QT_LANES == PD_SKINNY_MAX_ROWS, "groups");
    alignas(64) __m512 acc[QT_PANEL * QT_GROUPS * 8]; /* (panel row, group, lane i) */
    alignas(64) float ds[QT_PANEL * QT_KT];            /* the K-tile's weight scales */
    _Static_assert(QT_KT == 16, "one 16-lane gather per row and K-tile");
    pf_t pf = {0};

    for (uint32_t g0 = 0; g0 < n_groups; g0 += QT_GROUPS) { /* n_rows > 64: slices */
        const uint32_t ng = n_groups - g0 < QT_GROUPS ? n_groups - g0 : QT_GROUPS;
        for (uint32_t p0 = o_begin; p0 < o_end; p0 += QT_PANEL) {
            const uint32_t np = o_end - p0 < QT_PANEL ? o_end - p0 : QT_PANEL;
            const uint8_t *wp = w0 + (size_t)p0 * rb;
            for (size_t b0 = 0; b0 < nb_all; b0 += QT_KT) {
                const size_t nb = nb_all - b0 < QT_KT ? nb_all - b0 : QT_KT;
                const size_t pf_per_call =
                    pf_plan(&pf, true, w0, rb, p0, o_end, b0, QT_KT, nb_all, (size_t)ng * np + 1);
                qt_scales(wp + b0 * bsz, rb, bsz, np, nb, ds);
                for (uint32_t g = 0; g < ng; g++) {
                    const qt_blk_t *xg = xt + (size_t)(g0 + g) * nb_all;
                    const bool half = n_rows - (g0 + g) * PD_QT_LANES <= PD_QT_LANES / 2;
                    for (uint32_t o = 0; o < np;) {
                        __m512 *a = acc + (size_t)o * acc_stride + (size_t)g * 8;
                        const uint8_t *wo = wp + (size_t)o * rb + b0 * bsz;
                        const uint32_t want = half ? QT8_NO : QT_NO;
                        const uint32_t no = np - o >= want ? want : 1;
                        pf_step(&pf, pf_per_call * no);
                        const float *dso = ds + (size_t)o * QT_KT;
                        if (half)
                            (no > 1 ? mk84 : mk81)(wo, rb, dso,
                                                   (const qt8_blk_t *)(const void *)xg + b0, nb,
                                                   a, acc_stride, b0 == 0);
                        else
                            (no > 1 ? mk2 : mk1)(wo, rb, dso, xg + b0, nb, a, acc_stride,
                                                 b0 == 0);
                        o += no;
                    }
                }
            }
            pf_step(&pf, pf.left);
            for (uint32_t g = 0; g < ng; g++) {
                const uint32_t r0 = (g0 + g) * PD_QT_LANES;
                const uint32_t n_tok = n_rows - r0 < PD_QT_LANES ? n_rows - r0 : PD_QT_LANES;
                qt_store(acc + (size_t)g * 8, acc_stride, np, n_tok <= PD_QT_LANES / 2, nb_all,
                         r0, n_tok, p0, y, y_stride);
            }
        }
    }
}
