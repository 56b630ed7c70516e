/*
 * backend_cpu_pool.h - a fixed pool of worker threads: the CPU backend's
 * parallel loops, the CUDA backend's host sampling, and the ranks of a
 * tensor-parallel group and stages of a pipeline (backend_tp.c,
 * backend_pp.c), which are tasks of a pool of their own.
 *
 * cpool_run(fn, ctx, n_tasks) calls fn(ctx, task, thread) once for every
 * task in [0, n_tasks), spread over the pool's threads (the caller is
 * thread 0 and works too), and returns when all are done. `thread` is in
 * [0, cpool_size()) and indexes per-thread scratch. Which thread runs a
 * task is not fixed: a task must not rely on it. One run at a time: the
 * pool belongs to one owner, driven by one thread at a time.
 *
 * Tasks that wait for each other: with n_tasks <= cpool_size() every task
 * of a run is started whatever the started ones wait for. A thread takes
 * a new task only when it is outside one, and leaves the run only once
 * every task is taken; so while a task is untaken, at most n_tasks - 1
 * threads are inside tasks and a free one, not waiting on any task, takes
 * it. Tasks that meet in a barrier or a collective thus all run at once,
 * each on its own thread. With more tasks than threads this does not hold.
 */
#ifndef ES_BACKEND_CPU_POOL_H
#define ES_BACKEND_CPU_POOL_H

#include "status.h"

#define CPOOL_MAX_THREADS 1024 /* cpool_create's cap, the caller included */

typedef void (*cpool_fn)(void *ctx, int task, int thread);

struct cpool;

/* n_threads <= 0: one per online core; at most CPOOL_MAX_THREADS. */
enum es_status cpool_create(int n_threads, struct cpool **out, struct es_err *err);
void cpool_destroy(struct cpool *p);
int cpool_size(const struct cpool *p);
void cpool_run(struct cpool *p, cpool_fn fn, void *ctx, int n_tasks);

#endif
