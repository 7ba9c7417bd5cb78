/* test_mooncake.c -- the Mooncake trace reader (client/mooncake.h):
 *  - a good line gives its fields;
 *  - hostile lines are refused naming the field: not JSON, missing or
 *    negative fields, no ids, input_length that does not fit its ids;
 *  - a file whose timestamps go back is refused with the line number;
 *  - the repo's own trace (client/bench/traces/mooncake-small.jsonl) reads
 *    whole at block size 64 and its turns extend earlier prompts.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "mooncake.h"

static int parse(const char *s, uint32_t bs, pd_mooncake_req_t *r, char *msg)
{
    return pd_mooncake_parse_line(s, strlen(s), bs, r, msg, 256);
}

static void test_good_line(void **st)
{
    (void)st;
    pd_mooncake_req_t r;
    char msg[256] = "";
    assert_int_equal(parse("{\"timestamp\": 934, \"input_length\": 289, \"output_length\": 47, "
                           "\"hash_ids\": [0, 1, 2, 3, 20]}", 64, &r, msg), 0);
    assert_int_equal(r.at_ms, 934);
    assert_int_equal(r.input_length, 289);
    assert_int_equal(r.output_length, 47);
    assert_int_equal(r.n_ids, 5);
    assert_int_equal(r.hash_ids[4], 20);
    free(r.hash_ids);
}

static void test_hostile_lines(void **st)
{
    (void)st;
    static const struct {
        const char *line, *want;
    } bad[] = {
        { "[1,2]", "not a JSON object" },
        { "{\"timestamp\": 0, \"input_length\": 10", "not a JSON object" },
        { "{\"input_length\": 10, \"output_length\": 1, \"hash_ids\": [0]}", "timestamp" },
        { "{\"timestamp\": -1, \"input_length\": 10, \"output_length\": 1, \"hash_ids\": [0]}",
          "timestamp" },
        { "{\"timestamp\": 0, \"input_length\": \"10\", \"output_length\": 1, \"hash_ids\": [0]}",
          "input_length" },
        { "{\"timestamp\": 0, \"input_length\": 10, \"output_length\": 99999999, \"hash_ids\": [0]}",
          "output_length" },
        { "{\"timestamp\": 0, \"input_length\": 10, \"output_length\": 1, \"hash_ids\": []}",
          "hash_ids" },
        { "{\"timestamp\": 0, \"input_length\": 10, \"output_length\": 1, \"hash_ids\": [-3]}",
          "hash_ids[0]" },
        /* 2 ids of 64 tokens hold 65..128 tokens */
        { "{\"timestamp\": 0, \"input_length\": 64, \"output_length\": 1, \"hash_ids\": [0, 1]}",
          "input_length 64" },
        { "{\"timestamp\": 0, \"input_length\": 129, \"output_length\": 1, \"hash_ids\": [0, 1]}",
          "input_length 129" },
        { "{\"timestamp\": 0, \"input_length\": 10, \"output_length\": 0, \"hash_ids\": [0]}",
          "output_length 0" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        pd_mooncake_req_t r;
        char msg[256] = "";
        assert_int_equal(parse(bad[i].line, 64, &r, msg), -1);
        assert_null(r.hash_ids);
        if (strstr(msg, bad[i].want) == NULL)
            fail_msg("line %zu: message '%s' does not name '%s'", i, msg, bad[i].want);
    }
}

static void test_time_goes_back(void **st)
{
    (void)st;
    char path[] = "/tmp/test_mooncake.XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    fputs("{\"timestamp\": 5, \"input_length\": 10, \"output_length\": 1, \"hash_ids\": [0]}\n"
          "\n"
          "{\"timestamp\": 4, \"input_length\": 10, \"output_length\": 1, \"hash_ids\": [0]}\n", f);
    fclose(f);
    pd_mooncake_req_t *r = NULL;
    size_t n = 9;
    char msg[700] = "";
    assert_int_equal(pd_mooncake_load(path, 64, 100, &r, &n, msg, sizeof msg), -1);
    assert_null(r);
    assert_int_equal(n, 0);
    assert_non_null(strstr(msg, "line 3: timestamp 4 before"));
    /* Only the first line: fine. */
    assert_int_equal(pd_mooncake_load(path, 64, 1, &r, &n, msg, sizeof msg), 0);
    assert_int_equal(n, 1);
    pd_mooncake_free(r, n);
    unlink(path);
}

static void test_repo_trace(void **st)
{
    (void)st;
    pd_mooncake_req_t *r = NULL;
    size_t n = 0;
    char msg[700] = "";
    if (pd_mooncake_load("client/bench/traces/mooncake-small.jsonl", 64, SIZE_MAX, &r, &n, msg,
                         sizeof msg) != 0)
        fail_msg("%s", msg);
    assert_true(n >= 20);
    /* Every request starts with the shared system prompt (ids 0, 1), and
     * some later request extends an earlier one's ids by whole blocks. */
    size_t extends = 0;
    for (size_t i = 0; i < n; i++) {
        assert_true(r[i].n_ids >= 2 && r[i].hash_ids[0] == 0 && r[i].hash_ids[1] == 1);
        for (size_t j = 0; j < i && extends == 0; j++)
            if (r[i].n_ids > r[j].n_ids + 1 &&
                memcmp(r[i].hash_ids, r[j].hash_ids, (r[j].n_ids - 1) * sizeof(uint64_t)) == 0 &&
                r[j].n_ids > 3)
                extends++;
    }
    assert_true(extends > 0);
    print_message("mooncake-small: %zu requests, turns extend earlier prompts\n", n);
    pd_mooncake_free(r, n);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good_line),
        cmocka_unit_test(test_hostile_lines),
        cmocka_unit_test(test_time_goes_back),
        cmocka_unit_test(test_repo_trace),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
