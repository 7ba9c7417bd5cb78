/* kernels_k_avx512.c -- AVX-512 (F, BW, VL, VNNI) skinny product for Q4_K
 * and Q6_K weights (the two types of a Q4_K_M file); compiled with those
 * flags, called only when pd_kern_isa() is PD_ISA_AVX512. The other
 * K-quants and IQ4_NL go to the AVX2 kernel (kernels_k_avx2.c).
 *
 * Same loop nest as pd_kern_skinny_k_avx2 (panels of KPANEL output rows,
 * K-tiles of KT_SB super-blocks, micro-kernels of up to KNR activation
 * rows). What changes is the integer part of a super-block: two 32-element
 * chunks per 512-bit vector, the 4-element dot products by vpdpbusd (u8
 * weights x s8 activations) and the chunk's scale applied by vpdpwssd.
 *
 * Exactness. ggml's AVX2 vec_dot sums a super-block into 8 int32 lanes,
 * lane k collecting scale(c) * (w . x over elements 4k..4k+3) of every
 * 32-chunk c (maddubs pairs, madd with the scales). vpdpbusd gives exactly
 * those 4-element sums (lanes 0..7: the first chunk of the pair, 8..15: the
 * second); each fits in int16 (|w| <= 63, |x| <= 128: |sum| <= 32256), so
 * vpdpwssd with the scale in the low and 0 in the high 16 bits multiplies
 * it exactly; the two 256-bit halves are added at the end of the
 * super-block. Integer sums are exact, so the 8 lanes hold the same int32
 * values as ggml's, and the float part (cvt, one FMA per super-block, the
 * mins through bsums, hsum) is the AVX2 kernel's, operation for operation:
 * y is bit-identical to pd_kern_skinny_k_avx2 and to ggml's AVX2
 * ggml_vec_dot_q4_K_q8_K / ggml_vec_dot_q6_K_q8_K, for any batch or range.
 *
 * Rows and prefetch: a panel's 4 weight rows are taken a stride apart in
 * the call's range (kernels_rows.h), so that the weights are read as 4 long
 * sequential streams the hardware prefetchers follow; the last range % 4
 * rows run as before, adjacent. The r4 kernels prefetch each row's
 * super-block one row further in its stream (the next panel's) to L2 as
 * they read it: streamed 1 row, 1 thread (pd-kbench --stream-mb 1024,
 * shared machine), 5632 x 2048 Q4_K 12.5 (adjacent rows, next-panel
 * bursts) -> 14.6 (far rows, next-panel bursts) -> 15.9 GB/s (far rows,
 * per stream), Q6_K 14.1 -> 14.6 -> 16.1; with no software prefetch
 * 13.4 / 12.9; two rows ahead as one. The per-row kernels (2-4 activation
 * rows, or no VBMI) prefetch the next panel's lines spread over the panel's
 * calls (kernels_pf.h); the lines go to L2 (T1).
 *
 * Why it is faster (decode is one activation row): per super-block the AVX2
 * code spends 2 maddubs + 2 madd + 2 add per 64 elements plus the scale
 * shuffles; here 1 dpbusd + 1 dpwssd per 64 elements, and the scales of
 * a chunk pair come from one vpermd.
 *
 * At exactly one activation row (batch-1 decode) on CPUs with VBMI and
 * GFNI, full panels take q4k_r4 / q6k_r4 instead: the panel's 4 weight
 * rows in one loop, so that the activation loads, the scale unpacking and
 * the float part are shared or run with rows in lanes (in L2, 256 x 2048:
 * Q4_K 1.4x the per-row kernel; Q6_K 1.0-1.14x; streamed from memory
 * 1.06-1.2x, shared machine). Same bits: every lane sees the operations of
 * the per-row kernel.
 */
#include <cpuid.h>
#include <immintrin.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>

#include "engine/kernels.h"
#include "engine/kernels_rows.h"
#include "engine/quants_k.h"

#define ALWAYS_INLINE inline __attribute__((always_inline))
#define QK_K PD_QK_K

#ifndef KPANEL
#define KPANEL 4  /* output rows per panel */
#endif
#ifndef KT_SB
#define KT_SB 8   /* K-tile, super-blocks */
#endif
#define KNR 4     /* activation rows per micro-kernel call (1..4) */
#define PANEL KPANEL
#ifndef PF_HINT
#define PF_HINT _MM_HINT_T1 /* to L2: measured ahead of T0 here */
#endif
#ifndef K_PF_ROWS
#define K_PF_ROWS 1 /* r4 kernels: prefetch distance in each stream, rows; 0: none */
#endif

#include "engine/kernels_pf.h"

/* a: the 8 float lanes of ggml's accumulator; b: Q4_K's 4 lanes of mins. */
typedef struct {
    __m256 a, b;
} kacc_t;

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

static ALWAYS_INLINE __m512i load512(const uint8_t *p)
{
    return _mm512_loadu_si512((const void *)p);
}

/* 32 bytes in both halves of a 512-bit vector. */
static ALWAYS_INLINE __m512i bcast256(const uint8_t *p)
{
    return _mm512_broadcast_i64x4(load256(p));
}

/* ggml's hsum_float_8 (as kernels_k_avx2.c). */
static ALWAYS_INLINE float hsum8_ggml(__m256 a)
{
    __m128 r = _mm_add_ps(_mm256_extractf128_ps(a, 1), _mm256_castps256_ps128(a));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

/* Q4_K: 8 scales (low half) and 8 mins (high half) as i16 (ggml's unpacking
 * of the 12 scale bytes; as kernels_k_avx2.c). */
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

/* sum += scale * (w . x per 4 elements), for a chunk pair: w u8 codes, x
 * the 64 activation bytes, sc the per-lane scale (low 16 bits, high 0). */
static ALWAYS_INLINE __m512i pair_dot(__m512i sum, __m512i w, const uint8_t *x, __m512i sc)
{
    const __m512i d = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, load512(x));
    return _mm512_dpwssd_epi32(sum, d, sc);
}

/* The 8 int32 lanes ggml keeps: the two halves added. */
static ALWAYS_INLINE __m256i fold512(__m512i s)
{
    return _mm256_add_epi32(_mm512_castsi512_si256(s), _mm512_extracti64x4_epi64(s, 1));
}

#define XQS(r, b) (x + (r) * xs + (b) * PD_Q8_K_BYTES) /* Q8_K block b of row r */

/* One weight row, NR activation rows, nb super-blocks (w: the row's first
 * super-block, x: row 0's first Q8_K block, rows xs bytes apart). */
static ALWAYS_INLINE void mk5_q4k(const int NR, const uint8_t *w, const uint8_t *x, size_t xs,
                                  size_t nb, kacc_t *acc_io)
{
    kacc_t acc[4];
#pragma GCC unroll 4
    for (int r = 0; r < NR; r++)
        acc[r] = acc_io[r];
    const __m512i m4 = _mm512_set1_epi8(0xF);
    for (size_t b = 0; b < nb; b++) {
        const uint8_t *wb = w + b * PD_Q4_K_BYTES, *qs = wb + 16;
        const float dw = fp16_at(wb), dminw = fp16_at(wb + 2);
        const __m256i sm = k4_scales_mins(wb + 4);
        const __m128i mins = _mm256_extracti128_si256(sm, 1);
        const __m512i sc32 = _mm512_cvtepu16_epi32(sm); /* lanes 0..7: scales */
        __m512i sumi[4];
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++)
            sumi[r] = _mm512_setzero_si512();
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            /* chunk 2j: low nibbles of qs[32j..], chunk 2j + 1: high */
            const __m512i bits = bcast256(qs + 32 * j);
            const __m512i q = _mm512_and_si512(
                _mm512_mask_srli_epi16(bits, (__mmask32)0xFFFF0000u, bits, 4), m4);
            const __m512i sc = _mm512_permutexvar_epi32(
                _mm512_set_epi32(2 * j + 1, 2 * j + 1, 2 * j + 1, 2 * j + 1, 2 * j + 1, 2 * j + 1,
                                 2 * j + 1, 2 * j + 1, 2 * j, 2 * j, 2 * j, 2 * j, 2 * j, 2 * j,
                                 2 * j, 2 * j),
                sc32);
#pragma GCC unroll 4
            for (int r = 0; r < NR; r++)
                sumi[r] = pair_dot(sumi[r], q, XQS(r, b) + 4 + 64 * j, sc);
        }
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++) {
            const float dy = f32_at(XQS(r, b));
            const __m256i bs = load256(XQS(r, b) + 260);
            const __m128i q8s = _mm_hadd_epi16(_mm256_castsi256_si128(bs),
                                               _mm256_extracti128_si256(bs, 1));
            const __m128i prod = _mm_madd_epi16(mins, q8s);
            const __m128 am = _mm_fmadd_ps(_mm_set1_ps(-dy * dminw), _mm_cvtepi32_ps(prod),
                                           _mm256_castps256_ps128(acc[r].b));
            acc[r].b = _mm256_castps128_ps256(am);
            acc[r].a = _mm256_fmadd_ps(_mm256_set1_ps(dy * dw), _mm256_cvtepi32_ps(fold512(sumi[r])),
                                       acc[r].a);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < NR; r++)
        acc_io[r] = acc[r];
}

/* ====== Q4_K on rearranged activations ======
 * A 64-byte load of Q4_K's qs holds four 32-weight chunks: its low nibbles
 * chunks 4j and 4j + 2, its high nibbles 4j + 1 and 4j + 3. With each
 * 128-byte group of the Q8_K quants rearranged to the chunk order 4j,
 * 4j + 2, 4j + 1, 4j + 3 (once per call, k5x_prepare), one 512-bit load
 * and one shift give two chunk pairs, where the bcast256 form needs two
 * loads and two shifts; and ggml's q8s (pair sums of bsums) are computed
 * once per activation block instead of once per weight row. The int32
 * lanes get the same sums (integer sums in another order), so y is the
 * same bits. */
#define K5X_BUF_BYTES 65536 /* per thread; larger calls take mk5_q4k */
static _Thread_local uint8_t k5x_buf[K5X_BUF_BYTES] __attribute__((aligned(64)));

/* Block layout of the rearranged activations (PD_Q8_K_BYTES each): float d,
 * qs[256] in the order above, int16 q8s[8], 16 bytes of zeros. */
static void k5x_prepare(const uint8_t *xq, size_t n_blocks, uint8_t *out)
{
    for (size_t b = 0; b < n_blocks; b++) {
        const uint8_t *s = xq + b * PD_Q8_K_BYTES;
        uint8_t *d = out + b * PD_Q8_K_BYTES;
        memcpy(d, s, 4);
        for (int h = 0; h < 2; h++) {
            const uint8_t *sq = s + 4 + 128 * h;
            uint8_t *dq = d + 4 + 128 * h;
            const __m256i c0 = load256(sq), c1 = load256(sq + 32), c2 = load256(sq + 64),
                          c3 = load256(sq + 96);
            _mm256_storeu_si256((__m256i *)(void *)dq, c0);
            _mm256_storeu_si256((__m256i *)(void *)(dq + 32), c2);
            _mm256_storeu_si256((__m256i *)(void *)(dq + 64), c1);
            _mm256_storeu_si256((__m256i *)(void *)(dq + 96), c3);
        }
        const __m256i bs = load256(s + 260);
        _mm_storeu_si128((__m128i *)(void *)(d + 260),
                         _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1)));
        memset(d + 276, 0, 16);
    }
}

/* Q4_K's 12 scale bytes as 16 bytes (8 scales, then 8 mins): ggml's
 * unpacking (k4_scales_mins) on the four 32-bit words at once. s12 is
 * followed by at least 4 readable bytes (qs). */
static ALWAYS_INLINE __m128i k4_scales_mins_v(const uint8_t *s12)
{
    const __m128i v = _mm_loadu_si128((const __m128i *)(const void *)s12);
    const __m128i p = _mm_shuffle_epi32(v, _MM_SHUFFLE(2, 1, 2, 0)); /* u0 u2 u1 u2 */
    const __m128i q = _mm_shuffle_epi32(v, _MM_SHUFFLE(1, 1, 0, 0)); /* u0 u0 u1 u1 */
    const __m128i lo = _mm_and_si128(_mm_srlv_epi32(p, _mm_set_epi32(4, 0, 0, 0)),
                                     _mm_set_epi32(0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f));
    const __m128i hi = _mm_and_si128(_mm_srli_epi32(q, 2),
                                     _mm_set_epi32(0x30303030, 0, 0x30303030, 0));
    return _mm_or_si128(lo, hi);
}

/* Scales of chunks a (lanes 0..7) and b (lanes 8..15). */
static ALWAYS_INLINE __m512i k4_pair_scales(__m512i sc32, int a, int b)
{
    return _mm512_permutexvar_epi32(_mm512_set_epi32(b, b, b, b, b, b, b, b, a, a, a, a, a, a, a, a),
                                    sc32);
}

#define XPS(r, b) (x + (r) * xs + (b) * PD_Q8_K_BYTES) /* rearranged block b of row r */

static ALWAYS_INLINE void mk5_q4k_px(const int NR, const uint8_t *w, const uint8_t *x, size_t xs,
                                     size_t nb, kacc_t *acc_io)
{
    kacc_t acc[4];
#pragma GCC unroll 4
    for (int r = 0; r < NR; r++)
        acc[r] = acc_io[r];
    const __m512i m4 = _mm512_set1_epi8(0xF);
    for (size_t b = 0; b < nb; b++) {
        const uint8_t *wb = w + b * PD_Q4_K_BYTES, *qs = wb + 16;
        const float dw = fp16_at(wb), dminw = fp16_at(wb + 2);
        const __m128i sm = k4_scales_mins_v(wb + 4);
        const __m128i mins = _mm_unpackhi_epi8(sm, _mm_setzero_si128());
        const __m512i sc32 = _mm512_cvtepu8_epi32(sm); /* lanes 0..7: scales */
        __m512i sumi[4];
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++)
            sumi[r] = _mm512_setzero_si512();
#pragma GCC unroll 2
        for (int j = 0; j < 2; j++) {
            const __m512i v = load512(qs + 64 * j);
            const __m512i lo = _mm512_and_si512(v, m4);                       /* 4j, 4j + 2 */
            const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4); /* 4j + 1, 4j + 3 */
            const __m512i slo = k4_pair_scales(sc32, 4 * j, 4 * j + 2);
            const __m512i shi = k4_pair_scales(sc32, 4 * j + 1, 4 * j + 3);
#pragma GCC unroll 4
            for (int r = 0; r < NR; r++) {
                const uint8_t *xb = XPS(r, b) + 4 + 128 * j;
                sumi[r] = pair_dot(pair_dot(sumi[r], lo, xb, slo), hi, xb + 64, shi);
            }
        }
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++) {
            const float dy = f32_at(XPS(r, b));
            const __m128i q8s = _mm_loadu_si128((const __m128i *)(const void *)(XPS(r, b) + 260));
            const __m128i prod = _mm_madd_epi16(mins, q8s);
            const __m128 am = _mm_fmadd_ps(_mm_set1_ps(-dy * dminw), _mm_cvtepi32_ps(prod),
                                           _mm256_castps256_ps128(acc[r].b));
            acc[r].b = _mm256_castps128_ps256(am);
            acc[r].a = _mm256_fmadd_ps(_mm256_set1_ps(dy * dw), _mm256_cvtepi32_ps(fold512(sumi[r])),
                                       acc[r].a);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < NR; r++)
        acc_io[r] = acc[r];
}

#undef XPS

/* ====== One activation row, four weight rows (decode) ======
 * At one activation row the per-row kernels above spend as many vector
 * operations on the scales and the float part as on the dot products. Here
 * a panel's four weight rows go through one loop: the activation vectors
 * are loaded once, the four rows' scale bytes are unpacked in one 512-bit
 * vector (row o in 128-bit lane o), each chunk pair's scale vector is one
 * vpermb from it, and the float part runs on rows in lanes: the 8 lanes of
 * rows 0 and 1 (2 and 3) in one vector, the 4 min lanes of the four rows in
 * another. Lane by lane every float operation is the one mk5_q4k_px does
 * (an FMA with the same operands; (-dy) * dmin as -(dy * dmin) in vfnmadd,
 * the same product since rounding is symmetric), and the int32 lanes get the
 * same sums, so y is the same bits. Needs VBMI (vpermb) and GFNI (the high
 * nibbles in one vgf2p8affineqb): Ice Lake and later, Zen 4. */
#define R4_ATTR __attribute__((target("avx512vbmi,gfni")))
#define GF_HI4 0x1020408000000000ll /* bits 4..7 -> 0..3, the rest cleared */

typedef struct {
    __m512 a01, a23, m; /* rows 0|1 and 2|3 (8 lanes each); the 4 rows' min lanes */
} r4acc_t;

/* Byte indices (into the 4 rows' unpacked scales, row o at 16 o) putting
 * the scales of chunks a and a + 2 of row o in lanes 0..7 and 8..15 (low
 * 16 bits: the other bytes are zeroed by R4_SCMASK); constants once o and a
 * are. */
#define R4IX(o, a)                                                                         \
    _mm512_mask_blend_epi8(0xFFFFFFFF00000000ull, _mm512_set1_epi8((char)(16 * (o) + (a))), \
                           _mm512_set1_epi8((char)(16 * (o) + (a) + 2)))
#define R4_SCMASK 0x5555555555555555ull

/* The prefetch of an r4 kernel, as each row's super-block at wb (bb
 * bytes) is read: the same bytes pfd further (K_PF_ROWS rows on in the
 * row's stream; 0: none). */
static ALWAYS_INLINE void r4_pf(const uint8_t *wb, size_t pfd, size_t bb)
{
    if (pfd)
        for (size_t l = 0; l < bb; l += 64)
            _mm_prefetch((const char *)wb + pfd + l, PF_HINT);
}

R4_ATTR static void q4k_r4(const uint8_t *w, size_t rb, const uint8_t *x, size_t nb,
                           r4acc_t *io, size_t pfd)
{
    __m512 a01 = io->a01, a23 = io->a23, am = io->m;
    const __m512i m4 = _mm512_set1_epi8(0xF), ghi = _mm512_set1_epi64(GF_HI4);
    const __m512i m1 = _mm512_set_epi32(0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f,
                                        0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f,
                                        0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f,
                                        0x3f3f3f3f);
    const __m512i sh = _mm512_set_epi32(4, 0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0);
    const __m512i m2 = _mm512_set_epi32(0x30303030, 0, 0x30303030, 0, 0x30303030, 0, 0x30303030, 0,
                                        0x30303030, 0, 0x30303030, 0, 0x30303030, 0, 0x30303030, 0);
    const __m512i dsel = _mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 12, 8, 4, 0);
    const __m512i i01 = _mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m512i i23 = _mm512_set_epi32(6, 6, 6, 6, 6, 6, 6, 6, 4, 4, 4, 4, 4, 4, 4, 4);
    const __m512i imn = _mm512_set_epi32(7, 7, 7, 7, 5, 5, 5, 5, 3, 3, 3, 3, 1, 1, 1, 1);
    for (size_t b = 0; b < nb; b++) {
        const uint8_t *w0 = w + b * PD_Q4_K_BYTES, *xb = x + b * PD_Q8_K_BYTES;
        /* lane o: d, dmin, the 12 scale bytes of row o */
        const __m512i raw = _mm512_inserti32x4(
            _mm512_inserti32x4(_mm512_inserti32x4(_mm512_castsi128_si512(_mm_loadu_si128(
                                                      (const __m128i *)(const void *)w0)),
                                                  _mm_loadu_si128((const __m128i *)(const void *)(w0 + rb)), 1),
                               _mm_loadu_si128((const __m128i *)(const void *)(w0 + 2 * rb)), 2),
            _mm_loadu_si128((const __m128i *)(const void *)(w0 + 3 * rb)), 3);
        /* k4_scales_mins_v on each lane (u0, u1, u2 = dwords 1, 2, 3) */
        const __m512i p = _mm512_shuffle_epi32(raw, _MM_SHUFFLE(3, 2, 3, 1));
        const __m512i q = _mm512_shuffle_epi32(raw, _MM_SHUFFLE(2, 2, 1, 1));
        const __m512i sm = _mm512_ternarylogic_epi32(_mm512_srli_epi32(q, 2), m2,
                                                     _mm512_and_si512(_mm512_srlv_epi32(p, sh), m1),
                                                     0xEA); /* (a & b) | c */
        /* dy * (d, dmin) of the 4 rows */
        const __m256 f = _mm256_mul_ps(
            _mm256_cvtph_ps(_mm512_castsi512_si128(_mm512_permutexvar_epi32(dsel, raw))),
            _mm256_set1_ps(f32_at(xb)));
        const __m512 f5 = _mm512_castps256_ps512(f);
        const __m512i x0 = load512(xb + 4), x1 = load512(xb + 68), x2 = load512(xb + 132),
                      x3 = load512(xb + 196);
        __m512i s[4];
#pragma GCC unroll 4
        for (int o = 0; o < 4; o++) {
            const uint8_t *qs = w0 + (size_t)o * rb + 16;
            r4_pf(qs - 16, pfd, PD_Q4_K_BYTES);
            const __m512i v0 = load512(qs), v1 = load512(qs + 64);
            /* chunk pairs (0, 2), (1, 3), (4, 6), (5, 7) */
#define R4SC(k) _mm512_maskz_permutexvar_epi8(R4_SCMASK, R4IX(o, ((k) >> 1) * 4 + ((k) & 1)), sm)
            __m512i t = _mm512_madd_epi16(_mm512_maddubs_epi16(_mm512_and_si512(v0, m4), x0), R4SC(0));
            t = _mm512_dpwssd_epi32(t, _mm512_maddubs_epi16(_mm512_gf2p8affine_epi64_epi8(v0, ghi, 0), x1),
                                    R4SC(1));
            t = _mm512_dpwssd_epi32(t, _mm512_maddubs_epi16(_mm512_and_si512(v1, m4), x2), R4SC(2));
            s[o] = _mm512_dpwssd_epi32(t, _mm512_maddubs_epi16(_mm512_gf2p8affine_epi64_epi8(v1, ghi, 0), x3),
                                       R4SC(3));
#undef R4SC
        }
        const __m512i s01 = _mm512_add_epi32(_mm512_shuffle_i64x2(s[0], s[1], 0x44),
                                             _mm512_shuffle_i64x2(s[0], s[1], 0xEE));
        const __m512i s23 = _mm512_add_epi32(_mm512_shuffle_i64x2(s[2], s[3], 0x44),
                                             _mm512_shuffle_i64x2(s[2], s[3], 0xEE));
        a01 = _mm512_fmadd_ps(_mm512_permutexvar_ps(i01, f5), _mm512_cvtepi32_ps(s01), a01);
        a23 = _mm512_fmadd_ps(_mm512_permutexvar_ps(i23, f5), _mm512_cvtepi32_ps(s23), a23);
        const __m512i q8s = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(const void *)(xb + 260)));
        const __m512i prod = _mm512_madd_epi16(_mm512_unpackhi_epi8(sm, _mm512_setzero_si512()), q8s);
        am = _mm512_fnmadd_ps(_mm512_permutexvar_ps(imn, f5), _mm512_cvtepi32_ps(prod), am);
    }
    io->a01 = a01;
    io->a23 = a23;
    io->m = am;
}

/* Row o's accumulators in the per-row form (finish5). */
static kacc_t r4_row(const r4acc_t *a, int o)
{
    float v[3][16];
    _mm512_storeu_ps(v[0], a->a01);
    _mm512_storeu_ps(v[1], a->a23);
    _mm512_storeu_ps(v[2], a->m);
    kacc_t k;
    k.a = _mm256_loadu_ps(&v[o / 2][8 * (o & 1)]);
    k.b = _mm256_castps128_ps256(_mm_loadu_ps(&v[2][4 * o]));
    return k;
}

/* Scales of chunk pair p (chunks 2p, 2p + 1) of a Q6_K super-block: lane L
 * takes scale 4p + L / 4 (each 16 elements have their own). */
static ALWAYS_INLINE __m512i q6k_pair_scales(__m512i sc32, int p)
{
    const int s = 4 * p;
    return _mm512_permutexvar_epi32(_mm512_set_epi32(s + 3, s + 3, s + 3, s + 3, s + 2, s + 2,
                                                     s + 2, s + 2, s + 1, s + 1, s + 1, s + 1,
                                                     s, s, s, s),
                                    sc32);
}

static ALWAYS_INLINE void mk5_q6k(const int NR, const uint8_t *w, const uint8_t *x, size_t xs,
                                  size_t nb, kacc_t *acc_io)
{
    kacc_t acc[4];
#pragma GCC unroll 4
    for (int r = 0; r < NR; r++)
        acc[r] = acc_io[r];
    const __m512i m15 = _mm512_set1_epi8(15), m30 = _mm512_set1_epi8(0x30);
    const __mmask32 upper = (__mmask32)0xFFFF0000u;
    for (size_t b = 0; b < nb; b++) {
        const uint8_t *wb = w + b * PD_Q6_K_BYTES;
        const float dw = fp16_at(wb + 208);
        const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(const void *)(wb + 192)));
        const __m512i sc32 = _mm512_cvtepu16_epi32(sc16); /* low 16 bits: the signed scale */
        __m512i sumi[4];
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++)
            sumi[r] = _mm512_setzero_si512();
#pragma GCC unroll 2
        for (int j = 0; j < 2; j++) {
            /* chunks 4j, 4j+1: low nibbles of ql[64j..64j+64), high bits
             * 0-1 / 2-3 of qh[32j..]; chunks 4j+2, 4j+3: high nibbles, bits
             * 4-5 / 6-7 */
            const __m512i ql = load512(wb + 64 * j);
            const __m512i qh = bcast256(wb + 128 + 32 * j);
            const __m512i ha = _mm512_mask_slli_epi16(_mm512_slli_epi16(qh, 4), upper, qh, 2);
            const __m512i hb = _mm512_mask_srli_epi16(qh, upper, qh, 2);
            const __m512i qa = _mm512_or_si512(_mm512_and_si512(ql, m15), _mm512_and_si512(ha, m30));
            const __m512i qb = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), m15),
                                               _mm512_and_si512(hb, m30));
            const __m512i sa = q6k_pair_scales(sc32, 2 * j), sb = q6k_pair_scales(sc32, 2 * j + 1);
#pragma GCC unroll 4
            for (int r = 0; r < NR; r++) {
                const uint8_t *xb = XQS(r, b) + 4 + 128 * j;
                sumi[r] = pair_dot(pair_dot(sumi[r], qa, xb, sa), qb, xb + 64, sb);
            }
        }
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++) {
            /* q is stored plus 32: as kernels_k_avx2.c (ggml's lanes) */
            const __m256i sub = _mm256_slli_epi32(
                _mm256_madd_epi16(load256(XQS(r, b) + 260), sc16), 5);
            acc[r].a = _mm256_fmadd_ps(_mm256_set1_ps(f32_at(XQS(r, b)) * dw),
                                       _mm256_cvtepi32_ps(_mm256_sub_epi32(fold512(sumi[r]), sub)),
                                       acc[r].a);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < NR; r++)
        acc_io[r] = acc[r];
}

/* ====== Q6_K with GFNI ======
 * The 2-bit high parts of Q6_K sit at four bit positions of qh; moving one
 * to bits 4-5 (and clearing the rest) is one byte-wise affine transform
 * (vgf2p8affineqb, its matrix per 64-bit lane, so both halves of a vector
 * get their own field), and the merge with the low nibble one vpternlogd:
 * 5 operations per 128 weights where the shift-and-mask form takes 10.
 * Same bytes into vpdpbusd, so the same bits out. */
#define K6G_ATTR __attribute__((target("gfni")))
#define GF_F(k) (0x01020000ull << (2 * (k))) /* qh bits 2k, 2k + 1 -> 4, 5 */

K6G_ATTR static ALWAYS_INLINE void mk5_q6k_g(const int NR, const uint8_t *w, const uint8_t *x,
                                              size_t xs, size_t nb, kacc_t *acc_io)
{
    kacc_t acc[4];
#pragma GCC unroll 4
    for (int r = 0; r < NR; r++)
        acc[r] = acc_io[r];
    const __m512i m15 = _mm512_set1_epi8(15);
    const __m512i ma = _mm512_set_epi64((long long)GF_F(1), (long long)GF_F(1), (long long)GF_F(1),
                                        (long long)GF_F(1), (long long)GF_F(0), (long long)GF_F(0),
                                        (long long)GF_F(0), (long long)GF_F(0));
    const __m512i mb = _mm512_set_epi64((long long)GF_F(3), (long long)GF_F(3), (long long)GF_F(3),
                                        (long long)GF_F(3), (long long)GF_F(2), (long long)GF_F(2),
                                        (long long)GF_F(2), (long long)GF_F(2));
    for (size_t b = 0; b < nb; b++) {
        const uint8_t *wb = w + b * PD_Q6_K_BYTES;
        const float dw = fp16_at(wb + 208);
        const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(const void *)(wb + 192)));
        const __m512i sc32 = _mm512_cvtepu16_epi32(sc16);
        __m512i sumi[4];
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++)
            sumi[r] = _mm512_setzero_si512();
#pragma GCC unroll 2
        for (int j = 0; j < 2; j++) {
            const __m512i ql = load512(wb + 64 * j);
            const __m512i qh = bcast256(wb + 128 + 32 * j);
            /* (a & c) | b, b clean outside bits 4-5: 0xEC */
            const __m512i qa = _mm512_ternarylogic_epi32(ql, _mm512_gf2p8affine_epi64_epi8(qh, ma, 0),
                                                         m15, 0xEC);
            const __m512i qb = _mm512_ternarylogic_epi32(_mm512_srli_epi16(ql, 4),
                                                         _mm512_gf2p8affine_epi64_epi8(qh, mb, 0),
                                                         m15, 0xEC);
            const __m512i sa = q6k_pair_scales(sc32, 2 * j), sb = q6k_pair_scales(sc32, 2 * j + 1);
#pragma GCC unroll 4
            for (int r = 0; r < NR; r++) {
                const uint8_t *xb = XQS(r, b) + 4 + 128 * j;
                sumi[r] = pair_dot(pair_dot(sumi[r], qa, xb, sa), qb, xb + 64, sb);
            }
        }
#pragma GCC unroll 4
        for (int r = 0; r < NR; r++) {
            const __m256i sub = _mm256_slli_epi32(
                _mm256_madd_epi16(load256(XQS(r, b) + 260), sc16), 5);
            acc[r].a = _mm256_fmadd_ps(_mm256_set1_ps(f32_at(XQS(r, b)) * dw),
                                       _mm256_cvtepi32_ps(_mm256_sub_epi32(fold512(sumi[r]), sub)),
                                       acc[r].a);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < NR; r++)
        acc_io[r] = acc[r];
}

#undef XQS

/* Q6_K, one activation row, four weight rows (as q4k_r4): the activation
 * vectors loaded once, a chunk pair's scales by one vpermw from the row's
 * 16 scales (int16), the float part on rows 0|1 and 2|3 in lanes. Lane by
 * lane the operations of mk5_q6k_g, so the same bits. */
R4_ATTR static void q6k_r4(const uint8_t *w, size_t rb, const uint8_t *x, size_t nb, r4acc_t *io,
                           size_t pfd)
{
    __m512 a01 = io->a01, a23 = io->a23;
    const __m512i m15 = _mm512_set1_epi8(15);
    const __m512i ma = _mm512_set_epi64((long long)GF_F(1), (long long)GF_F(1), (long long)GF_F(1),
                                        (long long)GF_F(1), (long long)GF_F(0), (long long)GF_F(0),
                                        (long long)GF_F(0), (long long)GF_F(0));
    const __m512i mb = _mm512_set_epi64((long long)GF_F(3), (long long)GF_F(3), (long long)GF_F(3),
                                        (long long)GF_F(3), (long long)GF_F(2), (long long)GF_F(2),
                                        (long long)GF_F(2), (long long)GF_F(2));
    /* word 2L of pair p's vector: scale 4p + L / 4; word 2L + 1 zeroed */
#define Q6I(p) _mm512_set_epi16(4 * (p) + 3, 4 * (p) + 3, 4 * (p) + 3, 4 * (p) + 3, 4 * (p) + 3, \
                                4 * (p) + 3, 4 * (p) + 3, 4 * (p) + 3, 4 * (p) + 2, 4 * (p) + 2, \
                                4 * (p) + 2, 4 * (p) + 2, 4 * (p) + 2, 4 * (p) + 2, 4 * (p) + 2, \
                                4 * (p) + 2, 4 * (p) + 1, 4 * (p) + 1, 4 * (p) + 1, 4 * (p) + 1, \
                                4 * (p) + 1, 4 * (p) + 1, 4 * (p) + 1, 4 * (p) + 1, 4 * (p),     \
                                4 * (p), 4 * (p), 4 * (p), 4 * (p), 4 * (p), 4 * (p), 4 * (p))
    const __m512i ix0 = Q6I(0), ix1 = Q6I(1), ix2 = Q6I(2), ix3 = Q6I(3);
#undef Q6I
    const __m512i i01 = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m512i i23 = _mm512_set_epi32(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2);
    for (size_t b = 0; b < nb; b++) {
        const uint8_t *w0 = w + b * PD_Q6_K_BYTES, *xb = x + b * PD_Q8_K_BYTES;
        const __m512i x0 = load512(xb + 4), x1 = load512(xb + 68), x2 = load512(xb + 132),
                      x3 = load512(xb + 196);
        uint16_t h[4];
        for (int o = 0; o < 4; o++)
            memcpy(&h[o], w0 + (size_t)o * rb + 208, 2);
        uint64_t h4;
        memcpy(&h4, h, 8);
        const __m512 f5 = _mm512_castps128_ps512(
            _mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi64_si128((long long)h4)), _mm_set1_ps(f32_at(xb))));
        __m512i s[4];
        __m256i sc[4];
#pragma GCC unroll 4
        for (int o = 0; o < 4; o++) {
            const uint8_t *wo = w0 + (size_t)o * rb;
            r4_pf(wo, pfd, PD_Q6_K_BYTES);
            sc[o] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(const void *)(wo + 192)));
            const __m512i sc5 = _mm512_castsi256_si512(sc[o]);
            __m512i tt[2];
#pragma GCC unroll 2
            for (int j = 0; j < 2; j++) {
                const __m512i ql = load512(wo + 64 * j);
                const __m512i qh = bcast256(wo + 128 + 32 * j);
                const __m512i qa = _mm512_ternarylogic_epi32(ql, _mm512_gf2p8affine_epi64_epi8(qh, ma, 0),
                                                             m15, 0xEC);
                const __m512i qb = _mm512_ternarylogic_epi32(_mm512_srli_epi16(ql, 4),
                                                             _mm512_gf2p8affine_epi64_epi8(qh, mb, 0),
                                                             m15, 0xEC);
                const __m512i sa = _mm512_permutexvar_epi16(j ? ix2 : ix0, sc5);
                const __m512i sb = _mm512_permutexvar_epi16(j ? ix3 : ix1, sc5);
                tt[j] = _mm512_dpwssd_epi32(_mm512_madd_epi16(_mm512_maddubs_epi16(qa, j ? x2 : x0), sa),
                                            _mm512_maddubs_epi16(qb, j ? x3 : x1), sb);
            }
            s[o] = _mm512_add_epi32(tt[0], tt[1]);
        }
        /* q is stored plus 32: sub = 32 * (bsums . scales), per lane */
        const __m512i bs = _mm512_broadcast_i64x4(load256(xb + 260));
        const __m512i sub01 = _mm512_slli_epi32(
            _mm512_madd_epi16(bs, _mm512_inserti64x4(_mm512_castsi256_si512(sc[0]), sc[1], 1)), 5);
        const __m512i sub23 = _mm512_slli_epi32(
            _mm512_madd_epi16(bs, _mm512_inserti64x4(_mm512_castsi256_si512(sc[2]), sc[3], 1)), 5);
        const __m512i s01 = _mm512_add_epi32(_mm512_shuffle_i64x2(s[0], s[1], 0x44),
                                             _mm512_shuffle_i64x2(s[0], s[1], 0xEE));
        const __m512i s23 = _mm512_add_epi32(_mm512_shuffle_i64x2(s[2], s[3], 0x44),
                                             _mm512_shuffle_i64x2(s[2], s[3], 0xEE));
        a01 = _mm512_fmadd_ps(_mm512_permutexvar_ps(i01, f5),
                              _mm512_cvtepi32_ps(_mm512_sub_epi32(s01, sub01)), a01);
        a23 = _mm512_fmadd_ps(_mm512_permutexvar_ps(i23, f5),
                              _mm512_cvtepi32_ps(_mm512_sub_epi32(s23, sub23)), a23);
    }
    io->a01 = a01;
    io->a23 = a23;
}

typedef void (*mk5_fn)(const uint8_t *w, const uint8_t *x, size_t xs, size_t nb, kacc_t *acc);

#define MK5_1(NAME, FN, NR)                                                                 \
    static void NAME##_##NR(const uint8_t *w, const uint8_t *x, size_t xs, size_t nb,       \
                            kacc_t *a)                                                      \
    {                                                                                       \
        FN(NR, w, x, xs, nb, a);                                                            \
    }
#define MK5(NAME, FN) MK5_1(NAME, FN, 1) MK5_1(NAME, FN, 2) MK5_1(NAME, FN, 3) MK5_1(NAME, FN, 4)
MK5(mk5q4, mk5_q4k)
MK5(mk5q6, mk5_q6k)
MK5(mk5q4x, mk5_q4k_px)
#define MK5G_1(NAME, FN, NR)                                                                \
    K6G_ATTR static void NAME##_##NR(const uint8_t *w, const uint8_t *x, size_t xs, size_t nb, \
                                     kacc_t *a)                                             \
    {                                                                                       \
        FN(NR, w, x, xs, nb, a);                                                            \
    }
MK5G_1(mk5q6g, mk5_q6k_g, 1)
MK5G_1(mk5q6g, mk5_q6k_g, 2)
MK5G_1(mk5q6g, mk5_q6k_g, 3)
MK5G_1(mk5q6g, mk5_q6k_g, 4)

/* kind: 0 Q4_K, 1 Q6_K, 2 Q4_K on rearranged activations, 3 Q6_K with GFNI */
static mk5_fn mk5_pick(int kind, int nr)
{
    static const mk5_fn tab[4][KNR] = {{mk5q4_1, mk5q4_2, mk5q4_3, mk5q4_4},
                                       {mk5q6_1, mk5q6_2, mk5q6_3, mk5q6_4},
                                       {mk5q4x_1, mk5q4x_2, mk5q4x_3, mk5q4x_4},
                                       {mk5q6g_1, mk5q6g_2, mk5q6g_3, mk5q6g_4}};
    return tab[kind][nr - 1];
}

/* y from the accumulators in ggml's order (kernels_k_avx2.c's finish_k). */
static float finish5(bool q6, const kacc_t *acc)
{
    if (q6)
        return hsum8_ggml(acc->a);
    __m128 m = _mm256_castps256_ps128(acc->b);
    m = _mm_add_ps(m, _mm_movehl_ps(m, m));
    m = _mm_add_ss(m, _mm_movehdup_ps(m));
    return hsum8_ggml(acc->a) + _mm_cvtss_f32(m);
}

/* Whether the CPU has GFNI (every AVX-512 VNNI part from Ice Lake and Zen 4
 * on; not Cascade Lake), asked once. */
static bool has_gfni(void)
{
    static atomic_int cached; /* 0 unknown, 1 no, 2 yes */
    int v = atomic_load_explicit(&cached, memory_order_relaxed);
    if (v == 0) {
        unsigned a, b, c, d;
        v = __get_cpuid_count(7, 0, &a, &b, &c, &d) && (c & (1u << 8)) ? 2 : 1;
        atomic_store_explicit(&cached, v, memory_order_relaxed);
    }
    return v == 2;
}

/* Whether the CPU has AVX-512 VBMI and GFNI (the r4 kernels), asked once. */
static bool has_r4(void)
{
    static atomic_int cached; /* 0 unknown, 1 no, 2 yes */
    int v = atomic_load_explicit(&cached, memory_order_relaxed);
    if (v == 0) {
        unsigned a, b, c, d;
        v = __get_cpuid_count(7, 0, &a, &b, &c, &d) && (c & (1u << 8)) && (c & (1u << 1)) ? 2 : 1;
        atomic_store_explicit(&cached, v, memory_order_relaxed);
    }
    return v == 2;
}

/* What skinny5 hands each panel. */
typedef struct {
    bool q6;
    int kind;       /* mk5_pick's */
    bool r4;        /* full panels take q4k_r4 / q6k_r4 */
    size_t bb, nb_all, xs, rb;
    const uint8_t *x0;
    uint32_t n_rows;
    float *y;
    uint32_t y_stride;
} k5_call_t;

/* Lines per call that spread pf's lines evenly over the panel's remaining
 * calls, at the start of K-tile k0 (as pf_plan, without its set-up). */
static size_t pf_share(const pf_t *pf, size_t k0, size_t kt, size_t k_all, size_t calls_per_tile)
{
    const size_t tiles_left = (k_all - k0 + kt - 1) / kt;
    return (pf->left + calls_per_tile * tiles_left - 1) / (calls_per_tile * tiles_left);
}

/* One panel: np <= KPANEL weight rows from wp, rs bytes apart, giving
 * output rows o0, o0 + os, ...; the per-row kernels prefetch the next
 * panel (rows from next, rs apart; NULL: none) while this one computes,
 * the r4 kernels each row's stream pfd bytes ahead (0: none). */
static void k5_panel(const k5_call_t *c, const uint8_t *wp, size_t rs, uint32_t np, uint32_t o0,
                     uint32_t os, const uint8_t *next, size_t pfd)
{
    const size_t bb = c->bb, nb_all = c->nb_all, n_rows = c->n_rows;
    pf_t pf;
    pf_set(&pf, NULL, 0, 0, 0);
    if (c->r4 && np == 4) {
        r4acc_t ra = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
        for (size_t b0 = 0; b0 < nb_all; b0 += KT_SB) {
            const size_t nb = nb_all - b0 < KT_SB ? nb_all - b0 : KT_SB;
            if (c->q6)
                q6k_r4(wp + b0 * bb, rs, c->x0 + b0 * PD_Q8_K_BYTES, nb, &ra, pfd);
            else
                q4k_r4(wp + b0 * bb, rs, c->x0 + b0 * PD_Q8_K_BYTES, nb, &ra, pfd);
        }
        for (uint32_t o = 0; o < 4; o++) {
            const kacc_t k = r4_row(&ra, (int)o);
            c->y[o0 + o * os] = finish5(c->q6, &k);
        }
        return;
    }
    kacc_t acc[KPANEL * PD_SKINNY_MAX_ROWS]; /* (KPANEL, n_rows) */
    for (size_t i = 0; i < (size_t)np * n_rows; i++)
        acc[i].a = acc[i].b = _mm256_setzero_ps();
    for (size_t b0 = 0; b0 < nb_all; b0 += KT_SB) {
        const size_t nb = nb_all - b0 < KT_SB ? nb_all - b0 : KT_SB;
        /* the next panel's weights stream in while this one computes */
        if (b0 == 0)
            pf_set(&pf, next, rs, c->rb, next ? KPANEL : 0);
        const size_t pf_per_call =
            pf_share(&pf, b0, KT_SB, nb_all, (size_t)np * ((n_rows + KNR - 1) / KNR) + 1);
        for (uint32_t r = 0; r < n_rows; r += KNR) {
            const int nr = n_rows - r >= KNR ? KNR : (int)(n_rows - r);
            const mk5_fn mk = mk5_pick(c->kind, nr);
            for (uint32_t o = 0; o < np; o++) {
                pf_step(&pf, pf_per_call);
                mk(wp + o * rs + b0 * bb, c->x0 + r * c->xs + b0 * PD_Q8_K_BYTES, c->xs, nb,
                   acc + o * n_rows + r);
            }
        }
    }
    pf_step(&pf, pf.left);
    for (uint32_t o = 0; o < np; o++)
        for (uint32_t r = 0; r < n_rows; r++)
            c->y[(size_t)r * c->y_stride + o0 + o * os] = finish5(c->q6, &acc[o * n_rows + r]);
}

/* n_rows <= PD_SKINNY_MAX_ROWS, t Q4_K or Q6_K; fast: the rearranged
 * activations for Q4_K (when they fit k5x_buf) and GFNI for Q6_K (when the
 * CPU has it). */
static void skinny5(const pd_mat_t *w, uint32_t o_begin, uint32_t o_end, const void *xq,
                    uint32_t n_rows, float *y, uint32_t y_stride, bool fast)
{
    const pd_ggml_type_t t = w->type;
    const bool q6 = t == PD_GGML_TYPE_Q6_K;
    const size_t bb = q6 ? PD_Q6_K_BYTES : PD_Q4_K_BYTES, nb_all = w->n_in / QK_K;
    const size_t xs = nb_all * PD_Q8_K_BYTES, rb = w->row_bytes;
    const uint8_t *w0 = (const uint8_t *)w->data, *x0 = (const uint8_t *)xq;
    int kind = q6;
    if (fast && q6 && has_gfni())
        kind = 3;
    if (fast && !q6 && (size_t)n_rows * xs <= K5X_BUF_BYTES) {
        k5x_prepare(x0, (size_t)n_rows * nb_all, k5x_buf);
        x0 = k5x_buf;
        kind = 2;
    }
    const k5_call_t c = {q6, kind, n_rows == 1 && (kind == 2 || kind == 3) && KPANEL == 4 && has_r4(),
                         bb, nb_all, xs, rb, x0, n_rows, y, y_stride};
    const pd_rowmap_t m = pd_rowmap(o_begin, o_end, KPANEL);
    const size_t rs = (size_t)m.stride * rb; /* bytes between a panel's rows */
    for (uint32_t p = 0; p < m.n_panels; p++) {
        const uint32_t o0 = pd_rowmap_row(&m, p, 0);
        const uint8_t *next = p + 1 < m.n_panels ? w0 + (size_t)(o0 + 1) * rb : NULL;
        const size_t pfd = K_PF_ROWS > 0 && p + K_PF_ROWS < m.n_panels ? K_PF_ROWS * rb : 0;
        k5_panel(&c, w0 + (size_t)o0 * rb, rs, KPANEL, o0, m.stride, next, pfd);
    }
    const uint32_t t0 = pd_rowmap_tail(&m, KPANEL);
    if (t0 < o_end) /* the tail: adjacent rows, nothing to prefetch after it */
        k5_panel(&c, w0 + (size_t)t0 * rb, rb, o_end - t0, t0, 1, NULL, 0);
}

void pd_kern_skinny_k_avx512_paths(const pd_mat_t *w, uint32_t o_begin, uint32_t o_end,
                                   const void *xq, uint32_t n_rows, float *y, uint32_t y_stride,
                                   bool fast)
{
    if (o_begin >= o_end)
        return;
    const bool own = w->type == PD_GGML_TYPE_Q4_K || w->type == PD_GGML_TYPE_Q6_K;
    const size_t xq_row = pd_kern_xq_bytes(w->type, w->n_in, 1);
    while (n_rows > 0) { /* acc holds PD_SKINNY_MAX_ROWS rows: slices */
        const uint32_t nr = n_rows < PD_SKINNY_MAX_ROWS ? n_rows : PD_SKINNY_MAX_ROWS;
        if (own)
            skinny5(w, o_begin, o_end, xq, nr, y, y_stride, fast);
        else
            pd_kern_skinny_k_avx2(w, o_begin, o_end, xq, nr, y, y_stride);
        xq = (const uint8_t *)xq + (size_t)nr * xq_row;
        y += (size_t)nr * y_stride;
        n_rows -= nr;
    }
}

void pd_kern_skinny_k_avx512(const pd_mat_t *w, uint32_t o_begin, uint32_t o_end, const void *xq,
                             uint32_t n_rows, float *y, uint32_t y_stride)
{
    pd_kern_skinny_k_avx512_paths(w, o_begin, o_end, xq, n_rows, y, y_stride, true);
}
