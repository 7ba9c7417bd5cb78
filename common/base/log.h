/* log.h -- one-line logs: time, level, role, then key=value pairs.
 *
 *   2026-11-24T09:15:02.123Z INFO router req=42 worker=decode-1 msg="..."
 *
 * The logger is the one process-wide global (STYLE.md rule 9). Logs go to
 * stderr, and also to a file when pd_log_open_file() was called.
 */
#ifndef PD_LOG_H
#define PD_LOG_H

#include <stdbool.h>

typedef enum { PD_LOG_DEBUG = 0, PD_LOG_INFO, PD_LOG_WARN, PD_LOG_ERROR } pd_log_level_t;

/* Sets the role printed on every line ("router", "prefill-1", "pd-run") and
 * the minimum level printed. role is copied. */
void pd_log_init(const char *role, pd_log_level_t min_level);

/* Also appends every line to path. Returns 0 or -1 (errno set). */
int pd_log_open_file(const char *path);

/* Turns stderr output off (a daemon whose logs go to a file only). */
void pd_log_set_stderr(bool on);

/* Parses "debug", "info", "warn", "error". Returns -1 when unknown. */
int pd_log_level_parse(const char *s);

void pd_log(pd_log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define PD_DEBUG(...) pd_log(PD_LOG_DEBUG, __VA_ARGS__)
#define PD_INFO(...) pd_log(PD_LOG_INFO, __VA_ARGS__)
#define PD_WARN(...) pd_log(PD_LOG_WARN, __VA_ARGS__)
#define PD_ERROR(...) pd_log(PD_LOG_ERROR, __VA_ARGS__)

#endif
