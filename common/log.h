/*
 * log.h - leveled logging to stderr with a subsystem prefix.
 *
 * Each subsystem defines its own short macros (LOG_SCHED, LOG_HTTP, ...)
 * over log_msg; the level threshold comes from log_set_level() or the
 * EVAL_LOG_LEVEL environment variable (error, warn, info, debug).
 */
#ifndef ES_LOG_H
#define ES_LOG_H

enum log_level { LOG_ERROR = 0, LOG_WARN = 1, LOG_INFO = 2, LOG_DEBUG = 3 };

void log_set_level(enum log_level level);
enum log_level log_get_level(void);
void log_msg(enum log_level level, const char *subsystem, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define LOG_E(sub, ...) log_msg(LOG_ERROR, sub, __VA_ARGS__)
#define LOG_W(sub, ...) log_msg(LOG_WARN, sub, __VA_ARGS__)
#define LOG_I(sub, ...) log_msg(LOG_INFO, sub, __VA_ARGS__)
#define LOG_D(sub, ...)                                                                            \
    do {                                                                                           \
        if (log_get_level() >= LOG_DEBUG) log_msg(LOG_DEBUG, sub, __VA_ARGS__);                    \
    } while (0)

#endif
