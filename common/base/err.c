/* err.c -- see err.h */
#define PD_ERR_IMPL /* defines pd_err_set: no analyzer macro */
#include "base/err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int pd_err_set(pd_err_t *err, int code, const char *fmt, ...)
{
    if (err == NULL)
        return code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    err->code = code;
    return code;
}

int pd_err_wrap(pd_err_t *err, int code, const char *fmt, ...)
{
    if (err == NULL)
        return code;
    char prefix[PD_ERR_MSG_MAX];
    char old[PD_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof old);
    old[sizeof old - 1] = '\0';
    /* Truncation is acceptable here: the message stays one bounded line. */
    size_t n = strnlen(prefix, sizeof err->msg - 3);
    memcpy(err->msg, prefix, n);
    memcpy(err->msg + n, ": ", 2);
    size_t room = sizeof err->msg - n - 3;
    size_t m = strnlen(old, room);
    memcpy(err->msg + n + 2, old, m);
    err->msg[n + 2 + m] = '\0';
    if (err->code == 0)
        err->code = code;
    return err->code;
}

const char *pd_err_name(int code)
{
    switch (code) {
    case PD_OK: return "OK";
    case PD_EINVAL: return "EINVAL";
    case PD_ENOMEM: return "ENOMEM";
    case PD_EIO: return "EIO";
    case PD_EFORMAT: return "EFORMAT";
    case PD_EUNSUPPORTED: return "EUNSUPPORTED";
    case PD_ERANGE: return "ERANGE";
    case PD_ESTATE: return "ESTATE";
    case PD_EFULL: return "EFULL";
    default: return "EUNKNOWN";
    }
}
