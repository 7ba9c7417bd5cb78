/* kernels_matmul.c -- pd_matmul and pd_matmul_multi: which kernel a product
 * takes (skinny, batched qt, tiled F32, or dequantize + sgemm), its scratch,
 * and how it is split over the pool's threads. The kernels themselves are in
 * kernels.c (C references and dispatch) and the per-ISA files.
 */
#include "engine/kernels.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>

#include "engine/kernels_gemm.h"
#include "engine/quants_k.h"

#define QK 32 /* elements per Q block */

/* ====== Matmul with dispatch ====== */

#define SCRATCH_ALIGN 64

static size_t align_up(size_t v, size_t a)
{
    return (v + a - 1) / a * a;
}

static uint32_t div_up(uint32_t a, uint32_t b)
{
    return (a + b - 1) / b;
}

static uint32_t deq_tile_rows(const pd_mat_t *w)
{
    return w->n_out < PD_MATMUL_DEQ_TILE_ROWS ? w->n_out : PD_MATMUL_DEQ_TILE_ROWS;
}

/* ====== Batched quantized product: the rows it takes ====== */

static bool has_qt(pd_ggml_type_t t)
{
    return t == PD_GGML_TYPE_Q8_0 || t == PD_GGML_TYPE_Q4_0;
}

uint32_t pd_kern_qt_rows(pd_ggml_type_t wtype, uint32_t n_rows)
{
    if (pd_kern_isa() != PD_ISA_AVX512 || !has_qt(wtype))
        return 0;
    const uint32_t rem = n_rows % PD_QT_LANES;
    return n_rows - (rem < PD_QT_MIN_ROWS ? rem : 0);
}

size_t pd_kern_qt_bytes(uint32_t n_in, uint32_t n_rows)
{
    return (size_t)div_up(n_rows, PD_QT_LANES) * (n_in / QK) * PD_QT_BLK_BYTES;
}

/* The rows of a prepared product that the qt kernel takes (0 or more), its
 * rearranged activations built after xq in the scratch. */
static uint32_t prepare_qt(const pd_mat_t *w, const void *xq, uint32_t n_rows, void *scratch,
                           const void **qt)
{
    const uint32_t n_qt = pd_kern_qt_rows(w->type, n_rows);
    *qt = NULL;
    if (n_qt == 0)
        return 0;
    uint8_t *panel = (uint8_t *)scratch +
                     align_up(pd_kern_xq_bytes(w->type, w->n_in, n_rows), SCRATCH_ALIGN);
    pd_kern_qt_prepare_avx512(w->type, xq, w->n_in, n_qt, panel);
    *qt = panel;
    return n_qt;
}

/* The activations of a skinny product, as its kernels read them. */
typedef struct {
    const float *x;     /* (n_rows, x_stride) */
    uint32_t x_stride;
    const void *xq;     /* (n_rows, Q8_0 row) or NULL */
    const void *qt;     /* the qt kernel's copy of the first n_qt rows, or NULL */
    uint32_t n_qt;
    uint32_t n_rows;
} skinny_in_t;

/* Output rows [o0, o1) of all n_rows: the first n_qt by the qt kernel,
 * the rest by the skinny kernel. */
static void skinny_rows(const pd_mat_t *w, uint32_t o0, uint32_t o1, const skinny_in_t *in, float *y,
                        uint32_t y_stride)
{
    if (in->n_qt > 0)
        pd_kern_skinny_qt_avx512(w, o0, o1, in->qt, in->n_qt, y, y_stride);
    if (in->n_rows == in->n_qt)
        return;
    const size_t xq_rb = in->xq ? pd_kern_xq_bytes(w->type, w->n_in, 1) : 0;
    pd_kern_skinny(w, o0, o1, in->x + (size_t)in->n_qt * in->x_stride, in->x_stride,
                   in->xq ? (const uint8_t *)in->xq + in->n_qt * xq_rb : NULL, in->n_rows - in->n_qt,
                   y + (size_t)in->n_qt * y_stride, y_stride);
}

/* Activation rows whose byte stride is a multiple of 4 KB map to the same
 * L1 sets; the skinny kernel reads 4 of them at once next to weight rows
 * that often have the same property, so such x is copied with this many
 * floats of padding per row (measured: +15% at 4096 x 4096, 32 rows). */
#define X_PAD_FLOATS 16
#define X_PAD_MIN_ROWS 3

static bool wants_x_pad(const pd_mat_t *w, uint32_t n_rows)
{
    return !pd_kern_is_quant(w->type) && n_rows >= X_PAD_MIN_ROWS && n_rows <= PD_SKINNY_MAX_ROWS &&
           ((size_t)w->n_in * sizeof(float)) % 4096 == 0;
}

/* Fills in with x (n_rows, w->n_in) as the skinny kernels read it: quantized
 * into scratch (and the qt kernel's copy after it) for quantized weights,
 * copied with padding when wants_x_pad, else x itself. */
static void prepare_x(const pd_mat_t *w, const float *x, uint32_t n_rows, void *scratch,
                      skinny_in_t *in)
{
    *in = (skinny_in_t){.x = x, .x_stride = w->n_in, .n_rows = n_rows};
    if (pd_kern_is_quant(w->type)) {
        pd_kern_prepare_x(w->type, x, w->n_in, w->n_in, n_rows, scratch);
        in->xq = scratch;
        in->n_qt = prepare_qt(w, scratch, n_rows, scratch, &in->qt);
    } else if (wants_x_pad(w, n_rows)) {
        float *xp = scratch; /* (n_rows, n_in + X_PAD_FLOATS) */
        in->x_stride = w->n_in + X_PAD_FLOATS;
        for (uint32_t r = 0; r < n_rows; r++)
            memcpy(xp + (size_t)r * in->x_stride, x + (size_t)r * w->n_in,
                   (size_t)w->n_in * sizeof(float));
        in->x = xp;
    }
}

/* Covers every call with at most n_rows rows (callers size the scratch
 * once, for their largest batch): the skinny path's xq or padded x for up
 * to PD_SKINNY_MAX_ROWS rows, and the dequantized tile of the sgemm path. */
size_t pd_matmul_scratch_bytes(const pd_mat_t *w, uint32_t n_rows)
{
    const uint32_t skinny_rows = n_rows < PD_SKINNY_MAX_ROWS ? n_rows : PD_SKINNY_MAX_ROWS;
    size_t xq = pd_kern_xq_bytes(w->type, w->n_in, skinny_rows);
    if (has_qt(w->type)) /* the qt kernel's rearranged copy after it */
        xq = align_up(xq, SCRATCH_ALIGN) + pd_kern_qt_bytes(w->n_in, skinny_rows);
    if (wants_x_pad(w, skinny_rows))
        xq = (size_t)skinny_rows * (w->n_in + X_PAD_FLOATS) * sizeof(float);
    size_t tile = 0;
    if (w->type != PD_GGML_TYPE_F32 && n_rows > 0)
        tile = (size_t)deq_tile_rows(w) * w->n_in * sizeof(float);
    if (pd_gemm_f32_takes(w, n_rows)) /* the tiled kernel's packed x and panels */
        tile = pd_gemm_f32_scratch_bytes(w->n_in, n_rows);
    if (pd_gemm_deq_takes(w, n_rows) && pd_gemm_deq_scratch_bytes(w->n_in, n_rows) > tile)
        tile = pd_gemm_deq_scratch_bytes(w->n_in, n_rows); /* and its dequantized rows */
    if (pd_kern_qg_takes(w, n_rows) && pd_kern_qg_scratch_bytes(w->n_in, n_rows) > tile)
        tile = pd_kern_qg_scratch_bytes(w->n_in, n_rows); /* the integer prefill kernel */
    return align_up(xq > tile ? xq : tile, SCRATCH_ALIGN);
}

typedef struct {
    const pd_mat_t *w;
    skinny_in_t in;
    float *y;           /* (n_rows, n_out) */
    float *tile;        /* (tile_rows, n_in) dequantized weights */
    uint32_t chunk;     /* output rows per task */
    uint32_t o_begin;   /* first row of the current tile */
    uint32_t o_end;
} matmul_ctx_t;

static void skinny_task(void *arg, int i_task, int n_tasks)
{
    const matmul_ctx_t *c = arg;
    uint32_t o0 = (uint32_t)i_task * c->chunk;
    uint32_t o1 = o0 + c->chunk < c->w->n_out ? o0 + c->chunk : c->w->n_out;
    (void)n_tasks;
    skinny_rows(c->w, o0, o1, &c->in, c->y, c->w->n_out);
}

static void dequant_task(void *arg, int i_task, int n_tasks)
{
    const matmul_ctx_t *c = arg;
    const pd_mat_t *w = c->w;
    uint32_t o0 = c->o_begin + (uint32_t)i_task * c->chunk;
    uint32_t o1 = o0 + c->chunk < c->o_end ? o0 + c->chunk : c->o_end;
    (void)n_tasks;
    for (uint32_t o = o0; o < o1; o++)
        pd_dequant_row(w->type, (const uint8_t *)w->data + (size_t)o * w->row_bytes,
                       c->tile + (size_t)(o - c->o_begin) * w->n_in, w->n_in);
}

/* Output rows per task: a multiple of PD_MATMUL_CHUNK_ROWS giving about
 * PD_MATMUL_TASKS_PER_THREAD tasks per thread (dynamic scheduling evens out
 * threads that get descheduled). */
#define PD_MATMUL_TASKS_PER_THREAD 4

static uint32_t task_chunk(uint32_t n_out, int n_threads)
{
    uint32_t n_tasks = n_threads > 1 ? (uint32_t)n_threads * PD_MATMUL_TASKS_PER_THREAD : 1;
    uint32_t chunk = div_up(n_out, n_tasks);
    return div_up(chunk, PD_MATMUL_CHUNK_ROWS) * PD_MATMUL_CHUNK_ROWS;
}

bool pd_matmul_uses_skinny(const pd_mat_t *w, uint32_t n_rows, uint32_t skinny_max)
{
    if (pd_kern_is_quant(w->type) && skinny_max > PD_SKINNY_QUANT_MAX)
        skinny_max = PD_SKINNY_QUANT_MAX;
    /* the tiled F32 kernel gives the skinny kernel's bits at any row count */
    return n_rows <= skinny_max && (n_rows <= PD_SKINNY_MAX_ROWS || pd_gemm_f32_takes(w, n_rows));
}

void pd_matmul(pd_pool_t *pool, const pd_mat_t *w, const float *x, uint32_t n_rows, float *y,
               void *scratch, uint32_t skinny_max)
{
    if (n_rows == 0 || w->n_out == 0)
        return;
    const int n_threads = pd_pool_n_threads(pool);
    matmul_ctx_t c = {.w = w, .y = y};
    if (pd_matmul_uses_skinny(w, n_rows, skinny_max) && pd_gemm_f32_takes(w, n_rows)) {
        const pd_mm_out_t o = {w, y};
        pd_gemm_f32_multi(pool, &o, 1, false, x, n_rows, scratch, NULL, NULL);
        return;
    }
    if (pd_matmul_uses_skinny(w, n_rows, skinny_max)) {
        prepare_x(w, x, n_rows, scratch, &c.in);
        c.chunk = task_chunk(w->n_out, n_threads);
        pd_pool_run(pool, skinny_task, &c, (int)div_up(w->n_out, c.chunk));
        return;
    }
    if (pd_kern_qg_takes(w, n_rows)) { /* Q8_0 / Q4_0: the integer prefill kernel */
        const pd_mm_out_t o = {w, y};
        pd_kern_qg_multi(pool, &o, 1, false, x, n_rows, scratch, NULL, NULL);
        return;
    }
    const int n_in = (int)w->n_in;
    if (w->type == PD_GGML_TYPE_F32) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n_rows, (int)w->n_out, n_in,
                    1.0f, x, n_in, w->data, n_in, 0.0f, y, (int)w->n_out);
        return;
    }
    if (pd_gemm_deq_takes(w, n_rows)) { /* panels dequantized into L2, the tiled kernel */
        const pd_mm_out_t o = {w, y};
        pd_gemm_f32_multi(pool, &o, 1, false, x, n_rows, scratch, NULL, NULL);
        return;
    }
    /* Other types: dequantize a tile of output rows (spread over the pool),
     * then one sgemm writes those columns of y. */
    const uint32_t tile_rows = deq_tile_rows(w);
    c.tile = scratch;
    for (uint32_t t0 = 0; t0 < w->n_out; t0 += tile_rows) {
        uint32_t t1 = t0 + tile_rows < w->n_out ? t0 + tile_rows : w->n_out;
        c.o_begin = t0;
        c.o_end = t1;
        c.chunk = task_chunk(t1 - t0, n_threads);
        pd_pool_run(pool, dequant_task, &c, (int)div_up(t1 - t0, c.chunk));
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n_rows, (int)(t1 - t0), n_in,
                    1.0f, x, n_in, c.tile, n_in, 0.0f, y + t0, (int)w->n_out);
    }
}

/* ====== Several products of one input ====== */

typedef struct {
    const pd_mm_out_t *outs;
    int n_outs;
    bool lockstep;
    skinny_in_t in;
    uint32_t chunk;                     /* output rows per task */
    uint32_t first_task[PD_MM_MAX_OUTS + 1]; /* task index where each product starts */
    pd_mm_epilogue_fn epi;
    void *epi_ctx;
} multi_ctx_t;

static void multi_task(void *arg, int i_task, int n_tasks)
{
    const multi_ctx_t *c = arg;
    (void)n_tasks;
    int i = 0;
    uint32_t t = (uint32_t)i_task;
    if (!c->lockstep)
        while (t >= c->first_task[i + 1])
            i++;
    const pd_mat_t *w = c->outs[i].w;
    const uint32_t o0 = (t - c->first_task[i]) * c->chunk;
    const uint32_t o1 = o0 + c->chunk < w->n_out ? o0 + c->chunk : w->n_out;
    for (int j = i; j < (c->lockstep ? c->n_outs : i + 1); j++)
        skinny_rows(c->outs[j].w, o0, o1, &c->in, c->outs[j].y, c->outs[j].w->n_out);
    if (c->epi)
        c->epi(c->epi_ctx, c->lockstep ? -1 : i, o0, o1);
}

typedef struct {
    pd_mm_epilogue_fn epi;
    void *ctx;
    int i;
    uint32_t n, chunk;
} epi_ctx_t;

static void epi_task(void *arg, int i_task, int n_tasks)
{
    const epi_ctx_t *c = arg;
    (void)n_tasks;
    uint32_t o0 = (uint32_t)i_task * c->chunk, o1 = o0 + c->chunk < c->n ? o0 + c->chunk : c->n;
    c->epi(c->ctx, c->i, o0, o1);
}

void pd_matmul_multi(pd_pool_t *pool, const pd_mm_out_t *outs, int n_outs, bool lockstep,
                     const float *x, uint32_t n_rows, void *scratch, uint32_t skinny_max,
                     pd_mm_epilogue_fn epi, void *epi_ctx)
{
    if (n_rows == 0 || n_outs <= 0)
        return;
    bool any_empty = false; /* a product without rows: one at a time, skipping it */
    for (int i = 0; i < n_outs; i++)
        any_empty = any_empty || outs[i].w->n_out == 0;
    const pd_mat_t *w = outs[0].w;
    const int n_threads = pd_pool_n_threads(pool);
    bool deq = n_outs <= PD_MM_MAX_OUTS && !any_empty && !pd_matmul_uses_skinny(w, n_rows, skinny_max);
    bool qg = deq;
    for (int i = 0; (deq || qg) && i < n_outs; i++) { /* one type and n_in */
        const bool same = outs[i].w->type == w->type && outs[i].w->n_in == w->n_in;
        qg = qg && same && pd_kern_qg_takes(outs[i].w, n_rows);
        deq = deq && same && pd_gemm_deq_takes(outs[i].w, n_rows);
    }
    if (qg) { /* Q8_0 / Q4_0: the integer prefill kernel */
        pd_kern_qg_multi(pool, outs, n_outs, lockstep, x, n_rows, scratch, epi, epi_ctx);
        return;
    }
    if (deq) {
        pd_gemm_f32_multi(pool, outs, n_outs, lockstep, x, n_rows, scratch, epi, epi_ctx);
        return;
    }
    if (!pd_matmul_uses_skinny(w, n_rows, skinny_max) || n_outs > PD_MM_MAX_OUTS || any_empty) {
        for (int i = 0; i < n_outs; i++) {
            pd_matmul(pool, outs[i].w, x, n_rows, outs[i].y, scratch, skinny_max);
            if (epi && !lockstep && outs[i].w->n_out > 0) {
                epi_ctx_t ec = {epi, epi_ctx, i, outs[i].w->n_out, task_chunk(outs[i].w->n_out, n_threads)};
                pd_pool_run(pool, epi_task, &ec, (int)div_up(ec.n, ec.chunk));
            }
        }
        if (epi && lockstep && w->n_out > 0) {
            epi_ctx_t ec = {epi, epi_ctx, -1, w->n_out, task_chunk(w->n_out, n_threads)};
            pd_pool_run(pool, epi_task, &ec, (int)div_up(ec.n, ec.chunk));
        }
        return;
    }
    if (pd_gemm_f32_takes(w, n_rows)) { /* same n_in and type: all take it */
        pd_gemm_f32_multi(pool, outs, n_outs, lockstep, x, n_rows, scratch, epi, epi_ctx);
        return;
    }
    multi_ctx_t c = {.outs = outs, .n_outs = n_outs, .lockstep = lockstep, .epi = epi,
                     .epi_ctx = epi_ctx};
    prepare_x(w, x, n_rows, scratch, &c.in);
    /* one chunk size for all products, from their total rows */
    uint32_t total = 0;
    for (int i = 0; i < n_outs; i++)
        total += lockstep ? (i == 0 ? outs[i].w->n_out : 0) : outs[i].w->n_out;
    c.chunk = task_chunk(total, n_threads);
    c.first_task[0] = 0;
    for (int i = 0; i < n_outs; i++)
        c.first_task[i + 1] = c.first_task[i] +
                              (lockstep && i > 0 ? 0 : div_up(outs[i].w->n_out, c.chunk));
    pd_pool_run(pool, multi_task, &c, (int)c.first_task[n_outs]);
}

/* ====== Small vector kernels: reference ====== */

