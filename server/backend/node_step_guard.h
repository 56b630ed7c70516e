/*
 * node_step_guard.h - runs a worker node's step on a thread of its own,
 * so that the node can watch node 0 while the step runs.
 *
 * A worker node (node_worker.h) used to run each forward on its main
 * thread: a forward that never returned (a hung GPU, an NCCL peer lost in
 * a collective) held the node forever, even after node 0 had given up and
 * exited. Under the guard the main thread waits for the step and for
 * node 0's control connection at once: when node 0 closes it (exit,
 * crash: the peer's end shuts down) or, with a step timeout, when the
 * step runs too long, the wait fails and the node can exit. The step's
 * thread cannot be stopped; it is left behind, and everything it reads
 * must outlive the process (the caller keeps it, the guard keeps itself).
 */
#ifndef ES_NODE_STEP_GUARD_H
#define ES_NODE_STEP_GUARD_H

#include <stdbool.h>

#include "status.h"

/* One step's work, run on the guard's thread. */
typedef enum es_status (*nsg_step_fn)(void *arg, struct es_err *err);

/* Runs step(arg) on a new thread and waits for it while watching fd (node
 * 0's control connection). Returns the step's status and error, or fails
 * (ES_EIO) when fd's peer has closed or (timeout_s > 0) the step has run
 * for timeout_s seconds; then *abandoned is true, the step's thread still
 * runs, and arg and what it points to must never be freed. */
enum es_status nsg_run(int fd, double timeout_s, nsg_step_fn step, void *arg, bool *abandoned,
                       struct es_err *err);

#endif
