/*
 * bench.h - `evalclient bench`: the workloads W1-W4 of BENCH.md.
 */
#ifndef EC_BENCH_H
#define EC_BENCH_H

/* Runs the bench subcommand (argv[0] == "bench"); returns the exit code. */
int bench_main(int argc, char **argv);

#endif
