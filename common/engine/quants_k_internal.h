/* quants_k_internal.h -- block-layout helpers shared by quants_k.c
 * (dequantization, checks) and quantize_k.c (quantizers). Not public. */
#ifndef PD_QUANTS_K_INTERNAL_H
#define PD_QUANTS_K_INTERNAL_H

#include <stdint.h>
#include <string.h>

#include "engine/kernels.h"

static inline float ld_f16(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return pd_fp16_to_fp32(h);
}

static inline void st_f16(uint8_t *p, float f)
{
    uint16_t h = pd_fp32_to_fp16(f);
    memcpy(p, &h, 2);
}

/* Scale and min j (0..7) of a Q4_K/Q5_K super-block: 6 bits each, packed in
 * 12 bytes (ggml's get_scale_min_k4). */
static inline void k4_scale_min(int j, const uint8_t *q, uint8_t *sc, uint8_t *m)
{
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

/* The 16 signed 6-bit scales of a Q3_K super-block (already minus 32). */
static inline void q3k_scales(const uint8_t *s12, int8_t sc[16])
{
    for (int j = 0; j < 16; j++) {
        int lo = j < 8 ? (s12[j] & 0xF) : (s12[j - 8] >> 4);
        int hi = (s12[8 + j % 4] >> (2 * (j / 4))) & 3;
        sc[j] = (int8_t)((lo | (hi << 4)) - 32);
    }
}

#endif
