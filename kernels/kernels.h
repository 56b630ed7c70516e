/*
 * kernels.h - the C API of the CUDA kernels: one launcher per op, each
 * taking device pointers, sizes and a cudaStream_t, enqueuing its work and
 * returning cudaGetLastError(). No host policy lives here: no allocation,
 * no synchronisation, no knowledge of requests or of the batch structure
 * beyond the flat arrays a step uploads. The backend (server/backend/
 * backend_cuda*.c) owns all buffers and decides what to launch.
 *
 * Conventions
 *   bf16 tensors are uint16_t bit patterns (bfloat16, little-endian);
 *   row-major; shapes are written [rows][cols] beside every pointer.
 *   T = tokens in the step, H = hidden size, hd = head dim, nq / nkv =
 *   query / key-value heads, V = vocabulary, R = logit rows.
 *
 * Paged KV cache layout (one layer; all layers are consecutive):
 *   k_cache, v_cache: bf16 [num_blocks][nkv][block_size][hd]
 *   token slot s lives in block s / block_size at offset s % block_size.
 */
#ifndef ES_KERNELS_H
#define ES_KERNELS_H

#include <stdint.h>

#include <cuda_runtime.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KERN_MAX_TOP 20 /* most top logprobs per row */

/* ---- embedding.cu ---- */

/* resid[t][:] = float(table[ids[t] - vocab0][:]) when vocab0 <= ids[t] <
 * vocab0 + vocab_n, else 0 (the table holds that slice of the vocabulary;
 * the whole one: vocab0 = 0, vocab_n = V).
 * table bf16 [vocab_n][H]; ids [T]; resid fp32 [T][H]. */
cudaError_t kern_embedding(const uint16_t *table, const int32_t *ids, int T, int H, int vocab0,
                           int vocab_n, float *resid, cudaStream_t stream);

/* ---- rmsnorm.cu ---- */

/* For each output row i (source row r = rows ? rows[i] : i):
 *   x = resid[r][:] + (add ? float(add[r][:]) : 0)
 *   out[i][:] = bf16(x * rsqrt(mean(x^2) + eps) * w)
 * and, when rows == NULL, resid[r] = x (the residual stream, fp32). With
 * rows != NULL resid is only read (the final norm before the LM head needs
 * only the rows whose logits are wanted; rows may repeat).
 * resid fp32 [*][H]; add bf16 [*][H] or NULL; w bf16 [H]; out bf16 [n][H];
 * out_lo NULL or bf16 [n][H]: out's rounding remainder (st_bf16_split). */
cudaError_t kern_add_rmsnorm(float *resid, const uint16_t *add, const uint16_t *w, float eps,
                             const int32_t *rows, int n, int H, uint16_t *out, uint16_t *out_lo,
                             cudaStream_t stream);

/* ---- rope.cu ---- */

struct kern_rope_args {
    const float *qkv;         /* fp32 [T][(nq + 2 nkv) hd]: q heads, k heads, v heads */
    uint16_t *q_out;          /* bf16 [T][nq hd] rotated queries */
    const uint16_t *qkv_bias; /* bf16 [(nq + 2 nkv) hd] or NULL (Qwen2) */
    const uint16_t *q_norm;   /* bf16 [hd] or NULL: per-head RMSNorm on q (Qwen3) */
    const uint16_t *k_norm;   /* bf16 [hd] or NULL */
    float norm_eps;
    const float *inv_freq;       /* fp32 [hd / 2], llama3/linear scaling already applied */
    const int32_t *positions;    /* [T] */
    const int32_t *slot_mapping; /* [T]; < 0 = do not store */
    uint16_t *k_cache;           /* bf16 [num_blocks][nkv][block_size][hd] (this layer) */
    uint16_t *v_cache;
    /* NULL, or where the rounding remainders of q_out, k and v go, laid out
     * as those (--precision high; all three or none) */
    uint16_t *q_out_lo, *k_cache_lo, *v_cache_lo;
    int T, nq, nkv, hd, block_size;
};

/* Adds the bias, applies the q/k norms and rotary embedding (HF
 * rotate_half convention: pairs (i, i + hd/2)) to the q and k heads of
 * qkv, writes the queries to q_out and stores k and v of each token into
 * its cache slot (one rounding to bf16 each). */
cudaError_t kern_rope_kv_write(const struct kern_rope_args *a, cudaStream_t stream);

/* ---- activation.cu ---- */

/* out[t][i] = silu(gu[t][i]) * gu[t][I + i].
 * gu fp32 [T][2 I] (gate then up); out bf16 [T][I]; out_lo NULL or bf16
 * [T][I]: out's rounding remainder. */
cudaError_t kern_silu_mul(const float *gu, int T, int I, uint16_t *out, uint16_t *out_lo,
                          cudaStream_t stream);

/* ---- attention.cu ---- */

/* Decode-attention implementations (all honour the same contract). AUTO
 * picks the fastest measured one for the shape; the others are there to be
 * compared (test_gpu attn-bench) and fall back to SIMT where they do not
 * cover a shape (see kern_paged_attention_variant). */
enum kern_attn_variant {
    KERN_ATTN_AUTO = 0,  /* default: ROWS_MMA, ROWS_SIMT for G <= 2 (MMA_TILES when use_mma) */
    KERN_ATTN_SIMT,      /* lane-per-key 32-token tiles, any hd / group */
    KERN_ATTN_MMA_TILES, /* tensor cores on 64-key shared-memory tiles (hd 64 / 128) */
    KERN_ATTN_ROWS_SIMT, /* warp-owned token ranges, 16-byte row loads, SIMT math
                            (hd 64 / 128, group <= 4, block_size % 16 == 0) */
    KERN_ATTN_ROWS_MMA,  /* the same loads feeding tensor cores straight from
                            registers (hd 64 / 128, group <= 8, block_size % 16 == 0) */
    KERN_ATTN_N_VARIANTS
};

struct kern_attn_args {
    const uint16_t *q;       /* bf16 [T][q_stride], heads at [h * hd] */
    int q_stride;            /* elements between consecutive tokens' q */
    const uint16_t *k_cache; /* bf16 [num_blocks][nkv][block_size][hd] (this layer) */
    const uint16_t *v_cache;
    const int32_t *block_tables; /* [n_seqs][bt_stride] physical block ids */
    int bt_stride;
    const int32_t *tok_seq;  /* [T] sequence of each query token */
    const int32_t *tok_ctx;  /* [T] context tokens visible to it (itself included) */
    const int32_t *tok_list; /* [n_list] query tokens to compute, or NULL = all T */
    int n_list;
    int T, nq, nkv, hd, block_size;
    float scale;     /* softmax scale, 1/sqrt(hd) */
    int use_mma;     /* 1: MMA_TILES where hd is 64 / 128 (when variant is AUTO) */
    int variant;     /* enum kern_attn_variant; 0 = AUTO */
    int partition;   /* tokens per split (a multiple of block_size) */
    int max_splits;  /* grid splits = ceil(max ctx / partition) */
    float *part_acc; /* fp32 [n][nq][max_splits][hd] workspace (splits > 1),
                        n = n_list or T */
    float *part_ml;  /* fp32 [n][nq][max_splits][2] workspace (max, sum) */
    /* --precision high: NULL, or what rounding q and the cache to bf16 lost,
     * laid out as q and the caches; only SIMT and ROWS_SIMT read them (the
     * others are not run when k_cache_lo is set), all three or none */
    const uint16_t *q_lo, *k_cache_lo, *v_cache_lo;
    uint16_t *out;    /* bf16 [T][nq * hd] */
    uint16_t *out_lo; /* NULL, or bf16 [T][nq * hd]: what rounding out to bf16 lost
                         (--precision high) */
};

/* Paged causal attention for any mix of decode and prefill tokens: each
 * query token attends to the first tok_ctx[t] tokens of its sequence,
 * read from the paged cache (its own K/V were stored by kern_rope_kv_write).
 * Flash-decoding: a token's context is split into max_splits partitions
 * whose partial softmax states are merged by a second pass. a->variant
 * (and use_mma) choose the implementation. Supported: hd in {16, 32, 64,
 * 128, 256}, nq / nkv in {1, 2, 4, 8}. */
cudaError_t kern_paged_attention(const struct kern_attn_args *a, cudaStream_t stream);

/* The variant kern_paged_attention runs for these arguments: a->variant
 * resolved (AUTO, use_mma) and replaced by KERN_ATTN_SIMT where it does not
 * cover the shape. */
enum kern_attn_variant kern_paged_attention_variant(const struct kern_attn_args *a);

/* ---- prefill_attention.cu ---- */

#define KERN_PREFILL_TILE 64 /* query tokens per prefill tile */

/* Prefill attention on tensor cores: tile i covers the query tokens
 * [tile_q0[i], tile_q0[i] + tile_qn[i]) (qn <= KERN_PREFILL_TILE) of
 * sequence tile_seq[i], consecutive tokens whose contexts grow by one (a
 * prefill chunk). Same arguments and result as kern_paged_attention for
 * those tokens (tok_list / part_* unused). hd in {64, 128}. */
cudaError_t kern_prefill_attention(const struct kern_attn_args *a, const int32_t *tile_seq,
                                   const int32_t *tile_q0, const int32_t *tile_qn, int n_tiles,
                                   cudaStream_t stream);

/* ---- logits.cu ---- */

/* Per row of raw logits: lse[r] = logsumexp(logits[r]) (max-subtracted,
 * summed in double as sampling.c does); the n_top[r]
 * largest (ids, logprobs) in descending order (ties: lower id first);
 * the target's logprob and 1-based rank (1 + tokens before it in the order
 * (logit descending, id ascending)) when target[r] >= 0, else 0 and 0.
 * logits fp32 [R][V]; n_top [R] (-1..20); target [R];
 * top_ids / top_lp [R][KERN_MAX_TOP]; max_top = max over rows of n_top. */
cudaError_t kern_logprobs(const float *logits, int R, int V, const int32_t *n_top,
                          const int32_t *target, int max_top, double *lse, int32_t *top_ids,
                          float *top_lp, float *target_lp, int32_t *target_rank,
                          cudaStream_t stream);

/* Greedy draw: token[r] = argmax of the raw logits of each listed row
 * (NaN counts as -inf; ties: lowest id; all -inf: id 0), as
 * server/backend/sampling.c does for temperature 0 without edits, and
 * logprob[r] = logits[r][token] - lse[r].
 * rows [n] logit rows; lse [R] from kern_logprobs; token / logprob [R]. */
cudaError_t kern_greedy(const float *logits, const int32_t *rows, int n, int V, const double *lse,
                        int32_t *token, float *logprob, cudaStream_t stream);

/* ---- sampling.cu ---- */

/* What one edit does to its token's logit w, applied in this order (that
 * of server/backend/sampling.c): w += bias (then the row's extra biases of
 * the same id, in list order), w = -inf, w = w > 0 ? w / rp : w * rp, w -=
 * penalty. */
#define KERN_EDIT_BIAS 1u      /* add `bias` */
#define KERN_EDIT_MORE_BIAS 2u /* the id repeats in logit_bias: extras follow the row's edits */
#define KERN_EDIT_BAN 4u       /* banned: -inf */
#define KERN_EDIT_REPEAT 8u    /* in prompt + generated: repetition penalty */
#define KERN_EDIT_PENALTY 16u  /* in generated: subtract `penalty` */

/* One token id of a row whose logit is edited. A row's edits are n_edits
 * records with distinct ids, then n_extra extra biases ({id, 0, bias, 0})
 * of logit_bias ids listed more than once, in list order. */
struct kern_logit_edit {
    int32_t id;     /* 0 <= id < V */
    uint32_t flags; /* KERN_EDIT_* */
    float bias;     /* the id's first logit_bias value */
    float penalty;  /* presence + frequency * count, as the host's float arithmetic gives it */
};

enum kern_sample_mode {
    KERN_SAMPLE_ARGMAX = 0, /* temperature below SMP_GREEDY_EPS: argmax of the edited logits */
    KERN_SAMPLE_DRAW = 1,   /* temperature, top_k / top_p / min_p, seeded draw */
};

/* One sampled row. */
struct kern_sample_row {
    uint64_t seed, rng_counter; /* u = rng_uniform(seed, rng_counter) (server/backend/rng.h) */
    int32_t row;                /* logits row, and index into lse / token / logprob */
    int32_t mode;               /* enum kern_sample_mode */
    float inv_temperature;      /* 1.0f / temperature (DRAW) */
    int32_t top_k;              /* <= 0 or >= live tokens: off */
    float top_p;                /* >= 1: off */
    float min_p;                /* <= 0: off; > 1: argmax */
    float repetition_penalty;   /* used by KERN_EDIT_REPEAT */
    int32_t edit0;              /* the row's edits: edits[edit0 .. + n_edits + n_extra) */
    int32_t n_edits, n_extra;
};

/* The draw of server/backend/sampling.c (semantics in sampling.h) for n
 * rows, one thread block each: the processed logits w (NaN -> -inf, the
 * edits, times inv_temperature) are written to scratch row j; then top_k,
 * top_p and the seeded draw each find the canonical position (w
 * descending, id ascending) where a running count or double sum of p =
 * exp(w - max) crosses a threshold, by radix selection over the bits of
 * (w, id), never sorting. token[row] = the drawn id, logprob[row] =
 * logits[row][token] - lse[row]. Equal to sampling.c token for token,
 * except where a draw's target lies within double round-off of the
 * boundary between two tokens.
 * logits fp32 [R][V]; rows [n]; edits [*]; lse [R] from kern_logprobs;
 * token / logprob [R]; scratch fp32 [n][V]. */
cudaError_t kern_sample(const float *logits, int V, const struct kern_sample_row *rows, int n,
                        const struct kern_logit_edit *edits, const double *lse, int32_t *token,
                        float *logprob, float *scratch, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
