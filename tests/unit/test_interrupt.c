/* test_interrupt.c -- Ctrl-C for pd-cli and pd-bench (client/interrupt.h):
 *  - the first SIGINT sets pd_interrupted and returns;
 *  - the same press delivered again at once (GNU timeout's child + group,
 *    a terminal's foreground group) is still one interrupt: no exit;
 *  - a second press PD_INTERRUPT_REPEAT_MS later exits 130 at once;
 *  - SIGTERM counts as a press too.
 * Each case runs in a forked child, so an exit is seen as the child's status.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "interrupt.h"

static void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) != 0)
        ;
}

/* Runs body in a child; returns its exit status (or 1000 + signal). */
static int in_child(void (*body)(void))
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        body();
        _exit(0);
    }
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 1000 + WTERMSIG(st);
}

/* Exit 7 means "still running after the presses, pd_interrupted set". */
static void twice_at_once(void)
{
    pd_interrupt_install();
    if (pd_interrupted)
        _exit(3);
    raise(SIGINT);
    if (pd_interrupted != 1)
        _exit(4);
    raise(SIGINT);
    raise(SIGTERM);
    _exit(pd_interrupted == 1 ? 7 : 5);
}

static void twice_apart(void)
{
    pd_interrupt_install();
    raise(SIGINT);
    sleep_ms(PD_INTERRUPT_REPEAT_MS + 50);
    raise(SIGINT); /* exits 130 here */
    _exit(6);
}

static void term_then_int_apart(void)
{
    pd_interrupt_install();
    raise(SIGTERM);
    if (pd_interrupted != 1)
        _exit(4);
    sleep_ms(PD_INTERRUPT_REPEAT_MS + 50);
    raise(SIGINT);
    _exit(6);
}

static void test_duplicate_delivery_is_one_press(void **st)
{
    (void)st;
    assert_int_equal(in_child(twice_at_once), 7);
}

static void test_second_press_exits_130(void **st)
{
    (void)st;
    assert_int_equal(in_child(twice_apart), PD_EXIT_INTERRUPTED);
    assert_int_equal(in_child(term_then_int_apart), PD_EXIT_INTERRUPTED);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_duplicate_delivery_is_one_press),
        cmocka_unit_test(test_second_press_exits_130),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
