/*
 * comm_local.c - collectives between ranks that are threads of one
 * process (comm.h): shared staging memory and a generation-counted
 * barrier.
 *
 * Owns one group (two staging buffers, the barrier) shared by the `size`
 * rank handles; the last handle destroyed frees it. Each collective copies
 * its input into a staging buffer, meets the other ranks at the barrier,
 * and reads what it needs. Calls alternate between the two buffers: a
 * rank can only write buffer p again two calls later, by which time every
 * rank has passed the next call's first barrier and so finished reading
 * p, which is why no barrier closes a call. Sums run over ranks 0, 1, ...
 * in order, so every rank gets bit-identical, deterministic results.
 *
 * A staging buffer grows (under the lock, by the first rank to see the
 * larger size) only when a call needs more than any before; otherwise no
 * call allocates. Waiting ranks sleep on a condition variable: the machine
 * may be shared, so no spinning. A thread-local group has no peer to lose
 * (a rank that never arrives blocks the others, which is why the group
 * runs every step in lockstep); its one failure, no memory for a larger
 * staging buffer, is sticky: the first rank of the call meets it, before
 * any barrier, and every rank's later calls fail too, so no rank is left
 * waiting for one that returned.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "comm.h"

struct local_group {
    int size;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int arrived;              /* ranks at the barrier now; guarded by mu */
    unsigned long generation; /* bumped when the last rank arrives; guarded by mu */
    void *stage[2];           /* staging buffers, alternating per call */
    size_t stage_bytes[2];    /* their capacities; guarded by mu */
    int out_of_memory;        /* a staging buffer could not grow; guarded by mu */
    int handles_alive;        /* guarded by mu */
};

struct local_rank {
    struct comm comm;
    struct local_group *g;
    unsigned long calls; /* collectives this rank made: picks the staging buffer */
};

static struct local_rank *rank_of(struct comm *c)
{
    return c->impl;
}

static void group_barrier(struct local_group *g)
{
    pthread_mutex_lock(&g->mu);
    unsigned long gen = g->generation;
    if (++g->arrived == g->size) {
        g->arrived = 0;
        g->generation++;
        pthread_cond_broadcast(&g->cv);
    } else {
        while (g->generation == gen)
            pthread_cond_wait(&g->cv, &g->mu);
    }
    pthread_mutex_unlock(&g->mu);
}

/* The staging buffer of this call, at least `bytes` large. */
static enum es_status stage_for_call(struct local_rank *lr, size_t bytes, void **out,
                                     struct es_err *err)
{
    struct local_group *g = lr->g;
    int p = (int)(lr->calls++ & 1);
    pthread_mutex_lock(&g->mu);
    if (!g->out_of_memory && g->stage_bytes[p] < bytes) {
        /* No rank reads or writes buffer p now: all of them finished the
         * call two back, and the others of this call wait for this lock. */
        free(g->stage[p]);
        g->stage[p] = malloc(bytes);
        g->stage_bytes[p] = g->stage[p] ? bytes : 0;
        g->out_of_memory = !g->stage[p];
    }
    *out = g->out_of_memory ? NULL : g->stage[p];
    pthread_mutex_unlock(&g->mu);
    if (!*out)
        return es_fail(err, ES_ENOMEM, "comm_local: out of memory for %zu staging bytes", bytes);
    return ES_OK;
}

static enum es_status local_all_reduce_sum(struct comm *c, float *buf, size_t n, struct es_err *err)
{
    struct local_rank *lr = rank_of(c);
    struct local_group *g = lr->g;
    int size = g->size;
    if (size == 1 || n == 0) return ES_OK;
    float *stage; /* [size][n] */
    void *p;
    enum es_status st = stage_for_call(lr, sizeof(float) * n * (size_t)size, &p, err);
    if (st != ES_OK) return st;
    stage = p;
    memcpy(stage + (size_t)c->rank * n, buf, sizeof(float) * n);
    group_barrier(g);
    if (n < COMM_LOCAL_SPLIT_FLOATS) {
        for (size_t i = 0; i < n; i++) {
            float s = stage[i];
            for (int r = 1; r < size; r++)
                s += stage[(size_t)r * n + i];
            buf[i] = s;
        }
        return ES_OK;
    }
    /* Rank r sums elements [lo, hi) into rank 0's row: only it touches
     * them until the second barrier. */
    size_t lo = n * (size_t)c->rank / (size_t)size, hi = n * (size_t)(c->rank + 1) / (size_t)size;
    for (size_t i = lo; i < hi; i++) {
        float s = stage[i];
        for (int r = 1; r < size; r++)
            s += stage[(size_t)r * n + i];
        stage[i] = s;
    }
    group_barrier(g);
    memcpy(buf, stage, sizeof(float) * n);
    return ES_OK;
}

static enum es_status local_all_gather(struct comm *c, const float *send, float *recv, size_t n,
                                       struct es_err *err)
{
    struct local_rank *lr = rank_of(c);
    size_t total = n * (size_t)lr->g->size;
    if (lr->g->size == 1) {
        memmove(recv, send, sizeof(float) * n);
        return ES_OK;
    }
    void *p;
    enum es_status st = stage_for_call(lr, sizeof(float) * (total ? total : 1), &p, err);
    if (st != ES_OK) return st;
    float *stage = p;
    memcpy(stage + (size_t)c->rank * n, send, sizeof(float) * n);
    group_barrier(lr->g);
    memcpy(recv, stage, sizeof(float) * total);
    return ES_OK;
}

static enum es_status local_broadcast(struct comm *c, void *buf, size_t bytes, int root,
                                      struct es_err *err)
{
    struct local_rank *lr = rank_of(c);
    if (root < 0 || root >= lr->g->size)
        return es_fail(err, ES_EINVAL, "comm_local: broadcast root %d of %d ranks", root,
                       lr->g->size);
    if (lr->g->size == 1) return ES_OK;
    void *stage;
    enum es_status st = stage_for_call(lr, bytes ? bytes : 1, &stage, err);
    if (st != ES_OK) return st;
    if (c->rank == root) memcpy(stage, buf, bytes);
    group_barrier(lr->g);
    if (c->rank != root) memcpy(buf, stage, bytes);
    return ES_OK;
}

static enum es_status local_barrier(struct comm *c, struct es_err *err)
{
    (void)err;
    group_barrier(rank_of(c)->g);
    return ES_OK;
}

static void group_free(struct local_group *g)
{
    pthread_cond_destroy(&g->cv);
    pthread_mutex_destroy(&g->mu);
    free(g->stage[0]);
    free(g->stage[1]);
    free(g);
}

static void local_destroy(struct comm *c)
{
    if (!c) return;
    struct local_rank *lr = rank_of(c);
    struct local_group *g = lr->g;
    pthread_mutex_lock(&g->mu);
    int last = --g->handles_alive == 0;
    pthread_mutex_unlock(&g->mu);
    free(lr);
    if (last) group_free(g);
}

static const struct comm_ops local_ops = {
    .all_reduce_sum = local_all_reduce_sum,
    .all_gather = local_all_gather,
    .broadcast = local_broadcast,
    .barrier = local_barrier,
    .destroy = local_destroy,
};

enum es_status comm_local_create(int size, struct comm **out, struct es_err *err)
{
    if (size < 1) return es_fail(err, ES_EINVAL, "comm_local: group of %d ranks", size);
    struct local_group *g = calloc(1, sizeof(*g));
    if (!g) return es_fail(err, ES_ENOMEM, "comm_local: out of memory");
    g->size = size;
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, NULL);
    for (int r = 0; r < size; r++) {
        struct local_rank *lr = calloc(1, sizeof(*lr));
        if (!lr) {
            for (int i = 0; i < r; i++) {
                free(out[i]->impl);
                out[i] = NULL;
            }
            group_free(g);
            return es_fail(err, ES_ENOMEM, "comm_local: out of memory");
        }
        lr->g = g;
        lr->comm = (struct comm){.ops = &local_ops, .rank = r, .size = size, .impl = lr};
        out[r] = &lr->comm;
    }
    g->handles_alive = size;
    return ES_OK;
}
