/*
 * step_runner.h - a replica's backend forwards on a thread of their own.
 *
 * The engine thread hands one step at a time to the runner (runner_submit)
 * and collects it later (runner_wait). In between it is free to schedule
 * and build the next step and to hand out the outputs of the previous one,
 * so that host work hides behind the device's (DESIGN.md, "GPU engine
 * principles": the host prepares step N+1 while the device runs step N).
 *
 * Only the runner thread calls backend->forward; every other backend call
 * (copy_blocks) is made by the engine thread while no step is in flight,
 * so a backend never sees two calls at once. The batch, its buffers and
 * everything its rows point to must stay untouched until runner_wait
 * returns.
 */
#ifndef ES_STEP_RUNNER_H
#define ES_STEP_RUNNER_H

#include <stdbool.h>
#include <stdint.h>

#include "backend.h"
#include "fault.h"
#include "status.h"

struct step_runner;

/* Starts the thread. be and fault must outlive the runner. */
enum es_status runner_create(struct backend *be, const struct fault_plan *fault,
                             struct step_runner **out, struct es_err *err);
/* Hands over step number step (1-based count of forwards, for the fault
 * plan). At most one step in flight: the previous one must be waited. */
void runner_submit(struct step_runner *r, uint64_t step, const struct batch *b,
                   struct batch_result *res);
/* Blocks until the step in flight is done and returns the forward's
 * status (err filled on failure). Timings in seconds on the monotonic
 * clock of req_now(): when the forward started and ended. timeout_s > 0:
 * a forward still running that long after it began is given up on:
 * ES_EDEVICE, and the runner is stuck for good (runner_stuck): its thread
 * keeps the backend, the batch and the results it was handed. */
enum es_status runner_wait(struct step_runner *r, double timeout_s, struct es_err *err,
                           double *started, double *ended);
/* A forward outlived runner_wait's timeout. */
bool runner_stuck(struct step_runner *r);
/* Waits for a step in flight, stops and joins the thread. NULL is fine.
 * A stuck runner must not be destroyed (its thread cannot be joined). */
void runner_destroy(struct step_runner *r);

#endif
