/* quants_k.h -- ggml's K-quants (Q2_K..Q6_K), IQ4_NL and the Q8_K
 * activation format: block layouts, dequantization, the quantizers
 * llama-quantize runs without an importance matrix, the check of block
 * scales, and the plain C reference of the skinny product.
 *
 * Layouts (ggml-common.h; little-endian; "fp16" is an IEEE half; a row is
 * n / 256 super-blocks, or n / 32 blocks for IQ4_NL):
 *
 *   Q2_K   84 bytes / 256: scales[16] (low nibble: scale, high: min, per 16
 *          elements), qs[64] (2-bit), fp16 d, fp16 dmin.
 *          x = d * scale * q - dmin * min.
 *   Q3_K  110 bytes / 256: hmask[32] (high bit), qs[64] (low 2 bits),
 *          scales[12] (16 6-bit scales, biased by 32), fp16 d.
 *          x = d * (scale - 32) * (q_low - (high ? 0 : 4)).
 *   Q4_K  144 bytes / 256: fp16 d, fp16 dmin, scales[12] (8 6-bit scales and
 *          8 6-bit mins, per 32 elements), qs[128] (4-bit).
 *          x = d * scale * q - dmin * min.
 *   Q5_K  176 bytes / 256: as Q4_K plus qh[32] (the fifth bit) before qs.
 *   Q6_K  210 bytes / 256: ql[128] (low 4 bits), qh[64] (high 2 bits),
 *          int8 scales[16] (per 16 elements), fp16 d. x = d * scale * (q - 32).
 *   IQ4_NL 18 bytes / 32: fp16 d, qs[16] (4-bit indices into
 *          pd_iq4nl_values). x = d * value[q].
 *   Q8_K  292 bytes / 256 (activations only): float d, int8 qs[256],
 *          int16 bsums[16] (sums of qs per 16). x = d * q.
 *
 * Every bit pattern of the 4- and 6-bit scales is a valid scale; what a file
 * can get wrong inside a block is a NaN or infinite fp16 d / dmin, which
 * pd_quant_find_bad_scale finds (the model loader refuses such a tensor).
 */
#ifndef PD_QUANTS_K_H
#define PD_QUANTS_K_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/gguf.h"
#include "engine/kernels.h"

#define PD_Q2_K_BYTES 84
#define PD_Q3_K_BYTES 110
#define PD_Q4_K_BYTES 144
#define PD_Q5_K_BYTES 176
#define PD_Q6_K_BYTES 210
#define PD_Q8_K_BYTES 292
#define PD_IQ4_NL_BYTES 18

/* The 16 values an IQ4_NL index selects (ggml's kvalues_iq4nl). */
extern const int8_t pd_iq4nl_values[16];

/* True for Q2_K..Q6_K (the weight types in super-blocks of 256). */
bool pd_quant_is_k(pd_ggml_type_t t);

/* Dequantizes n elements (a multiple of the type's block) of a Q2_K..Q6_K or
 * IQ4_NL row into dst, with ggml's dequantize_row_* arithmetic (same
 * operations in the same order, so the same floats). */
void pd_dequant_row_k_ref(pd_ggml_type_t t, const void *src, float *dst, uint32_t n);

/* Quantizes n fp32 (a multiple of the block) into Q2_K..Q6_K or IQ4_NL as
 * llama-quantize does without an importance matrix (ggml's
 * quantize_row_*_ref; quantize_iq4_nl for IQ4_NL). */
void pd_quant_row_k(pd_ggml_type_t t, const float *src, void *dst, uint32_t n);

/* Quantizes n fp32 (n % 256 == 0) into Q8_K as ggml does on x86
 * (quantize_row_q8_K_ref): per 256, the value of largest magnitude max,
 * q = min(127, round-half-even(-127 / max * x)), d = 1 / (-127 / max); an
 * all-zero block has d = 0, q = 0 (and bsums 0). */
void pd_quant_row_q8_k_ref(const float *x, void *dst, uint32_t n);
/* x = d * q, n % 256 == 0. */
void pd_dequant_row_q8_k(const void *src, float *dst, uint32_t n);

/* Looks for a block of a quantized tensor (Q8_0, Q4_0, IQ4_NL, Q2_K..Q6_K)
 * whose fp16 scale is NaN or infinite, as ggml_validate_row_data does (d, and
 * dmin for Q2_K/Q4_K/Q5_K). data holds n_blocks blocks. Returns the index of
 * the first bad block and sets *bits (the fp16) and *field ("d" or "dmin"),
 * or -1 when every scale is finite. Float types have no scales: -1. */
int64_t pd_quant_find_bad_scale(pd_ggml_type_t t, const void *data, uint64_t n_blocks,
                                uint16_t *bits, const char **field);

/* Plain C reference of the skinny product for Q2_K..Q6_K (x as Q8_K rows)
 * and IQ4_NL (x as Q8_0 rows): every product of a dequantized weight and a
 * dequantized activation summed in double, for o in [o_begin, o_end) and r
 * in [0, n_rows): y[r * y_stride + o]. xq rows are
 * pd_ggml_row_bytes(activation type, w->n_in) apart. */
void pd_kern_skinny_k_ref(pd_ggml_type_t wtype, const uint8_t *w, uint64_t row_bytes,
                          uint32_t n_in, uint32_t o_begin, uint32_t o_end, const void *xq,
                          uint32_t n_rows, float *y, uint32_t y_stride);

/* ====== AVX2 versions (kernels_k_avx2.c; only when pd_kern_has_avx2()) ======
 * pd_kern_skinny_k_avx2: y[r * y_stride + o] for o in [o_begin, o_end), r in
 * [0, n_rows) (n_rows <= PD_SKINNY_MAX_ROWS), w Q2_K..Q6_K with Q8_K rows in
 * xq or IQ4_NL with Q8_0 rows; bit-identical to ggml's AVX2 vec_dot for each
 * (r, o), whatever n_rows and the range. pd_dequant_row_k_avx2 gives the
 * same floats as pd_dequant_row_k_ref; pd_quant_rows_q8_k_avx2 the same
 * bytes as pd_quant_row_q8_k_ref, row by row (x rows x_stride apart, xq rows
 * contiguous). */
void pd_kern_skinny_k_avx2(const pd_mat_t *w, uint32_t o_begin, uint32_t o_end, const void *xq,
                           uint32_t n_rows, float *y, uint32_t y_stride);
void pd_dequant_row_k_avx2(pd_ggml_type_t t, const void *src, float *dst, uint32_t n);
void pd_quant_rows_q8_k_avx2(const float *x, uint32_t x_stride, uint32_t n, uint32_t n_rows,
                             void *xq);

/* ====== AVX-512 version (kernels_k_avx512.c; only when pd_kern_isa() is
 * PD_ISA_AVX512) ======
 * pd_kern_skinny_k_avx512: as pd_kern_skinny_k_avx2 (same types, same
 * arguments) for any n_rows (slices of PD_SKINNY_MAX_ROWS), bit-identical to
 * it for every (r, o); Q4_K and Q6_K with VNNI, the other types by the AVX2
 * kernel. */
void pd_kern_skinny_k_avx512(const pd_mat_t *w, uint32_t o_begin, uint32_t o_end, const void *xq,
                             uint32_t n_rows, float *y, uint32_t y_stride);
/* The same with its faster paths on (fast: what pd_kern_skinny_k_avx512
 * does) or off (the plain VNNI loops), so that tests check both: Q4_K on
 * activations rearranged per call (calls whose activations fit 64 KB), Q6_K
 * with GFNI (CPUs that have it). Every path gives the same bits. */
void pd_kern_skinny_k_avx512_paths(const pd_mat_t *w, uint32_t o_begin, uint32_t o_end,
                                   const void *xq, uint32_t n_rows, float *y, uint32_t y_stride,
                                   bool fast);

#endif
