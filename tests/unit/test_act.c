/* test_act.c -- the activation kernels some architectures add
 * (kernels_act.c): Gemma's GeGLU (ggml's fp16-table gelu) and soft-capping
 * of attention scores and logits, each against its reference. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/kernels.h"

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

/* GeGLU: the table path equals the direct reference bit for bit on every
 * fp16 input and on random floats; the reference is ggml's tanh-approximate
 * gelu (checked in double) up to the fp16 rounding of input and output; 0
 * below -10 and x above 10, as ggml. */
static void test_geglu(void **state)
{
    (void)state;
    const uint32_t n = 1u << 16;
    float *x = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * n);
    float *u = malloc(sizeof(float) * n);
    assert_true(x && y && u);
    rng_t r = {0x6e1ull};
    uint32_t m = 0;
    for (uint32_t h = 0; h < n; h++) {
        float v = pd_fp16_to_fp32((uint16_t)h);
        if (!isfinite(v))
            continue;
        x[m] = y[m] = v;
        u[m++] = 0.5f + rng_f(&r);
    }
    pd_kern_geglu(x, u, m);
    pd_kern_geglu_ref(y, u, m);
    assert_memory_equal(x, y, sizeof(float) * m);
    for (uint32_t i = 0; i < 4096; i++)
        x[i] = y[i] = 30.0f * (rng_f(&r) - 0.5f);
    for (uint32_t i = 0; i < 4096; i++) {
        double v = x[i];
        double g = 0.5 * v * (1.0 + tanh(0.7978845608028654 * v * (1.0 + 0.044715 * v * v)));
        u[i] = 1.0f;
        y[i] = x[i];
        pd_kern_geglu_ref(&y[i], &u[i], 1);
        if (v <= -10.0)
            assert_true(y[i] == 0.0f);
        else if (v >= 10.0)
            assert_true(y[i] == x[i]);
        else if (!(fabs(y[i] - g) <= 2e-3 * fabs(g) + 1e-4)) /* two fp16 roundings */
            fail_msg("gelu(%g) = %g, expected %g", v, y[i], g);
    }
    for (uint32_t i = 0; i < 4096; i++)
        y[i] = x[i] = 30.0f * (rng_f(&r) - 0.5f), u[i] = rng_f(&r);
    pd_kern_geglu(x, u, 4096);
    pd_kern_geglu_ref(y, u, 4096);
    assert_memory_equal(x, y, sizeof(float) * 4096);
    free(x);
    free(y);
    free(u);
}

/* Soft-capping: c * tanh(x / c), close to x for |x| << c, never past c. */
static void test_softcap(void **state)
{
    (void)state;
    float v[] = {0.0f, 1e-3f, -2.0f, 29.0f, 50.0f, -1e4f, 1e30f};
    const size_t n = sizeof v / sizeof v[0];
    float w[sizeof v / sizeof v[0]];
    memcpy(w, v, sizeof v);
    pd_kern_softcap(w, (uint32_t)n, 30.0f);
    for (size_t i = 0; i < n; i++) {
        double want = 30.0 * tanh((double)v[i] / 30.0);
        assert_true(fabs(w[i] - want) <= 1e-6 * fabs(want) + 1e-12);
        assert_true(fabs(w[i]) <= 30.0f);
    }
    assert_true(w[6] == 30.0f && w[5] == -30.0f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_geglu),
        cmocka_unit_test(test_softcap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
