/*
 * cli.h - strict parsing of numeric command-line values for evalclient and
 * evalclient bench.
 *
 * A value must be a whole number (or, for cli_double, a finite decimal)
 * within the option's range; anything else (empty, trailing junk, out of
 * range) prints one clear line on stderr naming the option and returns
 * false, so a typo is a usage error and never a silent 0.
 */
#ifndef EC_CLI_H
#define EC_CLI_H

#include <stdbool.h>

/* Parses `arg`, the value of --`opt`, into *out when lo <= value <= hi. */
bool cli_long(const char *prog, const char *opt, const char *arg, long lo, long hi, long *out);
bool cli_int(const char *prog, const char *opt, const char *arg, int lo, int hi, int *out);
bool cli_double(const char *prog, const char *opt, const char *arg, double lo, double hi,
                double *out);

#endif
