/*
 * backend_cuda.h - internals shared by the files of the CUDA backend
 * (backend_cuda.c: ops, memory plan; backend_cuda_weights.c: safetensors to
 * device; backend_cuda_gemm.c: cuBLASLt; backend_cuda_step.c: one forward
 * step). Not a public header: the engine sees only backend_cuda_ops.
 *
 * Every CUDA / cuBLAS call goes through CU() / CUBLAS(), which turn a
 * failure into ES_EDEVICE with file, line and the call's text in `err`,
 * set `st` and jump to the function's `err:` label. Nothing here exits.
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

/* ---- weights (backend_cuda_weights.c) ---- */

struct cuda_layer {
    uint16_t *qkv;      /* bf16 [(nq + 2 nkv) hd][H]: q rows, then k, then v */
    uint16_t *qkv_bias; /* bf16 [(nq + 2 nkv) hd] or NULL */
    uint16_t *o;        /* bf16 [H][nq hd] */
    uint16_t *gate_up;  /* bf16 [2 I][H]: gate rows, then up */
    uint16_t *down;     /* bf16 [H][I] */
    uint16_t *ln_attn;  /* bf16 [H] input_layernorm */
    uint16_t *ln_mlp;   /* bf16 [H] post_attention_layernorm */
    uint16_t *q_norm;   /* bf16 [hd] or NULL (Qwen3) */
    uint16_t *k_norm;
};

struct cuda_weights {
    uint16_t *embed;           /* bf16 [V][H] */
    uint16_t *final_norm;      /* bf16 [H] */
    uint16_t *lm_head;         /* bf16 [V][H]; == embed when tied */
    struct cuda_layer *layers; /* [num_layers] */
    int num_layers;
    size_t bytes; /* device bytes held */
};

enum es_status cbw_load(const struct model_config *cfg, const char *dir, struct cuda_weights *w,
                        struct es_err *err);
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
};

/* tune_scratch_bytes: the largest output of a tuned GEMM (0 = no tuning). */
enum es_status cbg_init(struct cuda_gemm *g, size_t tune_scratch_bytes, struct es_err *err);
void cbg_free(struct cuda_gemm *g);
/* Y[M][N] = X[M][K] . W[N][K]^T (+ Y when accumulate); X, W bf16; Y bf16,
 * or fp32 when y_f32 (accumulate needs y_f32); fp32 accumulation. */
enum es_status cbg_matmul(struct cuda_gemm *g, const uint16_t *W, const uint16_t *X, void *Y, int M,
                          int N, int K, bool y_f32, bool accumulate, cudaStream_t stream,
                          struct es_err *err);

/* ---- the backend (backend_cuda.c) and one step (backend_cuda_step.c) ---- */

#define CUDA_MAX_SPLITS 32   /* flash-decoding partitions per token at most */
#define CUDA_LOGIT_CHUNK 512 /* logit rows per LM-head GEMM */
#define CUDA_HOST_ROWS 64    /* rows sampled on the host per round trip */
#define CUDA_PREFILL_MIN 8   /* new tokens from which a sequence uses the prefill kernel */

/* Per-step metadata, laid out in one pinned host buffer and one device
 * buffer of the same size, copied with a single cudaMemcpyAsync. Offsets
 * are in int32 units from the start. */
struct cuda_meta_layout {
    size_t token_ids, positions, slot_mapping, tok_seq, tok_ctx; /* [T] */
    size_t block_tables;                                         /* [n_seqs][stride] */
    size_t norm_rows, n_top, target;                             /* [R] */
    size_t greedy_rows;                                          /* [R] */
    size_t tok_list;                   /* [T] tokens for the flash-decoding kernel */
    size_t tile_seq, tile_q0, tile_qn; /* [T] prefill tiles for the tensor-core kernel */
    size_t total;
    int n_list, n_tiles;
};

/* Optional per-kernel timing (EVAL_CUDA_PROFILE=1): an event before each
 * launch, tagged with its category; summed after each step's final sync
 * and logged by destroy(). Off by default: no events on the step path. */
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
    PROF_LM_HEAD,
    PROF_LOGPROBS,
    PROF_GREEDY,
    PROF_RESULTS,
    PROF_END,
    PROF_N
};

struct cuda_prof {
    cudaEvent_t *ev; /* [cap] */
    int *cat;        /* [cap] */
    int cap, n;
    double ms[PROF_N];
    double host_ms; /* host time in forward() outside synchronisation */
    long steps;
};

struct cuda_backend {
    struct model_config cfg;
    int device;
    int num_sms;
    cudaStream_t stream;
    struct cuda_weights w;
    struct cuda_gemm gemm;
    float *inv_freq; /* device fp32 [hd / 2] */

    int H, I, nq, nkv, hd, V, L, qkv_dim;
    int block_size;
    int max_tokens; /* activation rows (max_num_batched_tokens, padded) */
    int max_seqs;
    int max_bt_stride; /* block-table columns the metadata buffer holds */
    int split_tokens;  /* most tokens for which attention splits (part_* rows) */
    int num_kv_blocks;
    bool decode_mma; /* flash-decoding on tensor cores (EVAL_CUDA_DECODE_MMA=1; slower today) */

    /* activations (device) */
    float *resid;          /* fp32 [max_tokens][H] residual stream; o_proj and down_proj
                              accumulate into it in their GEMM epilogue */
    uint16_t *normed;      /* bf16 [max_tokens][H] */
    float *qkv;            /* fp32 [max_tokens][qkv_dim] */
    uint16_t *q;           /* bf16 [max_tokens][nq hd] rotated queries */
    uint16_t *attn;        /* bf16 [max_tokens][nq hd] */
    float *gate_up;        /* fp32 [max_tokens][2 I] */
    uint16_t *act;         /* bf16 [max_tokens][I] */
    float *part_acc;       /* fp32 [split_tokens][nq][CUDA_MAX_SPLITS][hd] */
    float *part_ml;        /* fp32 [split_tokens][nq][CUDA_MAX_SPLITS][2] */
    uint16_t *normed_rows; /* bf16 [CUDA_LOGIT_CHUNK][H] */
    float *logits;         /* fp32 [CUDA_LOGIT_CHUNK][V] */
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

    /* KV cache (device): bf16 [L][num_blocks][nkv][block_size][hd], K and V */
    uint16_t *k_cache, *v_cache;
    size_t kv_layer_elems; /* elements of one layer's K (or V) */

    /* per-step metadata */
    int32_t *h_meta; /* pinned, meta_cap int32 */
    int32_t *d_meta;
    size_t meta_cap;

    struct smp_scratch *smp; /* host sampler for rows with non-greedy settings */
    struct cuda_prof *prof;  /* NULL unless EVAL_CUDA_PROFILE is set */
    double prof_t0;          /* host clock at the last resume (ms) */
};

double cbs_now_ms(void);

void cbs_prof_mark(struct cuda_backend *cb, enum cuda_prof_cat cat);
void cbs_prof_report(struct cuda_backend *cb);
void cbs_prof_reset(struct cuda_backend *cb);

enum es_status cbs_forward(struct cuda_backend *cb, const struct batch *b, struct batch_result *res,
                           struct es_err *err);

#endif
