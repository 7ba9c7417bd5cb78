/* test_kernels_gemm.c -- the tiled F32 product (kernels_gemm.h) and the
 * definition it must meet to the bit (pd_gemm_f32_ref):
 *   - the AVX-512 skinny kernel gives the reference's bits (so the
 *     reference is what decode has always computed);
 *   - the AVX-512 packings write the C packings' bytes, and the
 *     packed micro-kernel gives the reference's bits on odd shapes
 *     (row tiles of 1..14, their halves of 7 and tails, panels cut short
 *     by n_out), and
 *     writes nothing past its n_o outputs;
 *   - through pd_matmul and pd_matmul_multi (2 threads, lockstep or not,
 *     with an epilogue) a token's outputs in a batch of 64..150 rows are
 *     bitwise its outputs alone (the skinny kernel): batch invariance;
 *   - so is the residual add or SwiGLU fused into the tiled kernel's
 *     stores (pd_gemm_fuse_epi);
 *   - quantized weights on the sgemm path (panels dequantized, the same
 *     micro-kernel) give the reference on the dequantized matrix. */
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

static void test_ref_is_skinny(void **state)
{
    (void)state;
    if (!have_avx512())
        skip();
    rng_t r = {0x9e3779b97f4a7c15ull};
    const uint32_t n_ins[] = {16, 48, 784, 2064}, n_out = 37, n_rows = 20;
    for (size_t i = 0; i < 4; i++) {
        const uint32_t n_in = n_ins[i];
        float *wd = make_f((size_t)n_out * n_in, &r), *x = make_f((size_t)n_rows * n_in, &r);
        float *y0 = malloc(sizeof(float) * n_out * n_rows), *y1 = malloc(sizeof(float) * n_out * n_rows);
        assert_non_null(y0);
        assert_non_null(y1);
        const pd_mat_t w = mat(wd, n_out, n_in);
        pd_gemm_f32_ref(&w, 0, n_out, x, n_in, n_rows, y0, n_out);
        for (uint32_t nr = 1; nr <= n_rows; nr += 3) {
            pd_kern_skinny_avx512(&w, 0, n_out, x, n_in, NULL, nr, y1, n_out);
            assert_memory_equal(y0, y1, sizeof(float) * n_out * nr);
        }
        free(y1);
        free(y0);
        free(x);
        free(wd);
    }
}

static void test_panel_matches_ref(void **state)
{
    (void)state;
    if (!have_avx512())
        skip();
    rng_t r = {0x1234567ull};
    const uint32_t n_ins[] = {16, 32, 784};
    const uint32_t n_outs[] = {1, 15, 16, 17, 31, 32, 33, 70};
    const uint32_t rows[] = {1, 2, 7, 13, 14, 15, 22, 28, 29, 64};
    const uint32_t pad = 40; /* y columns past the panel: must stay untouched */
    for (size_t a = 0; a < 3; a++)
        for (size_t b = 0; b < 8; b++)
            for (size_t c = 0; c < sizeof rows / sizeof rows[0]; c++) {
                const uint32_t n_in = n_ins[a], n_out = n_outs[b], n_rows = rows[c];
                float *wd = make_f((size_t)n_out * n_in, &r), *x = make_f((size_t)n_rows * n_in, &r);
                const pd_mat_t w = mat(wd, n_out, n_in);
                float *wp = malloc(sizeof(float) * PD_GEMM_NO * n_in);
                float *wp2 = malloc(sizeof(float) * PD_GEMM_NO * n_in);
                assert_non_null(wp2);
                float *xp = malloc(sizeof(float) * n_rows * n_in);
                const uint32_t ys = n_out + pad;
                float *y = malloc(sizeof(float) * ys * n_rows), *yr = malloc(sizeof(float) * ys * n_rows);
                assert_non_null(wp);
                assert_non_null(xp);
                assert_non_null(y);
                assert_non_null(yr);
                memset(y, 0x7f, sizeof(float) * ys * n_rows);
                memset(yr, 0x7f, sizeof(float) * ys * n_rows);
                float *xp2 = malloc(sizeof(float) * n_rows * n_in);
                assert_non_null(xp2);
                for (uint32_t r0 = 0; r0 < n_rows; r0 += PD_GEMM_NR) {
                    const uint32_t nr = n_rows - r0 < PD_GEMM_NR ? n_rows - r0 : PD_GEMM_NR;
                    pd_gemm_f32_pack_x(x, n_in, n_in, r0, nr, xp);
                    pd_gemm_f32_pack_x_avx512(x, n_in, n_in, r0, nr, xp2);
                }
                assert_memory_equal(xp, xp2, sizeof(float) * n_rows * n_in); /* the same bytes */
                free(xp2);
                for (uint32_t o0 = 0; o0 < n_out; o0 += PD_GEMM_NO) {
                    const uint32_t n_o = n_out - o0 < PD_GEMM_NO ? n_out - o0 : PD_GEMM_NO;
                    pd_gemm_f32_pack_w(&w, o0, wp);
                    memset(wp2, 0x55, sizeof(float) * PD_GEMM_NO * n_in);
                    pd_gemm_f32_pack_w_avx512(&w, o0, wp2); /* the same bytes */
                    assert_memory_equal(wp, wp2, sizeof(float) * PD_GEMM_NO * n_in);
                    const pd_gemm_next_t next = {o0 + PD_GEMM_NO < n_out ? &w : NULL,
                                                 o0 + PD_GEMM_NO};
                    pd_gemm_f32_panel_avx512(wp, xp, n_in, n_rows, n_o, y + o0, ys, NULL, &next);
                }
                pd_gemm_f32_ref(&w, 0, n_out, x, n_in, n_rows, yr, ys);
                for (uint32_t rr = 0; rr < n_rows; rr++)
                    if (memcmp(y + (size_t)rr * ys, yr + (size_t)rr * ys, sizeof(float) * ys) != 0) {
                        print_error("panel %ux%u rows %u: row %u differs\n", n_out, n_in, n_rows, rr);
                        fail();
                    }
                free(yr);
                free(y);
                free(xp);
                free(wp2);
                free(wp);
                free(x);
                free(wd);
            }
}

/* ====== Through pd_matmul and pd_matmul_multi ====== */

typedef struct {
    int *hits; /* (product, or 0 in lockstep; 256 output rows) calls per row */
} epi_count_t;

static void count_epi(void *ctx, int i, uint32_t o0, uint32_t o1)
{
    epi_count_t *c = ctx;
    for (uint32_t o = o0; o < o1; o++)
        __atomic_fetch_add(&c->hits[(size_t)(i < 0 ? 0 : i) * 256 + o], 1, __ATOMIC_RELAXED);
}

static void test_matmul_batch_invariant(void **state)
{
    (void)state;
    if (!have_avx512())
        skip();
    rng_t r = {0xabcdefull};
    pd_pool_t *pool = pd_pool_new(2);
    assert_non_null(pool);
    const uint32_t n_in = 96, rows[] = {PD_GEMM_MIN_ROWS, 79, 150};
    for (size_t k = 0; k < 3; k++)
        for (int lock = 0; lock < 2; lock++) {
            const uint32_t n_rows = rows[k], n_outs[3] = {100, lock ? 100 : 33, lock ? 100 : 17};
            float *x = make_f((size_t)n_rows * n_in, &r), *wd[3];
            pd_mat_t w[3];
            pd_mm_out_t outs[3];
            size_t sb = 0;
            for (int i = 0; i < 3; i++) {
                wd[i] = make_f((size_t)n_outs[i] * n_in, &r);
                w[i] = mat(wd[i], n_outs[i], n_in);
                outs[i] = (pd_mm_out_t){&w[i], malloc(sizeof(float) * n_outs[i] * n_rows)};
                assert_non_null(outs[i].y);
                size_t b = pd_matmul_scratch_bytes(&w[i], n_rows);
                sb = b > sb ? b : sb;
                assert_true(pd_gemm_f32_takes(&w[i], n_rows));
                assert_true(pd_matmul_uses_skinny(&w[i], n_rows, n_rows));
            }
            void *scratch = aligned_alloc(64, sb);
            float *yb = malloc(sizeof(float) * 100 * n_rows), *y1 = malloc(sizeof(float) * 100);
            assert_non_null(scratch);
            assert_non_null(yb);
            assert_non_null(y1);
            epi_count_t ec = {calloc(3 * 256, sizeof(int))};
            assert_non_null(ec.hits);
            pd_matmul_multi(pool, outs, 3, lock, x, n_rows, scratch, n_rows, count_epi, &ec);
            for (int i = 0; i < 3; i++) {
                pd_matmul(pool, &w[i], x, n_rows, yb, scratch, n_rows); /* one product */
                assert_memory_equal(yb, outs[i].y, sizeof(float) * n_outs[i] * n_rows);
                for (uint32_t rr = 0; rr < n_rows; rr++) { /* each token alone: skinny */
                    pd_matmul(pool, &w[i], x + (size_t)rr * n_in, 1, y1, scratch, n_rows);
                    assert_memory_equal(y1, outs[i].y + (size_t)rr * n_outs[i],
                                        sizeof(float) * n_outs[i]);
                }
                for (uint32_t o = 0; o < n_outs[i]; o++)
                    assert_int_equal(ec.hits[(size_t)(lock ? 0 : i) * 256 + o], 1);
                free(outs[i].y);
                free(wd[i]);
            }
            free(ec.hits);
            free(y1);
            free(yb);
            free(scratch);
            free(x);
        }
    pd_pool_free(pool);
}

/* The fusable epilogue (pd_gemm_fuse_epi): the residual add over one
 * product, SwiGLU over gate and up in lockstep. Through the tiled kernel
 * (fused into its stores when n_out allows, plain otherwise) each row's
 * result is bitwise that row's alone (the skinny kernel, plain epilogue). */
static void test_fused_epilogue(void **state)
{
    (void)state;
    if (!have_avx512())
        skip();
    rng_t r = {0x5eedull};
    pd_pool_t *pool = pd_pool_new(2);
    assert_non_null(pool);
    const uint32_t n_in = 64, rows[] = {PD_GEMM_MIN_ROWS, 79}, outs_n[] = {104, 100};
    for (size_t k = 0; k < 2; k++)
        for (size_t q = 0; q < 2; q++)
            for (int swiglu = 0; swiglu < 2; swiglu++) {
                const uint32_t n_rows = rows[k], n_out = outs_n[q];
                const int n = swiglu ? 2 : 1;
                float *x = make_f((size_t)n_rows * n_in, &r), *wd[2], *y[2], *y1[2];
                pd_mat_t w[2];
                pd_mm_out_t o[2], o1[2];
                for (int i = 0; i < n; i++) {
                    wd[i] = make_f((size_t)n_out * n_in, &r);
                    w[i] = mat(wd[i], n_out, n_in);
                    y[i] = malloc(sizeof(float) * n_out * n_rows);
                    y1[i] = malloc(sizeof(float) * n_out);
                    assert_non_null(y[i]);
                    assert_non_null(y1[i]);
                    o[i] = (pd_mm_out_t){&w[i], y[i]};
                    o1[i] = (pd_mm_out_t){&w[i], y1[i]};
                }
                float *res = make_f((size_t)n_rows * n_out, &r); /* the residual stream */
                float *res1 = malloc(sizeof(float) * n_out);
                void *scratch = aligned_alloc(64, pd_matmul_scratch_bytes(&w[0], n_rows));
                assert_non_null(res1);
                assert_non_null(scratch);
                float *res0 = malloc(sizeof(float) * n_out * n_rows); /* res before */
                assert_non_null(res0);
                memcpy(res0, res, sizeof(float) * n_out * n_rows);
                pd_gemm_fuse_t f = {swiglu ? PD_GEMM_FUSE_SWIGLU : PD_GEMM_FUSE_ADD,
                                    swiglu ? y[0] : res, y[n - 1], n_out, n_rows};
                pd_matmul_multi(pool, o, n, swiglu, x, n_rows, scratch, n_rows, pd_gemm_fuse_epi, &f);
                for (uint32_t rr = 0; rr < n_rows; rr++) {
                    memcpy(res1, res0 + (size_t)rr * n_out, sizeof(float) * n_out);
                    pd_gemm_fuse_t f1 = {f.op, swiglu ? y1[0] : res1, y1[n - 1], n_out, 1};
                    pd_matmul_multi(pool, o1, n, swiglu, x + (size_t)rr * n_in, 1, scratch,
                                    n_rows, pd_gemm_fuse_epi, &f1);
                    const float *got = swiglu ? y[0] : res, *want = swiglu ? y1[0] : res1;
                    if (memcmp(got + (size_t)rr * n_out, want, sizeof(float) * n_out) != 0) {
                        print_error("%s %ux%u rows %u: row %u differs\n", swiglu ? "swiglu" : "add",
                                    n_out, n_in, n_rows, rr);
                        fail();
                    }
                }
                for (int i = 0; i < n; i++) {
                    free(wd[i]);
                    free(y[i]);
                    free(y1[i]);
                }
                free(res0);
                free(res);
                free(res1);
                free(scratch);
                free(x);
            }
    pd_pool_free(pool);
}

/* Weights of other types on the sgemm path (pd_gemm_deq_takes): each
 * panel dequantized and packed, then the same micro-kernel, so the result
 * is bitwise pd_gemm_f32_ref on the dequantized matrix; one product and two
 * in lockstep (2 threads), Q8_0 and Q4_0, ragged n_out. Called directly:
 * pd_matmul gives these two types to the integer kernel (test_kernels_qg),
 * the path stays for the others (the K-quants, IQ4_NL, F16, BF16). */
static void test_dequantized_panels(void **state)
{
    (void)state;
    if (!have_avx512())
        skip();
    rng_t r = {0xd0d0ull};
    pd_pool_t *pool = pd_pool_new(2);
    assert_non_null(pool);
    const uint32_t n_in = 96, n_out = 70, n_rows = 79;
    const pd_ggml_type_t types[] = {PD_GGML_TYPE_Q8_0, PD_GGML_TYPE_Q4_0};
    for (size_t t = 0; t < 2; t++) {
        const uint64_t rb = pd_ggml_row_bytes(types[t], n_in);
        float *x = make_f((size_t)n_rows * n_in, &r), *wd = make_f((size_t)n_out * n_in, &r);
        float *deq = malloc(sizeof(float) * n_out * n_in), *yr = malloc(sizeof(float) * n_out * n_rows);
        uint8_t *q[2] = {malloc(rb * n_out), malloc(rb * n_out)};
        float *y[2] = {malloc(sizeof(float) * n_out * n_rows), malloc(sizeof(float) * n_out * n_rows)};
        assert_true(deq && yr && q[0] && q[1] && y[0] && y[1]);
        for (uint32_t o = 0; o < n_out; o++) {
            if (types[t] == PD_GGML_TYPE_Q8_0)
                pd_quant_row_q8_0(wd + (size_t)o * n_in, q[0] + o * rb, n_in);
            else
                pd_quant_row_q4_0(wd + (size_t)o * n_in, q[0] + o * rb, n_in);
            pd_dequant_row(types[t], q[0] + o * rb, deq + (size_t)o * n_in, n_in);
        }
        memcpy(q[1], q[0], rb * n_out);
        const pd_mat_t wq[2] = {{q[0], types[t], n_out, n_in, rb}, {q[1], types[t], n_out, n_in, rb}};
        const pd_mat_t wf = mat(deq, n_out, n_in);
        assert_true(pd_gemm_deq_takes(&wq[0], n_rows));
        assert_false(pd_matmul_uses_skinny(&wq[0], n_rows, PD_SKINNY_QUANT_MAX));
        void *scratch = aligned_alloc(64, pd_matmul_scratch_bytes(&wq[0], n_rows));
        assert_non_null(scratch);
        pd_gemm_f32_ref(&wf, 0, n_out, x, n_in, n_rows, yr, n_out);
        const pd_mm_out_t outs[2] = {{&wq[0], y[0]}, {&wq[1], y[1]}};
        pd_gemm_f32_multi(pool, outs, 1, false, x, n_rows, scratch, NULL, NULL);
        assert_memory_equal(y[0], yr, sizeof(float) * n_out * n_rows);
        memset(y[0], 0, sizeof(float) * n_out * n_rows);
        pd_gemm_f32_multi(pool, outs, 2, true, x, n_rows, scratch, NULL, NULL);
        for (int i = 0; i < 2; i++)
            assert_memory_equal(y[i], yr, sizeof(float) * n_out * n_rows);
        for (int i = 0; i < 2; i++) {
            free(q[i]);
            free(y[i]);
        }
        free(scratch);
        free(yr);
        free(deq);
        free(wd);
        free(x);
    }
    pd_pool_free(pool);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ref_is_skinny),
        cmocka_unit_test(test_panel_matches_ref),
        cmocka_unit_test(test_matmul_batch_invariant),
        cmocka_unit_test(test_fused_epilogue),
        cmocka_unit_test(test_dequantized_panels),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
