/* test_sampler_argmax.c -- the greedy pick: pd_argmax, pd_argmax_ref and
 * (on AVX-512 machines) pd_argmax_avx512 against the definition written
 * out here: the lowest index holding the largest value, NaN never wins,
 * 0 when every value is NaN or -inf. Lengths around the AVX-512 kernel's
 * 64-float steps and 16-float tail, ties across its lanes and chains, NaN,
 * +-inf and +-0. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/kernels.h"
#include "engine/sampler.h"

#define MAX_N 32768

/* The definition, one element at a time. */
static int32_t argmax_def(const float *x, uint32_t n)
{
    int32_t best = -1;
    for (uint32_t i = 0; i < n; i++) {
        if (isnan(x[i]) || x[i] == -INFINITY)
            continue;
        if (best < 0 || x[i] > x[best])
            best = (int32_t)i;
    }
    return best < 0 ? 0 : best;
}

static uint64_t rng = 0x853c49e6748fea9bull;

static uint32_t next_u32(void)
{
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng >> 33);
}

/* Every implementation on x[0..n), against the definition. */
static void check(const float *x, uint32_t n, const char *what)
{
    const int32_t want = argmax_def(x, n);
    const int32_t ref = pd_argmax_ref(x, n), got = pd_argmax(x, n);
    if (ref != want || got != want)
        fprintf(stderr, "%s n=%u: want %d, ref %d, pd_argmax %d\n", what, n, want, ref, got);
    assert_int_equal(ref, want);
    assert_int_equal(got, want);
    if (pd_kern_isa() == PD_ISA_AVX512) {
        const int32_t v = pd_argmax_avx512(x, n);
        if (v != want)
            fprintf(stderr, "%s n=%u: want %d, avx512 %d\n", what, n, want, v);
        assert_int_equal(v, want);
    }
}

/* Random values in [-8, 8) with a few copies of the maximum, NaN and -inf
 * sprinkled in when asked. */
static void fill(float *x, uint32_t n, uint32_t n_ties, bool specials)
{
    for (uint32_t i = 0; i < n; i++)
        x[i] = (float)(next_u32() % 65536) / 4096.0f - 8.0f;
    if (n == 0)
        return;
    const float top = 9.0f;
    for (uint32_t t = 0; t < n_ties; t++)
        x[next_u32() % n] = top;
    if (specials)
        for (uint32_t t = 0; t < 1 + n / 16; t++) {
            const uint32_t i = next_u32() % n;
            if (x[i] != top)
                x[i] = next_u32() % 2 ? NAN : -INFINITY;
        }
}

static void test_random_lengths(void **st)
{
    (void)st;
    static float x[MAX_N];
    for (uint32_t n = 0; n <= 300; n++)
        for (uint32_t ties = 0; ties <= 3; ties++)
            for (int sp = 0; sp < 2; sp++) {
                fill(x, n, ties, sp);
                check(x, n, "random");
            }
    const uint32_t big[] = {31999, 32000, 32001, 32064, 32768};
    for (size_t b = 0; b < sizeof big / sizeof big[0]; b++)
        for (uint32_t ties = 0; ties <= 5; ties++) {
            fill(x, big[b], ties, ties % 2);
            check(x, big[b], "vocab");
        }
}

/* Two copies of the maximum at every pair of positions in 3 x 64 + 7
 * floats: every (lane, chain, tail) combination of the AVX-512 kernel. */
static void test_ties_everywhere(void **st)
{
    (void)st;
    enum { N = 3 * 64 + 7 };
    float x[N];
    for (uint32_t a = 0; a < N; a++)
        for (uint32_t b = a; b < N; b++) {
            for (uint32_t i = 0; i < N; i++)
                x[i] = -(float)(i % 13);
            x[a] = 5.0f;
            x[b] = 5.0f;
            check(x, N, "ties");
            x[a] = NAN; /* NaN before the maximum */
            check(x, N, "nan-then-max");
        }
}

static void test_specials(void **st)
{
    (void)st;
    float x[200];
    const uint32_t n = 200;
    for (uint32_t i = 0; i < n; i++)
        x[i] = NAN;
    check(x, n, "all nan");
    assert_int_equal(pd_argmax(x, n), 0);
    for (uint32_t i = 0; i < n; i++)
        x[i] = i % 3 ? -INFINITY : NAN;
    check(x, n, "nan and -inf");
    assert_int_equal(pd_argmax(x, n), 0);
    x[n - 1] = -1e30f; /* one finite value, last */
    check(x, n, "one finite");
    assert_int_equal(pd_argmax(x, n), (int32_t)n - 1);
    x[77] = INFINITY;
    x[150] = INFINITY;
    check(x, n, "+inf twice");
    assert_int_equal(pd_argmax(x, n), 77);
    for (uint32_t i = 0; i < n; i++)
        x[i] = -1.0f - (float)i;
    x[70] = -0.0f; /* -0 then +0: equal, the lower id wins */
    x[90] = 0.0f;
    check(x, n, "signed zeros");
    assert_int_equal(pd_argmax(x, n), 70);
    x[70] = 0.0f;
    x[90] = -0.0f;
    x[30] = -0.0f;
    check(x, n, "signed zeros 2");
    assert_int_equal(pd_argmax(x, n), 30);
    assert_int_equal(pd_argmax(x, 0), 0);
    x[0] = NAN; /* a NaN first does not hide the maximum */
    check(x, n, "nan first");
    assert_int_equal(pd_argmax(x, n), 30);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_random_lengths),
        cmocka_unit_test(test_ties_everywhere),
        cmocka_unit_test(test_specials),
    };
    if (pd_kern_isa() != PD_ISA_AVX512)
        printf("test_sampler_argmax: pd_kern_isa() is %s (the CPU or PD_ISA), "
               "pd_argmax_avx512 not checked\n",
               pd_kern_isa_name());
    return cmocka_run_group_tests(tests, NULL, NULL);
}
