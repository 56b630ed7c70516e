/*
 * fault.c - test-only fault injection (see fault.h): parses the plan from
 * the environment once, at engine creation, and wraps backend->forward.
 *
 * Owns nothing but the plan's numbers. Must never change what a forward
 * computes: either the real call runs, or it fails before touching the
 * backend.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <unistd.h>

#include "fault.h"
#include "log.h"

#define FAULT_ENV_STEP "EVALSERVER_TEST_FAIL_STEP"
#define FAULT_ENV_REPLICA "EVALSERVER_TEST_FAIL_REPLICA"
#define FAULT_ENV_HANG "EVALSERVER_TEST_HANG_STEP"

/* Reads variable name as a decimal integer in [lo, hi]; *present false when
 * it is unset or empty. */
static enum es_status env_long(const char *name, long lo, long hi, long *value, bool *present,
                               struct es_err *err)
{
    const char *s = getenv(name);
    *present = s && s[0];
    if (!*present) return ES_OK;
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end != '\0' || v < lo || v > hi)
        return es_fail(err, ES_EINVAL, "%s='%.40s' is not a number in %ld..%ld", name, s, lo,
                       hi);
    *value = v;
    return ES_OK;
}

enum es_status fault_plan_from_env(int replica_index, struct fault_plan *out,
                                   struct es_err *err)
{
    *out = (struct fault_plan){0};
    long step = 0, hang = 0, replica = -1;
    bool have_step = false, have_hang = false, have_replica = false;
    enum es_status st = env_long(FAULT_ENV_STEP, 1, 1L << 40, &step, &have_step, err);
    if (st == ES_OK) st = env_long(FAULT_ENV_HANG, 1, 1L << 40, &hang, &have_hang, err);
    if (st == ES_OK) st = env_long(FAULT_ENV_REPLICA, 0, 1 << 20, &replica, &have_replica, err);
    if (st != ES_OK || (!have_step && !have_hang)) return st;
    if (have_replica && replica != replica_index) return ES_OK;
    if (have_step) {
        out->fail_step = (uint64_t)step;
        LOG_W("engine", "test switch %s=%ld: forward %ld of replica %d will fail on purpose",
              FAULT_ENV_STEP, step, step, replica_index);
    }
    if (have_hang) {
        out->hang_step = (uint64_t)hang;
        LOG_W("engine", "test switch %s=%ld: forward %ld of replica %d will never return",
              FAULT_ENV_HANG, hang, hang, replica_index);
    }
    return ES_OK;
}

enum es_status fault_forward(const struct fault_plan *fp, uint64_t step, struct backend *be,
                             const struct batch *b, struct batch_result *res,
                             struct es_err *err)
{
    if (fp->fail_step != 0 && step == fp->fail_step)
        return es_fail(err, ES_EDEVICE, "injected failure (%s=%llu)", FAULT_ENV_STEP,
                       (unsigned long long)step);
    if (fp->hang_step != 0 && step == fp->hang_step)
        for (;;)
            sleep(3600); /* the process ends around it */
    return be->ops->forward(be, b, res, err);
}
