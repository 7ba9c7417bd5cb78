/* log.c -- see log.h */
#include "base/log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static struct {
    char role[64];
    pd_log_level_t min_level;
    bool to_stderr;
    FILE *file;
    pthread_mutex_t lock;
} g_log = { "pd", PD_LOG_INFO, true, NULL, PTHREAD_MUTEX_INITIALIZER };

void pd_log_init(const char *role, pd_log_level_t min_level)
{
    snprintf(g_log.role, sizeof g_log.role, "%s", role ? role : "pd");
    g_log.min_level = min_level;
}

int pd_log_open_file(const char *path)
{
    FILE *f = fopen(path, "a");
    if (f == NULL)
        return -1;
    setvbuf(f, NULL, _IOLBF, 0);
    if (g_log.file)
        fclose(g_log.file);
    g_log.file = f;
    return 0;
}

void pd_log_set_stderr(bool on) { g_log.to_stderr = on; }

int pd_log_level_parse(const char *s)
{
    static const char *names[] = { "debug", "info", "warn", "error" };
    for (int i = 0; i < 4; i++)
        if (strcmp(s, names[i]) == 0)
            return i;
    return -1;
}

void pd_log(pd_log_level_t level, const char *fmt, ...)
{
    static const char *names[] = { "DEBUG", "INFO", "WARN", "ERROR" };
    if (level < g_log.min_level)
        return;
    char line[2048];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s %s ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000, names[level], g_log.role);
    va_list ap;
    va_start(ap, fmt);
    if (n > 0 && (size_t)n < sizeof line)
        vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&g_log.lock);
    if (g_log.to_stderr)
        fprintf(stderr, "%s\n", line);
    if (g_log.file)
        fprintf(g_log.file, "%s\n", line);
    pthread_mutex_unlock(&g_log.lock);
}
