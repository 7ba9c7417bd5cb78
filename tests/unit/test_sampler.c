/* test_sampler.c -- pd_sample chain, counter RNG, validation. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/sampler.h"

static pd_sampling_t params(float temperature, uint64_t seed)
{
    pd_sampling_t p;
    pd_sampling_default(&p);
    p.temperature = temperature;
    p.seed = seed;
    return p;
}

static int32_t sample1(const pd_sampling_t *p, const float *logits, uint32_t n, uint64_t pos)
{
    float buf[64];
    assert_true(n <= 64);
    memcpy(buf, logits, n * sizeof *buf);
    pd_sampler_scratch_t *s = pd_sampler_scratch_new(n);
    assert_non_null(s);
    int32_t t = pd_sample(p, buf, n, pos, NULL, 0, s);
    pd_sampler_scratch_free(s);
    return t;
}

/* Deterministic pseudo-random floats for test inputs. */
static float test_rand(uint64_t *state)
{
    *state = *state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((*state >> 40) & 0xffffff) / (float)0x1000000;
}

/* ====== Greedy ====== */

static void test_greedy_argmax(void **st)
{
    (void)st;
    float l[8] = { 0.1f, -3.0f, 2.5f, 0.0f, 1.0f, -1.0f, 2.4f, 7.0f };
    pd_sampling_t p = params(0.0f, 1);
    assert_int_equal(sample1(&p, l, 8, 0), 7);
    l[7] = -7.0f;
    assert_int_equal(sample1(&p, l, 8, 0), 2);
}

static void test_greedy_ties_lowest_id(void **st)
{
    (void)st;
    float l[5] = { 1.0f, 3.0f, 2.0f, 3.0f, 3.0f };
    pd_sampling_t p = params(0.0f, 1);
    assert_int_equal(sample1(&p, l, 5, 0), 1);
    float n[4] = { NAN, 3.0f, NAN, 3.0f };
    assert_int_equal(sample1(&p, n, 4, 0), 1);
}

static void test_nan_logits(void **st)
{
    (void)st;
    float all_nan[4] = { NAN, NAN, NAN, NAN };
    pd_sampling_t g = params(0.0f, 1);
    assert_int_equal(sample1(&g, all_nan, 4, 0), 0);
    pd_sampling_t t = params(1.0f, 1);
    t.top_p = 0.9f;
    t.min_p = 0.1f;
    assert_int_equal(sample1(&t, all_nan, 4, 3), 0);
    /* NaN is never drawn; +inf behaves as the unique maximum. */
    float mixed[4] = { NAN, 0.0f, NAN, 0.0f };
    for (uint64_t pos = 0; pos < 200; pos++) {
        int32_t tok = sample1(&t, mixed, 4, pos);
        assert_true(tok == 1 || tok == 3);
    }
    float inf[3] = { 0.0f, INFINITY, 1.0f };
    for (uint64_t pos = 0; pos < 50; pos++)
        assert_int_equal(sample1(&t, inf, 3, pos), 1);
}

static void test_top_k1_equals_greedy(void **st)
{
    (void)st;
    uint64_t rs = 7;
    float l[64];
    for (int trial = 0; trial < 200; trial++) {
        for (int i = 0; i < 64; i++)
            l[i] = test_rand(&rs) * 10.0f - 5.0f;
        if (trial % 3 == 0)
            l[40] = l[20] = 9.0f; /* a tie: lowest id wins */
        pd_sampling_t g = params(0.0f, 0);
        pd_sampling_t k = params(1.5f, (uint64_t)trial);
        k.top_k = 1;
        assert_int_equal(sample1(&k, l, 64, (uint64_t)trial), sample1(&g, l, 64, 0));
    }
}

/* ====== RNG and determinism ====== */

static void test_rng_range_and_mean(void **st)
{
    (void)st;
    double sum = 0.0;
    for (uint64_t i = 0; i < 100000; i++) {
        double u = pd_rng_uniform(42, i);
        assert_true(u >= 0.0 && u < 1.0);
        sum += u;
    }
    assert_true(fabs(sum / 100000.0 - 0.5) < 0.005);
    assert_true(pd_rng_uniform(1, 5) == pd_rng_uniform(1, 5));
    assert_true(pd_rng_uniform(1, 5) != pd_rng_uniform(2, 5));
    assert_true(pd_rng_uniform(1, 5) != pd_rng_uniform(1, 6));
}

static void test_determinism_any_order(void **st)
{
    (void)st;
    float l[5] = { 0.0f, 0.1f, 0.2f, 0.3f, 0.4f };
    pd_sampling_t p = params(1.0f, 1234);
    int32_t fwd[300];
    for (int i = 0; i < 300; i++)
        fwd[i] = sample1(&p, l, 5, (uint64_t)i);
    pd_sampling_t other = params(1.0f, 99);
    for (int i = 299; i >= 0; i--) {
        (void)sample1(&other, l, 5, (uint64_t)(i * 7)); /* interleaved unrelated draws */
        assert_int_equal(sample1(&p, l, 5, (uint64_t)i), fwd[i]);
    }
}

static void test_different_seeds_differ(void **st)
{
    (void)st;
    float l[5] = { 0.0f, 0.0f, 0.0f, 0.0f, 0.0f };
    pd_sampling_t a = params(1.0f, 1), b = params(1.0f, 2);
    int differ = 0;
    for (uint64_t pos = 0; pos < 1000; pos++)
        differ += sample1(&a, l, 5, pos) != sample1(&b, l, 5, pos);
    /* Independent uniform draws differ with probability 0.8. */
    assert_true(differ > 700 && differ < 900);
}

/* Draw counts over 20,000 positions match the softmax within 0.02. */
static void check_distribution(float temperature, const double *prob, int n)
{
    float l[5];
    double want[5], z = 0.0;
    for (int i = 0; i < n; i++) {
        l[i] = logf((float)prob[i]);
        want[i] = pow(prob[i], 1.0 / temperature);
        z += want[i];
    }
    int count[5] = { 0 };
    pd_sampling_t p = params(temperature, 2026);
    pd_sampler_scratch_t *s = pd_sampler_scratch_new((uint32_t)n);
    for (uint64_t pos = 0; pos < 20000; pos++) {
        float buf[5];
        memcpy(buf, l, sizeof buf);
        int32_t t = pd_sample(&p, buf, (uint32_t)n, pos, NULL, 0, s);
        assert_true(t >= 0 && t < n);
        count[t]++;
    }
    pd_sampler_scratch_free(s);
    for (int i = 0; i < n; i++)
        assert_true(fabs(count[i] / 20000.0 - want[i] / z) < 0.02);
}

static void test_empirical_distribution(void **st)
{
    (void)st;
    const double prob[5] = { 0.05, 0.4, 0.1, 0.25, 0.2 };
    check_distribution(1.0f, prob, 5);
    check_distribution(0.5f, prob, 5);
    check_distribution(2.0f, prob, 5);
}

/* ====== top-p / min-p exact cuts ====== */

/* Probabilities by id: id3 0.5, id0 0.3, id2 0.15, id1 0.05. */
static const double cut_prob[4] = { 0.3, 0.05, 0.15, 0.5 };
static const int32_t cut_order[4] = { 3, 0, 2, 1 };

/* Expected draw when the kept set is the first n_keep of cut_order. */
static int32_t expected_draw(uint64_t seed, uint64_t pos, int n_keep)
{
    double kept = 0.0, cum = 0.0;
    for (int i = 0; i < n_keep; i++)
        kept += cut_prob[cut_order[i]];
    double u = pd_rng_uniform(seed, pos) * kept;
    for (int i = 0; i < n_keep; i++) {
        cum += cut_prob[cut_order[i]];
        if (cum > u)
            return cut_order[i];
    }
    return cut_order[n_keep - 1];
}

static void check_cut_k(int32_t top_k, float top_p, float min_p, int n_keep)
{
    float l[4];
    for (int i = 0; i < 4; i++)
        l[i] = logf((float)cut_prob[i]);
    pd_sampling_t p = params(1.0f, 5);
    p.top_k = top_k;
    p.top_p = top_p;
    p.min_p = min_p;
    int seen[4] = { 0 };
    for (uint64_t pos = 0; pos < 2000; pos++) {
        int32_t t = sample1(&p, l, 4, pos);
        assert_int_equal(t, expected_draw(5, pos, n_keep));
        seen[t]++;
    }
    for (int i = 0; i < 4; i++)
        assert_int_equal(seen[cut_order[i]] > 0, i < n_keep);
}

static void check_cut(float top_p, float min_p, int n_keep)
{
    check_cut_k(0, top_p, min_p, n_keep);
}

static void test_top_k_cut(void **st)
{
    (void)st;
    check_cut_k(4, 1.0f, 0.0f, 4);
    check_cut_k(3, 1.0f, 0.0f, 3);
    check_cut_k(2, 1.0f, 0.0f, 2);
    check_cut_k(1, 1.0f, 0.0f, 1);
    check_cut_k(3, 0.75f, 0.0f, 2); /* top-p mass is over the top-k survivors */
    check_cut_k(2, 0.6f, 0.0f, 1);  /* 0.5 / 0.8 = 0.625 >= 0.6 */
    check_cut_k(2, 0.65f, 0.0f, 2);
}

static void test_top_p_cut(void **st)
{
    (void)st;
    check_cut(1.0f, 0.0f, 4);
    check_cut(0.96f, 0.0f, 4);   /* 0.5+0.3+0.15 = 0.95 < 0.96 */
    check_cut(0.9f, 0.0f, 3);    /* 0.8 < 0.9 <= 0.95 */
    check_cut(0.75f, 0.0f, 2);   /* 0.5 < 0.75 <= 0.8 */
    check_cut(0.4f, 0.0f, 1);    /* 0.4 <= 0.5 */
    check_cut(1e-6f, 0.0f, 1);
}

static void test_min_p_cut(void **st)
{
    (void)st;
    check_cut(1.0f, 0.05f, 4);   /* threshold 0.025 */
    check_cut(1.0f, 0.2f, 3);    /* threshold 0.1 drops 0.05 */
    check_cut(1.0f, 0.35f, 2);   /* threshold 0.175 drops 0.15 */
    check_cut(1.0f, 0.7f, 1);    /* threshold 0.35 */
    check_cut(0.9f, 0.35f, 2);   /* both: the smaller set */
    check_cut(0.75f, 0.2f, 2);
}

/* ====== Penalties ====== */

static void test_penalties_exact(void **st)
{
    (void)st;
    pd_sampling_t p = params(0.0f, 0);
    p.repetition_penalty = 2.0f;
    p.presence_penalty = 0.5f;
    p.frequency_penalty = 0.25f;
    const int32_t hist[] = { 0, 3, 0, 1, 3, 99, -5, 3, 4 };
    pd_sampler_scratch_t *s = pd_sampler_scratch_new(6);
    for (int rep = 0; rep < 2; rep++) { /* the second run checks the scratch was cleared */
        float l[6] = { 2.0f, -1.0f, 0.5f, 3.0f, 0.0f, 0.25f };
        int32_t t = pd_sample(&p, l, 6, 0, hist, sizeof hist / sizeof hist[0], s);
        assert_float_equal(l[0], 2.0f / 2 - (2 * 0.25f + 0.5f), 0.0);   /* 0 */
        assert_float_equal(l[1], -1.0f * 2 - (0.25f + 0.5f), 0.0);      /* -2.75 */
        assert_float_equal(l[2], 0.5f, 0.0);                            /* not in history */
        assert_float_equal(l[3], 3.0f / 2 - (3 * 0.25f + 0.5f), 0.0);   /* 0.25 */
        assert_float_equal(l[4], 0.0f * 2 - (0.25f + 0.5f), 0.0);       /* -0.75 */
        assert_float_equal(l[5], 0.25f, 0.0);
        assert_int_equal(t, 2);
    }
    /* Off by default: logits untouched. */
    pd_sampling_t off = params(0.0f, 0);
    float l[6] = { 2.0f, -1.0f, 0.5f, 3.0f, 0.0f, 0.25f };
    assert_int_equal(pd_sample(&off, l, 6, 0, hist, 9, s), 3);
    assert_float_equal(l[3], 3.0f, 0.0);
    pd_sampler_scratch_free(s);
}

/* ====== Large vocabulary vs a full-sort reference ====== */

typedef struct {
    float v;
    int32_t id;
} ref_t;

static int ref_cmp(const void *pa, const void *pb)
{
    const ref_t *a = pa, *b = pb;
    if (a->v != b->v)
        return a->v > b->v ? -1 : 1;
    return a->id < b->id ? -1 : a->id > b->id;
}

static int32_t reference_sample(const pd_sampling_t *p, const float *logits, uint32_t n_vocab,
                                uint64_t pos, ref_t *r)
{
    for (uint32_t i = 0; i < n_vocab; i++)
        r[i] = (ref_t){ logits[i], (int32_t)i };
    qsort(r, n_vocab, sizeof *r, ref_cmp);
    size_t n = n_vocab;
    if (p->top_k > 0 && (uint32_t)p->top_k < n_vocab)
        n = (size_t)p->top_k;
    float lmax = r[0].v;
    double total = 0.0;
    for (size_t i = 0; i < n; i++) {
        r[i].v = expf((r[i].v - lmax) / p->temperature);
        total += r[i].v;
    }
    /* Distinct logits can round to one probability: order by probability. */
    qsort(r, n, sizeof *r, ref_cmp);
    if (p->top_p < 1.0f) {
        double cum = 0.0;
        size_t i = 0;
        while (i < n) {
            cum += r[i++].v;
            if (cum >= (double)p->top_p * total)
                break;
        }
        n = i;
    }
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (r[i].v >= p->min_p)
            m = i + 1;
    n = m;
    double kept = 0.0, cum = 0.0;
    for (size_t i = 0; i < n; i++)
        kept += r[i].v;
    double u = pd_rng_uniform(p->seed, pos) * kept;
    for (size_t i = 0; i < n; i++) {
        cum += r[i].v;
        if (cum > u)
            return r[i].id;
    }
    return r[n - 1].id;
}

static void test_large_vocab_matches_full_sort(void **st)
{
    (void)st;
    const uint32_t nv = 50000;
    float *l = malloc(nv * sizeof *l), *buf = malloc(nv * sizeof *buf);
    ref_t *r = malloc(nv * sizeof *r);
    pd_sampler_scratch_t *s = pd_sampler_scratch_new(nv);
    assert_true(l && buf && r && s);
    struct { float t; int32_t k; float top_p, min_p; float scale; int quantize; } cfg[] = {
        { 0.8f, 40, 1.0f, 0.0f, 8.0f, 0 },
        { 1.0f, 0, 1.0f, 0.0f, 8.0f, 0 },
        { 1.0f, 0, 1.0f, 0.0f, 0.5f, 0 },   /* flat: the draw sorts deep */
        { 0.7f, 0, 0.9f, 0.0f, 4.0f, 0 },
        { 1.2f, 0, 0.95f, 0.02f, 3.0f, 1 }, /* many ties */
        { 1.0f, 1000, 0.8f, 0.01f, 6.0f, 1 },
        { 1.0f, 0, 1.0f, 0.001f, 0.1f, 0 },
    };
    uint64_t rs = 99;
    for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
        pd_sampling_t p = params(cfg[c].t, 1000 + c);
        p.top_k = cfg[c].k;
        p.top_p = cfg[c].top_p;
        p.min_p = cfg[c].min_p;
        for (uint64_t pos = 0; pos < 20; pos++) {
            for (uint32_t i = 0; i < nv; i++) {
                float x = test_rand(&rs);
                l[i] = cfg[c].quantize ? floorf(x * 20.0f) / 20.0f * cfg[c].scale
                                       : x * x * x * cfg[c].scale;
            }
            memcpy(buf, l, nv * sizeof *buf);
            int32_t got = pd_sample(&p, buf, nv, pos, NULL, 0, s);
            assert_int_equal(got, reference_sample(&p, l, nv, pos, r));
        }
    }
    pd_sampler_scratch_free(s);
    free(l);
    free(buf);
    free(r);
}

/* ====== Validation ====== */

static void expect_invalid(const pd_sampling_t *p, const char *needle)
{
    pd_err_t err = { 0 };
    assert_int_equal(pd_sampling_validate(p, &err), PD_EINVAL);
    assert_int_equal(err.code, PD_EINVAL);
    assert_non_null(strstr(err.msg, needle));
}

static void test_validate(void **st)
{
    (void)st;
    pd_sampling_t p;
    pd_sampling_default(&p);
    pd_err_t err = { 0 };
    assert_int_equal(pd_sampling_validate(&p, &err), 0);
    p.temperature = 0.7f;
    p.top_k = 40;
    p.top_p = 0.95f;
    p.min_p = 0.05f;
    p.repetition_penalty = 1.1f;
    p.presence_penalty = -2.0f;
    p.frequency_penalty = 2.0f;
    assert_int_equal(pd_sampling_validate(&p, &err), 0);

    pd_sampling_t b = p;
    b.temperature = -0.5f;
    expect_invalid(&b, "temperature=-0.5");
    b.temperature = NAN;
    expect_invalid(&b, "temperature=nan");
    b.temperature = INFINITY;
    expect_invalid(&b, "temperature=inf");
    b = p;
    b.top_k = -1;
    expect_invalid(&b, "top_k=-1");
    b = p;
    b.top_p = 0.0f;
    expect_invalid(&b, "top_p=0");
    b.top_p = 1.5f;
    expect_invalid(&b, "top_p=1.5");
    b = p;
    b.min_p = 1.0f;
    expect_invalid(&b, "min_p=1");
    b.min_p = -0.25f;
    expect_invalid(&b, "min_p=-0.25");
    b = p;
    b.repetition_penalty = 0.0f;
    expect_invalid(&b, "repetition_penalty=0");
    b.repetition_penalty = 11.0f;
    expect_invalid(&b, "repetition_penalty=11");
    b = p;
    b.presence_penalty = 2.5f;
    expect_invalid(&b, "presence_penalty=2.5");
    b = p;
    b.frequency_penalty = -3.0f;
    expect_invalid(&b, "frequency_penalty=-3");
    b.frequency_penalty = NAN;
    expect_invalid(&b, "frequency_penalty=nan");
}

static void test_scratch_limits(void **st)
{
    (void)st;
    assert_null(pd_sampler_scratch_new(0));
    pd_sampler_scratch_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greedy_argmax),
        cmocka_unit_test(test_greedy_ties_lowest_id),
        cmocka_unit_test(test_nan_logits),
        cmocka_unit_test(test_top_k1_equals_greedy),
        cmocka_unit_test(test_rng_range_and_mean),
        cmocka_unit_test(test_determinism_any_order),
        cmocka_unit_test(test_different_seeds_differ),
        cmocka_unit_test(test_empirical_distribution),
        cmocka_unit_test(test_top_k_cut),
        cmocka_unit_test(test_top_p_cut),
        cmocka_unit_test(test_min_p_cut),
        cmocka_unit_test(test_penalties_exact),
        cmocka_unit_test(test_large_vocab_matches_full_sort),
        cmocka_unit_test(test_validate),
        cmocka_unit_test(test_scratch_limits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
