/* test_kernels_qt.c -- the batched quantized product (kernels_qt_avx512.c)
 * and the definition it must meet to the bit (pd_kern_skinny_qlanes_ref):
 *   - the skinny AVX2 and AVX-512 kernels give the reference's bits (so the
 *     reference is the definition the engine has always used), with the
 *     AVX-512 kernel's scales over fp16's range;
 *   - the qt kernel gives the reference's bits on odd shapes (row counts
 *     around the 16-token groups, K-tile and panel tails, sub-ranges of
 *     output rows), with Q8_0 weight bytes over the whole int8 range;
 *   - the same with only the extreme weights and activations;
 *   - through pd_matmul a token's outputs are bitwise the same in a batch
 *     of 32, 22, 21, 8 or 3 as alone (skinny kernel). */
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

static bool have_qt(void)
{
    return pd_kern_isa() == PD_ISA_AVX512;
}

/* n_rows rows of activations quantized as the engine does; some rows have
 * one large value, so that their blocks hold +-127; `extreme`: every value
 * +-1, so that every activation is +-127. */
static uint8_t *make_xq(pd_ggml_type_t t, uint32_t n_in, uint32_t n_rows, rng_t *r,
                        bool extreme)
{
    float *x = malloc(sizeof(float) * n_in * n_rows);
    uint8_t *xq = malloc(pd_kern_xq_bytes(t, n_in, n_rows));
    assert_non_null(x);
    assert_non_null(xq);
    for (size_t i = 0; i < (size_t)n_in * n_rows; i++)
        x[i] = extreme ? (rng_u32(r) & 1 ? 1.0f : -1.0f) : rng_f(r);
    for (uint32_t k = 0; k < n_rows && !extreme; k += 3)
        x[(size_t)k * n_in + rng_u32(r) % n_in] = -40.0f;
    pd_kern_prepare_x(t, x, n_in, n_in, n_rows, xq);
    free(x);
    return xq;
}

static void check_equal(const float *a, const float *b, uint32_t n_rows, uint32_t ys,
                        uint32_t o0, uint32_t o1, const char *what)
{
    for (uint32_t r = 0; r < n_rows; r++)
        for (uint32_t o = 0; o < ys; o++) {
            float va = a[(size_t)r * ys + o], vb = b[(size_t)r * ys + o];
            if (o < o0 || o >= o1) {
                assert_true(va == 12345.0f);
                continue;
            }
            if (memcmp(&va, &vb, sizeof va) != 0) {
                print_error("%s: y[%u][%u] %.9g, reference %.9g\n", what, r, o, va, vb);
                fail();
            }
        }
}

/* The qt kernel (and, for the rows it would not take, nothing else) over
 * rows [o0, o1) against the reference, bitwise. */
static void check_qt_x(pd_ggml_type_t t, uint32_t n_in, uint32_t n_out, uint32_t n_rows,
                       uint32_t o0, uint32_t o1, rng_t *r, bool extreme)
{
    uint8_t *wd = make_w(t, n_out, n_in, r, extreme);
    const pd_mat_t w = {wd, t, n_out, n_in, n_in / 32 * wblk(t)};
    uint8_t *xq = make_xq(t, n_in, n_rows, r, extreme);
    void *panel = aligned_alloc(64, (pd_kern_qt_bytes(n_in, n_rows) + 63) / 64 * 64 + 64);
    const uint32_t ys = n_out + 3;
    float *ya = malloc(sizeof(float) * ys * n_rows), *yr = malloc(sizeof(float) * ys * n_rows);
    assert_non_null(panel);
    assert_non_null(ya);
    assert_non_null(yr);
    for (size_t i = 0; i < (size_t)ys * n_rows; i++)
        ya[i] = yr[i] = 12345.0f;
    pd_kern_qt_prepare_avx512(t, xq, n_in, n_rows, panel);
    pd_kern_skinny_qt_avx512(&w, o0, o1, panel, n_rows, ya, ys);
    pd_kern_skinny_qlanes_ref(&w, o0, o1, xq, n_rows, yr, ys);
    char what[96];
    snprintf(what, sizeof what, "qt type %d n_in %u n_out %u n_rows %u [%u, %u)%s", t, n_in,
             n_out, n_rows, o0, o1, extreme ? " extreme" : "");
    check_equal(ya, yr, n_rows, ys, o0, o1, what);
    free(ya);
    free(yr);
    free(panel);
    free(xq);
    free(wd);
}

static void check_qt(pd_ggml_type_t t, uint32_t n_in, uint32_t n_out, uint32_t n_rows,
                     uint32_t o0, uint32_t o1, rng_t *r)
{
    check_qt_x(t, n_in, n_out, n_rows, o0, o1, r, false);
}

/* The skinny kernels the engine had give the reference's bits. */
static void test_qlanes_ref_is_the_skinny_kernels(void **state)
{
    (void)state;
    if (!pd_kern_has_avx2())
        skip();
    rng_t r = {0x9e3779b97f4a7c15ull};
    const pd_ggml_type_t types[] = {PD_GGML_TYPE_Q8_0, PD_GGML_TYPE_Q4_0};
    /* 1..5: each micro-kernel row count of the AVX-512 skinny kernel */
    const uint32_t n_rows[] = {1, 2, 3, 4, 5, 8, 17};
    for (int t = 0; t < 2; t++)
        for (int k = 0; k < 7; k++) {
            const uint32_t n_in = 32 * 37, n_out = 13, ys = n_out;
            uint8_t *wd = make_w(types[t], n_out, n_in, &r, false);
            const pd_mat_t w = {wd, types[t], n_out, n_in, n_in / 32 * wblk(types[t])};
            uint8_t *xq = make_xq(types[t], n_in, n_rows[k], &r, false);
            float *ya = malloc(sizeof(float) * ys * n_rows[k]);
            float *yr = malloc(sizeof(float) * ys * n_rows[k]);
            assert_non_null(ya);
            assert_non_null(yr);
            /* the AVX-512 kernel first: its stack frame then holds no other
             * kernel's accumulators for these rows (a row it forgot would
             * otherwise read the AVX2 kernel's, the same bits) */
            if (have_qt())
                pd_kern_skinny_avx512(&w, 0, n_out, NULL, 0, xq, n_rows[k], ya, ys);
            pd_kern_skinny_qlanes_ref(&w, 0, n_out, xq, n_rows[k], yr, ys);
            if (have_qt())
                check_equal(ya, yr, n_rows[k], ys, 0, n_out, "skinny avx512");
            pd_kern_skinny_avx2(&w, 0, n_out, NULL, 0, xq, n_rows[k], ya, ys);
            check_equal(ya, yr, n_rows[k], ys, 0, n_out, "skinny avx2");
            free(ya);
            free(yr);
            free(xq);
            free(wd);
        }
}

/* The AVX-512 skinny kernel's row map (kernels_rows.h): panels of 8 (1-2
 * activation rows) or 4 (3-5) weight rows taken a stride apart within the
 * call's range, the range % R last rows as a tail. Over ranges where the
 * panels are far and the tail is not empty (odd sizes, the pool's chunk
 * boundaries, ranges shorter than a panel), each output row gets the
 * reference's bits and nothing outside the range is written. */
static void test_skinny_far_rows(void **state)
{
    (void)state;
    if (!have_qt())
        skip();
    rng_t r = {0xfa44ull};
    const pd_ggml_type_t types[] = {PD_GGML_TYPE_Q8_0, PD_GGML_TYPE_Q4_0};
    const uint32_t n_rows[] = {1, 2, 3, 5, 7};
    const uint32_t range[][2] = {{0, 203}, {1, 202}, {17, 150}, {16, 32}, {32, 203},
                                 {5, 12}, {3, 4}, {0, 7}, {190, 203}};
    const uint32_t n_out = 203;
    for (int t = 0; t < 2; t++)
        for (int i = 0; i < 2; i++) { /* one K-tile; two (past 8192 elements) */
            const uint32_t n_in = 32 * (i ? 265 : 37), ys = n_out + 3;
            uint8_t *wd = make_w(types[t], n_out, n_in, &r, false);
            const pd_mat_t w = {wd, types[t], n_out, n_in, n_in / 32 * wblk(types[t])};
            for (int k = 0; k < 5; k++) {
                uint8_t *xq = make_xq(types[t], n_in, n_rows[k], &r, false);
                float *ya = malloc(sizeof(float) * ys * n_rows[k]);
                float *yr = malloc(sizeof(float) * ys * n_rows[k]);
                assert_non_null(ya);
                assert_non_null(yr);
                for (size_t g = 0; g < sizeof range / sizeof range[0]; g++) {
                    const uint32_t o0 = range[g][0], o1 = range[g][1];
                    for (size_t j = 0; j < (size_t)ys * n_rows[k]; j++)
                        ya[j] = yr[j] = 12345.0f;
                    pd_kern_skinny_avx512(&w, o0, o1, NULL, 0, xq, n_rows[k], ya, ys);
                    pd_kern_skinny_qlanes_ref(&w, o0, o1, xq, n_rows[k], yr, ys);
                    char what[96];
                    snprintf(what, sizeof what, "skinny avx512 type %d n_in %u rows %u [%u, %u)",
                             types[t], n_in, n_rows[k], o0, o1);
                    check_equal(ya, yr, n_rows[k], ys, o0, o1, what);
                }
                free(ya);
                free(yr);
                free(xq);
            }
            free(wd);
        }
}

/* The AVX-512 skinny kernel's scales of 16 whole blocks (picked from
 * 64-byte loads by vpermt2w, no gather) and of a last group of fewer
 * (gathered): every block's own fp16 scale, over fp16's range (subnormals,
 * zero, both signs, up to 2^15) and in every lane of a group of 16, in
 * rows of several groups and a K-tile tail (256 + 16 + 3 blocks), in a
 * buffer of exactly the weights' bytes (an over-read shows under ASan). */
static void test_skinny_scales16(void **state)
{
    (void)state;
    if (!have_qt())
        skip();
    rng_t r = {0x5ca1e5ull};
    const pd_ggml_type_t types[] = {PD_GGML_TYPE_Q8_0, PD_GGML_TYPE_Q4_0};
    const uint32_t n_blocks[] = {16, 48, 256 + 16 + 3};
    const uint32_t n_rows[] = {1, 2, 3, 5};
    for (int t = 0; t < 2; t++)
        for (int i = 0; i < 3; i++) {
            const uint32_t n_in = 32 * n_blocks[i], n_out = 19, ys = n_out;
            const size_t rb = n_in / 32 * wblk(types[t]);
            uint8_t *wd = make_w(types[t], n_out, n_in, &r, false);
            uint8_t *exact = malloc(rb * n_out);
            assert_non_null(exact);
            for (size_t b = 0; b < (size_t)n_out * n_blocks[i]; b++) {
                /* sign, exponent 0..15 (0: zero or subnormal), mantissa */
                const uint32_t u = rng_u32(&r);
                const uint32_t e = (u >> 16) % 16u;
                const uint16_t d = (uint16_t)((u & 0x8000u) | e << 10 | (u & 0x3ffu));
                memcpy(wd + b * wblk(types[t]), &d, 2);
            }
            memcpy(exact, wd, rb * n_out);
            const pd_mat_t w = {exact, types[t], n_out, n_in, rb};
            for (int k = 0; k < 4; k++) {
                uint8_t *xq = make_xq(types[t], n_in, n_rows[k], &r, false);
                float *ya = malloc(sizeof(float) * ys * n_rows[k]);
                float *yr = malloc(sizeof(float) * ys * n_rows[k]);
                assert_non_null(ya);
                assert_non_null(yr);
                pd_kern_skinny_avx512(&w, 0, n_out, NULL, 0, xq, n_rows[k], ya, ys);
                pd_kern_skinny_qlanes_ref(&w, 0, n_out, xq, n_rows[k], yr, ys);
                char what[96];
                snprintf(what, sizeof what, "scales16 type %d blocks %u rows %u", types[t],
                         n_blocks[i], n_rows[k]);
                check_equal(ya, yr, n_rows[k], ys, 0, n_out, what);
                free(ya);
                free(yr);
                free(xq);
            }
            free(exact);
            free(wd);
        }
}

static void test_qt_matches_ref(void **state)
{
    (void)state;
    if (!have_qt())
        skip();
    rng_t r = {0x1234567ull};
    const pd_ggml_type_t types[] = {PD_GGML_TYPE_Q8_0, PD_GGML_TYPE_Q4_0};
    const uint32_t n_ins[] = {32, 96, 32 * 17, 2048 + 32};
    const uint32_t n_outs[] = {1, 2, 3, 33, 37, 70};
    const uint32_t n_rows[] = {1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 18, 23, 24, 31, 32, 40, 64, 80};
    const int n_o = sizeof n_outs / sizeof n_outs[0], n_k = sizeof n_rows / sizeof n_rows[0];
    for (int t = 0; t < 2; t++)
        for (int i = 0; i < 4; i++)
            for (int o = 0; o < n_o; o++)
                for (int k = 0; k < n_k; k++) {
                    if (n_ins[i] > 1000 && n_outs[o] * n_rows[k] > 33 * 32)
                        continue; /* keep the reference cheap */
                    check_qt(types[t], n_ins[i], n_outs[o], n_rows[k], 0, n_outs[o], &r);
                }
    /* sub-ranges of output rows (a task's share) */
    check_qt(PD_GGML_TYPE_Q8_0, 96, 100, 32, 17, 83, &r);
    check_qt(PD_GGML_TYPE_Q4_0, 32 * 17, 70, 24, 1, 2, &r);
    check_qt(PD_GGML_TYPE_Q4_0, 2048 + 32, 40, 64, 5, 38, &r);
    check_qt(PD_GGML_TYPE_Q8_0, 32 * 17, 70, 5, 3, 69, &r);
    check_qt(PD_GGML_TYPE_Q4_0, 32 * 17, 70, 8, 30, 35, &r);
}

/* Only the extreme weights and activations (the largest int32 per group,
 * both signs), in both layouts (8 and fewer tokens, 16 and more). */
static void test_qt_extremes(void **state)
{
    (void)state;
    if (!have_qt())
        skip();
    rng_t r = {0xdeadbeefull};
    const pd_ggml_type_t types[] = {PD_GGML_TYPE_Q8_0, PD_GGML_TYPE_Q4_0};
    const uint32_t n_rows[] = {1, 2, 7, 8, 13, 16, 24, 33};
    for (int t = 0; t < 2; t++)
        for (int k = 0; k < 8; k++)
            check_qt_x(types[t], 32 * 19, 37, n_rows[k], 0, 37, &r, true);
}

static void test_qt_rows_rule(void **state)
{
    (void)state;
    const uint32_t want = have_qt() ? 1 : 0;
    assert_int_equal(pd_kern_qt_rows(PD_GGML_TYPE_Q8_0, 32), 32 * want);
    assert_int_equal(pd_kern_qt_rows(PD_GGML_TYPE_Q4_0, 8), 8 * want);
    assert_int_equal(pd_kern_qt_rows(PD_GGML_TYPE_Q8_0, 6), 6 * want);
    assert_int_equal(pd_kern_qt_rows(PD_GGML_TYPE_Q8_0, 5), 0);
    assert_int_equal(pd_kern_qt_rows(PD_GGML_TYPE_Q8_0, 1), 0);
    assert_int_equal(pd_kern_qt_rows(PD_GGML_TYPE_Q4_0, 17), 16 * want);
    assert_int_equal(pd_kern_qt_rows(PD_GGML_TYPE_Q8_0, 21), 16 * want);
    assert_int_equal(pd_kern_qt_rows(PD_GGML_TYPE_Q8_0, 22), 22 * want);
    assert_int_equal(pd_kern_qt_rows(PD_GGML_TYPE_Q8_0, 47), 47 * want);
    assert_int_equal(pd_kern_qt_rows(PD_GGML_TYPE_Q8_0, 64), 64 * want);
    assert_int_equal(pd_kern_qt_rows(PD_GGML_TYPE_Q4_K, 32), 0);
    assert_int_equal(pd_kern_qt_rows(PD_GGML_TYPE_F32, 32), 0);
    assert_int_equal(pd_kern_qt_bytes(64, 17), (size_t)2 * 2 * PD_QT_BLK_BYTES);
}

/* Through pd_matmul (pool of 2): row r of a 32-row product (qt kernel; 22
 * rows: a group of 16 and one of 6 in qt8 blocks; 8 rows: qt8 blocks; 21
 * rows: 16 by qt, 5 by the skinny kernel; 3 rows: skinny) is bitwise row r
 * alone (skinny kernel). */
static void test_qt_matmul_batch_invariant(void **state)
{
    (void)state;
    rng_t r = {0xfacefeedull};
    pd_pool_t *pool = pd_pool_new(2);
    assert_non_null(pool);
    const pd_ggml_type_t types[] = {PD_GGML_TYPE_Q8_0, PD_GGML_TYPE_Q4_0};
    const uint32_t n_in = 2048 + 64, n_out = 150;
    const uint32_t batches[] = {32, 22, 21, 8, 3};
    for (int t = 0; t < 2; t++)
        for (int bi = 0; bi < 5; bi++) {
            const uint32_t n_rows = batches[bi];
            uint8_t *wd = make_w(types[t], n_out, n_in, &r, false);
            const pd_mat_t w = {wd, types[t], n_out, n_in, n_in / 32 * wblk(types[t])};
            float *x = malloc(sizeof(float) * n_in * n_rows);
            float *yb = malloc(sizeof(float) * n_out * n_rows), *y1 = malloc(sizeof(float) * n_out);
            void *scratch = aligned_alloc(64, pd_matmul_scratch_bytes(&w, 64));
            assert_non_null(x);
            assert_non_null(yb);
            assert_non_null(y1);
            assert_non_null(scratch);
            for (size_t i = 0; i < (size_t)n_in * n_rows; i++)
                x[i] = rng_f(&r);
            pd_matmul(pool, &w, x, n_rows, yb, scratch, PD_SKINNY_DEFAULT_MAX);
            for (uint32_t k = 0; k < n_rows; k++) {
                pd_matmul(pool, &w, x + (size_t)k * n_in, 1, y1, scratch, PD_SKINNY_DEFAULT_MAX);
                if (memcmp(y1, yb + (size_t)k * n_out, sizeof(float) * n_out) != 0) {
                    print_error("type %d batch %u: row %u differs from alone\n", types[t],
                                n_rows, k);
                    fail();
                }
            }
            free(scratch);
            free(y1);
            free(yb);
            free(x);
            free(wd);
        }
    pd_pool_free(pool);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_qlanes_ref_is_the_skinny_kernels),
        cmocka_unit_test(test_skinny_far_rows),
        cmocka_unit_test(test_skinny_scales16),
        cmocka_unit_test(test_qt_matches_ref),
        cmocka_unit_test(test_qt_extremes),
        cmocka_unit_test(test_qt_rows_rule),
        cmocka_unit_test(test_qt_matmul_batch_invariant),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
