/* clock.h -- the one monotonic clock every layer reads (CLOCK_MONOTONIC):
 * durations, deadlines, timeouts, heartbeats, rates. It never jumps with
 * the wall clock. Wall-clock time has other jobs and stays where it is:
 * log timestamps (log.c), pthread_cond_timedwait deadlines (CLOCK_REALTIME
 * by default) and time-seeded ids.
 */
#ifndef PD_CLOCK_H
#define PD_CLOCK_H

#include <stdint.h>

uint64_t pd_now_ns(void); /* nanoseconds since an arbitrary start */

static inline uint64_t pd_now_us(void) { return pd_now_ns() / 1000u; }
static inline uint64_t pd_now_ms(void) { return pd_now_ns() / 1000000u; }
static inline double pd_now_s(void) { return (double)pd_now_ns() * 1e-9; }

#endif
