/* interrupt.h -- Ctrl-C for the command-line clients (pd-cli, pd-bench).
 *
 * The first SIGINT or SIGTERM sets pd_interrupted: the program stops what it
 * is doing, cancels what is in flight and reports. A second one quits at once
 * (exit 130) -- but only when it comes PD_INTERRUPT_REPEAT_MS or more after the
 * first. One press is often delivered twice within microseconds: GNU timeout
 * sends the signal to its child and then to its whole process group, and a
 * terminal's Ctrl-C reaches every process of the foreground group. Counting
 * those as two would quit without the report the first one asked for.
 */
#ifndef PD_CLIENT_INTERRUPT_H
#define PD_CLIENT_INTERRUPT_H

#include <signal.h>

#define PD_INTERRUPT_REPEAT_MS 250
#define PD_EXIT_INTERRUPTED 130

extern volatile sig_atomic_t pd_interrupted; /* 0 until the first SIGINT/SIGTERM */

/* Installs the handler for SIGINT and SIGTERM. */
void pd_interrupt_install(void);

#endif
