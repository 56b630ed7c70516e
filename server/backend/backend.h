/*
 * backend.h - the one interface between the engine and a compute device.
 *
 * A backend owns the weights and the paged KV cache of one replica and runs
 * one forward step over a flat batch prepared by the engine: new tokens of
 * several sequences (prefill chunks and decode tokens mixed), each sequence's
 * block table, and the rows whose logits are wanted. For each such row it
 * returns the sampled token (if asked) and the requested log-probabilities.
 * It never allocates on the step path, never sees requests, HTTP or JSON,
 * and reports failures as an es_status (the engine then marks the replica
 * unhealthy; the process lives).
 *
 * KV layout is the backend's business, but addressing is fixed: token t of
 * a sequence lives in physical slot block_table[t / block_size] * block_size
 * + t % block_size. The engine hands each new token its slot in
 * slot_mapping.
 */
#ifndef ES_BACKEND_H
#define ES_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model_config.h"
#include "status.h"

#define BACKEND_MAX_TOP_LOGPROBS 20

/* Request-level sampling parameters, validated by the API and immutable
 * once the request is admitted. Defaults (sp_defaults) are all "off". */
struct sampling_params {
    float temperature;        /* 0 = greedy (argmax) */
    float top_p;              /* 1 = off */
    int top_k;                /* <= 0 = off */
    float min_p;              /* 0 = off */
    float presence_penalty;   /* 0 = off; applied to generated tokens */
    float frequency_penalty;  /* 0 = off; applied to generated tokens */
    float repetition_penalty; /* 1 = off; applied to prompt + generated tokens */
    int n_logit_bias;
    const int32_t *logit_bias_ids;  /* [n_logit_bias] */
    const float *logit_bias_values; /* [n_logit_bias], added to the raw logits */
    uint64_t seed;                  /* always set: the API draws one if the user gave none */
};

/* One row of logits that a step must produce. */
struct logit_row {
    int32_t token_index; /* index into batch.token_ids whose output gives the logits */
    bool sample;         /* draw the next token */
    int32_t target_id;   /* prompt scoring: also report logprob of this id; -1 = none */
    int n_top;           /* top logprobs wanted, 0..20; -1 = no logprobs at all */
    const struct sampling_params *sp;
    uint64_t rng_counter;      /* index of the token being drawn in its choice's output;
                                  the draw depends only on (sp->seed, rng_counter) */
    const int32_t *history;    /* prompt then generated tokens, for penalties */
    int n_history_prompt;      /* how many leading history entries are prompt */
    int n_history;             /* total history entries */
    const int32_t *banned_ids; /* ids that must not be sampled (EOS before min_tokens) */
    int n_banned;
};

/* Sampling result for one logit row. Log-probabilities are the log-softmax
 * of the raw model logits (before bias, penalties and temperature): the
 * model's own distribution, which is what scoring needs. */
struct row_result {
    int32_t token;        /* sampled id (rows with sample) */
    float logprob;        /* logprob of token */
    float target_logprob; /* logprob of target_id (rows with target_id >= 0) */
    int32_t target_rank;  /* 1-based rank of target_id in the distribution */
    int n_top;
    int32_t top_ids[BACKEND_MAX_TOP_LOGPROBS];
    float top_logprobs[BACKEND_MAX_TOP_LOGPROBS]; /* descending */
};

struct batch {
    int n_tokens;
    const int32_t *token_ids;    /* [n_tokens] */
    const int32_t *positions;    /* [n_tokens] position of each token in its sequence */
    const int32_t *slot_mapping; /* [n_tokens] physical KV slot the token's K/V goes to */
    int n_seqs;
    const int32_t *seq_token_start; /* [n_seqs + 1] sequence s owns tokens [start[s], start[s+1]) */
    const int32_t
        *seq_context_len; /* [n_seqs] tokens visible to the last new token, itself included */
    const int32_t *block_tables; /* [n_seqs][block_table_stride] physical block ids */
    int block_table_stride;
    int n_rows;
    const struct logit_row *rows; /* [n_rows] */
    bool decode_only;             /* every sequence has exactly one new token */
    /* Pipeline stages (backend_pp.h; NULL otherwise). A stage that is not
     * the first takes its residual stream from hidden_in instead of
     * embedding token_ids; one that is not the last writes its residual
     * stream after its last layer to hidden_out and computes no logits
     * (rows are then ignored). fp32 [n_tokens][hidden_size] each. */
    const float *hidden_in;
    float *hidden_out;
};

struct pp_link;

struct batch_result {
    struct row_result *rows; /* [n_rows], owned by the engine */
};

struct backend_opts {
    int block_size;                /* tokens per KV block (16) */
    int max_num_batched_tokens;    /* most tokens one step will carry */
    int max_num_seqs;              /* most sequences one step will carry */
    int max_model_len;             /* longest context a sequence may reach */
    int num_kv_blocks;             /* > 0: exactly this many; 0: size from memory */
    size_t kv_cache_bytes;         /* CPU: KV budget when num_kv_blocks == 0 */
    double gpu_memory_utilization; /* CUDA: fraction of device memory to use */
    int device_id;                 /* CUDA device */
    int num_threads;               /* CPU: worker threads (0 = all cores) */
    bool batch_invariant;          /* a token's results must not depend on the rest of the
                                      step (the CPU backend's always are) */
    bool high_precision;           /* CUDA: activations reach every matrix product as two bf16
                                      terms (--precision high; the CPU backend is fp32) */
    /* Tensor parallelism (backend_tp.h). A plain backend loads the shard
     * of rank tp_rank of tp_size (tp_size <= 1: the whole model) and does
     * its collectives through comm (NULL when tp_size <= 1). */
    int tp_rank, tp_size;
    struct comm *comm;
    const struct tp_config *tp; /* backend_tp_ops only */
    /* Pipeline parallelism (backend_pp.h). A plain backend (or a TP group
     * of them) is stage pp_stage of pp_size (pp_size <= 1: every layer)
     * and holds only the layers of its stage (pp_layer_range) and their
     * KV cache. */
    int pp_stage, pp_size;
    const struct pp_config *pp;                 /* backend_pp_ops only */
    const struct node_stage_config *node_stage; /* backend_node_stage_ops only */
};

struct backend;
struct comm;
struct tp_config;
struct pp_config;
struct node_stage_config;

struct backend_ops {
    const char *name;
    enum es_status (*load)(struct backend *be, const struct model_config *cfg, const char *dir,
                           const struct backend_opts *opts, struct es_err *err);
    enum es_status (*forward)(struct backend *be, const struct batch *batch,
                              struct batch_result *result, struct es_err *err);
    /* Copies whole KV blocks src[i] -> dst[i] (copy-on-write for n > 1). */
    enum es_status (*copy_blocks)(struct backend *be, const int32_t *src, const int32_t *dst, int n,
                                  struct es_err *err);
    /* Optional (NULL: nothing to do). A pipeline stage (backend_pp.c)
     * calls it on every stage at once, once all have loaded, so that stage
     * backends can open a device-to-device channel between neighbours
     * through the group's rendezvous (struct pp_link, backend_pp.h). A
     * backend that keeps passing the stream in hidden_in / hidden_out
     * returns ES_OK without using link. */
    enum es_status (*pp_connect)(struct backend *be, struct pp_link *link, struct es_err *err);
    void (*destroy)(struct backend *be);
};

struct backend {
    const struct backend_ops *ops;
    void *impl;
    const struct model_config *cfg;
    int block_size;
    int num_kv_blocks; /* set by load(): how many KV blocks exist */
};

extern const struct backend_ops backend_cpu_ops;
#ifdef HAVE_CUDA
extern const struct backend_ops backend_cuda_ops;
#endif

void sp_defaults(struct sampling_params *sp);

#endif
