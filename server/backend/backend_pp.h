/*
 * backend_pp.h - a pipeline-parallel group behind the ordinary backend
 * interface.
 *
 * backend_pp_ops is a backend whose load() starts one thread per stage,
 * each loading a stage backend (the CPU backend, or a backend_tp group of
 * them for TP x PP) that holds a contiguous range of the model's layers
 * (backend_opts.pp_stage / pp_size, pp_layer_range) and only their KV
 * cache. forward() splits the step's batch by sequences into micro-batches
 * and streams them through the stages: stage s runs micro-batch m while
 * stage s + 1 runs m - 1, the residual stream passing between them in
 * batch.hidden_out / hidden_in. The last stage alone computes logits and
 * samples; the results come back in the batch's row order. copy_blocks()
 * runs on every stage's cache. A stage backend with a pp_connect op may
 * pass the stream device to device instead (the CUDA backend's NCCL
 * send/recv); the micro-batch order and the waits are the same.
 *
 * The engine sees one backend: num_kv_blocks is the smallest over the
 * stages, and the replica's num_threads and kv_cache_bytes are split
 * evenly between them (a stage holding 1/K of the layers gets about as
 * many KV blocks from 1/K of the bytes as the whole model from all).
 * Over nodes (pp_config.nodes), the stages of the other nodes are
 * node_stage.h backends in node 0's pipeline: their threads send the
 * micro-batch and wait for the stream to come back.
 */
#ifndef ES_BACKEND_PP_H
#define ES_BACKEND_PP_H

#include "backend.h"

struct pp_config {
    /* &backend_cpu_ops, or &backend_tp_ops (then tp is each stage's
     * group: stage s gets a copy whose first_device moves on by
     * s * local_ranks) */
    const struct backend_ops *stage_ops;
    const struct tp_config *tp;
    int pp_size;       /* stages, 1 .. the model's num_layers */
    int micro_batches; /* most micro-batches per step; 0 = the group's stages */
    /* Pipelines over nodes; all zero within one process. This process
     * runs the stages [first_stage, first_stage + local_stages) (0: all).
     * On node 0, `nodes` is the channel to the other nodes (node_worker.h;
     * owned by the group once loaded): node r runs the stages
     * [(r - 1) stages_per_node, r stages_per_node) and node 0 the last
     * ones; the group then holds one node_stage.h backend per other node
     * before its own stages. On another node, the group is that node's
     * stages alone: its first takes the stream from the batch's
     * hidden_in, its last writes it to the batch's hidden_out. */
    int first_stage, local_stages;
    struct tp_remote *nodes;
    int stages_per_node;
};

/* The layers [*lo, *hi) of stage `stage` of `n_stages` over n_layers:
 * n_layers / n_stages each, the first n_layers % n_stages stages one more. */
static inline void pp_layer_range(int n_layers, int stage, int n_stages, int *lo, int *hi)
{
    int each = n_layers / n_stages, extra = n_layers % n_stages;
    *lo = stage * each + (stage < extra ? stage : extra);
    *hi = *lo + each + (stage < extra ? 1 : 0);
}

/* Counters of a loaded group, for tests and logs. */
struct pp_stats {
    unsigned long steps;         /* forward() calls that ran */
    unsigned long split_steps;   /* of them, split into more than one micro-batch */
    unsigned long micro_batches; /* micro-batches run, over all steps */
};

/* be must be loaded with backend_pp_ops. */
void backend_pp_stats(const struct backend *be, struct pp_stats *out);

/* The stages' rendezvous for backend_ops.pp_connect: per column (the
 * stages' tp rank r form one pipeline of their own), stage 0 publishes a
 * small blob (an NCCL unique id) that the other stages fetch. Every stage
 * is connecting at the same time, so a fetch waits only for stage 0. */
#define PP_LINK_BLOB_BYTES 128
#define PP_LINK_MAX_COLUMNS 64
/* ok false: stage 0 could not make the blob; the fetches fail. */
void pp_link_publish(struct pp_link *link, int column, const void *blob, size_t n, bool ok);
/* Waits for column's blob; false when stage 0 published a failure or the
 * column or size is out of range. */
bool pp_link_fetch(struct pp_link *link, int column, void *blob, size_t n);

/* The backend's load() reads its pp_config from opts->pp (must be set). */
extern const struct backend_ops backend_pp_ops;

#endif
