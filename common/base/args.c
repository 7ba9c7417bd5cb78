/* args.c -- see args.h */
#include "base/args.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

int pd_arg_double(const char *prog, const char *opt, const char *s, double lo, double hi,
                  double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v) || v < lo || v > hi) {
        fprintf(stderr, "%s: %s: '%s' is not a number in [%g, %g]\n", prog, opt, s, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

int pd_arg_u32(const char *prog, const char *opt, const char *s, uint32_t lo, uint32_t hi,
               uint32_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-' || v < lo || v > hi) {
        fprintf(stderr, "%s: %s: '%s' is not an integer in [%u, %u]\n", prog, opt, s, lo, hi);
        return -1;
    }
    *out = (uint32_t)v;
    return 0;
}

int pd_arg_u64(const char *prog, const char *opt, const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-') {
        fprintf(stderr, "%s: %s: '%s' is not an unsigned integer\n", prog, opt, s);
        return -1;
    }
    *out = (uint64_t)v;
    return 0;
}
