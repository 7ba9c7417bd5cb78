/* sampler.h -- token sampling with a counter-based random generator.
 *
 * The random draw for a token depends only on (seed, position): the output
 * of a request does not depend on what else shares the batch or which
 * process samples it, so a request moved to another worker continues with
 * exactly the tokens it would have produced.
 *
 * Order of operations in pd_sample:
 *   0. NaN logits count as -inf (never drawn), +inf as FLT_MAX.
 *   1. Penalties over `history` (the caller picks the window, e.g. the last
 *      64 tokens as llama.cpp's penalty_last_n), once per distinct token t
 *      seen count(t) times, as llama.cpp's penalties sampler:
 *        l = l <= 0 ? l * repetition_penalty : l / repetition_penalty
 *        l -= count(t) * frequency_penalty + presence_penalty
 *   2. temperature == 0 -> argmax (ties -> lowest id). O(n_vocab).
 *   3. top-k (when 0 < k < n_vocab) by partial selection, expected O(n_vocab).
 *   4. softmax over the survivors of logits / temperature.
 *   5. top-p: keep the shortest prefix, in descending probability order
 *      (ties -> lower id), whose probability sum is >= top_p (at least one).
 *   6. min-p: drop tokens with p < min_p * p_max.
 *   7. renormalize; u = pd_rng_uniform(seed, position); return the first
 *      token in that same order whose cumulative probability exceeds u.
 * Unlike llama.cpp, whose default chain applies top-p and min-p to the
 * untempered distribution, temperature comes before top-p and min-p here
 * (as in vLLM and HF transformers); at temperature 1 the two agree.
 * Nothing is sorted: top-k, top-p and the draw each find "the shortest
 * prefix in that order reaching a count or a mass" by an MSD radix select,
 * O(n_vocab) per token (probability sums may differ from a sorted running
 * sum by rounding only).
 */
#ifndef PD_SAMPLER_H
#define PD_SAMPLER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

typedef struct {
    float temperature;         /* 0 = greedy; >= 0 */
    int32_t top_k;             /* 0 = off */
    float top_p;               /* (0, 1]; 1 = off */
    float min_p;               /* [0, 1); 0 = off */
    float repetition_penalty;  /* > 0; 1 = off */
    float presence_penalty;    /* [-2, 2]; 0 = off */
    float frequency_penalty;   /* [-2, 2]; 0 = off */
    uint64_t seed;
} pd_sampling_t;

void pd_sampling_default(pd_sampling_t *p); /* greedy, everything off */
/* Checks every field's range (PD_EINVAL; NaN fails every check): temperature
 * in [0, 100], top_k >= 0, top_p in (0, 1], min_p in [0, 1),
 * repetition_penalty in (0, 10], presence/frequency_penalty in [-2, 2].
 * err names the field and the value. */
int pd_sampling_validate(const pd_sampling_t *p, pd_err_t *err);

/* Uniform double in [0, 1) from (seed, position): SplitMix64-style mixing
 * of both words, no state. */
double pd_rng_uniform(uint64_t seed, uint64_t position);

/* The greedy pick: the lowest index holding the largest of x[0..n); NaN
 * never wins; 0 when every value is NaN or -inf (or n == 0); n <= INT32_MAX.
 * pd_argmax_ref is the plain C definition; pd_argmax takes
 * pd_argmax_avx512 (sampler_avx512.c, one pass) when pd_kern_isa() ==
 * PD_ISA_AVX512; all give the same id. */
int32_t pd_argmax(const float *x, uint32_t n);
int32_t pd_argmax_ref(const float *x, uint32_t n);
int32_t pd_argmax_avx512(const float *x, uint32_t n); /* needs AVX-512F */

/* Scratch for sampling over a vocabulary of up to n_vocab tokens (reusable,
 * one per thread). NULL when n_vocab is 0 or > INT32_MAX or out of memory. */
typedef struct pd_sampler_scratch pd_sampler_scratch_t;
pd_sampler_scratch_t *pd_sampler_scratch_new(uint32_t n_vocab);
void pd_sampler_scratch_free(pd_sampler_scratch_t *s);

/* Samples one token from logits (n_vocab <= the scratch's n_vocab; modified
 * in place by the penalties). p must have passed
 * pd_sampling_validate. History ids outside [0, n_vocab) are ignored.
 * position is the index of the token being sampled in its sequence
 * (prompt length + tokens generated so far). history: the ids penalties
 * look at (may be NULL when n_history == 0). Returns the token id. */
int32_t pd_sample(const pd_sampling_t *p, float *logits, uint32_t n_vocab, uint64_t position,
                  const int32_t *history, size_t n_history, pd_sampler_scratch_t *s);

#endif
