/* test_grow.c -- pd_grow: the growth rule every dynamic array shares. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "base/grow.h"

static void test_grows_by_doubling_from_min(void **state)
{
    (void)state;
    int *v = NULL;
    size_t cap = 0;
    assert_int_equal(pd_grow((void **)&v, &cap, 1, sizeof *v, 16), 0);
    assert_int_equal(cap, 16);
    v[15] = 7;
    assert_int_equal(pd_grow((void **)&v, &cap, 17, sizeof *v, 16), 0);
    assert_int_equal(cap, 32);
    assert_int_equal(v[15], 7); /* contents kept */
    assert_int_equal(pd_grow((void **)&v, &cap, 100, sizeof *v, 16), 0);
    assert_int_equal(cap, 128);
    free(v);
}

static void test_enough_room_is_a_no_op(void **state)
{
    (void)state;
    int *v = NULL;
    size_t cap = 0;
    assert_int_equal(pd_grow((void **)&v, &cap, 10, sizeof *v, 64), 0);
    int *before = v;
    assert_int_equal(pd_grow((void **)&v, &cap, 64, sizeof *v, 64), 0);
    assert_ptr_equal(v, before);
    assert_int_equal(cap, 64);
    free(v);
}

static void test_overflow_refused_and_nothing_changed(void **state)
{
    (void)state;
    int *v = NULL;
    size_t cap = 0;
    assert_int_equal(pd_grow((void **)&v, &cap, 4, sizeof *v, 4), 0);
    int *before = v;
    /* need * elem overflows size_t */
    assert_int_equal(pd_grow((void **)&v, &cap, SIZE_MAX / 2, 8, 4), PD_ENOMEM);
    /* doubling itself would overflow */
    assert_int_equal(pd_grow((void **)&v, &cap, SIZE_MAX, 1, 4), PD_ENOMEM);
    assert_ptr_equal(v, before);
    assert_int_equal(cap, 4);
    free(v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grows_by_doubling_from_min),
        cmocka_unit_test(test_enough_room_is_a_no_op),
        cmocka_unit_test(test_overflow_refused_and_nothing_changed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
