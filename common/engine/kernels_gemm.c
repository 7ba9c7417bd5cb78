/* kernels_gemm.c -- the tiled F32 product's reference, packings and
 * driver (kernels_gemm.h); the micro-kernel is kernels_gemm_avx512.c. */
#include "engine/kernels_gemm.h"

#include <math.h>
#include <string.h>

#define GEMM_ALIGN 64
#define LANES 16

static size_t align_up(size_t v, size_t a)
{
    return (v + a - 1) / a * a;
}

bool pd_gemm_f32_takes(const pd_mat_t *w, uint32_t n_rows)
{
    return pd_kern_isa() == PD_ISA_AVX512 && w->type == PD_GGML_TYPE_F32 && w->n_in > 0 &&
           w->n_in % LANES == 0 && n_rows >= PD_GEMM_MIN_ROWS;
}

size_t pd_gemm_f32_scratch_bytes(uint32_t n_in, uint32_t n_rows)
{
    const size_t xp = align_up((size_t)n_rows * n_in * sizeof(float), GEMM_ALIGN);
    const size_t wp = align_up((size_t)PD_GEMM_NO * n_in * sizeof(float), GEMM_ALIGN);
    return xp + PD_GEMM_MAX_TASKS * wp;
}

bool pd_gemm_deq_takes(const pd_mat_t *w, uint32_t n_rows)
{
    return pd_kern_isa() == PD_ISA_AVX512 && w->type != PD_GGML_TYPE_F32 && w->n_in > 0 &&
           w->n_in % LANES == 0 && n_rows >= PD_GEMM_MIN_ROWS;
}

/* pd_gemm_f32_scratch_bytes, then a dequantized-rows buffer per task. */
size_t pd_gemm_deq_scratch_bytes(uint32_t n_in, uint32_t n_rows)
{
    const size_t wp = align_up((size_t)PD_GEMM_NO * n_in * sizeof(float), GEMM_ALIGN);
    return pd_gemm_f32_scratch_bytes(n_in, n_rows) + PD_GEMM_MAX_TASKS * wp;
}

/* ====== Packing ====== */

void pd_gemm_f32_pack_w(const pd_mat_t *w, uint32_t o0, float *wp)
{
    const uint32_t M = w->n_in / LANES;
    const uint32_t n_o = w->n_out - o0 < PD_GEMM_NO ? w->n_out - o0 : PD_GEMM_NO;
    if (n_o < PD_GEMM_NO)
        memset(wp, 0, sizeof(float) * PD_GEMM_NO * w->n_in);
    for (uint32_t o = 0; o < n_o; o++) {
        const float *row = (const float *)(const void *)((const uint8_t *)w->data +
                                                          (size_t)(o0 + o) * w->row_bytes);
        for (uint32_t m = 0; m < M; m++)
            for (uint32_t j = 0; j < LANES; j++)
                wp[((size_t)j * M + m) * PD_GEMM_NO + o] = row[m * LANES + j];
    }
}

void pd_gemm_f32_pack_x(const float *x, uint32_t x_stride, uint32_t n_in, uint32_t r0,
                        uint32_t nr, float *xp)
{
    const uint32_t M = n_in / LANES;
    float *t = xp + (size_t)r0 * n_in;
    for (uint32_t r = 0; r < nr; r++) {
        const float *row = x + (size_t)(r0 + r) * x_stride;
        for (uint32_t m = 0; m < M; m++)
            for (uint32_t j = 0; j < LANES; j++)
                t[((size_t)j * M + m) * nr + r] = row[m * LANES + j];
    }
}

/* ====== Reference ====== */

void pd_gemm_f32_ref(const pd_mat_t *w, uint32_t o_begin, uint32_t o_end, const float *x,
                     uint32_t x_stride, uint32_t n_rows, float *y, uint32_t y_stride)
{
    for (uint32_t o = o_begin; o < o_end; o++) {
        const float *row = (const float *)(const void *)((const uint8_t *)w->data +
                                                          (size_t)o * w->row_bytes);
        for (uint32_t r = 0; r < n_rows; r++) {
            const float *xr = x + (size_t)r * x_stride;
            const uint32_t n16 = w->n_in & ~(uint32_t)(LANES - 1);
            float l[LANES] = {0};
            for (uint32_t k = 0; k < n16; k += LANES)
                for (uint32_t j = 0; j < LANES; j++)
                    l[j] = fmaf(row[k + j], xr[k + j], l[j]);
            float t8[8], t4[4], t2[2];
            for (int j = 0; j < 8; j++)
                t8[j] = l[j] + l[j + 8];
            for (int j = 0; j < 4; j++)
                t4[j] = t8[j] + t8[j + 4];
            for (int j = 0; j < 2; j++)
                t2[j] = t4[j] + t4[j + 2];
            float s = t2[0] + t2[1];
            for (uint32_t k = n16; k < w->n_in; k++)
                s += row[k] * xr[k];
            y[(size_t)r * y_stride + o] = s;
        }
    }
}

/* ====== The fusable epilogue, plain ====== */

void pd_gemm_fuse_epi(void *ctx, int i_out, uint32_t o_begin, uint32_t o_end)
{
    const pd_gemm_fuse_t *f = ctx;
    (void)i_out;
    for (uint32_t r = 0; r < f->n_rows; r++) {
        float *a = f->a + (size_t)r * f->stride + o_begin;
        const float *b = f->b + (size_t)r * f->stride + o_begin;
        if (f->op == PD_GEMM_FUSE_ADD)
            pd_kern_axpy_f32(a, 1.0f, b, o_end - o_begin);
        else
            pd_kern_swiglu(a, b, o_end - o_begin);
    }
}

/* ====== Driver ====== */

/* A product's units go to the tasks through a pd_split_t (pool.h): a
 * contiguous range per thread, taken front to back while the next unit's
 * weights are prefetched (a panel whose weights were not prefetched waits
 * on memory for every load of its packing), and units taken from the back
 * of another range once a task's own is done. Before, 4 x n_threads static
 * tasks each started on a cold panel: with 3 units per task (llama-110M's
 * 768-row products) a third of the panels. Every unit is computed the same
 * way whichever task takes it, so the split changes no bit. */
#define NO_UNIT PD_SPLIT_NONE

typedef struct {
    const pd_mm_out_t *outs;
    int n_outs;
    bool lockstep;
    const float *x;
    uint32_t n_in, n_rows;
    float *xp;                          /* packed x, all rows */
    float *wp;                          /* PD_GEMM_MAX_TASKS panels */
    size_t wp_floats;                   /* floats per panel buffer */
    float *deq;                         /* non-F32 weights: PD_GEMM_MAX_TASKS row buffers */
    uint32_t first_unit[PD_MM_MAX_OUTS + 1]; /* unit where each product starts */
    uint32_t n_units;
    pd_mm_epilogue_fn epi;
    void *epi_ctx;
    const pd_gemm_fuse_t *fuse;         /* epi fused into the last product's stores, or NULL */
    bool tile_lockstep;                 /* lockstep_unit: n_outs panel buffers per task */
    pd_split_t split;                   /* the units [0, n_units) over the tasks */
} gemm_ctx_t;

static void pack_x_task(void *arg, int i, int n)
{
    const gemm_ctx_t *c = arg;
    const uint32_t n_tiles = (c->n_rows + PD_GEMM_NR - 1) / PD_GEMM_NR;
    for (uint32_t t = (uint32_t)i; t < n_tiles; t += (uint32_t)n) {
        const uint32_t r0 = t * PD_GEMM_NR;
        const uint32_t nr = c->n_rows - r0 < PD_GEMM_NR ? c->n_rows - r0 : PD_GEMM_NR;
        pd_gemm_f32_pack_x_avx512(c->x, c->n_in, c->n_in, r0, nr, c->xp);
    }
}

/* Packs the panel of w from output row o0 into wp; weights of another
 * type are dequantized first, row by row, into the task's buffer deq. */
static void pack_panel(const gemm_ctx_t *c, const pd_mat_t *w, uint32_t o0, float *wp, int i_task)
{
    if (w->type == PD_GGML_TYPE_F32) {
        pd_gemm_f32_pack_w_avx512(w, o0, wp);
        return;
    }
    float *rows = c->deq + (size_t)i_task * c->wp_floats;
    const uint32_t n_o = w->n_out - o0 < PD_GEMM_NO ? w->n_out - o0 : PD_GEMM_NO;
    for (uint32_t o = 0; o < n_o; o++)
        pd_dequant_row(w->type, (const uint8_t *)w->data + (size_t)(o0 + o) * w->row_bytes,
                       rows + (size_t)o * w->n_in, w->n_in);
    const pd_mat_t f = {rows, PD_GGML_TYPE_F32, n_o, w->n_in, (uint64_t)w->n_in * sizeof(float)};
    pd_gemm_f32_pack_w_avx512(&f, 0, wp);
}

/* The product of unit u (the one it falls in; 0 with lockstep). */
static int unit_product(const gemm_ctx_t *c, uint32_t u)
{
    return pd_mm_unit_product(c->first_unit, c->lockstep, u);
}

/* What this task packs after product j of unit u: the next product of the
 * unit in lockstep, else unit u_next (NO_UNIT: nothing). */
static pd_gemm_next_t next_pack(const gemm_ctx_t *c, uint32_t u, uint32_t u_next, int j)
{
    if (c->lockstep && j + 1 < c->n_outs)
        return (pd_gemm_next_t){c->outs[j + 1].w, (u - c->first_unit[0]) * PD_GEMM_NO};
    if (u_next == NO_UNIT)
        return (pd_gemm_next_t){NULL, 0};
    const int i = unit_product(c, u_next);
    return (pd_gemm_next_t){c->outs[i].w, (u_next - c->first_unit[i]) * PD_GEMM_NO};
}

/* Lockstep unit u with one panel buffer per product (wp: n_outs of them):
 * the unit's panels packed together, then row tile by row tile through all
 * of them (pd_gemm_f32_panels_avx512), unit u_next's weights prefetched
 * meanwhile. */
static void lockstep_unit(const gemm_ctx_t *c, int i_task, uint32_t u, uint32_t u_next)
{
    const uint32_t o0 = u * PD_GEMM_NO, n_out = c->outs[0].w->n_out;
    const uint32_t n_o = n_out - o0 < PD_GEMM_NO ? n_out - o0 : PD_GEMM_NO;
    pd_gemm_panel_t p[PD_MM_MAX_OUTS];
    pd_gemm_next_t next[PD_MM_MAX_OUTS];
    const pd_gemm_panel_fuse_t f = {c->fuse ? c->fuse->op : PD_GEMM_FUSE_ADD,
                                    c->fuse ? c->fuse->a + o0 : NULL,
                                    c->fuse ? c->fuse->stride : 0};
    for (int j = 0; j < c->n_outs; j++) {
        float *wj = c->wp + ((size_t)i_task * (size_t)c->n_outs + (size_t)j) * c->wp_floats;
        pack_panel(c, c->outs[j].w, o0, wj, i_task);
        p[j] = (pd_gemm_panel_t){wj, c->outs[j].y + o0, n_out,
                                 c->fuse && j == c->n_outs - 1 ? &f : NULL};
        next[j] = (pd_gemm_next_t){u_next != NO_UNIT ? c->outs[j].w : NULL, u_next * PD_GEMM_NO};
    }
    pd_gemm_f32_panels_avx512(p, c->n_outs, c->xp, c->n_in, c->n_rows, n_o, next,
                              u_next != NO_UNIT ? c->n_outs : 0);
    if (c->epi && c->fuse == NULL)
        c->epi(c->epi_ctx, -1, o0, o0 + n_o);
}

/* Unit u: with lockstep, those PD_GEMM_NO output rows of every product,
 * one panel after the other through the task's one buffer; else of the
 * product it falls in. */
static void one_unit(const gemm_ctx_t *c, int i_task, uint32_t u, uint32_t u_next)
{
    if (c->tile_lockstep) {
        lockstep_unit(c, i_task, u, u_next);
        return;
    }
    float *wp = c->wp + (size_t)i_task * c->wp_floats;
    const int i = unit_product(c, u);
    const uint32_t o0 = (u - c->first_unit[i]) * PD_GEMM_NO;
    const uint32_t n_out = c->outs[i].w->n_out;
    const uint32_t n_o = n_out - o0 < PD_GEMM_NO ? n_out - o0 : PD_GEMM_NO;
    const int j_end = c->lockstep ? c->n_outs : i + 1;
    for (int j = i; j < j_end; j++) {
        pack_panel(c, c->outs[j].w, o0, wp, i_task);
        const pd_gemm_next_t next = next_pack(c, u, u_next, j);
        const pd_gemm_panel_fuse_t f = {c->fuse ? c->fuse->op : PD_GEMM_FUSE_ADD,
                                        c->fuse ? c->fuse->a + o0 : NULL,
                                        c->fuse ? c->fuse->stride : 0};
        pd_gemm_f32_panel_avx512(wp, c->xp, c->n_in, c->n_rows, n_o, c->outs[j].y + o0,
                                 c->outs[j].w->n_out, c->fuse && j == c->n_outs - 1 ? &f : NULL,
                                 &next);
    }
    if (c->epi && c->fuse == NULL)
        c->epi(c->epi_ctx, c->lockstep ? -1 : i, o0, o0 + n_o);
}

static void gemm_task(void *arg, int i_task, int n_tasks)
{
    gemm_ctx_t *c = arg;
    (void)n_tasks;
    uint32_t after;
    for (uint32_t u = pd_split_next(&c->split, i_task, &after); u != NO_UNIT;
         u = pd_split_next(&c->split, i_task, &after))
        one_unit(c, i_task, u, after);
}

/* The epilogue when the micro-kernel can apply it as it stores the last
 * product (see pd_gemm_fuse_epi), else NULL. */
static const pd_gemm_fuse_t *fusable(const gemm_ctx_t *c)
{
    if (c->epi != pd_gemm_fuse_epi || (!c->lockstep && c->n_outs != 1))
        return NULL;
    const pd_gemm_fuse_t *f = c->epi_ctx;
    const pd_mm_out_t *last = &c->outs[c->n_outs - 1];
    const bool ok = f->b == last->y && f->stride == last->w->n_out && f->n_rows == c->n_rows &&
                    (f->op == PD_GEMM_FUSE_ADD || last->w->n_out % 8 == 0);
    return ok ? f : NULL;
}

void pd_gemm_f32_multi(pd_pool_t *pool, const pd_mm_out_t *outs, int n_outs, bool lockstep,
                       const float *x, uint32_t n_rows, void *scratch, pd_mm_epilogue_fn epi,
                       void *epi_ctx)
{
    const uint32_t n_in = outs[0].w->n_in;
    gemm_ctx_t c = {.outs = outs, .n_outs = n_outs, .lockstep = lockstep, .x = x, .n_in = n_in,
                    .n_rows = n_rows, .epi = epi, .epi_ctx = epi_ctx};
    c.xp = scratch;
    c.wp = (float *)(void *)((uint8_t *)scratch +
                             align_up((size_t)n_rows * n_in * sizeof(float), GEMM_ALIGN));
    c.wp_floats = align_up((size_t)PD_GEMM_NO * n_in * sizeof(float), GEMM_ALIGN) / sizeof(float);
    c.deq = c.wp + PD_GEMM_MAX_TASKS * c.wp_floats;
    pd_mm_units_init(c.first_unit, outs, n_outs, lockstep, PD_GEMM_NO);
    c.n_units = c.first_unit[n_outs];
    c.fuse = fusable(&c);
    const int n_threads = pd_pool_n_threads(pool);
    const uint32_t n_tiles = (n_rows + PD_GEMM_NR - 1) / PD_GEMM_NR;
    pd_pool_run(n_threads > 1 ? pool : NULL, pack_x_task, &c,
                n_threads < (int)n_tiles ? n_threads : (int)n_tiles);
    /* a range per thread, and as many tasks again that only take units
     * from the others' ranges (pd_split_t) */
    pd_split_init(&c.split, c.n_units,
                  n_threads < PD_GEMM_MAX_TASKS / 2 ? (uint32_t)n_threads : PD_GEMM_MAX_TASKS / 2);
    const uint32_t n_tasks = c.n_units == 0 ? 0 : c.split.n_ranges > 1 ? 2 * c.split.n_ranges : 1;
    /* lockstep products tile by tile when every task gets a panel buffer
     * per product (the scratch has PD_GEMM_MAX_TASKS) */
    if (lockstep && n_outs > 1 && n_tasks * (uint32_t)n_outs <= PD_GEMM_MAX_TASKS)
        c.tile_lockstep = true;
    if (n_tasks > 0)
        pd_pool_run(n_tasks > 1 ? pool : NULL, gemm_task, &c, (int)n_tasks);
}
