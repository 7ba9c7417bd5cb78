/* test_plan_live.c -- pd-plan --router's reading of the router's /metrics
 * (client/plan_live.h): the series it uses, hostile text refused or bounded,
 * quantiles and SLO fractions from histogram buckets. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "plan_live.h"

static const char *METRICS =
    "# HELP pdserve:request_success_total Requests finished, by finish reason.\n"
    "# TYPE pdserve:request_success_total counter\n"
    "pdserve:request_success_total{model_name=\"m\",finished_reason=\"length\"} 30\n"
    "pdserve:request_success_total{model_name=\"m\",finished_reason=\"stop\"} 10\n"
    "pdserve:request_failure_total{model_name=\"m\",code=\"UNAVAILABLE\"} 2\n"
    "pdserve:prompt_tokens_total{model_name=\"m\"} 4000\n"
    "pdserve:generation_tokens_total{model_name=\"m\"} 640\n"
    "pdserve:time_to_first_token_seconds_bucket{model_name=\"m\",le=\"0.01\"} 10\n"
    "pdserve:time_to_first_token_seconds_bucket{model_name=\"m\",le=\"0.1\"} 30\n"
    "pdserve:time_to_first_token_seconds_bucket{model_name=\"m\",le=\"+Inf\"} 40\n"
    "pdserve:time_per_output_token_seconds_bucket{model_name=\"m\",le=\"0.005\"} 40\n"
    "pdserve:time_per_output_token_seconds_bucket{model_name=\"m\",le=\"+Inf\"} 40\n"
    "pdserve:workers{model_name=\"m\",role=\"decode\",state=\"ready\"} 2\n"
    "pdserve:kv_cache_usage_perc{model_name=\"m\",worker=\"a}b\",role=\"decode\"} 0.5\n";

static void test_parse(void **state)
{
    (void)state;
    pd_obs_metrics_t m;
    pd_err_t err = { 0 };
    assert_int_equal(pd_obs_parse_metrics(METRICS, strlen(METRICS), &m, &err), 0);
    assert_true(m.done == 40 && m.failed == 2);
    assert_true(m.prompt_tokens == 4000 && m.output_tokens == 640);
    assert_int_equal(m.ttft.n, 3);
    assert_true(m.ttft.le[0] == 0.01 && m.ttft.le[1] == 0.1 && isinf(m.ttft.le[2]));
    assert_true(m.ttft.count[1] == 30 && m.ttft.count[2] == 40);
    assert_int_equal(m.tpot.n, 2);
}

static void test_quantiles(void **state)
{
    (void)state;
    pd_obs_metrics_t m;
    pd_err_t err = { 0 };
    assert_int_equal(pd_obs_parse_metrics(METRICS, strlen(METRICS), &m, &err), 0);
    /* 10 of 40 under 10 ms, 30 under 100 ms: the median (20th) is halfway
     * through the second bucket, 55 ms. */
    assert_true(fabs(pd_obs_quantile(&m.ttft, 0.5) - 0.055) < 1e-9);
    /* p90 (36th) is in the +Inf bucket: the last finite bound. */
    assert_true(pd_obs_quantile(&m.ttft, 0.9) == 0.1);
    assert_true(fabs(pd_obs_fraction_le(&m.ttft, 0.01) - 0.25) < 1e-9);
    assert_true(fabs(pd_obs_fraction_le(&m.ttft, 0.055) - 0.5) < 1e-9);
    assert_true(fabs(pd_obs_fraction_le(&m.ttft, 5.0) - 0.75) < 1e-9); /* beyond: what is known */
    pd_obs_hist_t empty = { 0 };
    assert_true(pd_obs_quantile(&empty, 0.9) == -1 && pd_obs_fraction_le(&empty, 1) == -1);
}

static void expect_bad(const char *text)
{
    pd_obs_metrics_t m;
    pd_err_t err = { 0 };
    if (pd_obs_parse_metrics(text, strlen(text), &m, &err) != PD_EINVAL)
        fail_msg("accepted: %s", text);
    assert_non_null(strstr(err.msg, "/metrics line"));
}

static void test_hostile(void **state)
{
    (void)state;
    expect_bad("pdserve:request_success_total{model_name=\"m\"}\n");          /* no value */
    expect_bad("pdserve:request_success_total 1e999\n");                       /* not finite */
    expect_bad("pdserve:request_success_total -3\n");                          /* negative */
    expect_bad("pdserve:request_success_total 12abc\n");
    expect_bad("pdserve:request_success_total{model_name=\"m\" 3\n");          /* unclosed */
    expect_bad("pdserve:time_to_first_token_seconds_bucket{model_name=\"m\"} 3\n"); /* no le */
    expect_bad("pdserve:time_to_first_token_seconds_bucket{le=\"x\"} 3\n");
    expect_bad("{le=\"1\"} 3\n");                                               /* no name */
    char num[200];
    memset(num, '1', sizeof num);
    num[sizeof num - 1] = '\0';
    char line[300];
    snprintf(line, sizeof line, "pdserve:prompt_tokens_total %s\n", num);
    expect_bad(line); /* a number longer than any real one */
    /* Unknown series, however odd, are skipped; so is a long name. */
    char big[400];
    memset(big, 'x', 300);
    snprintf(big + 300, 100, " 1\nfoo{a=\"}\\\"\"} 2\n");
    pd_obs_metrics_t m;
    pd_err_t err = { 0 };
    assert_int_equal(pd_obs_parse_metrics(big, strlen(big), &m, &err), 0);
    /* More buckets than PD_OBS_MAX_BUCKETS: the extra ones are ignored. */
    char many[8192];
    size_t n = 0;
    for (int i = 1; i <= 60; i++)
        n += (size_t)snprintf(many + n, sizeof many - n,
                              "pdserve:time_per_output_token_seconds_bucket{le=\"%d\"} %d\n", i, i);
    assert_int_equal(pd_obs_parse_metrics(many, n, &m, &err), 0);
    assert_int_equal(m.tpot.n, PD_OBS_MAX_BUCKETS);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_quantiles),
        cmocka_unit_test(test_hostile),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
