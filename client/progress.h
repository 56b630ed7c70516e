/*
 * progress.h - the live progress line (done/total, rate, ETA, tokens/s).
 *
 * Drawn on stderr only when stderr is a terminal, at most five times a
 * second; silent otherwise, so logs and CI output stay clean.
 */
#ifndef EC_PROGRESS_H
#define EC_PROGRESS_H

#include <stddef.h>
#include <stdint.h>

struct progress {
    int enabled;
    size_t total;
    size_t done;
    size_t failed;
    int64_t tokens; /* completion tokens received */
    double t0;
    double last_draw;
};

void prog_init(struct progress *p, size_t total);
void prog_add_total(struct progress *p, size_t n);
/* One sample finished (failed or not) with `tokens` completion tokens. */
void prog_sample(struct progress *p, int failed, int64_t tokens);
void prog_end(struct progress *p);

#endif
