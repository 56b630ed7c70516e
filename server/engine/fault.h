/*
 * fault.h - test-only fault injection for the engine: make one backend
 * forward fail on purpose, to test how the server answers an engine
 * failure on any backend (tests/hardening/test_engine_failure.py).
 *
 * Environment variables, read once when an engine is created:
 *   EVALSERVER_TEST_FAIL_STEP=N     the N-th forward of a replica (counting
 *                                   from 1) returns ES_EDEVICE "injected
 *                                   failure" without running;
 *   EVALSERVER_TEST_HANG_STEP=N     the N-th forward never returns (as a
 *                                   hung device or a lost NCCL peer would
 *                                   leave it: --step-timeout's case);
 *   EVALSERVER_TEST_FAIL_REPLICA=R  only replica R (0-based) fails; unset:
 *                                   every replica.
 * A worker node of a multi-node group (node_worker.c) reads the same
 * variables for its own forwards, as replica 0.
 * Unset, the plan is empty and fault_forward() is backend->forward. A
 * malformed value is an error, so a typo never runs a test on a healthy
 * server by accident. Never set these in production.
 */
#ifndef ES_FAULT_H
#define ES_FAULT_H

#include <stdint.h>

#include "backend.h"

struct fault_plan {
    uint64_t fail_step; /* 1-based forward call that fails; 0: none */
    uint64_t hang_step; /* 1-based forward call that never returns; 0: none */
};

/* Fills out for replica replica_index from the environment. ES_EINVAL
 * (err says which variable) when a value is not a number in range. */
enum es_status fault_plan_from_env(int replica_index, struct fault_plan *out,
                                   struct es_err *err);

/* be->ops->forward, unless step (1-based) is the planned failure or hang. */
enum es_status fault_forward(const struct fault_plan *fp, uint64_t step, struct backend *be,
                             const struct batch *b, struct batch_result *res,
                             struct es_err *err);

#endif
