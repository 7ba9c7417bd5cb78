/* wkrole.c -- the messages every role sends through its port. See wkrole.h. */
#include "runtime/wkrole.h"

#include <stdarg.h>
#include <stdio.h>

#include "base/clock.h"
#include "base/log.h"
#include "runtime/net.h"

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

/* ====== Running roles ====== */

uint32_t pd_wkrole_run(pd_wkengine_t *e, pd_wkrole_t r)
{
    pd_wkstep_t st = { 0, 0, 0, e->max_fwd_tokens };
    uint32_t n = r.ops->fill(r.self, &st);
    if (n == 0)
        return 0;
    pd_err_t err = { 0 };
    uint64_t t0 = pd_now_us();
    pd_forward_hooks_t hooks = { r.ops->on_layer, r.self };
    int rc = pd_wkengine_forward_hooked(e, &st, r.ops->on_layer ? &hooks : NULL, &err);
    r.ops->done(r.self, rc == 0 ? NULL : err.msg, pd_now_us() - t0);
    return n;
}

uint32_t pd_wkrole_run_mixed(pd_wkengine_t *e, pd_wkrole_t first, pd_wkrole_t then,
                             uint32_t budget, uint32_t *n_then)
{
    pd_wkstep_t st = { 0, 0, 0, e->max_fwd_tokens };
    uint32_t n1 = first.ops->fill(first.self, &st);
    uint32_t room = budget > n1 + budget / 4 ? budget : n1 + budget / 4;
    st.max_rows = room < e->max_fwd_tokens ? room : e->max_fwd_tokens;
    uint32_t n2 = st.n_rows < st.max_rows ? then.ops->fill(then.self, &st) : 0;
    *n_then = n2;
    if (n1 + n2 == 0)
        return 0;
    pd_err_t err = { 0 };
    uint64_t t0 = pd_now_us();
    int rc = pd_wkengine_forward(e, &st, &err);
    uint64_t us = pd_now_us() - t0;
    const char *fail = rc == 0 ? NULL : err.msg;
    uint64_t us1 = us * n1 / (n1 + n2);
    if (n1)
        first.ops->done(first.self, fail, us1);
    if (n2)
        then.ops->done(then.self, fail, us - us1);
    return n1 + n2;
}
