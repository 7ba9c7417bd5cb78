/* test_attn.c -- the paged attention kernel (pd_kern_attn) against its
 * plain C reference on odd shapes, and its batch invariance:
 *  - AVX2 vs reference within 2e-6 of the output scale, for head_dim 8..128,
 *    block sizes 1, 5, 16, 17, 33, query counts 1..37 with ragged n_pos
 *    (prefill-like and decode-like), blocks scattered in memory;
 *  - every query's output is bit-identical whether it is computed alone or
 *    with any other queries in the call (the property the engine's batch
 *    invariance rests on);
 *  - the same with a sliding window (Gemma 2/3, Mistral) and with Gemma 2's
 *    score soft-capping, blocks wholly before every window given as NULL
 *    (the kernel must not read them);
 *  - a known answer: one position gives exactly its V row; equal scores
 *    give the mean of the V rows; a window of 1 gives the last V row.
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
 * row_stride floats; the head under test starts at head_off. Blocks are
 * handed out in a scrambled order, as a block table does. */
typedef struct {
    pd_attn_shape_t sh;
    uint32_t n_blocks;
    float *k, *v;             /* (n_blocks, bs, row_stride) */
    const float **kb, **vb;   /* (n_blocks) per-block pointers, scrambled */
} cache_t;

static void cache_init(cache_t *c, uint32_t hd, uint32_t bs, uint32_t max_pos, rng_t *r)
{
    const uint32_t head_off = hd, row_stride = 3 * hd + 4; /* a middle head, odd stride */
    c->sh = (pd_attn_shape_t){ hd, bs, row_stride, 1.0f / sqrtf((float)hd), max_pos, 0, 0.0f };
    c->n_blocks = (max_pos + bs - 1) / bs;
    size_t n = (size_t)c->n_blocks * bs * row_stride;
    c->k = malloc(sizeof(float) * n);
    c->v = malloc(sizeof(float) * n);
    c->kb = malloc(sizeof(float *) * c->n_blocks);
    c->vb = malloc(sizeof(float *) * c->n_blocks);
    assert_non_null(c->k);
    assert_non_null(c->v);
    assert_non_null(c->kb);
    assert_non_null(c->vb);
    for (size_t i = 0; i < n; i++) {
        c->k[i] = 2.0f * rng_f(r); /* scores up to ~+-4: a peaked softmax */
        c->v[i] = rng_f(r);
    }
    for (uint32_t j = 0; j < c->n_blocks; j++) {
        uint32_t phys = (j * 7 + 3) % c->n_blocks; /* a permutation when gcd(7, n) = 1 */
        if (c->n_blocks % 7 == 0)
            phys = c->n_blocks - 1 - j;
        c->kb[j] = c->k + (size_t)phys * bs * row_stride + head_off;
        c->vb[j] = c->v + (size_t)phys * bs * row_stride + head_off;
    }
}

static void cache_free(cache_t *c)
{
    free(c->k);
    free(c->v);
    free((void *)c->kb);
    free((void *)c->vb);
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
                          uint32_t window, float softcap, rng_t *r)
{
    cache_t c;
    queries_t Q;
    cache_init(&c, hd, bs, max_pos, r);
    c.sh.window = window;
    c.sh.softcap = softcap;
    queries_init(&Q, &c, n_q, max_pos, prefill, r);
    float *ref = malloc(sizeof(float) * hd);
    assert_non_null(ref);
    const float **kb_all = malloc(sizeof(float *) * c.n_blocks);
    const float **vb_all = malloc(sizeof(float *) * c.n_blocks);
    assert_non_null(kb_all);
    assert_non_null(vb_all);
    memcpy(kb_all, c.kb, sizeof(float *) * c.n_blocks);
    memcpy(vb_all, c.vb, sizeof(float *) * c.n_blocks);
    hide_blocks(&c, Q.n_pos, n_q);
    pd_kern_attn(&c.sh, c.kb, c.vb, n_q, (const float *const *)Q.q, Q.n_pos, Q.out, Q.scratch);
    for (uint32_t i = 0; i < n_q; i++) {
        float *outs[1] = { ref };
        const float *qs[1] = { Q.q[i] };
        memcpy(c.kb, kb_all, sizeof(float *) * c.n_blocks);
        memcpy(c.vb, vb_all, sizeof(float *) * c.n_blocks);
        hide_blocks(&c, &Q.n_pos[i], 1);
        pd_kern_attn_ref(&c.sh, c.kb, c.vb, 1, qs, &Q.n_pos[i], outs, NULL);
        for (uint32_t d = 0; d < hd; d++) {
            if (fabsf(ref[d] - Q.out[i][d]) > 2e-6f)
                fail_msg("hd %u bs %u n_q %u window %u softcap %g: query %u (n_pos %u) dim %u: "
                         "%.9g vs ref %.9g", hd, bs, n_q, window, (double)softcap, i, Q.n_pos[i],
                         d, Q.out[i][d], ref[d]);
        }
        /* alone (seeing only its own window's blocks): bit-identical to
         * the grouped result */
        float *alone = malloc(sizeof(float) * hd);
        float *outs1[1] = { alone };
        pd_kern_attn(&c.sh, c.kb, c.vb, 1, qs, &Q.n_pos[i], outs1, Q.scratch);
        if (memcmp(alone, Q.out[i], sizeof(float) * hd) != 0)
            fail_msg("hd %u bs %u n_q %u window %u softcap %g: query %u differs alone and "
                     "grouped", hd, bs, n_q, window, (double)softcap, i);
        free(alone);
    }
    free(ref);
    free((void *)kb_all);
    free((void *)vb_all);
    queries_free(&Q);
    cache_free(&c);
}

static void check_shape(uint32_t hd, uint32_t bs, uint32_t n_q, uint32_t max_pos, bool prefill,
                        rng_t *r)
{
    check_shape_w(hd, bs, n_q, max_pos, prefill, 0, 0.0f, r);
}

static void test_attn_matches_ref(void **state)
{
    (void)state;
    rng_t r = { 0x9e3779b97f4a7c15ull };
    const uint32_t hds[] = { 8, 24, 64, 128, 12 }; /* 12: the reference fallback */
    const uint32_t bss[] = { 1, 5, 16, 17, 33 };
    const uint32_t nqs[] = { 1, 3, 4, 8, 37 };
    for (size_t a = 0; a < sizeof hds / sizeof *hds; a++)
        for (size_t b = 0; b < sizeof bss / sizeof *bss; b++)
            for (size_t n = 0; n < sizeof nqs / sizeof *nqs; n++) {
                const uint32_t max_pos = 1 + rng_u32(&r) % 90;
                check_shape(hds[a], bss[b], nqs[n], max_pos, n % 2 == 0, &r);
            }
}

/* Sliding windows (smaller and larger than a block, and than the
 * context) and soft-capped scores (a cap of 1.5 bites: scores reach ~4). */
static void test_attn_window_softcap(void **state)
{
    (void)state;
    rng_t r = { 0xabcdef12345ull };
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
                        check_shape_w(hds[a], bss[b], nqs[n], max_pos, (n + w) % 2 == 0,
                                      windows[w], caps[k], &r);
                    }
    /* no window, a cap: also batch-invariant and within tolerance */
    check_shape_w(128, 16, 8, 90, true, 0, 30.0f, &r);
}

/* Invariance under regrouping: the same queries called in different
 * splits (1, then 2 + rest, then reversed order) give identical bits. */
static void test_attn_regrouping(void **state)
{
    (void)state;
    rng_t r = { 12345 };
    cache_t c;
    queries_t Q;
    cache_init(&c, 64, 16, 100, &r);
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

static void test_attn_known_answers(void **state)
{
    (void)state;
    rng_t r = { 777 };
    cache_t c;
    cache_init(&c, 32, 16, 40, &r);
    float q[32], out[32];
    for (int d = 0; d < 32; d++)
        q[d] = rng_f(&r);
    const float *qs[1] = { q };
    float *os[1] = { out };
    float *scratch = malloc(sizeof(float) * pd_kern_attn_scratch_floats(&c.sh, 1));
    uint32_t np = 1;
    pd_kern_attn(&c.sh, c.kb, c.vb, 1, qs, &np, os, scratch);
    for (int d = 0; d < 32; d++) /* one position: softmax weight 1 */
        assert_true(out[d] == c.vb[0][d]);
    memset(q, 0, sizeof q); /* all scores 0: the mean of V over 40 positions */
    np = 40;
    pd_kern_attn(&c.sh, c.kb, c.vb, 1, qs, &np, os, scratch);
    for (int d = 0; d < 32; d++) {
        double mean = 0;
        for (uint32_t p = 0; p < 40; p++)
            mean += c.vb[p / 16][(p % 16) * c.sh.row_stride + (uint32_t)d];
        assert_true(fabs(out[d] - mean / 40) < 1e-6);
    }
    for (int d = 0; d < 32; d++)
        q[d] = rng_f(&r);
    c.sh.window = 1; /* a window of one position: exactly the last V row */
    np = 37;
    pd_kern_attn(&c.sh, c.kb, c.vb, 1, qs, &np, os, scratch);
    for (int d = 0; d < 32; d++)
        assert_true(out[d] == c.vb[36 / 16][(36 % 16) * c.sh.row_stride + (uint32_t)d]);
    free(scratch);
    cache_free(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_attn_matches_ref),
        cmocka_unit_test(test_attn_window_softcap),
        cmocka_unit_test(test_attn_regrouping),
        cmocka_unit_test(test_attn_known_answers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
