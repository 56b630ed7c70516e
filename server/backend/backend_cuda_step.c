/*
 * backend_cuda_step.c - one forward step of the CUDA backend: packs the
 * batch's metadata into the pinned buffer (one host-to-device copy), runs
 * the layers (embedding into the fp32 residual stream; per layer: RMSNorm,
 * QKV GEMM (fp32 out), RoPE + KV store, paged attention, O GEMM added into
 * the residual by its epilogue, RMSNorm, gate/up GEMM (fp32 out), SiLU x
 * up, down GEMM added into the residual), then the LM head in chunks of logit rows with
 * log-softmax, top logprobs and the greedy draw on the GPU. Only the per-row results come back.
 * Rows with non-greedy settings (temperature, top-k/p, min-p, penalties, bias, bans) are drawn
 * on the GPU by kern_sample (backend_cuda_sample.c packs their parameters) with sampling.c's
 * semantics; with EVAL_CUDA_SAMPLER=host they copy their logits row back and sampling.c draws
 * them on host threads.
 *
 * --precision high (cb->high_precision): each activation a product reads
 * comes with its bf16 rounding remainder (normed_lo, attn_lo, act_lo,
 * normed_rows_lo) and act_matmul runs the product on both terms; RoPE also
 * stores q's and the cache's remainders, and every token's attention goes
 * to the flash-decoding kernels that read them, ROWS_SIMT or SIMT (no
 * prefill tiles).
 *
 * Pipeline stages (shard.pp_size > 1): a stage after the first takes its
 * residual stream from batch.hidden_in instead of the embedding, one
 * before the last copies it to batch.hidden_out after its layers and
 * computes no logits.
 *
 * Tensor parallelism (tp_size > 1): the same step over the rank's shard,
 * with the collectives of backend_cuda_tp.c: an all-reduce of the embedded
 * rows, one after the O GEMM and one after the down GEMM (rank 0's GEMMs
 * add into the residual, the others' write their partial products over
 * it), and a gather of each chunk's LM-head slices to rank 0, which alone
 * computes log-probabilities and draws, and alone writes results (the
 * other ranks' batch_result has no rows). Every rank ends its step with a
 * stream synchronisation, as rank 0 does, so that the pinned metadata is
 * never rewritten under a copy still in flight.
 *
 * Owns nothing (all buffers belong to struct cuda_backend); never
 * allocates except to grow the metadata buffer when a batch exceeds the
 * planned size.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend_cuda.h"
#include "log.h"
#include "sampling.h"

double cbs_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static const char *prof_names[PROF_N] = {
    "upload",   "embed",        "rmsnorm",  "gemm_qkv",  "rope_kv", "attention",
    "gemm_o",   "gemm_gate_up", "silu_mul", "gemm_down", "nccl",    "lm_head",
    "logprobs", "greedy",       "sample",   "results",   "end"};

void cbs_prof_mark(struct cuda_backend *cb, enum cuda_prof_cat cat)
{
    struct cuda_prof *p = cb->prof;
    if (!p || p->n >= p->cap) return;
    if (cudaEventRecord(p->ev[p->n], cb->stream) != cudaSuccess) return;
    if (p->sync) cudaEventSynchronize(p->ev[p->n]);
    p->cat[p->n++] = (int)cat;
}

/* After the step's final synchronisation. */
static void prof_collect(struct cuda_backend *cb)
{
    struct cuda_prof *p = cb->prof;
    if (!p) return;
    for (int i = 0; i + 1 < p->n; i++) {
        float ms = 0.0f;
        if (cudaEventElapsedTime(&ms, p->ev[i], p->ev[i + 1]) == cudaSuccess)
            p->ms[p->cls][p->cat[i]] += ms;
    }
    p->n = 0;
    p->steps[p->cls]++;
}

void cbs_prof_report(struct cuda_backend *cb)
{
    static const char *cls_names[PROF_CLASSES] = {"decode-only", "with prefill"};
    struct cuda_prof *p = cb->prof;
    if (!p) return;
    for (int k = 0; k < PROF_CLASSES; k++) {
        if (!p->steps[k]) continue;
        double total = 0.0;
        for (int c = 0; c < PROF_END; c++)
            total += p->ms[k][c];
        LOG_I("cuda",
              "profile (%s) over %ld %s steps: GPU %.3f ms/step, host (outside syncs) %.3f "
              "ms/step",
              p->sync ? "synchronised" : "unsynchronised", p->steps[k], cls_names[k],
              total / p->steps[k], p->host_ms[k] / p->steps[k]);
        for (int c = 0; c < PROF_END; c++)
            if (p->ms[k][c] > 0)
                LOG_I("cuda", "  %-13s %8.3f ms/step %5.1f%%", prof_names[c],
                      p->ms[k][c] / p->steps[k], 100.0 * p->ms[k][c] / total);
    }
}

void cbs_prof_reset(struct cuda_backend *cb)
{
    struct cuda_prof *p = cb->prof;
    if (!p) return;
    memset(p->ms, 0, sizeof(p->ms));
    memset(p->host_ms, 0, sizeof(p->host_ms));
    memset(p->steps, 0, sizeof(p->steps));
    p->n = 0;
}

static bool row_greedy_on_gpu(const struct logit_row *r)
{
    const struct sampling_params *sp = r->sp;
    if (!sp) return true; /* sampling.c: no params = greedy, no edits */
    if (sp->temperature >= SMP_GREEDY_EPS) return false;
    if (sp->n_logit_bias > 0 || r->n_banned > 0) return false;
    if (sp->repetition_penalty != 1.0f && sp->repetition_penalty > 0.0f && r->n_history > 0)
        return false;
    if ((sp->presence_penalty != 0.0f || sp->frequency_penalty != 0.0f) &&
        r->n_history > (r->n_history_prompt < 0 ? 0 : r->n_history_prompt))
        return false;
    return true;
}

static enum es_status grow_meta(struct cuda_backend *cb, size_t need, struct es_err *err)
{
    enum es_status st = ES_OK;
    size_t cap = need + need / 2;
    LOG_W("cuda", "step metadata grows to %zu entries (batch larger than planned)", cap);
    CU(cudaStreamSynchronize(cb->stream));
    cgr_reset(cb, false); /* the graphs point into the old device buffer */
    cudaFreeHost(cb->h_meta);
    cudaFree(cb->d_meta);
    cb->h_meta = NULL;
    cb->d_meta = NULL;
    cb->meta_cap = 0;
    CU(cudaMallocHost((void **)&cb->h_meta, 4 * cap));
    CU(cudaMalloc((void **)&cb->d_meta, 4 * cap));
    cb->meta_cap = cap;
err:
    return st;
}

/* The batch's checks that need no layout: sizes, token ids, slots, and
 * each sequence's tokens, context and blocks. *max_ctx = its longest
 * context. */
static enum es_status check_batch(const struct cuda_backend *cb, const struct batch *b,
                                  int *max_ctx, struct es_err *err)
{
    int T = b->n_tokens, S = b->n_seqs, R = b->n_rows, bs = cb->block_size;
    if (T <= 0 || T > cb->max_tokens || S <= 0 || S > T || R < 0 || R > T)
        return es_fail(err, ES_EINVAL, "cuda: batch of %d tokens, %d seqs, %d rows (max %d tokens)",
                       T, S, R, cb->max_tokens);
    if (b->block_table_stride <= 0)
        return es_fail(err, ES_EINVAL, "cuda: block_table_stride %d", b->block_table_stride);
    if (b->seq_token_start[0] != 0 || b->seq_token_start[S] != T)
        return es_fail(err, ES_EINVAL, "cuda: sequences do not cover the %d tokens", T);
    long n_slots = (long)cb->num_kv_blocks * bs;
    for (int t = 0; t < T; t++) {
        if (b->token_ids[t] < 0 || b->token_ids[t] >= cb->V)
            return es_fail(err, ES_EINVAL, "cuda: token id %d out of range", b->token_ids[t]);
        if (b->slot_mapping[t] >= n_slots)
            return es_fail(err, ES_EINVAL, "cuda: slot %d out of range", b->slot_mapping[t]);
    }
    *max_ctx = 0;
    for (int s = 0; s < S; s++) {
        int a = b->seq_token_start[s], e = b->seq_token_start[s + 1];
        int ctx = b->seq_context_len[s];
        if (a < 0 || e <= a || e > T || ctx < e - a || ctx > b->block_table_stride * bs)
            return es_fail(err, ES_EINVAL, "cuda: sequence %d: tokens [%d, %d), context %d", s, a,
                           e, ctx);
        const int32_t *bt = b->block_tables + (size_t)s * (size_t)b->block_table_stride;
        for (int j = 0; j < (ctx + bs - 1) / bs; j++)
            if (bt[j] < 0 || bt[j] >= cb->num_kv_blocks)
                return es_fail(err, ES_EINVAL, "cuda: sequence %d: block %d out of range", s,
                               bt[j]);
        if (ctx > *max_ctx) *max_ctx = ctx;
    }
    return ES_OK;
}

/* Offsets of every array (struct cuda_meta_layout); grows the buffers if
 * the batch needs more than load() planned. */
static enum es_status lay_out(struct cuda_backend *cb, int n_tables, int R,
                              struct cuda_meta_layout *ly, struct es_err *err)
{
    size_t T = (size_t)ly->T, S = (size_t)n_tables, o = 0;
    ly->token_ids = o, o += T;
    ly->positions = o, o += T;
    ly->slot_mapping = o, o += T;
    ly->tok_seq = o, o += T;
    ly->tok_ctx = o, o += T;
    ly->tok_list = o, o += T;
    ly->tile_seq = o, o += T;
    ly->tile_q0 = o, o += T;
    ly->tile_qn = o, o += T;
    ly->block_tables = o, o += S * (size_t)ly->bt_stride;
    ly->norm_rows = o, o += (size_t)R;
    ly->n_top = o, o += (size_t)R;
    ly->target = o, o += (size_t)R;
    ly->greedy_rows = o, o += (size_t)R;
    ly->total = o;
    ly->n_list = ly->n_tiles = 0;
    return o > cb->meta_cap ? grow_meta(cb, o, err) : ES_OK;
}

/* Validates the batch against the buffers and the cache, and fills the
 * pinned metadata: block tables compacted to the columns the batch needs
 * (the engine's rows span the longest possible context). A decode step
 * for a graph (padded) is laid out on its bucket of tokens and columns;
 * its pad tokens have no context and store nothing. *max_ctx bounds every
 * context of the step (padded: the columns' capacity). */
static enum es_status pack_meta(struct cuda_backend *cb, const struct batch *b, bool padded,
                                struct cuda_meta_layout *ly, int *max_ctx, struct es_err *err)
{
    int T = b->n_tokens, S = b->n_seqs, R = b->n_rows, bs = cb->block_size;
    enum es_status st = check_batch(cb, b, max_ctx, err);
    if (st != ES_OK) return st;
    int cols = (*max_ctx + bs - 1) / bs;
    ly->T = padded ? cgr_tokens(T) : T;
    ly->bt_stride = padded ? cgr_cols(cols) : cols;
    /* padded: a table row per token, so that the layout depends on the bucket alone */
    st = lay_out(cb, padded ? ly->T : S, R, ly, err);
    if (st != ES_OK) return st;
    int32_t *m = cb->h_meta;
    memcpy(m + ly->token_ids, b->token_ids, 4 * (size_t)T);
    memcpy(m + ly->positions, b->positions, 4 * (size_t)T);
    memcpy(m + ly->slot_mapping, b->slot_mapping, 4 * (size_t)T);
    for (int s = 0; s < S; s++) {
        int a = b->seq_token_start[s], e = b->seq_token_start[s + 1];
        int ctx = b->seq_context_len[s];
        memcpy(m + ly->block_tables + (size_t)s * (size_t)ly->bt_stride,
               b->block_tables + (size_t)s * (size_t)b->block_table_stride,
               4 * (size_t)((ctx + bs - 1) / bs));
        for (int t = a; t < e; t++) {
            m[ly->tok_seq + (size_t)t] = s;
            m[ly->tok_ctx + (size_t)t] = ctx - (e - 1 - t);
        }
        /* chunks of a prefill go to the tensor-core kernel, the rest to
         * flash-decoding */
        if (e - a >= CUDA_PREFILL_MIN && (cb->hd == 64 || cb->hd == 128) &&
            !cb->invariant_partition && !cb->high_precision) {
            for (int q = a; q < e; q += KERN_PREFILL_TILE) {
                m[ly->tile_seq + (size_t)ly->n_tiles] = s;
                m[ly->tile_q0 + (size_t)ly->n_tiles] = q;
                m[ly->tile_qn + (size_t)ly->n_tiles] =
                    e - q < KERN_PREFILL_TILE ? e - q : KERN_PREFILL_TILE;
                ly->n_tiles++;
            }
        } else {
            for (int t = a; t < e; t++)
                m[ly->tok_list + (size_t)ly->n_list++] = t;
        }
    }
    for (int t = T; t < ly->T; t++) { /* pad tokens of a graph's bucket */
        m[ly->token_ids + (size_t)t] = 0;
        m[ly->positions + (size_t)t] = 0;
        m[ly->slot_mapping + (size_t)t] = -1;
        m[ly->tok_seq + (size_t)t] = 0;
        m[ly->tok_ctx + (size_t)t] = 0;
        m[ly->tok_list + (size_t)ly->n_list++] = t;
    }
    for (int r = 0; r < R; r++) {
        const struct logit_row *row = &b->rows[r];
        if (row->token_index < 0 || row->token_index >= T)
            return es_fail(err, ES_EINVAL, "cuda: logit row %d: token index %d", r,
                           row->token_index);
        m[ly->norm_rows + (size_t)r] = row->token_index;
        m[ly->n_top + (size_t)r] = row->n_top;
        m[ly->target + (size_t)r] = row->target_id < cb->V ? row->target_id : -1;
    }
    if (padded) *max_ctx = ly->bt_stride * bs; /* the graph serves any context that fits */
    return ES_OK;
}

/* Y = X . W^T (+ Y when accumulate) for activations X given as bf16 x
 * and, under --precision high, its rounding remainder x_lo: a second
 * product of x_lo accumulates into the first's fp32 output. */
static enum es_status act_matmul(struct cuda_backend *cb, const uint16_t *W, const uint16_t *x,
                                 const uint16_t *x_lo, float *Y, int M, int N, int K,
                                 bool accumulate, struct es_err *err)
{
    enum es_status st = cbg_matmul(&cb->gemm, W, x, Y, M, N, K, true, accumulate, cb->stream, err);
    if (st != ES_OK || !x_lo) return st;
    return cbg_matmul(&cb->gemm, W, x_lo, Y, M, N, K, true, true, cb->stream, err);
}

enum es_status cbs_run_layers(struct cuda_backend *cb, const struct cuda_meta_layout *ly,
                              int max_ctx, struct es_err *err)
{
    enum es_status st = ES_OK;
    const int32_t *dm = cb->d_meta;
    int T = ly->T, H = cb->H, I = cb->I;
    float eps = (float)cb->cfg.rms_norm_eps;
    cudaStream_t s = cb->stream;
    /* tp: rank 0 adds its partial products into the residual stream, the
     * others write theirs over their copy; the all-reduce sums them */
    bool add_resid = cb->shard.tp_rank == 0;
    size_t resid_n = (size_t)T * (size_t)H;

    struct kern_attn_args at = {
        .q = cb->q,
        .q_stride = cb->nq * cb->hd,
        .block_tables = dm + ly->block_tables,
        .bt_stride = ly->bt_stride,
        .tok_seq = dm + ly->tok_seq,
        .tok_ctx = dm + ly->tok_ctx,
        .tok_list = dm + ly->tok_list,
        .n_list = ly->n_list,
        .T = T,
        .nq = cb->nq,
        .nkv = cb->nkv,
        .hd = cb->hd,
        .block_size = cb->block_size,
        .scale = 1.0f / sqrtf((float)cb->hd),
        .use_mma = cb->decode_mma,
        .variant = cb->decode_variant,
        .part_acc = cb->part_acc,
        .part_ml = cb->part_ml,
        .q_lo = cb->q_lo,
        .out = cb->attn,
        .out_lo = cb->attn_lo,
    };
    /* flash-decoding: split contexts only when tokens x kv heads leave SMs idle */
    int bs = cb->block_size;
    int work = ly->n_list * cb->nkv;
    if (cb->invariant_partition) { /* one split whatever the batch (--batch-invariant) */
        at.partition = cb->invariant_partition;
        at.max_splits = 1;
    } else if (ly->n_list > cb->split_tokens || work >= 2 * cb->num_sms || work == 0) {
        at.partition = (max_ctx + bs - 1) / bs * bs;
        at.max_splits = 1;
    } else {
        int want = (2 * cb->num_sms + work - 1) / work;
        if (want > CUDA_MAX_SPLITS) want = CUDA_MAX_SPLITS;
        int part = (max_ctx + want - 1) / want;
        if (part < 256) part = 256;
        at.partition = (part + bs - 1) / bs * bs;
        at.max_splits = (max_ctx + at.partition - 1) / at.partition;
    }
    struct kern_rope_args rp = {
        .qkv = cb->qkv,
        .q_out = cb->q,
        .q_out_lo = cb->q_lo,
        .norm_eps = eps,
        .inv_freq = cb->inv_freq,
        .positions = dm + ly->positions,
        .slot_mapping = dm + ly->slot_mapping,
        .T = T,
        .nq = cb->nq,
        .nkv = cb->nkv,
        .hd = cb->hd,
        .block_size = bs,
    };

    if (cuda_first_stage(&cb->shard)) { /* later stages' stream came in hidden_in */
        cbs_prof_mark(cb, PROF_EMBED);
        CU(kern_embedding(cb->w.embed, dm + ly->token_ids, T, H, cb->shard.vocab0,
                          cb->shard.vocab_n, cb->resid, s));
        if ((st = cbt_all_reduce(cb, cb->resid, resid_n, err)) != ES_OK) goto err;
    }
    for (int l = 0; l < cb->L; l++) {
        const struct cuda_layer *w = &cb->w.layers[l];
        size_t kv_off = (size_t)l * cb->kv_layer_elems;
        cbs_prof_mark(cb, PROF_NORM);
        CU(kern_add_rmsnorm(cb->resid, NULL, w->ln_attn, eps, NULL, T, H, cb->normed, cb->normed_lo,
                            s));
        cbs_prof_mark(cb, PROF_GEMM_QKV);
        st = act_matmul(cb, w->qkv, cb->normed, cb->normed_lo, cb->qkv, T, cb->qkv_dim, H, false,
                        err);
        if (st != ES_OK) goto err;
        rp.qkv_bias = w->qkv_bias;
        rp.q_norm = w->q_norm;
        rp.k_norm = w->k_norm;
        rp.k_cache = cb->k_cache + kv_off;
        rp.v_cache = cb->v_cache + kv_off;
        if (cb->high_precision) {
            rp.k_cache_lo = cb->k_cache_lo + kv_off;
            rp.v_cache_lo = cb->v_cache_lo + kv_off;
            at.k_cache_lo = rp.k_cache_lo;
            at.v_cache_lo = rp.v_cache_lo;
        }
        cbs_prof_mark(cb, PROF_ROPE);
        CU(kern_rope_kv_write(&rp, s));
        at.k_cache = cb->k_cache + kv_off;
        at.v_cache = cb->v_cache + kv_off;
        cbs_prof_mark(cb, PROF_ATTN);
        CU(kern_paged_attention(&at, s));
        CU(kern_prefill_attention(&at, dm + ly->tile_seq, dm + ly->tile_q0, dm + ly->tile_qn,
                                  ly->n_tiles, s));
        cbs_prof_mark(cb, PROF_GEMM_O);
        st = act_matmul(cb, w->o, cb->attn, cb->attn_lo, cb->resid, T, H, cb->nq * cb->hd,
                        add_resid, err);
        if (st != ES_OK) goto err;
        if ((st = cbt_all_reduce(cb, cb->resid, resid_n, err)) != ES_OK) goto err;
        cbs_prof_mark(cb, PROF_NORM);
        CU(kern_add_rmsnorm(cb->resid, NULL, w->ln_mlp, eps, NULL, T, H, cb->normed, cb->normed_lo,
                            s));
        cbs_prof_mark(cb, PROF_GEMM_GATE_UP);
        st = act_matmul(cb, w->gate_up, cb->normed, cb->normed_lo, cb->gate_up, T, 2 * I, H, false,
                        err);
        if (st != ES_OK) goto err;
        cbs_prof_mark(cb, PROF_SILU);
        CU(kern_silu_mul(cb->gate_up, T, I, cb->act, cb->act_lo, s));
        cbs_prof_mark(cb, PROF_GEMM_DOWN);
        st = act_matmul(cb, w->down, cb->act, cb->act_lo, cb->resid, T, H, I, add_resid, err);
        if (st != ES_OK) goto err;
        if ((st = cbt_all_reduce(cb, cb->resid, resid_n, err)) != ES_OK) goto err;
    }
err:
    return st;
}

/* Final norm and LM head for rows [r0, r0 + n): logits [n][V] on rank 0
 * (tp: each rank's slice, gathered there; other ranks stop after the
 * gather). */
static enum es_status lm_head(struct cuda_backend *cb, const struct cuda_meta_layout *ly, int r0,
                              int n, struct es_err *err)
{
    enum es_status st = ES_OK;
    cudaStream_t s = cb->stream;
    float eps = (float)cb->cfg.rms_norm_eps;
    cbs_prof_mark(cb, PROF_LM_HEAD);
    CU(kern_add_rmsnorm(cb->resid, NULL, cb->w.final_norm, eps, cb->d_meta + ly->norm_rows + r0, n,
                        cb->H, cb->normed_rows, cb->normed_rows_lo, s));
    if (cb->shard.tp_size == 1)
        return act_matmul(cb, cb->w.lm_head, cb->normed_rows, cb->normed_rows_lo, cb->logits, n,
                          cb->V, cb->H, false, err);
    /* [n][vocab_max]: the slice's columns, then the zero rows' (rank 0's
     * output is slot 0 of the gather) */
    st = act_matmul(cb, cb->w.lm_head, cb->normed_rows, cb->normed_rows_lo, cb->logits_part, n,
                    cb->shard.vocab_max, cb->H, false, err);
    if (st != ES_OK) return st;
    return cbt_gather_logits(cb, n, err);
err:
    return st;
}

/* LM head, logprobs and draws for rows [r0, r0 + n). */
/* The rows of one host round trip: logits row j of h_logits belongs to
 * batch row r0 + idx[j]. */
struct host_draw {
    struct cuda_backend *cb;
    const struct batch *b;
    struct batch_result *res;
    int r0;
    const int *idx;
};

/* One row, on a sample_pool thread with that thread's scratch. Only the
 * token and its logprob come from the host sampler; the GPU already wrote
 * the row's other results. */
static void host_draw_task(void *ctxp, int j, int thread)
{
    const struct host_draw *d = ctxp;
    int r = d->r0 + d->idx[j];
    struct row_result tmp;
    smp_row(d->cb->smp[thread], d->cb->h_logits + (size_t)j * d->cb->V, &d->b->rows[r], &tmp);
    d->res->rows[r].token = tmp.token;
    d->res->rows[r].logprob = tmp.logprob;
}

static enum es_status run_rows(struct cuda_backend *cb, const struct batch *b,
                               const struct cuda_meta_layout *ly, int r0, int n,
                               struct batch_result *res, struct es_err *err)
{
    enum es_status st = ES_OK;
    const int32_t *dm = cb->d_meta;
    int32_t *hm = cb->h_meta;
    cudaStream_t s = cb->stream;
    int V = cb->V;

    if (cb->shard.tp_rank != 0) return lm_head(cb, ly, r0, n, err); /* rank 0 samples */
    int n_greedy = 0, max_top = 0;
    int drawn[CUDA_LOGIT_CHUNK], n_drawn = 0; /* rows for kern_sample */
    for (int i = 0; i < n; i++) {
        const struct logit_row *row = &b->rows[r0 + i];
        if (row->sample && row_greedy_on_gpu(row))
            hm[ly->greedy_rows + (size_t)r0 + n_greedy++] = i;
        else if (row->sample && !cb->host_sampling)
            drawn[n_drawn++] = i;
        if (row->n_top > max_top) max_top = row->n_top;
    }
    if (n_greedy)
        CU(cudaMemcpyAsync(cb->d_meta + ly->greedy_rows + r0, hm + ly->greedy_rows + r0,
                           4 * (size_t)n_greedy, cudaMemcpyHostToDevice, s));
    st = lm_head(cb, ly, r0, n, err);
    if (st != ES_OK) goto err;
    cbs_prof_mark(cb, PROF_LOGPROBS);
    CU(kern_logprobs(cb->logits, n, V, dm + ly->n_top + r0, dm + ly->target + r0, max_top,
                     cb->d_lse, cb->d_top_ids, cb->d_top_lp, cb->d_target_lp, cb->d_target_rank,
                     s));
    cbs_prof_mark(cb, PROF_GREEDY);
    CU(kern_greedy(cb->logits, dm + ly->greedy_rows + r0, n_greedy, V, cb->d_lse, cb->d_token,
                   cb->d_logprob, s));
    cbs_prof_mark(cb, PROF_SAMPLE);
    if ((st = cbsm_draw(cb, b, r0, drawn, n_drawn, err)) != ES_OK) goto err;
    size_t nz = (size_t)n;
    cbs_prof_mark(cb, PROF_RESULTS);
    CU(cudaMemcpyAsync(cb->h_target_lp, cb->d_target_lp, 4 * nz, cudaMemcpyDeviceToHost, s));
    CU(cudaMemcpyAsync(cb->h_target_rank, cb->d_target_rank, 4 * nz, cudaMemcpyDeviceToHost, s));
    if (n_greedy || n_drawn) {
        CU(cudaMemcpyAsync(cb->h_token, cb->d_token, 4 * nz, cudaMemcpyDeviceToHost, s));
        CU(cudaMemcpyAsync(cb->h_logprob, cb->d_logprob, 4 * nz, cudaMemcpyDeviceToHost, s));
    }
    if (max_top > 0) {
        CU(cudaMemcpyAsync(cb->h_top_ids, cb->d_top_ids, 4 * nz * KERN_MAX_TOP,
                           cudaMemcpyDeviceToHost, s));
        CU(cudaMemcpyAsync(cb->h_top_lp, cb->d_top_lp, 4 * nz * KERN_MAX_TOP,
                           cudaMemcpyDeviceToHost, s));
    }
    cbs_prof_mark(cb, PROF_END);
    if (cb->prof) cb->prof->host_ms[cb->prof->cls] += cbs_now_ms() - cb->prof_t0;
    CU(cudaStreamSynchronize(s));
    if (cb->prof) cb->prof_t0 = cbs_now_ms();

    int g = 0, d = 0;
    for (int i = 0; i < n; i++) {
        const struct logit_row *row = &b->rows[r0 + i];
        struct row_result *out = &res->rows[r0 + i];
        int k = row->n_top > BACKEND_MAX_TOP_LOGPROBS ? BACKEND_MAX_TOP_LOGPROBS : row->n_top;
        if (k > V) k = V;
        out->n_top = k > 0 ? k : 0;
        for (int j = 0; j < out->n_top; j++) {
            out->top_ids[j] = cb->h_top_ids[(size_t)i * KERN_MAX_TOP + (size_t)j];
            out->top_logprobs[j] = cb->h_top_lp[(size_t)i * KERN_MAX_TOP + (size_t)j];
        }
        out->target_logprob = cb->h_target_lp[i];
        out->target_rank = cb->h_target_rank[i];
        out->token = -1;
        out->logprob = 0.0f;
        if (g < n_greedy && hm[ly->greedy_rows + (size_t)r0 + g] == i) {
            out->token = cb->h_token[i];
            out->logprob = cb->h_logprob[i];
            g++;
        } else if (d < n_drawn && drawn[d] == i) {
            out->token = cb->h_token[i];
            out->logprob = cb->h_logprob[i];
            d++;
        }
    }

    /* rows drawn by the reference sampler, CUDA_HOST_ROWS logits rows per round trip */
    int host_idx[CUDA_HOST_ROWS];
    int nh = 0;
    for (int i = 0; i <= n; i++) {
        bool flush = i == n;
        if (!flush) {
            const struct logit_row *row = &b->rows[r0 + i];
            if (cb->host_sampling && row->sample && !row_greedy_on_gpu(row)) {
                CU(cudaMemcpyAsync(cb->h_logits + (size_t)nh * V, cb->logits + (size_t)i * V,
                                   4 * (size_t)V, cudaMemcpyDeviceToHost, s));
                host_idx[nh++] = i;
            }
            flush = nh == CUDA_HOST_ROWS;
        }
        if (flush && nh) {
            CU(cudaStreamSynchronize(s));
            struct host_draw draw = {.cb = cb, .b = b, .res = res, .r0 = r0, .idx = host_idx};
            cpool_run(cb->sample_pool, host_draw_task, &draw, nh);
            nh = 0;
        }
    }
err:
    return st;
}

enum es_status cbs_forward(struct cuda_backend *cb, const struct batch *b, struct batch_result *res,
                           struct es_err *err)
{
    enum es_status st = ES_OK;
    struct cuda_meta_layout ly = {0};
    int max_ctx = 0;
    CU(cudaSetDevice(cb->device));
    /* The last forward's send is received by now (cbp_send says why);
     * wait for it before the metadata buffer is written again. */
    if (cb->pp_send_pending) {
        CU(cudaStreamSynchronize(cb->stream));
        cb->pp_send_pending = false;
    }
    if (cb->prof) {
        cb->prof_t0 = cbs_now_ms();
        cb->prof->cls = b->decode_only ? PROF_DECODE : PROF_MIXED;
    }
    bool first = cuda_first_stage(&cb->shard), last = cuda_last_stage(&cb->shard);
    if (!b->hidden_in != first || !b->hidden_out != last)
        return es_fail(
            err, ES_EINVAL, "cuda: pipeline stage %d of %d needs hidden_in %s and hidden_out %s",
            cb->shard.pp_stage, cb->shard.pp_size, first ? "unset" : "set", last ? "unset" : "set");
    bool graph = cgr_wanted(cb, b);
    st = pack_meta(cb, b, graph, &ly, &max_ctx, err);
    if (st != ES_OK) return st;
    cbs_prof_mark(cb, PROF_UPLOAD);
    CU(cudaMemcpyAsync(cb->d_meta, cb->h_meta, 4 * ly.total, cudaMemcpyHostToDevice, cb->stream));
    size_t stream_bytes = sizeof(float) * (size_t)b->n_tokens * (size_t)cb->H;
    /* the residual stream of the stage before (every tp rank takes all of it) */
    if (!first && cb->pp_nccl) {
        if ((st = cbp_recv(cb, b->n_tokens, err)) != ES_OK) goto err;
    } else if (!first) {
        CU(cudaMemcpyAsync(cb->resid, b->hidden_in, stream_bytes, cudaMemcpyHostToDevice,
                           cb->stream));
    }
    st = graph ? cgr_run_layers(cb, &ly, max_ctx, err) : cbs_run_layers(cb, &ly, max_ctx, err);
    if (st != ES_OK) goto err;
    if (!last && cb->pp_nccl) { /* rank r to the next stage's rank r */
        if ((st = cbp_send(cb, b->n_tokens, err)) != ES_OK) goto err;
    } else if (!last && cb->shard.tp_rank == 0) { /* every rank holds the same stream */
        CU(cudaMemcpyAsync(b->hidden_out, cb->resid, stream_bytes, cudaMemcpyDeviceToHost,
                           cb->stream));
    }
    for (int r0 = 0; last && r0 < b->n_rows; r0 += CUDA_LOGIT_CHUNK) {
        int n = b->n_rows - r0 < CUDA_LOGIT_CHUNK ? b->n_rows - r0 : CUDA_LOGIT_CHUNK;
        st = run_rows(cb, b, &ly, r0, n, res, err);
        if (st != ES_OK) goto err;
    }
    /* run_rows synchronised rank 0's stream; the other ranks', a stage
     * before the last and a step without rows still hold work in flight
     * (except a send, waited for by the next forward) */
    if (!cb->pp_send_pending && (!last || b->n_rows == 0 || cb->shard.tp_rank != 0)) {
        cbs_prof_mark(cb, PROF_END);
        CU(cudaStreamSynchronize(cb->stream));
    }
    if (cb->prof) {
        cb->prof->host_ms[cb->prof->cls] += cbs_now_ms() - cb->prof_t0;
        prof_collect(cb);
    }
err:
    return st;
}
