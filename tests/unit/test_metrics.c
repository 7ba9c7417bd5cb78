/* test_metrics.c -- router/metrics.c: counters by finish reason, cumulative
 * histogram buckets, cluster gauges from a ClusterStatus, label escaping.
 *
 * The router's modules are not in a library: the module is compiled into
 * this test directly. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "../../router/metrics.c"

static void expect_line(const char *text, const char *line)
{
    char want[512];
    snprintf(want, sizeof want, "\n%s\n", line);
    if (strstr(text, want) == NULL)
        fail_msg("missing line: %s", line);
}

static void test_requests(void **state)
{
    (void)state;
    pd_err_t err = { 0 };
    pd_metrics_t *m = pd_metrics_new("tiny \"model\"", &err);
    assert_non_null(m);
    /* 10 tokens in 1.0 s, first after 0.1 s: TPOT 0.1 s. */
    pd_metrics_request_done(m, PD__FINISH_REASON__FINISH_LENGTH, 5, 10, 2000, 100000, 1000000);
    pd_metrics_request_done(m, PD__FINISH_REASON__FINISH_EOS, 3, 1, 0, 30000, 30000);
    pd_metrics_request_done(m, PD__FINISH_REASON__FINISH_STOP, 3, 2, 0, 30000, 50000);
    pd_metrics_request_done(m, PD__FINISH_REASON__FINISH_CANCELLED, 4, 0, 0, 0, 70000);
    pd_metrics_request_failed(m, PD__ERROR_CODE__DEADLINE_EXCEEDED);
    pd_metrics_preempted(m);
    char *t = pd_metrics_render(m, NULL);
    assert_non_null(t);
    const char *L = "model_name=\"tiny _model_\"";
    char line[256];
#define EXPECT(...)                                   \
    do {                                              \
        snprintf(line, sizeof line, __VA_ARGS__);     \
        expect_line(t, line);                         \
    } while (0)
    EXPECT("pdserve:prompt_tokens_total{%s} 15", L);
    EXPECT("pdserve:generation_tokens_total{%s} 13", L);
    EXPECT("pdserve:request_success_total{%s,finished_reason=\"stop\"} 2", L);
    EXPECT("pdserve:request_success_total{%s,finished_reason=\"length\"} 1", L);
    EXPECT("pdserve:request_success_total{%s,finished_reason=\"abort\"} 1", L);
    EXPECT("pdserve:request_failure_total{%s,code=\"deadline_exceeded\"} 1", L);
    EXPECT("pdserve:num_preemptions_total{%s} 1", L);
    /* TTFT: three requests with a token (0.1, 0.03, 0.03 s); cumulative. */
    EXPECT("pdserve:time_to_first_token_seconds_bucket{%s,le=\"0.02\"} 0", L);
    EXPECT("pdserve:time_to_first_token_seconds_bucket{%s,le=\"0.04\"} 2", L);
    EXPECT("pdserve:time_to_first_token_seconds_bucket{%s,le=\"0.1\"} 3", L);
    EXPECT("pdserve:time_to_first_token_seconds_bucket{%s,le=\"+Inf\"} 3", L);
    EXPECT("pdserve:time_to_first_token_seconds_count{%s} 3", L);
    EXPECT("pdserve:time_to_first_token_seconds_sum{%s} 0.160000", L);
    /* TPOT only for requests with more than one token: 0.1 and 0.02 s. */
    EXPECT("pdserve:time_per_output_token_seconds_bucket{%s,le=\"0.025\"} 1", L);
    EXPECT("pdserve:time_per_output_token_seconds_count{%s} 2", L);
    EXPECT("pdserve:e2e_request_latency_seconds_count{%s} 4", L);
    EXPECT("# TYPE pdserve:e2e_request_latency_seconds histogram");
    /* Without a ClusterStatus there are no cluster gauges. */
    assert_null(strstr(t, "num_requests_running"));
    free(t);
    pd_metrics_free(m);
    pd_metrics_free(NULL);
    pd_metrics_request_done(NULL, 1, 1, 1, 1, 1, 1); /* no-ops */
    pd_metrics_preempted(NULL);
}

static void test_cluster(void **state)
{
    (void)state;
    pd_err_t err = { 0 };
    pd_metrics_t *m = pd_metrics_new("m", &err);
    Pd__WorkerCounters c1 = PD__WORKER_COUNTERS__INIT, c2 = PD__WORKER_COUNTERS__INIT;
    c1.kv_sent_bytes = 1000;
    c1.kv_transfers = 2;
    c1.kv_transfer_us = 3000;
    Pd__WorkerStatus w1 = PD__WORKER_STATUS__INIT, w2 = PD__WORKER_STATUS__INIT;
    w1.worker_id = "p\"1";
    w1.role = PD__ROLE__ROLE_PREFILL;
    w1.state = "ready";
    w1.total_blocks = 100;
    w1.free_blocks = 100;
    w1.counters = &c1;
    w2.worker_id = "d1";
    w2.role = PD__ROLE__ROLE_DECODE;
    w2.state = "draining";
    w2.total_blocks = 200;
    w2.free_blocks = 150;
    w2.counters = &c2;
    Pd__WorkerStatus *ws[] = { &w1, &w2 };
    Pd__ClusterStatus cs = PD__CLUSTER_STATUS__INIT;
    cs.n_workers = 2;
    cs.workers = ws;
    cs.active_requests = 7;
    cs.queued_requests = 3;
    cs.prefix_index_hashes = 42;
    char *t = pd_metrics_render(m, &cs);
    assert_non_null(t);
    expect_line(t, "pdserve:num_requests_running{model_name=\"m\"} 4");
    expect_line(t, "pdserve:num_requests_waiting{model_name=\"m\"} 3");
    expect_line(t, "pdserve:kv_cache_usage_perc{model_name=\"m\",worker=\"p_1\",role=\"prefill\"} "
                   "0.000000");
    expect_line(t, "pdserve:kv_cache_usage_perc{model_name=\"m\",worker=\"d1\",role=\"decode\"} "
                   "0.250000");
    expect_line(t, "pdserve:kv_transfer_bytes_total{model_name=\"m\"} 1000");
    expect_line(t, "pdserve:kv_transfer_seconds_count{model_name=\"m\"} 2");
    expect_line(t, "pdserve:kv_transfer_seconds_sum{model_name=\"m\"} 0.003000");
    expect_line(t, "pdserve:prefix_index_hashes{model_name=\"m\"} 42");
    expect_line(t, "pdserve:workers{model_name=\"m\",role=\"prefill\",state=\"ready\"} 1");
    expect_line(t, "pdserve:workers{model_name=\"m\",role=\"decode\",state=\"ready\"} 0");
    expect_line(t, "pdserve:workers{model_name=\"m\",role=\"decode\",state=\"draining\"} 1");
    free(t);
    pd_metrics_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_requests),
        cmocka_unit_test(test_cluster),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
