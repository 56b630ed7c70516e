/*
 * backend_cpu_impl.h - the CPU backend's model state, shared by its own
 * files only (backend_cpu.c: load, KV cache, the step; backend_cpu_shard.c:
 * the checkpoint's tensors, cut to this rank's shard). Nothing outside
 * server/backend/backend_cpu*.c includes it.
 *
 * Tensor parallelism (tp_size > 1, backend_tp.h): a rank holds attention
 * heads [head0, head0 + n_heads) and KV heads [kv_head0, + n_kv) (q/k/v
 * rows, o_proj columns), MLP columns [inter0, + inter) (gate/up rows, down
 * columns) and vocabulary rows [vocab0, + vocab_n) of the embedding and
 * lm_head. With tp_size == 1 the shard is the whole model.
 *
 * Pipeline parallelism (pp_size > 1, backend_pp.h): an instance is one
 * stage and holds layers [layer0, layer0 + n_layers) only (m->layers and
 * the KV cache are indexed by the local layer, li - layer0); the first
 * stage embeds, the last computes logits and samples.
 */
#ifndef ES_BACKEND_CPU_IMPL_H
#define ES_BACKEND_CPU_IMPL_H

#include "backend.h"
#include "backend_cpu_math.h"
#include "backend_cpu_pool.h"
#include "comm.h"
#include "safetensors.h"
#include "sampling.h"

#define CPU_LOGIT_CHUNK 32 /* lm_head rows computed per pass */

struct cpu_layer {
    float *attn_norm;           /* [hidden] */
    float *mlp_norm;            /* [hidden] */
    struct cmat wq, wk, wv, wo; /* [q_dim][hidden], [kv_dim][hidden] x2, [hidden][q_dim] */
    struct cmat gate, up, down; /* [inter][hidden] x2, [hidden][inter] */
    float *bq, *bk, *bv, *bo;   /* biases where the checkpoint has them, else NULL */
    float *bgate, *bup, *bdown; /* bo, bdown: rank 0 only (added once before the sum) */
    float *q_norm, *k_norm;     /* [head_dim], Qwen3 only */
};

struct cpu_model {
    struct model_config cfg; /* the whole model's */
    struct st_model *st;
    struct cpool *pool;
    int n_threads;
    struct cmat embed;        /* [vocab_n][hidden] */
    struct cmat lm_head;      /* [vocab_n][hidden]; the embedding when tied */
    float *final_norm;        /* [hidden] */
    struct cpu_layer *layers; /* [n_layers]: this stage's, local index */
    /* This rank's dimensions (the whole model's when tp_size == 1). */
    int hidden, head_dim, half_dim, group;
    int n_heads, n_kv;     /* local attention and KV heads */
    int q_dim, kv_dim;     /* n_heads * head_dim, n_kv * head_dim */
    int inter;             /* local MLP columns */
    int vocab;             /* whole vocabulary */
    int vocab0, vocab_n;   /* local vocabulary rows [vocab0, vocab0 + vocab_n) */
    int vocab_max;         /* largest slice of any rank (the gather's stride) */
    int head0, kv_head0, inter0;
    float eps;

    /* Tensor parallelism: rank tp_rank of tp_size, collectives through comm. */
    int tp_rank, tp_size;
    struct comm *comm;
    /* Pipeline parallelism: stage pp_stage of pp_size holds the model's
     * layers [layer0, layer0 + n_layers). */
    int pp_stage, pp_size;
    int layer0, n_layers;

    int block_size, n_blocks, max_tokens, max_ctx;
    size_t kv_block_floats; /* floats of one block (this stage's layers) in one cache */
    float *k_cache;         /* [n_blocks][n_layers][block_size][n_kv][head_dim] */
    float *v_cache;         /* same */
    double *inv_freq;       /* [half_dim] */

    /* step workspace, [max_tokens] rows each */
    float *x;                   /* [T][hidden] residual stream */
    float *xn;                  /* [T][hidden] normed input / projection output */
    float *q;                   /* [T][q_dim] */
    float *k, *v;               /* [T][kv_dim] */
    float *att;                 /* [T][q_dim] attention output */
    float *gate, *up;           /* [T][inter] */
    float *rope_cos, *rope_sin; /* [T][half_dim] */
    int32_t *tok_seq;           /* [T] sequence of each token */
    float *row_hidden;          /* [CPU_LOGIT_CHUNK][hidden] */
    float *logits;              /* [CPU_LOGIT_CHUNK][vocab]; tp: rank 0 only; pp: last stage */
    float *logits_local;        /* tp: [CPU_LOGIT_CHUNK][vocab_max], vocab_n used */
    float *logits_gather;       /* tp: [tp_size][CPU_LOGIT_CHUNK][vocab_max] */
    float **row_bufs;           /* [n_threads] -> [CMATH_ROWS_PER_TASK][max cols] */
    float **scores;             /* [n_threads] -> [group][max_ctx] */
    struct smp_scratch **smp;   /* [n_threads]; tp: rank 0 only; pp: last stage */
};

static inline bool cpu_first_stage(const struct cpu_model *m)
{
    return m->pp_stage == 0;
}

static inline bool cpu_last_stage(const struct cpu_model *m)
{
    return m->pp_stage == m->pp_size - 1;
}

/* Fills pp_stage/pp_size and the stage's layers [layer0, + n_layers);
 * ES_EINVAL when there are more stages than layers. */
enum es_status cpu_stage_plan(struct cpu_model *m, const struct backend_opts *opts,
                              struct es_err *err);

/* Fills the shard fields (head0/n_heads, kv_head0/n_kv, q_dim, kv_dim,
 * inter0/inter, vocab0/vocab_n/vocab_max) of rank tp_rank of tp_size;
 * ES_EINVAL naming the numbers when the heads do not divide. */
enum es_status cpu_shard_plan(struct cpu_model *m, struct es_err *err);

/* Maps the embedding, lm_head and every layer's slices from m->st and
 * copies the small vectors to fp32. */
enum es_status cpu_shard_load_weights(struct cpu_model *m, struct es_err *err);

/* Frees what cpu_shard_load_weights allocated. */
void cpu_shard_free_weights(struct cpu_model *m);

/* tp: sums buf[0..n) over the ranks (no-op when tp_size == 1). */
enum es_status cpu_shard_all_reduce(struct cpu_model *m, float *buf, size_t n,
                                    struct es_err *err);

/* tp: gathers the nr rows of logits_local from every rank; on rank 0
 * reassembles them into logits [nr][vocab]. */
enum es_status cpu_shard_gather_logits(struct cpu_model *m, int nr, struct es_err *err);

#endif
