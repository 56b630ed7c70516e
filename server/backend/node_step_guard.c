/*
 * node_step_guard.c - a worker node's step on its own thread, watched
 * (node_step_guard.h).
 *
 * Each call starts a thread for the step and waits in poll() on two file
 * descriptors: a pipe the thread writes one byte to when the step has
 * returned, and node 0's control connection, for POLLRDHUP / POLLHUP /
 * POLLERR only (the data node 0 sends ahead stays unread). A step that
 * returns is joined and its status handed back. A step given up on is
 * detached; its guard (status, pipe) moves to a list that lives until the
 * process ends, so that the late thread still has somewhere to write and
 * LeakSanitizer sees it reachable.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "netio.h"
#include "node_step_guard.h"

/* How long a step may still take once node 0 has hung up. */
#define NSG_GRACE_S 1.0

struct guard {
    nsg_step_fn step;
    void *arg;
    enum es_status st;
    struct es_err err;
    int done_pipe[2]; /* the thread writes one byte to [1] when the step returned */
    struct guard *next_abandoned;
};

static struct guard *abandoned_guards;
static pthread_mutex_t abandoned_mu = PTHREAD_MUTEX_INITIALIZER;

static void *guard_main(void *arg)
{
    struct guard *g = arg;
    g->st = g->step(g->arg, &g->err);
    char one = 1;
    while (write(g->done_pipe[1], &one, 1) < 0 && errno == EINTR) {
    }
    return NULL;
}

static void guard_free(struct guard *g)
{
    close(g->done_pipe[0]);
    close(g->done_pipe[1]);
    free(g);
}

/* Gives up on g's thread: it may still write g's fields and pipe. */
static void abandon(struct guard *g, pthread_t thread)
{
    pthread_detach(thread);
    pthread_mutex_lock(&abandoned_mu);
    g->next_abandoned = abandoned_guards;
    abandoned_guards = g;
    pthread_mutex_unlock(&abandoned_mu);
}

/* Whether the step returns within seconds (node 0 is gone: a step about
 * to end is let end, and the next read reports node 0's exit as usual). */
static bool step_done_within(struct guard *g, double seconds)
{
    struct pollfd p = {.fd = g->done_pipe[0], .events = POLLIN};
    int n;
    while ((n = poll(&p, 1, (int)(seconds * 1000.0))) < 0 && errno == EINTR) {
    }
    return n > 0;
}

/* Waits until the step is done (true) or node 0 hung up or the timeout
 * passed (false, err says which). */
static bool wait_step(struct guard *g, int fd, double timeout_s, struct es_err *err)
{
    double t0 = nio_now();
    for (;;) {
        struct pollfd p[2] = {{.fd = g->done_pipe[0], .events = POLLIN},
                              {.fd = fd, .events = POLLRDHUP}};
        int wait_ms = -1;
        if (timeout_s > 0) {
            double left = t0 + timeout_s - nio_now();
            wait_ms = left > 0 ? (int)(left * 1000.0) + 1 : 0;
        }
        int n = poll(p, 2, wait_ms);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            es_fail(err, ES_EIO, "waiting for this node's step: poll: %s", strerror(errno));
            return false;
        }
        if (p[0].revents) return true;
        if (p[1].revents & (POLLRDHUP | POLLHUP | POLLERR)) {
            if (step_done_within(g, NSG_GRACE_S)) return true;
            es_fail(err, ES_EIO,
                    "node 0 closed the control connection while this node's step had run "
                    "%.1f s; the step's thread is left behind",
                    nio_now() - t0);
            return false;
        }
        if (timeout_s > 0 && nio_now() - t0 >= timeout_s) {
            es_fail(err, ES_EIO,
                    "this node's step has run for %.1f s (--step-timeout %g): the device or "
                    "a peer is hung; the step's thread is left behind",
                    nio_now() - t0, timeout_s);
            return false;
        }
    }
}

enum es_status nsg_run(int fd, double timeout_s, nsg_step_fn step, void *arg, bool *abandoned,
                       struct es_err *err)
{
    *abandoned = false;
    struct guard *g = calloc(1, sizeof(*g));
    if (!g) return es_fail(err, ES_ENOMEM, "out of memory for a step's guard");
    g->step = step;
    g->arg = arg;
    if (pipe(g->done_pipe) != 0) {
        free(g);
        return es_fail(err, ES_EIO, "a step's guard: pipe: %s", strerror(errno));
    }
    pthread_t thread;
    if (pthread_create(&thread, NULL, guard_main, g) != 0) {
        guard_free(g);
        return es_fail(err, ES_ERR, "a step's guard: cannot start its thread");
    }
    if (!wait_step(g, fd, timeout_s, err)) {
        LOG_W("node", "%s", err->msg);
        abandon(g, thread);
        *abandoned = true;
        return ES_EIO;
    }
    pthread_join(thread, NULL);
    enum es_status st = g->st;
    if (st != ES_OK) *err = g->err;
    guard_free(g);
    return st;
}
