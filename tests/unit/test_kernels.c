/* test_kernels.c -- the kernels against their references and ggml's
 * definitions: conversions (exhaustive over fp16/bf16), Q8_0/Q4_0 block
 * formats on hand-computed blocks, the AVX2 skinny matmul against the plain
 * C one on odd sizes, pd_matmul's sgemm path, and the vector kernels against
 * double-precision formulas. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/kernels.h"
#include "engine/pool.h"

/* ====== Helpers ====== */

typedef struct {
    uint64_t s;
} rng_t;

static uint32_t rng_u32(rng_t *r)
{
    r->s ^= r->s << 13;
    r->s ^= r->s >> 7;
    r->s ^= r->s << 17;
    return (uint32_t)(r->s >> 16);
}

/* Uniform in [-1, 1). */
static float rng_f(rng_t *r)
{
    return (float)(rng_u32(r) & 0xffffff) / 8388608.0f - 1.0f;
}

static uint32_t f2u(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float u2f(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static bool avx2(void)
{
    return pd_kern_has_avx2();
}

static const uint32_t Q8_BYTES = 34, Q4_BYTES = 18;

static size_t row_bytes(pd_ggml_type_t t, uint32_t n)
{
    switch (t) {
    case PD_GGML_TYPE_F32: return (size_t)n * 4;
    case PD_GGML_TYPE_F16:
    case PD_GGML_TYPE_BF16: return (size_t)n * 2;
    case PD_GGML_TYPE_Q8_0: return (size_t)n / 32 * Q8_BYTES;
    case PD_GGML_TYPE_Q4_0: return (size_t)n / 32 * Q4_BYTES;
    default: return (size_t)pd_ggml_row_bytes(t, n); /* K-quants: test_quants_k.c */
    }
}

/* n_out rows of n_in random weights in type t (from fp32 values). */
static uint8_t *make_w(pd_ggml_type_t t, uint32_t n_out, uint32_t n_in, rng_t *r)
{
    size_t rb = row_bytes(t, n_in);
    uint8_t *w = malloc(rb * n_out + 1);
    float *tmp = malloc(sizeof(float) * n_in);
    assert_non_null(w);
    assert_non_null(tmp);
    for (uint32_t o = 0; o < n_out; o++) {
        for (uint32_t i = 0; i < n_in; i++)
            tmp[i] = rng_f(r);
        uint8_t *dst = w + o * rb;
        for (uint32_t i = 0; i < n_in; i++) {
            uint16_t h;
            switch (t) {
            case PD_GGML_TYPE_F32: memcpy(dst + 4 * i, &tmp[i], 4); break;
            case PD_GGML_TYPE_F16:
                h = pd_fp32_to_fp16(tmp[i]);
                memcpy(dst + 2 * i, &h, 2);
                break;
            case PD_GGML_TYPE_BF16:
                h = pd_fp32_to_bf16(tmp[i]);
                memcpy(dst + 2 * i, &h, 2);
                break;
            default: break;
            }
        }
        if (t == PD_GGML_TYPE_Q8_0)
            pd_quant_row_q8_0(tmp, dst, n_in);
        if (t == PD_GGML_TYPE_Q4_0)
            pd_quant_row_q4_0(tmp, dst, n_in);
    }
    free(tmp);
    return w;
}

static float *make_f(size_t n, rng_t *r)
{
    float *p = malloc(sizeof(float) * (n ? n : 1));
    assert_non_null(p);
    for (size_t i = 0; i < n; i++)
        p[i] = rng_f(r);
    return p;
}

/* Sum over i of |W[o][i] * x[r][i]| (dequantized weights; for quantized
 * weights, the quantized activations) -- the scale of the rounding error. */
static double abs_terms(const pd_mat_t *w, uint32_t o, const float *xr, const uint8_t *xqr)
{
    float *wd = malloc(sizeof(float) * w->n_in);
    assert_non_null(wd);
    pd_dequant_row_ref(w->type, (const uint8_t *)w->data + o * w->row_bytes, wd, w->n_in);
    double s = 0.0;
    if (xqr) {
        float *xd = malloc(sizeof(float) * w->n_in);
        assert_non_null(xd);
        pd_dequant_row_ref(PD_GGML_TYPE_Q8_0, xqr, xd, w->n_in);
        for (uint32_t i = 0; i < w->n_in; i++)
            s += fabs((double)wd[i] * xd[i]);
        free(xd);
    } else {
        for (uint32_t i = 0; i < w->n_in; i++)
            s += fabs((double)wd[i] * xr[i]);
    }
    free(wd);
    return s;
}

/* ====== Conversions ====== */

static bool is_nan16(uint16_t h)
{
    return (h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0;
}

static void test_fp16_roundtrip_exhaustive(void **state)
{
    (void)state;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = pd_fp16_to_fp32((uint16_t)h);
        uint16_t back = pd_fp32_to_fp16(f);
        if (is_nan16((uint16_t)h)) {
            assert_true(isnan(f));
            assert_true(is_nan16(back));
        } else {
            assert_int_equal(back, h);
        }
    }
}

static void test_fp16_known_values(void **state)
{
    (void)state;
    assert_int_equal(pd_fp32_to_fp16(1.0f), 0x3c00);
    assert_int_equal(pd_fp32_to_fp16(-2.0f), 0xc000);
    assert_int_equal(pd_fp32_to_fp16(65504.0f), 0x7bff);
    assert_int_equal(pd_fp32_to_fp16(65519.99f), 0x7bff);
    assert_int_equal(pd_fp32_to_fp16(65520.0f), 0x7c00); /* tie -> even = inf */
    assert_int_equal(pd_fp32_to_fp16(1e10f), 0x7c00);
    assert_int_equal(pd_fp32_to_fp16(INFINITY), 0x7c00);
    assert_int_equal(pd_fp32_to_fp16(-INFINITY), 0xfc00);
    assert_int_equal(pd_fp32_to_fp16(-0.0f), 0x8000);
    assert_int_equal(pd_fp32_to_fp16(0x1p-24f), 0x0001);      /* smallest subnormal */
    assert_int_equal(pd_fp32_to_fp16(0x1p-25f), 0x0000);      /* tie -> even (0) */
    assert_int_equal(pd_fp32_to_fp16(0x1.8p-24f), 0x0002);    /* 1.5 ulp: tie -> 2 */
    assert_int_equal(pd_fp32_to_fp16(0x1p-14f), 0x0400);      /* smallest normal */
    assert_int_equal(pd_fp32_to_fp16(1.0f + 0x1p-11f), 0x3c00); /* tie -> even */
    assert_int_equal(pd_fp32_to_fp16(1.0f + 0x1.8p-10f), 0x3c02); /* tie -> even (up) */
    assert_true(is_nan16(pd_fp32_to_fp16(NAN)));
    assert_true(pd_fp16_to_fp32(0x0001) == 0x1p-24f);
    assert_true(pd_fp16_to_fp32(0x7bff) == 65504.0f);
    assert_true(isinf(pd_fp16_to_fp32(0xfc00)) && pd_fp16_to_fp32(0xfc00) < 0);
    assert_true(isnan(pd_fp16_to_fp32(0x7e00)));
}

__attribute__((target("f16c"))) static uint16_t hw_fp32_to_fp16(float f)
{
    return (uint16_t)_mm_extract_epi16(_mm_cvtps_ph(_mm_set_ss(f), 0), 0);
}

__attribute__((target("f16c"))) static float hw_fp16_to_fp32(uint16_t h)
{
    return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h)));
}

/* Bitwise agreement with the F16C instructions: every fp16 value, every
 * float around every fp16 rounding boundary, and a sweep of 2^32 / 4099
 * float bit patterns. */
static void test_fp16_matches_f16c(void **state)
{
    (void)state;
    if (!avx2()) /* implies F16C */
        skip();
    for (uint32_t h = 0; h < 65536; h++) {
        assert_int_equal(f2u(pd_fp16_to_fp32((uint16_t)h)), f2u(hw_fp16_to_fp32((uint16_t)h)));
        /* midpoint between h and h+1 (as floats), and its neighbours */
        if ((h & 0x7fff) >= 0x7c00)
            continue;
        float a = pd_fp16_to_fp32((uint16_t)h);
        float b = pd_fp16_to_fp32((uint16_t)(h + 1));
        if (isnan(b))
            continue;
        float mid = (float)(((double)a + (double)b) / 2.0);
        for (int d = -2; d <= 2; d++) {
            float f = u2f(f2u(mid) + (uint32_t)d);
            assert_int_equal(pd_fp32_to_fp16(f), hw_fp32_to_fp16(f));
        }
    }
    for (uint64_t u = 0; u < (1ull << 32); u += 4099) {
        float f = u2f((uint32_t)u);
        assert_int_equal(pd_fp32_to_fp16(f), hw_fp32_to_fp16(f));
    }
}

static void test_bf16(void **state)
{
    (void)state;
    assert_int_equal(pd_fp32_to_bf16(1.0f), 0x3f80);
    assert_int_equal(pd_fp32_to_bf16(u2f(0x3f808000)), 0x3f80); /* tie -> even */
    assert_int_equal(pd_fp32_to_bf16(u2f(0x3f818000)), 0x3f82); /* tie -> even (up) */
    assert_int_equal(pd_fp32_to_bf16(u2f(0x3f808001)), 0x3f81);
    assert_int_equal(pd_fp32_to_bf16(u2f(0x7f800001)), 0x7fc0); /* NaN made quiet */
    assert_int_equal(pd_fp32_to_bf16(-INFINITY), 0xff80);
    assert_int_equal(pd_fp32_to_bf16(u2f(0x00018000)), 0x0002); /* subnormal kept */
    for (uint32_t h = 0; h < 65536; h++) {
        float f = pd_bf16_to_fp32((uint16_t)h);
        assert_int_equal(f2u(f), h << 16);
        if (!isnan(f))
            assert_int_equal(pd_fp32_to_bf16(f), h);
    }
}

/* ====== Block formats ====== */

/* x[j] = j - 16: amax 16, d = 16/127 -> fp16 0x3008 (0.1259765625),
 * q = roundf(x * 127/16) (half away from zero). */
static void test_q8_0_block(void **state)
{
    (void)state;
    float x[32];
    uint8_t blk[34];
    for (int j = 0; j < 32; j++)
        x[j] = (float)(j - 16);
    pd_quant_row_q8_0(x, blk, 32);
    uint16_t d;
    memcpy(&d, blk, 2);
    assert_int_equal(d, 0x3008);
    assert_int_equal((int8_t)blk[2 + 0], -127);  /* -16 */
    assert_int_equal((int8_t)blk[2 + 1], -119);  /* -15 * 7.9375 = -119.06 */
    assert_int_equal((int8_t)blk[2 + 16], 0);    /* 0 */
    assert_int_equal((int8_t)blk[2 + 17], 8);    /* 7.9375 */
    assert_int_equal((int8_t)blk[2 + 31], 119);  /* 15 */
    float back[32];
    pd_dequant_row_ref(PD_GGML_TYPE_Q8_0, blk, back, 32);
    assert_true(back[0] == -127.0f * 0.1259765625f);
    assert_true(back[17] == 8.0f * 0.1259765625f);

    /* amax 127 -> d = 1: ties round away from zero in the model-file
     * quantizer, to even in the activation quantizer (ggml's AVX2 path). */
    for (int j = 0; j < 32; j++)
        x[j] = 0.0f;
    x[0] = 127.0f;
    x[1] = 2.5f;
    x[2] = -2.5f;
    x[3] = 3.5f;
    pd_quant_row_q8_0(x, blk, 32);
    memcpy(&d, blk, 2);
    assert_int_equal(d, 0x3c00);
    assert_int_equal((int8_t)blk[3], 3);
    assert_int_equal((int8_t)blk[4], -3);
    assert_int_equal((int8_t)blk[5], 4);
    pd_kern_prepare_x_ref(PD_GGML_TYPE_Q8_0, x, 32, 32, 1, blk);
    assert_int_equal((int8_t)blk[2], 127);
    assert_int_equal((int8_t)blk[3], 2);
    assert_int_equal((int8_t)blk[4], -2);
    assert_int_equal((int8_t)blk[5], 4);

    /* an all-zero block: d = 0, q = 0 */
    memset(x, 0, sizeof(x));
    pd_quant_row_q8_0(x, blk, 32);
    for (int j = 0; j < 34; j++)
        assert_int_equal(blk[j], 0);
}

/* Largest magnitude -8 -> d = -8/-8 = 1 (0x3c00), q = min(15, (int8)(x + 8.5)). */
static void test_q4_0_block(void **state)
{
    (void)state;
    float x[32] = {0};
    uint8_t blk[18];
    x[0] = -8.0f; /* q 0 */
    x[1] = 7.0f;  /* q 15 */
    x[2] = 7.6f;  /* 16.1 -> clamped to 15 */
    x[3] = -0.6f; /* 7.9 -> 7 */
    x[4] = 0.4f;  /* 8.9 -> 8 */
    x[16] = 0.0f; /* q 8 */
    x[17] = 3.0f; /* q 11 */
    x[18] = -7.5f; /* 1.0 -> 1 */
    pd_quant_row_q4_0(x, blk, 32);
    uint16_t d;
    memcpy(&d, blk, 2);
    assert_int_equal(d, 0x3c00);
    assert_int_equal(blk[2 + 0], 0x80); /* low: q[0] = 0, high: q[16] = 8 */
    assert_int_equal(blk[2 + 1], 0xbf); /* low: 15, high: q[17] = 11 */
    assert_int_equal(blk[2 + 2], 0x1f); /* low: 15, high: q[18] = 1 */
    assert_int_equal(blk[2 + 3], 0x87); /* low: 7, high: 8 */
    assert_int_equal(blk[2 + 4], 0x88);
    float back[32];
    pd_dequant_row_ref(PD_GGML_TYPE_Q4_0, blk, back, 32);
    assert_true(back[0] == -8.0f);
    assert_true(back[1] == 7.0f);
    assert_true(back[3] == -1.0f);
    assert_true(back[16] == 0.0f);
    assert_true(back[17] == 3.0f);
    assert_true(back[18] == -7.0f);

    /* the largest magnitude positive: d = 4/-8 = -0.5 (0xb800) */
    memset(x, 0, sizeof(x));
    x[5] = 4.0f;  /* 4 / -0.5 = -8 -> 0.5 -> q 0 */
    x[6] = -4.0f; /* 16.5 -> 16 -> clamped 15 */
    pd_quant_row_q4_0(x, blk, 32);
    memcpy(&d, blk, 2);
    assert_int_equal(d, 0xb800);
    assert_int_equal(blk[2 + 5] & 0x0f, 0);
    assert_int_equal(blk[2 + 6] & 0x0f, 15);
    pd_dequant_row_ref(PD_GGML_TYPE_Q4_0, blk, back, 32);
    assert_true(back[5] == 4.0f);
    assert_true(back[6] == -3.5f);
}

static void test_dequant_avx2_matches_ref(void **state)
{
    (void)state;
    if (!avx2())
        skip();
    rng_t r = {88172645463325252ull};
    const pd_ggml_type_t types[] = {PD_GGML_TYPE_F32, PD_GGML_TYPE_F16, PD_GGML_TYPE_BF16,
                                    PD_GGML_TYPE_Q8_0, PD_GGML_TYPE_Q4_0};
    const uint32_t n = 4096 + 32;
    float *a = malloc(n * 4), *b = malloc(n * 4);
    assert_non_null(a);
    assert_non_null(b);
    for (size_t t = 0; t < sizeof(types) / sizeof(types[0]); t++) {
        for (uint32_t len = 32; len <= n; len += 4064) {
            uint8_t *w = make_w(types[t], 1, len, &r);
            pd_dequant_row_ref(types[t], w, a, len);
            pd_dequant_row_avx2(types[t], w, b, len);
            assert_memory_equal(a, b, len * 4);
            free(w);
        }
    }
    /* odd lengths for the float types */
    for (size_t t = 0; t < 3; t++) {
        uint8_t *w = make_w(types[t], 1, 13, &r);
        pd_dequant_row_ref(types[t], w, a, 13);
        pd_dequant_row_avx2(types[t], w, b, 13);
        assert_memory_equal(a, b, 13 * 4);
        free(w);
    }
    free(a);
    free(b);
}

static void test_prepare_x_avx2_matches_ref(void **state)
{
    (void)state;
    if (!avx2())
        skip();
    rng_t r = {0x1234567ull};
    const uint32_t n_in = 4096 + 32, n_rows = 3, stride = n_in + 5;
    float *x = make_f((size_t)stride * n_rows, &r);
    for (uint32_t i = 0; i < 32; i++)
        x[i] = 0.0f; /* a zero block */
    for (uint32_t i = 32; i < 64; i++)
        x[i] = (float)((int)i - 48) * 0.5f; /* -8 .. 7.5 */
    x[64] = 127.0f;
    for (uint32_t i = 65; i < 96; i++)
        x[i] = (float)((int)i - 80) + 0.5f; /* exact .5 ties with d = 1 */
    size_t bytes = pd_kern_xq_bytes(PD_GGML_TYPE_Q8_0, n_in, n_rows);
    assert_int_equal(bytes, (size_t)n_rows * (n_in / 32) * 34);
    uint8_t *a = malloc(bytes), *b = malloc(bytes);
    assert_non_null(a);
    assert_non_null(b);
    pd_kern_prepare_x_ref(PD_GGML_TYPE_Q8_0, x, stride, n_in, n_rows, a);
    pd_kern_prepare_x_avx2(PD_GGML_TYPE_Q4_0, x, stride, n_in, n_rows, b);
    assert_memory_equal(a, b, bytes);
    assert_int_equal((int8_t)a[34 * 2 + 2 + 1], -14); /* -14.5 -> even */
    assert_int_equal(pd_kern_xq_bytes(PD_GGML_TYPE_F16, n_in, n_rows), 0);
    free(a);
    free(b);
    free(x);
}

/* ====== Skinny matmul ====== */

typedef struct {
    pd_ggml_type_t type;
    uint32_t n_in, n_out, n_rows;
} shape_t;

typedef void (*skinny_fn)(const pd_mat_t *, uint32_t, uint32_t, const float *, uint32_t,
                          const void *, uint32_t, float *, uint32_t);
/* The SIMD skinny kernels this CPU can run, each tested against the
 * reference; check_skinny and the invariance test use g_skinny. */
static skinny_fn g_skinny = pd_kern_skinny_avx2;
static const char *g_skinny_name = "avx2";

static int n_simd_kernels(void)
{
    return pd_kern_isa() >= PD_ISA_AVX512 ? 2 : pd_kern_isa() >= PD_ISA_AVX2 ? 1 : 0;
}

static void use_simd_kernel(int i)
{
    g_skinny = i == 0 ? pd_kern_skinny_avx2 : pd_kern_skinny_avx512;
    g_skinny_name = i == 0 ? "avx2" : "avx512";
}

/* Runs the AVX2 skinny kernel over [o0, o1) with padded strides and checks
 * it against the reference (and that nothing outside was written). */
static void check_skinny(pd_ggml_type_t t, uint32_t n_in, uint32_t n_out, uint32_t n_rows,
                         uint32_t o0, uint32_t o1, rng_t *r)
{
    const uint32_t xs = n_in + 3, ys = n_out + 2;
    uint8_t *wd = make_w(t, n_out, n_in, r);
    pd_mat_t w = {wd, t, n_out, n_in, row_bytes(t, n_in)};
    float *x = make_f((size_t)xs * n_rows, r);
    size_t xqb = pd_kern_xq_bytes(t, n_in, n_rows);
    uint8_t *xq = xqb ? malloc(xqb) : NULL;
    if (xqb) {
        assert_non_null(xq);
        pd_kern_prepare_x(t, x, xs, n_in, n_rows, xq);
    }
    float *ya = malloc(sizeof(float) * ys * n_rows), *yr = malloc(sizeof(float) * ys * n_rows);
    assert_non_null(ya);
    assert_non_null(yr);
    for (size_t i = 0; i < (size_t)ys * n_rows; i++)
        ya[i] = yr[i] = 12345.0f;
    g_skinny(&w, o0, o1, x, xs, xq, n_rows, ya, ys);
    pd_kern_skinny_ref(&w, o0, o1, x, xs, xq, n_rows, yr, ys);
    const size_t xq_rb = (size_t)n_in / 32 * 34;
    for (uint32_t rr = 0; rr < n_rows; rr++) {
        for (uint32_t o = 0; o < ys; o++) {
            float a = ya[rr * ys + o], b = yr[rr * ys + o];
            if (o < o0 || o >= o1) {
                assert_true(a == 12345.0f);
                continue;
            }
            double scale = abs_terms(&w, o, x + (size_t)rr * xs, xq ? xq + rr * xq_rb : NULL);
            double tol = 1e-5 * scale + 1e-30;
            if (!(fabs((double)a - (double)b) <= tol)) {
                print_error("type %d n_in %u n_out %u n_rows %u: y[%u][%u] %s %.9g ref %.9g "
                            "tol %.3g\n", t, n_in, n_out, n_rows, rr, o, g_skinny_name, a, b, tol);
                fail();
            }
        }
    }
    free(ya);
    free(yr);
    free(xq);
    free(x);
    free(wd);
}

static void test_skinny_float_types(void **state)
{
    (void)state;
    if (!avx2())
        skip();
    rng_t r = {0xdeadbeefull};
    const pd_ggml_type_t types[] = {PD_GGML_TYPE_F32, PD_GGML_TYPE_F16, PD_GGML_TYPE_BF16};
    const uint32_t n_ins[] = {1, 7, 33, 1000};
    const uint32_t n_outs[] = {1, 3, 17, 100};
    const uint32_t n_rows[] = {1, 2, 3, 5, 8, 13, 32, 64};
    for (int isa = 0; isa < n_simd_kernels(); isa++) {
        use_simd_kernel(isa);
        for (size_t t = 0; t < 3; t++)
            for (size_t i = 0; i < 4; i++)
                for (size_t o = 0; o < 4; o++)
                    for (size_t k = 0; k < 8; k++)
                        check_skinny(types[t], n_ins[i], n_outs[o], n_rows[k], 0, n_outs[o], &r);
    }
    use_simd_kernel(0);
}

static void test_skinny_quant_types(void **state)
{
    (void)state;
    if (!avx2())
        skip();
    rng_t r = {0xfeedfaceull};
    const pd_ggml_type_t types[] = {PD_GGML_TYPE_Q8_0, PD_GGML_TYPE_Q4_0};
    const uint32_t n_ins[] = {32, 96, 4096 + 32};
    const uint32_t n_outs[] = {1, 3, 17, 100};
    const uint32_t n_rows[] = {1, 2, 3, 5, 8, 13, 32, 64};
    for (int isa = 0; isa < n_simd_kernels(); isa++) {
        use_simd_kernel(isa);
        for (size_t t = 0; t < 2; t++)
            for (size_t i = 0; i < 3; i++)
                for (size_t o = 0; o < 4; o++)
                    for (size_t k = 0; k < 8; k++) {
                        if (n_ins[i] > 1000 && n_outs[o] * n_rows[k] > 17 * 13)
                            continue; /* keep the reference cheap */
                        check_skinny(types[t], n_ins[i], n_outs[o], n_rows[k], 0, n_outs[o], &r);
                    }
        /* the big n_in with a full batch, once per type */
        check_skinny(PD_GGML_TYPE_Q8_0, 4096 + 32, 20, 64, 0, 20, &r);
        check_skinny(PD_GGML_TYPE_Q4_0, 4096 + 32, 20, 64, 0, 20, &r);
    }
    use_simd_kernel(0);
}

/* A sub-range of output rows (task split) writes only those rows. */
static void test_skinny_subrange(void **state)
{
    (void)state;
    if (!avx2())
        skip();
    rng_t r = {0xabcdefull};
    for (int isa = 0; isa < n_simd_kernels(); isa++) {
        use_simd_kernel(isa);
        check_skinny(PD_GGML_TYPE_F32, 1000, 100, 5, 17, 83, &r);
        check_skinny(PD_GGML_TYPE_F16, 33, 40, 13, 1, 2, &r);
        check_skinny(PD_GGML_TYPE_Q8_0, 96, 50, 8, 16, 49, &r);
        check_skinny(PD_GGML_TYPE_Q4_0, 96, 50, 3, 5, 6, &r);
        check_skinny(PD_GGML_TYPE_BF16, 1000, 30, 70, 0, 30, &r); /* > 64 rows: sliced */
    }
    use_simd_kernel(0);
}

/* y[r] computed in a batch of n_rows is bitwise the y[r] computed alone. */
static void test_skinny_batch_invariant(void **state)
{
    (void)state;
    if (!avx2())
        skip();
    rng_t r = {0x5eedull};
    const pd_ggml_type_t types[] = {PD_GGML_TYPE_F32, PD_GGML_TYPE_F16, PD_GGML_TYPE_BF16,
                                    PD_GGML_TYPE_Q8_0, PD_GGML_TYPE_Q4_0};
    const uint32_t n_in = 4096 + 32 + 64, n_out = 37, n_rows = 13;
    for (int isa = 0; isa < n_simd_kernels(); isa++)
    for (size_t t = 0; t < 5; t++) {
        use_simd_kernel(isa);
        uint8_t *wd = make_w(types[t], n_out, n_in, &r);
        pd_mat_t w = {wd, types[t], n_out, n_in, row_bytes(types[t], n_in)};
        float *x = make_f((size_t)n_in * n_rows, &r);
        size_t xqb = pd_kern_xq_bytes(types[t], n_in, n_rows);
        uint8_t *xq = xqb ? malloc(xqb) : NULL;
        if (xq)
            pd_kern_prepare_x(types[t], x, n_in, n_in, n_rows, xq);
        float *yb = malloc(sizeof(float) * n_out * n_rows), *y1 = malloc(sizeof(float) * n_out);
        assert_non_null(yb);
        assert_non_null(y1);
        g_skinny(&w, 0, n_out, x, n_in, xq, n_rows, yb, n_out);
        for (uint32_t rr = 0; rr < n_rows; rr++) {
            const uint8_t *xqr = xq ? xq + (size_t)rr * (xqb / n_rows) : NULL;
            g_skinny(&w, 0, n_out, x + (size_t)rr * n_in, n_in, xqr, 1, y1, n_out);
            assert_memory_equal(y1, yb + (size_t)rr * n_out, n_out * sizeof(float));
            if (xq && n_simd_kernels() == 2) { /* VNNI: the AVX2 kernel's bits */
                const skinny_fn other = g_skinny == pd_kern_skinny_avx2 ? pd_kern_skinny_avx512
                                                                        : pd_kern_skinny_avx2;
                float y2[37];
                other(&w, 0, n_out, x + (size_t)rr * n_in, n_in, xqr, 1, y2, n_out);
                assert_memory_equal(y1, y2, n_out * sizeof(float));
            }
        }
        free(y1);
        free(yb);
        free(xq);
        free(x);
        free(wd);
    }
    use_simd_kernel(0);
}

/* ====== pd_matmul ====== */

/* pd_matmul (skinny or sgemm path, with a pool) against a double-precision
 * product of the dequantized weights. For quantized weights the skinny path
 * and the integer prefill kernel quantize x, so the reference uses the
 * quantized x too. */
static void check_matmul(pd_pool_t *pool, pd_ggml_type_t t, uint32_t n_in, uint32_t n_out,
                         uint32_t n_rows, uint32_t skinny_max, rng_t *r)
{
    uint8_t *wd = make_w(t, n_out, n_in, r);
    pd_mat_t w = {wd, t, n_out, n_in, row_bytes(t, n_in)};
    float *x = make_f((size_t)n_in * n_rows, r);
    float *y = malloc(sizeof(float) * n_out * n_rows);
    size_t sb = pd_matmul_scratch_bytes(&w, n_rows);
    void *scratch = aligned_alloc(64, sb ? sb : 64);
    assert_non_null(y);
    assert_non_null(scratch);
    pd_matmul(pool, &w, x, n_rows, y, scratch, skinny_max);
    const bool quant = t == PD_GGML_TYPE_Q8_0 || t == PD_GGML_TYPE_Q4_0;
    const bool skinny = n_rows <= skinny_max && (!quant || n_rows <= PD_SKINNY_QUANT_MAX);
    /* the integer prefill kernel quantizes x too (pd_kern_qg_takes) */
    const bool quant_x = skinny || pd_kern_qg_takes(&w, n_rows);
    float *wrow = malloc(sizeof(float) * n_in), *xrow = malloc(sizeof(float) * n_in);
    uint8_t *xq = malloc((size_t)n_in / 32 * 34 + 1);
    assert_non_null(wrow);
    assert_non_null(xrow);
    assert_non_null(xq);
    for (uint32_t rr = 0; rr < n_rows; rr++) {
        if (quant_x && quant) {
            pd_kern_prepare_x_ref(t, x + (size_t)rr * n_in, n_in, n_in, 1, xq);
            pd_dequant_row_ref(PD_GGML_TYPE_Q8_0, xq, xrow, n_in);
        } else {
            memcpy(xrow, x + (size_t)rr * n_in, sizeof(float) * n_in);
        }
        for (uint32_t o = 0; o < n_out; o++) {
            pd_dequant_row_ref(t, wd + o * w.row_bytes, wrow, n_in);
            double s = 0.0, sa = 0.0;
            for (uint32_t i = 0; i < n_in; i++) {
                s += (double)wrow[i] * xrow[i];
                sa += fabs((double)wrow[i] * xrow[i]);
            }
            double got = y[(size_t)rr * n_out + o];
            if (!(fabs(got - s) <= 1e-5 * sa + 1e-30)) {
                print_error("matmul type %d %ux%u rows %u skinny_max %u: y[%u][%u] %.9g want "
                            "%.9g\n", t, n_out, n_in, n_rows, skinny_max, rr, o, got, s);
                fail();
            }
        }
    }
    free(xq);
    free(wrow);
    free(xrow);
    free(scratch);
    free(y);
    free(x);
    free(wd);
}

static void test_matmul_paths(void **state)
{
    (void)state;
    rng_t r = {0x77777ull};
    pd_pool_t *pool = pd_pool_new(2);
    assert_non_null(pool);
    const pd_ggml_type_t types[] = {PD_GGML_TYPE_F32, PD_GGML_TYPE_F16, PD_GGML_TYPE_BF16,
                                    PD_GGML_TYPE_Q8_0, PD_GGML_TYPE_Q4_0};
    for (size_t t = 0; t < 5; t++) {
        const bool quant = t >= 3;
        const uint32_t n_in = quant ? 96 : 33;
        /* sgemm path (skinny_max 0), with a tail tile of dequantized rows */
        check_matmul(pool, types[t], n_in, PD_MATMUL_DEQ_TILE_ROWS + 37, 3, 0, &r);
        check_matmul(pool, types[t], n_in, 17, 70, 64, &r);
        check_matmul(NULL, types[t], n_in, 5, 1, 0, &r);
        /* skinny path split over the pool */
        check_matmul(pool, types[t], n_in, 300, 7, 64, &r);
        check_matmul(NULL, types[t], n_in, 300, 1, 64, &r);
    }
    /* quantized weights past PD_SKINNY_QUANT_MAX rows take the sgemm path
     * (its reference uses the unquantized x: the paths differ by ~1%) */
    check_matmul(pool, PD_GGML_TYPE_Q8_0, 96, 30, PD_SKINNY_QUANT_MAX + 1, 64, &r);
    check_matmul(pool, PD_GGML_TYPE_Q4_0, 64, 30, PD_SKINNY_QUANT_MAX, 64, &r);
    /* fp32 rows of 4 KB: x goes through the padded copy */
    check_matmul(pool, PD_GGML_TYPE_F32, 1024, 40, 5, 64, &r);
    check_matmul(pool, PD_GGML_TYPE_F16, 2048, 20, 9, 64, &r);
    /* nothing to do */
    pd_mat_t w = {NULL, PD_GGML_TYPE_F32, 0, 32, 128};
    pd_matmul(pool, &w, NULL, 4, NULL, NULL, 64);
    pd_pool_free(pool);
}

/* pd_matmul_multi gives each product's pd_matmul result bit for bit, and
 * its epilogue covers every output row of every product exactly once, on
 * the skinny path (one pool run) and the sgemm path, lockstep or not. */
typedef struct {
    int *hits; /* (product, or 0 in lockstep; 4096 output rows) calls per row */
} epi_count_t;

static void count_epi(void *ctx, int i, uint32_t o0, uint32_t o1)
{
    epi_count_t *c = ctx;
    int k = i < 0 ? 0 : i;
    for (uint32_t o = o0; o < o1; o++)
        __atomic_fetch_add(&c->hits[(size_t)k * 4096 + o], 1, __ATOMIC_RELAXED);
}

static void test_matmul_multi(void **state)
{
    (void)state;
    rng_t r = {0x77ull};
    pd_pool_t *pool = pd_pool_new(3);
    const pd_ggml_type_t types[] = {PD_GGML_TYPE_F32, PD_GGML_TYPE_Q8_0, PD_GGML_TYPE_Q4_0};
    const uint32_t rows[] = {1, 5, 32, 70};
    for (size_t t = 0; t < 3; t++)
        for (size_t k = 0; k < 4; k++)
            for (int lock = 0; lock < 2; lock++) {
                const uint32_t n_in = 96, n_outs[3] = {100, lock ? 100 : 33, lock ? 100 : 17};
                pd_mat_t w[3];
                pd_mm_out_t outs[3];
                float *ref[3];
                uint8_t *wd[3];
                float *x = make_f((size_t)n_in * rows[k], &r);
                size_t sb = 0;
                for (int i = 0; i < 3; i++) {
                    wd[i] = make_w(types[t], n_outs[i], n_in, &r);
                    w[i] = (pd_mat_t){wd[i], types[t], n_outs[i], n_in, row_bytes(types[t], n_in)};
                    outs[i] = (pd_mm_out_t){&w[i], malloc(sizeof(float) * n_outs[i] * rows[k])};
                    ref[i] = malloc(sizeof(float) * n_outs[i] * rows[k]);
                    size_t b = pd_matmul_scratch_bytes(&w[i], rows[k]);
                    sb = b > sb ? b : sb;
                }
                void *scratch = aligned_alloc(64, sb);
                for (int i = 0; i < 3; i++)
                    pd_matmul(pool, &w[i], x, rows[k], ref[i], scratch, PD_SKINNY_DEFAULT_MAX);
                epi_count_t ec = {calloc(3 * 4096, sizeof(int))};
                assert_non_null(ec.hits);
                pd_matmul_multi(pool, outs, 3, lock, x, rows[k], scratch, PD_SKINNY_DEFAULT_MAX,
                                count_epi, &ec);
                for (int i = 0; i < 3; i++) {
                    assert_memory_equal(outs[i].y, ref[i], sizeof(float) * n_outs[i] * rows[k]);
                    for (uint32_t o = 0; o < n_outs[i]; o++)
                        assert_int_equal(ec.hits[(size_t)(lock ? 0 : i) * 4096 + o], 1);
                    free(outs[i].y);
                    free(ref[i]);
                    free(wd[i]);
                }
                free(ec.hits);
                free(scratch);
                free(x);
            }
    pd_pool_free(pool);
}

static void test_scratch_bytes(void **state)
{
    (void)state;
    pd_mat_t w = {NULL, PD_GGML_TYPE_Q8_0, 10000, 4096, 4096 / 32 * 34};
    size_t sb = pd_matmul_scratch_bytes(&w, 64);
    assert_true(sb >= pd_kern_xq_bytes(PD_GGML_TYPE_Q8_0, 4096, 64));
    assert_true(sb >= (size_t)PD_MATMUL_DEQ_TILE_ROWS * 4096 * 4);
    assert_int_equal(sb % 64, 0);
    /* fp32 weights need no scratch, except for the padded copy of x when
     * its rows are a multiple of 4 KB */
    pd_mat_t wf = {NULL, PD_GGML_TYPE_F32, 10000, 1000, 1000 * 4};
    assert_int_equal(pd_matmul_scratch_bytes(&wf, 64), 0);
    pd_mat_t wp = {NULL, PD_GGML_TYPE_F32, 10000, 4096, 4096 * 4};
    assert_true(pd_matmul_scratch_bytes(&wp, 64) >= (size_t)64 * 4096 * 4);
    /* sized once for a big batch, it covers every smaller call */
    for (uint32_t n = 1; n <= 70; n++) {
        assert_true(pd_matmul_scratch_bytes(&wp, 512) >= pd_matmul_scratch_bytes(&wp, n));
        assert_true(pd_matmul_scratch_bytes(&w, 512) >= pd_matmul_scratch_bytes(&w, n));
        assert_true(pd_matmul_scratch_bytes(&wf, 512) >= pd_matmul_scratch_bytes(&wf, n));
    }
}

/* ====== Vector kernels ====== */

static const uint32_t vec_sizes[] = {1, 7, 8, 33, 1000};

static void test_rmsnorm(void **state)
{
    (void)state;
    rng_t r = {0x1111ull};
    for (size_t s = 0; s < 5; s++) {
        uint32_t n = vec_sizes[s];
        float *x = make_f(n, &r), *g = make_f(n, &r), *a = malloc(n * 4), *b = malloc(n * 4);
        assert_non_null(a);
        assert_non_null(b);
        double ss = 0.0;
        for (uint32_t i = 0; i < n; i++)
            ss += (double)x[i] * x[i];
        double scale = 1.0 / sqrt(ss / n + 1e-5);
        /* Every implementation against the double-precision formula above
         * (the independent reference): the C reference, the dispatched
         * kernel (whichever the CPU gets) and, with AVX2, the AVX2 one. */
        pd_kern_rmsnorm_ref(a, x, g, n, 1e-5f);
        for (uint32_t i = 0; i < n; i++) {
            double want = x[i] * scale * g[i];
            assert_true(fabs(a[i] - want) <= 1e-6 * fabs(want) + 1e-30);
        }
        pd_kern_rmsnorm(b, x, g, n, 1e-5f);
        for (uint32_t i = 0; i < n; i++) {
            double want = x[i] * scale * g[i];
            assert_true(fabs(b[i] - want) <= 1e-6 * fabs(want) + 1e-30);
        }
        if (avx2()) {
            memset(b, 0, n * 4);
            pd_kern_rmsnorm_avx2(b, x, g, n, 1e-5f);
            for (uint32_t i = 0; i < n; i++) {
                double want = x[i] * scale * g[i];
                assert_true(fabs(b[i] - want) <= 1e-6 * fabs(want) + 1e-30);
            }
        }
        /* in place */
        memcpy(b, x, n * 4);
        pd_kern_rmsnorm(b, b, g, n, 1e-5f);
        for (uint32_t i = 0; i < n; i++) {
            double want = x[i] * scale * g[i];
            assert_true(fabs(b[i] - want) <= 1e-6 * fabs(want) + 1e-30);
        }
        free(x);
        free(g);
        free(a);
        free(b);
    }
}

static void test_softmax(void **state)
{
    (void)state;
    rng_t r = {0x2222ull};
    for (int variant = 0; variant < 2; variant++) {
        if (variant == 1 && !avx2())
            skip();
        for (size_t s = 0; s < 5; s++) {
            uint32_t n = vec_sizes[s];
            float *x = make_f(n, &r);
            for (uint32_t i = 0; i < n; i++)
                x[i] *= 30.0f; /* logits spanning exp(-60..60) */
            if (n > 2)
                x[1] = -INFINITY; /* a masked position */
            double *want = malloc(sizeof(double) * n);
            assert_non_null(want);
            double max = -INFINITY, sum = 0.0;
            for (uint32_t i = 0; i < n; i++)
                max = x[i] > max ? x[i] : max;
            for (uint32_t i = 0; i < n; i++) /* the kernel's contract: expf(x - max) */
                sum += want[i] = exp((double)(x[i] - (float)max));
            if (variant == 0)
                pd_kern_softmax_ref(x, n);
            else
                pd_kern_softmax_avx2(x, n);
            for (uint32_t i = 0; i < n; i++) {
                double w = want[i] / sum;
                if (!(fabs(x[i] - w) <= 2e-6 * w + 1e-37)) {
                    print_error("softmax variant %d n %u i %u got %.9g want %.9g\n", variant, n,
                                i, x[i], w);
                    fail();
                }
            }
            if (n > 2)
                assert_true(x[1] == 0.0f);
            free(want);
            free(x);
        }
    }
}

static void test_swiglu(void **state)
{
    (void)state;
    rng_t r = {0x3333ull};
    for (int variant = 0; variant < 2; variant++) {
        if (variant == 1 && !avx2())
            skip();
        for (size_t s = 0; s < 5; s++) {
            uint32_t n = vec_sizes[s];
            float *g = make_f(n, &r), *u = make_f(n, &r);
            for (uint32_t i = 0; i < n; i++)
                g[i] *= 20.0f;
            if (n > 3) {
                g[0] = -100.0f; /* exp(100) overflows float: silu -> -0 */
                g[1] = 100.0f;
            }
            double *want = malloc(sizeof(double) * n);
            assert_non_null(want);
            for (uint32_t i = 0; i < n; i++)
                want[i] = (double)g[i] / (1.0 + exp(-(double)g[i])) * u[i];
            if (variant == 0)
                pd_kern_swiglu_ref(g, u, n);
            else
                pd_kern_swiglu_avx2(g, u, n);
            for (uint32_t i = 0; i < n; i++) {
                if (!(fabs(g[i] - want[i]) <= 1e-6 * fabs(want[i]) + 1e-30)) {
                    print_error("swiglu variant %d n %u i %u got %.9g want %.9g\n", variant, n, i,
                                g[i], want[i]);
                    fail();
                }
            }
            free(want);
            free(g);
            free(u);
        }
    }
}

static void test_dot_axpy(void **state)
{
    (void)state;
    rng_t r = {0x4444ull};
    for (size_t s = 0; s < 5; s++) {
        uint32_t n = vec_sizes[s];
        float *a = make_f(n, &r), *b = make_f(n, &r);
        double want = 0.0, sa = 0.0;
        for (uint32_t i = 0; i < n; i++) {
            want += (double)a[i] * b[i];
            sa += fabs((double)a[i] * b[i]);
        }
        assert_true(fabs(pd_kern_dot_f32_ref(a, b, n) - want) <= 1e-6 * sa);
        assert_true(fabs(pd_kern_dot_f32(a, b, n) - want) <= 1e-6 * sa);
        float *y1 = make_f(n, &r), *y2 = malloc(n * 4), *y0 = malloc(n * 4);
        assert_non_null(y2);
        assert_non_null(y0);
        memcpy(y2, y1, n * 4);
        memcpy(y0, y1, n * 4);
        pd_kern_axpy_f32_ref(y1, 0.75f, a, n);
        pd_kern_axpy_f32(y2, 0.75f, a, n);
        for (uint32_t i = 0; i < n; i++) {
            double w = y0[i] + 0.75 * a[i];
            assert_true(fabs(y1[i] - w) <= 1e-6 * (fabs(y0[i]) + fabs(a[i])));
            assert_true(fabs(y2[i] - w) <= 1e-6 * (fabs(y0[i]) + fabs(a[i])));
        }
        free(a);
        free(b);
        free(y0);
        free(y1);
        free(y2);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fp16_roundtrip_exhaustive),
        cmocka_unit_test(test_fp16_known_values),
        cmocka_unit_test(test_fp16_matches_f16c),
        cmocka_unit_test(test_bf16),
        cmocka_unit_test(test_q8_0_block),
        cmocka_unit_test(test_q4_0_block),
        cmocka_unit_test(test_dequant_avx2_matches_ref),
        cmocka_unit_test(test_prepare_x_avx2_matches_ref),
        cmocka_unit_test(test_skinny_float_types),
        cmocka_unit_test(test_skinny_quant_types),
        cmocka_unit_test(test_skinny_subrange),
        cmocka_unit_test(test_skinny_batch_invariant),
        cmocka_unit_test(test_matmul_paths),
        cmocka_unit_test(test_matmul_multi),
        cmocka_unit_test(test_scratch_bytes),
        cmocka_unit_test(test_rmsnorm),
        cmocka_unit_test(test_softmax),
        cmocka_unit_test(test_swiglu),
        cmocka_unit_test(test_dot_axpy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
