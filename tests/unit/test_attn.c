/* test_attn.c -- the paged attention kernel (pd_kern_attn) against its
 * plain C reference on odd shapes, and its batch invariance, for an F32 and
 * an F16 cache:
 *  - AVX2 vs reference within 2e-6 of the output scale, for head_dim 8..128,
 *    block sizes 1, 5, 16, 17, 33, query counts 1..37 with ragged n_pos
 *    (prefill-like and decode-like), blocks scattered in memory;
 *  - every query's output is bit-identical whether it is computed alone or
 *    with any other queries in the call (the property the engine's batch
 *    invariance rests on);
 *  - F16: the F32 kernel on the widened cache with each query rounded to
 *    F16 but for the probabilities' rounding to F16 (within 2^-11, the
 *    contract in kernels.h), the reference within the same;
 *  - the same with a sliding window (Gemma 2/3, Mistral) and with Gemma 2's
 *    score soft-capping, F32 and F16, blocks wholly before every window
 *    given as NULL (the kernel must not read them);
 *  - a known answer: one position gives exactly its V row; equal scores
 *    give the mean of the V rows; a window of 1 gives the last V row;
 *  - the AVX-512 kernel gives the AVX2 kernel's bits (head_dim % 16 == 0);
 *  - pd_kern_attn_heads (adjacent heads in one call) gives every head
 *    pd_kern_attn's bits on that head alone, and the reference's tolerance.
 */
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

static float rng_f(rng_t *r)
{
    return (float)(rng_u32(r) & 0xffffff) / 8388608.0f - 1.0f;
}

/* A fake cache: n_blocks blocks of bs positions, each position a row of
 * row_stride elements; the head under test starts at head_off. Blocks are
 * handed out in a scrambled order, as a block table does. An F16 cache
 * also keeps its values widened to floats (k, v), as an F32 cache to
 * compare with (sh32, kb32, vb32). */
typedef struct {
    pd_attn_shape_t sh, sh32;
    uint32_t n_blocks;
    float *k, *v;             /* (n_blocks, bs, row_stride) */
    uint16_t *k16, *v16;      /* the same, as halves (F16 only) */
    const void **kb, **vb;    /* (n_blocks) per-block pointers into the cache, scrambled */
    const void **kb32, **vb32; /* the same blocks of k, v */
} cache_t;

/* n_heads heads under test from head 1 on (head 0 and 4 floats after the
 * last one are not: an odd stride). */
static void cache_init_heads(cache_t *c, uint32_t hd, uint32_t bs, uint32_t max_pos, bool f16,
                             uint32_t n_heads, rng_t *r)
{
    const uint32_t head_off = hd, row_stride = (n_heads + 2) * hd + 4;
    c->sh = (pd_attn_shape_t){ hd, bs, row_stride, 1.0f / sqrtf((float)hd), max_pos, f16, 0,
                               0.0f };
    c->sh32 = c->sh;
    c->sh32.is_f16 = false;
    c->n_blocks = (max_pos + bs - 1) / bs;
    size_t n = (size_t)c->n_blocks * bs * row_stride;
    c->k = malloc(sizeof(float) * n);
    c->v = malloc(sizeof(float) * n);
    c->k16 = malloc(sizeof(uint16_t) * n);
    c->v16 = malloc(sizeof(uint16_t) * n);
    c->kb = malloc(sizeof(void *) * c->n_blocks);
    c->vb = malloc(sizeof(void *) * c->n_blocks);
    c->kb32 = malloc(sizeof(void *) * c->n_blocks);
    c->vb32 = malloc(sizeof(void *) * c->n_blocks);
    assert_non_null(c->k);
    assert_non_null(c->v);
    assert_non_null(c->k16);
    assert_non_null(c->v16);
    assert_non_null(c->kb);
    assert_non_null(c->vb);
    assert_non_null(c->kb32);
    assert_non_null(c->vb32);
    for (size_t i = 0; i < n; i++) {
        c->k[i] = 2.0f * rng_f(r); /* scores up to ~+-4: a peaked softmax */
        c->v[i] = rng_f(r);
        c->k16[i] = pd_fp32_to_fp16(c->k[i]);
        c->v16[i] = pd_fp32_to_fp16(c->v[i]);
        if (f16) {
            c->k[i] = pd_fp16_to_fp32(c->k16[i]);
            c->v[i] = pd_fp16_to_fp32(c->v16[i]);
        }
    }
    for (uint32_t j = 0; j < c->n_blocks; j++) {
        uint32_t phys = (j * 7 + 3) % c->n_blocks; /* a permutation when gcd(7, n) = 1 */
        if (c->n_blocks % 7 == 0)
            phys = c->n_blocks - 1 - j;
        size_t at = (size_t)phys * bs * row_stride + head_off;
        c->kb32[j] = c->k + at;
        c->vb32[j] = c->v + at;
        c->kb[j] = f16 ? (const void *)(c->k16 + at) : c->kb32[j];
        c->vb[j] = f16 ? (const void *)(c->v16 + at) : c->vb32[j];
    }
}

static void cache_init(cache_t *c, uint32_t hd, uint32_t bs, uint32_t max_pos, bool f16, rng_t *r)
{
    cache_init_heads(c, hd, bs, max_pos, f16, 1, r); /* a middle head */
}

static void cache_free(cache_t *c)
{
    free(c->k);
    free(c->v);
    free(c->k16);
    free(c->v16);
    free((void *)c->kb);
    free((void *)c->vb);
    free((void *)c->kb32);
    free((void *)c->vb32);
}

/* V element d of position p, widened. */
static float v_at(const cache_t *c, uint32_t p, uint32_t d)
{
    const float *blk = c->vb32[p / c->sh.block_size];
    return blk[(size_t)(p % c->sh.block_size) * c->sh.row_stride + d];
}

/* n_q queries of hd floats, outputs, n_pos: each query row in its own
 * allocation so that no pointer arithmetic links them. */
typedef struct {
    uint32_t n_q;
    float **q, **out;
    uint32_t *n_pos;
    float *scratch;
} queries_t;

static void queries_init(queries_t *Q, const cache_t *c, uint32_t n_q, uint32_t max_pos,
                         bool prefill_like, rng_t *r)
{
    const uint32_t hd = c->sh.head_dim;
    Q->n_q = n_q;
    Q->q = malloc(sizeof(float *) * n_q);
    Q->out = malloc(sizeof(float *) * n_q);
    Q->n_pos = malloc(sizeof(uint32_t) * n_q);
    Q->scratch = malloc(sizeof(float) * pd_kern_attn_scratch_floats(&c->sh, n_q));
    assert_non_null(Q->scratch);
    for (uint32_t i = 0; i < n_q; i++) {
        Q->q[i] = malloc(sizeof(float) * hd);
        Q->out[i] = malloc(sizeof(float) * hd);
        for (uint32_t d = 0; d < hd; d++)
            Q->q[i][d] = 2.0f * rng_f(r);
        /* prefill-like: consecutive positions ending at max_pos; else random */
        uint32_t back = (n_q - 1 - i) / 3;
        Q->n_pos[i] = prefill_like ? (back < max_pos ? max_pos - back : 1) : 1 + rng_u32(r) % max_pos;
    }
}

static void queries_free(queries_t *Q)
{
    for (uint32_t i = 0; i < Q->n_q; i++) {
        free(Q->q[i]);
        free(Q->out[i]);
    }
    free(Q->q);
    free(Q->out);
    free(Q->n_pos);
    free(Q->scratch);
}

/* Blocks wholly before the window of every query in [0, n_q) set to NULL
 * (a stale pointer must not be read). */
static void hide_blocks(cache_t *c, const uint32_t *n_pos, uint32_t n_q)
{
    uint32_t min_first = UINT32_MAX;
    for (uint32_t i = 0; i < n_q; i++) {
        uint32_t f = pd_kern_attn_first(&c->sh, n_pos[i]);
        min_first = f < min_first ? f : min_first;
    }
    for (uint32_t j = 0; n_q && j < min_first / c->sh.block_size; j++)
        c->kb[j] = c->vb[j] = NULL;
}

static void check_shape_w(uint32_t hd, uint32_t bs, uint32_t n_q, uint32_t max_pos, bool prefill,
                          bool f16, uint32_t window, float softcap, rng_t *r)
{
    cache_t c;
    queries_t Q;
    cache_init(&c, hd, bs, max_pos, f16, r);
    c.sh.window = c.sh32.window = window;
    c.sh.softcap = c.sh32.softcap = softcap;
    queries_init(&Q, &c, n_q, max_pos, prefill, r);
    float *ref = malloc(sizeof(float) * hd);
    assert_non_null(ref);
    const void **kb_all = malloc(sizeof(void *) * c.n_blocks);
    const void **vb_all = malloc(sizeof(void *) * c.n_blocks);
    assert_non_null(kb_all);
    assert_non_null(vb_all);
    memcpy(kb_all, c.kb, sizeof(void *) * c.n_blocks);
    memcpy(vb_all, c.vb, sizeof(void *) * c.n_blocks);
    hide_blocks(&c, Q.n_pos, n_q);
    pd_kern_attn(&c.sh, c.kb, c.vb, n_q, (const float *const *)Q.q, Q.n_pos, Q.out, Q.scratch);
    for (uint32_t i = 0; i < n_q; i++) {
        float *outs[1] = { ref };
        const float *qs[1] = { Q.q[i] };
        memcpy(c.kb, kb_all, sizeof(void *) * c.n_blocks);
        memcpy(c.vb, vb_all, sizeof(void *) * c.n_blocks);
        hide_blocks(&c, &Q.n_pos[i], 1);
        pd_kern_attn_ref(&c.sh, c.kb, c.vb, 1, qs, &Q.n_pos[i], outs, NULL);
        /* F16: the same, but for a probability the two round to neighbouring
         * halves (the reference's is computed in double): one F16 step of a
         * probability <= 1, 2^-11, times |v| <= 1 */
        const float tol = f16 ? 2e-6f + 0x1p-11f : 2e-6f;
        for (uint32_t d = 0; d < hd; d++) {
            if (fabsf(ref[d] - Q.out[i][d]) > tol)
                fail_msg("hd %u bs %u n_q %u f16 %d window %u softcap %g: query %u (n_pos %u) "
                         "dim %u: %.9g vs ref %.9g", hd, bs, n_q, f16, window, (double)softcap, i,
                         Q.n_pos[i], d, Q.out[i][d], ref[d]);
        }
        /* alone (seeing only its own window's blocks): bit-identical to
         * the grouped result */
        float *alone = malloc(sizeof(float) * hd);
        float *outs1[1] = { alone };
        pd_kern_attn(&c.sh, c.kb, c.vb, 1, qs, &Q.n_pos[i], outs1, Q.scratch);
        if (memcmp(alone, Q.out[i], sizeof(float) * hd) != 0)
            fail_msg("hd %u bs %u n_q %u f16 %d window %u softcap %g: query %u differs alone "
                     "and grouped", hd, bs, n_q, f16, window, (double)softcap, i);
        if (f16) { /* the F32 kernel on the widened cache, the query rounded:
                    * the same scores and softmax, so only the probabilities'
                    * rounding differs: sum_p |p16 - p| |v| <= 2^-11 max |v| */
            float qr[PD_ATTN_MAX_HEAD_DIM];
            for (uint32_t d = 0; d < hd; d++)
                qr[d] = pd_fp16_to_fp32(pd_fp32_to_fp16(Q.q[i][d]));
            const float *qrs[1] = { qr };
            pd_kern_attn(&c.sh32, c.kb32, c.vb32, 1, qrs, &Q.n_pos[i], outs1, Q.scratch);
            for (uint32_t d = 0; d < hd; d++)
                if (fabsf(alone[d] - Q.out[i][d]) > 0x1p-11f + 1e-6f)
                    fail_msg("hd %u bs %u window %u softcap %g: query %u dim %u: F16 %.9g vs "
                             "F32 on the widened cache %.9g", hd, bs, window, (double)softcap, i,
                             d, Q.out[i][d], alone[d]);
        }
        free(alone);
    }
    free(ref);
    free((void *)kb_all);
    free((void *)vb_all);
    queries_free(&Q);
    cache_free(&c);
}

static void check_shape(uint32_t hd, uint32_t bs, uint32_t n_q, uint32_t max_pos, bool prefill,
                        bool f16, rng_t *r)
{
    check_shape_w(hd, bs, n_q, max_pos, prefill, f16, 0, 0.0f, r);
}

static void check_matches_ref(bool f16)
{
    rng_t r = { 0x9e3779b97f4a7c15ull + f16 };
    const uint32_t hds[] = { 8, 24, 64, 128, 12 }; /* 12: the reference fallback */
    const uint32_t bss[] = { 1, 5, 16, 17, 33 };
    const uint32_t nqs[] = { 1, 3, 4, 8, 37 };
    for (size_t a = 0; a < sizeof hds / sizeof *hds; a++)
        for (size_t b = 0; b < sizeof bss / sizeof *bss; b++)
            for (size_t n = 0; n < sizeof nqs / sizeof *nqs; n++) {
                const uint32_t max_pos = 1 + rng_u32(&r) % 90;
                check_shape(hds[a], bss[b], nqs[n], max_pos, n % 2 == 0, f16, &r);
            }
}

static void test_attn_matches_ref(void **state)
{
    (void)state;
    check_matches_ref(false);
}

static void test_attn_f16_matches_ref(void **state)
{
    (void)state;
    check_matches_ref(true);
}

/* Sliding windows (smaller and larger than a block, and than the
 * context) and soft-capped scores (a cap of 1.5 bites: scores reach ~4),
 * with an F32 and an F16 cache. */
static void check_window_softcap(bool f16)
{
    rng_t r = { 0xabcdef12345ull + f16 };
    const uint32_t hds[] = { 8, 64, 12 };
    const uint32_t bss[] = { 1, 5, 16, 17 };
    const uint32_t nqs[] = { 1, 4, 37 };
    const uint32_t windows[] = { 1, 3, 16, 40, 200 };
    const float caps[] = { 0.0f, 1.5f, 50.0f };
    for (size_t a = 0; a < sizeof hds / sizeof *hds; a++)
        for (size_t b = 0; b < sizeof bss / sizeof *bss; b++)
            for (size_t n = 0; n < sizeof nqs / sizeof *nqs; n++)
                for (size_t w = 0; w < sizeof windows / sizeof *windows; w++)
                    for (size_t k = 0; k < sizeof caps / sizeof *caps; k++) {
                        const uint32_t max_pos = 1 + rng_u32(&r) % 90;
                        check_shape_w(hds[a], bss[b], nqs[n], max_pos, (n + w) % 2 == 0, f16,
                                      windows[w], caps[k], &r);
                    }
    /* no window, a cap: also batch-invariant and within tolerance */
    check_shape_w(128, 16, 8, 90, true, f16, 0, 30.0f, &r);
}

static void test_attn_window_softcap(void **state)
{
    (void)state;
    check_window_softcap(false);
}

static void test_attn_f16_window_softcap(void **state)
{
    (void)state;
    check_window_softcap(true);
}

/* Invariance under regrouping: the same queries called in different
 * splits (1, then 2 + rest, then reversed order) give identical bits. */
static void check_regrouping(bool f16)
{
    rng_t r = { 12345 };
    cache_t c;
    queries_t Q;
    cache_init(&c, 64, 16, 100, f16, &r);
    queries_init(&Q, &c, 24, 100, true, &r);
    pd_kern_attn(&c.sh, c.kb, c.vb, Q.n_q, (const float *const *)Q.q, Q.n_pos, Q.out, Q.scratch);
    float *first = malloc(sizeof(float) * 64 * Q.n_q);
    for (uint32_t i = 0; i < Q.n_q; i++)
        memcpy(first + i * 64, Q.out[i], sizeof(float) * 64);
    /* reversed order, in calls of 5 */
    for (uint32_t i0 = 0; i0 < Q.n_q; i0 += 5) {
        const float *qs[5];
        float *os[5];
        uint32_t np[5], n = 0;
        for (uint32_t i = i0; i < Q.n_q && n < 5; i++, n++) {
            uint32_t src = Q.n_q - 1 - i;
            qs[n] = Q.q[src];
            os[n] = Q.out[src];
            np[n] = Q.n_pos[src];
        }
        pd_kern_attn(&c.sh, c.kb, c.vb, n, qs, np, os, Q.scratch);
    }
    for (uint32_t i = 0; i < Q.n_q; i++)
        assert_memory_equal(first + i * 64, Q.out[i], sizeof(float) * 64);
    free(first);
    queries_free(&Q);
    cache_free(&c);
}

static void test_attn_regrouping(void **state)
{
    (void)state;
    check_regrouping(false);
    check_regrouping(true);
}

/* The AVX-512 kernel (positions in the lanes for the scores, 16 dims per
 * vector for P V) gives the AVX2 kernel's bits, with windows, caps, F16,
 * ragged n_pos and blocks of 1..33 positions (head_dim % 16 == 0). */
static void check_avx512_is_avx2(bool f16)
{
    rng_t r = { 0x5151ull + f16 };
    const uint32_t hds[] = { 16, 48, 64, 128 };
    const uint32_t bss[] = { 1, 5, 16, 17, 33 };
    const uint32_t nqs[] = { 1, 3, 5, 37 };
    const uint32_t windows[] = { 0, 3, 40 };
    for (size_t a = 0; a < sizeof hds / sizeof *hds; a++)
        for (size_t b = 0; b < sizeof bss / sizeof *bss; b++)
            for (size_t n = 0; n < sizeof nqs / sizeof *nqs; n++)
                for (size_t w = 0; w < sizeof windows / sizeof *windows; w++) {
                    const uint32_t max_pos = 1 + rng_u32(&r) % 90, hd = hds[a];
                    cache_t c;
                    queries_t Q;
                    cache_init(&c, hd, bss[b], max_pos, f16, &r);
                    c.sh.window = windows[w];
                    c.sh.softcap = w == 2 ? 1.5f : 0.0f;
                    queries_init(&Q, &c, nqs[n], max_pos, (n + w) % 2 == 0, &r);
                    hide_blocks(&c, Q.n_pos, Q.n_q);
                    float **o2 = malloc(sizeof(float *) * Q.n_q);
                    assert_non_null(o2);
                    for (uint32_t i = 0; i < Q.n_q; i++) {
                        o2[i] = malloc(sizeof(float) * hd);
                        assert_non_null(o2[i]);
                    }
                    pd_kern_attn_avx512(&c.sh, c.kb, c.vb, Q.n_q, (const float *const *)Q.q,
                                        Q.n_pos, Q.out, Q.scratch);
                    pd_kern_attn_avx2(&c.sh, c.kb, c.vb, Q.n_q, (const float *const *)Q.q,
                                      Q.n_pos, o2, Q.scratch);
                    for (uint32_t i = 0; i < Q.n_q; i++) {
                        if (memcmp(o2[i], Q.out[i], sizeof(float) * hd) != 0)
                            fail_msg("hd %u bs %u n_q %u f16 %d window %u: query %u (n_pos %u) "
                                     "AVX-512 differs from AVX2", hd, bss[b], nqs[n], f16,
                                     windows[w], i, Q.n_pos[i]);
                        free(o2[i]);
                    }
                    free(o2);
                    queries_free(&Q);
                    cache_free(&c);
                }
}

static void test_attn_avx512_is_avx2(void **state)
{
    (void)state;
    if (pd_kern_isa() != PD_ISA_AVX512)
        skip();
    check_avx512_is_avx2(false);
    check_avx512_is_avx2(true);
}

/* Head h's queries of a pd_kern_attn_heads call against pd_kern_attn on
 * head h alone (bit for bit) and the reference (within check_shape_w's
 * tolerance). */
static void check_head(const cache_t *c, const queries_t *Q, uint32_t h, uint32_t n_q)
{
    const uint32_t hd = c->sh.head_dim;
    const size_t off = (size_t)h * hd * (c->sh.is_f16 ? 2 : 4);
    const void **kb = malloc(sizeof(void *) * c->n_blocks);
    const void **vb = malloc(sizeof(void *) * c->n_blocks);
    float *alone = malloc(sizeof(float) * hd);
    assert_non_null(kb);
    assert_non_null(vb);
    assert_non_null(alone);
    for (uint32_t j = 0; j < c->n_blocks; j++) {
        kb[j] = c->kb[j] ? (const char *)c->kb[j] + off : NULL;
        vb[j] = c->vb[j] ? (const char *)c->vb[j] + off : NULL;
    }
    for (uint32_t i = 0; i < n_q; i++) {
        const float *qs[1] = { Q->q[h * n_q + i] };
        float *os[1] = { alone };
        const float *got = Q->out[h * n_q + i];
        pd_kern_attn(&c->sh, kb, vb, 1, qs, &Q->n_pos[i], os, Q->scratch);
        if (memcmp(alone, got, sizeof(float) * hd) != 0)
            fail_msg("hd %u bs %u window %u f16 %d: head %u query %u (n_pos %u) differs from "
                     "pd_kern_attn on its head", hd, c->sh.block_size, c->sh.window,
                     c->sh.is_f16, h, i, Q->n_pos[i]);
        pd_kern_attn_ref(&c->sh, kb, vb, 1, qs, &Q->n_pos[i], os, NULL);
        const float tol = c->sh.is_f16 ? 2e-6f + 0x1p-11f : 2e-6f;
        for (uint32_t d = 0; d < hd; d++)
            if (fabsf(alone[d] - got[d]) > tol)
                fail_msg("hd %u: head %u query %u dim %u: %.9g vs ref %.9g", hd, h, i, d,
                         (double)got[d], (double)alone[d]);
    }
    free((void *)kb);
    free((void *)vb);
    free(alone);
}

/* pd_kern_attn_heads: 1..12 adjacent heads of 1..3 queries each (the
 * queries for which it is pd_kern_attn's AVX2 kernel), ragged n_pos,
 * windows (blocks before every window NULL) and caps, F32 and F16. */
static void check_heads(bool f16)
{
    rng_t r = { 0x4ead5ull + f16 };
    const uint32_t hds[] = { 8, 24, 64, 128 };
    const uint32_t bss[] = { 1, 5, 16, 17 };
    const uint32_t nhs[] = { 1, 2, 5, 12 };
    const uint32_t windows[] = { 0, 3, 40 };
    for (size_t a = 0; a < sizeof hds / sizeof *hds; a++)
        for (size_t b = 0; b < sizeof bss / sizeof *bss; b++)
            for (size_t n = 0; n < sizeof nhs / sizeof *nhs; n++)
                for (size_t w = 0; w < sizeof windows / sizeof *windows; w++) {
                    const uint32_t max_pos = 1 + rng_u32(&r) % 90, n_q = 1 + rng_u32(&r) % 3;
                    const uint32_t n_h = nhs[n];
                    cache_t c;
                    queries_t Q;
                    cache_init_heads(&c, hds[a], bss[b], max_pos, f16, n_h, &r);
                    c.sh.window = windows[w];
                    c.sh.softcap = w == 2 ? 1.5f : 0.0f;
                    assert_true(pd_kern_attn_heads_supported(&c.sh, n_q));
                    queries_init(&Q, &c, n_h * n_q, max_pos, (n + w) % 2 == 0, &r);
                    hide_blocks(&c, Q.n_pos, n_q); /* Q.n_pos[0..n_q): every head's */
                    pd_kern_attn_heads(&c.sh, n_h, c.kb, c.vb, n_q, (const float *const *)Q.q,
                                       Q.n_pos, Q.out, Q.scratch);
                    for (uint32_t h = 0; h < n_h; h++)
                        check_head(&c, &Q, h, n_q);
                    queries_free(&Q);
                    cache_free(&c);
                }
}

static void test_attn_heads(void **state)
{
    (void)state;
    if (!pd_kern_has_avx2())
        skip();
    check_heads(false);
    check_heads(true);
}

static void check_known_answers(bool f16)
{
    rng_t r = { 777 };
    cache_t c;
    cache_init(&c, 32, 16, 40, f16, &r);
    float q[32], out[32];
    for (int d = 0; d < 32; d++)
        q[d] = rng_f(&r);
    const float *qs[1] = { q };
    float *os[1] = { out };
    float *scratch = malloc(sizeof(float) * pd_kern_attn_scratch_floats(&c.sh, 1));
    uint32_t np = 1;
    pd_kern_attn(&c.sh, c.kb, c.vb, 1, qs, &np, os, scratch);
    for (int d = 0; d < 32; d++) /* one position: softmax weight 1 */
        assert_true(out[d] == v_at(&c, 0, (uint32_t)d));
    memset(q, 0, sizeof q); /* all scores 0: the mean of V over 40 positions */
    np = 40;
    pd_kern_attn(&c.sh, c.kb, c.vb, 1, qs, &np, os, scratch);
    /* F16: each weight 1/40 rounded to a half first */
    const double w = f16 ? (double)pd_fp16_to_fp32(pd_fp32_to_fp16(1.0f / 40)) : 1.0 / 40;
    for (int d = 0; d < 32; d++) {
        double mean = 0;
        for (uint32_t p = 0; p < 40; p++)
            mean += v_at(&c, p, (uint32_t)d);
        assert_true(fabs(out[d] - mean * w) < 1e-6);
    }
    for (int d = 0; d < 32; d++)
        q[d] = rng_f(&r);
    c.sh.window = 1; /* a window of one position: exactly the last V row */
    np = 37;
    pd_kern_attn(&c.sh, c.kb, c.vb, 1, qs, &np, os, scratch);
    for (int d = 0; d < 32; d++)
        assert_true(out[d] == v_at(&c, 36, (uint32_t)d));
    free(scratch);
    cache_free(&c);
}

static void test_attn_known_answers(void **state)
{
    (void)state;
    check_known_answers(false);
    check_known_answers(true);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_attn_matches_ref),
        cmocka_unit_test(test_attn_f16_matches_ref),
        cmocka_unit_test(test_attn_window_softcap),
        cmocka_unit_test(test_attn_f16_window_softcap),
        cmocka_unit_test(test_attn_regrouping),
        cmocka_unit_test(test_attn_known_answers),
        cmocka_unit_test(test_attn_avx512_is_avx2),
        cmocka_unit_test(test_attn_heads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
