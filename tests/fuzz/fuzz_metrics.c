/* fuzz_metrics.c -- libFuzzer target for the /metrics reader of pd-plan
 * --router (client/plan_live.h: pd_obs_parse_metrics, then the quantile and
 * SLO-fraction arithmetic on what it read). The router's text is untrusted:
 * any bytes must give a parse or a clean PD_EINVAL, never a crash, an
 * overflow or an unbounded loop; what parses must give finite quantiles.
 * fuzz-sources: client/plan_live.c client/httpc.c client/pdclient.c
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "plan_live.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    pd_obs_metrics_t m;
    pd_err_t err = { 0 };
    if (pd_obs_parse_metrics((const char *)data, size, &m, &err) != 0)
        return 0;
    for (int h = 0; h < 2; h++) {
        const pd_obs_hist_t *x = h ? &m.tpot : &m.ttft;
        if (x->n > PD_OBS_MAX_BUCKETS)
            abort();
        for (uint32_t i = 1; i < x->n; i++)
            if (!(x->le[i - 1] < x->le[i]))
                abort(); /* bounds kept sorted and distinct */
        double q = pd_obs_quantile(x, 0.9), f = pd_obs_fraction_le(x, 0.05);
        if (isnan(q) || isnan(f))
            abort();
    }
    return 0;
}
