/*
 * progress.c - renders the progress line; owns nothing but its counters.
 * Never writes when stderr is not a terminal.
 */
#include "progress.h"

#include <stdio.h>
#include <unistd.h>

#include "http_client.h"

void prog_init(struct progress *p, size_t total)
{
    p->enabled = isatty(2);
    p->total = total;
    p->done = p->failed = 0;
    p->tokens = 0;
    p->t0 = hc_now();
    p->last_draw = 0;
}

void prog_add_total(struct progress *p, size_t n)
{
    p->total += n;
}

static void draw(struct progress *p, double now)
{
    double el = now - p->t0;
    double rate = el > 0 ? (double)p->done / el : 0;
    double eta = rate > 0 ? (double)(p->total - p->done) / rate : 0;
    fprintf(stderr, "\r%zu/%zu done, %zu failed | %.1f samples/s | ETA %.0fs | %.0f tok/s   ",
            p->done, p->total, p->failed, rate, eta, el > 0 ? (double)p->tokens / el : 0.0);
    fflush(stderr);
    p->last_draw = now;
}

void prog_sample(struct progress *p, int failed, int64_t tokens)
{
    p->done++;
    if (failed) p->failed++;
    if (tokens > 0) p->tokens += tokens;
    if (!p->enabled) return;
    double now = hc_now();
    if (now - p->last_draw >= 0.2 || p->done == p->total) draw(p, now);
}

void prog_end(struct progress *p)
{
    if (!p->enabled) return;
    draw(p, hc_now());
    fputc('\n', stderr);
}
