/* sampler.c -- see sampler.h */
#include "engine/sampler.h"

#include "engine/kernels.h"

#include <assert.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define PD_TEMPERATURE_MAX 100.0f  /* larger is refused by validation */
#define PD_REP_PENALTY_MAX 10.0f
#define PD_PENALTY_ABS_MAX 2.0f    /* presence/frequency range is [-2, 2] */
#define PD_RADIX_BUCKETS 2048      /* histogram size of one radix level (11 bits) */

typedef struct {
    float v;     /* logit, then (unnormalized) probability */
    int32_t id;
} cand_t;

struct pd_sampler_scratch {
    uint32_t n_vocab;
    cand_t *cand;      /* (n_vocab) candidates */
    cand_t *tmp;       /* (n_vocab) partition buffer */
    uint32_t *counts;  /* (n_vocab) history counts; all zero between calls */
    /* Radix histograms, two interleaved copies (even and odd elements) so
     * that runs of one digit do not serialize on one memory cell. All zero
     * between uses. */
    double mass[2][PD_RADIX_BUCKETS]; /* sum of v per digit */
    uint32_t cnt[2][PD_RADIX_BUCKETS]; /* members per digit */
};

/* ====== Parameters ====== */

void pd_sampling_default(pd_sampling_t *p)
{
    memset(p, 0, sizeof *p);
    p->temperature = 0.0f;
    p->top_k = 0;
    p->top_p = 1.0f;
    p->min_p = 0.0f;
    p->repetition_penalty = 1.0f;
    p->presence_penalty = 0.0f;
    p->frequency_penalty = 0.0f;
    p->seed = 0;
}

int pd_sampling_validate(const pd_sampling_t *p, pd_err_t *err)
{
    /* Every comparison is written so that NaN fails it. */
    if (!(p->temperature >= 0.0f && p->temperature <= PD_TEMPERATURE_MAX))
        return pd_err_set(err, PD_EINVAL, "sampling: temperature=%g must be in [0, %g]",
                          (double)p->temperature, (double)PD_TEMPERATURE_MAX);
    if (p->top_k < 0)
        return pd_err_set(err, PD_EINVAL, "sampling: top_k=%d must be >= 0 (0 = off)", (int)p->top_k);
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
        return pd_err_set(err, PD_EINVAL, "sampling: top_p=%g must be in (0, 1]", (double)p->top_p);
    if (!(p->min_p >= 0.0f && p->min_p < 1.0f))
        return pd_err_set(err, PD_EINVAL, "sampling: min_p=%g must be in [0, 1)", (double)p->min_p);
    if (!(p->repetition_penalty > 0.0f && p->repetition_penalty <= PD_REP_PENALTY_MAX))
        return pd_err_set(err, PD_EINVAL, "sampling: repetition_penalty=%g must be in (0, %g]",
                          (double)p->repetition_penalty, (double)PD_REP_PENALTY_MAX);
    if (!(p->presence_penalty >= -PD_PENALTY_ABS_MAX && p->presence_penalty <= PD_PENALTY_ABS_MAX))
        return pd_err_set(err, PD_EINVAL, "sampling: presence_penalty=%g must be in [-2, 2]",
                          (double)p->presence_penalty);
    if (!(p->frequency_penalty >= -PD_PENALTY_ABS_MAX && p->frequency_penalty <= PD_PENALTY_ABS_MAX))
        return pd_err_set(err, PD_EINVAL, "sampling: frequency_penalty=%g must be in [-2, 2]",
                          (double)p->frequency_penalty);
    return PD_OK;
}

/* ====== Random ====== */

#define PD_GOLDEN64 0x9e3779b97f4a7c15ull

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Output number position+1 of a SplitMix64 stream whose state starts at
 * mix64(seed): a pure function of (seed, position). */
double pd_rng_uniform(uint64_t seed, uint64_t position)
{
    uint64_t z = mix64(seed ^ PD_GOLDEN64) + (position + 1u) * PD_GOLDEN64;
    return (double)(mix64(z) >> 11) * 0x1.0p-53;
}

/* ====== Scratch ====== */

pd_sampler_scratch_t *pd_sampler_scratch_new(uint32_t n_vocab)
{
    if (n_vocab == 0 || n_vocab > INT32_MAX)
        return NULL;
    pd_sampler_scratch_t *s = calloc(1, sizeof *s);
    if (s == NULL)
        return NULL;
    s->n_vocab = n_vocab;
    s->cand = malloc((size_t)n_vocab * sizeof *s->cand);
    s->tmp = malloc((size_t)n_vocab * sizeof *s->tmp);
    s->counts = calloc(n_vocab, sizeof *s->counts);
    if (s->cand == NULL || s->tmp == NULL || s->counts == NULL) {
        pd_sampler_scratch_free(s);
        return NULL;
    }
    return s;
}

void pd_sampler_scratch_free(pd_sampler_scratch_t *s)
{
    if (s == NULL)
        return;
    free(s->cand);
    free(s->tmp);
    free(s->counts);
    free(s);
}

/* ====== Ordering and selection ====== */

/* The one order used everywhere: larger value first, then lower id.
 *
 * Nothing is ever sorted. Every step that needs "the first tokens in that
 * order" (top-k, top-p, the draw) asks prefix_select for the shortest prefix
 * whose count or probability mass reaches a target, which an MSD radix
 * select answers in O(n): a histogram of the top 11 bits of an
 * order-preserving key, one walk down the buckets to the one where the target
 * is crossed, a 3-way partition, then the same on the next 11 and last 10
 * bits of the members of that bucket only. Tokens left with equal values are
 * ordered by id the same way. */

typedef enum { KEY_VALUE, KEY_ID } key_kind_t;

/* A uint32 that is larger exactly when the candidate comes first. */
static inline uint32_t key_of(const cand_t *x, key_kind_t kind)
{
    if (kind == KEY_ID)
        return ~(uint32_t)x->id;
    float f = x->v + 0.0f; /* -0 -> +0: equal values, equal keys */
    uint32_t b;
    memcpy(&b, &f, sizeof b);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

static inline uint32_t digit_of(uint32_t key, int level)
{
    return level == 0 ? key >> 21 : level == 1 ? (key >> 10) & 0x7ffu : key & 0x3ffu;
}

typedef struct {
    bool by_mass;    /* target is a probability mass (sum of v), else a count */
    bool is_strict;  /* reached when acc > target, else acc >= target */
    double target;
} goal_t;

static inline bool reached(const goal_t *g, double acc)
{
    return g->is_strict ? acc > g->target : acc >= g->target;
}

/* Rearranges c[0..n) (n >= 1) so that c[0..m) holds the shortest prefix, in
 * the order above, whose count or mass reaches the goal (all n when none
 * does), and c[m - 1] is the last token of that prefix. Returns m >= 1. The
 * order within c[0..m - 1) is unspecified. Masses are summed bucket by
 * bucket, so they may differ from a sorted running sum by rounding. */
static size_t prefix_select(pd_sampler_scratch_t *s, cand_t *c, size_t n, key_kind_t kind,
                            const goal_t *goal)
{
    size_t lo = 0, hi = n; /* c[0..lo) is inside the prefix, c[hi..n) outside */
    double acc = 0.0;      /* count or mass of c[0..lo) */
    for (int level = 0; level < 3 && hi - lo > 1; level++) {
        uint32_t dmin = PD_RADIX_BUCKETS, dmax = 0;
        for (size_t i = lo; i < hi; i++) {
            uint32_t d = digit_of(key_of(&c[i], kind), level);
            size_t h = i & 1u;
            s->cnt[h][d]++;
            if (goal->by_mass)
                s->mass[h][d] += c[i].v;
            dmin = d < dmin ? d : dmin;
            dmax = d > dmax ? d : dmax;
        }
        for (uint32_t d = dmin; d <= dmax; d++) {
            s->cnt[0][d] += s->cnt[1][d];
            s->mass[0][d] += s->mass[1][d];
            s->cnt[1][d] = 0;
            s->mass[1][d] = 0.0;
        }
        /* The bucket where the goal is reached, or the last one if never. */
        uint32_t dsel = dmin;
        for (uint32_t d = dmax + 1; d-- > dmin;) {
            if (s->cnt[0][d] == 0)
                continue;
            double add = goal->by_mass ? s->mass[0][d] : (double)s->cnt[0][d];
            if (reached(goal, acc + add)) {
                dsel = d;
                break;
            }
            if (d != dmin)
                acc += add;
        }
        size_t n_sel = s->cnt[0][dsel], n_gt = 0;
        for (uint32_t d = dmin; d <= dmax; d++) {
            n_gt += d > dsel ? s->cnt[0][d] : 0;
            s->cnt[0][d] = 0;
            s->mass[0][d] = 0.0;
        }
        /* 3-way partition through tmp, branch-free: digit > dsel first, then
         * == dsel, then < dsel (stable within each part). */
        size_t p_gt = lo, p_eq = lo + n_gt, p_lt = lo + n_gt + n_sel;
        for (size_t i = lo; i < hi; i++) {
            uint32_t d = digit_of(key_of(&c[i], kind), level);
            bool is_gt = d > dsel, is_lt = d < dsel;
            size_t at = is_gt ? p_gt : is_lt ? p_lt : p_eq;
            s->tmp[at] = c[i];
            p_gt += is_gt;
            p_lt += is_lt;
            p_eq += !is_gt && !is_lt;
        }
        assert(p_gt == lo + n_gt && p_eq == lo + n_gt + n_sel && p_lt == hi);
        memcpy(c + lo, s->tmp + lo, (hi - lo) * sizeof *c);
        lo += n_gt;
        hi = lo + n_sel;
    }
    if (hi - lo == 1)
        return hi;
    /* Equal values (ids are distinct, so KEY_ID never gets here): count how
     * many of them the goal takes, then take the lowest ids. */
    assert(kind == KEY_VALUE);
    size_t j = 0;
    while (j < hi - lo) {
        j++;
        acc += goal->by_mass ? (double)c[lo].v : 1.0;
        if (reached(goal, acc))
            break;
    }
    goal_t by_id = { .by_mass = false, .is_strict = false, .target = (double)j };
    return lo + prefix_select(s, c + lo, hi - lo, KEY_ID, &by_id);
}

/* ====== Chain ====== */

/* Sum of c[0..n).v in double; four accumulators, so that the loop is not
 * bound by the latency of one chain of additions. */
static double sum_v(const cand_t *c, size_t n)
{
    double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        a0 += c[i].v;
        a1 += c[i + 1].v;
        a2 += c[i + 2].v;
        a3 += c[i + 3].v;
    }
    for (; i < n; i++)
        a0 += c[i].v;
    return (a0 + a1) + (a2 + a3);
}

static void apply_penalties(const pd_sampling_t *p, float *logits, uint32_t n_vocab,
                            const int32_t *history, size_t n_history, uint32_t *counts)
{
    for (size_t i = 0; i < n_history; i++) {
        int32_t t = history[i];
        if (t >= 0 && (uint32_t)t < n_vocab && counts[t] != UINT32_MAX)
            counts[t]++;
    }
    /* Second pass: each distinct token once, then its count is cleared. */
    for (size_t i = 0; i < n_history; i++) {
        int32_t t = history[i];
        if (t < 0 || (uint32_t)t >= n_vocab || counts[t] == 0)
            continue;
        float l = logits[t];
        l = l <= 0.0f ? l * p->repetition_penalty : l / p->repetition_penalty;
        l -= (float)counts[t] * p->frequency_penalty + p->presence_penalty;
        logits[t] = l;
        counts[t] = 0;
    }
}

/* The definition of the greedy pick (sampler.h). Eight running maxima
 * (a > b ? a : b compiles to maxps), then one scan for the first index
 * holding the maximum. */
int32_t pd_argmax_ref(const float *x, uint32_t n_vocab)
{
    const size_t n = n_vocab;
    float m[8];
    for (int j = 0; j < 8; j++)
        m[j] = -INFINITY;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const float *v = x + i;
        for (int j = 0; j < 8; j++)
            m[j] = v[j] > m[j] ? v[j] : m[j];
    }
    float best = -INFINITY;
    for (int j = 0; j < 8; j++)
        best = m[j] > best ? m[j] : best;
    for (; i < n; i++)
        best = x[i] > best ? x[i] : best;
    if (best == -INFINITY)
        return 0;
    for (i = 0; i < n; i++)
        if (x[i] == best)
            return (int32_t)i;
    return 0; /* not reached */
}

int32_t pd_argmax(const float *x, uint32_t n)
{
    if (pd_kern_isa() == PD_ISA_AVX512)
        return pd_argmax_avx512(x, n);
    return pd_argmax_ref(x, n);
}

int32_t pd_sample(const pd_sampling_t *p, float *logits, uint32_t n_vocab, uint64_t position,
                  const int32_t *history, size_t n_history, pd_sampler_scratch_t *s)
{
    assert(s != NULL && n_vocab > 0 && n_vocab <= s->n_vocab);
    if (s == NULL || n_vocab == 0 || n_vocab > s->n_vocab)
        return -1;

    if (history != NULL && n_history > 0 &&
        (p->repetition_penalty != 1.0f || p->presence_penalty != 0.0f || p->frequency_penalty != 0.0f))
        apply_penalties(p, logits, n_vocab, history, n_history, s->counts);

    int32_t best = pd_argmax(logits, n_vocab);
    if (!(p->temperature > 0.0f) || !(logits[best] > -INFINITY))
        return best;

    /* Candidates: every token whose logit is neither NaN nor -inf; +inf
     * counts as FLT_MAX so that differences stay defined. */
    cand_t *c = s->cand;
    size_t n = 0;
    for (uint32_t i = 0; i < n_vocab; i++)
        if (logits[i] > -INFINITY)
            c[n++] = (cand_t){ logits[i] < FLT_MAX ? logits[i] : FLT_MAX, (int32_t)i };

    if (p->top_k > 0 && (size_t)p->top_k < n) {
        goal_t g = { .by_mass = false, .is_strict = false, .target = (double)p->top_k };
        n = prefix_select(s, c, n, KEY_VALUE, &g);
    }

    /* Softmax numerators with temperature; the max logit maps to exactly 1. */
    const float lmax = logits[best] < FLT_MAX ? logits[best] : FLT_MAX;
    for (size_t i = 0; i < n; i++)
        c[i].v = expf((c[i].v - lmax) / p->temperature);
    const double total = sum_v(c, n);
    const size_t n_before_cuts = n;

    /* min-p: p < min_p * p_max, and p_max is 1 before normalization. It drops
     * a suffix of the order, so applying it before top-p yields the same set
     * as top-p then min-p (top-p still uses `total`, the mass before min-p). */
    if (p->min_p > 0.0f) {
        size_t m = 0;
        for (size_t i = 0; i < n; i++)
            if (c[i].v >= p->min_p)
                c[m++] = c[i];
        n = m;
    }
    /* top-p: the shortest prefix with mass >= top_p. */
    if (p->top_p < 1.0f) {
        goal_t g = { .by_mass = true, .is_strict = false, .target = (double)p->top_p * total };
        n = prefix_select(s, c, n, KEY_VALUE, &g);
    }

    /* Renormalize over the survivors and draw: the last token of the
     * shortest prefix whose mass exceeds u * kept. */
    const double kept = n == n_before_cuts ? total : sum_v(c, n);
    goal_t g = { .by_mass = true, .is_strict = true, .target = pd_rng_uniform(p->seed, position) * kept };
    size_t m = prefix_select(s, c, n, KEY_VALUE, &g);
    assert(m >= 1 && m <= n);
    return c[m - 1].id;
}
