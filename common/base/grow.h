/* grow.h -- one growth rule for every dynamic array.
 *
 *   if (pd_grow((void **)&a->v, &a->cap, a->n + 1, sizeof *a->v, 64) != 0)
 *       return PD_ENOMEM;
 *
 * Makes *p hold at least need elements of elem bytes: capacity doubles from
 * min_cap; every product is checked for overflow. On failure *p and *cap
 * are unchanged and PD_ENOMEM is returned.
 */
#ifndef PD_GROW_H
#define PD_GROW_H

#include <stdint.h>
#include <stdlib.h>

#include "base/err.h"
#include "base/fault.h"

static inline int pd_grow(void **p, size_t *cap, size_t need, size_t elem, size_t min_cap)
{
    if (need <= *cap)
        return 0;
    size_t c = *cap ? *cap : (min_cap ? min_cap : 1);
    while (c < need) {
        if (c > SIZE_MAX / 2)
            return PD_ENOMEM;
        c *= 2;
    }
    if (elem != 0 && c > SIZE_MAX / elem)
        return PD_ENOMEM;
    void *q = pd_realloc(*p, c * elem);
    if (q == NULL)
        return PD_ENOMEM;
    *p = q;
    *cap = c;
    return 0;
}

#endif
