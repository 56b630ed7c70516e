/*
 * test_cpu_pool.c - the worker pool (backend_cpu_pool.c), as the parallel
 * loops and the tp / pp groups use it.
 *
 * Checked: every task of a run is called exactly once, over 1..4 threads;
 * with as many tasks as threads, tasks that wait for each other all run
 * at once, each on its own thread (a barrier of every task, a chain where
 * each task waits for the one claimed after it, and one where it waits
 * for the one before, as pipeline stages do, with a task that returns at
 * once beside them), over many runs; the pool starts size - 1 threads and
 * its destroy leaves none behind. A wait that would hang gives up after
 * WAIT_LIMIT_S and fails the test instead.
 */
#include <dirent.h>
#include <pthread.h>
#include <stdbool.h>
#include <time.h>

#include "backend_cpu_pool.h"
#include "testing.h"

#define MAX_THREADS 4
#define ROUNDS 200
#define WAIT_LIMIT_S 20

enum shape { BARRIER, WAIT_FOR_NEXT, WAIT_FOR_PREVIOUS, FIRST_RETURNS_AT_ONCE };

struct run {
    enum shape shape;
    int n;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int arrived;
    bool done[MAX_THREADS];
    int thread_of[MAX_THREADS];
    int calls[MAX_THREADS];
    bool timed_out;
};

/* Waits under r->mu until `ready` holds; false after WAIT_LIMIT_S. */
static bool wait_until(struct run *r, bool (*ready)(const struct run *, int), int task)
{
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += WAIT_LIMIT_S;
    while (!ready(r, task))
        if (pthread_cond_timedwait(&r->cv, &r->mu, &deadline) != 0) return ready(r, task);
    return true;
}

static bool all_arrived(const struct run *r, int task)
{
    (void)task;
    return r->arrived == r->n - (r->shape == FIRST_RETURNS_AT_ONCE);
}

static bool next_done(const struct run *r, int task)
{
    return task == r->n - 1 || r->done[task + 1];
}

static bool previous_done(const struct run *r, int task)
{
    return task == 0 || r->done[task - 1];
}

static void waiting_task(void *ctx, int task, int thread)
{
    struct run *r = ctx;
    pthread_mutex_lock(&r->mu);
    r->calls[task]++;
    r->thread_of[task] = thread;
    bool ok = true;
    switch (r->shape) {
    case FIRST_RETURNS_AT_ONCE: /* the others meet in a barrier */
        if (task == 0) break;
        r->arrived++;
        pthread_cond_broadcast(&r->cv);
        ok = wait_until(r, all_arrived, task);
        break;
    case BARRIER:
        r->arrived++;
        pthread_cond_broadcast(&r->cv);
        ok = wait_until(r, all_arrived, task);
        break;
    case WAIT_FOR_NEXT:
        ok = wait_until(r, next_done, task);
        break;
    case WAIT_FOR_PREVIOUS:
        ok = wait_until(r, previous_done, task);
        break;
    }
    if (!ok) r->timed_out = true;
    r->done[task] = true;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

/* In a barrier every task held its own thread. */
static void check_own_threads(const struct run *r)
{
    for (int a = 0; a < r->n; a++)
        for (int b = a + 1; b < r->n; b++)
            CHECK(r->thread_of[a] != r->thread_of[b]);
}

static void check_waiting_runs(struct cpool *pool, int n, enum shape shape)
{
    for (int round = 0; round < ROUNDS; round++) {
        struct run r = {.shape = shape, .n = n};
        pthread_mutex_init(&r.mu, NULL);
        pthread_cond_init(&r.cv, NULL);
        cpool_run(pool, waiting_task, &r, n);
        CHECK(!r.timed_out);
        for (int t = 0; t < n; t++)
            CHECK(r.calls[t] == 1 && r.done[t]);
        if (shape == BARRIER) check_own_threads(&r);
        pthread_cond_destroy(&r.cv);
        pthread_mutex_destroy(&r.mu);
        if (r.timed_out) return; /* one report is enough */
    }
}

#define MANY_TASKS 100

static void count_task(void *ctx, int task, int thread)
{
    (void)thread;
    __atomic_fetch_add(&((int *)ctx)[task], 1, __ATOMIC_RELAXED);
}

static void check_each_task_once(struct cpool *pool)
{
    int calls[MANY_TASKS] = {0};
    cpool_run(pool, count_task, calls, MANY_TASKS);
    for (int t = 0; t < MANY_TASKS; t++)
        CHECK(calls[t] == 1);
}

static int threads_of_process(void)
{
    DIR *d = opendir("/proc/self/task");
    if (!d) return -1;
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

int main(void)
{
    int base = threads_of_process();
    for (int n = 1; n <= MAX_THREADS; n++) {
        struct cpool *pool = NULL;
        struct es_err err = {0};
        CHECK(cpool_create(n, &pool, &err) == ES_OK);
        if (!pool) break;
        CHECK(cpool_size(pool) == n);
        CHECK(base < 0 || threads_of_process() == base + n - 1);
        check_each_task_once(pool);
        check_waiting_runs(pool, n, BARRIER);
        check_waiting_runs(pool, n, WAIT_FOR_NEXT);
        check_waiting_runs(pool, n, WAIT_FOR_PREVIOUS);
        check_waiting_runs(pool, n, FIRST_RETURNS_AT_ONCE);
        cpool_destroy(pool);
        CHECK(base < 0 || threads_of_process() == base);
    }
    return test_result("cpu_pool");
}
