/* test_kernels_f32.c -- the AVX-512 F32 product for 2..64 rows
 * (kernels_f32_avx512.c) against the definition, to the bit:
 *   - n_in % 16 == 0: pd_gemm_f32_ref's bits for every row count 2..64 and
 *     sliced batches (70, 130), odd n_out, output sub-ranges;
 *   - any n_in (scalar tails): the 1-row kernel is pd_gemm_f32_ref's bits
 *     (lanes, tree, then the tail one by one) and each row of a batch is
 *     bitwise the row alone, with strided x and y;
 *   - through pd_matmul (pool of 2, the padded-x path at n_in 1024): a
 *     token in a decode batch of 2..63 rows is bitwise the token alone;
 *   - the far-row panels (kernels_rows.h) at 1, 8 and 32 rows: ranges with
 *     a tail, odd starts, pd_matmul's task chunks at 1 and 2 threads, all
 *     pd_gemm_f32_ref's bits;
 *   - the many-row kernel (17..64 rows): K-tiles, panel tails, unaligned
 *     ranges, strided x and y, pd_gemm_f32_ref's bits. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/kernels.h"
#include "engine/kernels_gemm.h"
#include "engine/pool.h"

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

/* Values over several magnitudes and both signs, so that the order of the
 * roundings shows in the last bits. */
static float *make_f(size_t n, rng_t *r)
{
    float *v = malloc(sizeof(float) * n + 64);
    assert_non_null(v);
    for (size_t i = 0; i < n; i++) {
        float f = (float)(rng_u32(r) & 0xffffff) / 8388608.0f - 1.0f;
        v[i] = f * (float)(1u << (rng_u32(r) % 12)) / 64.0f;
    }
    return v;
}

static pd_mat_t mat(const float *w, uint32_t n_out, uint32_t n_in)
{
    return (pd_mat_t){w, PD_GGML_TYPE_F32, n_out, n_in, (uint64_t)n_in * sizeof(float)};
}

static bool have_avx512(void)
{
    return pd_kern_isa() == PD_ISA_AVX512;
}

/* Rows 2..64, then batches the kernel slices. */
static const uint32_t *row_counts(size_t *n)
{
    static uint32_t rows[63 + 2];
    size_t k = 0;
    for (uint32_t nr = 2; nr <= 64; nr++)
        rows[k++] = nr;
    rows[k++] = 70;
    rows[k++] = 130;
    *n = k;
    return rows;
}

static void test_f32_matches_ref(void **state)
{
    (void)state;
    if (!have_avx512())
        skip();
    rng_t r = {0x243f6a8885a308d3ull};
    const uint32_t n_ins[] = {16, 48, 784, 2064};
    const uint32_t n_outs[] = {1, 5, 12, 13, 37};
    size_t n_rc;
    const uint32_t *rows = row_counts(&n_rc);
    for (size_t a = 0; a < 4; a++)
        for (size_t b = 0; b < 5; b++) {
            const uint32_t n_in = n_ins[a], n_out = n_outs[b], max_rows = 130;
            float *wd = make_f((size_t)n_out * n_in, &r), *x = make_f((size_t)max_rows * n_in, &r);
            float *yr = malloc(sizeof(float) * n_out * max_rows);
            float *y = malloc(sizeof(float) * n_out * max_rows);
            assert_non_null(yr);
            assert_non_null(y);
            const pd_mat_t w = mat(wd, n_out, n_in);
            pd_gemm_f32_ref(&w, 0, n_out, x, n_in, max_rows, yr, n_out);
            for (size_t c = 0; c < n_rc; c++) {
                const uint32_t nr = rows[c];
                /* all outputs, then a sub-range (a task's share) */
                const uint32_t o0 = n_out > 4 ? 3 : 0, o1 = n_out > 4 ? n_out - 1 : n_out;
                memset(y, 0x7f, sizeof(float) * n_out * nr);
                pd_kern_skinny_f32_avx512(&w, 0, n_out, x, n_in, nr, y, n_out);
                if (memcmp(y, yr, sizeof(float) * n_out * nr) != 0) {
                    print_error("%ux%u rows %u differ from the reference\n", n_out, n_in, nr);
                    fail();
                }
                memset(y, 0x7f, sizeof(float) * n_out * nr);
                pd_kern_skinny_f32_avx512(&w, o0, o1, x, n_in, nr, y, n_out);
                for (uint32_t rr = 0; rr < nr; rr++)
                    for (uint32_t o = 0; o < n_out; o++) {
                        const float *got = y + (size_t)rr * n_out + o;
                        if (o >= o0 && o < o1)
                            assert_memory_equal(got, yr + (size_t)rr * n_out + o, sizeof(float));
                        else /* outside the range: untouched */
                            assert_memory_equal(got, &(uint32_t){0x7f7f7f7fu}, sizeof(float));
                    }
            }
            free(y);
            free(yr);
            free(x);
            free(wd);
        }
}

/* n_in with scalar tails, x and y strided: each row of the batch is the
 * 1-row kernel's bits. */
static void test_f32_tail_batch_invariant(void **state)
{
    (void)state;
    if (!have_avx512())
        skip();
    rng_t r = {0x13198a2e03707344ull};
    const uint32_t n_ins[] = {1, 7, 33, 1000, 1023};
    const uint32_t n_out = 29, xs_pad = 5, ys_pad = 3;
    size_t n_rc;
    const uint32_t *rows = row_counts(&n_rc);
    for (size_t a = 0; a < 5; a++) {
        const uint32_t n_in = n_ins[a], max_rows = 130;
        const uint32_t xs = n_in + xs_pad, ys = n_out + ys_pad;
        float *wd = make_f((size_t)n_out * n_in, &r), *x = make_f((size_t)max_rows * xs, &r);
        float *y1 = malloc(sizeof(float) * ys * max_rows), *y = malloc(sizeof(float) * ys * max_rows);
        assert_non_null(y1);
        assert_non_null(y);
        const pd_mat_t w = mat(wd, n_out, n_in);
        for (uint32_t rr = 0; rr < max_rows; rr++)
            pd_kern_skinny_avx512(&w, 0, n_out, x + (size_t)rr * xs, xs, NULL, 1,
                                  y1 + (size_t)rr * ys, ys);
        pd_gemm_f32_ref(&w, 0, n_out, x, xs, max_rows, y, ys);
        for (uint32_t rr = 0; rr < max_rows; rr++)
            if (memcmp(y + (size_t)rr * ys, y1 + (size_t)rr * ys, sizeof(float) * n_out) != 0) {
                print_error("n_in %u: row %u alone is not the definition\n", n_in, rr);
                fail();
            }
        for (size_t c = 0; c < n_rc; c++) {
            const uint32_t nr = rows[c];
            pd_kern_skinny(&w, 0, n_out, x, xs, NULL, nr, y, ys); /* the dispatch */
            for (uint32_t rr = 0; rr < nr; rr++)
                if (memcmp(y + (size_t)rr * ys, y1 + (size_t)rr * ys, sizeof(float) * n_out) != 0) {
                    print_error("n_in %u rows %u: row %u is not the row alone\n", n_in, nr, rr);
                    fail();
                }
        }
        free(y);
        free(y1);
        free(x);
        free(wd);
    }
}

/* pd_matmul with 2 threads: a token in a batch of 2..63 is bitwise the
 * token alone (n_in 1024: the padded-x path; 768: the model's width). */
static void test_f32_matmul_batch_invariant(void **state)
{
    (void)state;
    if (!have_avx512())
        skip();
    rng_t r = {0xa4093822299f31d0ull};
    pd_pool_t *pool = pd_pool_new(2);
    assert_non_null(pool);
    const uint32_t n_ins[] = {768, 1024}, n_out = 300, max_rows = 63;
    for (size_t a = 0; a < 2; a++) {
        const uint32_t n_in = n_ins[a];
        float *wd = make_f((size_t)n_out * n_in, &r), *x = make_f((size_t)max_rows * n_in, &r);
        const pd_mat_t w = mat(wd, n_out, n_in);
        void *scratch = malloc(pd_matmul_scratch_bytes(&w, max_rows) + 64);
        float *y1 = malloc(sizeof(float) * n_out * max_rows), *y = malloc(sizeof(float) * n_out * max_rows);
        assert_non_null(scratch);
        assert_non_null(y1);
        assert_non_null(y);
        for (uint32_t rr = 0; rr < max_rows; rr++)
            pd_matmul(pool, &w, x + (size_t)rr * n_in, 1, y1 + (size_t)rr * n_out, scratch,
                      PD_SKINNY_MAX_ROWS);
        for (uint32_t nr = 2; nr <= max_rows; nr += (nr < 10 ? 1 : 7)) {
            pd_matmul(pool, &w, x, nr, y, scratch, PD_SKINNY_MAX_ROWS);
            if (memcmp(y, y1, sizeof(float) * n_out * nr) != 0) {
                print_error("pd_matmul n_in %u rows %u differs from the rows alone\n", n_in, nr);
                fail();
            }
        }
        free(y);
        free(y1);
        free(scratch);
        free(x);
        free(wd);
    }
    pd_pool_free(pool);
}

/* The far-row panels (kernels_rows.h): output ranges whose row count is
 * not a multiple of the panel (a tail after the far panels), odd starts,
 * and pd_matmul's task chunks (1 and 2 threads), at 1, 8 and 32 rows
 * (the 1-row kernel, the 3 x 8 kernel, the 4 x 6 kernel): every output is
 * pd_gemm_f32_ref's bits and nothing outside the range is written. */
static void test_f32_far_panels(void **state)
{
    (void)state;
    if (!have_avx512())
        skip();
    rng_t r = {0x452821e638d01377ull};
    const uint32_t n_in = 784, n_out = 997, max_rows = 32;
    const uint32_t n_rows[] = {1, 8, 32};
    /* [o0, o1): one row, under a panel, 2 panels + tail, many panels + tail */
    const uint32_t ranges[][2] = {{5, 6}, {1, 12}, {0, 31}, {7, 250}, {13, 997}, {0, 997}};
    float *wd = make_f((size_t)n_out * n_in, &r), *x = make_f((size_t)max_rows * n_in, &r);
    const pd_mat_t w = mat(wd, n_out, n_in);
    float *yr = malloc(sizeof(float) * n_out * max_rows), *y = malloc(sizeof(float) * n_out * max_rows);
    void *scratch = malloc(pd_matmul_scratch_bytes(&w, max_rows) + 64);
    pd_pool_t *pools[2] = {pd_pool_new(1), pd_pool_new(2)};
    assert_non_null(yr);
    assert_non_null(y);
    assert_non_null(scratch);
    assert_non_null(pools[0]);
    assert_non_null(pools[1]);
    pd_gemm_f32_ref(&w, 0, n_out, x, n_in, max_rows, yr, n_out);
    for (size_t k = 0; k < 3; k++) {
        const uint32_t nr = n_rows[k];
        for (size_t g = 0; g < sizeof ranges / sizeof ranges[0]; g++) {
            const uint32_t o0 = ranges[g][0], o1 = ranges[g][1];
            memset(y, 0x7f, sizeof(float) * n_out * nr);
            pd_kern_skinny(&w, o0, o1, x, n_in, NULL, nr, y, n_out);
            for (uint32_t rr = 0; rr < nr; rr++)
                for (uint32_t o = 0; o < n_out; o++) {
                    const float *want = o >= o0 && o < o1 ? yr + (size_t)rr * n_out + o
                                                          : (const float *)&(uint32_t){0x7f7f7f7fu};
                    if (memcmp(y + (size_t)rr * n_out + o, want, sizeof(float)) != 0) {
                        print_error("rows %u range [%u, %u): y[%u][%u] wrong\n", nr, o0, o1, rr, o);
                        fail();
                    }
                }
        }
        for (int p = 0; p < 2; p++) {
            memset(y, 0x7f, sizeof(float) * n_out * nr);
            pd_matmul(pools[p], &w, x, nr, y, scratch, PD_SKINNY_MAX_ROWS);
            if (memcmp(y, yr, sizeof(float) * n_out * nr) != 0) {
                print_error("pd_matmul %d thread(s) rows %u differs from the reference\n", p + 1, nr);
                fail();
            }
        }
    }
    pd_pool_free(pools[1]);
    pd_pool_free(pools[0]);
    free(scratch);
    free(y);
    free(yr);
    free(x);
    free(wd);
}

/* The many-row kernel (17..64 rows, decode batch 32): whole-K calls and
 * K-tiles (n_in 4112: three tiles of at most 2048), 16-output panels with
 * a tail under 16 and unaligned starts, strided x and y, batches sliced at
 * 64 rows: every output pd_gemm_f32_ref's bits (the 1-row kernel's: the
 * same lanes and tree), nothing outside the range written. */
static void test_f32_many_rows(void **state)
{
    (void)state;
    if (!have_avx512())
        skip();
    rng_t r = {0x082efa98ec4e6c89ull};
    const uint32_t n_ins[] = {768, 2048, 4112, 1000}, n_out = 53, xs_pad = 16, ys_pad = 7;
    const uint32_t n_rows[] = {17, 18, 23, 24, 31, 32, 33, 48, 63, 64, 70};
    const uint32_t ranges[][2] = {{0, 53}, {7, 53}, {3, 19}, {16, 32}, {50, 53}};
    for (size_t a = 0; a < sizeof n_ins / sizeof n_ins[0]; a++) {
        const uint32_t n_in = n_ins[a], max_rows = 70, xs = n_in + xs_pad, ys = n_out + ys_pad;
        float *wd = make_f((size_t)n_out * n_in, &r), *x = make_f((size_t)max_rows * xs, &r);
        float *yr = malloc(sizeof(float) * ys * max_rows), *y = malloc(sizeof(float) * ys * max_rows);
        assert_non_null(yr);
        assert_non_null(y);
        const pd_mat_t w = mat(wd, n_out, n_in);
        pd_gemm_f32_ref(&w, 0, n_out, x, xs, max_rows, yr, ys);
        for (size_t k = 0; k < sizeof n_rows / sizeof n_rows[0]; k++)
            for (size_t g = 0; g < sizeof ranges / sizeof ranges[0]; g++) {
                const uint32_t nr = n_rows[k], o0 = ranges[g][0], o1 = ranges[g][1];
                memset(y, 0x7f, sizeof(float) * ys * nr);
                pd_kern_skinny(&w, o0, o1, x, xs, NULL, nr, y, ys);
                for (uint32_t rr = 0; rr < nr; rr++)
                    for (uint32_t o = 0; o < ys; o++) {
                        const float *want = o >= o0 && o < o1
                                                ? yr + (size_t)rr * ys + o
                                                : (const float *)&(uint32_t){0x7f7f7f7fu};
                        if (memcmp(y + (size_t)rr * ys + o, want, sizeof(float)) != 0) {
                            print_error("n_in %u rows %u range [%u, %u): y[%u][%u] wrong\n",
                                        n_in, nr, o0, o1, rr, o);
                            fail();
                        }
                    }
            }
        free(y);
        free(yr);
        free(x);
        free(wd);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_f32_matches_ref),
        cmocka_unit_test(test_f32_tail_batch_invariant),
        cmocka_unit_test(test_f32_matmul_batch_invariant),
        cmocka_unit_test(test_f32_far_panels),
        cmocka_unit_test(test_f32_many_rows),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
