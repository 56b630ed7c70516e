/*
 * backend_tp.h - a tensor-parallel group behind the ordinary backend
 * interface.
 *
 * backend_tp_ops is a backend whose load() starts one thread per local
 * rank, each loading an inner backend (CPU or CUDA) with its shard of the
 * weights (backend_opts.tp_rank / tp_size / comm), and whose forward() and
 * copy_blocks() run the same call on every rank in lockstep. Rank 0's
 * results are the group's: it alone samples; the other ranks compute their
 * shards and take part in the collectives.
 *
 * Multi-node: when the group spans processes, node 0's group also mirrors
 * every forward() and copy_blocks() to the other nodes through a
 * struct tp_remote (step_wire.c serialises the batch; node_worker.c is
 * the loop on the other side), before running its own ranks.
 *
 * The engine sees one backend: num_kv_blocks is the smallest over ranks.
 * Ranks other than 0 are handed a batch_result whose rows is NULL: an
 * inner backend must write results on rank 0 only. The replica's
 * num_threads and kv_cache_bytes are split evenly between the local ranks.
 */
#ifndef ES_BACKEND_TP_H
#define ES_BACKEND_TP_H

#include "backend.h"
#include "comm.h"

/* Mirrors the group's calls to ranks in other processes. */
struct tp_remote {
    enum es_status (*send_forward)(struct tp_remote *r, const struct batch *b,
                                   struct es_err *err);
    enum es_status (*send_copy_blocks)(struct tp_remote *r, const int32_t *src,
                                       const int32_t *dst, int n, struct es_err *err);
    /* Called when this process's part of the last sent command has ended
     * (NULL: not needed). */
    void (*step_done)(struct tp_remote *r);
    /* Tells the other nodes to stop, then frees r. */
    void (*close)(struct tp_remote *r);
    void *impl;
};

struct tp_config {
    const struct backend_ops *inner; /* &backend_cpu_ops or &backend_cuda_ops */
    int tp_size;                     /* ranks in the whole group */
    int first_rank;                  /* this process runs ranks [first_rank, +local_ranks) */
    int local_ranks;
    int first_device;                /* CUDA: local rank i uses device first_device + i */
    /* Multi-node (local_ranks < tp_size): how ranks reach each other. */
    const char *master_addr;
    int master_port;
    double connect_timeout_s;
    struct tp_remote *remote;        /* node 0 only: owned by the group once loaded */
};

/* The slice [*lo, *hi) of n items (vocabulary rows, MLP columns) that rank
 * `rank` of `size` owns: n / size each, the last rank also the remainder. */
static inline void tp_slice(int n, int rank, int size, int *lo, int *hi)
{
    int each = n / size;
    *lo = rank * each;
    *hi = rank == size - 1 ? n : *lo + each;
}

/* The backend's load() reads its tp_config from opts->tp (must be set). */
extern const struct backend_ops backend_tp_ops;

#endif
