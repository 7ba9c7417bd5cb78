/* test_chatconv.c -- one multi-turn conversation (client/chatconv.h), the
 * prompts of pd-bench --dataset multi-turn:
 *  - turn t's prompt is head + u1 + a1 + ... + u(t-1) + a(t-1) + ut, the
 *    answers exactly as given (an empty answer too), its length the sum;
 *  - 6 turns of random lengths against a prompt built by plain concatenation;
 *  - an answer longer than max_answer is refused and changes nothing;
 *  - misuse is refused: 0 or too many turns, an empty user message, one
 *    message too many, a prompt before every message is in or after the
 *    last turn, an answer after the last turn.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "chatconv.h"

static void assert_prompt(const pd_chatconv_t *c, const int32_t *want, size_t n_want)
{
    int32_t *p = NULL;
    size_t n = 0;
    pd_err_t err = { 0 };
    assert_int_equal(pd_chatconv_prompt(c, &p, &n, &err), 0);
    assert_int_equal(n, n_want);
    assert_int_equal(pd_chatconv_prompt_len(c), n_want);
    assert_memory_equal(p, want, n_want * sizeof *want);
    free(p);
}

static void test_three_turns(void **st)
{
    (void)st;
    const int32_t head[] = { 1, 100, 101 }, u1[] = { 10, 11 }, u2[] = { 20 },
                  u3[] = { 30, 31, 32 }, a1[] = { 50, 51, 52 }, a3[] = { 70 };
    pd_chatconv_t c;
    pd_err_t err = { 0 };
    assert_int_equal(pd_chatconv_init(&c, head, 3, 3, 4, &err), 0);
    assert_int_equal(pd_chatconv_add_user(&c, u1, 2, &err), 0);
    assert_int_equal(pd_chatconv_add_user(&c, u2, 1, &err), 0);
    assert_int_equal(pd_chatconv_add_user(&c, u3, 3, &err), 0);
    const int32_t t1[] = { 1, 100, 101, 10, 11 };
    assert_prompt(&c, t1, 5);
    assert_int_equal(pd_chatconv_answer(&c, a1, 3, &err), 0);
    const int32_t t2[] = { 1, 100, 101, 10, 11, 50, 51, 52, 20 };
    assert_prompt(&c, t2, 9);
    assert_int_equal(pd_chatconv_answer(&c, NULL, 0, &err), 0); /* an empty answer */
    const int32_t t3[] = { 1, 100, 101, 10, 11, 50, 51, 52, 20, 30, 31, 32 };
    assert_prompt(&c, t3, 12);
    assert_false(pd_chatconv_done(&c));
    assert_int_equal(pd_chatconv_answer(&c, a3, 1, &err), 0);
    assert_true(pd_chatconv_done(&c));
    assert_int_equal(pd_chatconv_prompt_len(&c), 0);
    int32_t *p = NULL;
    size_t n = 7;
    assert_int_equal(pd_chatconv_prompt(&c, &p, &n, &err), PD_ESTATE);
    assert_null(p);
    assert_int_equal(n, 0);
    assert_int_equal(pd_chatconv_answer(&c, a3, 1, &err), PD_ESTATE);
    assert_non_null(strstr(err.msg, "over"));
    pd_chatconv_free(&c);
}

/* 6 turns of random lengths: each prompt equals the plain concatenation. */
static void test_random_against_concat(void **st)
{
    (void)st;
    srand(7);
    enum { T = 6, MAXU = 40, MAXA = 25 };
    int32_t users[T][MAXU], answers[T][MAXA], ref[1 + T * (MAXU + MAXA)];
    size_t nu[T], na[T];
    pd_chatconv_t c;
    pd_err_t err = { 0 };
    const int32_t bos = 1;
    assert_int_equal(pd_chatconv_init(&c, &bos, 1, T, MAXA, &err), 0);
    for (int t = 0; t < T; t++) {
        nu[t] = 1 + (size_t)rand() % MAXU;
        na[t] = (size_t)rand() % (MAXA + 1);
        for (size_t k = 0; k < nu[t]; k++)
            users[t][k] = 1000 + t * 100 + (int32_t)k;
        for (size_t k = 0; k < na[t]; k++)
            answers[t][k] = 5000 + t * 100 + (int32_t)k;
        assert_int_equal(pd_chatconv_add_user(&c, users[t], nu[t], &err), 0);
    }
    size_t n_ref = 0;
    ref[n_ref++] = bos;
    for (int t = 0; t < T; t++) {
        memcpy(ref + n_ref, users[t], nu[t] * sizeof *ref);
        assert_prompt(&c, ref, n_ref + nu[t]); /* history + this turn's message */
        n_ref += nu[t];
        assert_int_equal(pd_chatconv_answer(&c, answers[t], na[t], &err), 0);
        memcpy(ref + n_ref, answers[t], na[t] * sizeof *ref);
        n_ref += na[t];
    }
    assert_true(pd_chatconv_done(&c));
    assert_int_equal(c.n_hist, n_ref); /* the whole conversation, answers included */
    assert_memory_equal(c.hist, ref, n_ref * sizeof *ref);
    pd_chatconv_free(&c);
}

static void test_long_answer_refused(void **st)
{
    (void)st;
    const int32_t u[] = { 5, 6 }, a[] = { 1, 2, 3, 4, 5 };
    pd_chatconv_t c;
    pd_err_t err = { 0 };
    assert_int_equal(pd_chatconv_init(&c, NULL, 0, 2, 4, &err), 0);
    assert_int_equal(pd_chatconv_add_user(&c, u, 2, &err), 0);
    assert_int_equal(pd_chatconv_add_user(&c, u, 1, &err), 0);
    assert_int_equal(pd_chatconv_answer(&c, a, 5, &err), PD_ERANGE);
    assert_non_null(strstr(err.msg, "answer of 5 tokens"));
    assert_prompt(&c, u, 2); /* nothing changed: still turn 1 */
    assert_int_equal(pd_chatconv_answer(&c, a, 4, &err), 0);
    const int32_t t2[] = { 5, 6, 1, 2, 3, 4, 5 };
    assert_prompt(&c, t2, 7);
    pd_chatconv_free(&c);
}

static void test_misuse_refused(void **st)
{
    (void)st;
    const int32_t u[] = { 9 };
    pd_chatconv_t c;
    pd_err_t err = { 0 };
    assert_int_equal(pd_chatconv_init(&c, NULL, 0, 0, 4, &err), PD_EINVAL);
    assert_int_equal(pd_chatconv_init(&c, NULL, 0, PD_CHATCONV_MAX_TURNS + 1, 4, &err), PD_EINVAL);
    assert_int_equal(pd_chatconv_init(&c, u, 1, 2, 4, &err), 0);
    assert_int_equal(pd_chatconv_add_user(&c, u, 0, &err), PD_EINVAL);
    assert_int_equal(pd_chatconv_add_user(&c, u, 1, &err), 0);
    int32_t *p = NULL;
    size_t n = 0;
    assert_int_equal(pd_chatconv_prompt(&c, &p, &n, &err), PD_ESTATE); /* 1 of 2 messages */
    assert_int_equal(pd_chatconv_answer(&c, u, 1, &err), PD_ESTATE);
    assert_int_equal(pd_chatconv_prompt_len(&c), 0);
    assert_int_equal(pd_chatconv_add_user(&c, u, 1, &err), 0);
    assert_int_equal(pd_chatconv_add_user(&c, u, 1, &err), PD_ESTATE); /* a third of 2 */
    pd_chatconv_free(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_three_turns),
        cmocka_unit_test(test_random_against_concat),
        cmocka_unit_test(test_long_answer_refused),
        cmocka_unit_test(test_misuse_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
