/* wkrole.c -- the messages every role sends through its port. See wkrole.h. */
#include "runtime/wkrole.h"

#include <stdarg.h>
#include <stdio.h>

#include "base/log.h"

void pd_wkport_error(const pd_wkport_t *p, uint64_t req, Pd__ErrorCode code, const char *fmt, ...)
{
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    PD_WARN("event=request_error req=%llu code=%d msg=\"%s\"", (unsigned long long)req, (int)code,
            text);
    Pd__Error e = PD__ERROR__INIT;
    e.has_request_id = req != 0;
    e.request_id = req;
    e.has_code = true;
    e.code = code;
    e.message = text;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_ERROR;
    m.error = &e;
    p->send(p->host, &m);
}

void pd_wkport_preempted(const pd_wkport_t *p, uint64_t req, uint32_t epoch,
                         uint32_t n_generated, const char *why)
{
    Pd__Preempted pr = PD__PREEMPTED__INIT;
    pr.has_request_id = pr.has_epoch = pr.has_n_generated = true;
    pr.request_id = req;
    pr.epoch = epoch;
    pr.n_generated = n_generated;
    pr.reason = (char *)why;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_PREEMPTED;
    m.preempted = &pr;
    p->send(p->host, &m);
}

void pd_wkport_tokens(const pd_wkport_t *p, const pd_token_entry_t *t, uint32_t n)
{
    if (n == 0)
        return;
    Pd__TokenEntry ents[n];
    Pd__TokenEntry *eps[n];
    for (uint32_t i = 0; i < n; i++) {
        pd_codec_token_to_pb(&t[i], &ents[i]);
        eps[i] = &ents[i];
    }
    Pd__TokenBatch tb = PD__TOKEN_BATCH__INIT;
    tb.n_entries = n;
    tb.entries = eps;
    Pd__Msg m = PD__MSG__INIT;
    m.body_case = PD__MSG__BODY_TOKENS;
    m.tokens = &tb;
    p->send(p->host, &m);
}
