/* kernels_pf.h -- the software prefetch of the skinny matmul kernels
 * (kernels_avx2.c and the quantized AVX-512 kernels; the AVX-512 float
 * kernels take far-apart rows instead, kernels_rows.h): include it after
 * defining PANEL (weight rows per panel) and PF_HINT. */
#ifndef PD_KERNELS_PF_H
#define PD_KERNELS_PF_H

#include <immintrin.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ====== Prefetch ======
 * While the micro-kernels work on one panel of weights, the next panel is
 * prefetched, a slice of its cache lines (in address order) before each
 * micro-kernel call, so that streaming the weights from memory overlaps
 * the arithmetic instead of adding to it. (Prefetching only the next
 * K-tile, or the next panel's same K-tile, measured slower.) */
typedef struct {
    const uint8_t *base; /* first byte of the tile's first row */
    size_t row_stride;   /* bytes between rows */
    size_t lines_per_row;
    size_t row, line;    /* next line to issue */
    size_t n_rows;
    size_t left;         /* lines not issued yet */
} pf_t;

static inline void pf_set(pf_t *p, const uint8_t *base, size_t row_stride, size_t seg_bytes,
                   uint32_t n_rows)
{
    p->base = base;
    p->row_stride = row_stride;
    p->lines_per_row = (seg_bytes + 63) / 64;
    p->row = p->line = 0;
    p->n_rows = n_rows;
    p->left = base ? p->lines_per_row * n_rows : 0;
}

static inline __attribute__((always_inline)) void pf_step(pf_t *p, size_t n_lines)
{
    n_lines = n_lines < p->left ? n_lines : p->left;
    p->left -= n_lines;
    while (n_lines--) {
        _mm_prefetch((const char *)p->base + p->row * p->row_stride + p->line * 64, PF_HINT);
        if (++p->line == p->lines_per_row) {
            p->line = 0;
            p->row++;
        }
    }
}

/* Sets up the prefetch of the panel after the one starting at row p0 (whole
 * rows, so the lines go out in address order), or nothing. */
static inline void pf_next_panel(pf_t *pf, const uint8_t *w, size_t rb, uint32_t p0, uint32_t o_end,
                          bool enable)
{
    if (enable && p0 + PANEL < o_end) {
        uint32_t p1 = p0 + PANEL;
        pf_set(pf, w + (size_t)p1 * rb, rb, rb, o_end - p1 < PANEL ? o_end - p1 : PANEL);
    } else {
        pf_set(pf, NULL, 0, 0, 0);
    }
}

/* At the start of K-tile k0 (of kt; k_all in total) of the panel at p0:
 * sets up the next panel's prefetch on the first tile, and returns how
 * many lines to issue per weight row handled by a micro-kernel call so
 * that the rest goes out evenly over the panel's remaining calls.
 * calls_per_tile counts weight rows x r-blocks (+1). */
static inline size_t pf_plan(pf_t *pf, bool enable, const uint8_t *w, size_t rb, uint32_t p0,
                      uint32_t o_end, size_t k0, size_t kt, size_t k_all, size_t calls_per_tile)
{
    const size_t tiles_left = (k_all - k0 + kt - 1) / kt;
    if (k0 == 0)
        pf_next_panel(pf, w, rb, p0, o_end, enable);
    return (pf->left + calls_per_tile * tiles_left - 1) / (calls_per_tile * tiles_left);
}

#endif
