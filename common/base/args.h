/* args.h -- strict number parsing for command-line flags.
 *
 * Each function parses the whole string (no trailing bytes, no sign on an
 * unsigned value, finite doubles), checks [lo, hi], and on failure prints
 * "PROG: OPT: 'S' is not a number in [lo, hi]" (or "an integer") to stderr
 * and returns -1; *out is left unchanged. Shared by every tool so that a bad
 * flag reads the same everywhere.
 */
#ifndef PD_ARGS_H
#define PD_ARGS_H

#include <stdint.h>

int pd_arg_double(const char *prog, const char *opt, const char *s, double lo, double hi,
                  double *out);
int pd_arg_u32(const char *prog, const char *opt, const char *s, uint32_t lo, uint32_t hi,
               uint32_t *out);
int pd_arg_u64(const char *prog, const char *opt, const char *s, uint64_t *out);

#endif
