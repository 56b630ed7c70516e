/*
 * backend_cuda_weights.c - loads a Hugging Face Llama-family checkpoint
 * from safetensors (mmap) into device memory as bf16, fusing q/k/v into
 * one matrix and gate/up into another so each layer runs four GEMMs.
 *
 * Tensor parallelism: only the rank's shard (struct cuda_shard) is read
 * and copied. Row slices (q/k/v and gate/up rows of its heads and MLP
 * columns, embedding and LM-head rows of its vocabulary) are contiguous
 * ranges of the mapping; column slices (o_proj and down_proj columns) are
 * gathered row by row into the staging buffer, so the device holds each
 * as a dense [H][cols] matrix. The fused qkv and gate_up matrices are the
 * rank's own: its q rows, k rows, v rows; its gate rows, up rows.
 *
 * Pipeline parallelism: a stage reads only its layers (shard.layer0 on),
 * the first stage the embedding, the last the final norm and the LM head
 * (with tied embeddings, from the embedding's tensor).
 *
 * Owns the device copies of the weights (struct cuda_weights) and, while
 * loading, one pinned staging buffer through which every tensor travels
 * (converted to bf16 on the way when the file holds f16 or f32). Checks
 * every tensor's shape against the config before copying; never keeps a
 * pointer into the mapping after load.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend_cuda.h"
#include "log.h"
#include "safetensors.h"

#define STAGE_BYTES ((size_t)64 << 20)

#define TRY(x)                                                                                     \
    do {                                                                                           \
        st = (x);                                                                                  \
        if (st != ES_OK) goto err;                                                                 \
    } while (0)

struct loader {
    const struct st_model *m;
    uint16_t *stage; /* pinned bf16 [STAGE_BYTES / 2] */
    struct cuda_weights *w;
};

static enum es_status dev_alloc(struct loader *ld, uint16_t **out, size_t elems, struct es_err *err)
{
    enum es_status st = ES_OK;
    CU(cudaMalloc((void **)out, elems * 2));
    ld->w->bytes += elems * 2;
err:
    return st;
}

/* Elements [off, off + n) of t, as bf16 into out. */
static void to_bf16(const struct st_tensor *t, size_t off, size_t n, uint16_t *out)
{
    if (t->dtype == ST_BF16) {
        memcpy(out, (const uint16_t *)t->data + off, n * 2);
    } else if (t->dtype == ST_F16) {
        const uint16_t *s = (const uint16_t *)t->data + off;
        for (size_t i = 0; i < n; i++)
            out[i] = st_f32_to_bf16(st_f16_to_f32(s[i]));
    } else {
        const float *s = (const float *)t->data + off;
        for (size_t i = 0; i < n; i++)
            out[i] = st_f32_to_bf16(s[i]);
    }
}

/* Copies rows [r0, r0 + nr) x columns [c0, c0 + nc) of tensor `name`
 * (shape must be [rows][cols], or [rows] when cols == 0: then c0 = 0 and
 * nc = 1) to dst as a dense bf16 [nr][nc]. */
static enum es_status put_slice(struct loader *ld, const char *name, int64_t rows, int64_t cols,
                                int64_t r0, int64_t nr, int64_t c0, int64_t nc, uint16_t *dst,
                                struct es_err *err)
{
    enum es_status st = ES_OK;
    const struct st_tensor *t = st_find(ld->m, name);
    if (!t) return es_fail(err, ES_ENOTFOUND, "weights: tensor %s missing", name);
    bool ok = cols == 0 ? (t->ndim == 1 && t->shape[0] == rows)
                        : (t->ndim == 2 && t->shape[0] == rows && t->shape[1] == cols);
    if (!ok)
        return es_fail(err, ES_EFORMAT, "weights: %s has shape [%lld%s%lld], expected [%lld][%lld]",
                       name, (long long)t->shape[0], t->ndim > 1 ? "][" : "",
                       t->ndim > 1 ? (long long)t->shape[1] : 0LL, (long long)rows,
                       (long long)cols);
    size_t width = (size_t)(cols ? cols : 1), chunk = STAGE_BYTES / 2;
    if (r0 < 0 || nr < 0 || r0 + nr > rows || c0 < 0 || nc <= 0 || (size_t)(c0 + nc) > width)
        return es_fail(err, ES_EINVAL,
                       "weights: %s: slice [%lld, +%lld) x [%lld, +%lld) out of range", name,
                       (long long)r0, (long long)nr, (long long)c0, (long long)nc);
    if ((size_t)nc == width) { /* whole rows: one contiguous range */
        size_t n = (size_t)nr * width, base = (size_t)r0 * width;
        for (size_t off = 0; off < n; off += chunk) {
            size_t cnt = n - off < chunk ? n - off : chunk;
            to_bf16(t, base + off, cnt, ld->stage);
            CU(cudaMemcpy(dst + off, ld->stage, cnt * 2, cudaMemcpyHostToDevice));
        }
        return ES_OK;
    }
    size_t per_chunk = chunk / (size_t)nc; /* rows per staging round */
    if (per_chunk == 0)
        return es_fail(err, ES_EINVAL, "weights: %s: a row of %lld columns exceeds the stage", name,
                       (long long)nc);
    for (size_t i = 0; i < (size_t)nr; i += per_chunk) {
        size_t n_rows = (size_t)nr - i < per_chunk ? (size_t)nr - i : per_chunk;
        for (size_t j = 0; j < n_rows; j++)
            to_bf16(t, ((size_t)r0 + i + j) * width + (size_t)c0, (size_t)nc,
                    ld->stage + j * (size_t)nc);
        CU(cudaMemcpy(dst + i * (size_t)nc, ld->stage, n_rows * (size_t)nc * 2,
                      cudaMemcpyHostToDevice));
    }
err:
    return st;
}

/* The whole tensor (shape [rows][cols], or [rows] when cols == 0). */
static enum es_status put(struct loader *ld, const char *name, int64_t rows, int64_t cols,
                          uint16_t *dst, struct es_err *err)
{
    return put_slice(ld, name, rows, cols, 0, rows, 0, cols ? cols : 1, dst, err);
}

/* Rows [r0, r0 + nr) (all columns) of a [rows][cols] or [rows] tensor. */
static enum es_status put_rows(struct loader *ld, const char *name, int64_t rows, int64_t cols,
                               int64_t r0, int64_t nr, uint16_t *dst, struct es_err *err)
{
    return put_slice(ld, name, rows, cols, r0, nr, 0, cols ? cols : 1, dst, err);
}

static enum es_status load_layer(struct loader *ld, const struct model_config *c,
                                 const struct cuda_shard *sh, int l, struct cuda_layer *ly,
                                 struct es_err *err)
{
    enum es_status st = ES_OK;
    int64_t H = c->hidden_size, I = c->intermediate_size, hd = c->head_dim;
    int64_t qd = c->num_heads * hd, kd = c->num_kv_heads * hd; /* whole tensors */
    int64_t q0 = sh->head0 * hd, k0 = sh->kv_head0 * hd;       /* this rank's rows */
    int64_t qn = sh->nq * hd, kn = sh->nkv * hd, i0 = sh->inter0, In = sh->inter;
    char n[256];
#define NAME(s) (snprintf(n, sizeof(n), "model.layers.%d.%s", l, s), n)
    TRY(dev_alloc(ld, &ly->qkv, (size_t)(qn + 2 * kn) * H, err));
    TRY(put_rows(ld, NAME("self_attn.q_proj.weight"), qd, H, q0, qn, ly->qkv, err));
    TRY(put_rows(ld, NAME("self_attn.k_proj.weight"), kd, H, k0, kn, ly->qkv + qn * H, err));
    TRY(put_rows(ld, NAME("self_attn.v_proj.weight"), kd, H, k0, kn, ly->qkv + (qn + kn) * H, err));
    if (c->attention_bias) {
        TRY(dev_alloc(ld, &ly->qkv_bias, (size_t)(qn + 2 * kn), err));
        TRY(put_rows(ld, NAME("self_attn.q_proj.bias"), qd, 0, q0, qn, ly->qkv_bias, err));
        TRY(put_rows(ld, NAME("self_attn.k_proj.bias"), kd, 0, k0, kn, ly->qkv_bias + qn, err));
        TRY(put_rows(ld, NAME("self_attn.v_proj.bias"), kd, 0, k0, kn, ly->qkv_bias + qn + kn,
                     err));
    }
    if (c->qk_norm) {
        TRY(dev_alloc(ld, &ly->q_norm, (size_t)hd, err));
        TRY(dev_alloc(ld, &ly->k_norm, (size_t)hd, err));
        TRY(put(ld, NAME("self_attn.q_norm.weight"), hd, 0, ly->q_norm, err));
        TRY(put(ld, NAME("self_attn.k_norm.weight"), hd, 0, ly->k_norm, err));
    }
    TRY(dev_alloc(ld, &ly->o, (size_t)H * qn, err));
    TRY(put_slice(ld, NAME("self_attn.o_proj.weight"), H, qd, 0, H, q0, qn, ly->o, err));
    TRY(dev_alloc(ld, &ly->gate_up, (size_t)2 * In * H, err));
    TRY(put_rows(ld, NAME("mlp.gate_proj.weight"), I, H, i0, In, ly->gate_up, err));
    TRY(put_rows(ld, NAME("mlp.up_proj.weight"), I, H, i0, In, ly->gate_up + In * H, err));
    TRY(dev_alloc(ld, &ly->down, (size_t)H * In, err));
    TRY(put_slice(ld, NAME("mlp.down_proj.weight"), H, I, 0, H, i0, In, ly->down, err));
    TRY(dev_alloc(ld, &ly->ln_attn, (size_t)H, err));
    TRY(put(ld, NAME("input_layernorm.weight"), H, 0, ly->ln_attn, err));
    TRY(dev_alloc(ld, &ly->ln_mlp, (size_t)H, err));
    TRY(put(ld, NAME("post_attention_layernorm.weight"), H, 0, ly->ln_mlp, err));
#undef NAME
err:
    return st;
}

/* A vocabulary table (embedding or LM head): the rank's rows, then zero
 * rows up to vocab_max. */
static enum es_status put_vocab(struct loader *ld, const char *name, const struct model_config *c,
                                const struct cuda_shard *sh, uint16_t **out, struct es_err *err)
{
    enum es_status st = ES_OK;
    int64_t H = c->hidden_size;
    TRY(dev_alloc(ld, out, (size_t)sh->vocab_max * (size_t)H, err));
    if (sh->vocab_max > sh->vocab_n)
        CU(cudaMemset(*out + (size_t)sh->vocab_n * (size_t)H, 0,
                      2 * (size_t)(sh->vocab_max - sh->vocab_n) * (size_t)H));
    TRY(put_rows(ld, name, c->vocab_size, H, sh->vocab0, sh->vocab_n, *out, err));
err:
    return st;
}

enum es_status cbw_load(const struct model_config *c, const struct cuda_shard *sh, const char *dir,
                        struct cuda_weights *w, struct es_err *err)
{
    enum es_status st = ES_OK;
    struct st_model *m = NULL;
    struct loader ld = {.w = w};
    memset(w, 0, sizeof(*w));
    TRY(st_open_dir(dir, &m, err));
    ld.m = m;
    CU(cudaMallocHost((void **)&ld.stage, STAGE_BYTES));
    int64_t H = c->hidden_size;
    w->num_layers = sh->n_layers;
    w->layers = calloc((size_t)sh->n_layers, sizeof(*w->layers));
    if (!w->layers) {
        st = es_fail(err, ES_ENOMEM, "weights: out of host memory");
        goto err;
    }
    bool first = cuda_first_stage(sh), last = cuda_last_stage(sh);
    bool tied = c->tie_word_embeddings && !st_find(m, "lm_head.weight");
    if (first) TRY(put_vocab(&ld, "model.embed_tokens.weight", c, sh, &w->embed, err));
    if (last) {
        TRY(dev_alloc(&ld, &w->final_norm, (size_t)H, err));
        TRY(put(&ld, "model.norm.weight", H, 0, w->final_norm, err));
        if (tied && first)
            w->lm_head = w->embed;
        else
            TRY(put_vocab(&ld, tied ? "model.embed_tokens.weight" : "lm_head.weight", c, sh,
                          &w->lm_head, err));
    }
    for (int l = 0; l < sh->n_layers; l++)
        TRY(load_layer(&ld, c, sh, sh->layer0 + l, &w->layers[l], err));
    cudaFreeHost(ld.stage);
    st_close(m);
    return ES_OK;
err:
    if (ld.stage) cudaFreeHost(ld.stage);
    if (m) st_close(m);
    cbw_free(w);
    return es_wrap(err, st, "%s: ", dir);
}

void cbw_free(struct cuda_weights *w)
{
    if (w->layers) {
        for (int l = 0; l < w->num_layers; l++) {
            struct cuda_layer *ly = &w->layers[l];
            uint16_t *p[] = {ly->qkv,     ly->qkv_bias, ly->o,      ly->gate_up, ly->down,
                             ly->ln_attn, ly->ln_mlp,   ly->q_norm, ly->k_norm};
            for (size_t i = 0; i < sizeof(p) / sizeof(p[0]); i++)
                if (p[i]) cudaFree(p[i]);
        }
        free(w->layers);
    }
    if (w->lm_head && w->lm_head != w->embed) cudaFree(w->lm_head);
    if (w->embed) cudaFree(w->embed);
    if (w->final_norm) cudaFree(w->final_norm);
    memset(w, 0, sizeof(*w));
}
