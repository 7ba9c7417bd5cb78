/* kernels_rows.h -- which weight rows a skinny kernel's panel takes.
 *
 * A panel of R weight rows taken from consecutive rows (o, o+1, ...) reads
 * R short runs inside the same few pages at once, and one core's hardware
 * prefetchers do not follow that: a pure read of 8 such rows of 1-3 KB
 * (a Q4_0/Q8_0/F32 row of these models) streams at 76-88 % of the read
 * bandwidth that 8 far-apart sequential streams reach (/work/exp/bw3.c,
 * 2026-12-07: 11.2-12.8 GB/s against 14.5-14.8 at 1 thread; 22-26 against
 * 28-29 GB/s at 2 threads). Taking the panel's rows a stride apart
 * (o, o+G, o+2G, ...) turns them into R long sequential streams, one per
 * part of the range, which the prefetchers do follow.
 *
 * The map only moves rows between panels: each output row is computed by
 * the same operations, so the bits do not change.
 */
#ifndef PD_KERNELS_ROWS_H
#define PD_KERNELS_ROWS_H

#include <stdbool.h>
#include <stdint.h>

typedef struct {
    uint32_t begin;    /* first row of the range */
    uint32_t n_panels; /* full panels; rows from begin + n_panels * r on are the tail */
    uint32_t stride;   /* rows between a panel's rows (= n_panels) */
} pd_rowmap_t;

/* Rows [o_begin, o_end) in panels of r rows: panel p < n_panels takes rows
 * begin + p + k * stride, k < r. The tail, the last (o_end - o_begin) % r
 * rows, starts at pd_rowmap_tail() and is left to the caller. */
static inline pd_rowmap_t pd_rowmap(uint32_t o_begin, uint32_t o_end, uint32_t r)
{
    const uint32_t g = (o_end - o_begin) / r;
    return (pd_rowmap_t){o_begin, g, g};
}

static inline uint32_t pd_rowmap_row(const pd_rowmap_t *m, uint32_t p, uint32_t k)
{
    return m->begin + p + k * m->stride;
}

static inline uint32_t pd_rowmap_tail(const pd_rowmap_t *m, uint32_t r)
{
    return m->begin + m->n_panels * r;
}

/* A panel as the kernels walk it: n rows, the first `first`, `step` rows
 * apart. */
typedef struct {
    uint32_t first;
    uint32_t step;
    uint32_t n;
} pd_rowpanel_t;

/* Panel i of rows [m->begin, o_end) in panels of r: the full panels of the
 * map (i < n_panels), then the tail as one panel of consecutive rows.
 * False when there is no panel i. */
static inline bool pd_rowmap_panel(const pd_rowmap_t *m, uint32_t o_end, uint32_t r, uint32_t i,
                                   pd_rowpanel_t *p)
{
    if (i < m->n_panels) {
        *p = (pd_rowpanel_t){pd_rowmap_row(m, i, 0), m->stride, r};
        return true;
    }
    const uint32_t t = pd_rowmap_tail(m, r);
    if (i > m->n_panels || t >= o_end)
        return false;
    *p = (pd_rowpanel_t){t, 1, o_end - t};
    return true;
}

#ifdef __AVX512F__
#include <immintrin.h>
#include <stddef.h>

/* Stores staged outputs of cnt (<= 16) consecutive full panels of r rows
 * from panel p0 (stage[(row * r + k) * 16 + j]: activation row `row`, panel
 * slot k, panel p0 + j): for each (row, k), the outputs of rows
 * pd_rowmap_row(m, p0 + j, k), j < cnt, are adjacent in y, so they go as
 * one masked 16-float store instead of cnt scattered ones. */
static inline void pd_rowmap_flush16(const pd_rowmap_t *m, uint32_t r, uint32_t p0, uint32_t cnt,
                                     const float *stage, uint32_t n_rows, float *y,
                                     size_t y_stride)
{
    const __mmask16 mk = (__mmask16)((1u << cnt) - 1u);
    for (uint32_t row = 0; row < n_rows; row++)
        for (uint32_t k = 0; k < r; k++)
            _mm512_mask_storeu_ps(y + row * y_stride + pd_rowmap_row(m, p0, k), mk,
                                  _mm512_load_ps(stage + (row * r + k) * 16));
}
#endif

#endif
