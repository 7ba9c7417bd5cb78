/* test_kvcache.c -- block pool, refcounts, sequences, layout, budget. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

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


/* ====== Prefix caching ====== */

#define BS 16 /* small_shape's block size */

static pd_kv_t *new_prefix_kv(uint32_t n_blocks, pd_kv_hash_fn fn)
{
    pd_kv_t *kv = new_kv(n_blocks);
    pd_err_t err = { 0 };
    assert_int_equal(pd_kv_prefix_enable(kv, pd_kv_hash_root(42, BS), fn, 4 * n_blocks, &err), 0);
    return kv;
}

/* A hash that ignores the tokens: every block of every request collides. */
static uint64_t hash_all_collide(uint64_t parent, const int32_t *tokens, uint32_t n)
{
    (void)parent, (void)tokens, (void)n;
    return 7;
}

/* A 2-bit hash: many collisions, some distinct buckets. */
static uint64_t hash_2bit(uint64_t parent, const int32_t *tokens, uint32_t n)
{
    return pd_kv_hash_block(parent, tokens, n) & 3;
}

/* A "computed" block: its first 8 bytes are a fingerprint of every token up
 * to its end, which is what its KV depends on. */
static uint64_t fingerprint(const int32_t *tokens, uint32_t n_blocks)
{
    return XXH3_64bits(tokens, (size_t)n_blocks * BS * sizeof *tokens);
}

/* A request as a worker runs it: match, reserve, compute what was not
 * matched, commit. Asserts that every matched block holds this prefix's
 * KV. Returns the tokens matched. */
static uint32_t run_prefill(pd_kv_t *kv, pd_kv_seq_t *seq, const int32_t *tokens, uint32_t n)
{
    uint32_t hit = pd_kv_prefix_match(kv, seq, tokens, n);
    assert_int_equal(hit % BS, 0);
    assert_true(hit < n);
    for (uint32_t i = 0; i < hit / BS; i++) {
        uint64_t fp;
        memcpy(&fp, pd_kv_block(kv, seq->blocks[i]), sizeof fp);
        assert_true(fp == fingerprint(tokens, i + 1)); /* the KV of exactly this prefix */
    }
    if (pd_kv_seq_reserve(kv, seq, n) != 0)
        return UINT32_MAX;
    for (uint32_t i = hit / BS; i < seq->n_blocks; i++) {
        assert_int_equal(pd_kv_refcount(kv, seq->blocks[i]), 1); /* only ours is written */
        assert_false(pd_kv_prefix_is_cached(kv, seq->blocks[i]));
        uint64_t fp = (i + 1) * BS <= n ? fingerprint(tokens, i + 1) : 0;
        memcpy(pd_kv_block(kv, seq->blocks[i]), &fp, sizeof fp);
    }
    pd_kv_prefix_commit(kv, seq, tokens, n);
    return hit;
}

static void fill(int32_t *t, uint32_t n, int32_t base)
{
    for (uint32_t i = 0; i < n; i++)
        t[i] = base + (int32_t)i;
}

static void test_prefix_hash_chain(void **st)
{
    (void)st;
    int32_t t[48];
    fill(t, 48, 100);
    uint64_t r = pd_kv_hash_root(42, 16);
    assert_true(r != pd_kv_hash_root(43, 16));
    assert_true(r != pd_kv_hash_root(42, 32));
    uint64_t h[4] = { 0 };
    assert_int_equal(pd_kv_hash_chain(r, 16, t, 47, h, 4), 2); /* full blocks only */
    assert_true(h[0] == pd_kv_hash_block(r, t, 16));
    assert_true(h[1] == pd_kv_hash_block(h[0], t + 16, 16));
    assert_int_equal(pd_kv_hash_chain(r, 16, t, 48, h, 4), 3);
    assert_int_equal(pd_kv_hash_chain(r, 16, t, 48, h, 1), 1);
    /* A block's hash names its whole prefix: the same tokens after another
     * first block hash differently. */
    int32_t u[32];
    memcpy(u, t, sizeof u);
    u[0] = 7;
    uint64_t g[2];
    pd_kv_hash_chain(r, 16, u, 32, g, 2);
    assert_true(g[0] != h[0] && g[1] != h[1]);
    /* The definitions in docs/protocol.md, byte for byte. */
    unsigned char rb[33] = "pdserve-kv-prefix-v1";
    uint64_t id = 42;
    uint32_t bs = 16;
    memcpy(rb + 21, &id, 8);
    memcpy(rb + 29, &bs, 4);
    assert_true(r == XXH3_64bits(rb, sizeof rb));
    assert_true(pd_kv_hash_block(5, t, 1) == XXH3_64bits_withSeed(t, 4, 5));
}

static void test_prefix_match_commit(void **st)
{
    (void)st;
    pd_kv_t *kv = new_prefix_kv(16, NULL);
    int32_t a[50], b[50];
    fill(a, 50, 1000);
    pd_kv_seq_t sa = { 0 }, sb = { 0 };
    assert_int_equal(run_prefill(kv, &sa, a, 50), 0); /* cold */
    assert_int_equal(pd_kv_prefix_n_cached(kv), 3);     /* 3 full blocks, not the 4th */
    assert_int_equal(pd_kv_prefix_n_evictable(kv), 0);  /* all in use */
    /* b shares 40 tokens: 2 full blocks; while a still runs. */
    memcpy(b, a, sizeof b);
    b[40] = 1;
    assert_int_equal(run_prefill(kv, &sb, b, 50), 32);
    assert_int_equal(pd_kv_refcount(kv, sa.blocks[0]), 2);
    assert_int_equal(pd_kv_refcount(kv, sa.blocks[2]), 1);
    assert_true(sb.blocks[0] == sa.blocks[0] && sb.blocks[1] == sa.blocks[1]);
    assert_true(sb.blocks[2] != sa.blocks[2]);
    assert_int_equal(pd_kv_prefix_n_cached(kv), 4); /* b's 3rd block is new */
    pd_kv_seq_release(kv, &sa);
    pd_kv_seq_release(kv, &sb);
    assert_int_equal(pd_kv_prefix_n_evictable(kv), 4);
    assert_int_equal(pd_kv_n_free(kv), 16);
    assert_int_equal(pd_kv_n_used(kv), 0);
    /* Kept after both ended: a again hits 3 blocks (49 tokens -> 3 max). */
    assert_int_equal(run_prefill(kv, &sa, a, 50), 48);
    /* A prompt of exactly 48 tokens hits 2 blocks: its last token is computed. */
    assert_int_equal(run_prefill(kv, &sb, a, 48), 32);
    assert_int_equal(pd_kv_prefix_n_cached(kv), 4);
    pd_kv_prefix_stats_t s;
    pd_kv_prefix_stats(kv, &s);
    assert_int_equal(s.queries, 4);
    assert_int_equal(s.query_tokens, 50 + 50 + 50 + 48);
    assert_int_equal(s.hit_tokens, 32 + 48 + 32);
    assert_int_equal(s.hit_blocks, 2 + 3 + 2);
    assert_int_equal(s.stored_blocks, 4);
    assert_int_equal(s.evicted_blocks, 0);
    pd_kv_seq_release(kv, &sa);
    pd_kv_seq_release(kv, &sb);
    /* Off: nothing matched, nothing kept. */
    pd_kv_t *off = new_kv(4);
    assert_int_equal(pd_kv_prefix_match(off, &sa, a, 50), 0);
    assert_int_equal(pd_kv_seq_reserve(off, &sa, 50), 0);
    pd_kv_prefix_commit(off, &sa, a, 50);
    pd_kv_seq_release(off, &sa);
    assert_int_equal(pd_kv_prefix_n_cached(off), 0);
    pd_kv_free(off);
    pd_err_t err = { 0 };
    assert_int_equal(pd_kv_prefix_enable(kv, 1, NULL, 0, &err), PD_ESTATE);
    pd_kv_free(kv);
}

/* Every hash collides; only tokens and parents tell blocks apart. */
static void test_prefix_forced_collision(void **st)
{
    (void)st;
    pd_kv_t *kv = new_prefix_kv(32, hash_all_collide);
    int32_t a[64], b[64], c[64], d[64];
    fill(a, 64, 1000);
    fill(b, 64, 5000); /* nothing in common with a */
    memcpy(c, b, sizeof c);
    memcpy(c + 16, a + 16, 16 * sizeof *c); /* a's 2nd block after another 1st */
    memcpy(d, a, sizeof d);
    d[20] = 3; /* a's 1st block, then differs */
    pd_kv_seq_t s[4] = { { 0 } };
    assert_int_equal(run_prefill(kv, &s[0], a, 64), 0);
    assert_int_equal(run_prefill(kv, &s[1], b, 64), 0);  /* same hashes, other tokens */
    assert_int_equal(run_prefill(kv, &s[2], c, 64), 16); /* b's 1st block only */
    assert_true(s[2].blocks[0] == s[1].blocks[0]);
    assert_true(s[2].blocks[1] != s[0].blocks[1]);       /* same tokens, other parent */
    assert_int_equal(run_prefill(kv, &s[3], d, 64), 16);
    assert_true(s[3].blocks[0] == s[0].blocks[0]);
    for (int i = 0; i < 4; i++)
        pd_kv_seq_release(kv, &s[i]);
    /* All cached blocks share one hash: one STORED event, and the set of
     * hashes is that one hash. */
    pd_kv_event_t ev[64];
    bool lost = true;
    assert_int_equal(pd_kv_prefix_take_events(kv, ev, 64, &lost), 1);
    assert_false(lost);
    assert_true(ev[0].kind == PD_KV_EV_STORED && ev[0].hash == 7);
    uint64_t hs[4];
    assert_int_equal(pd_kv_prefix_hashes(kv, hs, 4), 1);
    /* Again after everything ended: still no mixing. */
    assert_int_equal(run_prefill(kv, &s[0], c, 64), 48);
    assert_int_equal(run_prefill(kv, &s[1], a, 63), 48);
    for (int i = 0; i < 2; i++)
        pd_kv_seq_release(kv, &s[i]);
    pd_kv_free(kv);
}

static void test_prefix_lru_eviction(void **st)
{
    (void)st;
    pd_kv_t *kv = new_prefix_kv(8, NULL);
    int32_t a[64], b[64], c[64];
    fill(a, 64, 1000);
    fill(b, 64, 3000);
    fill(c, 64, 7000);
    pd_kv_seq_t sa = { 0 }, sb = { 0 }, sc = { 0 };
    assert_int_equal(run_prefill(kv, &sa, a, 64), 0); /* 4 blocks */
    pd_kv_seq_release(kv, &sa);                       /* a: evictable, tail first */
    assert_int_equal(run_prefill(kv, &sb, b, 64), 0); /* takes the 4 free blocks */
    assert_int_equal(pd_kv_prefix_n_evictable(kv), 4);
    pd_kv_event_t ev[32];
    assert_int_equal(pd_kv_prefix_take_events(kv, ev, 32, NULL), 8); /* 8 stored */
    /* c needs 4 blocks: only a's evictable ones are left, b's are in use. */
    assert_int_equal(run_prefill(kv, &sc, c, 40), 0); /* 3 blocks: evicts a's last 3 */
    for (uint32_t i = 0; i < sb.n_blocks; i++)
        assert_int_equal(pd_kv_refcount(kv, sb.blocks[i]), 1);
    pd_kv_prefix_stats_t s;
    pd_kv_prefix_stats(kv, &s);
    assert_int_equal(s.evicted_blocks, 3);
    uint32_t n = pd_kv_prefix_take_events(kv, ev, 32, NULL);
    assert_int_equal(n, 3 + 2); /* 3 removed (a's tail), 2 stored (c's full blocks) */
    uint64_t ha[4];
    pd_kv_hash_chain(pd_kv_hash_root(42, BS), BS, a, 64, ha, 4);
    assert_true(ev[0].kind == PD_KV_EV_REMOVED && ev[0].hash == ha[3]); /* tail first */
    assert_true(ev[1].kind == PD_KV_EV_REMOVED && ev[1].hash == ha[2]);
    assert_true(ev[2].kind == PD_KV_EV_REMOVED && ev[2].hash == ha[1]);
    /* a's first block survived: a hits 1 block. */
    pd_kv_seq_release(kv, &sc);
    assert_int_equal(run_prefill(kv, &sa, a, 64), 16);
    /* Nothing left to evict: a 9th block cannot be had, and nothing in use moved. */
    pd_kv_seq_t sd = { 0 };
    assert_int_equal(pd_kv_seq_reserve(kv, &sd, 16 * 9), PD_EFULL);
    assert_int_equal(pd_kv_n_used(kv), 8);
    assert_int_equal(pd_kv_alloc(kv), -1);
    pd_kv_seq_release(kv, &sa);
    pd_kv_seq_release(kv, &sb);
    assert_int_equal(pd_kv_prefix_evict_all(kv), 8); /* a's 4 and b's 4 */
    assert_int_equal(pd_kv_prefix_n_cached(kv), 0);
    assert_int_equal(pd_kv_n_free(kv), 8);
    pd_kv_free(kv);
}

static void test_prefix_event_overflow(void **st)
{
    (void)st;
    pd_kv_t *kv = new_kv(16);
    pd_err_t err = { 0 };
    assert_int_equal(pd_kv_prefix_enable(kv, 1, NULL, 2, &err), 0);
    int32_t a[64];
    fill(a, 64, 1);
    pd_kv_seq_t sa = { 0 };
    assert_int_equal(run_prefill(kv, &sa, a, 64), 0); /* 4 stored: queue of 2 overflows */
    pd_kv_event_t ev[8];
    bool lost = false;
    assert_int_equal(pd_kv_prefix_take_events(kv, ev, 8, &lost), 0);
    assert_true(lost);
    uint64_t hs[8];
    assert_int_equal(pd_kv_prefix_hashes(kv, hs, 8), 4); /* the snapshot to send instead */
    assert_int_equal(pd_kv_prefix_hashes(kv, hs, 2), 4);
    assert_int_equal(pd_kv_prefix_take_events(kv, ev, 8, &lost), 0);
    assert_false(lost);
    pd_kv_seq_release(kv, &sa);
    pd_kv_free(kv);
}

/* ====== Prefix caching: random requests against a shadow model ====== */

#define SH_NB 24      /* pool blocks: small, so eviction is constant */
#define SH_LIVE 8     /* requests held at once, at most */
#define SH_MAXTOK 80  /* tokens per request */

typedef struct {
    pd_kv_seq_t seq;
    int32_t tok[SH_MAXTOK];
    uint32_t n;
    bool live;
} sh_req_t;

/* Checks refcounts against the live requests' tables, the free/cached
 * counts against the block states, and the hash set against the events. */
static void sh_check(pd_kv_t *kv, const sh_req_t *r, uint64_t *evset, uint32_t *n_evset)
{
    uint32_t ref[SH_NB] = { 0 };
    for (int i = 0; i < SH_LIVE; i++)
        for (uint32_t b = 0; r[i].live && b < r[i].seq.n_blocks; b++)
            ref[r[i].seq.blocks[b]]++;
    uint32_t n_zero = 0, n_cached = 0, n_evictable = 0;
    for (int32_t b = 0; b < SH_NB; b++) {
        assert_int_equal(pd_kv_refcount(kv, b), ref[b]);
        n_zero += ref[b] == 0;
        n_cached += pd_kv_prefix_is_cached(kv, b);
        n_evictable += ref[b] == 0 && pd_kv_prefix_is_cached(kv, b);
    }
    assert_int_equal(pd_kv_n_free(kv), n_zero);
    assert_int_equal(pd_kv_n_used(kv), SH_NB - n_zero);
    assert_int_equal(pd_kv_prefix_n_cached(kv), n_cached);
    assert_int_equal(pd_kv_prefix_n_evictable(kv), n_evictable);
    /* Events replayed give the index's set of hashes. */
    pd_kv_event_t ev[256];
    bool lost = false;
    uint32_t n = pd_kv_prefix_take_events(kv, ev, 256, &lost);
    assert_false(lost);
    for (uint32_t i = 0; i < n; i++) {
        uint32_t j = 0;
        while (j < *n_evset && evset[j] != ev[i].hash)
            j++;
        if (ev[i].kind == PD_KV_EV_STORED) {
            assert_int_equal(j, *n_evset); /* not stored twice */
            evset[(*n_evset)++] = ev[i].hash;
        } else {
            assert_true(j < *n_evset); /* removed what was stored */
            evset[j] = evset[--(*n_evset)];
        }
    }
    uint64_t hs[SH_NB];
    uint32_t nh = pd_kv_prefix_hashes(kv, hs, SH_NB);
    assert_int_equal(nh, *n_evset);
    for (uint32_t i = 0; i < nh; i++) {
        uint32_t j = 0;
        while (j < *n_evset && evset[j] != hs[i])
            j++;
        assert_true(j < *n_evset);
    }
}

static void sh_run(pd_kv_hash_fn fn, uint64_t seed)
{
    pd_kv_t *kv = new_prefix_kv(SH_NB, fn);
    sh_req_t r[SH_LIVE];
    memset(r, 0, sizeof r);
    uint64_t evset[4 * SH_NB];
    uint32_t n_evset = 0;
    uint64_t rs = seed;
    uint64_t hits = 0, full = 0;
    for (int op = 0; op < 6000; op++) {
        sh_req_t *q = &r[lcg(&rs) % SH_LIVE];
        if (q->live) {
            if (lcg(&rs) % 3 == 0) { /* requests live long: the pool fills */
                pd_kv_seq_release(kv, &q->seq);
                q->live = false;
            }
        } else {
            /* Few "families" of prompts over a 2-token alphabet: blocks with
             * equal tokens after different parents are common. */
            q->n = 1 + (uint32_t)(lcg(&rs) % SH_MAXTOK);
            uint32_t fam = (uint32_t)(lcg(&rs) % 3), keep = (uint32_t)(lcg(&rs) % (SH_MAXTOK + 1));
            for (uint32_t i = 0; i < q->n; i++)
                q->tok[i] = i < keep ? (int32_t)((fam * 7 + i / 16) % 2) : (int32_t)(lcg(&rs) % 2);
            uint32_t hit = run_prefill(kv, &q->seq, q->tok, q->n);
            if (hit == UINT32_MAX) {
                full++;
                pd_kv_seq_release(kv, &q->seq); /* no room now: give back what matched */
            } else {
                hits += hit > 0;
                q->live = true;
            }
        }
        sh_check(kv, r, evset, &n_evset);
    }
    pd_kv_prefix_stats_t s;
    pd_kv_prefix_stats(kv, &s);
    print_message("shadow run: %llu hits, %llu full, %llu evicted, %llu stored\n",
                  (unsigned long long)hits, (unsigned long long)full,
                  (unsigned long long)s.evicted_blocks, (unsigned long long)s.stored_blocks);
    assert_true(hits > 100 && full > 2 && s.evicted_blocks > 100); /* the run did all three */
    for (int i = 0; i < SH_LIVE; i++)
        if (r[i].live)
            pd_kv_seq_release(kv, &r[i].seq);
    assert_int_equal(pd_kv_n_used(kv), 0);
    pd_kv_free(kv);
}

static void test_prefix_shadow_model(void **st)
{
    (void)st;
    sh_run(NULL, 1);
    sh_run(hash_2bit, 2);
    sh_run(hash_all_collide, 3);
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
        cmocka_unit_test(test_prefix_hash_chain),
        cmocka_unit_test(test_prefix_match_commit),
        cmocka_unit_test(test_prefix_forced_collision),
        cmocka_unit_test(test_prefix_lru_eviction),
        cmocka_unit_test(test_prefix_event_overflow),
        cmocka_unit_test(test_prefix_shadow_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
