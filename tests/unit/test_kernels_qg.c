/* test_kernels_qg.c -- the integer prefill kernel (kernels_qg_avx512.c)
 * against its definition, pd_kern_qg_ref, bit for bit:
 *   - row counts from 33 to 512 (token groups of 16 and the micro-kernel's
 *     groups of 3, with tails), odd n_out (panel and micro-kernel row
 *     tails), n_in from one block to 5632, Q8_0 and Q4_0, 1 and 2 threads;
 *   - only the extreme weights and activations (+-127 after quantizing);
 *   - through pd_matmul a token's outputs do not depend on the batch (33 to
 *     512 rows) nor on the thread count, and pd_matmul_multi (lockstep,
 *     with an epilogue) gives each product's pd_matmul bits. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/kernels.h"
#include "engine/pool.h"
#include "qblocks_fixture.h"

static bool have_qg(void)
{
    return pd_kern_isa() == PD_ISA_AVX512;
}

/* n_rows rows of activations; every third row has one large value (its
 * block then holds +-127); `extreme`: every value +-1 (every activation
 * +-127). */
static float *make_x(uint32_t n_in, uint32_t n_rows, rng_t *r, bool extreme)
{
    float *x = malloc(sizeof(float) * n_in * n_rows);
    assert_non_null(x);
    for (size_t i = 0; i < (size_t)n_in * n_rows; i++)
        x[i] = extreme ? (rng_u32(r) & 1 ? 1.0f : -1.0f) : rng_f(r);
    for (uint32_t k = 0; k < n_rows && !extreme; k += 3)
        x[(size_t)k * n_in + rng_u32(r) % n_in] = -40.0f;
    return x;
}

static void *scratch_for(const pd_mat_t *w, uint32_t n_rows)
{
    const size_t n = (pd_matmul_scratch_bytes(w, n_rows) + 63) / 64 * 64;
    void *s = aligned_alloc(64, n);
    assert_non_null(s);
    memset(s, 0xa5, n); /* no zeros to lean on */
    return s;
}

/* The kernel (pool of n_threads) against the reference, bitwise. */
static void check_qg_x(pd_ggml_type_t t, uint32_t n_in, uint32_t n_out, uint32_t n_rows,
                       int n_threads, rng_t *r, bool extreme)
{
    uint8_t *wd = make_w(t, n_out, n_in, r, extreme);
    const pd_mat_t w = {wd, t, n_out, n_in, n_in / 32 * wblk(t)};
    float *x = make_x(n_in, n_rows, r, extreme);
    uint8_t *xq = malloc(pd_kern_xq_bytes(t, n_in, n_rows));
    float *ya = malloc(sizeof(float) * n_out * n_rows), *yr = malloc(sizeof(float) * n_out * n_rows);
    void *scratch = scratch_for(&w, n_rows);
    pd_pool_t *pool = pd_pool_new(n_threads);
    assert_non_null(xq);
    assert_non_null(ya);
    assert_non_null(yr);
    assert_non_null(pool);
    for (size_t i = 0; i < (size_t)n_out * n_rows; i++)
        ya[i] = 12345.0f;
    const pd_mm_out_t o = {&w, ya};
    pd_kern_qg_multi(pool, &o, 1, false, x, n_rows, scratch, NULL, NULL);
    pd_kern_prepare_x(t, x, n_in, n_in, n_rows, xq);
    pd_kern_qg_ref(&w, 0, n_out, xq, n_rows, yr, n_out);
    for (size_t i = 0; i < (size_t)n_out * n_rows; i++)
        if (memcmp(&ya[i], &yr[i], sizeof(float)) != 0) {
            print_error("type %d n_in %u n_out %u n_rows %u thr %d%s: y[%zu][%zu] %.9g, "
                        "reference %.9g\n", t, n_in, n_out, n_rows, n_threads,
                        extreme ? " extreme" : "", i / n_out, i % n_out, ya[i], yr[i]);
            fail();
        }
    pd_pool_free(pool);
    free(scratch);
    free(yr);
    free(ya);
    free(xq);
    free(x);
    free(wd);
}

static void test_qg_matches_ref(void **state)
{
    (void)state;
    if (!have_qg())
        skip();
    rng_t r = {0x1234567ull};
    const pd_ggml_type_t types[] = {PD_GGML_TYPE_Q8_0, PD_GGML_TYPE_Q4_0};
    const uint32_t n_ins[] = {32, 96, 32 * 17, 2048 + 32, 5632};
    const uint32_t n_outs[] = {1, 3, 5, 33, 45, 70};
    const uint32_t n_rows[] = {33, 47, 48, 64, 100, 512};
    for (int t = 0; t < 2; t++)
        for (int i = 0; i < 5; i++)
            for (int o = 0; o < 6; o++)
                for (int k = 0; k < 6; k++) {
                    const double cost = (double)n_ins[i] * n_outs[o] * n_rows[k];
                    if (cost > 6e6 && !(o == 4 && (k == 0 || k == 5)))
                        continue; /* keep the reference cheap; 45 rows at 33 and 512 */
                    check_qg_x(types[t], n_ins[i], n_outs[o], n_rows[k], 1 + (o + k) % 2, &r,
                               false);
                }
    check_qg_x(PD_GGML_TYPE_Q8_0, 2048, 67, 100, 1, &r, false);
    check_qg_x(PD_GGML_TYPE_Q8_0, 2048, 67, 100, 2, &r, false);
    check_qg_x(PD_GGML_TYPE_Q4_0, 5632, 13, 512, 2, &r, false);
}

/* Only the extreme weights and activations: the largest dots of both signs. */
static void test_qg_extremes(void **state)
{
    (void)state;
    if (!have_qg())
        skip();
    rng_t r = {0xdeadbeefull};
    const pd_ggml_type_t types[] = {PD_GGML_TYPE_Q8_0, PD_GGML_TYPE_Q4_0};
    const uint32_t n_rows[] = {33, 47, 64, 100};
    for (int t = 0; t < 2; t++)
        for (int k = 0; k < 4; k++)
            check_qg_x(types[t], 32 * 19, 37, n_rows[k], 1 + k % 2, &r, true);
}

static void test_qg_takes(void **state)
{
    (void)state;
    uint8_t d[34] = {0};
    const pd_mat_t q8 = {d, PD_GGML_TYPE_Q8_0, 1, 32, 34}, q4 = {d, PD_GGML_TYPE_Q4_0, 1, 32, 18};
    const pd_mat_t k4 = {d, PD_GGML_TYPE_Q4_K, 1, 256, 144}, f = {d, PD_GGML_TYPE_F32, 1, 32, 128};
    assert_int_equal(pd_kern_qg_takes(&q8, PD_SKINNY_QUANT_MAX), false);
    assert_int_equal(pd_kern_qg_takes(&q8, PD_SKINNY_QUANT_MAX + 1), have_qg());
    assert_int_equal(pd_kern_qg_takes(&q4, 512), have_qg());
    assert_int_equal(pd_kern_qg_takes(&k4, 512), false);
    assert_int_equal(pd_kern_qg_takes(&f, 512), false);
}

/* SwiGLU-like epilogue for the multi check: a = a * 0.5 + b. */
typedef struct {
    float *a;
    const float *b;
    uint32_t n_rows, stride;
} epi_t;

static void epi_fn(void *ctx, int i_out, uint32_t o0, uint32_t o1)
{
    const epi_t *e = ctx;
    (void)i_out;
    for (uint32_t r = 0; r < e->n_rows; r++)
        for (uint32_t o = o0; o < o1; o++)
            e->a[(size_t)r * e->stride + o] = e->a[(size_t)r * e->stride + o] * 0.5f +
                                              e->b[(size_t)r * e->stride + o];
}

/* Through pd_matmul: rows [s, s + n) of a 512-row product, as a batch of
 * their own (and on 1 thread or 2), are bitwise the same; gate and up in
 * lockstep with an epilogue are the two products and the epilogue. */
static void test_qg_batch_invariant(void **state)
{
    (void)state;
    if (!have_qg())
        skip();
    rng_t r = {0xfacefeedull};
    pd_pool_t *p1 = pd_pool_new(1), *p2 = pd_pool_new(2);
    const uint32_t n_in = 2048 + 64, n_out = 150, N = 512;
    const uint32_t starts[] = {0, 1, 17, 200, 479}, lens[] = {33, 47, 64, 100, 33};
    for (int t = 0; t < 2; t++) {
        const pd_ggml_type_t ty = t ? PD_GGML_TYPE_Q4_0 : PD_GGML_TYPE_Q8_0;
        uint8_t *wd = make_w(ty, n_out, n_in, &r, false), *wd2 = make_w(ty, n_out, n_in, &r, false);
        const pd_mat_t w = {wd, ty, n_out, n_in, n_in / 32 * wblk(ty)};
        const pd_mat_t w2 = {wd2, ty, n_out, n_in, n_in / 32 * wblk(ty)};
        float *x = make_x(n_in, N, &r, false);
        float *ya = malloc(sizeof(float) * n_out * N), *yb = malloc(sizeof(float) * n_out * N);
        float *g = malloc(sizeof(float) * n_out * N), *u = malloc(sizeof(float) * n_out * N);
        void *scratch = scratch_for(&w, N);
        pd_matmul(p2, &w, x, N, ya, scratch, PD_SKINNY_DEFAULT_MAX);
        pd_matmul(p1, &w, x, N, yb, scratch, PD_SKINNY_DEFAULT_MAX);
        assert_memory_equal(ya, yb, sizeof(float) * n_out * N);
        for (int k = 0; k < 5; k++) {
            pd_matmul(p2, &w, x + (size_t)starts[k] * n_in, lens[k], yb, scratch,
                      PD_SKINNY_DEFAULT_MAX);
            if (memcmp(yb, ya + (size_t)starts[k] * n_out, sizeof(float) * n_out * lens[k])) {
                print_error("type %d: rows [%u, +%u) differ from the 512-row batch\n", ty,
                            starts[k], lens[k]);
                fail();
            }
        }
        const pd_mm_out_t outs[2] = {{&w, g}, {&w2, u}};
        epi_t e = {g, u, N, n_out};
        pd_matmul_multi(p2, outs, 2, true, x, N, scratch, PD_SKINNY_DEFAULT_MAX, epi_fn, &e);
        pd_matmul(p1, &w2, x, N, yb, scratch, PD_SKINNY_DEFAULT_MAX);
        epi_t e2 = {ya, yb, N, n_out};
        epi_fn(&e2, -1, 0, n_out);
        assert_memory_equal(g, ya, sizeof(float) * n_out * N);
        free(scratch);
        free(u);
        free(g);
        free(yb);
        free(ya);
        free(x);
        free(wd2);
        free(wd);
    }
    pd_pool_free(p2);
    pd_pool_free(p1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_qg_matches_ref),
        cmocka_unit_test(test_qg_extremes),
        cmocka_unit_test(test_qg_takes),
        cmocka_unit_test(test_qg_batch_invariant),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
