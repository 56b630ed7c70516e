/*
 * backend_cpu.c - the plain-C reference backend: the forward pass of
 * Llama, Mistral, Qwen2 (q/k/v bias) and Qwen3 (per-head q/k RMSNorm) in
 * fp32 over bf16/f16/f32 weights read from the safetensors mmap, with a
 * paged fp32 KV cache addressed exactly as backend.h fixes it.
 *
 * Owns: the mapped checkpoint, fp32 copies of the small vectors (norms,
 * biases), the KV cache (layout in backend_cpu.h), a thread pool and every
 * step buffer, all sized at load() for max_num_batched_tokens tokens and
 * max_model_len context; forward() never allocates. It never sees
 * requests, and reports a malformed batch as ES_EINVAL instead of reading
 * out of bounds (it is the oracle the CUDA backend is checked against, so
 * it checks everything it is given).
 *
 * One step: embed -> per layer [RMSNorm, q/k/v projections (+bias), q/k
 * norm (Qwen3), RoPE, K/V written through slot_mapping, causal GQA
 * attention over each sequence's context read through its block table,
 * o_proj + residual, RMSNorm, SwiGLU MLP + residual] -> final RMSNorm and
 * lm_head only for the rows that want logits -> sampling.c per row.
 *
 * Tensor parallelism (backend_opts.tp_size > 1, driven by backend_tp.c):
 * this instance is one rank and holds its shard (backend_cpu_impl.h,
 * backend_cpu_shard.c). The step is the same with three collectives
 * through opts.comm: an all-reduce of the embedded rows (each rank embeds
 * only the ids of its vocabulary slice), one after o_proj and one after
 * down_proj (before the residual adds), and a gather of the logits, which
 * rank 0 alone samples. Every rank keeps the whole residual stream; the
 * all-reduce is bit-identical on all ranks, so they never drift apart.
 *
 * Pipeline parallelism (backend_opts.pp_size > 1, driven by backend_pp.c):
 * this instance is one stage and holds only its layers and their KV
 * cache. A stage after the first copies its residual stream in from
 * batch.hidden_in instead of embedding; one before the last stops after
 * its last layer and copies the stream out to batch.hidden_out (tp rank 0
 * alone writes it: every rank holds the same stream). Each token's
 * arithmetic is the same as in one whole-model instance, so a pipeline
 * gives bit-identical results.
 */
#include "backend_cpu.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend_cpu_impl.h"
#include "log.h"

#define LOG_CPU(...) LOG_I("cpu", __VA_ARGS__)

#define CPU_DEFAULT_BLOCK_SIZE 16
#define CPU_DEFAULT_MAX_TOKENS 2048
#define CPU_DEFAULT_MAX_SEQS 256
#define CPU_DEFAULT_KV_BYTES ((size_t)1 << 30)
#define CPU_TOKENS_PER_TASK 8

/* ---- loading ---------------------------------------------------------- */

static void model_free(struct cpu_model *m)
{
    if (!m) return;
    cpu_shard_free_weights(m);
    free(m->k_cache);
    free(m->v_cache);
    free(m->inv_freq);
    free(m->x);
    free(m->xn);
    free(m->q);
    free(m->k);
    free(m->v);
    free(m->att);
    free(m->gate);
    free(m->up);
    free(m->rope_cos);
    free(m->rope_sin);
    free(m->tok_seq);
    free(m->row_hidden);
    free(m->logits);
    free(m->logits_local);
    free(m->logits_gather);
    for (int i = 0; i < m->n_threads; i++) {
        if (m->row_bufs) free(m->row_bufs[i]);
        if (m->scores) free(m->scores[i]);
        if (m->smp) smp_scratch_destroy(m->smp[i]);
    }
    free(m->row_bufs);
    free(m->scores);
    free(m->smp);
    cpool_destroy(m->pool);
    st_close(m->st);
    free(m);
}

static enum es_status check_config(const struct model_config *c, struct es_err *err)
{
    if (c->hidden_size <= 0 || c->num_layers <= 0 || c->num_heads <= 0 || c->num_kv_heads <= 0 ||
        c->head_dim <= 0 || c->intermediate_size <= 0 || c->vocab_size <= 0)
        return es_fail(err, ES_EINVAL, "cpu backend: model config has a zero dimension");
    if (c->num_heads % c->num_kv_heads != 0)
        return es_fail(err, ES_EINVAL, "cpu backend: %d heads not a multiple of %d kv heads",
                       c->num_heads, c->num_kv_heads);
    if (c->head_dim % 2 != 0)
        return es_fail(err, ES_EINVAL, "cpu backend: odd head_dim %d", c->head_dim);
    return ES_OK;
}

static void *alloc_floats(size_t n)
{
    return malloc(sizeof(float) * (n ? n : 1));
}

static enum es_status alloc_workspace(struct cpu_model *m, const struct backend_opts *opts,
                                      struct es_err *err)
{
    size_t T = (size_t)m->max_tokens;
    m->x = alloc_floats(T * m->hidden);
    m->xn = alloc_floats(T * m->hidden);
    m->q = alloc_floats(T * m->q_dim);
    m->k = alloc_floats(T * m->kv_dim);
    m->v = alloc_floats(T * m->kv_dim);
    m->att = alloc_floats(T * m->q_dim);
    m->gate = alloc_floats(T * m->inter);
    m->up = alloc_floats(T * m->inter);
    m->rope_cos = alloc_floats(T * m->half_dim);
    m->rope_sin = alloc_floats(T * m->half_dim);
    m->tok_seq = malloc(sizeof(int32_t) * T);
    m->row_hidden = alloc_floats((size_t)CPU_LOGIT_CHUNK * m->hidden);
    /* Logits and sampling: the last pipeline stage only. */
    bool logits_here = cpu_last_stage(m);
    if (logits_here && m->tp_size > 1) {
        size_t chunk = (size_t)CPU_LOGIT_CHUNK * m->vocab_max;
        m->logits_local = alloc_floats(chunk);
        m->logits_gather = alloc_floats(chunk * (size_t)m->tp_size);
        if (!m->logits_local || !m->logits_gather)
            return es_fail(err, ES_ENOMEM, "cpu backend: out of memory for logits");
    }
    /* Only rank 0 reassembles the whole vocabulary and samples. */
    if (logits_here && m->tp_rank == 0) {
        m->logits = alloc_floats((size_t)CPU_LOGIT_CHUNK * m->vocab);
        if (!m->logits) return es_fail(err, ES_ENOMEM, "cpu backend: out of memory for logits");
    }
    m->inv_freq = malloc(sizeof(double) * (size_t)m->half_dim);
    if (!m->x || !m->xn || !m->q || !m->k || !m->v || !m->att || !m->gate || !m->up ||
        !m->rope_cos || !m->rope_sin || !m->tok_seq || !m->row_hidden || !m->inv_freq)
        return es_fail(err, ES_ENOMEM, "cpu backend: out of memory for step buffers");

    enum es_status st = cpool_create(opts->num_threads, &m->pool, err);
    if (st != ES_OK) return st;
    m->n_threads = cpool_size(m->pool);
    m->row_bufs = calloc((size_t)m->n_threads, sizeof(float *));
    m->scores = calloc((size_t)m->n_threads, sizeof(float *));
    m->smp = calloc((size_t)m->n_threads, sizeof(struct smp_scratch *));
    if (!m->row_bufs || !m->scores || !m->smp)
        return es_fail(err, ES_ENOMEM, "cpu backend: out of memory");
    int max_cols = m->hidden > m->q_dim ? m->hidden : m->q_dim;
    if (m->inter > max_cols) max_cols = m->inter;
    for (int i = 0; i < m->n_threads; i++) {
        m->row_bufs[i] = alloc_floats((size_t)CMATH_ROWS_PER_TASK * max_cols);
        m->scores[i] = alloc_floats((size_t)m->group * m->max_ctx);
        if (!m->row_bufs[i] || !m->scores[i])
            return es_fail(err, ES_ENOMEM, "cpu backend: out of memory");
        if (!logits_here || m->tp_rank != 0) continue;
        st = smp_scratch_create(m->vocab, &m->smp[i], err);
        if (st != ES_OK) return st;
    }
    return ES_OK;
}

static enum es_status alloc_kv(struct cpu_model *m, const struct backend_opts *opts,
                               struct es_err *err)
{
    m->kv_block_floats = (size_t)m->n_layers * m->block_size * m->kv_dim;
    size_t block_bytes = 2 * sizeof(float) * m->kv_block_floats;
    long long n = opts->num_kv_blocks;
    if (n <= 0) {
        size_t budget = opts->kv_cache_bytes > 0 ? opts->kv_cache_bytes : CPU_DEFAULT_KV_BYTES;
        n = (long long)(budget / block_bytes);
        /* No point in more blocks than max_num_seqs full contexts. */
        long long per_seq = (m->max_ctx + m->block_size - 1) / m->block_size;
        long long seqs = opts->max_num_seqs > 0 ? opts->max_num_seqs : CPU_DEFAULT_MAX_SEQS;
        if (n > per_seq * seqs) n = per_seq * seqs;
    }
    if (n <= 0 || n > INT32_MAX / m->block_size)
        return es_fail(err, ES_EINVAL, "cpu backend: KV budget gives %lld blocks", n);
    m->n_blocks = (int)n;
    m->k_cache = calloc((size_t)n, block_bytes / 2);
    m->v_cache = calloc((size_t)n, block_bytes / 2);
    if (!m->k_cache || !m->v_cache)
        return es_fail(err, ES_ENOMEM, "cpu backend: out of memory for %lld KV blocks", n);
    return ES_OK;
}

static enum es_status cpu_load(struct backend *be, const struct model_config *cfg, const char *dir,
                               const struct backend_opts *opts, struct es_err *err)
{
    enum es_status st = check_config(cfg, err);
    if (st != ES_OK) return st;
    struct cpu_model *m = calloc(1, sizeof(*m));
    if (!m) return es_fail(err, ES_ENOMEM, "cpu backend: out of memory");
    m->cfg = *cfg;
    m->hidden = cfg->hidden_size;
    m->head_dim = cfg->head_dim;
    m->half_dim = cfg->head_dim / 2;
    m->group = cfg->num_heads / cfg->num_kv_heads;
    m->vocab = cfg->vocab_size;
    m->tp_size = opts->tp_size > 1 ? opts->tp_size : 1;
    m->tp_rank = m->tp_size > 1 ? opts->tp_rank : 0;
    m->comm = opts->comm;
    if (m->tp_size > 1 && (!m->comm || m->comm->size != m->tp_size || m->comm->rank != m->tp_rank)) {
        free(m);
        return es_fail(err, ES_EINVAL, "cpu backend: tensor-parallel rank %d of %d without a "
                                       "matching comm", opts->tp_rank, opts->tp_size);
    }
    st = cpu_stage_plan(m, opts, err);
    if (st == ES_OK) st = cpu_shard_plan(m, err);
    if (st != ES_OK) {
        free(m);
        return st;
    }
    m->eps = (float)(cfg->rms_norm_eps > 0 ? cfg->rms_norm_eps : 1e-6);
    m->block_size = opts->block_size > 0 ? opts->block_size : CPU_DEFAULT_BLOCK_SIZE;
    m->max_tokens =
        opts->max_num_batched_tokens > 0 ? opts->max_num_batched_tokens : CPU_DEFAULT_MAX_TOKENS;
    m->max_ctx = opts->max_model_len > 0            ? opts->max_model_len
                 : cfg->max_position_embeddings > 0 ? cfg->max_position_embeddings
                                                    : 4096;

    st = st_open_dir(dir, &m->st, err);
    if (st != ES_OK) goto err;
    if ((st = cpu_shard_load_weights(m, err)) != ES_OK) goto err;

    if ((st = alloc_workspace(m, opts, err)) != ES_OK) goto err;
    if ((st = alloc_kv(m, opts, err)) != ES_OK) goto err;
    cmath_rope_inv_freq(&m->cfg, m->inv_freq);

    be->impl = m;
    be->cfg = &m->cfg;
    be->block_size = m->block_size;
    be->num_kv_blocks = m->n_blocks;
    if (m->tp_size > 1)
        LOG_CPU("tp rank %d of %d: heads [%d, %d), kv heads [%d, %d), mlp [%d, %d), vocab [%d, %d)",
                m->tp_rank, m->tp_size, m->head0, m->head0 + m->n_heads, m->kv_head0,
                m->kv_head0 + m->n_kv, m->inter0, m->inter0 + m->inter, m->vocab0,
                m->vocab0 + m->vocab_n);
    if (m->pp_size > 1)
        LOG_CPU("pp stage %d of %d: layers [%d, %d)", m->pp_stage, m->pp_size, m->layer0,
                m->layer0 + m->n_layers);
    LOG_CPU("%s: %d layers, hidden %d, vocab %d; %d threads, %d KV blocks of %d tokens (%.1f MiB)",
            cfg->arch_name, cfg->num_layers, m->hidden, m->vocab, m->n_threads, m->n_blocks,
            m->block_size, 2.0 * sizeof(float) * m->kv_block_floats * m->n_blocks / 1048576.0);
    return ES_OK;
err:
    es_wrap(err, st, "cpu backend: %s", dir);
    model_free(m);
    return st;
}

static void cpu_destroy(struct backend *be)
{
    if (!be) return;
    model_free(be->impl);
    be->impl = NULL;
}

static enum es_status cpu_copy_blocks(struct backend *be, const int32_t *src, const int32_t *dst,
                                      int n, struct es_err *err)
{
    struct cpu_model *m = be->impl;
    for (int i = 0; i < n; i++)
        if (src[i] < 0 || src[i] >= m->n_blocks || dst[i] < 0 || dst[i] >= m->n_blocks)
            return es_fail(err, ES_EINVAL, "copy_blocks: block %d -> %d out of range [0, %d)",
                           src[i], dst[i], m->n_blocks);
    size_t bytes = sizeof(float) * m->kv_block_floats;
    for (int i = 0; i < n; i++) {
        if (src[i] == dst[i]) continue;
        memcpy(m->k_cache + (size_t)dst[i] * m->kv_block_floats,
               m->k_cache + (size_t)src[i] * m->kv_block_floats, bytes);
        memcpy(m->v_cache + (size_t)dst[i] * m->kv_block_floats,
               m->v_cache + (size_t)src[i] * m->kv_block_floats, bytes);
    }
    return ES_OK;
}

/* ---- the step ---------------------------------------------------------- */

/* Offset of (slot, local layer) in either cache, in floats. */
static inline size_t kv_offset(const struct cpu_model *m, int32_t slot, int layer)
{
    size_t blk = (size_t)(slot / m->block_size), off = (size_t)(slot % m->block_size);
    return ((blk * m->n_layers + (size_t)layer) * m->block_size + off) * m->kv_dim;
}

static enum es_status check_batch(const struct cpu_model *m, const struct batch *b,
                                  struct es_err *err)
{
    if (b->n_tokens < 0 || b->n_tokens > m->max_tokens)
        return es_fail(err, ES_EINVAL, "batch: %d tokens (max %d)", b->n_tokens, m->max_tokens);
    if (b->n_seqs < 0 || b->n_rows < 0 ||
        (b->n_seqs == 0
             ? b->n_tokens != 0
             : b->seq_token_start[0] != 0 || b->seq_token_start[b->n_seqs] != b->n_tokens))
        return es_fail(err, ES_EINVAL, "batch: sequence starts do not cover the tokens");
    int bs = m->block_size;
    for (int s = 0; s < b->n_seqs; s++) {
        int t0 = b->seq_token_start[s], t1 = b->seq_token_start[s + 1];
        if (t1 < t0) return es_fail(err, ES_EINVAL, "batch: sequence %d has negative length", s);
        const int32_t *bt = b->block_tables + (size_t)s * b->block_table_stride;
        int32_t max_pos = -1;
        for (int i = t0; i < t1; i++) {
            int32_t tok = b->token_ids[i], pos = b->positions[i];
            if (tok < 0 || tok >= m->vocab)
                return es_fail(err, ES_EINVAL, "batch: token id %d outside the vocabulary", tok);
            if (pos < 0 || pos >= m->max_ctx || pos / bs >= b->block_table_stride)
                return es_fail(err, ES_EINVAL, "batch: position %d out of range", pos);
            if (pos > max_pos) max_pos = pos;
            int32_t slot = b->slot_mapping[i];
            if (slot >= 0 && slot != bt[pos / bs] * bs + pos % bs)
                return es_fail(err, ES_EINVAL,
                               "batch: token %d slot %d disagrees with its block table", i, slot);
        }
        /* every block the attention of these tokens will read */
        for (int j = 0; max_pos >= 0 && j <= max_pos / bs; j++)
            if (bt[j] < 0 || bt[j] >= m->n_blocks)
                return es_fail(err, ES_EINVAL, "batch: seq %d block %d is %d (of %d)", s, j, bt[j],
                               m->n_blocks);
        if (t1 > t0 && b->positions[t1 - 1] + 1 != b->seq_context_len[s])
            return es_fail(err, ES_EINVAL, "batch: seq %d context %d but last position %d", s,
                           b->seq_context_len[s], b->positions[t1 - 1]);
    }
    for (int r = 0; r < b->n_rows; r++)
        if (b->rows[r].token_index < 0 || b->rows[r].token_index >= b->n_tokens)
            return es_fail(err, ES_EINVAL, "batch: row %d token index %d", r,
                           b->rows[r].token_index);
    if (!b->hidden_in != cpu_first_stage(m) || !b->hidden_out != cpu_last_stage(m))
        return es_fail(err, ES_EINVAL,
                       "batch: pipeline stage %d of %d needs hidden_in %s and hidden_out %s",
                       m->pp_stage, m->pp_size, cpu_first_stage(m) ? "unset" : "set",
                       cpu_last_stage(m) ? "unset" : "set");
    return ES_OK;
}

enum step_phase {
    PH_EMBED,     /* x = embedding; rope tables */
    PH_ATTN_NORM, /* xn = rmsnorm(x) */
    PH_QK_POST,   /* q/k norm, RoPE, K/V into the cache */
    PH_MLP_NORM,  /* x += xn (o_proj out); xn = rmsnorm(x) */
    PH_SWIGLU,    /* gate = silu(gate) * up */
    PH_RESIDUAL,  /* x += xn (down_proj out) */
};

struct step_ctx {
    struct cpu_model *m;
    const struct batch *b;
    int layer;
    enum step_phase phase;
    int n_rows;                  /* logits: rows in this chunk */
    int row0;                    /* logits: first row of this chunk */
    struct batch_result *result; /* logits: where sampled rows go */
};

static void token_task(void *ctxp, int task, int thread)
{
    const struct step_ctx *c = ctxp;
    struct cpu_model *m = c->m;
    const struct batch *b = c->b;
    const struct cpu_layer *L = c->phase == PH_EMBED ? NULL : &m->layers[c->layer];
    int t0 = task * CPU_TOKENS_PER_TASK;
    int t1 = t0 + CPU_TOKENS_PER_TASK < b->n_tokens ? t0 + CPU_TOKENS_PER_TASK : b->n_tokens;
    int H = m->hidden, hd = m->head_dim, half = m->half_dim;
    for (int t = t0; t < t1; t++) {
        float *x = m->x + (size_t)t * H, *xn = m->xn + (size_t)t * H;
        switch (c->phase) {
        case PH_EMBED: {
            /* pp: a later stage continues the previous stage's stream.
             * tp: ids outside this rank's vocabulary slice embed as zeros;
             * the all-reduce fills them in. */
            int32_t id = b->token_ids[t] - m->vocab0;
            if (b->hidden_in)
                memcpy(x, b->hidden_in + (size_t)t * H, sizeof(float) * (size_t)H);
            else if (id >= 0 && id < m->vocab_n)
                cmath_row_f32(&m->embed, id, x);
            else
                memset(x, 0, sizeof(float) * (size_t)H);
            cmath_rope_angles(m->inv_freq, half, b->positions[t], m->rope_cos + (size_t)t * half,
                              m->rope_sin + (size_t)t * half);
            break;
        }
        case PH_ATTN_NORM:
            cmath_rmsnorm(x, L->attn_norm, H, m->eps, xn);
            break;
        case PH_QK_POST: {
            const float *cs = m->rope_cos + (size_t)t * half, *sn = m->rope_sin + (size_t)t * half;
            float *q = m->q + (size_t)t * m->q_dim, *k = m->k + (size_t)t * m->kv_dim;
            for (int h = 0; h < m->n_heads; h++) {
                if (L->q_norm) cmath_rmsnorm(q + h * hd, L->q_norm, hd, m->eps, q + h * hd);
                cmath_rope_apply(q + h * hd, cs, sn, half);
            }
            for (int h = 0; h < m->n_kv; h++) {
                if (L->k_norm) cmath_rmsnorm(k + h * hd, L->k_norm, hd, m->eps, k + h * hd);
                cmath_rope_apply(k + h * hd, cs, sn, half);
            }
            int32_t slot = b->slot_mapping[t];
            if (slot >= 0) {
                size_t off = kv_offset(m, slot, c->layer);
                memcpy(m->k_cache + off, k, sizeof(float) * m->kv_dim);
                memcpy(m->v_cache + off, m->v + (size_t)t * m->kv_dim, sizeof(float) * m->kv_dim);
            }
            break;
        }
        case PH_MLP_NORM:
            for (int i = 0; i < H; i++)
                x[i] += xn[i];
            cmath_rmsnorm(x, L->mlp_norm, H, m->eps, xn);
            break;
        case PH_SWIGLU: {
            float *g = m->gate + (size_t)t * m->inter, *u = m->up + (size_t)t * m->inter;
            for (int i = 0; i < m->inter; i++)
                g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
            break;
        }
        case PH_RESIDUAL:
            for (int i = 0; i < H; i++)
                x[i] += xn[i];
            break;
        }
    }
    (void)thread;
}

static void run_tokens(struct step_ctx *c, enum step_phase phase)
{
    c->phase = phase;
    int n_tasks = (c->b->n_tokens + CPU_TOKENS_PER_TASK - 1) / CPU_TOKENS_PER_TASK;
    cpool_run(c->m->pool, token_task, c, n_tasks);
}

/* One task = one new token x one KV head: the scores of the head's query
 * group over the token's visible context, softmax, weighted sum of V. */
static void attention_task(void *ctxp, int task, int thread)
{
    const struct step_ctx *c = ctxp;
    struct cpu_model *m = c->m;
    const struct batch *b = c->b;
    int n_kv = m->n_kv, hd = m->head_dim, group = m->group, bs = m->block_size;
    int t = task / n_kv, g = task % n_kv;
    int s = m->tok_seq[t];
    int32_t pos = b->positions[t];
    const int32_t *bt = b->block_tables + (size_t)s * b->block_table_stride;
    int lo = 0;
    if (m->cfg.sliding_window > 0 && pos - m->cfg.sliding_window + 1 > 0)
        lo = pos - m->cfg.sliding_window + 1;
    int n_ctx = pos + 1 - lo;
    float scale = 1.0f / sqrtf((float)hd);
    float *scores = m->scores[thread]; /* [group][n_ctx] */
    const float *q = m->q + (size_t)t * m->q_dim + (size_t)g * group * hd;
    float *out = m->att + (size_t)t * m->q_dim + (size_t)g * group * hd;

    for (int j = 0; j < n_ctx; j++) {
        int p = lo + j;
        const float *kp = m->k_cache + kv_offset(m, bt[p / bs] * bs + p % bs, c->layer) + g * hd;
        for (int h = 0; h < group; h++)
            scores[(size_t)h * n_ctx + j] = cmath_dot(q + h * hd, kp, hd) * scale;
    }
    for (int h = 0; h < group; h++) {
        float *sc = scores + (size_t)h * n_ctx, mx = -INFINITY;
        for (int j = 0; j < n_ctx; j++)
            mx = sc[j] > mx ? sc[j] : mx;
        float sum = 0.0f;
        for (int j = 0; j < n_ctx; j++) {
            sc[j] = expf(sc[j] - mx);
            sum += sc[j];
        }
        float inv = 1.0f / sum;
        for (int j = 0; j < n_ctx; j++)
            sc[j] *= inv;
        memset(out + h * hd, 0, sizeof(float) * hd);
    }
    for (int j = 0; j < n_ctx; j++) {
        int p = lo + j;
        const float *vp = m->v_cache + kv_offset(m, bt[p / bs] * bs + p % bs, c->layer) + g * hd;
        for (int h = 0; h < group; h++)
            cmath_axpy(out + h * hd, scores[(size_t)h * n_ctx + j], vp, hd);
    }
}

static enum es_status layer_forward(struct step_ctx *c, int li, struct es_err *err)
{
    struct cpu_model *m = c->m;
    const struct cpu_layer *L = &m->layers[li];
    int T = c->b->n_tokens, H = m->hidden;
    float *const *rb = m->row_bufs;
    c->layer = li;
    run_tokens(c, PH_ATTN_NORM);
    cmath_matmul(m->pool, rb, &L->wq, L->bq, m->xn, H, T, m->q, m->q_dim);
    cmath_matmul(m->pool, rb, &L->wk, L->bk, m->xn, H, T, m->k, m->kv_dim);
    cmath_matmul(m->pool, rb, &L->wv, L->bv, m->xn, H, T, m->v, m->kv_dim);
    run_tokens(c, PH_QK_POST);
    cpool_run(m->pool, attention_task, c, T * m->n_kv);
    cmath_matmul(m->pool, rb, &L->wo, L->bo, m->att, m->q_dim, T, m->xn, H);
    enum es_status st = cpu_shard_all_reduce(m, m->xn, (size_t)T * H, err);
    if (st != ES_OK) return st;
    run_tokens(c, PH_MLP_NORM);
    cmath_matmul(m->pool, rb, &L->gate, L->bgate, m->xn, H, T, m->gate, m->inter);
    cmath_matmul(m->pool, rb, &L->up, L->bup, m->xn, H, T, m->up, m->inter);
    run_tokens(c, PH_SWIGLU);
    cmath_matmul(m->pool, rb, &L->down, L->bdown, m->gate, m->inter, T, m->xn, H);
    if ((st = cpu_shard_all_reduce(m, m->xn, (size_t)T * H, err)) != ES_OK) return st;
    run_tokens(c, PH_RESIDUAL);
    return ES_OK;
}

static void sample_task(void *ctxp, int task, int thread)
{
    const struct step_ctx *c = ctxp;
    struct cpu_model *m = c->m;
    int r = c->row0 + task;
    smp_row(m->smp[thread], m->logits + (size_t)task * m->vocab, &c->b->rows[r],
            &c->result->rows[r]);
}

/* The whole step; with logits_out the rows' raw logits are copied out
 * instead of sampled. */
static enum es_status step(struct cpu_model *m, const struct batch *b, struct batch_result *result,
                           float *logits_out, struct es_err *err)
{
    enum es_status st = check_batch(m, b, err);
    if (st != ES_OK) return st;
    if (b->n_tokens == 0) return ES_OK;
    for (int s = 0; s < b->n_seqs; s++)
        for (int t = b->seq_token_start[s]; t < b->seq_token_start[s + 1]; t++)
            m->tok_seq[t] = s;
    struct step_ctx c = {.m = m, .b = b, .result = result};
    int H = m->hidden;
    run_tokens(&c, PH_EMBED);
    if (cpu_first_stage(m) &&
        (st = cpu_shard_all_reduce(m, m->x, (size_t)b->n_tokens * H, err)) != ES_OK)
        return st;
    for (int li = 0; li < m->n_layers; li++)
        if ((st = layer_forward(&c, li, err)) != ES_OK) return st;
    if (!cpu_last_stage(m)) {
        if (m->tp_rank == 0) memcpy(b->hidden_out, m->x, sizeof(float) * (size_t)b->n_tokens * H);
        return ES_OK;
    }

    for (int r0 = 0; r0 < b->n_rows; r0 += CPU_LOGIT_CHUNK) {
        int nr = b->n_rows - r0 < CPU_LOGIT_CHUNK ? b->n_rows - r0 : CPU_LOGIT_CHUNK;
        for (int r = 0; r < nr; r++)
            cmath_rmsnorm(m->x + (size_t)b->rows[r0 + r].token_index * H, m->final_norm, H, m->eps,
                          m->row_hidden + (size_t)r * H);
        if (m->tp_size == 1) {
            cmath_matmul(m->pool, m->row_bufs, &m->lm_head, NULL, m->row_hidden, H, nr, m->logits,
                         m->vocab);
        } else {
            cmath_matmul(m->pool, m->row_bufs, &m->lm_head, NULL, m->row_hidden, H, nr,
                         m->logits_local, m->vocab_max);
            if ((st = cpu_shard_gather_logits(m, nr, err)) != ES_OK) return st;
            if (m->tp_rank != 0) continue; /* rank 0 samples for the group */
        }
        if (logits_out) {
            memcpy(logits_out + (size_t)r0 * m->vocab, m->logits,
                   sizeof(float) * (size_t)nr * m->vocab);
        } else {
            c.row0 = r0;
            c.n_rows = nr;
            cpool_run(m->pool, sample_task, &c, nr);
        }
    }
    return ES_OK;
}

static enum es_status cpu_forward(struct backend *be, const struct batch *batch,
                                  struct batch_result *result, struct es_err *err)
{
    return step(be->impl, batch, result, NULL, err);
}

enum es_status backend_cpu_forward_logits(struct backend *be, const struct batch *batch,
                                          float *logits, struct es_err *err)
{
    return step(be->impl, batch, NULL, logits, err);
}

enum es_status backend_cpu_kv_slot(struct backend *be, int layer, int32_t slot, const float **k,
                                   const float **v, struct es_err *err)
{
    struct cpu_model *m = be->impl;
    int local = layer - m->layer0;
    if (local < 0 || local >= m->n_layers || slot < 0 || slot / m->block_size >= m->n_blocks)
        return es_fail(err, ES_EINVAL, "kv slot %d of layer %d out of range", slot, layer);
    size_t off = kv_offset(m, slot, local);
    *k = m->k_cache + off;
    *v = m->v_cache + off;
    return ES_OK;
}

const struct backend_ops backend_cpu_ops = {
    .name = "cpu",
    .load = cpu_load,
    .forward = cpu_forward,
    .copy_blocks = cpu_copy_blocks,
    .destroy = cpu_destroy,
};
