/* fault.c -- allocation-failure injection. See fault.h. */
#include "base/fault.h"

#include <stdio.h>

#include "base/log.h"

_Thread_local bool pd_fault_active_;

static struct {
    pd_fault_site_t site;    /* PD_FAULT_NONE: off */
    bool sweep;              /* else: fail allocation `nth` of the first request */
    uint64_t nth;
    uint64_t k;              /* sweep: allocation to fail in the next new request,
                              * 0 during the warm-up request */
    uint64_t requests, injected;
    bool has_cur;
    uint64_t cur_key;        /* the request being counted */
    uint64_t cur_allocs;     /* its armed allocations so far */
    bool cur_injected;
} g;

static const char *site_name(pd_fault_site_t s)
{
    switch (s) {
    case PD_FAULT_ROUTER_REQUEST: return "router.request";
    case PD_FAULT_DECODE_ADMIT: return "decode.admit";
    default: return "none";
    }
}

static void disarm(void)
{
    g.site = PD_FAULT_NONE;
    g.has_cur = false;
    pd_fault_active_ = false;
}

int pd_fault_configure(const char *spec, pd_err_t *err)
{
    memset(&g, 0, sizeof g);
    pd_fault_active_ = false;
    if (spec == NULL || spec[0] == '\0')
        return 0;
    const char *colon = strchr(spec, ':');
    size_t n = colon ? (size_t)(colon - spec) : 0;
    pd_fault_site_t site = PD_FAULT_NONE;
    if (n == strlen("router.request") && strncmp(spec, "router.request", n) == 0)
        site = PD_FAULT_ROUTER_REQUEST;
    else if (n == strlen("decode.admit") && strncmp(spec, "decode.admit", n) == 0)
        site = PD_FAULT_DECODE_ADMIT;
    if (site == PD_FAULT_NONE)
        return pd_err_set(err, PD_EINVAL,
                          "%s=%.64s: expected SITE:sweep or SITE:N with SITE router.request or "
                          "decode.admit", PD_FAULT_ENV, spec);
    const char *mode = colon + 1;
    uint64_t nth = 0;
    bool is_num = mode[0] != '\0' && strspn(mode, "0123456789") == strlen(mode) &&
                  strlen(mode) <= 9;
    if (is_num)
        nth = strtoull(mode, NULL, 10);
    if (strcmp(mode, "sweep") == 0) {
        g.sweep = true;
    } else if (!is_num || nth == 0) {
        return pd_err_set(err, PD_EINVAL, "%s=%.64s: mode must be 'sweep' or a number >= 1",
                          PD_FAULT_ENV, spec);
    }
    g.site = site;
    g.nth = nth;
    g.k = 0;
    PD_WARN("event=fault_armed site=%s mode=%s (test hook %s: allocations on this path will "
            "fail)", site_name(site), mode, PD_FAULT_ENV);
    return 0;
}

int pd_fault_configure_env(pd_err_t *err) { return pd_fault_configure(getenv(PD_FAULT_ENV), err); }

bool pd_fault_armed(pd_fault_site_t site) { return site != PD_FAULT_NONE && g.site == site; }

void pd_fault_enter(pd_fault_site_t site, uint64_t key)
{
    if (!pd_fault_armed(site))
        return;
    if (!g.has_cur || g.cur_key != key) {
        g.has_cur = true;
        g.cur_key = key;
        g.cur_allocs = 0;
        g.cur_injected = false;
        g.requests++;
    }
    pd_fault_active_ = true;
}

void pd_fault_leave(void) { pd_fault_active_ = false; }

uint64_t pd_fault_current_key(pd_fault_site_t site)
{
    return pd_fault_armed(site) && pd_fault_active_ && g.has_cur ? g.cur_key : 0;
}

void pd_fault_complete(pd_fault_site_t site, uint64_t key)
{
    if (!pd_fault_armed(site) || !g.has_cur || g.cur_key != key)
        return;
    if (g.sweep && !g.cur_injected && g.k == 0) {
        PD_WARN("event=fault_warmup_done site=%s allocations=%llu", site_name(g.site),
                (unsigned long long)g.cur_allocs);
        g.k = 1;
        g.has_cur = false;
        return;
    }
    if (g.sweep && !g.cur_injected) {
        PD_WARN("event=fault_sweep_done site=%s requests=%llu injected=%llu allocations=%llu",
                site_name(g.site), (unsigned long long)g.requests,
                (unsigned long long)g.injected, (unsigned long long)g.cur_allocs);
        disarm();
        return;
    }
    g.has_cur = false; /* the same key entering again is a new request */
}

bool pd_fault_hit_(void)
{
    if (g.site == PD_FAULT_NONE || !g.has_cur)
        return false;
    g.cur_allocs++;
    uint64_t target = g.sweep ? g.k : g.nth;
    if (g.cur_injected || target == 0 || g.cur_allocs != target)
        return false;
    g.cur_injected = true;
    g.injected++;
    PD_WARN("event=fault_injected site=%s k=%llu n=%llu key=%llu", site_name(g.site),
            (unsigned long long)target, (unsigned long long)g.cur_allocs,
            (unsigned long long)g.cur_key);
    if (g.sweep)
        g.k++;
    else
        disarm(); /* one failure in all */
    return true;
}

void pd_fault_stats(pd_fault_stats_t *out)
{
    out->site = g.site;
    out->armed = g.site != PD_FAULT_NONE;
    out->requests = g.requests;
    out->injected = g.injected;
    out->k = g.k;
}
