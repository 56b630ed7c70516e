/*
 * cli.c - strict numeric option values (see cli.h). Owns nothing; prints
 * the reason a value is refused on stderr and never exits.
 */
#include "cli.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

bool cli_long(const char *prog, const char *opt, const char *arg, long lo, long hi, long *out)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(arg, &end, 10);
    if (errno != 0 || end == arg || *end != '\0' || v < lo || v > hi) {
        fprintf(stderr, "%s: --%s wants a whole number from %ld to %ld, got '%s'\n", prog, opt, lo,
                hi, arg);
        return false;
    }
    *out = v;
    return true;
}

bool cli_int(const char *prog, const char *opt, const char *arg, int lo, int hi, int *out)
{
    long v;
    if (!cli_long(prog, opt, arg, lo, hi, &v)) return false;
    *out = (int)v;
    return true;
}

bool cli_double(const char *prog, const char *opt, const char *arg, double lo, double hi,
                double *out)
{
    char *end = NULL;
    errno = 0;
    double v = strtod(arg, &end);
    if (errno != 0 || end == arg || *end != '\0' || !isfinite(v) || v < lo || v > hi) {
        fprintf(stderr, "%s: --%s wants a number from %g to %g, got '%s'\n", prog, opt, lo, hi,
                arg);
        return false;
    }
    *out = v;
    return true;
}
