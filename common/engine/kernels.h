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

/* ====== Batched quantized product, tokens across the lanes ======
 *
 * For Q8_0 and Q4_0 weights on AVX-512 VNNI (kernels_qt_avx512.c): the
 * same y[r][o] as the skinny kernels, to the bit (the same integer per
 * 4-element group, the same product of scales, the same 8-lane FMA chain
 * and final tree per (o, r); pd_kern_skinny_qlanes_ref below is that
 * definition), with 16 tokens in the lanes of a vector instead of one
 * (o, r) pair (8 tokens, two lanes each, for a last group of at most 8),
 * which does 3x fewer instructions per multiply-add from 8 tokens on. pd_matmul and pd_matmul_multi use it for the first
 * pd_kern_qt_rows(type, n_rows) rows and the skinny kernel for the rest.
 * The activations are rearranged once per product (pd_kern_qt_prepare,
 * from pd_kern_prepare_x's bytes) into pd_kern_qt_bytes of 64-aligned
 * memory that the tasks share read-only. */
#define PD_QT_LANES 16      /* tokens per vector */
#define PD_QT_BLK_BYTES 1088 /* per group of 16 tokens and 32-block */
/* Fewer rows in a last group: the skinny kernel. A last group of 6..8
 * tokens runs the qt8 layout (two of a token's 8 lanes per token in a
 * vector, half the 16-token kernel's work per block, whatever the number
 * of tokens in it); below 6 the skinny kernel's per-token work is less
 * (pd-kbench, 1 thread, 2048x2048: qt8 0.56 ms from 2 to 8 rows, skinny
 * 0.48 / 0.66 / 0.84 ms at 4 / 6 / 8 rows, Q8_0; Q4_0 alike). */
#define PD_QT_MIN_ROWS 6

/* Rows of an n_rows product with weights wtype that the qt kernel takes
 * (whole groups of 16, and a last group of at least PD_QT_MIN_ROWS): 0
 * unless the ISA is AVX-512 and wtype Q8_0 or Q4_0. */
uint32_t pd_kern_qt_rows(pd_ggml_type_t wtype, uint32_t n_rows);
/* Bytes of the rearranged activations of n_rows rows of n_in. */
size_t pd_kern_qt_bytes(uint32_t n_in, uint32_t n_rows);
/* xq: n_rows rows of Q8_0 activations as pd_kern_prepare_x wrote them
 * (row stride n_in / 32 * 34 bytes); panel: pd_kern_qt_bytes, 64-aligned. */
void pd_kern_qt_prepare_avx512(pd_ggml_type_t wtype, const void *xq, uint32_t n_in,
                               uint32_t n_rows, void *panel);
/* y[r * y_stride + o] for r < n_rows, o in [o_begin, o_end), from the
 * panel that pd_kern_qt_prepare_avx512 built for those n_rows rows. */
void pd_kern_skinny_qt_avx512(const pd_mat_t *w, uint32_t o_begin, uint32_t o_end,
                              const void *panel, uint32_t n_rows, float *y, uint32_t y_stride);
/* The bits every Q8_0 / Q4_0 kernel must give (AVX2, AVX-512 VNNI, qt),
 * in plain C: per (o, r), 8 float lanes, lane i += (float)(integer dot of
 * elements 4i..4i+3) * (dw * dx) with one fmaf per block in order, then
 * hsum_float_8's tree. (pd_kern_skinny_ref computes in double instead.)
 * xq: pd_kern_prepare_x's rows. */
void pd_kern_skinny_qlanes_ref(const pd_mat_t *w, uint32_t o_begin, uint32_t o_end,
                               const void *xq, uint32_t n_rows, float *y, uint32_t y_stride);

/* ====== Integer product for many rows (prefill) ======
 *
 * Q8_0 and Q4_0 weights times Q8_0 activations (pd_kern_prepare_x) for
 * products of more than PD_SKINNY_QUANT_MAX rows on AVX-512 VNNI
 * (kernels_qg_avx512.c), in place of dequantize + tiled F32. Its own bits,
 * not the decode kernels' (those keep 8 lanes per (o, r)): per (o, r) one
 * float chain, from +0, over the blocks in order,
 *     acc = fmaf((float)dot_b, dw_b * dx_b, acc)
 * where dot_b is the block's whole 32-element integer dot (exact) and
 * dw_b * dx_b the one rounded float product of the two fp16 scales;
 * y[r][o] = acc. pd_kern_qg_ref is that definition in plain C. Every
 * (o, r) is the same operations whatever the batch, the thread count or
 * the split of rows over tasks. */
/* True when pd_matmul / pd_matmul_multi give an n_rows product with w to
 * this kernel: AVX-512 ISA, Q8_0 or Q4_0, n_rows > PD_SKINNY_QUANT_MAX. */
bool pd_kern_qg_takes(const pd_mat_t *w, uint32_t n_rows);
/* Scratch bytes for products of n_in with up to n_rows rows. */
size_t pd_kern_qg_scratch_bytes(uint32_t n_in, uint32_t n_rows);
/* xq: n_rows rows of pd_kern_prepare_x's Q8_0 activations. */
void pd_kern_qg_ref(const pd_mat_t *w, uint32_t o_begin, uint32_t o_end, const void *xq,
                    uint32_t n_rows, float *y, uint32_t y_stride);

/* ====== Matmul with dispatch ======
 *
 * y (n_rows, w->n_out) = x (n_rows, w->n_in) @ W^T, fp32 out.
 * n_rows <= skinny_max: the skinny kernel, split over the pool by output rows
 * (for quantized weights only up to PD_SKINNY_QUANT_MAX rows: beyond, the
 * skinny and qt kernels' 8 float lanes per (o, r) cost more than a whole
 * block's integer dot and one FMA, which the prefill kernel below does).
 * Otherwise: cblas_sgemm (fp32 weights directly; other types dequantized
 * tile by tile into scratch, then sgemm), or on AVX-512 the tiled kernels
 * (kernels_gemm.h) and, for Q8_0 / Q4_0, the integer prefill kernel
 * (pd_kern_qg_takes), which quantizes x itself as the skinny path does.
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

/* ====== Several products of one input, one pool run ======
 *
 * y_i = x (n_rows, n_in) @ W_i^T for the n_outs products of outs (all of
 * one type and n_in: Q, K and V; gate and up). On the skinny path x is
 * prepared once and the output rows of all products are one task list, so
 * the pool synchronises once, not once per product. With `lockstep` (all
 * n_out equal) a task computes the same output rows [o0, o1) of every
 * product. After a task has written its rows it calls epi(epi_ctx, i, o0,
 * o1) (i = the product, or -1 with lockstep) for every batch row: an
 * element-wise epilogue (SwiGLU of gate and up, a residual add) runs while
 * those rows are hot in cache, in the same pool run. On the sgemm path the
 * products run one after the other and the epilogue runs over the pool
 * afterwards, in row chunks. A product's y is what pd_matmul gives. */
typedef struct {
    const pd_mat_t *w;
    float *y; /* (n_rows, w->n_out) */
} pd_mm_out_t;

typedef void (*pd_mm_epilogue_fn)(void *ctx, int i_out, uint32_t o_begin, uint32_t o_end);

#define PD_MM_MAX_OUTS 4

void pd_matmul_multi(pd_pool_t *pool, const pd_mm_out_t *outs, int n_outs, bool lockstep,
                     const float *x, uint32_t n_rows, void *scratch, uint32_t skinny_max,
                     pd_mm_epilogue_fn epi, void *epi_ctx);

/* pd_matmul_multi's contract on the integer prefill kernel (all products
 * pd_kern_qg_takes, one type and n_in): x is quantized (pd_kern_prepare_x)
 * and laid out once, then units of output rows go to the pool's tasks;
 * the epilogue runs after each unit. scratch: pd_kern_qg_scratch_bytes. */
void pd_kern_qg_multi(pd_pool_t *pool, const pd_mm_out_t *outs, int n_outs, bool lockstep,
                      const float *x, uint32_t n_rows, void *scratch, pd_mm_epilogue_fn epi,
                      void *epi_ctx);

/* ====== Small vector kernels ====== */
/* out[i] = x[i] / rms(x) * g[i]; rms = sqrt(mean(x^2) + eps). out may be x. */
void pd_kern_rmsnorm(float *out, const float *x, const float *g, uint32_t n, float eps);
/* In place softmax of x[0..n). */
void pd_kern_softmax(float *x, uint32_t n);
/* gate[i] = silu(gate[i]) * up[i] */
void pd_kern_swiglu(float *gate, const float *up, uint32_t n);
/* gate[i] = gelu(gate[i]) * up[i], gelu's tanh approximation through ggml's
 * fp16 table (kernels_act.c). */
void pd_kern_geglu(float *gate, const float *up, uint32_t n);
void pd_kern_geglu_ref(float *gate, const float *up, uint32_t n);
/* x[i] = tanh(x[i] / cap) * cap, as ggml's scale, tanh, scale (cap > 0). */
void pd_kern_softcap(float *x, uint32_t n, float cap);
float pd_kern_dot_f32(const float *a, const float *b, uint32_t n);
/* y[i] += a * x[i] */
void pd_kern_axpy_f32(float *y, float a, const float *x, uint32_t n);
/* dst[i] = x[i] as IEEE half, rounded to nearest even (pd_fp32_to_fp16;
 * the F16C version gives the same bits): a row into an F16 KV cache. */
void pd_kern_fp32_to_fp16(uint16_t *dst, const float *x, uint32_t n);

/* ====== Attention over the paged KV cache ======
 *
 * n_q queries that share one K/V head (the grouped-query heads of a token,
 * the tokens of one sequence in a prefill chunk, or both) each attend to
 * positions [first_i, n_pos[i]) of their sequence, first_i = 0 or, with a
 * sliding window, max(0, n_pos[i] - window):
 *     out[i] = sum_p softmax_p(cap(scale * q[i] . k_p)) v_p
 * cap(s) = s, or softcap * tanh(s / softcap) as ggml computes it (Gemma 2).
 * k_blk[j] / v_blk[j] point at the K / V row of position j * block_size in
 * this head (the cache's block j of the sequence, offset by the head);
 * rows of a block are row_stride floats apart. Every block up to the
 * largest n_pos must be given. q[i] and out[i] hold head_dim floats;
 * n_pos[i] <= max_pos. Blocks wholly before every query's window are not
 * read (their pointers may be stale).
 *
 * The AVX2 version streams each K block once for all n_q queries (scores
 * 4 positions at a time), takes each query's softmax, then streams each V
 * block once (P V for up to 4 queries x 64 dimensions at a time), with
 * software prefetch of the blocks ahead (their rows are a whole KV row
 * apart). Each query's arithmetic is the engine's earlier per-position
 * loop, operation for operation (pd_kern_dot_f32_avx2's summation,
 * pd_kern_softmax_avx2, one FMA per position): an online softmax was tried
 * and moved the F16 referee's worst position over its 1e-3 bound. A
 * query's result never depends on the other queries of the call (masked
 * positions add exact zeros), so a token's attention is bit-identical
 * alone, in a decode batch or in a prefill chunk.
 *
 * F16 K/V (is_f16: k_blk/v_blk point at uint16_t halves, row_stride in
 * halves): as ggml's attention over an F16 cache (flash attention off),
 * each query is rounded to F16 before Q.K (ggml converts it to the cache's
 * type) and the softmax probabilities are rounded to F16 before P.V (ggml
 * converts them for its F16 V product); K and V rows are widened to fp32 on
 * load (F16C, exact) and every sum is the F32 path's, in the same order. So
 * the F16 call differs from the F32 call on the widened cache with the
 * rounded query only by the rounding of the probabilities (at most 2^-11 of
 * max |v|), and stays batch-invariant. A window and a soft-cap apply as
 * with F32 (the cap on the scores, before the softmax; positions outside
 * the window weigh an exact zero). Rounding them halves the distance to
 * llama.cpp's F16-cache probabilities (tests/oracle, tolerances.json's
 * kv_types: worst 7e-5 rounded against 5e-4 not, on the F32 test models).
 * scratch: pd_kern_attn_scratch_floats(s, n_q) floats. */
#define PD_ATTN_MAX_HEAD_DIM 256
#define PD_ATTN_MAX_BLOCK 256 /* positions per KV block */

typedef struct {
    uint32_t head_dim;
    uint32_t block_size;  /* positions per KV block */
    uint32_t row_stride;  /* floats between consecutive positions in a block */
    float scale;          /* usually 1 / sqrt(head_dim) */
    uint32_t max_pos;     /* the largest n_pos of a call (sizes the scratch) */
    bool is_f16;          /* K/V rows are IEEE halves (uint16_t), else floats */
    uint32_t window;      /* 0, or the positions a query sees (itself included) */
    float softcap;        /* 0, or the cap of the scores */
} pd_attn_shape_t;

bool pd_kern_attn_supported(const pd_attn_shape_t *s);
/* The first position a query with n_pos positions sees (the window's). */
uint32_t pd_kern_attn_first(const pd_attn_shape_t *s, uint32_t n_pos);
size_t pd_kern_attn_scratch_floats(const pd_attn_shape_t *s, uint32_t n_q);
/* Floats of scratch per query (its scores row). */
size_t pd_kern_attn_row_floats(const pd_attn_shape_t *s);
void pd_kern_attn(const pd_attn_shape_t *s, const void *const *k_blk, const void *const *v_blk,
                  uint32_t n_q, const float *const *q, const uint32_t *n_pos, float *const *out,
                  float *scratch);
/* Plain C, in double, three passes per query (also the fallback without
 * AVX2 or when head_dim % 8 != 0). Needs no scratch (NULL is fine). */
void pd_kern_attn_ref(const pd_attn_shape_t *s, const void *const *k_blk,
                      const void *const *v_blk, uint32_t n_q, const float *const *q,
                      const uint32_t *n_pos, float *const *out, float *scratch);
/* Needs pd_kern_has_avx2() and head_dim % 8 == 0. */
void pd_kern_attn_avx2(const pd_attn_shape_t *s, const void *const *k_blk,
                       const void *const *v_blk, uint32_t n_q, const float *const *q,
                       const uint32_t *n_pos, float *const *out, float *scratch);
/* AVX-512, head_dim % 16 == 0: the AVX2 kernel's bits (kernels_attn_avx512.c). */
void pd_kern_attn_avx512(const pd_attn_shape_t *s, const void *const *k_blk,
                         const void *const *v_blk, uint32_t n_q, const float *const *q,
                         const uint32_t *n_pos, float *const *out, float *scratch);

/* n_h adjacent KV heads of one tile in one call, block by block for all
 * of them: a position's rows of adjacent heads are adjacent in the cache,
 * so the call streams each block's K (then V) rows as one run where
 * pd_kern_attn per head strides over them (decode with one query per KV
 * head waits on memory, not on arithmetic). k_blk / v_blk point at the
 * first head's rows; head h's are h * head_dim elements further. q, out:
 * (n_h * n_q) pointers, head h's n_q queries at [h * n_q, (h + 1) * n_q);
 * n_pos: (n_q), the same for every head. Every head's outputs are the bits
 * pd_kern_attn gives it alone when pd_kern_attn_heads_supported (the same
 * AVX2 kernel: the same sums in the same order). scratch:
 * pd_kern_attn_scratch_floats(s, n_h * n_q) floats. */
void pd_kern_attn_heads(const pd_attn_shape_t *s, uint32_t n_h, const void *const *k_blk,
                        const void *const *v_blk, uint32_t n_q, const float *const *q,
                        const uint32_t *n_pos, float *const *out, float *scratch);
/* True when pd_kern_attn would run n_q queries per head on the AVX2 kernel
 * (AVX2, head_dim % 8 == 0, and not the AVX-512 kernel's n_q >= 4), so
 * pd_kern_attn_heads gives its bits. */
bool pd_kern_attn_heads_supported(const pd_attn_shape_t *s, uint32_t n_q);

/* True when the AVX2/FMA/F16C paths are in use. */
bool pd_kern_has_avx2(void);

/* The kernel set in use: the best the CPU has (checked once), capped by
 * the environment variable PD_ISA=ref|avx2|avx512. The skinny matmul's
 * float results depend on it in the last bits (8- or 16-lane sums), so
 * batch invariance holds between workers with the same kernel set: set
 * PD_ISA=avx2 on every worker of a cluster that mixes machines. The
 * quantized kernels give the same bits with avx2 and avx512 (VNNI). */
typedef enum { PD_ISA_REF = 0, PD_ISA_AVX2 = 1, PD_ISA_AVX512 = 2 } pd_isa_t;
pd_isa_t pd_kern_isa(void);
const char *pd_kern_isa_name(void);

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
/* Needs pd_kern_isa() == PD_ISA_AVX512: 16-lane float kernels, VNNI for
 * Q8_0/Q4_0 (bit-identical to the AVX2 quantized kernel). */
void pd_kern_skinny_avx512(const pd_mat_t *w, uint32_t o_begin, uint32_t o_end, const float *x,
                           uint32_t x_stride, const void *xq, uint32_t n_rows, float *y,
                           uint32_t y_stride);
/* F32 weights, decode batches (kernels_f32_avx512.c): the same bits as
 * pd_kern_skinny_avx512; pd_kern_skinny takes it for 2 rows or more. Up
 * to PD_F32_SMALL_MAX_ROWS rows it is blocked for 2..8 rows at a time
 * (the weights streamed), above for whole-K 4 x 6 micro-kernel calls on
 * panels of 16 adjacent outputs (compute-bound). */
#define PD_F32_SMALL_MAX_ROWS 16
void pd_kern_skinny_f32_avx512(const pd_mat_t *w, uint32_t o_begin, uint32_t o_end,
                               const float *x, uint32_t x_stride, uint32_t n_rows, float *y,
                               uint32_t y_stride);
/* Its Q8_0 / Q4_0 part (kernels_q_avx512.c): xq as pd_kern_prepare_x wrote it. */
void pd_kern_skinny_q_avx512(const pd_mat_t *w, uint32_t o_begin, uint32_t o_end, const void *xq,
                             uint32_t n_rows, float *y, uint32_t y_stride);
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
void pd_kern_fp32_to_fp16_ref(uint16_t *dst, const float *x, uint32_t n);
void pd_kern_fp32_to_fp16_avx2(uint16_t *dst, const float *x, uint32_t n);

/* Rows of output handled per matmul task are a multiple of this. */
#define PD_MATMUL_CHUNK_ROWS 16
/* Output rows dequantized per sgemm call when the weights are not F32. */
#define PD_MATMUL_DEQ_TILE_ROWS 512
/* Suggested skinny_max for pd_matmul on AVX2 machines (measured with
 * pd-kbench: up to this many rows the skinny kernel beats sgemm). */
#define PD_SKINNY_DEFAULT_MAX 64
/* Cap on the skinny path for quantized weights (the crossover measured
 * with dequantize + sgemm, 32 rows at 4096 x 4096; beyond it Q8_0 / Q4_0
 * take the integer prefill kernel, pd_kern_qg_takes, and other types the
 * dequantizing path). */
#define PD_SKINNY_QUANT_MAX 32

#endif
