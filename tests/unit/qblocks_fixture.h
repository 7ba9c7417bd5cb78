/* qblocks_fixture.h -- random Q8_0 / Q4_0 weight blocks for the quantized
 * kernel tests (test_kernels_qt.c, test_kernels_qg.c): a seeded xorshift,
 * and weight rows whose every byte (Q8_0: every int8, -128 included; Q4_0:
 * every nibble) and fp16 scale are drawn from it.
 *
 * Include after cmocka.h and engine/kernels.h. Every function is static
 * and may go unused.
 */
#ifndef QBLOCKS_FIXTURE_H
#define QBLOCKS_FIXTURE_H

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    uint64_t s;
} rng_t;

static inline uint32_t rng_u32(rng_t *r)
{
    r->s ^= r->s << 13;
    r->s ^= r->s >> 7;
    r->s ^= r->s << 17;
    return (uint32_t)(r->s >> 16);
}

/* Uniform in [-1, 1). */
static inline float rng_f(rng_t *r)
{
    return (float)(rng_u32(r) & 0xffffff) / 8388608.0f - 1.0f;
}

/* Bytes of one block of weight type t (Q8_0 or Q4_0). */
static inline size_t wblk(pd_ggml_type_t t)
{
    return t == PD_GGML_TYPE_Q8_0 ? 34 : 18;
}

/* n_out rows of raw blocks: a finite fp16 scale and random bytes (every
 * int8 weight, -128 included, for Q8_0; every nibble for Q4_0); `extreme`:
 * only the extreme weights (-128 and 127; nibbles 0 and 15). */
static inline uint8_t *make_w(pd_ggml_type_t t, uint32_t n_out, uint32_t n_in, rng_t *r,
                              bool extreme)
{
    const size_t rb = n_in / 32 * wblk(t);
    static const uint8_t ext[2][4] = {{0x80, 0x7f, 0x80, 0x7f}, {0x00, 0x0f, 0xf0, 0xff}};
    uint8_t *w = malloc(rb * n_out + 1);
    assert_non_null(w);
    for (size_t b = 0; b < (size_t)n_out * (n_in / 32); b++) {
        uint8_t *blk = w + b * wblk(t);
        const uint16_t d = pd_fp32_to_fp16(rng_f(r) * 0.01f);
        memcpy(blk, &d, 2);
        for (size_t j = 2; j < wblk(t); j++)
            blk[j] = extreme ? ext[t == PD_GGML_TYPE_Q4_0][rng_u32(r) % 4] : (uint8_t)rng_u32(r);
    }
    return w;
}

#endif
