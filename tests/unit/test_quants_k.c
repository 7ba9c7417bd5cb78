/* test_quants_k.c -- K-quants (Q2_K..Q6_K) and IQ4_NL: every AVX2 kernel
 * against its plain C reference on odd sizes (dequantization and the Q8_K
 * activation quantizer bit for bit, the skinny product within rounding of a
 * float64 reference), batch invariance, the matmul paths, quantize ->
 * dequantize error bounds, the scale check, and llama.cpp's per-tensor
 * type rules (quant_mix). Bit-identity with llama.cpp's own functions is
 * tests/oracle/t_ggml_kernels.sh. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "engine/kernels.h"
#include "engine/pool.h"
#include "engine/quant_mix.h"
#include "engine/quants_k.h"

static const pd_ggml_type_t TYPES[] = {PD_GGML_TYPE_Q2_K, PD_GGML_TYPE_Q3_K, PD_GGML_TYPE_Q4_K,
                                       PD_GGML_TYPE_Q5_K, PD_GGML_TYPE_Q6_K,
                                       PD_GGML_TYPE_IQ4_NL};
#define N_TYPES (sizeof TYPES / sizeof TYPES[0])

/* ====== Helpers ====== */

typedef struct {
    uint64_t s;
} rng_t;

static float rng_f(rng_t *r) /* roughly normal, mean 0, sd 1 */
{
    double a = 0;
    for (int i = 0; i < 4; i++) {
        r->s = r->s * 6364136223846793005ull + 1442695040888963407ull;
        a += (double)(r->s >> 11) * (1.0 / 9007199254740992.0);
    }
    return (float)((a - 2.0) * 1.7320508);
}

static uint32_t be(pd_ggml_type_t t) /* block elements */
{
    return pd_ggml_block_elems(t);
}

static float *make_f(size_t n, rng_t *r)
{
    float *p = malloc(sizeof(float) * (n ? n : 1));
    assert_non_null(p);
    for (size_t i = 0; i < n; i++)
        p[i] = rng_f(r);
    return p;
}

/* n_out quantized rows of n_in (from random floats, some rows scaled). */
static uint8_t *make_w(pd_ggml_type_t t, uint32_t n_out, uint32_t n_in, rng_t *r)
{
    const size_t rb = pd_ggml_row_bytes(t, n_in);
    uint8_t *w = malloc(rb * n_out + 1);
    float *x = make_f(n_in, r);
    assert_non_null(w);
    for (uint32_t o = 0; o < n_out; o++) {
        const float scale = o % 5 == 4 ? 1e-3f : 1.0f;
        for (uint32_t i = 0; i < n_in; i++)
            x[i] = rng_f(r) * scale;
        pd_quant_row_k(t, x, w + o * rb, n_in);
    }
    free(x);
    return w;
}

/* Random bytes with finite fp16 scales: every code and scale pattern. */
static uint8_t *random_blocks(pd_ggml_type_t t, size_t n_blocks, rng_t *r)
{
    const size_t bb = pd_ggml_block_bytes(t);
    uint8_t *w = malloc(n_blocks * bb);
    assert_non_null(w);
    for (size_t i = 0; i < n_blocks * bb; i++) {
        r->s = r->s * 6364136223846793005ull + 1442695040888963407ull;
        w[i] = (uint8_t)(r->s >> 56);
    }
    uint16_t bits;
    const char *field;
    int64_t bad;
    while ((bad = pd_quant_find_bad_scale(t, w, n_blocks, &bits, &field)) >= 0) {
        /* clear the exponent's top bit of every scale of that block */
        const size_t offs[] = {0, 2, 80, 82, 108, 208};
        for (size_t k = 0; k < 6; k++)
            if (offs[k] + 1 < bb)
                w[(size_t)bad * bb + offs[k] + 1] &= 0xbf;
    }
    return w;
}

/* ====== Dequantization ====== */

static void test_dequant_avx2_matches_ref(void **state)
{
    (void)state;
    if (!pd_kern_has_avx2())
        skip();
    rng_t r = {11};
    for (size_t t = 0; t < N_TYPES; t++) {
        const uint32_t n = be(TYPES[t]) * 37; /* odd block count */
        float *a = malloc(sizeof(float) * n), *b = malloc(sizeof(float) * n);
        uint8_t *w = random_blocks(TYPES[t], 37, &r);
        pd_dequant_row_ref(TYPES[t], w, a, n);
        pd_dequant_row_avx2(TYPES[t], w, b, n);
        assert_memory_equal(a, b, sizeof(float) * n);
        free(w);
        w = make_w(TYPES[t], 1, n, &r);
        pd_dequant_row_ref(TYPES[t], w, a, n);
        pd_dequant_row(TYPES[t], w, b, n);
        assert_memory_equal(a, b, sizeof(float) * n);
        free(w);
        free(a);
        free(b);
    }
}

/* The dequantizers (ggml's float arithmetic) against each element decoded
 * independently from the layout in double (the reference product with a
 * one-hot Q8_K activation returns exactly that element). */
static void test_dequant_matches_layout(void **state)
{
    (void)state;
    rng_t r = {12};
    for (size_t t = 0; t < N_TYPES; t++) {
        const pd_ggml_type_t wt = TYPES[t];
        const bool nl = wt == PD_GGML_TYPE_IQ4_NL;
        const uint32_t n = nl ? 64 : 256;
        uint8_t *w = random_blocks(wt, n / be(wt), &r);
        float *deq = malloc(sizeof(float) * n);
        pd_dequant_row_ref(wt, w, deq, n);
        const size_t xb = pd_kern_xq_bytes(wt, n, 1);
        uint8_t *xq = calloc(1, xb);
        for (uint32_t e = 0; e < n; e++) {
            memset(xq, 0, xb);
            if (nl) { /* Q8_0: fp16 d = 1 per block of 32 */
                const uint16_t one = 0x3c00;
                memcpy(xq + (e / 32) * 34, &one, 2);
                xq[(e / 32) * 34 + 2 + e % 32] = 1;
            } else {  /* Q8_K: float d = 1 */
                const float one = 1.0f;
                memcpy(xq, &one, 4);
                xq[4 + e] = 1;
            }
            float y = 0;
            pd_kern_skinny_k_ref(wt, w, pd_ggml_row_bytes(wt, n), n, 0, 1, xq, 1, &y, 1);
            /* float arithmetic in ggml's order: a few roundings of terms
             * no larger than the block's largest element */
            float bmax = 0;
            for (uint32_t i = e / be(wt) * be(wt); i < (e / be(wt) + 1) * be(wt); i++)
                bmax = fabsf(deq[i]) > bmax ? fabsf(deq[i]) : bmax;
            if (!(fabsf(y - deq[e]) <= 4e-7f * (bmax + fabsf(y)) + 1e-30f)) {
                print_error("%s element %u: dequantized %.9g, layout %.9g\n",
                            pd_ggml_type_name(wt), e, deq[e], y);
                fail();
            }
        }
        free(xq);
        free(deq);
        free(w);
    }
}

/* quantize -> dequantize on normal rows (three magnitudes): the error stays
 * within each type's bound (measured on these seeds, plus about 15 %). */
static void test_roundtrip_error_bounds(void **state)
{
    (void)state;
    static const struct {
        pd_ggml_type_t t;
        double rms, max; /* rms error / rms x; max error / max |x| (measured + ~15 %) */
    } B[] = {
        {PD_GGML_TYPE_Q2_K, 0.34, 0.37},   {PD_GGML_TYPE_Q3_K, 0.175, 0.21},
        {PD_GGML_TYPE_Q4_K, 0.082, 0.082}, {PD_GGML_TYPE_Q5_K, 0.042, 0.053},
        {PD_GGML_TYPE_Q6_K, 0.024, 0.045}, {PD_GGML_TYPE_IQ4_NL, 0.086, 0.10},
    };
    rng_t r = {13};
    const uint32_t n = 4096;
    float *x = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * n);
    uint8_t *q = malloc(2 * n);
    for (size_t t = 0; t < sizeof B / sizeof B[0]; t++) {
        double worst_rms = 0, worst_max = 0;
        for (int seed = 0; seed < 12; seed++) {
            const float scale = seed % 3 == 0 ? 1e-3f : seed % 3 == 1 ? 1.0f : 300.0f;
            for (uint32_t i = 0; i < n; i++)
                x[i] = rng_f(&r) * scale;
            pd_quant_row_k(B[t].t, x, q, n);
            pd_dequant_row_ref(B[t].t, q, y, n);
            double e2 = 0, x2 = 0, em = 0, xm = 0;
            for (uint32_t i = 0; i < n; i++) {
                const double d = (double)x[i] - y[i];
                e2 += d * d;
                x2 += (double)x[i] * x[i];
                em = fabs(d) > em ? fabs(d) : em;
                xm = fabs(x[i]) > xm ? fabs(x[i]) : xm;
            }
            worst_rms = fmax(worst_rms, sqrt(e2 / x2));
            worst_max = fmax(worst_max, em / xm);
        }
        print_message("%-6s rms error %.4f (bound %.3f), max error %.4f (bound %.3f)\n",
                      pd_ggml_type_name(B[t].t), worst_rms, B[t].rms, worst_max, B[t].max);
        assert_true(worst_rms <= B[t].rms);
        assert_true(worst_max <= B[t].max);
        /* an all-zero row stays zero, a constant row stays near constant */
        for (uint32_t i = 0; i < n; i++)
            x[i] = 0;
        pd_quant_row_k(B[t].t, x, q, n);
        pd_dequant_row_ref(B[t].t, q, y, n);
        for (uint32_t i = 0; i < n; i++)
            assert_true(y[i] == 0.0f);
        for (uint32_t i = 0; i < n; i++)
            x[i] = -2.5f;
        pd_quant_row_k(B[t].t, x, q, n);
        pd_dequant_row_ref(B[t].t, q, y, n);
        for (uint32_t i = 0; i < n; i++)
            assert_true(fabsf(y[i] + 2.5f) <= 2.5f * (float)B[t].max);
    }
    free(x);
    free(y);
    free(q);
}

/* ====== Q8_K activations ====== */

static void test_q8k_avx2_matches_ref(void **state)
{
    (void)state;
    if (!pd_kern_has_avx2())
        skip();
    rng_t r = {14};
    const uint32_t n = 256 * 9, rows = 4, stride = n + 3;
    float *x = make_f((size_t)stride * rows, &r);
    for (uint32_t i = 0; i < 256; i++)
        x[i] = 0.0f;                            /* block 0: zeros */
    for (uint32_t i = 256; i < 512; i++)
        x[i] = (float)((int)i - 400) * 0.25f;   /* exact ties */
    x[300] = -100.0f;                           /* the largest is negative */
    x[512 + 7] = 5.0f;
    x[512 + 9] = -5.0f;                         /* +/- the same magnitude: the first wins */
    x[768 + 3] = NAN;                           /* a NaN lane */
    x[1024 + 5] = 1e-30f;                       /* a block of tiny values */
    for (uint32_t i = 1024; i < 1280; i++)
        x[i] *= 1e-38f;
    const size_t bytes = pd_kern_xq_bytes(PD_GGML_TYPE_Q4_K, n, rows);
    assert_int_equal(bytes, (size_t)rows * 9 * 292);
    uint8_t *a = malloc(bytes), *b = malloc(bytes);
    pd_kern_prepare_x_ref(PD_GGML_TYPE_Q4_K, x, stride, n, rows, a);
    pd_kern_prepare_x_avx2(PD_GGML_TYPE_Q6_K, x, stride, n, rows, b);
    assert_memory_equal(a, b, bytes);
    /* properties: bsums are the sums, |q| <= 127, d * q near x */
    for (uint32_t blk = 0; blk < rows * 9; blk++) {
        const uint8_t *p = a + (size_t)blk * 292;
        int16_t bs[16];
        memcpy(bs, p + 260, 32);
        for (int g = 0; g < 16; g++) {
            int s = 0;
            for (int l = 0; l < 16; l++)
                s += (int8_t)p[4 + 16 * g + l];
            assert_int_equal(s, bs[g]);
        }
    }
    float d;
    memcpy(&d, a + 292, 4);
    assert_true(d == 1.0f / (-127.0f / -100.0f)); /* ggml: d = 1 / iscale */
    assert_int_equal((int8_t)a[292 + 4 + 300 - 256], -127);
    memcpy(&d, a, 4);
    assert_true(d == 0.0f); /* the zero block */
    free(a);
    free(b);
    free(x);
}

/* ====== Skinny product ====== */

/* Sum over i of |w_i x_i| for output row o and activation row r: the scale
 * of the rounding error. */
static double abs_terms(pd_ggml_type_t t, const uint8_t *wrow, const uint8_t *xqr, uint32_t n)
{
    float *w = malloc(sizeof(float) * n), *x = malloc(sizeof(float) * n);
    pd_dequant_row_ref(t, wrow, w, n);
    pd_dequant_row_ref(pd_kern_act_type(t), xqr, x, n);
    double s = 0;
    for (uint32_t i = 0; i < n; i++)
        s += fabs((double)w[i] * x[i]);
    free(w);
    free(x);
    return s;
}

/* Wraps pd_kern_skinny_k_avx512 (x unused by the K-quants). */
static void skinny_k_avx512(const pd_mat_t *w, uint32_t o_begin, uint32_t o_end, const float *x,
                            uint32_t x_stride, const void *xq, uint32_t n_rows, float *y,
                            uint32_t y_stride)
{
    (void)x;
    (void)x_stride;
    pd_kern_skinny_k_avx512(w, o_begin, o_end, xq, n_rows, y, y_stride);
}

/* The kernel check_skinny tests (pd_kern_skinny_avx2 unless a test says). */
static void (*skinny_under_test)(const pd_mat_t *, uint32_t, uint32_t, const float *, uint32_t,
                                 const void *, uint32_t, float *, uint32_t) = pd_kern_skinny_avx2;

/* The kernel under test over [o0, o1) with padded strides against the
 * float64 reference; nothing outside [o0, o1) is written. */
static void check_skinny(pd_ggml_type_t t, uint32_t n_in, uint32_t n_out, uint32_t n_rows,
                         uint32_t o0, uint32_t o1, rng_t *r)
{
    const uint32_t xs = n_in + 3, ys = n_out + 2;
    uint8_t *wd = make_w(t, n_out, n_in, r);
    pd_mat_t w = {wd, t, n_out, n_in, pd_ggml_row_bytes(t, n_in)};
    float *x = make_f((size_t)xs * n_rows, r);
    const size_t xqb = pd_kern_xq_bytes(t, n_in, n_rows), xrb = xqb / n_rows;
    uint8_t *xq = malloc(xqb);
    pd_kern_prepare_x(t, x, xs, n_in, n_rows, xq);
    float *ya = malloc(sizeof(float) * ys * n_rows), *yr = malloc(sizeof(float) * ys * n_rows);
    for (size_t i = 0; i < (size_t)ys * n_rows; i++)
        ya[i] = yr[i] = 12345.0f;
    skinny_under_test(&w, o0, o1, x, xs, xq, n_rows, ya, ys);
    pd_kern_skinny_ref(&w, o0, o1, x, xs, xq, n_rows, yr, ys);
    for (uint32_t rr = 0; rr < n_rows; rr++)
        for (uint32_t o = 0; o < ys; o++) {
            const float a = ya[rr * ys + o], b = yr[rr * ys + o];
            if (o < o0 || o >= o1) {
                assert_true(a == 12345.0f && b == 12345.0f);
                continue;
            }
            const double tol = 1e-5 * abs_terms(t, wd + o * w.row_bytes, xq + rr * xrb, n_in);
            if (!(fabs((double)a - b) <= tol + 1e-30)) {
                print_error("%s n_in %u n_out %u n_rows %u: y[%u][%u] avx2 %.9g ref %.9g tol "
                            "%.3g\n", pd_ggml_type_name(t), n_in, n_out, n_rows, rr, o, a, b,
                            tol);
                fail();
            }
        }
    free(ya);
    free(yr);
    free(xq);
    free(x);
    free(wd);
}

static void test_skinny_vs_ref(void **state)
{
    (void)state;
    if (!pd_kern_has_avx2())
        skip();
    rng_t r = {15};
    const uint32_t n_blocks[] = {1, 3, 9, 17}; /* K-tiles of 8: one partial, two */
    const uint32_t n_outs[] = {1, 3, 17};
    const uint32_t n_rows[] = {1, 2, 3, 5, 8, 13, 64};
    for (size_t t = 0; t < N_TYPES; t++) {
        const uint32_t bmul = TYPES[t] == PD_GGML_TYPE_IQ4_NL ? 8 * 32 + 32 : 256; /* NL: odd */
        for (size_t i = 0; i < 4; i++)
            for (size_t o = 0; o < 3; o++)
                for (size_t k = 0; k < 7; k++) {
                    if (n_blocks[i] > 3 && n_outs[o] * n_rows[k] > 3 * 13)
                        continue; /* keep the reference cheap */
                    check_skinny(TYPES[t], n_blocks[i] * bmul, n_outs[o], n_rows[k], 0,
                                 n_outs[o], &r);
                }
        /* a sub-range (a task's share) and more rows than one slice */
        check_skinny(TYPES[t], 3 * bmul, 40, 6, 5, 31, &r);
        check_skinny(TYPES[t], bmul, 9, 70, 0, 9, &r);
    }
}

/* y[r][o] is bitwise the same alone, in any batch, and in any sub-range. */
static void test_skinny_batch_invariant(void **state)
{
    (void)state;
    if (!pd_kern_has_avx2())
        skip();
    rng_t r = {16};
    for (size_t t = 0; t < N_TYPES; t++) {
        const uint32_t n_in = TYPES[t] == PD_GGML_TYPE_IQ4_NL ? 32 * 71 : 256 * 11;
        const uint32_t n_out = 37, n_rows = 13;
        uint8_t *wd = make_w(TYPES[t], n_out, n_in, &r);
        pd_mat_t w = {wd, TYPES[t], n_out, n_in, pd_ggml_row_bytes(TYPES[t], n_in)};
        float *x = make_f((size_t)n_in * n_rows, &r);
        const size_t xqb = pd_kern_xq_bytes(TYPES[t], n_in, n_rows), xrb = xqb / n_rows;
        uint8_t *xq = malloc(xqb);
        pd_kern_prepare_x(TYPES[t], x, n_in, n_in, n_rows, xq);
        float *yb = malloc(sizeof(float) * n_out * n_rows), y1[37];
        pd_kern_skinny_avx2(&w, 0, n_out, x, n_in, xq, n_rows, yb, n_out);
        for (uint32_t rr = 0; rr < n_rows; rr++) {
            pd_kern_skinny_avx2(&w, 0, n_out, NULL, n_in, xq + rr * xrb, 1, y1, n_out);
            assert_memory_equal(y1, yb + (size_t)rr * n_out, sizeof y1);
            pd_kern_skinny_avx2(&w, 3, 11, NULL, n_in, xq + rr * xrb, 1, y1, n_out);
            assert_memory_equal(y1 + 3, yb + (size_t)rr * n_out + 3, 8 * sizeof(float));
        }
        free(yb);
        free(xq);
        free(x);
        free(wd);
    }
}

/* Q8_K rows of random bytes (every code, -128 included) with their bsums
 * and random scales: the extremes the quantizer never writes. */
static uint8_t *random_q8k(uint32_t n_in, uint32_t n_rows, rng_t *r)
{
    const size_t nb = (size_t)n_in / 256 * n_rows;
    uint8_t *q = malloc(nb * PD_Q8_K_BYTES);
    assert_non_null(q);
    for (size_t b = 0; b < nb; b++) {
        uint8_t *p = q + b * PD_Q8_K_BYTES;
        const float d = rng_f(r) * 1e-2f;
        memcpy(p, &d, 4);
        int16_t bs[16] = {0};
        for (int i = 0; i < 256; i++) {
            r->s = r->s * 6364136223846793005ull + 1442695040888963407ull;
            p[4 + i] = (uint8_t)(r->s >> 56);
            bs[i / 16] = (int16_t)(bs[i / 16] + (int8_t)p[4 + i]);
        }
        memcpy(p + 260, bs, sizeof bs);
    }
    return q;
}

/* The AVX-512 kernel (Q4_K and Q6_K with VNNI, the other types forwarded to
 * AVX2), on its fast paths (Q4_K on rearranged activations, Q6_K with GFNI)
 * and its plain ones, gives the AVX2 kernel's bits for every (r, o), batch
 * and range (70 rows: a 64-row slice too large for the rearranged copy, then
 * 6 rows that fit):
 * those are ggml's (t_ggml_kernels). Weights of every bit pattern and of the
 * quantizer, activations of random bytes and of the quantizer; then the
 * float64 reference with check_skinny's tolerance. */
static void test_skinny_avx512_matches_avx2(void **state)
{
    (void)state;
    if (pd_kern_isa() < PD_ISA_AVX512)
        skip();
    rng_t r = {18};
    const uint32_t n_rows[] = {1, 2, 3, 4, 5, 13, 70};
    for (size_t t = 0; t < N_TYPES; t++) {
        if (TYPES[t] == PD_GGML_TYPE_IQ4_NL)
            continue; /* Q8_0 activations: forwarded like Q2_K, Q3_K, Q5_K */
        for (uint32_t nbk = 1; nbk <= 17; nbk += 8) {
            const uint32_t n_in = 256 * nbk, n_out = 9;
            const size_t rb = pd_ggml_row_bytes(TYPES[t], n_in);
            for (int src = 0; src < 2; src++) {
                uint8_t *wd = src ? make_w(TYPES[t], n_out, n_in, &r)
                                  : random_blocks(TYPES[t], (size_t)n_out * nbk, &r);
                pd_mat_t w = {wd, TYPES[t], n_out, n_in, rb};
                for (size_t k = 0; k < 7; k++) {
                    const uint32_t nr = n_rows[k];
                    uint8_t *xq = random_q8k(n_in, nr, &r);
                    float *ya = malloc(sizeof(float) * n_out * nr);
                    float *yb = malloc(sizeof(float) * n_out * nr);
                    pd_kern_skinny_avx2(&w, 0, n_out, NULL, n_in, xq, nr, yb, n_out);
                    for (int fast = 0; fast < 2; fast++) { /* both paths */
                        pd_kern_skinny_k_avx512_paths(&w, 0, n_out, xq, nr, ya, n_out, fast);
                        assert_memory_equal(ya, yb, sizeof(float) * n_out * nr);
                        pd_kern_skinny_k_avx512_paths(&w, 2, 7, xq, 1, ya, n_out, fast);
                        assert_memory_equal(ya + 2, yb + 2, 5 * sizeof(float));
                    }
                    free(yb);
                    free(ya);
                    free(xq);
                }
                free(wd);
            }
        }
    }
    skinny_under_test = skinny_k_avx512;
    for (size_t t = 0; t < N_TYPES; t++)
        if (TYPES[t] != PD_GGML_TYPE_IQ4_NL)
            for (size_t k = 0; k < 7; k++)
                check_skinny(TYPES[t], 9 * 256, 17, n_rows[k], 0, 17, &r);
    skinny_under_test = pd_kern_skinny_avx2;
}

/* The AVX-512 kernel's row map (kernels_rows.h): panels of 4 weight rows
 * taken a stride apart within the call's range, the range % 4 last rows as
 * a tail. Over ranges where the panels are far and the tail is not empty
 * (odd sizes, the pool's chunk boundaries, ranges shorter than a panel),
 * both paths and the r4 kernels (1 row) give the AVX2 kernel's bits, and
 * nothing outside the range is written. */
static void test_skinny_avx512_far_rows(void **state)
{
    (void)state;
    if (pd_kern_isa() < PD_ISA_AVX512)
        skip();
    rng_t r = {0xfa44};
    const pd_ggml_type_t types[] = {PD_GGML_TYPE_Q4_K, PD_GGML_TYPE_Q6_K};
    const uint32_t n_rows[] = {1, 2, 3, 5};
    const uint32_t range[][2] = {{0, 203}, {1, 202}, {17, 150}, {16, 32}, {32, 203},
                                 {5, 12}, {3, 4}, {0, 7}, {190, 203}};
    const uint32_t n_out = 203;
    for (int t = 0; t < 2; t++)
        for (uint32_t nbk = 3; nbk <= 9; nbk += 6) { /* one K-tile; two */
            const uint32_t n_in = 256 * nbk;
            uint8_t *wd = make_w(types[t], n_out, n_in, &r);
            pd_mat_t w = {wd, types[t], n_out, n_in, pd_ggml_row_bytes(types[t], n_in)};
            for (size_t k = 0; k < 4; k++) {
                const uint32_t nr = n_rows[k];
                uint8_t *xq = random_q8k(n_in, nr, &r);
                float *ya = malloc(sizeof(float) * n_out * nr);
                float *yb = malloc(sizeof(float) * n_out * nr);
                assert_non_null(ya);
                assert_non_null(yb);
                pd_kern_skinny_avx2(&w, 0, n_out, NULL, n_in, xq, nr, yb, n_out);
                for (int fast = 0; fast < 2; fast++)
                    for (size_t g = 0; g < sizeof range / sizeof range[0]; g++) {
                        const uint32_t o0 = range[g][0], o1 = range[g][1];
                        for (size_t j = 0; j < (size_t)n_out * nr; j++)
                            ya[j] = 12345.0f;
                        pd_kern_skinny_k_avx512_paths(&w, o0, o1, xq, nr, ya, n_out, fast);
                        for (uint32_t rr = 0; rr < nr; rr++)
                            for (uint32_t o = 0; o < n_out; o++) {
                                const float a = ya[(size_t)rr * n_out + o];
                                const float b = o < o0 || o >= o1 ? 12345.0f
                                                                  : yb[(size_t)rr * n_out + o];
                                if (memcmp(&a, &b, sizeof a) != 0) {
                                    print_error("type %d n_in %u rows %u fast %d [%u, %u): "
                                                "y[%u][%u] %.9g want %.9g\n", types[t], n_in, nr,
                                                fast, o0, o1, rr, o, a, b);
                                    fail();
                                }
                            }
                    }
                free(yb);
                free(ya);
                free(xq);
            }
            free(wd);
        }
}

/* pd_matmul's two paths against a float64 product: the skinny path on the
 * quantized activations, the sgemm path on activations rounded the same way
 * (pd_kern_round_x), as the engine calls it. */
static void check_matmul(pd_pool_t *pool, pd_ggml_type_t t, uint32_t n_in, uint32_t n_out,
                         uint32_t n_rows, uint32_t skinny_max, rng_t *r)
{
    uint8_t *wd = make_w(t, n_out, n_in, r);
    pd_mat_t w = {wd, t, n_out, n_in, pd_ggml_row_bytes(t, n_in)};
    float *x = make_f((size_t)n_in * n_rows, r), *xr = malloc(sizeof(float) * n_in * n_rows);
    const bool skinny = pd_matmul_uses_skinny(&w, n_rows, skinny_max);
    uint8_t *xq = malloc(pd_kern_xq_bytes(t, n_in, n_rows));
    pd_kern_round_x(t, x, n_in, n_rows, xq, xr);
    float *y = malloc(sizeof(float) * n_out * n_rows);
    size_t sb = pd_matmul_scratch_bytes(&w, n_rows);
    void *scratch = aligned_alloc(64, (sb + 63) / 64 * 64);
    pd_matmul(pool, &w, skinny ? x : xr, n_rows, y, scratch, skinny_max);
    float *wrow = malloc(sizeof(float) * n_in);
    for (uint32_t o = 0; o < n_out; o++) {
        pd_dequant_row_ref(t, wd + o * w.row_bytes, wrow, n_in);
        for (uint32_t rr = 0; rr < n_rows; rr++) {
            double s = 0, sa = 0;
            for (uint32_t i = 0; i < n_in; i++) {
                s += (double)wrow[i] * xr[(size_t)rr * n_in + i];
                sa += fabs((double)wrow[i] * xr[(size_t)rr * n_in + i]);
            }
            const double got = y[(size_t)rr * n_out + o];
            if (!(fabs(got - s) <= 2e-5 * sa + 1e-30)) {
                print_error("matmul %s %ux%u rows %u (%s): y[%u][%u] %.9g want %.9g\n",
                            pd_ggml_type_name(t), n_out, n_in, n_rows, skinny ? "skinny" : "sgemm",
                            rr, o, got, s);
                fail();
            }
        }
    }
    free(wrow);
    free(scratch);
    free(y);
    free(xq);
    free(xr);
    free(x);
    free(wd);
}

static void test_matmul_paths(void **state)
{
    (void)state;
    rng_t r = {17};
    pd_pool_t *pool = pd_pool_new(2);
    assert_non_null(pool);
    for (size_t t = 0; t < N_TYPES; t++) {
        const uint32_t n_in = TYPES[t] == PD_GGML_TYPE_IQ4_NL ? 96 : 512;
        check_matmul(pool, TYPES[t], n_in, PD_MATMUL_DEQ_TILE_ROWS + 37, 3, 0, &r); /* sgemm */
        check_matmul(pool, TYPES[t], n_in, 17, PD_SKINNY_QUANT_MAX + 5, 64, &r);    /* sgemm */
        check_matmul(pool, TYPES[t], n_in, 300, 7, 64, &r);                         /* skinny */
        check_matmul(NULL, TYPES[t], n_in, 30, 1, 64, &r);
    }
    pd_pool_free(pool);
}

/* ====== Scale checks ====== */

static void test_find_bad_scale(void **state)
{
    (void)state;
    rng_t r = {18};
    const struct {
        pd_ggml_type_t t;
        size_t at;
        const char *field;
    } C[] = {
        {PD_GGML_TYPE_Q2_K, 80, "d"}, {PD_GGML_TYPE_Q2_K, 82, "dmin"}, {PD_GGML_TYPE_Q3_K, 108, "d"},
        {PD_GGML_TYPE_Q4_K, 0, "d"},  {PD_GGML_TYPE_Q4_K, 2, "dmin"},  {PD_GGML_TYPE_Q5_K, 0, "d"},
        {PD_GGML_TYPE_Q5_K, 2, "dmin"}, {PD_GGML_TYPE_Q6_K, 208, "d"}, {PD_GGML_TYPE_IQ4_NL, 0, "d"},
        {PD_GGML_TYPE_Q8_0, 0, "d"},  {PD_GGML_TYPE_Q4_0, 0, "d"},
    };
    const uint16_t bad[] = {0x7c00, 0xfc00, 0x7e00, 0x7c01, 0xffff};
    for (size_t c = 0; c < sizeof C / sizeof C[0]; c++) {
        const size_t bb = pd_ggml_block_bytes(C[c].t);
        uint8_t *w = calloc(10, bb); /* zero scales: finite */
        uint16_t bits = 0;
        const char *field = NULL;
        assert_int_equal(pd_quant_find_bad_scale(C[c].t, w, 10, &bits, &field), -1);
        for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
            memset(w, 0, 10 * bb);
            memcpy(w + 7 * bb + C[c].at, &bad[k], 2);
            assert_int_equal(pd_quant_find_bad_scale(C[c].t, w, 10, &bits, &field), 7);
            assert_int_equal(bits, bad[k]);
            assert_string_equal(field, C[c].field);
        }
        const uint16_t big = 0x7bff; /* 65504: finite */
        memcpy(w + 7 * bb + C[c].at, &big, 2);
        assert_int_equal(pd_quant_find_bad_scale(C[c].t, w, 10, &bits, &field), -1);
        free(w);
    }
    assert_int_equal(pd_quant_find_bad_scale(PD_GGML_TYPE_F16, "\xff\xff", 1, NULL, NULL), -1);
    (void)r;
}

/* ====== llama.cpp's per-tensor types ====== */

static pd_ggml_type_t mix_type(pd_quant_mix_t mix, const pd_quant_mix_model_t *m,
                               const char *name, uint64_t ne0)
{
    pd_ggml_type_t t = PD_GGML_TYPE_F32;
    pd_err_t err = {0};
    assert_int_equal(pd_quant_mix_type(mix, PD_GGML_TYPE_F32, m, name, ne0, &t, &err), 0);
    return t;
}

static void test_quant_mix_rules(void **state)
{
    (void)state;
    /* TinyLlama-1.1B: 22 layers, 32 heads, 4 KV heads */
    const pd_quant_mix_model_t tl = {22, 32, 4, false};
    const int more_bits[] = {0, 1, 4, 7, 10, 13, 16, 19, 20, 21}; /* use_more_bits(i, 22) */
    char n[64];
    for (int l = 0; l < 22; l++) {
        bool more = false;
        for (size_t k = 0; k < sizeof more_bits / sizeof more_bits[0]; k++)
            more = more || more_bits[k] == l;
        const pd_ggml_type_t want = more ? PD_GGML_TYPE_Q6_K : PD_GGML_TYPE_Q4_K;
        snprintf(n, sizeof n, "blk.%d.attn_v.weight", l);
        assert_int_equal(mix_type(PD_MIX_Q4_K_M, &tl, n, 2048), want);
        snprintf(n, sizeof n, "blk.%d.ffn_down.weight", l);
        assert_int_equal(mix_type(PD_MIX_Q4_K_M, &tl, n, 5632), want);
        assert_int_equal(mix_type(PD_MIX_Q5_K_M, &tl, n, 5632),
                         more ? PD_GGML_TYPE_Q6_K : PD_GGML_TYPE_Q5_K);
        assert_int_equal(mix_type(PD_MIX_Q4_K_S, &tl, n, 5632),
                         l < 2 ? PD_GGML_TYPE_Q5_K : PD_GGML_TYPE_Q4_K);
        assert_int_equal(mix_type(PD_MIX_Q3_K_M, &tl, n, 5632),
                         l < 1 ? PD_GGML_TYPE_Q5_K : PD_GGML_TYPE_Q4_K);
        snprintf(n, sizeof n, "blk.%d.attn_v.weight", l);
        assert_int_equal(mix_type(PD_MIX_Q3_K_M, &tl, n, 2048),
                         l < 2 ? PD_GGML_TYPE_Q5_K : PD_GGML_TYPE_Q4_K);
        assert_int_equal(mix_type(PD_MIX_Q4_K_S, &tl, n, 2048),
                         l < 4 ? PD_GGML_TYPE_Q5_K : PD_GGML_TYPE_Q4_K);
        assert_int_equal(mix_type(PD_MIX_Q2_K, &tl, n, 2048), PD_GGML_TYPE_Q4_K); /* GQA 8 */
        assert_int_equal(mix_type(PD_MIX_IQ4_NL, &tl, n, 2048), PD_GGML_TYPE_Q5_K);
        snprintf(n, sizeof n, "blk.%d.attn_q.weight", l);
        assert_int_equal(mix_type(PD_MIX_Q4_K_M, &tl, n, 2048), PD_GGML_TYPE_Q4_K);
        assert_int_equal(mix_type(PD_MIX_Q2_K, &tl, n, 2048), PD_GGML_TYPE_Q2_K);
        snprintf(n, sizeof n, "blk.%d.attn_output.weight", l);
        assert_int_equal(mix_type(PD_MIX_Q2_K, &tl, n, 2048), PD_GGML_TYPE_Q3_K);
        assert_int_equal(mix_type(PD_MIX_Q3_K_M, &tl, n, 2048), PD_GGML_TYPE_Q4_K);
        assert_int_equal(mix_type(PD_MIX_Q3_K_L, &tl, n, 2048), PD_GGML_TYPE_Q5_K);
        assert_int_equal(mix_type(PD_MIX_Q3_K_S, &tl, n, 2048), PD_GGML_TYPE_Q3_K);
    }
    assert_int_equal(mix_type(PD_MIX_Q4_K_M, &tl, "output.weight", 2048), PD_GGML_TYPE_Q6_K);
    assert_int_equal(mix_type(PD_MIX_Q2_K, &tl, "output.weight", 2048), PD_GGML_TYPE_Q6_K);
    assert_int_equal(mix_type(PD_MIX_Q4_K_M, &tl, "token_embd.weight", 2048), PD_GGML_TYPE_Q4_K);
    assert_int_equal(mix_type(PD_MIX_Q2_K, &tl, "blk.3.ffn_down.weight", 5632), PD_GGML_TYPE_Q3_K);
    assert_int_equal(mix_type(PD_MIX_IQ4_NL, &tl, "blk.1.ffn_down.weight", 5632),
                     PD_GGML_TYPE_Q5_K);
    assert_int_equal(mix_type(PD_MIX_IQ4_NL, &tl, "blk.3.ffn_down.weight", 5632),
                     PD_GGML_TYPE_IQ4_NL);
    /* tied: token_embd is the output, in Q6_K */
    const pd_quant_mix_model_t tied = {22, 32, 4, true};
    assert_int_equal(mix_type(PD_MIX_Q4_K_M, &tied, "token_embd.weight", 2048), PD_GGML_TYPE_Q6_K);
    /* GQA 2: Q2_K's attn_v is Q3_K, IQ4_NL's stays */
    const pd_quant_mix_model_t g2 = {4, 4, 2, false};
    assert_int_equal(mix_type(PD_MIX_Q2_K, &g2, "blk.0.attn_v.weight", 256), PD_GGML_TYPE_Q3_K);
    assert_int_equal(mix_type(PD_MIX_IQ4_NL, &g2, "blk.0.attn_v.weight", 256),
                     PD_GGML_TYPE_IQ4_NL);
    /* pure: every weight in the one type; shape fallbacks as llama.cpp's */
    pd_ggml_type_t t;
    pd_err_t err = {0};
    assert_int_equal(pd_quant_mix_type(PD_MIX_PURE, PD_GGML_TYPE_Q4_K, &tl, "output.weight", 2048,
                                       &t, &err), 0);
    assert_int_equal(t, PD_GGML_TYPE_Q4_K);
    assert_int_equal(pd_quant_mix_type(PD_MIX_PURE, PD_GGML_TYPE_Q6_K, &tl, "x.weight", 128, &t,
                                       &err), 0);
    assert_int_equal(t, PD_GGML_TYPE_Q8_0);
    assert_int_equal(pd_quant_mix_type(PD_MIX_PURE, PD_GGML_TYPE_Q2_K, &tl, "x.weight", 96, &t,
                                       &err), 0);
    assert_int_equal(t, PD_GGML_TYPE_Q4_0);
    assert_int_equal(pd_quant_mix_type(PD_MIX_PURE, PD_GGML_TYPE_Q6_K, &tl, "x.weight", 40, &t,
                                       &err), 0);
    assert_int_equal(t, PD_GGML_TYPE_F16);
    assert_int_equal(pd_quant_mix_type(PD_MIX_PURE, PD_GGML_TYPE_Q4_K, &tl, "x.weight", 128, &t,
                                       &err), PD_EUNSUPPORTED);
    assert_non_null(strstr(err.msg, "q5_0"));
    assert_int_equal(pd_quant_mix_type(PD_MIX_Q5_K_M, PD_GGML_TYPE_F32, &tl, "x.weight", 128, &t,
                                       &err), PD_EUNSUPPORTED);
    assert_non_null(strstr(err.msg, "q5_1"));
    assert_int_equal(pd_quant_mix_type(PD_MIX_PURE, PD_GGML_TYPE_Q8_0, &tl, "x.weight", 48, &t,
                                       &err), PD_EUNSUPPORTED);
    /* names */
    pd_quant_mix_t m;
    assert_int_equal(pd_quant_mix_parse("q4_k_m", &m), 0);
    assert_int_equal(m, PD_MIX_Q4_K_M);
    assert_int_equal(pd_quant_mix_parse("q4_k", &m), PD_EINVAL);
    assert_int_equal(pd_quant_mix_base(PD_MIX_Q3_K_L), PD_GGML_TYPE_Q3_K);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dequant_avx2_matches_ref),
        cmocka_unit_test(test_dequant_matches_layout),
        cmocka_unit_test(test_roundtrip_error_bounds),
        cmocka_unit_test(test_q8k_avx2_matches_ref),
        cmocka_unit_test(test_skinny_vs_ref),
        cmocka_unit_test(test_skinny_batch_invariant),
        cmocka_unit_test(test_skinny_avx512_matches_avx2),
        cmocka_unit_test(test_skinny_avx512_far_rows),
        cmocka_unit_test(test_matmul_paths),
        cmocka_unit_test(test_find_bad_scale),
        cmocka_unit_test(test_quant_mix_rules),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
