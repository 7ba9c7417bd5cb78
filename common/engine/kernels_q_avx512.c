/* kernels_q_avx512.c -- the skinny quantized product (Q8_0, Q4_0 weights
 * times Q8_0 activations) with AVX-512 VNNI: the rows pd_matmul does not
 * give the batched qt kernel (at most 5 on this ISA; any number when called
 * directly). Compiled with AVX-512 flags, called only when pd_kern_isa()
 * is PD_ISA_AVX512 (from pd_kern_skinny_avx512).
 *
 * What must not change: the bits of ggml's AVX2 vec_dot, which the AVX2
 * skinny kernel and the qt kernel give too (pd_kern_skinny_qlanes_ref):
 * per (weight row o, activation row r) 8 float lanes, lane i adding block
 * after block, in order, acc_i = fma((float)p_i, dw * dx, acc_i), where p_i
 * is the integer dot of the block's elements 4i..4i+3 and dw * dx one
 * rounded product of the two scales; then hsum_float_8's tree.
 *
 * How (about 4 instructions per block and (o, r) where the VNNI kernel
 * before this one spent 11, a scalar fp16 load, convert, multiply and
 * broadcast among them):
 *   - the integers as the qt kernel's: the weights made unsigned (Q8_0:
 *     u = w ^ 0x80 = w + 128; Q4_0: the stored nibble u = w + 8) and each
 *     dot started from -K * (x0 + x1 + x2 + x3), K = 128 or 8, computed
 *     once per activation block and shared by the NO weight rows: the int32
 *     is exactly sum(w * x) for every weight byte and every activation in
 *     [-127, 127] (all the activation quantizer gives for finite inputs);
 *     per block and (o, r) that leaves vpdpbusd, a convert and an FMA, plus
 *     the weight's xor (Q8_0) or shift and mask (Q4_0) shared by the NR rows;
 *   - the scales: per 16 blocks, the fp16 scales of a weight row (and of
 *     an activation row) are picked from the blocks' bytes by vpermt2w
 *     (scales16_full; a gather only for a row's last group of fewer than
 *     16) and converted to float, and the products dw * dx of the
 *     micro-kernel's (o, r) pairs are formed 16 at a time (the same single
 *     rounding as a scalar dw * dx); the FMA takes its scale as a broadcast
 *     memory operand. On Zen 4 the 16-lane gather this replaces cost about
 *     a third of a Q4_0 row's time (2048x2048 from L2, 1 row, 1 thread:
 *     Q4_0 0.99 -> 0.81 ns a block, Q8_0 1.02 -> 0.88);
 *   - a micro-kernel of NO = 8 weight rows for one or two activation rows
 *     (8 or 16 independent FMA chains), 4 for three to five (12 to 20; at
 *     five a few registers spill, still faster than 3 + 2 passes over the
 *     weights: streamed 2048x5632, 7.5-7.9 -> 8.9-9.3 GB/s), over whole
 *     rows (K-tiles of KT blocks only past 8192 elements);
 *   - far rows (kernels_rows.h): a panel's 8 (or 4) weight rows are taken a
 *     stride apart in the call's range, so that the weights are read as 8
 *     (4) long sequential streams, which the hardware prefetchers follow
 *     (8 adjacent rows, 8 short runs in the same few pages, they do not);
 *     the last range % 8 (4) rows run as before, adjacent. Each block's
 *     line a few rows further in its stream (a later panel's) is
 *     prefetched as the block is read (Q_PF_ROWS). Streamed 1 row, 1
 *     thread (pd-kbench --stream-mb 1024, shared machine): Q4_0 2048x2048
 *     11.6 -> 16.0 GB/s, Q8_0 12.8 -> 16.4; no software prefetch measured
 *     12-13, two rows ahead as one, four rows ahead 14-15, T1 as T0 (on
 *     the Xeon). On the Zen 4 VM, T1 (into L2) beats T0 (5632x2048 streamed, 1 row, best of
 *     4 on a shared machine: Q8_0 16.5 -> 22.4 GB/s, Q4_0 16.2 -> 17.8
 *     with the gather-free scales); 1 to 4 rows ahead and T2 measured
 *     within noise of 2 rows, NTA and one prefetch per line of a 16-block
 *     group (instead of one per block) lower. Q4_0 at 4 activation rows
 *     and Q8_0 at 5 (bound by their arithmetic) keep T0 one row ahead: T1
 *     two rows ahead cost them 1-3 %.
 * Rows beyond 5 are done 5 at a time, re-reading the panel from L1/L2;
 * pd_matmul gives this kernel at most 5 rows on AVX-512 machines (the qt
 * kernel takes batches from 6 on).
 */
#include <immintrin.h>
#include <stdalign.h>
#include <stdbool.h>

#include "engine/kernels.h"
#include "engine/kernels_rows.h"

#define ALWAYS_INLINE inline __attribute__((always_inline))
#define Q8_0_BYTES 34
#define Q4_0_BYTES 18
#define QK 32
#define KT 256    /* K-tile, blocks: 8.5 KB of an activation row */
#define SC 16     /* blocks per group of scales (16 float lanes) */
#define PANEL 16  /* weight rows per panel */
/* Prefetch of the weights: Q_PF_ROWS rows ahead in each stream with
 * Q_PF_HINT; the micro-kernels where T1 measured slower (Q4_0 4 x 4 and
 * Q8_0 4 x 5, bound by their arithmetic) Q_PF_ROWS_AR rows ahead with
 * Q_PF_HINT_AR. 0 rows: none. */
#ifndef Q_PF_HINT
#define Q_PF_HINT _MM_HINT_T1 /* into L2: on Zen 4, T0 streamed slower */
#endif
#ifndef Q_PF_ROWS
#define Q_PF_ROWS 2
#endif
#ifndef Q_PF_HINT_AR
#define Q_PF_HINT_AR _MM_HINT_T0
#endif
#ifndef Q_PF_ROWS_AR
#define Q_PF_ROWS_AR 1
#endif
/* The micro-kernels bound by their arithmetic, which prefetch with
 * Q_PF_HINT_AR and gather their scales, as every micro-kernel did before
 * the Zen 4 tuning. */
#define PF_AR(q8, nr) ((q8) ? (nr) == 5 : (nr) == 4)
#define MAX_NO 8  /* weight rows per micro-kernel: 8, 4 or 1 */
#define MAX_NR 5  /* activation rows per micro-kernel: 1..5 */

/* ggml's hsum_float_8 order (as kernels_avx2.c's hsum8_ggml). */
static ALWAYS_INLINE float hsum8_ggml(__m256 a)
{
    __m128 r = _mm_add_ps(_mm256_extractf128_ps(a, 1), _mm256_castps256_ps128(a));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

/* The fp16 scales of the n <= 16 blocks at p, stride bytes apart, as float
 * (lanes from n on are 0): the scale is the low half of a block's first
 * dword. */
static ALWAYS_INLINE __m512 scales16_gather(const uint8_t *p, size_t stride, size_t n)
{
    const __m512i idx = _mm512_mullo_epi32(
        _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
        _mm512_set1_epi32((int)stride));
    const __mmask16 m = (__mmask16)(n >= 16 ? 0xffffu : (1u << n) - 1);
    const __m512i h = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m, idx, p, 1);
    return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(h));
}

/* The permute index of lane j < 16: word j * hw - w0 of a 64-word pair
 * (hw: a block's size in words; w0: the pair's first word in the group). */
#define SW(j, hw, w0) ((short)(((j) * (hw) - (w0)) & 63))

static ALWAYS_INLINE __m512i perm_words(__m512i lo, __m512i hi, int hw, int w0)
{
    /* lane j < 16: word j * hw - w0 of (lo, hi), words 0..63; the caller
     * keeps only the lanes whose word is in that window */
    const __m512i idx = _mm512_set_epi16(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                         SW(15, hw, w0), SW(14, hw, w0),
                                         SW(13, hw, w0), SW(12, hw, w0),
                                         SW(11, hw, w0), SW(10, hw, w0),
                                         SW(9, hw, w0), SW(8, hw, w0),
                                         SW(7, hw, w0), SW(6, hw, w0),
                                         SW(5, hw, w0), SW(4, hw, w0),
                                         SW(3, hw, w0), SW(2, hw, w0),
                                         SW(1, hw, w0), SW(0, hw, w0));
    return _mm512_permutex2var_epi16(lo, idx, hi);
}

static ALWAYS_INLINE __m512i ld64(const uint8_t *p, int i)
{
    return _mm512_loadu_si512((const void *)(p + 64 * i));
}

/* scales16 for 16 whole blocks without a gather (on Zen 4 a 16-lane gather
 * and its convert took about 18 cycles, a third of a Q4_0 row's time: with
 * the scales left out, 0.99 -> 0.67 ns a block from L2): the 16 blocks'
 * bytes as 64-byte loads (Q8_0: 8, bytes 0..511; Q4_0: 4 and the 16 bytes
 * 256..271), the scale words picked by vpermt2w from pairs of them and
 * blended. The same fp16 words, the same exact conversion: the same bits. */
static ALWAYS_INLINE __m512 scales16_full(const uint8_t *p, bool q8)
{
    __m512i h;
    if (q8) { /* word 17 j: j 0..3 in words 0..63, 4..7 in 64..127, ... */
        const __m512i a = perm_words(ld64(p, 0), ld64(p, 1), 17, 0);
        const __m512i b = perm_words(ld64(p, 2), ld64(p, 3), 17, 64);
        const __m512i c = perm_words(ld64(p, 4), ld64(p, 5), 17, 128);
        const __m512i d = perm_words(ld64(p, 6), ld64(p, 7), 17, 192);
        h = _mm512_mask_blend_epi16(0x00f0, a, b);
        h = _mm512_mask_blend_epi16(0x0f00, h, c);
        h = _mm512_mask_blend_epi16(0xf000, h, d);
    } else { /* word 9 j: j 0..7 in words 0..63, 8..14 in 64..127, 15: 135 */
        const __m512i a = perm_words(ld64(p, 0), ld64(p, 1), 9, 0);
        const __m512i b = perm_words(ld64(p, 2), ld64(p, 3), 9, 64);
        const __m512i e = _mm512_maskz_loadu_epi16(0x00ff, p + 256); /* word 135 = e[7] */
        h = _mm512_mask_blend_epi16(0x7f00, a, b);
        h = _mm512_mask_permutexvar_epi16(h, 0x8000, _mm512_set1_epi16(7), e);
    }
    return _mm512_cvtph_ps(_mm512_castsi512_si256(h));
}

/* scales16_gather's result; without the gather for 16 whole blocks when
 * no_gather. */
static ALWAYS_INLINE __m512 scales16(const uint8_t *p, size_t stride, size_t n, bool no_gather)
{
    if (no_gather && n == SC && (stride == Q8_0_BYTES || stride == Q4_0_BYTES))
        return scales16_full(p, stride == Q8_0_BYTES);
    return scales16_gather(p, stride, n);
}

/* The 32 stored nibbles of a Q4_0 block, unsigned: elements 0..15 (the
 * low nibbles) in the low half, 16 x elements 16..31 (the high nibbles in
 * place) in the high half: one mask, no shift. The int32 lanes 4..7 of a
 * dot come out 16 times too large, and so does everything those lanes
 * accumulate (q4_unscale). */
static ALWAYS_INLINE __m256i q4_load(const uint8_t *qs)
{
    const __m256i t =
        _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(const void *)qs));
    return _mm256_and_si256(t, _mm256_set_m128i(_mm_set1_epi8((char)0xf0), _mm_set1_epi8(0x0f)));
}

/* Q4_0's accumulators to the true values: lanes 4..7 / 16. Exact, and the
 * same bits as accumulating the true values: scaling every operand of an
 * FMA by 16 scales its rounded result by 16 (the lanes hold multiples of
 * 2^-48, far from the subnormals, and far below overflow). */
static ALWAYS_INLINE __m256 q4_unscale(__m256 a)
{
    return _mm256_mul_ps(a, _mm256_set_ps(0.0625f, 0.0625f, 0.0625f, 0.0625f, 1, 1, 1, 1));
}

/* acc[o * acc_stride + r] (8 lanes) += blocks [0, nb) of weight rows
 * w + o * rb (o < NO) times activation rows xq + r * xq_stride (r < NR);
 * `first` starts from 0. Each weight block's line at pf bytes further
 * (the next rows, in the caller's order) is prefetched as it is read. */
static ALWAYS_INLINE void mk_q(const int NO, const int NR, const bool q8, const uint8_t *w,
                               size_t rb, const uint8_t *xq, size_t xq_stride, size_t nb,
                               __m256 *acc_io, size_t acc_stride, bool first, size_t pf)
{
    const size_t bsz = q8 ? Q8_0_BYTES : Q4_0_BYTES;
    /* the -K * sum(x) start: K = 128; Q4_0 8, and 16 x 8 in the high half */
    const __m256i kb = q8 ? _mm256_set1_epi8((char)0x80)
                          : _mm256_set_m128i(_mm_set1_epi8((char)0x80), _mm_set1_epi8(8));
    const __m256i k80 = _mm256_set1_epi8((char)0x80);
    alignas(64) float sc[MAX_NO][MAX_NR][SC]; /* dw * dx per (o, r, block) */
    /* the gather-free scales, but for the micro-kernels bound by their
     * arithmetic (PF_AR): there they measured no faster (Q8_0 4 x 5, 1
     * thread) or slower (Q4_0 4 x 4, 2048x2048 from L2: 3.5 %; Q8_0 4 x 5
     * in decode at 2 threads, batch 5: 1-5 %), so those two run as before */
    const bool ng = !PF_AR(q8, NR);
    __m256 acc[MAX_NO][MAX_NR];
#pragma GCC unroll 8
    for (int o = 0; o < NO; o++)
#pragma GCC unroll 5
        for (int r = 0; r < NR; r++)
            acc[o][r] = first ? _mm256_setzero_ps() : acc_io[(size_t)o * acc_stride + r];
    for (size_t b0 = 0; b0 < nb; b0 += SC) {
        const size_t n = nb - b0 < SC ? nb - b0 : SC;
        __m512 dx[MAX_NR];
#pragma GCC unroll 5
        for (int r = 0; r < NR; r++)
            dx[r] = scales16(xq + r * xq_stride + b0 * Q8_0_BYTES, Q8_0_BYTES, n, ng);
#pragma GCC unroll 8
        for (int o = 0; o < NO; o++) {
            const __m512 dw = scales16(w + (size_t)o * rb + b0 * bsz, bsz, n, ng);
#pragma GCC unroll 5
            for (int r = 0; r < NR; r++)
                _mm512_store_ps(sc[o][r], _mm512_mul_ps(dw, dx[r]));
        }
        for (size_t b = 0; b < n; b++) {
            __m256i xv[MAX_NR], corr[MAX_NR];
#pragma GCC unroll 5
            for (int r = 0; r < NR; r++) {
                const uint8_t *xb = xq + r * xq_stride + (b0 + b) * Q8_0_BYTES;
                xv[r] = _mm256_loadu_si256((const __m256i *)(const void *)(xb + 2));
                /* -K * (x0 + x1 + x2 + x3) per int32 lane */
                corr[r] = _mm256_sub_epi32(_mm256_setzero_si256(),
                                           _mm256_dpbusd_epi32(_mm256_setzero_si256(), kb, xv[r]));
            }
#pragma GCC unroll 8
            for (int o = 0; o < NO; o++) {
                const uint8_t *wb = w + (size_t)o * rb + (b0 + b) * bsz;
                if (!PF_AR(q8, NR) && Q_PF_ROWS > 0) /* q8, NR: constants here */
                    _mm_prefetch((const char *)wb + pf, Q_PF_HINT);
                else if (PF_AR(q8, NR) && Q_PF_ROWS_AR > 0)
                    _mm_prefetch((const char *)wb + pf, Q_PF_HINT_AR);
                const __m256i wu =
                    q8 ? _mm256_xor_si256(
                             _mm256_loadu_si256((const __m256i *)(const void *)(wb + 2)), k80)
                       : q4_load(wb + 2);
#pragma GCC unroll 5
                for (int r = 0; r < NR; r++) {
                    const __m256i p = _mm256_dpbusd_epi32(corr[r], wu, xv[r]);
                    acc[o][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p),
                                                _mm256_set1_ps(sc[o][r][b]), acc[o][r]);
                }
            }
        }
    }
#pragma GCC unroll 8
    for (int o = 0; o < NO; o++)
#pragma GCC unroll 5
        for (int r = 0; r < NR; r++)
            acc_io[(size_t)o * acc_stride + r] = acc[o][r];
}

typedef void (*mk_q_fn)(const uint8_t *w, size_t rb, const uint8_t *xq, size_t xq_stride,
                        size_t nb, __m256 *acc, size_t acc_stride, bool first, size_t pf);

#define MKQ(NO, NR, Q8, SFX)                                                                   \
    static void mkq_##NO##x##NR##_##SFX(const uint8_t *w, size_t rb, const uint8_t *xq,        \
                                        size_t xq_stride, size_t nb, __m256 *acc,             \
                                        size_t acc_stride, bool first, size_t pf)             \
    {                                                                                          \
        mk_q(NO, NR, Q8, w, rb, xq, xq_stride, nb, acc, acc_stride, first, pf);                \
    }
#define MKQ_NO(NO, Q8, SFX)                                                                    \
    MKQ(NO, 1, Q8, SFX) MKQ(NO, 2, Q8, SFX) MKQ(NO, 3, Q8, SFX) MKQ(NO, 4, Q8, SFX)             \
    MKQ(NO, 5, Q8, SFX)
#define MKQ_TYPE(Q8, SFX)                                                                      \
    MKQ_NO(1, Q8, SFX) MKQ_NO(4, Q8, SFX) MKQ(8, 1, Q8, SFX) MKQ(8, 2, Q8, SFX)

MKQ_TYPE(true, q8)
MKQ_TYPE(false, q4)

#define ROW(NO, SFX)                                                                           \
    {mkq_##NO##x1_##SFX, mkq_##NO##x2_##SFX, mkq_##NO##x3_##SFX, mkq_##NO##x4_##SFX,            \
     mkq_##NO##x5_##SFX}
#define ROW8(SFX) {mkq_8x1_##SFX, mkq_8x2_##SFX, 0, 0, 0}
static mk_q_fn mkq_pick(bool q8, int no, int nr)
{
    static const mk_q_fn tab[2][3][MAX_NR] = {
        {ROW(1, q8), ROW(4, q8), ROW8(q8)},
        {ROW(1, q4), ROW(4, q4), ROW8(q4)},
    };
    return tab[q8 ? 0 : 1][no == 8 ? 2 : no == 4 ? 1 : 0][nr - 1];
}

/* Activation rows per micro-kernel for the `left` rows still to do: up to
 * 5 at once, so that a batch of up to 5 reads each weight block once. */
static int pick_nr(uint32_t left)
{
    return left >= MAX_NR ? MAX_NR : (int)left;
}

/* Weight rows per micro-kernel: 8 for one or two activation rows (8 or 16
 * accumulators), 4 for three to five (12 to 20); 1 for the panel's last
 * rows. */
static int pick_no(int nr, uint32_t left)
{
    const uint32_t want = nr <= 2 ? 8 : 4;
    return left >= want ? (int)want : left >= 4 ? 4 : 1;
}

/* The y of one weight row (8 lanes of its sums for one activation row). */
static ALWAYS_INLINE float finish_q(bool q8, size_t nb_all, __m256 a)
{
    return nb_all == 0 ? 0.0f : q8 ? hsum8_ggml(a) : hsum8_ggml(q4_unscale(a));
}

/* n_rows <= PD_SKINNY_MAX_ROWS (the accumulators of a panel). Panels of R
 * weight rows, R the micro-kernel's 8 (one or two activation rows) or 4,
 * take far rows (kernels_rows.h): rows p, p + G, ..., p + (R - 1) G of the
 * range, so that the weights are read as R long sequential streams; the
 * tail of (range % R) rows goes as before, in adjacent rows. */
static void skinny_q(const pd_mat_t *w, uint32_t o_begin, uint32_t o_end, const uint8_t *xq,
                     uint32_t n_rows, float *y, size_t y_stride)
{
    const bool q8 = w->type == PD_GGML_TYPE_Q8_0;
    const size_t nb_all = w->n_in / QK, rb = w->row_bytes;
    const size_t bsz = q8 ? Q8_0_BYTES : Q4_0_BYTES;
    const size_t xq_stride = nb_all * Q8_0_BYTES;
    const uint8_t *w0 = (const uint8_t *)w->data;
    __m256 acc[PANEL * PD_SKINNY_MAX_ROWS]; /* (PANEL, n_rows) 8-lane sums */
    const uint32_t R = pick_no(pick_nr(n_rows), MAX_NO);
    const pd_rowmap_t m = pd_rowmap(o_begin, o_end, R);
    const size_t rs = (size_t)m.stride * rb; /* bytes between a panel's rows */

    for (uint32_t p = 0; p < m.n_panels; p++) {
        const uint8_t *wp = w0 + (size_t)pd_rowmap_row(&m, p, 0) * rb;
        /* the first pass over the activation rows prefetches each stream's
         * row `ahead` rows ahead */
        const uint32_t ahead = PF_AR(q8, pick_nr(n_rows)) ? Q_PF_ROWS_AR : Q_PF_ROWS;
        const size_t pf = ahead > 0 && p + ahead < m.n_panels ? ahead * rb : 0;
        for (size_t b0 = 0; b0 < nb_all; b0 += KT) {
            const size_t nb = nb_all - b0 < KT ? nb_all - b0 : KT;
            for (uint32_t r = 0; r < n_rows;) {
                const int nr = pick_nr(n_rows - r);
                mkq_pick(q8, (int)R, nr)(wp + b0 * bsz, rs, xq + r * xq_stride + b0 * Q8_0_BYTES,
                                         xq_stride, nb, acc + r, n_rows, b0 == 0,
                                         r == 0 ? pf : 0);
                r += (uint32_t)nr;
            }
        }
        for (uint32_t k = 0; k < R; k++)
            for (uint32_t r = 0; r < n_rows; r++)
                y[r * y_stride + pd_rowmap_row(&m, p, k)] =
                    finish_q(q8, nb_all, acc[k * n_rows + r]);
    }
    const uint32_t t0 = pd_rowmap_tail(&m, R), nt = o_end - t0; /* nt < R <= PANEL */
    if (nt == 0)
        return;
    const uint8_t *wt = w0 + (size_t)t0 * rb;
    for (size_t b0 = 0; b0 < nb_all; b0 += KT) {
        const size_t nb = nb_all - b0 < KT ? nb_all - b0 : KT;
        for (uint32_t r = 0; r < n_rows;) {
            const int nr = pick_nr(n_rows - r);
            for (uint32_t o = 0; o < nt;) {
                const int no = pick_no(nr, nt - o);
                mkq_pick(q8, no, nr)(wt + o * rb + b0 * bsz, rb,
                                     xq + r * xq_stride + b0 * Q8_0_BYTES, xq_stride, nb,
                                     acc + o * n_rows + r, n_rows, b0 == 0, 0);
                o += (uint32_t)no;
            }
            r += (uint32_t)nr;
        }
    }
    for (uint32_t o = 0; o < nt; o++)
        for (uint32_t r = 0; r < n_rows; r++)
            y[r * y_stride + t0 + o] = finish_q(q8, nb_all, acc[o * n_rows + r]);
}

void pd_kern_skinny_q_avx512(const pd_mat_t *w, uint32_t o_begin, uint32_t o_end, const void *xq,
                             uint32_t n_rows, float *y, uint32_t y_stride)
{
    while (n_rows > 0) { /* acc holds PD_SKINNY_MAX_ROWS rows */
        const uint32_t nr = n_rows < PD_SKINNY_MAX_ROWS ? n_rows : PD_SKINNY_MAX_ROWS;
        skinny_q(w, o_begin, o_end, xq, nr, y, y_stride);
        xq = (const uint8_t *)xq + (size_t)nr * (w->n_in / QK) * Q8_0_BYTES;
        y += (size_t)nr * y_stride;
        n_rows -= nr;
    }
}
