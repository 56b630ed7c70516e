/*
 * job.c - one generation HTTP request and the engine requests it fans out
 * to (one per prompt, each with n choices), and the handshake between the
 * engine thread and the suspended connection.
 *
 * Owns the job's memory and its references to the requests. A job lives
 * until both sides have let go: the HTTP side (response sent or client
 * gone: job_conn_done) and the engine (every submitted request finished,
 * seen in job_on_update), so that a late on_update never finds it freed.
 * job_on_update runs on the
 * engine thread: it must only take job->lock, resume, and return.
 */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>
#include <time.h>
#include <string.h>

#include <microhttpd.h>

#include "api.h"
#include "log.h"

struct api_job *job_create(struct api_server *srv, enum job_kind kind, int n_reqs)
{
    struct api_job *job = calloc(1, sizeof(*job));
    if (!job) return NULL;
    job->srv = srv;
    job->kind = kind;
    job->fd = -1;
    job->created = (long)time(NULL);
    /* Unique across restarts: random bits plus a counter. */
    uint64_t id = atomic_fetch_add(&srv->next_id, 1) + 1, rnd = 0;
    if (getrandom(&rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd)) rnd = (uint64_t)time(NULL);
    snprintf(job->id, sizeof(job->id), "%s-%016llx%08llx", kind == JOB_CHAT ? "chatcmpl" : "cmpl",
             (unsigned long long)rnd, (unsigned long long)(id & 0xffffffffu));
    job->n_reqs = n_reqs;
    job->reqs = calloc((size_t)n_reqs, sizeof(*job->reqs));
    job->prompt_texts = calloc((size_t)n_reqs, sizeof(*job->prompt_texts));
    job->req_done = calloc((size_t)n_reqs, sizeof(*job->req_done));
    if (!job->reqs || !job->prompt_texts || !job->req_done) {
        free(job->reqs);
        free(job->prompt_texts);
        free(job->req_done);
        free(job);
        return NULL;
    }
    pthread_mutex_init(&job->lock, NULL);
    atomic_fetch_add(&srv->http_inflight, 1);
    pthread_mutex_lock(&srv->jobs_lock);
    job->next = srv->jobs;
    if (srv->jobs) srv->jobs->prev = job;
    srv->jobs = job;
    pthread_mutex_unlock(&srv->jobs_lock);
    return job;
}

static void job_free(struct api_job *job)
{
    struct api_server *srv = job->srv;
    pthread_mutex_lock(&srv->jobs_lock);
    if (job->prev)
        job->prev->next = job->next;
    else
        srv->jobs = job->next;
    if (job->next) job->next->prev = job->prev;
    pthread_mutex_unlock(&srv->jobs_lock);

    for (int i = 0; i < job->n_reqs; i++) {
        if (job->reqs[i]) req_release(job->reqs[i]);
        sb_free(&job->prompt_texts[i]);
    }
    free(job->reqs);
    free(job->prompt_texts);
    free(job->req_done);
    free(job->cursors);
    sb_free(&job->out);
    pthread_mutex_destroy(&job->lock);
    free(job);
}

/* job->lock held. Wakes the connection if it is parked. */
static void wake(struct api_job *job)
{
    if (job->suspended && job->conn) {
        job->suspended = false;
        MHD_resume_connection(job->conn);
    }
}

bool job_submit(struct api_job *job, struct api_error *e)
{
    struct api_server *srv = job->srv;
    for (int i = 0; i < job->n_reqs; i++) {
        struct request *req = job->reqs[i];
        req->on_update = job_on_update;
        req->on_update_ctx = job;
        /* job ids are 35 characters; the request id adds the prompt index */
        snprintf(req->request_id, sizeof(req->request_id), "%.36s-%d", job->id, i % 100000);
        if (req->t_arrival == 0) req->t_arrival = req_now();
        pthread_mutex_lock(&job->lock);
        job->n_unfinished++;
        pthread_mutex_unlock(&job->lock);
        struct es_err err = {{0}};
        enum es_status st = router_submit(srv->router, req, NULL, &err);
        if (st != ES_OK) {
            pthread_mutex_lock(&job->lock);
            job->n_unfinished--;
            job->req_done[i] = true; /* never reached the engine */
            for (int j = i + 1; j < job->n_reqs; j++)
                job->req_done[j] = true;
            pthread_mutex_unlock(&job->lock);
            for (int j = 0; j < i; j++)
                req_abort(job->reqs[j]);
            if (st == ES_EFULL)
                api_error_set(e, 429, err.msg[0] ? err.msg : "the waiting queue is full");
            else if (st == ES_EINVAL || st == ES_ERANGE)
                api_error_set(e, 400, err.msg[0] ? err.msg : "request can never fit");
            else
                api_error_set(e, 503, err.msg[0] ? err.msg : "the engine is not accepting work");
            return false;
        }
    }
    return true;
}

void job_on_update(struct request *req, void *ctx)
{
    struct api_job *job = ctx;
    bool finished = req_is_finished(req);
    bool free_it = false;
    pthread_mutex_lock(&job->lock);
    if (finished) {
        for (int i = 0; i < job->n_reqs; i++) {
            if (job->reqs[i] == req && !job->req_done[i]) {
                job->req_done[i] = true;
                job->n_unfinished--;
                metrics_observe_request(job->srv->metrics, req);
                /* Only the update that finishes the last request may free. */
                free_it = job->conn_done && job->n_unfinished == 0;
            }
        }
    }
    if (job->opts.stream || job->n_unfinished == 0) wake(job);
    pthread_mutex_unlock(&job->lock);
    if (free_it) job_free(job);
}

bool job_all_finished(struct api_job *job)
{
    pthread_mutex_lock(&job->lock);
    bool done = job->n_unfinished == 0;
    pthread_mutex_unlock(&job->lock);
    return done;
}

bool job_suspend_unless_finished(struct api_job *job)
{
    pthread_mutex_lock(&job->lock);
    /* While closing, answer with what there is: MHD must not be stopped
     * with a parked connection. */
    bool suspend = job->n_unfinished > 0 && !atomic_load(&job->srv->closing);
    if (suspend) {
        job->suspended = true;
        MHD_suspend_connection(job->conn);
    }
    pthread_mutex_unlock(&job->lock);
    return suspend;
}

void job_conn_done(struct api_job *job, bool aborted)
{
    if (aborted) {
        for (int i = 0; i < job->n_reqs; i++)
            if (job->reqs[i]) req_abort(job->reqs[i]);
    }
    atomic_fetch_sub(&job->srv->http_inflight, 1);
    pthread_mutex_lock(&job->lock);
    job->conn_done = true;
    job->conn = NULL;
    job->suspended = false;
    bool free_it = job->n_unfinished == 0;
    pthread_mutex_unlock(&job->lock);
    if (free_it) job_free(job);
}

void job_resume_all(struct api_server *srv, bool abort)
{
    pthread_mutex_lock(&srv->jobs_lock);
    for (struct api_job *job = srv->jobs; job; job = job->next) {
        if (abort)
            for (int i = 0; i < job->n_reqs; i++)
                if (job->reqs[i]) req_abort(job->reqs[i]);
        pthread_mutex_lock(&job->lock);
        wake(job);
        pthread_mutex_unlock(&job->lock);
    }
    pthread_mutex_unlock(&srv->jobs_lock);
}

void job_check_disconnects(struct api_server *srv)
{
    pthread_mutex_lock(&srv->jobs_lock);
    for (struct api_job *job = srv->jobs; job; job = job->next) {
        pthread_mutex_lock(&job->lock);
        bool gone = false;
        if (job->suspended && job->conn && job->fd >= 0 && job->n_unfinished > 0) {
            struct pollfd p = {.fd = job->fd, .events = POLLRDHUP};
            if (poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR))) gone = true;
        }
        pthread_mutex_unlock(&job->lock);
        if (gone) {
            LOG_D("http", "%s: client went away while waiting", job->id);
            for (int i = 0; i < job->n_reqs; i++)
                if (job->reqs[i]) req_abort(job->reqs[i]);
        }
    }
    pthread_mutex_unlock(&srv->jobs_lock);
}
