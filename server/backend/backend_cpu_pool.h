/*
 * backend_cpu_pool.h - the CPU backend's fixed pool of worker threads.
 *
 * cpool_run(fn, ctx, n_tasks) calls fn(ctx, task, thread) once for every
 * task in [0, n_tasks), spread over the pool's threads (the caller is
 * thread 0 and works too), and returns when all are done. `thread` is in
 * [0, cpool_size()) and indexes per-thread scratch. One run at a time:
 * the pool belongs to one backend, driven by one engine thread.
 */
#ifndef ES_BACKEND_CPU_POOL_H
#define ES_BACKEND_CPU_POOL_H

#include "status.h"

typedef void (*cpool_fn)(void *ctx, int task, int thread);

struct cpool;

/* n_threads <= 0: one per online core. */
enum es_status cpool_create(int n_threads, struct cpool **out, struct es_err *err);
void cpool_destroy(struct cpool *p);
int cpool_size(const struct cpool *p);
void cpool_run(struct cpool *p, cpool_fn fn, void *ctx, int n_tasks);

#endif
