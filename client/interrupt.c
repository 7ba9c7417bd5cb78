/* interrupt.c -- Ctrl-C for the command-line clients: see interrupt.h. */
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "interrupt.h"

volatile sig_atomic_t pd_interrupted;
static struct timespec g_first; /* written by the handler only, before pd_interrupted */

/* Async-signal-safe: clock_gettime and _exit only. */
static void on_signal(int sig)
{
    (void)sig;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (!pd_interrupted) {
        g_first = now;
        pd_interrupted = 1;
        return;
    }
    long long ms = (long long)(now.tv_sec - g_first.tv_sec) * 1000 +
                   (now.tv_nsec - g_first.tv_nsec) / 1000000;
    if (ms >= PD_INTERRUPT_REPEAT_MS)
        _exit(PD_EXIT_INTERRUPTED);
}

void pd_interrupt_install(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaddset(&sa.sa_mask, SIGINT);
    sigaddset(&sa.sa_mask, SIGTERM);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}
