/* test_kvcache.c -- block pool, refcounts, sequences, layout, budget. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "engine/kvcache.h"

/* 2 layers x (16 tokens, 2 heads x 8 dims) fp32: one region 1 KiB, block 4 KiB. */
static pd_kv_shape_t small_shape(uint32_t n_blocks)
{
    return (pd_kv_shape_t){ .n_layers = 2, .n_kv_heads = 2, .head_dim = 8, .block_size = 16,
                            .n_blocks = n_blocks };
}

static pd_kv_t *new_kv(uint32_t n_blocks)
{
    pd_kv_shape_t s = small_shape(n_blocks);
    pd_err_t err = { 0 };
    pd_kv_t *kv = pd_kv_new(&s, &err);
    assert_non_null(kv);
    return kv;
}

static uint64_t lcg(uint64_t *st)
{
    *st = *st * 6364136223846793005ull + 1442695040888963407ull;
    return *st >> 33;
}

/* ====== Construction ====== */

static void expect_refused(pd_kv_shape_t s, int code, const char *needle)
{
    pd_err_t err = { 0 };
    assert_null(pd_kv_new(&s, &err));
    assert_int_equal(err.code, code);
    assert_non_null(strstr(err.msg, needle));
}

static void test_new_refuses_bad_shapes(void **st)
{
    (void)st;
    pd_kv_shape_t s = small_shape(4);
    s.n_layers = 0;
    expect_refused(s, PD_EINVAL, "n_layers=0");
    s = small_shape(4);
    s.n_kv_heads = 0;
    expect_refused(s, PD_EINVAL, "n_kv_heads=0");
    s = small_shape(4);
    s.head_dim = 0;
    expect_refused(s, PD_EINVAL, "head_dim=0");
    s = small_shape(4);
    s.block_size = 0;
    expect_refused(s, PD_EINVAL, "block_size=0");
    s = small_shape(0);
    expect_refused(s, PD_EINVAL, "n_blocks=0");
    s = small_shape(0x80000000u);
    expect_refused(s, PD_EINVAL, "n_blocks=2147483648");
    /* Block size overflows 64 bits: 2^32 * 2^32 * 2^32 ... */
    s = (pd_kv_shape_t){ UINT32_MAX, UINT32_MAX, UINT32_MAX, UINT32_MAX, 1, PD_KV_F32 };
    expect_refused(s, PD_EINVAL, "overflows");
    /* Pool over 64 GiB: 4 KiB blocks x 2^24 = exactly 64 GiB is allowed in
     * size terms; one more block is not. */
    s = small_shape((1u << 24) + 1);
    expect_refused(s, PD_ERANGE, "64 GiB");
    s = small_shape(2000000000u);
    expect_refused(s, PD_ERANGE, "n_blocks=2000000000");
    pd_err_t err = { 0 };
    assert_null(pd_kv_new(NULL, &err));
    assert_int_equal(err.code, PD_EINVAL);
    pd_kv_free(NULL);
}

static void test_shape_and_counters(void **st)
{
    (void)st;
    pd_kv_t *kv = new_kv(10);
    assert_int_equal(pd_kv_block_bytes(kv), 2 * 2 * 16 * 2 * 8 * sizeof(float));
    assert_int_equal(pd_kv_shape(kv)->n_blocks, 10);
    assert_int_equal(pd_kv_shape(kv)->head_dim, 8);
    assert_int_equal(pd_kv_n_free(kv), 10);
    assert_int_equal(pd_kv_n_used(kv), 0);
    assert_true(pd_kv_valid_id(kv, 0) && pd_kv_valid_id(kv, 9));
    assert_false(pd_kv_valid_id(kv, 10));
    assert_false(pd_kv_valid_id(kv, -1));
    assert_false(pd_kv_valid_id(NULL, 0));
    assert_int_equal(pd_kv_refcount(kv, 0), 0);
    assert_int_equal(pd_kv_refcount(kv, 10), 0);
    assert_int_equal(pd_kv_refcount(kv, -3), 0);
    pd_kv_free(kv);
}

/* ====== Layout ====== */

static int cmp_ptr(const void *a, const void *b)
{
    uintptr_t x = *(const uintptr_t *)a, y = *(const uintptr_t *)b;
    return x < y ? -1 : x > y;
}

/* The layout kvcache.h promises, for an element type: K and V of each
 * layer in turn, each layer's pair contiguous, blocks apart and aligned. */
static void check_block_layout(pd_kv_dtype_t dtype)
{
    enum { NB = 7 };
    pd_kv_shape_t s = { .n_layers = 3, .n_kv_heads = 2, .head_dim = 5, .block_size = 3,
                        .n_blocks = NB, .dtype = dtype };
    pd_kv_t *kv = pd_kv_new(&s, NULL);
    assert_non_null(kv);
    assert_int_equal(pd_kv_dtype(kv), dtype);
    const size_t elem = pd_kv_dtype_size(dtype);
    const size_t region = 3 * 2 * 5 * elem; /* bytes: (block_size, n_kv_heads * head_dim) */
    const size_t bb = pd_kv_block_bytes(kv);
    assert_int_equal(bb, 3 * 2 * region);
    assert_int_equal(pd_kv_layer_bytes(kv), 2 * region);
    uintptr_t addr[NB];
    for (int32_t b = 0; b < NB; b++) {
        unsigned char *blk = pd_kv_block(kv, b);
        addr[b] = (uintptr_t)blk;
        assert_int_equal(addr[b] % 64, 0);
        for (uint32_t l = 0; l < 3; l++) {
            assert_ptr_equal(pd_kv_k(kv, b, l), blk + (2 * l) * region);
            assert_ptr_equal(pd_kv_v(kv, b, l), blk + (2 * l + 1) * region);
            assert_ptr_equal(pd_kv_block_layer(kv, b, l), blk + (2 * l) * region);
        }
        assert_ptr_equal(pd_kv_block_layer(kv, b, 3), blk + bb); /* the end */
    }
    qsort(addr, NB, sizeof addr[0], cmp_ptr);
    for (int i = 1; i < NB; i++)
        assert_true(addr[i] - addr[i - 1] >= bb);
    /* Fill every K/V region with its own tag, then read every one back: a
     * region that overlapped another would lose its tag. */
    for (int32_t b = 0; b < NB; b++)
        for (uint32_t l = 0; l < 3; l++) {
            memset(pd_kv_k(kv, b, l), (int)(b * 6 + l * 2 + 1), region);
            memset(pd_kv_v(kv, b, l), (int)(b * 6 + l * 2 + 2), region);
        }
    for (int32_t b = 0; b < NB; b++)
        for (uint32_t l = 0; l < 3; l++)
            for (size_t i = 0; i < region; i++) {
                assert_int_equal(((unsigned char *)pd_kv_k(kv, b, l))[i], b * 6 + l * 2 + 1);
                assert_int_equal(((unsigned char *)pd_kv_v(kv, b, l))[i], b * 6 + l * 2 + 2);
            }
    pd_kv_free(kv);
}

static void test_block_layout(void **st)
{
    (void)st;
    check_block_layout(PD_KV_F32);
}

/* kv.dtype f16: the same layout in half the bytes. */
static void test_block_layout_f16(void **st)
{
    (void)st;
    check_block_layout(PD_KV_F16);
    pd_kv_shape_t s32 = small_shape(0), s16 = small_shape(0);
    s16.dtype = PD_KV_F16;
    assert_int_equal(pd_kv_blocks_for_budget(&s16, 64 * 4096), 128);
    assert_int_equal(pd_kv_blocks_for_budget(&s32, 64 * 4096), 64);
    pd_kv_dtype_t t = PD_KV_F32;
    assert_int_equal(pd_kv_dtype_parse("f16", &t), 0);
    assert_int_equal(t, PD_KV_F16);
    assert_string_equal(pd_kv_dtype_name(t), "f16");
    assert_int_equal(pd_kv_dtype_parse("f32", &t), 0);
    assert_int_equal(t, PD_KV_F32);
    assert_int_equal(pd_kv_dtype_parse("bf16", &t), PD_EINVAL);
    assert_int_equal(pd_kv_dtype_parse(NULL, &t), PD_EINVAL);
    /* An unknown dtype is refused, naming it. */
    s16.dtype = (pd_kv_dtype_t)7;
    s16.n_blocks = 4;
    pd_err_t err = { 0 };
    assert_null(pd_kv_new(&s16, &err));
    assert_int_equal(err.code, PD_EINVAL);
    assert_non_null(strstr(err.msg, "dtype=7"));
    assert_int_equal(pd_kv_dtype_size((pd_kv_dtype_t)7), 0);
}

/* ====== Alloc / ref / unref against a shadow model ====== */

static void check_against_shadow(pd_kv_t *kv, const uint32_t *shadow, uint32_t nb)
{
    uint32_t n_free = 0;
    for (uint32_t i = 0; i < nb; i++) {
        assert_int_equal(pd_kv_refcount(kv, (int32_t)i), shadow[i]);
        n_free += shadow[i] == 0;
    }
    assert_int_equal(pd_kv_n_free(kv), n_free);
    assert_int_equal(pd_kv_n_used(kv), nb - n_free);
}

static void test_random_cycles_shadow_model(void **st)
{
    (void)st;
    enum { NB = 37, OPS = 10000 };
    pd_kv_t *kv = new_kv(NB);
    uint32_t shadow[NB] = { 0 };
    uint64_t rs = 12345;
    int n_alloc_fail = 0;
    for (int op = 0; op < OPS; op++) {
        uint64_t r = lcg(&rs);
        int32_t held = (int32_t)(lcg(&rs) % NB);
        switch (r % 4) {
        case 0:
        case 1: { /* alloc, a bit more often than free so the pool fills up */
            int32_t id = pd_kv_alloc(kv);
            uint32_t n_free = 0;
            for (int i = 0; i < NB; i++)
                n_free += shadow[i] == 0;
            if (n_free == 0) {
                assert_int_equal(id, -1);
                n_alloc_fail++;
            } else {
                assert_true(pd_kv_valid_id(kv, id));
                assert_int_equal(shadow[id], 0);
                shadow[id] = 1;
            }
            break;
        }
        case 2: /* ref a held block */
            if (shadow[held] > 0) {
                pd_kv_ref(kv, held);
                shadow[held]++;
            }
            break;
        default: /* unref a held block, twice as likely to drain a shared one */
            for (int k = 0; k < 2 && shadow[held] > 0; k++) {
                pd_kv_unref(kv, held);
                shadow[held]--;
            }
            break;
        }
        check_against_shadow(kv, shadow, NB);
    }
    assert_true(n_alloc_fail > 0); /* the run did reach exhaustion */
    for (int i = 0; i < NB; i++)
        while (shadow[i] > 0) {
            pd_kv_unref(kv, i);
            shadow[i]--;
        }
    check_against_shadow(kv, shadow, NB);
    assert_int_equal(pd_kv_n_free(kv), NB);
    /* The free list holds each block exactly once. */
    int seen[NB] = { 0 };
    for (int i = 0; i < NB; i++) {
        int32_t id = pd_kv_alloc(kv);
        assert_true(pd_kv_valid_id(kv, id));
        assert_int_equal(seen[id], 0);
        seen[id] = 1;
    }
    assert_int_equal(pd_kv_alloc(kv), -1);
    assert_int_equal(pd_kv_n_used(kv), NB);
    pd_kv_free(kv);
}

/* ====== Sequences ====== */

static void test_seq_reserve_release(void **st)
{
    (void)st;
    pd_kv_t *kv = new_kv(40);
    pd_kv_seq_t seq = { 0 };
    assert_int_equal(pd_kv_seq_reserve(kv, &seq, 0), 0);
    assert_int_equal(seq.n_blocks, 0);
    assert_int_equal(pd_kv_seq_reserve(kv, &seq, 1), 0);
    assert_int_equal(seq.n_blocks, 1);
    assert_int_equal(pd_kv_seq_reserve(kv, &seq, 16), 0);
    assert_int_equal(seq.n_blocks, 1);
    assert_int_equal(pd_kv_seq_reserve(kv, &seq, 17), 0);
    assert_int_equal(seq.n_blocks, 2);
    assert_int_equal(pd_kv_seq_reserve(kv, &seq, 5), 0); /* never shrinks */
    assert_int_equal(seq.n_blocks, 2);
    assert_int_equal(pd_kv_seq_reserve(kv, &seq, 30 * 16 + 1), 0); /* grows past the first cap */
    assert_int_equal(seq.n_blocks, 31);
    assert_true(seq.cap >= 31);
    assert_int_equal(pd_kv_n_used(kv), 31);
    int seen[40] = { 0 };
    for (uint32_t i = 0; i < seq.n_blocks; i++) {
        assert_true(pd_kv_valid_id(kv, seq.blocks[i]));
        assert_int_equal(pd_kv_refcount(kv, seq.blocks[i]), 1);
        assert_int_equal(seen[seq.blocks[i]]++, 0);
    }
    pd_kv_seq_release(kv, &seq);
    assert_null(seq.blocks);
    assert_int_equal(seq.n_blocks, 0);
    assert_int_equal(seq.cap, 0);
    assert_int_equal(pd_kv_n_free(kv), 40);
    pd_kv_seq_release(kv, &seq); /* an empty table is fine */
    pd_kv_seq_release(kv, NULL);
    pd_kv_free(kv);
}

static void test_seq_all_or_nothing(void **st)
{
    (void)st;
    pd_kv_t *kv = new_kv(4);
    pd_kv_seq_t a = { 0 }, b = { 0 };
    assert_int_equal(pd_kv_seq_reserve(kv, &a, 48), 0); /* 3 blocks */
    assert_int_equal(pd_kv_n_free(kv), 1);
    assert_int_equal(pd_kv_seq_reserve(kv, &b, 33), PD_EFULL); /* needs 3 */
    assert_int_equal(b.n_blocks, 0);
    assert_int_equal(pd_kv_n_free(kv), 1);
    assert_int_equal(pd_kv_seq_reserve(kv, &b, 16), 0);
    assert_int_equal(pd_kv_n_free(kv), 0);
    assert_int_equal(pd_kv_seq_reserve(kv, &a, 49), PD_EFULL);
    assert_int_equal(a.n_blocks, 3);
    pd_kv_seq_release(kv, &b);
    assert_int_equal(pd_kv_seq_reserve(kv, &a, 64), 0);
    assert_int_equal(a.n_blocks, 4);
    assert_int_equal(pd_kv_seq_reserve(kv, &a, UINT32_MAX), PD_EFULL);
    assert_int_equal(a.n_blocks, 4);
    pd_kv_seq_release(kv, &a);
    assert_int_equal(pd_kv_n_free(kv), 4);
    pd_kv_free(kv);
}

static void test_shared_prefix_refcount(void **st)
{
    (void)st;
    pd_kv_t *kv = new_kv(8);
    pd_kv_seq_t a = { 0 }, b = { 0 };
    assert_int_equal(pd_kv_seq_reserve(kv, &a, 32), 0);
    /* b shares a's first block, then owns one of its own. */
    b.blocks = malloc(2 * sizeof *b.blocks);
    assert_non_null(b.blocks);
    b.cap = 2;
    pd_kv_ref(kv, a.blocks[0]);
    b.blocks[b.n_blocks++] = a.blocks[0];
    assert_int_equal(pd_kv_seq_reserve(kv, &b, 20), 0);
    assert_int_equal(b.n_blocks, 2);
    assert_int_equal(pd_kv_refcount(kv, a.blocks[0]), 2);
    assert_int_equal(pd_kv_n_used(kv), 3);
    int32_t shared = a.blocks[0];
    pd_kv_seq_release(kv, &a);
    assert_int_equal(pd_kv_refcount(kv, shared), 1);
    assert_int_equal(pd_kv_n_used(kv), 2);
    pd_kv_seq_release(kv, &b);
    assert_int_equal(pd_kv_refcount(kv, shared), 0);
    assert_int_equal(pd_kv_n_free(kv), 8);
    pd_kv_free(kv);
}

/* ====== Budget ====== */

static void test_blocks_needed(void **st)
{
    (void)st;
    pd_kv_t *kv = new_kv(2);
    assert_int_equal(pd_kv_blocks_needed(kv, 0, 0), 0);
    assert_int_equal(pd_kv_blocks_needed(kv, 0, 1), 1);
    assert_int_equal(pd_kv_blocks_needed(kv, 0, 16), 1);
    assert_int_equal(pd_kv_blocks_needed(kv, 0, 17), 2);
    assert_int_equal(pd_kv_blocks_needed(kv, 15, 1), 0);
    assert_int_equal(pd_kv_blocks_needed(kv, 16, 1), 1);
    assert_int_equal(pd_kv_blocks_needed(kv, 10, 40), 3); /* ceil(50/16) - ceil(10/16) */
    assert_int_equal(pd_kv_blocks_needed(kv, UINT32_MAX, UINT32_MAX), 0x10000000u);
    pd_kv_free(kv);
}

static void test_blocks_for_budget(void **st)
{
    (void)st;
    pd_kv_shape_t s = small_shape(0); /* 4096-byte blocks; n_blocks ignored */
    assert_int_equal(pd_kv_blocks_for_budget(&s, 0), 0);
    assert_int_equal(pd_kv_blocks_for_budget(&s, 4095), 0);
    assert_int_equal(pd_kv_blocks_for_budget(&s, 4096), 1);
    assert_int_equal(pd_kv_blocks_for_budget(&s, 10 * 4096 + 100), 10);
    assert_int_equal(pd_kv_blocks_for_budget(&s, UINT64_MAX), (64ull << 30) / 4096);
    /* A llama-7B-like shape: 32 layers x 2 x 16 x 32 x 128 x 4 = 16 MiB per block. */
    pd_kv_shape_t big = { 32, 32, 128, 16, 0, PD_KV_F32 };
    assert_int_equal(pd_kv_blocks_for_budget(&big, 1ull << 30), 64);
    /* Tiny 8-byte blocks are padded to 64 bytes each, so 64 GiB holds 2^30. */
    pd_kv_shape_t tiny = { 1, 1, 1, 1, 0, PD_KV_F32 };
    assert_int_equal(pd_kv_blocks_for_budget(&tiny, UINT64_MAX), 1u << 30);
    assert_int_equal(pd_kv_blocks_for_budget(&tiny, 640), 10);
    s.head_dim = 0;
    assert_int_equal(pd_kv_blocks_for_budget(&s, 1ull << 30), 0);
    pd_kv_shape_t huge = { UINT32_MAX, UINT32_MAX, UINT32_MAX, UINT32_MAX, 0, PD_KV_F32 };
    assert_int_equal(pd_kv_blocks_for_budget(&huge, UINT64_MAX), 0);
    /* The budget's block count is accepted by pd_kv_new. */
    pd_kv_shape_t ok = small_shape(0);
    s = small_shape(pd_kv_blocks_for_budget(&ok, 64 * 4096));
    pd_kv_t *kv = pd_kv_new(&s, NULL);
    assert_non_null(kv);
    assert_int_equal(pd_kv_n_free(kv), 64);
    pd_kv_free(kv);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new_refuses_bad_shapes),
        cmocka_unit_test(test_shape_and_counters),
        cmocka_unit_test(test_block_layout),
        cmocka_unit_test(test_block_layout_f16),
        cmocka_unit_test(test_random_cycles_shadow_model),
        cmocka_unit_test(test_seq_reserve_release),
        cmocka_unit_test(test_seq_all_or_nothing),
        cmocka_unit_test(test_shared_prefix_refcount),
        cmocka_unit_test(test_blocks_needed),
        cmocka_unit_test(test_blocks_for_budget),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
