/* err.h -- errors as values.
 *
 * A function that can fail returns int: 0 (PD_OK) or a negative PD_E* code,
 * and writes a one-line message naming what was wrong into the pd_err_t the
 * caller passes (which may be NULL when the caller does not care).
 */
#ifndef PD_ERR_H
#define PD_ERR_H

#include <stddef.h>

enum {
    PD_OK = 0,
    PD_EINVAL = -1,       /* bad argument or bad value from outside */
    PD_ENOMEM = -2,       /* allocation failed */
    PD_EIO = -3,          /* open/read/write/mmap failed */
    PD_EFORMAT = -4,      /* malformed file or message */
    PD_EUNSUPPORTED = -5, /* well-formed but not something we handle */
    PD_ERANGE = -6,       /* value or size out of range, buffer too small */
    PD_ESTATE = -7,       /* operation not valid in the current state */
    PD_EFULL = -8,        /* a bounded resource (queue, blocks) is full */
};

#define PD_ERR_MSG_MAX 512

typedef struct pd_err {
    int code;                  /* last PD_E* code, 0 if none */
    char msg[PD_ERR_MSG_MAX];  /* NUL-terminated, one line */
} pd_err_t;

/* Records code and a printf-style message in err (if err is not NULL) and
 * returns code, so callers can write `return pd_err_set(err, PD_EINVAL, ...)`. */
int pd_err_set(pd_err_t *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
#if defined(__clang_analyzer__) && !defined(PD_ERR_IMPL)
/* The static analyzer does not inline variadic functions, so it cannot see
 * that pd_err_set returns code and explores `return pd_err_set(...)` as a
 * possible success (0) with nothing initialised. Spell the contract out for
 * it; compilers never see this. */
#define pd_err_set(err, code, ...) (pd_err_set((err), (code), __VA_ARGS__), (code))
#endif

/* Prepends "prefix: " to the message already in err. Returns err->code
 * (or code if err is NULL). */
int pd_err_wrap(pd_err_t *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Short name of a code ("EINVAL"...). Never NULL. */
const char *pd_err_name(int code);

#endif
