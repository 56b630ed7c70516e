/*
 * backend_cuda.h - internals shared by the files of the CUDA backend
 * (backend_cuda.c: ops, memory plan; backend_cuda_weights.c: safetensors to
 * device; backend_cuda_gemm.c: cuBLASLt; backend_cuda_step.c: one forward
 * step; backend_cuda_sample.c: the GPU sampler's host half;
 * backend_cuda_tp.c: tensor parallelism over NCCL). Not a public
 * header: the engine sees only backend_cuda_ops.
 *
 * Every CUDA / cuBLAS call goes through CU() / CUBLAS(), which turn a
 * failure into ES_EDEVICE with file, line and the call's text in `err`,
 * set `st` and jump to the function's `err:` label (NCCL calls the same
 * through NC(), in backend_cuda_tp.c alone). Nothing here exits.
 *
 * Tensor parallelism (backend_opts.tp_size > 1, driven by backend_tp.c):
 * one instance is one rank on its own GPU and holds the shard described
 * by struct cuda_shard, in the CPU backend's Megatron layout. With
 * tp_size <= 1 the shard is the whole model and no NCCL call is made.
 */
#ifndef ES_BACKEND_CUDA_H
#define ES_BACKEND_CUDA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* cublasLt.h declares a function without a prototype: keep -Werror happy. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wstrict-prototypes"
#include <cublasLt.h>
#pragma GCC diagnostic pop
#include <cuda_runtime.h>

#include "backend.h"
#include "backend_cpu_pool.h"
#include "backend_cuda_sample_pack.h"
#include "kernels.h"

enum es_status cuda_status(cudaError_t e, const char *what, const char *file, int line,
                           struct es_err *err);
enum es_status cublas_status(cublasStatus_t s, const char *what, const char *file, int line,
                             struct es_err *err);

#define CU(call)                                                                                   \
    do {                                                                                           \
        st = cuda_status((call), #call, __FILE__, __LINE__, err);                                  \
        if (st != ES_OK) goto err;                                                                 \
    } while (0)
#define CUBLAS(call)                                                                               \
    do {                                                                                           \
        st = cublas_status((call), #call, __FILE__, __LINE__, err);                                \
        if (st != ES_OK) goto err;                                                                 \
    } while (0)

/* ---- the shard of one tensor-parallel rank (backend_cuda_tp.c plans it) ---- */

/* Rank tp_rank of tp_size holds attention heads [head0, + nq) and KV heads
 * [kv_head0, + nkv) (q/k/v rows, o_proj columns), MLP columns [inter0,
 * + inter) (gate/up rows, down_proj columns) and vocabulary rows [vocab0,
 * + vocab_n) of the embedding and the LM head. The device copies of those
 * two tables have vocab_max rows (the largest slice of any rank), the rows
 * past vocab_n zero, so every rank's LM-head output has one shape for the
 * gather. tp_size == 1: everything, vocab_max == vocab_n == V.
 *
 * Pipeline stage pp_stage of pp_size (backend_pp.c) holds layers [layer0,
 * + n_layers) and their KV cache; only the first stage the embedding, only
 * the last the final norm and LM head (pp_size 1: one stage, all of it). */
struct cuda_shard {
    int tp_rank, tp_size;
    int pp_stage, pp_size;
    int layer0, n_layers;
    int head0, nq;
    int kv_head0, nkv;
    int inter0, inter;
    int vocab0, vocab_n, vocab_max;
};

static inline bool cuda_first_stage(const struct cuda_shard *s)
{
    return s->pp_stage == 0;
}

static inline bool cuda_last_stage(const struct cuda_shard *s)
{
    return s->pp_stage == s->pp_size - 1;
}

/* ---- weights (backend_cuda_weights.c) ---- */

/* Shapes are the rank's shard (struct cuda_shard): nq, nkv, I local. */
struct cuda_layer {
    uint16_t *qkv;      /* bf16 [(nq + 2 nkv) hd][H]: q rows, then k, then v */
    uint16_t *qkv_bias; /* bf16 [(nq + 2 nkv) hd] or NULL */
    uint16_t *o;        /* bf16 [H][nq hd]: the o_proj columns of the rank's heads */
    uint16_t *gate_up;  /* bf16 [2 I][H]: gate rows, then up */
    uint16_t *down;     /* bf16 [H][I]: the down_proj columns of the rank's MLP slice */
    uint16_t *ln_attn;  /* bf16 [H] input_layernorm */
    uint16_t *ln_mlp;   /* bf16 [H] post_attention_layernorm */
    uint16_t *q_norm;   /* bf16 [hd] or NULL (Qwen3) */
    uint16_t *k_norm;
};

struct cuda_weights {
    uint16_t *embed;           /* bf16 [vocab_max][H]: rows [vocab0, + vocab_n), then zeros
                                  (first pipeline stage only, else NULL) */
    uint16_t *final_norm;      /* bf16 [H] (last stage only) */
    uint16_t *lm_head;         /* bf16 [vocab_max][H], the same rows; == embed when tied and
                                  one stage (last stage only) */
    struct cuda_layer *layers; /* [num_layers]: the stage's, from shard.layer0 */
    int num_layers;
    size_t bytes; /* device bytes held */
};

enum es_status cbw_load(const struct model_config *cfg, const struct cuda_shard *shard,
                        const char *dir, struct cuda_weights *w, struct es_err *err);
void cbw_free(struct cuda_weights *w);

/* ---- GEMM (backend_cuda_gemm.c) ---- */

struct cbg_plan;   /* cached layouts + algorithm of one (M, N, K, out type) */
struct cbg_choice; /* the algorithm chosen for one M bucket of (N, K, out type) */

struct cuda_gemm {
    cublasLtHandle_t lt;
    void *workspace; /* device, workspace_bytes */
    size_t workspace_bytes;
    struct cbg_plan *plans; /* open-addressed cache [n_slots] */
    int n_slots;
    struct cbg_choice *choices; /* open-addressed [n_choice_slots] */
    int n_choice_slots;
    void *tune_scratch; /* device, tune_scratch_bytes: outputs of tuning runs */
    size_t tune_scratch_bytes;
    cudaEvent_t ev0, ev1;
    int invariant_m; /* > 0: batch-invariant plans (cbg_set_invariant) */
};

/* tune_scratch_bytes: the largest output of a tuned GEMM (0 = no tuning). */
enum es_status cbg_init(struct cuda_gemm *g, size_t tune_scratch_bytes, struct es_err *err);
void cbg_free(struct cuda_gemm *g);
/* Batch-invariant plans from now on: every M of an (N, K, output) shape
 * uses one algorithm, the heuristic's first without split-K for ref_m
 * rows, untimed, so that a row's product does not depend on how many
 * rows share the call. */
void cbg_set_invariant(struct cuda_gemm *g, int ref_m);
/* Y[M][N] = X[M][K] . W[N][K]^T (+ Y when accumulate); X, W bf16; Y bf16,
 * or fp32 when y_f32 (accumulate needs y_f32); fp32 accumulation. */
enum es_status cbg_matmul(struct cuda_gemm *g, const uint16_t *W, const uint16_t *X, void *Y, int M,
                          int N, int K, bool y_f32, bool accumulate, cudaStream_t stream,
                          struct es_err *err);

/* ---- the backend (backend_cuda.c) and one step (backend_cuda_step.c) ---- */

#define CUDA_MAX_SPLITS 32    /* flash-decoding partitions per token at most */
#define CUDA_LOGIT_CHUNK 512  /* logit rows per LM-head GEMM */
#define CUDA_HOST_ROWS 64     /* rows sampled on the host per round trip */
#define CUDA_SAMPLE_THREADS 8 /* host threads drawing those rows */
#define CUDA_SAMPLE_ROWS 256  /* rows per kern_sample launch (its scratch) */
#define CUDA_PREFILL_MIN 8    /* new tokens from which a sequence uses the prefill kernel */

/* Per-step metadata, laid out in one pinned host buffer and one device
 * buffer of the same size, copied with a single cudaMemcpyAsync. Offsets
 * are in int32 units from the start. The arrays the layers read come first
 * and depend only on (T, bt_stride), so that a CUDA graph captured for one
 * such shape stays valid for every later step of that shape; the rows'
 * arrays follow. */
struct cuda_meta_layout {
    int T;         /* tokens the layers run: the batch's, or its graph bucket */
    int bt_stride; /* block-table columns (the batch's longest context, or its bucket) */
    size_t token_ids, positions, slot_mapping, tok_seq, tok_ctx; /* [T] */
    size_t tok_list;                   /* [T] tokens for the flash-decoding kernel */
    size_t tile_seq, tile_q0, tile_qn; /* [T] prefill tiles for the tensor-core kernel */
    size_t block_tables;               /* [n_seqs (padded: T)][bt_stride] */
    size_t norm_rows, n_top, target;   /* [R] */
    size_t greedy_rows;                /* [R] */
    size_t total;
    int n_list, n_tiles;
};

/* CUDA graphs of decode steps (backend_cuda_graph.c): one per padded shape
 * (tokens, block-table columns), captured the second time the shape runs
 * (the first run tunes its GEMMs, which synchronises), replayed after. */
#define CUDA_MAX_GRAPHS 96

struct cuda_graph {
    int tokens, cols;
    bool warm;            /* ran once uncaptured */
    cudaGraphExec_t exec; /* NULL until captured */
};

struct cuda_graphs {
    bool off; /* EVAL_CUDA_GRAPHS=0, tensor parallelism, profiling, or a failed capture */
    int n;
    struct cuda_graph g[CUDA_MAX_GRAPHS];
    long captures, replays;
};

/* Optional per-kernel timing: an event before each launch, tagged with its
 * category; summed after each step's final sync, separately for decode-only
 * steps and steps that carry prefill tokens, and logged by destroy().
 * EVAL_CUDA_PROFILE=1 synchronises at every event (each category then
 * holds its kernels plus one launch latency, never host gaps);
 * EVAL_CUDA_PROFILE=2 does not (the stream runs as it would unprofiled;
 * a gap where the GPU waited for the host counts to the next category).
 * Off by default: no events on the step path. */
enum cuda_prof_cat {
    PROF_UPLOAD,
    PROF_EMBED,
    PROF_NORM,
    PROF_GEMM_QKV,
    PROF_ROPE,
    PROF_ATTN,
    PROF_GEMM_O,
    PROF_GEMM_GATE_UP,
    PROF_SILU,
    PROF_GEMM_DOWN,
    PROF_NCCL, /* tp: all-reduces and the logits gather */
    PROF_LM_HEAD,
    PROF_LOGPROBS,
    PROF_GREEDY,
    PROF_SAMPLE,
    PROF_RESULTS,
    PROF_END,
    PROF_N
};

enum { PROF_DECODE, PROF_MIXED, PROF_CLASSES }; /* step classes */

struct cuda_prof {
    cudaEvent_t *ev; /* [cap] */
    int *cat;        /* [cap] */
    int cap, n;
    bool sync; /* EVAL_CUDA_PROFILE=1 */
    int cls;   /* class of the step being timed */
    double ms[PROF_CLASSES][PROF_N];
    double host_ms[PROF_CLASSES]; /* host time in forward() outside synchronisation */
    long steps[PROF_CLASSES];
};

struct comm;
struct ncclComm; /* nccl.h's ncclComm_t is a struct ncclComm * */

struct cuda_backend {
    struct model_config cfg;
    int device;
    int num_sms;
    cudaStream_t stream;
    struct cuda_weights w;
    struct cuda_gemm gemm;
    float *inv_freq; /* device fp32 [hd / 2] */

    /* I, nq, nkv and qkv_dim are this rank's (shard), L the stage's layers; H, hd and
     * V the model's */
    int H, I, nq, nkv, hd, V, L, qkv_dim;
    struct cuda_shard shard;
    /* tensor parallelism (tp_size > 1 only; NULL otherwise) */
    struct comm *host_comm; /* host collectives: NCCL bootstrap and load agreement */
    struct ncclComm *nccl;  /* this rank's NCCL communicator */
    bool nccl_failed;       /* a step or the load failed: destroy aborts the communicator */
    /* pipeline parallelism over NCCL (backend_cuda_pp.c; NULL: the stream
     * passes through hidden_in / hidden_out in host memory) */
    bool pp_nccl_wanted;      /* EVAL_CUDA_PP_TRANSPORT=nccl */
    struct ncclComm *pp_nccl; /* this rank's pipeline: rank r of every stage */
    bool pp_send_pending;     /* the last forward's send may still wait for the next stage */
    float *logits_part;       /* fp32: rank 0 [tp][CUDA_LOGIT_CHUNK][vocab_max] (slot r: rank r's
                                 slice of the logits, slot 0 its own LM-head output); other
                                 ranks [CUDA_LOGIT_CHUNK][vocab_max], what they send */
    int block_size;
    int max_tokens; /* activation rows (max_num_batched_tokens, padded) */
    int max_seqs;
    int max_bt_stride; /* block-table columns the metadata buffer holds */
    int split_tokens;  /* most tokens for which attention splits (part_* rows) */
    int num_kv_blocks;
    bool decode_mma;    /* flash-decoding on tensor cores (EVAL_CUDA_DECODE_MMA=1; slower today) */
    int decode_variant; /* enum kern_attn_variant (EVAL_CUDA_DECODE_KERNEL=simt|rows-mma|...) */
    /* --batch-invariant: every token's attention by the decode kernel in one
     * partition of this many tokens (>= max_model_len; 0: off) */
    int invariant_partition;
    /* --precision high (backend_opts.high_precision): the *_lo buffers are
     * allocated, and every token's attention runs on a SIMT kernel
     * (ROWS_SIMT or SIMT: kern_paged_attention_variant) */
    bool high_precision;

    /* activations (device) */
    float *resid;          /* fp32 [max_tokens][H] residual stream; o_proj and down_proj
                              accumulate into it in their GEMM epilogue (tp: on rank 0;
                              the others write their partial products there, and the
                              all-reduce sums; every rank then holds the same stream) */
    uint16_t *normed;      /* bf16 [max_tokens][H] */
    float *qkv;            /* fp32 [max_tokens][qkv_dim] */
    uint16_t *q;           /* bf16 [max_tokens][nq hd] rotated queries */
    uint16_t *attn;        /* bf16 [max_tokens][nq hd] */
    float *gate_up;        /* fp32 [max_tokens][2 I] */
    uint16_t *act;         /* bf16 [max_tokens][I] */
    float *part_acc;       /* fp32 [split_tokens][nq][CUDA_MAX_SPLITS][hd] */
    float *part_ml;        /* fp32 [split_tokens][nq][CUDA_MAX_SPLITS][2] */
    uint16_t *normed_rows; /* bf16 [CUDA_LOGIT_CHUNK][H] */
    /* --precision high: what rounding normed, attn, act and normed_rows to
     * bf16 lost, same shapes (NULL otherwise); each product then runs on
     * both terms, the second accumulating into the first's output */
    uint16_t *normed_lo, *attn_lo, *act_lo, *normed_rows_lo;
    uint16_t *q_lo; /* bf16 [max_tokens][nq hd]: the rotated queries' remainders */
    /* From here to h_logits, and smp: the sampling rank's (rank 0) only, NULL elsewhere. */
    float *logits; /* fp32 [CUDA_LOGIT_CHUNK][V] */
    /* per-row results (device) and their pinned host mirrors, [CUDA_LOGIT_CHUNK] */
    double *d_lse;
    int32_t *d_top_ids; /* [CUDA_LOGIT_CHUNK][KERN_MAX_TOP] */
    float *d_top_lp;
    float *d_target_lp;
    int32_t *d_target_rank;
    int32_t *d_token;
    float *d_logprob;
    int32_t *h_top_ids;
    float *h_top_lp;
    float *h_target_lp;
    int32_t *h_target_rank;
    int32_t *h_token;
    float *h_logprob;
    float *h_logits; /* pinned fp32 [CUDA_HOST_ROWS][V] rows sampled on the host */

    /* KV cache (device): bf16 [L][num_blocks][nkv][block_size][hd], K and V (the
     * rank's KV heads; every rank of a group has the same num_blocks) */
    uint16_t *k_cache, *v_cache;
    /* --precision high: what rounding K and V to bf16 lost, laid out as the
     * caches (NULL otherwise); copied with them */
    uint16_t *k_cache_lo, *v_cache_lo;
    size_t kv_layer_elems; /* elements of one layer's K (or V) */

    /* per-step metadata */
    int32_t *h_meta; /* pinned, meta_cap int32 */
    int32_t *d_meta;
    size_t meta_cap;

    /* Host samplers for rows with non-greedy settings, one per thread of
     * sample_pool, which draws a round trip's rows in parallel. */
    struct smp_scratch **smp;
    struct cpool *sample_pool;
    int n_smp;
    bool host_sampling; /* EVAL_CUDA_SAMPLER=host: those rows go to the host samplers
                           (default: to kern_sample) */

    /* The GPU sampler (backend_cuda_sample.c) of rows with non-greedy settings:
     * one chunk's kern_sample_row [n], then its kern_logit_edit [*], packed in
     * h_sample and copied to d_sample at once (sample_cap bytes each). */
    void *h_sample; /* pinned */
    void *d_sample;
    size_t sample_cap;
    float *d_sample_w;      /* fp32 [CUDA_SAMPLE_ROWS][V] processed logits of one launch */
    int32_t *edit_slot;     /* host [V]: 1 + an id's edit in the row being packed; 0 between rows */
    int32_t *edit_seen;     /* host [V]: generated occurrences / a seen mark; 0 between rows */
    struct cuda_prof *prof; /* NULL unless EVAL_CUDA_PROFILE is set */
    double prof_t0;         /* host clock at the last resume (ms) */
    struct cuda_graphs graphs;
};

double cbs_now_ms(void);

void cbs_prof_mark(struct cuda_backend *cb, enum cuda_prof_cat cat);
void cbs_prof_report(struct cuda_backend *cb);
void cbs_prof_reset(struct cuda_backend *cb);

/* The layers of one step (embedding to the last down GEMM), enqueued on
 * cb->stream; the metadata is already on the device. */
enum es_status cbs_run_layers(struct cuda_backend *cb, const struct cuda_meta_layout *ly,
                              int max_ctx, struct es_err *err);

/* Whether step b may run its layers from a graph; the padded shape of its
 * tokens and block-table columns. */
bool cgr_wanted(const struct cuda_backend *cb, const struct batch *b);
int cgr_tokens(int n_tokens);
int cgr_cols(int cols);
/* The layers of a padded decode step: replayed, captured, or run plainly. */
enum es_status cgr_run_layers(struct cuda_backend *cb, const struct cuda_meta_layout *ly,
                              int max_ctx, struct es_err *err);
/* Drops every graph (the buffers they point into are about to move) or,
 * with off, also stops making new ones. */
void cgr_reset(struct cuda_backend *cb, bool off);

enum es_status cbs_forward(struct cuda_backend *cb, const struct batch *b, struct batch_result *res,
                           struct es_err *err);

/* ---- sampling on the GPU (backend_cuda_sample.c) ---- */

/* Bytes of h_sample / d_sample that load() plans for. */
size_t cbsm_initial_cap(void);
/* cbsm_edit_bound, cbsm_pack_row: backend_cuda_sample_pack.h */
/* Draws rows r0 + idx[j] (logits row idx[j] of the chunk in cb->logits,
 * lse in cb->d_lse) on cb->stream into cb->d_token / d_logprob [idx[j]]:
 * one host-to-device copy of the packed rows and edits, then kern_sample
 * per CUDA_SAMPLE_ROWS rows. Synchronises only to grow h_sample. */
enum es_status cbsm_draw(struct cuda_backend *cb, const struct batch *b, int r0, const int *idx,
                         int n, struct es_err *err);

/* ---- tensor parallelism over NCCL (backend_cuda_tp.c) ----
 * Every function but cbt_plan and cbt_free is a collective of the group
 * when tp_size > 1 (all ranks call it, in the same order) and a no-op
 * returning ES_OK when tp_size == 1. Built without NCCL, a tp_size > 1
 * load fails in cbt_start with ES_EUNSUPPORTED. */

/* cb->shard of rank opts->tp_rank of opts->tp_size (the whole model when
 * tp_size <= 1); ES_EINVAL when the heads do not divide. Local. */
enum es_status cbt_plan(struct cuda_backend *cb, const struct backend_opts *opts,
                        struct es_err *err);
/* After this rank's device setup, whose status is `local`: all ranks agree
 * that every rank is up and links the same NCCL version, then rank 0's
 * ncclUniqueId travels through the host comm and each rank joins the NCCL
 * communicator on its device. Fails on every rank when one failed. */
enum es_status cbt_start(struct cuda_backend *cb, enum es_status local, struct es_err *err);
/* Gathers (status, value) of every rank over the host comm: fails on every
 * rank when one failed (this rank's own error kept), else *min_value = the
 * smallest value. With tp_size == 1: returns local, *min_value = value. */
enum es_status cbt_agree(struct cuda_backend *cb, enum es_status local, size_t value,
                         size_t *min_value, struct es_err *err);
/* Runs the step's collectives once at their largest sizes (and the
 * all-reduce at one token's) and waits, so that NCCL connects and takes
 * its memory before the KV cache is sized. */
enum es_status cbt_warm_up(struct cuda_backend *cb, struct es_err *err);
/* buf[0..n) := the sum over ranks, on cb->stream (in place). */
enum es_status cbt_all_reduce(struct cuda_backend *cb, float *buf, size_t n, struct es_err *err);
/* Rows [0, n) of each rank's LM-head output (logits_part, [n][vocab_max])
 * go to rank 0, which reassembles them into logits [n][V]; on cb->stream. */
enum es_status cbt_gather_logits(struct cuda_backend *cb, int n, struct es_err *err);
/* Leaves the communicator (aborts it when a collective failed). */
void cbt_free(struct cuda_backend *cb);
/* ES_OK for ncclSuccess, else ES_EDEVICE with the call, the place, NCCL's
 * name for the result and its last error (result: an ncclResult_t). */
enum es_status cbt_nccl_status(int result, const char *what, const char *file, int line,
                               struct es_err *err);

/* ---- pipeline stages over NCCL (backend_cuda_pp.c) ----
 * With EVAL_CUDA_PP_TRANSPORT=nccl, the stages' tp rank r form one NCCL
 * communicator (rank = stage), joined in pp_connect once every stage has
 * loaded, and a stage sends its residual stream straight to the next
 * stage's device instead of through host memory. */

/* backend_ops.pp_connect: joins the pipeline's communicator (stage 0
 * makes its id and publishes it through link). ES_OK without joining when
 * the transport is the host's, or there is one stage. */
enum es_status cbp_connect(struct cuda_backend *cb, struct pp_link *link, struct es_err *err);
/* The stage before's stream into cb->resid ([n_tokens][H] fp32), on cb->stream. */
enum es_status cbp_recv(struct cuda_backend *cb, int n_tokens, struct es_err *err);
/* cb->resid to the stage after, on cb->stream. The send completes only
 * once that stage receives, which it does after this forward has
 * returned: the caller must not wait for the stream until then. */
enum es_status cbp_send(struct cuda_backend *cb, int n_tokens, struct es_err *err);
/* Leaves the pipeline's communicator (aborting it: a send may wait still). */
void cbp_free(struct cuda_backend *cb);

#endif
