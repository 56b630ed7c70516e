/*
 * backend_tp.c - a tensor-parallel group of inner backends behind one
 * struct backend (backend_tp.h), for ranks that are threads of this
 * process.
 *
 * Owns: the group's comm handles, one inner backend per local rank, and a
 * pool of exactly one thread per local rank, the calling thread (the main
 * thread in load(), the engine's step runner in forward(), never two at
 * once) being one of them
 * (backend_cpu_pool.h). A call (connect, load, forward, copy_blocks,
 * destroy) is one cpool_run in which local rank i's part is task i.
 * Nothing spins: the machine may be shared. Inside a job the ranks meet
 * only in the inner backend's collectives (and comm_tcp's rendezvous),
 * which wait for every rank: as many tasks as threads, the pool starts
 * every task whatever the started ones wait for, so they all run at once,
 * each on its own thread, and none waits for a task that no thread runs.
 *
 * Threads: which OS thread runs a rank may change from call to call (rank
 * 0 always did: the main thread at load, the engine's threads later). The
 * inner backends rely on none: the CPU backend keeps its state in its
 * struct, the CUDA backend calls cudaSetDevice first thing in load,
 * forward, copy_blocks and destroy, and its streams, cuBLAS handles and
 * NCCL communicator belong to the device, not to a thread; NCCL only
 * needs the ranks of one process to call in at once, as they do. The
 * destroy job frees every rank's backend in one run, so NCCL's teardown,
 * which waits for the peers, finds them all there.
 *
 * Results: rank 0's batch_result is the group's. The other ranks get one
 * whose rows are NULL: they compute their shards and take part in the
 * collectives but must never write a result (the CPU backend samples on
 * rank 0 alone), so a violation faults at once instead of racing rank 0.
 *
 * Errors: every rank's status is collected and the lowest failing rank's
 * error is returned, prefixed with its rank (one that failed on its own
 * before one whose collective failed because of it). A failed forward or
 * copy_blocks may leave the ranks out of step, so the group is then broken
 * and later calls fail at once with ES_EIO (the engine fails the replica
 * on the first error anyway). A rank that fails outside a collective
 * while the others wait in one would hang the group, so a failed rank
 * breaks its comm (comm_ops.break_group, comm_tcp) and the others' waits
 * fail too; comm_local needs none (its only failure, out of memory for
 * staging, hits every rank alike).
 *
 * Budgets: the replica's CPU threads and KV cache bytes are split evenly
 * between the local ranks, so a group uses what one plain replica would
 * and, its KV heads being split too, gets as many KV blocks.
 *
 * Multi-node (local_ranks < tp_size): the ranks' comms are comm_tcp
 * handles, connected in one job of the pool (every rank on its own
 * thread: rank 0's rendezvous waits for every other rank). After the
 * load every rank of every process agrees on the group's KV block count
 * (the smallest) and block size through one all_gather, so node 0 never
 * hands out a block that a remote rank lacks. On node 0 a struct
 * tp_remote is sent every forward() and copy_blocks() before the local
 * ranks run theirs.
 */
#include "backend_tp.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend_cpu_pool.h"
#include "log.h"

#define LOG_TP(...) LOG_I("tp", __VA_ARGS__)

enum tp_job_kind {
    TP_JOB_CONNECT, /* multi-node: each rank's comm_tcp handle, all at once */
    TP_JOB_LOAD,
    TP_JOB_AGREE, /* every rank of the whole group learns the smallest KV block count */
    TP_JOB_FORWARD,
    TP_JOB_COPY_BLOCKS,
    TP_JOB_PP_CONNECT, /* a pipeline stage's ranks join their neighbours (backend_pp.h) */
    TP_JOB_DESTROY,    /* every rank frees its inner backend, all at once */
};

struct tp_job {
    enum tp_job_kind kind;
    /* TP_JOB_LOAD; opts is the template, each rank fills in its own rank */
    const struct model_config *cfg;
    const char *dir;
    const struct backend_opts *opts;
    /* TP_JOB_FORWARD */
    const struct batch *batch;
    struct batch_result *result;
    /* TP_JOB_COPY_BLOCKS */
    const int32_t *src, *dst;
    int n;
    /* TP_JOB_PP_CONNECT */
    struct pp_link *link;
};

struct tp_group;

struct tp_rank {
    struct tp_group *g;
    int local;         /* index among this process's ranks: its task in the pool */
    int rank;          /* index in the whole group */
    struct backend be; /* the inner backend holding this rank's shard */
    bool loaded;
    enum es_status st; /* of the last job; read by the caller after the run */
    struct es_err err;
    /* TP_JOB_AGREE's answer, over the whole group */
    int group_kv_blocks;
    int group_block_size; /* -1: the ranks disagree */
};

struct tp_group {
    struct tp_config cfg; /* a copy; cfg.remote is owned once loaded */
    int n_local;
    struct tp_rank *ranks;         /* [n_local] */
    struct comm **comms;           /* [n_local], rank i's handle */
    struct cpool *pool;            /* n_local threads, the caller's included */
    struct tp_job job;             /* the current job: set by the caller, read by the ranks */
    bool broken;                   /* a forward or copy_blocks failed; caller's thread only */
    struct batch_result no_result; /* rows NULL: what ranks other than 0 get */
};

/* ---- one rank's part of a job ------------------------------------------ */

static enum es_status rank_load(struct tp_rank *r, const struct tp_job *job)
{
    struct tp_group *g = r->g;
    struct backend_opts o = *job->opts;
    o.tp_rank = r->rank;
    o.tp_size = g->cfg.tp_size;
    o.comm = g->comms[r->local];
    o.tp = NULL;
    o.device_id = g->cfg.first_device + r->local;
    r->be = (struct backend){.ops = g->cfg.inner};
    enum es_status st = g->cfg.inner->load(&r->be, job->cfg, job->dir, &o, &r->err);
    r->loaded = st == ES_OK;
    return st;
}

/* Each count goes as two 16-bit halves, which a float holds exactly. */
#define TP_AGREE_FLOATS 4

/* The smallest KV block count and the block size over every rank of the
 * group (in every process), through one all_gather on this rank's comm. */
static enum es_status rank_agree(struct tp_rank *r)
{
    struct tp_group *g = r->g;
    int size = g->cfg.tp_size;
    const struct backend *b = &r->be;
    float mine[TP_AGREE_FLOATS] = {(float)(b->num_kv_blocks >> 16),
                                   (float)(b->num_kv_blocks & 0xffff), (float)(b->block_size >> 16),
                                   (float)(b->block_size & 0xffff)};
    float *all = malloc(sizeof(float) * TP_AGREE_FLOATS * (size_t)size);
    if (!all) return es_fail(&r->err, ES_ENOMEM, "out of memory");
    enum es_status st = ES_OK;
    if (size == 1)
        memcpy(all, mine, sizeof(mine));
    else
        st = g->comms[r->local]->ops->all_gather(g->comms[r->local], mine, all, TP_AGREE_FLOATS,
                                                 &r->err);
    r->group_kv_blocks = b->num_kv_blocks;
    r->group_block_size = b->block_size;
    for (int i = 0; st == ES_OK && i < size; i++) {
        const float *f = all + (size_t)i * TP_AGREE_FLOATS;
        int blocks = (int)f[0] << 16 | (int)f[1];
        int block_size = (int)f[2] << 16 | (int)f[3];
        if (blocks < r->group_kv_blocks) r->group_kv_blocks = blocks;
        if (block_size != b->block_size) r->group_block_size = -1;
    }
    free(all);
    return st;
}

/* After a failure outside a collective: wake the ranks waiting for this
 * one in a collective (comm_tcp); a no-op where the group is broken. */
static void rank_break_group(struct tp_rank *r)
{
    struct comm *c = r->g->comms ? r->g->comms[r->local] : NULL;
    if (c && c->ops->break_group) c->ops->break_group(c);
}

static void rank_run(struct tp_rank *r, const struct tp_job *job)
{
    struct tp_group *g = r->g;
    const struct tp_config *c = &g->cfg;
    es_err_clear(&r->err);
    switch (job->kind) {
    case TP_JOB_CONNECT:
        r->st = comm_tcp_create(r->rank, c->tp_size, c->master_addr, c->master_port,
                                c->connect_timeout_s, &g->comms[r->local], &r->err);
        break;
    case TP_JOB_LOAD:
        r->st = rank_load(r, job);
        break;
    case TP_JOB_AGREE:
        r->st = rank_agree(r);
        break;
    case TP_JOB_FORWARD:
        r->st = r->be.ops->forward(&r->be, job->batch, r->local == 0 ? job->result : &g->no_result,
                                   &r->err);
        break;
    case TP_JOB_COPY_BLOCKS:
        r->st = r->be.ops->copy_blocks(&r->be, job->src, job->dst, job->n, &r->err);
        break;
    case TP_JOB_PP_CONNECT:
        r->st = r->be.ops->pp_connect ? r->be.ops->pp_connect(&r->be, job->link, &r->err) : ES_OK;
        break;
    case TP_JOB_DESTROY:
        if (r->loaded && r->be.ops->destroy) r->be.ops->destroy(&r->be);
        r->loaded = false;
        r->st = ES_OK;
        break;
    }
    if (r->st != ES_OK) rank_break_group(r);
}

static void rank_task(void *ctx, int task, int thread)
{
    (void)thread;
    struct tp_group *g = ctx;
    rank_run(&g->ranks[task], &g->job);
}

/* ---- the group ------------------------------------------------------------ */

/* Runs `job` on every local rank at once; returns when all are done. */
static void group_run(struct tp_group *g, const struct tp_job *job)
{
    g->job = *job;
    cpool_run(g->pool, rank_task, g, g->n_local);
}

/* The lowest failing rank's status and message, ES_OK when none failed.
 * A rank whose own call failed wins over one that failed with ES_EIO,
 * which is how a collective fails once a peer broke the group: the cause
 * over its echo. */
static enum es_status group_status(const struct tp_group *g, struct es_err *err)
{
    const struct tp_rank *failed = NULL;
    for (int i = 0; i < g->n_local; i++) {
        const struct tp_rank *r = &g->ranks[i];
        if (r->st != ES_OK && (!failed || (failed->st == ES_EIO && r->st != ES_EIO))) failed = r;
    }
    if (!failed) return ES_OK;
    return es_fail(err, failed->st, "tp rank %d of %d: %s", failed->rank, g->cfg.tp_size,
                   failed->err.msg[0] ? failed->err.msg : es_status_str(failed->st));
}

/* Frees the inner backends (all at once, in the pool), the pool's
 * threads, the comms and g; not cfg.remote. Safe on a partly built group
 * (a rank is loaded only through the pool). */
static void group_free(struct tp_group *g)
{
    if (!g) return;
    if (g->pool) {
        struct tp_job job = {.kind = TP_JOB_DESTROY};
        group_run(g, &job);
        cpool_destroy(g->pool);
    }
    for (int i = 0; g->comms && i < g->n_local; i++)
        if (g->comms[i]) g->comms[i]->ops->destroy(g->comms[i]);
    free(g->comms);
    free(g->ranks);
    free(g);
}

static bool group_is_local(const struct tp_config *c)
{
    return c->local_ranks == c->tp_size && c->first_rank == 0;
}

/* The comm handles of this process's ranks: shared memory when the whole
 * group is here, TCP to the other processes otherwise, created at once
 * (one job): global rank 0's rendezvous returns only when every rank,
 * this process's included, has joined, so one after the other would
 * deadlock. Each rendezvous is bounded by connect_timeout_s. */
static enum es_status group_connect(struct tp_group *g, struct es_err *err)
{
    const struct tp_config *c = &g->cfg;
    if (group_is_local(c)) return comm_local_create(c->tp_size, g->comms, err);
    if (!c->master_addr || c->master_port <= 0)
        return es_fail(err, ES_EINVAL, "tp backend: ranks %d..%d of %d need a master address",
                       c->first_rank, c->first_rank + c->local_ranks - 1, c->tp_size);
    LOG_TP("ranks %d..%d of %d: connecting to the group at %s:%d", c->first_rank,
           c->first_rank + c->local_ranks - 1, c->tp_size, c->master_addr, c->master_port);
    struct tp_job job = {.kind = TP_JOB_CONNECT};
    group_run(g, &job);
    return group_status(g, err);
}

static enum es_status check_config(const struct tp_config *c, struct es_err *err)
{
    if (!c || !c->inner)
        return es_fail(err, ES_EINVAL, "tp backend: no tp_config or no inner backend");
    if (c->tp_size < 1 || c->local_ranks < 1 || c->first_rank < 0 ||
        c->first_rank + c->local_ranks > c->tp_size)
        return es_fail(err, ES_EINVAL, "tp backend: ranks [%d, +%d) of a group of %d",
                       c->first_rank, c->local_ranks, c->tp_size);
    if (c->local_ranks > CPOOL_MAX_THREADS) /* one thread per rank, or the group could hang */
        return es_fail(err, ES_EINVAL, "tp backend: %d ranks in one process (at most %d)",
                       c->local_ranks, CPOOL_MAX_THREADS);
    return ES_OK;
}

/* The replica's threads and KV bytes, split between the local ranks. */
static struct backend_opts rank_opts_template(const struct backend_opts *opts, int n_local)
{
    struct backend_opts o = *opts;
    int threads = opts->num_threads;
    if (threads <= 0) {
        long online = sysconf(_SC_NPROCESSORS_ONLN);
        threads = online > 0 ? (int)online : 1;
    }
    o.num_threads = threads / n_local > 0 ? threads / n_local : 1;
    o.kv_cache_bytes = opts->kv_cache_bytes / (size_t)n_local;
    return o;
}

/* ---- backend_ops ----------------------------------------------------------- */

static enum es_status tp_load(struct backend *be, const struct model_config *cfg, const char *dir,
                              const struct backend_opts *opts, struct es_err *err)
{
    enum es_status st = check_config(opts->tp, err);
    if (st != ES_OK) return st;
    struct tp_group *g = calloc(1, sizeof(*g));
    if (!g) return es_fail(err, ES_ENOMEM, "tp backend: out of memory");
    g->cfg = *opts->tp;
    g->cfg.remote = NULL; /* the caller's until the group is loaded */
    g->n_local = g->cfg.local_ranks;
    g->ranks = calloc((size_t)g->n_local, sizeof(*g->ranks));
    g->comms = calloc((size_t)g->n_local, sizeof(*g->comms));
    if (!g->ranks || !g->comms) {
        st = es_fail(err, ES_ENOMEM, "tp backend: out of memory");
        goto err;
    }
    for (int i = 0; i < g->n_local; i++)
        g->ranks[i] = (struct tp_rank){.g = g, .local = i, .rank = g->cfg.first_rank + i};
    if ((st = cpool_create(g->n_local, &g->pool, err)) != ES_OK) {
        st = es_wrap(err, ES_ERR, "tp backend: "); /* as a failed pthread_create was */
        goto err;
    }
    if ((st = group_connect(g, err)) != ES_OK) goto err;

    struct backend_opts tmpl = rank_opts_template(opts, g->n_local);
    struct tp_job job = {.kind = TP_JOB_LOAD, .cfg = cfg, .dir = dir, .opts = &tmpl};
    group_run(g, &job);
    if ((st = group_status(g, err)) != ES_OK) goto err;

    job = (struct tp_job){.kind = TP_JOB_AGREE};
    group_run(g, &job);
    if ((st = group_status(g, err)) != ES_OK) goto err;
    const struct tp_rank *first = &g->ranks[0];
    if (first->group_block_size < 0) {
        st = es_fail(err, ES_EINVAL, "tp backend: the ranks disagree on the KV block size");
        goto err;
    }
    be->impl = g;
    be->cfg = first->be.cfg;
    be->block_size = first->be.block_size;
    be->num_kv_blocks = first->group_kv_blocks;
    g->cfg.remote = opts->tp->remote;
    if (group_is_local(&g->cfg))
        LOG_TP("tensor-parallel group of %d ranks (%s), %d threads each, %d KV blocks",
               g->cfg.tp_size, g->cfg.inner->name, tmpl.num_threads, be->num_kv_blocks);
    else
        LOG_TP("tensor-parallel group of %d ranks (%s), ranks %d..%d here, %d threads each, "
               "%d KV blocks",
               g->cfg.tp_size, g->cfg.inner->name, g->cfg.first_rank,
               g->cfg.first_rank + g->n_local - 1, tmpl.num_threads, be->num_kv_blocks);
    return ES_OK;
err:
    group_free(g);
    return st;
}

/* The other nodes' ranks took part in the job just run (multi-node). */
static void remote_step_done(struct tp_group *g)
{
    if (g->cfg.remote && g->cfg.remote->step_done) g->cfg.remote->step_done(g->cfg.remote);
}

static enum es_status tp_forward(struct backend *be, const struct batch *batch,
                                 struct batch_result *result, struct es_err *err)
{
    struct tp_group *g = be->impl;
    if (g->broken)
        return es_fail(err, ES_EIO, "tensor-parallel group broken by an earlier failure");
    enum es_status st = ES_OK;
    if (g->cfg.remote) st = g->cfg.remote->send_forward(g->cfg.remote, batch, err);
    if (st == ES_OK) {
        struct tp_job job = {.kind = TP_JOB_FORWARD, .batch = batch, .result = result};
        group_run(g, &job);
        st = group_status(g, err);
        remote_step_done(g);
    }
    if (st != ES_OK) g->broken = true;
    return st;
}

static enum es_status tp_copy_blocks(struct backend *be, const int32_t *src, const int32_t *dst,
                                     int n, struct es_err *err)
{
    struct tp_group *g = be->impl;
    if (g->broken)
        return es_fail(err, ES_EIO, "tensor-parallel group broken by an earlier failure");
    enum es_status st = ES_OK;
    if (g->cfg.remote) st = g->cfg.remote->send_copy_blocks(g->cfg.remote, src, dst, n, err);
    if (st == ES_OK) {
        struct tp_job job = {.kind = TP_JOB_COPY_BLOCKS, .src = src, .dst = dst, .n = n};
        group_run(g, &job);
        st = group_status(g, err);
        remote_step_done(g);
    }
    if (st != ES_OK) g->broken = true;
    return st;
}

/* Each rank joins the same column of the pipeline as its rank index (the
 * inner backend knows its rank); with --nnodes only this node's ranks
 * take part, and a pipeline never spans nodes (backend_pp.h). */
static enum es_status tp_pp_connect(struct backend *be, struct pp_link *link, struct es_err *err)
{
    struct tp_group *g = be->impl;
    struct tp_job job = {.kind = TP_JOB_PP_CONNECT, .link = link};
    group_run(g, &job);
    return group_status(g, err);
}

static void tp_destroy(struct backend *be)
{
    if (!be || !be->impl) return;
    struct tp_group *g = be->impl;
    if (g->cfg.remote) g->cfg.remote->close(g->cfg.remote);
    group_free(g);
    be->impl = NULL;
}

const struct backend_ops backend_tp_ops = {
    .name = "tp",
    .load = tp_load,
    .forward = tp_forward,
    .copy_blocks = tp_copy_blocks,
    .pp_connect = tp_pp_connect,
    .destroy = tp_destroy,
};
