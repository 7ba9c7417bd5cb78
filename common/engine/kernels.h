/* kernels.h -- the hot loops. Every kernel has a plain C reference (_ref)
 * and an AVX2/FMA version (_avx2); pd_kern_* dispatch picks AVX2 when the
 * CPU has it (checked once). tests/unit/test_kernels.c compares the two on
 * odd sizes.
 *
 * Weight matrices are GGUF tensors: W has n_out rows of n_in elements each
 * (ne[0] = n_in is contiguous), stored in `type`, rows row_bytes apart.
 */
#ifndef PD_KERNELS_H
#define PD_KERNELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/gguf.h"
#include "engine/pool.h"

/* A weight matrix view (borrowed; points into the mapped model file). */
typedef struct {
    const void *data;     /* (n_out, n_in) in `type`, row-major */
    pd_ggml_type_t type;
    uint32_t n_out;       /* rows */
    uint32_t n_in;        /* elements per row */
    uint64_t row_bytes;   /* pd_ggml_row_bytes(type, n_in) */
} pd_mat_t;

/* ====== Scalar conversions ====== */
float pd_fp16_to_fp32(uint16_t h);
uint16_t pd_fp32_to_fp16(float f);     /* round to nearest even */
float pd_bf16_to_fp32(uint16_t h);
uint16_t pd_fp32_to_bf16(float f);     /* round to nearest even */

/* Dequantizes n elements (n a multiple of the type's block) starting at
 * src into dst (fp32). */
void pd_dequant_row(pd_ggml_type_t type, const void *src, float *dst, uint32_t n);
/* Quantizes n fp32 (n % 32 == 0) into Q8_0 blocks (ggml's rounding). */
void pd_quant_row_q8_0(const float *src, void *dst, uint32_t n);
/* Quantizes n fp32 (n % 32 == 0) into Q4_0 blocks (ggml's rounding). */
void pd_quant_row_q4_0(const float *src, void *dst, uint32_t n);

/* ====== Skinny matmul (decode: few rows) ======
 *
 * For every batch row r in [0, n_rows) and every output o in [o_begin, o_end):
 *     y[r * y_stride + o] = sum_i x[r * x_stride + i] * W[o][i]
 * Each weight row is read from memory once for all n_rows activations
 * (n_rows <= PD_SKINNY_MAX_ROWS), so the cost is the cost of reading W.
 * For quantized weights the activations are first quantized as ggml does
 * (Q8_0 per 32 for Q8_0/Q4_0/IQ4_NL, Q8_K per 256 for the K-quants: xq holds
 * pd_kern_xq_bytes, prepared by pd_kern_prepare_x); other types read x as
 * fp32.
 */
#define PD_SKINNY_MAX_ROWS 64

/* True for weight types whose products run on quantized activations
 * (Q8_0, Q4_0, IQ4_NL: Q8_0 activations; Q2_K..Q6_K: Q8_K activations). */
bool pd_kern_is_quant(pd_ggml_type_t wtype);
/* The activation format ggml multiplies wtype with: Q8_0, Q8_K, or F32 for
 * float weights (which this module reads as fp32). */
pd_ggml_type_t pd_kern_act_type(pd_ggml_type_t wtype);

/* Bytes of scratch that pd_kern_prepare_x needs for n_rows rows of n_in. */
size_t pd_kern_xq_bytes(pd_ggml_type_t wtype, uint32_t n_in, uint32_t n_rows);
/* Converts x into the form the kernel for wtype reads (pd_kern_act_type;
 * nothing for float types). Q8_K is ggml's quantize_row_q8_K (quants_k.h).
 * The Q8_0 rounding is that of ggml's x86
 * quantize_row_q8_0, which the llama.cpp referee runs on activations:
 * d = amax / 127 (fp16), q = round-half-even(x * (127 / amax)); model files
 * use pd_quant_row_q8_0 (ggml's _ref: q = roundf(x * (1 / d))). */
void pd_kern_prepare_x(pd_ggml_type_t wtype, const float *x, uint32_t x_stride, uint32_t n_in,
                       uint32_t n_rows, void *xq);

/* Rounds n_rows contiguous rows of n_in activations through wtype's
 * activation format (quantize as pd_kern_prepare_x, then dequantize) into
 * out, so that a dequantize + sgemm product sees the inputs the skinny
 * kernel multiplies. Quantized wtype only; xq: pd_kern_xq_bytes scratch. */
void pd_kern_round_x(pd_ggml_type_t wtype, const float *x, uint32_t n_in, uint32_t n_rows,
                     void *xq, float *out);

void pd_kern_skinny(const pd_mat_t *w, uint32_t o_begin, uint32_t o_end, const float *x,
                    uint32_t x_stride, const void *xq, uint32_t n_rows, float *y,
                    uint32_t y_stride);
void pd_kern_skinny_ref(const pd_mat_t *w, uint32_t o_begin, uint32_t o_end, const float *x,
                        uint32_t x_stride, const void *xq, uint32_t n_rows, float *y,
                        uint32_t y_stride);

/* ====== Matmul with dispatch ======
 *
 * y (n_rows, w->n_out) = x (n_rows, w->n_in) @ W^T, fp32 out.
 * n_rows <= skinny_max: the skinny kernel, split over the pool by output rows
 * (for quantized weights only up to PD_SKINNY_QUANT_MAX rows: beyond, the
 * integer kernel is slower than dequantize + sgemm).
 * Otherwise: cblas_sgemm (fp32 weights directly; other types dequantized
 * tile by tile into scratch, then sgemm).
 * scratch: at least pd_matmul_scratch_bytes(w, n_rows) bytes, 64-aligned;
 * pd_matmul_scratch_bytes(w, n) covers every call with at most n rows.
 * OpenBLAS threads are left alone (the engine sets them to its n_threads);
 * after a pool job the pool's workers spin for up to 0.1 ms, then sleep.
 */
size_t pd_matmul_scratch_bytes(const pd_mat_t *w, uint32_t n_rows);
/* True when pd_matmul(w, .., n_rows, .., skinny_max) takes the skinny path
 * (the only place that rule lives; the engine asks it, it does not copy it). */
bool pd_matmul_uses_skinny(const pd_mat_t *w, uint32_t n_rows, uint32_t skinny_max);
void pd_matmul(pd_pool_t *pool, const pd_mat_t *w, const float *x, uint32_t n_rows, float *y,
               void *scratch, uint32_t skinny_max);

/* ====== Small vector kernels ====== */
/* out[i] = x[i] / rms(x) * g[i]; rms = sqrt(mean(x^2) + eps). out may be x. */
void pd_kern_rmsnorm(float *out, const float *x, const float *g, uint32_t n, float eps);
/* In place softmax of x[0..n). */
void pd_kern_softmax(float *x, uint32_t n);
/* gate[i] = silu(gate[i]) * up[i] */
void pd_kern_swiglu(float *gate, const float *up, uint32_t n);
float pd_kern_dot_f32(const float *a, const float *b, uint32_t n);
/* y[i] += a * x[i] */
void pd_kern_axpy_f32(float *y, float a, const float *x, uint32_t n);

/* True when the AVX2/FMA/F16C paths are in use. */
bool pd_kern_has_avx2(void);

/* ====== Variants (tests and the benchmark call these directly) ======
 * The _ref versions are plain C (float kernels accumulate in double); the
 * _avx2 versions need pd_kern_has_avx2(). pd_kern_prepare_x_ref and
 * pd_kern_prepare_x_avx2 produce identical bytes. The skinny AVX2 kernel
 * gives bitwise the same y[r][o] whatever n_rows and o_begin/o_end are
 * (each (r, o) is computed by the same sequence of operations), so a
 * sequence's logits do not depend on what it is batched with. */
void pd_kern_prepare_x_ref(pd_ggml_type_t wtype, const float *x, uint32_t x_stride, uint32_t n_in,
                           uint32_t n_rows, void *xq);
void pd_kern_prepare_x_avx2(pd_ggml_type_t wtype, const float *x, uint32_t x_stride,
                            uint32_t n_in, uint32_t n_rows, void *xq);
void pd_kern_skinny_avx2(const pd_mat_t *w, uint32_t o_begin, uint32_t o_end, const float *x,
                         uint32_t x_stride, const void *xq, uint32_t n_rows, float *y,
                         uint32_t y_stride);
void pd_dequant_row_ref(pd_ggml_type_t type, const void *src, float *dst, uint32_t n);
void pd_dequant_row_avx2(pd_ggml_type_t type, const void *src, float *dst, uint32_t n);
void pd_kern_rmsnorm_ref(float *out, const float *x, const float *g, uint32_t n, float eps);
void pd_kern_rmsnorm_avx2(float *out, const float *x, const float *g, uint32_t n, float eps);
void pd_kern_softmax_ref(float *x, uint32_t n);
void pd_kern_softmax_avx2(float *x, uint32_t n);
void pd_kern_swiglu_ref(float *gate, const float *up, uint32_t n);
void pd_kern_swiglu_avx2(float *gate, const float *up, uint32_t n);
float pd_kern_dot_f32_ref(const float *a, const float *b, uint32_t n);
float pd_kern_dot_f32_avx2(const float *a, const float *b, uint32_t n);
void pd_kern_axpy_f32_ref(float *y, float a, const float *x, uint32_t n);
void pd_kern_axpy_f32_avx2(float *y, float a, const float *x, uint32_t n);

/* Rows of output handled per matmul task are a multiple of this. */
#define PD_MATMUL_CHUNK_ROWS 16
/* Output rows dequantized per sgemm call when the weights are not F32. */
#define PD_MATMUL_DEQ_TILE_ROWS 512
/* Suggested skinny_max for pd_matmul on AVX2 machines (measured with
 * pd-kbench: up to this many rows the skinny kernel beats sgemm). */
#define PD_SKINNY_DEFAULT_MAX 64
/* Cap on the skinny path for quantized weights (measured crossover with
 * dequantize + sgemm on the same machine: 32 rows at 4096 x 4096). */
#define PD_SKINNY_QUANT_MAX 32

#endif
