/*
 * step_runner.c - the thread that runs backend forwards (step_runner.h).
 *
 * Owns the thread and a hand-off slot guarded by one mutex: the engine
 * thread fills the slot and signals; the runner runs the forward outside
 * the lock, stores the status and timings and signals back. Never touches
 * the engine's state; the batch is read-only to it except for the result
 * rows the forward writes.
 */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include "request.h"
#include "step_runner.h"

enum slot_state { SLOT_EMPTY, SLOT_SUBMITTED, SLOT_DONE };

struct step_runner {
    struct backend *be;
    const struct fault_plan *fault;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv_work, cv_done;
    bool stopping;
    /* The slot (under mu). */
    enum slot_state state;
    uint64_t step;
    const struct batch *batch;
    struct batch_result *result;
    enum es_status status;
    struct es_err err;
    double started, ended;
    double busy_since; /* req_now() when the forward in flight began; 0: none */
    bool stuck;        /* a wait gave up on the forward in flight */
};

static void *runner_main(void *arg)
{
    struct step_runner *r = arg;
    pthread_mutex_lock(&r->mu);
    for (;;) {
        while (!r->stopping && r->state != SLOT_SUBMITTED)
            pthread_cond_wait(&r->cv_work, &r->mu);
        if (r->state != SLOT_SUBMITTED) break; /* stopping, nothing left */
        uint64_t step = r->step;
        const struct batch *b = r->batch;
        struct batch_result *res = r->result;
        double t0 = req_now();
        r->busy_since = t0;
        pthread_mutex_unlock(&r->mu);

        struct es_err err = {{0}};
        enum es_status st = fault_forward(r->fault, step, r->be, b, res, &err);
        double t1 = req_now();

        pthread_mutex_lock(&r->mu);
        r->busy_since = 0;
        r->status = st;
        r->err = err;
        r->started = t0;
        r->ended = t1;
        r->state = SLOT_DONE;
        pthread_cond_signal(&r->cv_done);
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

enum es_status runner_create(struct backend *be, const struct fault_plan *fault,
                             struct step_runner **out, struct es_err *err)
{
    struct step_runner *r = calloc(1, sizeof(*r));
    if (!r) return es_fail(err, ES_ENOMEM, "step runner: out of memory");
    r->be = be;
    r->fault = fault;
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv_work, NULL);
    pthread_cond_init(&r->cv_done, NULL);
    if (pthread_create(&r->thread, NULL, runner_main, r) != 0) {
        pthread_cond_destroy(&r->cv_done);
        pthread_cond_destroy(&r->cv_work);
        pthread_mutex_destroy(&r->mu);
        free(r);
        return es_fail(err, ES_ERR, "step runner: cannot start its thread");
    }
    *out = r;
    return ES_OK;
}

void runner_submit(struct step_runner *r, uint64_t step, const struct batch *b,
                   struct batch_result *res)
{
    pthread_mutex_lock(&r->mu);
    r->step = step;
    r->batch = b;
    r->result = res;
    r->state = SLOT_SUBMITTED;
    pthread_cond_signal(&r->cv_work);
    pthread_mutex_unlock(&r->mu);
}

/* Waits on cv_done for at most `seconds` (a wake-up may come early). */
static void wait_done_for(struct step_runner *r, double seconds)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    double whole = floor(seconds);
    until.tv_sec += (time_t)whole;
    until.tv_nsec += (long)((seconds - whole) * 1e9);
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&r->cv_done, &r->mu, &until);
}

enum es_status runner_wait(struct step_runner *r, double timeout_s, struct es_err *err,
                           double *started, double *ended)
{
    pthread_mutex_lock(&r->mu);
    while (r->state == SLOT_SUBMITTED) {
        if (timeout_s <= 0) {
            pthread_cond_wait(&r->cv_done, &r->mu);
            continue;
        }
        double ran = r->busy_since > 0 ? req_now() - r->busy_since : 0;
        if (ran >= timeout_s) {
            r->stuck = true;
            pthread_mutex_unlock(&r->mu);
            return es_fail(err, ES_EDEVICE,
                           "a forward has run for %.0f s (--step-timeout %.0f): the device or "
                           "a peer is hung",
                           ran, timeout_s);
        }
        wait_done_for(r, timeout_s - ran < 1.0 ? timeout_s - ran + 0.01 : 1.0);
    }
    enum es_status st = r->state == SLOT_DONE ? r->status : ES_ERR;
    if (r->state == SLOT_DONE) {
        if (st != ES_OK) *err = r->err;
        *started = r->started;
        *ended = r->ended;
    } else {
        es_fail(err, ES_ERR, "step runner: no step in flight");
    }
    r->state = SLOT_EMPTY;
    pthread_mutex_unlock(&r->mu);
    return st;
}

bool runner_stuck(struct step_runner *r)
{
    pthread_mutex_lock(&r->mu);
    bool stuck = r->stuck;
    pthread_mutex_unlock(&r->mu);
    return stuck;
}

void runner_destroy(struct step_runner *r)
{
    if (!r) return;
    pthread_mutex_lock(&r->mu);
    r->stopping = true;
    pthread_cond_signal(&r->cv_work);
    pthread_mutex_unlock(&r->mu);
    pthread_join(r->thread, NULL); /* a submitted step runs to its end first */
    pthread_cond_destroy(&r->cv_done);
    pthread_cond_destroy(&r->cv_work);
    pthread_mutex_destroy(&r->mu);
    free(r);
}
