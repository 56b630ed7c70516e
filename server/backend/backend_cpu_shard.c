/*
 * backend_cpu_shard.c - the CPU backend's weights, cut to one
 * tensor-parallel rank's shard, and the two collectives its step makes.
 *
 * Megatron layout (rank r of tp): q/k/v rows of the rank's heads and
 * gate/up rows of its MLP columns (column-parallel: outputs are local);
 * o_proj and down_proj columns of the same (row-parallel: outputs are
 * partial sums, all-reduced by the step); embedding and lm_head rows of
 * its vocabulary slice (the embedding of an id outside the slice is zero,
 * so the all-reduce of the embedded rows is exact; lm_head logits are
 * gathered and rank 0 reassembles [rows][vocab]). Matrices stay in the
 * mmap: a slice is a pointer and a row stride (struct cmat.ld), so a rank
 * only ever touches its own part of each tensor. Small vectors (norms,
 * biases) are copied to fp32, biases only for the slice they belong to;
 * o_proj and down_proj biases live on rank 0 alone, so the sum adds them
 * once. With tp_size == 1 every slice is the whole tensor.
 *
 * Pipeline stages (backend_pp.h) cut the other way: a stage loads only
 * the layers of its range (pp_layer_range), indexed locally. The
 * embedding, lm_head and final norm are mapped on every stage (a pointer
 * into the mmap costs nothing until read); only the first stage reads the
 * embedding and only the last the other two.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend_cpu_impl.h"
#include "backend_pp.h"
#include "backend_tp.h"

/* The whole 2-D tensor `name` of shape [rows][cols]. */
static enum es_status find_matrix(struct cpu_model *m, const char *name, int rows, int cols,
                                  struct cmat *out, struct es_err *err)
{
    const struct st_tensor *t = st_find(m->st, name);
    if (!t) return es_fail(err, ES_ENOTFOUND, "checkpoint has no tensor %s", name);
    if (t->ndim != 2 || t->shape[0] != rows || t->shape[1] != cols)
        return es_fail(err, ES_EFORMAT, "tensor %s: expected shape [%d, %d]", name, rows, cols);
    *out = (struct cmat){.data = t->data, .dtype = t->dtype, .rows = rows, .cols = cols, .ld = cols};
    return ES_OK;
}

/* Elements [i0, i0 + n) of the 1-D tensor `name` of `total` elements, as
 * fp32. Missing and optional: *out = NULL. */
static enum es_status load_vector(struct cpu_model *m, const char *name, int total, int i0, int n,
                                  int required, float **out, struct es_err *err)
{
    *out = NULL;
    const struct st_tensor *t = st_find(m->st, name);
    if (!t) {
        if (!required) return ES_OK;
        return es_fail(err, ES_ENOTFOUND, "checkpoint has no tensor %s", name);
    }
    if (t->ndim != 1 || t->shape[0] != total)
        return es_fail(err, ES_EFORMAT, "tensor %s: expected shape [%d]", name, total);
    *out = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    if (!*out) return es_fail(err, ES_ENOMEM, "out of memory for %s", name);
    cmath_to_f32(t->data, t->dtype, i0, n, *out);
    return ES_OK;
}

enum slice_kind {
    SLICE_ROWS, /* column-parallel: this rank's output rows, and their bias */
    SLICE_COLS, /* row-parallel: this rank's input columns; bias on rank 0 */
};

/* A linear layer prefix.weight [rows][cols] cut to [lo, lo + n) along
 * `kind`, with prefix.bias where present (or required). */
static enum es_status load_linear(struct cpu_model *m, const char *prefix, int rows, int cols,
                                  enum slice_kind kind, int lo, int n, int bias_required,
                                  struct cmat *w, float **bias, struct es_err *err)
{
    char name[256];
    struct cmat whole;
    snprintf(name, sizeof(name), "%s.weight", prefix);
    enum es_status st = find_matrix(m, name, rows, cols, &whole, err);
    if (st != ES_OK) return st;
    *w = kind == SLICE_ROWS ? cmat_rows(&whole, lo, n) : cmat_cols(&whole, lo, n);
    snprintf(name, sizeof(name), "%s.bias", prefix);
    if (kind == SLICE_ROWS) return load_vector(m, name, rows, lo, n, bias_required, bias, err);
    st = load_vector(m, name, rows, 0, rows, bias_required, bias, err);
    if (st == ES_OK && m->tp_rank != 0) {
        free(*bias);
        *bias = NULL;
    }
    return st;
}

/* Local layer li, the model's layer layer0 + li. */
static enum es_status load_layer(struct cpu_model *m, int li, struct es_err *err)
{
    struct cpu_layer *L = &m->layers[li];
    const struct model_config *c = &m->cfg;
    int H = m->hidden, hd = m->head_dim;
    int q_all = c->num_heads * hd, kv_all = c->num_kv_heads * hd;
    int q0 = m->head0 * hd, kv0 = m->kv_head0 * hd;
    char p[160], name[256];
    snprintf(p, sizeof(p), "model.layers.%d", m->layer0 + li);
    enum es_status st;
#define TRY(expr)                                                                                  \
    do {                                                                                           \
        if ((st = (expr)) != ES_OK) return st;                                                     \
    } while (0)
    snprintf(name, sizeof(name), "%s.input_layernorm.weight", p);
    TRY(load_vector(m, name, H, 0, H, 1, &L->attn_norm, err));
    snprintf(name, sizeof(name), "%s.post_attention_layernorm.weight", p);
    TRY(load_vector(m, name, H, 0, H, 1, &L->mlp_norm, err));
    int qkv_bias = c->attention_bias || c->arch == ARCH_QWEN2;
    snprintf(name, sizeof(name), "%s.self_attn.q_proj", p);
    TRY(load_linear(m, name, q_all, H, SLICE_ROWS, q0, m->q_dim, qkv_bias, &L->wq, &L->bq, err));
    snprintf(name, sizeof(name), "%s.self_attn.k_proj", p);
    TRY(load_linear(m, name, kv_all, H, SLICE_ROWS, kv0, m->kv_dim, qkv_bias, &L->wk, &L->bk,
                    err));
    snprintf(name, sizeof(name), "%s.self_attn.v_proj", p);
    TRY(load_linear(m, name, kv_all, H, SLICE_ROWS, kv0, m->kv_dim, qkv_bias, &L->wv, &L->bv,
                    err));
    snprintf(name, sizeof(name), "%s.self_attn.o_proj", p);
    TRY(load_linear(m, name, H, q_all, SLICE_COLS, q0, m->q_dim, 0, &L->wo, &L->bo, err));
    int I = c->intermediate_size;
    snprintf(name, sizeof(name), "%s.mlp.gate_proj", p);
    TRY(load_linear(m, name, I, H, SLICE_ROWS, m->inter0, m->inter, 0, &L->gate, &L->bgate, err));
    snprintf(name, sizeof(name), "%s.mlp.up_proj", p);
    TRY(load_linear(m, name, I, H, SLICE_ROWS, m->inter0, m->inter, 0, &L->up, &L->bup, err));
    snprintf(name, sizeof(name), "%s.mlp.down_proj", p);
    TRY(load_linear(m, name, H, I, SLICE_COLS, m->inter0, m->inter, 0, &L->down, &L->bdown, err));
    int qk_norm = c->qk_norm || c->arch == ARCH_QWEN3;
    snprintf(name, sizeof(name), "%s.self_attn.q_norm.weight", p);
    TRY(load_vector(m, name, hd, 0, hd, qk_norm, &L->q_norm, err));
    snprintf(name, sizeof(name), "%s.self_attn.k_norm.weight", p);
    TRY(load_vector(m, name, hd, 0, hd, qk_norm, &L->k_norm, err));
#undef TRY
    return ES_OK;
}

enum es_status cpu_stage_plan(struct cpu_model *m, const struct backend_opts *opts,
                              struct es_err *err)
{
    int layers = m->cfg.num_layers;
    m->pp_size = opts->pp_size > 1 ? opts->pp_size : 1;
    m->pp_stage = m->pp_size > 1 ? opts->pp_stage : 0;
    if (m->pp_stage < 0 || m->pp_stage >= m->pp_size)
        return es_fail(err, ES_EINVAL, "cpu backend: pipeline stage %d of %d", m->pp_stage,
                       m->pp_size);
    if (m->pp_size > layers)
        return es_fail(err, ES_EINVAL, "cpu backend: --pp %d exceeds the model's %d layers",
                       m->pp_size, layers);
    int hi;
    pp_layer_range(layers, m->pp_stage, m->pp_size, &m->layer0, &hi);
    m->n_layers = hi - m->layer0;
    return ES_OK;
}

enum es_status cpu_shard_plan(struct cpu_model *m, struct es_err *err)
{
    const struct model_config *c = &m->cfg;
    int tp = m->tp_size, r = m->tp_rank;
    if (tp < 1 || r < 0 || r >= tp)
        return es_fail(err, ES_EINVAL, "cpu backend: tensor-parallel rank %d of %d", r, tp);
    if (c->num_heads % tp != 0 || c->num_kv_heads % tp != 0)
        return es_fail(err, ES_EINVAL,
                       "cpu backend: --tp %d must divide the model's %d attention heads and %d "
                       "KV heads",
                       tp, c->num_heads, c->num_kv_heads);
    if (c->intermediate_size < tp || c->vocab_size < tp)
        return es_fail(err, ES_EINVAL, "cpu backend: --tp %d exceeds intermediate %d or vocab %d",
                       tp, c->intermediate_size, c->vocab_size);
    m->n_heads = c->num_heads / tp;
    m->n_kv = c->num_kv_heads / tp;
    m->head0 = r * m->n_heads;
    m->kv_head0 = r * m->n_kv;
    m->q_dim = m->n_heads * m->head_dim;
    m->kv_dim = m->n_kv * m->head_dim;
    int hi;
    tp_slice(c->intermediate_size, r, tp, &m->inter0, &hi);
    m->inter = hi - m->inter0;
    tp_slice(c->vocab_size, r, tp, &m->vocab0, &hi);
    m->vocab_n = hi - m->vocab0;
    int last_lo, last_hi;
    tp_slice(c->vocab_size, tp - 1, tp, &last_lo, &last_hi);
    m->vocab_max = last_hi - last_lo; /* the last rank's, which has the remainder */
    return ES_OK;
}

enum es_status cpu_shard_load_weights(struct cpu_model *m, struct es_err *err)
{
    const struct model_config *cfg = &m->cfg;
    struct cmat whole;
    enum es_status st = find_matrix(m, "model.embed_tokens.weight", m->vocab, m->hidden, &whole,
                                    err);
    if (st != ES_OK) return st;
    m->embed = cmat_rows(&whole, m->vocab0, m->vocab_n);
    if (cfg->tie_word_embeddings) {
        m->lm_head = m->embed;
    } else {
        st = find_matrix(m, "lm_head.weight", m->vocab, m->hidden, &whole, err);
        if (st != ES_OK) return st;
        m->lm_head = cmat_rows(&whole, m->vocab0, m->vocab_n);
    }
    st = load_vector(m, "model.norm.weight", m->hidden, 0, m->hidden, 1, &m->final_norm, err);
    if (st != ES_OK) return st;
    m->layers = calloc((size_t)m->n_layers, sizeof(struct cpu_layer));
    if (!m->layers) return es_fail(err, ES_ENOMEM, "cpu backend: out of memory");
    for (int i = 0; i < m->n_layers; i++)
        if ((st = load_layer(m, i, err)) != ES_OK) return st;
    return ES_OK;
}

void cpu_shard_free_weights(struct cpu_model *m)
{
    if (m->layers)
        for (int i = 0; i < m->n_layers; i++) {
            struct cpu_layer *L = &m->layers[i];
            float *owned[] = {L->attn_norm, L->mlp_norm, L->bq,    L->bk,     L->bv,    L->bo,
                              L->bgate,     L->bup,      L->bdown, L->q_norm, L->k_norm};
            for (size_t j = 0; j < sizeof(owned) / sizeof(owned[0]); j++)
                free(owned[j]);
        }
    free(m->layers);
    m->layers = NULL;
    free(m->final_norm);
    m->final_norm = NULL;
}

enum es_status cpu_shard_all_reduce(struct cpu_model *m, float *buf, size_t n, struct es_err *err)
{
    if (m->tp_size <= 1) return ES_OK;
    return m->comm->ops->all_reduce_sum(m->comm, buf, n, err);
}

enum es_status cpu_shard_gather_logits(struct cpu_model *m, int nr, struct es_err *err)
{
    /* Every rank sends [nr][vocab_max] (its vocab_n columns first; the
     * step wrote them at that stride), so the gather is uniform although
     * the last rank's slice is larger. */
    size_t per_rank = (size_t)nr * (size_t)m->vocab_max;
    const float *send = m->logits_local;
    enum es_status st = m->comm->ops->all_gather(m->comm, send, m->logits_gather, per_rank, err);
    if (st != ES_OK || m->tp_rank != 0) return st;
    for (int rank = 0; rank < m->tp_size; rank++) {
        int lo, hi;
        tp_slice(m->vocab, rank, m->tp_size, &lo, &hi);
        const float *src = m->logits_gather + (size_t)rank * per_rank;
        for (int r = 0; r < nr; r++)
            memcpy(m->logits + (size_t)r * m->vocab + lo, src + (size_t)r * m->vocab_max,
                   sizeof(float) * (size_t)(hi - lo));
    }
    return ES_OK;
}
