/* kernels_gemm.h -- the tiled F32 product for many rows (prefill), bit for
 * bit the skinny kernel's.
 *
 * The AVX-512 skinny kernel (kernels_avx512.c) computes each y[r][o] as 16
 * float lanes, lane j accumulating W[o][k] * x[r][k] for k = j, j+16, ...
 * in order with one FMA each, then hsum16's fixed tree. That is an
 * inner-product form: every FMA needs a load of both operands, and at
 * prefill sizes it reaches about 75 % of sgemm. The 16 lane chains are
 * independent, so they can run in any order: this kernel computes, for
 * each lane j on its own, an outer product over k = j + 16 m (a vector of
 * 16 outputs times a broadcast activation, lanes j and j + 8 in one
 * pass, 4 x 7 accumulators: 16 loads per 28 FMAs, as sgemm does) and then
 * adds the 16 lane sums with the same tree. Every y[r][o] is the same
 * sequence of roundings as the skinny kernel's, so a token's outputs are
 * bit-identical in a 512-token prefill chunk (this kernel) and alone in a
 * decode step (the skinny kernel): batch invariance holds with prefill
 * near sgemm speed.
 *
 * Layouts (both packed per product into the matmul scratch):
 *   W panel: PD_GEMM_NO outputs from o0, wp[(j * M + m) * PD_GEMM_NO + o] =
 *            W[o0 + o][16 m + j], M = n_in / 16, zero past n_out;
 *   x:       tiles of PD_GEMM_NR rows; tile from row r0 with nr rows at
 *            xp + r0 * n_in, xp[(j * M + m) * nr + r] = x[r0 + r][16 m + j].
 * Only F32 weights with n_in % 16 == 0 on AVX-512 machines (where the
 * skinny kernel has these lanes); everything else keeps the skinny kernel.
 */
#ifndef PD_KERNELS_GEMM_H
#define PD_KERNELS_GEMM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/kernels.h"
#include "engine/pool.h"

#define PD_GEMM_NO 32         /* outputs per W panel (two vectors) */
#define PD_GEMM_NR 14         /* activation rows per tile */
#define PD_GEMM_MIN_ROWS 64   /* fewer rows: the skinny kernel (decode) */
#define PD_GEMM_MAX_TASKS 16  /* tasks of a product, each with its panel buffer */

/* True when pd_matmul / pd_matmul_multi hand an n_rows product with w to
 * this kernel (AVX-512 ISA, F32 weights, n_in % 16 == 0, n_rows >=
 * PD_GEMM_MIN_ROWS). */
bool pd_gemm_f32_takes(const pd_mat_t *w, uint32_t n_rows);
/* Scratch bytes for products of n_in with up to n_rows rows: the packed x
 * and PD_GEMM_MAX_TASKS panels (64-aligned parts). */
size_t pd_gemm_f32_scratch_bytes(uint32_t n_in, uint32_t n_rows);

/* The same micro-kernel for weights of any other type on the sgemm path
 * (many rows, no batch invariance asked): each task dequantizes the
 * PD_GEMM_NO rows of its next panel (pd_dequant_row, into its own buffer,
 * in L2) and packs them; x is packed once per call. It replaces
 * "dequantize a 512-row tile to L3, then sgemm", whose OpenBLAS copies of
 * the tile and of x (for every tile) cost more than the dequantization.
 * True for AVX-512, a type other than F32, n_in % 16 == 0 and n_rows >=
 * PD_GEMM_MIN_ROWS. pd_gemm_f32_multi takes such products (all of one type)
 * with pd_gemm_deq_scratch_bytes of scratch. */
bool pd_gemm_deq_takes(const pd_mat_t *w, uint32_t n_rows);
size_t pd_gemm_deq_scratch_bytes(uint32_t n_in, uint32_t n_rows);

/* The packings described above (plain C; the AVX-512 versions write the
 * same bytes with 16 x 16 transposes). */
void pd_gemm_f32_pack_w(const pd_mat_t *w, uint32_t o0, float *wp);
void pd_gemm_f32_pack_w_avx512(const pd_mat_t *w, uint32_t o0, float *wp);
void pd_gemm_f32_pack_x(const float *x, uint32_t x_stride, uint32_t n_in, uint32_t r0,
                        uint32_t nr, float *xp);
void pd_gemm_f32_pack_x_avx512(const float *x, uint32_t x_stride, uint32_t n_in, uint32_t r0,
                               uint32_t nr, float *xp); /* nr <= PD_GEMM_NR */
/* The panel packed after this one (w NULL: none): its weight rows are
 * prefetched into L2 while this one computes (the packing otherwise waits
 * on memory for every weight: each is read once per product). */
typedef struct {
    const pd_mat_t *w;
    uint32_t o0;
} pd_gemm_next_t;

/* An element-wise epilogue the tiled kernel can apply as it stores a
 * product's outputs (pd_gemm_fuse_epi is its plain form, for every other
 * path): over rows r < n_rows and the epilogue's columns o,
 *   ADD:    a[r][o] += b[r][o]               (pd_kern_axpy_f32 with 1)
 *   SWIGLU: a[r][o] = silu(a[r][o]) * b[r][o] (pd_kern_swiglu)
 * with a and b at `stride` floats per row. The fused form has the same
 * bits: the same operations on the same floats, lane by lane. */
typedef enum {
    PD_GEMM_FUSE_ADD,
    PD_GEMM_FUSE_SWIGLU,
} pd_gemm_fuse_op_t;

typedef struct {
    pd_gemm_fuse_op_t op;
    float *a;
    const float *b;
    uint32_t stride;
    uint32_t n_rows;
} pd_gemm_fuse_t;

/* A pd_mm_epilogue_fn with a pd_gemm_fuse_t as ctx. pd_gemm_f32_multi
 * fuses it into the stores of its last product when b is that product's y
 * (and, for SWIGLU, n_out % 8 == 0: pd_kern_swiglu's 8-wide steps from
 * every unit's first column then cover the unit with no scalar tail). */
void pd_gemm_fuse_epi(void *ctx, int i_out, uint32_t o_begin, uint32_t o_end);

/* The fused epilogue of one panel: a and its rows as pd_gemm_fuse_t's,
 * already offset to the panel's first column. */
typedef struct {
    pd_gemm_fuse_op_t op;
    float *a;
    uint32_t stride;
} pd_gemm_panel_fuse_t;

/* y[r * y_stride + o] for r < n_rows, o < n_o (<= PD_GEMM_NO) from a packed
 * panel and packed x (all n_rows rows, tiled from row 0), then the fused
 * epilogue (NULL: none) on the same outputs; next may be NULL. */
void pd_gemm_f32_panel_avx512(const float *wp, const float *xp, uint32_t n_in, uint32_t n_rows,
                              uint32_t n_o, float *y, uint32_t y_stride,
                              const pd_gemm_panel_fuse_t *fuse, const pd_gemm_next_t *next);

/* The same for n_p panels of one output unit (products in lockstep), tile
 * by tile: each row tile runs through every panel in turn, so that a fused
 * SwiGLU reads the gate outputs the panel before has just stored (in L1;
 * a whole panel apart they came back from L2 or further, the rows 8 KB
 * apart). next[0..n_next): the panels packed after these (same n_in, n_out
 * and o0), prefetched over the last tiles. */
typedef struct {
    const float *wp;
    float *y;
    uint32_t y_stride;
    const pd_gemm_panel_fuse_t *fuse;
} pd_gemm_panel_t;

void pd_gemm_f32_panels_avx512(const pd_gemm_panel_t *p, int n_p, const float *xp,
                               uint32_t n_in, uint32_t n_rows, uint32_t n_o,
                               const pd_gemm_next_t *next, int n_next);

/* The definition, in plain C: per (o, r), 16 float lanes, lane j =
 * fmaf(W[o][k], x[r][k], lane j) for k = j, j + 16, ... in order, then
 * ((l0+l8)+(l4+l12)) + ((l2+l10)+(l6+l14)) + the same from l1 (hsum16's
 * tree), then + W[o][k] * x[r][k] one by one for the scalar tail k >=
 * n_in & ~15 (the skinny kernels' tail; none when n_in % 16 == 0). */
void pd_gemm_f32_ref(const pd_mat_t *w, uint32_t o_begin, uint32_t o_end, const float *x,
                     uint32_t x_stride, uint32_t n_rows, float *y, uint32_t y_stride);

/* pd_matmul_multi's contract (kernels.h) on this kernel: y_i = x W_i^T for
 * the n_outs products (all pd_gemm_f32_takes, same n_in), the epilogue
 * after each unit of output rows. scratch: pd_gemm_f32_scratch_bytes. */
void pd_gemm_f32_multi(pd_pool_t *pool, const pd_mm_out_t *outs, int n_outs, bool lockstep,
                       const float *x, uint32_t n_rows, void *scratch, pd_mm_epilogue_fn epi,
                       void *epi_ctx);

/* Units of work over several products of one input (pd_gemm_f32_multi,
 * pd_kern_qg_multi): product i's output rows in units of `rows`, its
 * units numbered from first[i] (first[n_outs]: the total); in lockstep
 * every product shares the first's units (the same n_out). */
static inline void pd_mm_units_init(uint32_t *first, const pd_mm_out_t *outs, int n_outs,
                                    bool lockstep, uint32_t rows)
{
    first[0] = 0;
    for (int i = 0; i < n_outs; i++) {
        const uint32_t units = (outs[i].w->n_out + rows - 1) / rows;
        first[i + 1] = first[i] + (lockstep && i > 0 ? 0 : units);
    }
}

/* The product unit u falls in (0 in lockstep). */
static inline int pd_mm_unit_product(const uint32_t *first, bool lockstep, uint32_t u)
{
    int i = 0;
    if (!lockstep)
        while (u >= first[i + 1])
            i++;
    return i;
}

#endif
