/*
 * log.c - timestamped, thread-safe lines on stderr (one fprintf per line,
 * which stdio locks).
 */
#include "log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static atomic_int current_level = -1;

static enum log_level level_from_env(void)
{
    const char *s = getenv("EVAL_LOG_LEVEL");
    if (!s) return LOG_INFO;
    if (!strcmp(s, "error")) return LOG_ERROR;
    if (!strcmp(s, "warn")) return LOG_WARN;
    if (!strcmp(s, "debug")) return LOG_DEBUG;
    return LOG_INFO;
}

void log_set_level(enum log_level level)
{
    atomic_store(&current_level, (int)level);
}

enum log_level log_get_level(void)
{
    int l = atomic_load(&current_level);
    if (l < 0) {
        l = (int)level_from_env();
        atomic_store(&current_level, l);
    }
    return (enum log_level)l;
}

void log_msg(enum log_level level, const char *subsystem, const char *fmt, ...)
{
    if (level > log_get_level()) return;
    static const char *names[] = {"E", "W", "I", "D"};
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    localtime_r(&ts.tv_sec, &tm);
    fprintf(stderr, "%02d:%02d:%02d.%03ld %s %-5s %s\n", tm.tm_hour, tm.tm_min, tm.tm_sec,
            ts.tv_nsec / 1000000, names[level], subsystem, line);
}
