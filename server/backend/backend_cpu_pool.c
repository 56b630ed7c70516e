/*
 * backend_cpu_pool.c - a fixed pool of pthreads for parallel loops (the
 * CPU backend's matmul rows, attention heads, sampled rows) and for the
 * ranks and stages of tp and pp groups (contract in backend_cpu_pool.h).
 *
 * Owns its threads and one job slot. A run publishes (fn, ctx, n_tasks)
 * under the mutex and bumps a generation number; workers (and the caller)
 * claim task indexes from an atomic counter until none are left; the
 * caller waits until every worker has checked out of the generation.
 * Workers sleep on a condition variable between runs (the machine may be
 * shared, so no spinning). It never allocates after creation. A worker
 * leaves work() only when the counter is past the last task, and the
 * caller returns only when every worker has left: the header's guarantee
 * for tasks that wait for each other rests on these two.
 */
#include "backend_cpu_pool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

struct cpool {
    int n_threads;      /* including the caller */
    pthread_t *threads; /* [n_threads - 1] */
    int n_started;
    pthread_mutex_t mu;
    pthread_cond_t wake;
    pthread_cond_t done;
    unsigned long generation; /* bumped per run; guarded by mu */
    int busy;                 /* workers still inside the current run; guarded by mu */
    int stop;
    cpool_fn fn;
    void *ctx;
    int n_tasks;
    atomic_int next_task;
};

struct worker_arg {
    struct cpool *pool;
    int index;
};

static void work(struct cpool *p, int thread)
{
    for (;;) {
        int t = atomic_fetch_add_explicit(&p->next_task, 1, memory_order_relaxed);
        if (t >= p->n_tasks) return;
        p->fn(p->ctx, t, thread);
    }
}

static void *worker_main(void *argp)
{
    struct worker_arg *arg = argp;
    struct cpool *p = arg->pool;
    int index = arg->index;
    free(arg);
    unsigned long seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->stop && p->generation == seen)
            pthread_cond_wait(&p->wake, &p->mu);
        if (p->stop) break;
        seen = p->generation;
        pthread_mutex_unlock(&p->mu);
        work(p, index);
        pthread_mutex_lock(&p->mu);
        if (--p->busy == 0) pthread_cond_signal(&p->done);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

enum es_status cpool_create(int n_threads, struct cpool **out, struct es_err *err)
{
    *out = NULL;
    if (n_threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = n > 0 ? (int)n : 1;
    }
    if (n_threads > CPOOL_MAX_THREADS) n_threads = CPOOL_MAX_THREADS;
    struct cpool *p = calloc(1, sizeof(*p));
    if (!p) return es_fail(err, ES_ENOMEM, "cpu pool: out of memory");
    p->n_threads = n_threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done, NULL);
    p->threads = calloc((size_t)n_threads, sizeof(pthread_t));
    if (!p->threads) goto err;
    for (int i = 1; i < n_threads; i++) {
        struct worker_arg *arg = malloc(sizeof(*arg));
        if (!arg) goto err;
        *arg = (struct worker_arg){.pool = p, .index = i};
        if (pthread_create(&p->threads[i - 1], NULL, worker_main, arg) != 0) {
            free(arg);
            goto err;
        }
        p->n_started++;
    }
    *out = p;
    return ES_OK;
err:
    cpool_destroy(p);
    return es_fail(err, ES_ENOMEM, "cpu pool: cannot start %d threads", n_threads);
}

void cpool_destroy(struct cpool *p)
{
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->n_started; i++)
        pthread_join(p->threads[i], NULL);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->done);
    pthread_mutex_destroy(&p->mu);
    free(p->threads);
    free(p);
}

int cpool_size(const struct cpool *p)
{
    return p->n_threads;
}

void cpool_run(struct cpool *p, cpool_fn fn, void *ctx, int n_tasks)
{
    if (n_tasks <= 0) return;
    if (p->n_started == 0 || n_tasks == 1) {
        for (int t = 0; t < n_tasks; t++)
            fn(ctx, t, 0);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->ctx = ctx;
    p->n_tasks = n_tasks;
    atomic_store_explicit(&p->next_task, 0, memory_order_relaxed);
    p->busy = p->n_started;
    p->generation++;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    work(p, 0);
    pthread_mutex_lock(&p->mu);
    while (p->busy > 0)
        pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}
