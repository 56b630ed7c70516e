/*
 * backend_cuda_weights.c - loads a Hugging Face Llama-family checkpoint
 * from safetensors (mmap) into device memory as bf16, fusing q/k/v into
 * one matrix and gate/up into another so each layer runs four GEMMs.
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

/* Copies tensor `name` (shape must be [rows][cols], or [rows] when cols ==
 * 0) to dst as bf16. */
static enum es_status put(struct loader *ld, const char *name, int64_t rows, int64_t cols,
                          uint16_t *dst, struct es_err *err)
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
    size_t n = (size_t)rows * (size_t)(cols ? cols : 1);
    size_t chunk = STAGE_BYTES / 2;
    for (size_t off = 0; off < n; off += chunk) {
        size_t cnt = n - off < chunk ? n - off : chunk;
        if (t->dtype == ST_BF16) {
            memcpy(ld->stage, (const uint16_t *)t->data + off, cnt * 2);
        } else if (t->dtype == ST_F16) {
            const uint16_t *s = (const uint16_t *)t->data + off;
            for (size_t i = 0; i < cnt; i++)
                ld->stage[i] = st_f32_to_bf16(st_f16_to_f32(s[i]));
        } else {
            const float *s = (const float *)t->data + off;
            for (size_t i = 0; i < cnt; i++)
                ld->stage[i] = st_f32_to_bf16(s[i]);
        }
        CU(cudaMemcpy(dst + off, ld->stage, cnt * 2, cudaMemcpyHostToDevice));
    }
err:
    return st;
}

static enum es_status load_layer(struct loader *ld, const struct model_config *c, int l,
                                 struct cuda_layer *ly, struct es_err *err)
{
    enum es_status st = ES_OK;
    int64_t H = c->hidden_size, I = c->intermediate_size, hd = c->head_dim;
    int64_t qd = c->num_heads * hd, kd = c->num_kv_heads * hd;
    char n[256];
#define NAME(s) (snprintf(n, sizeof(n), "model.layers.%d.%s", l, s), n)
    TRY(dev_alloc(ld, &ly->qkv, (size_t)(qd + 2 * kd) * H, err));
    TRY(put(ld, NAME("self_attn.q_proj.weight"), qd, H, ly->qkv, err));
    TRY(put(ld, NAME("self_attn.k_proj.weight"), kd, H, ly->qkv + qd * H, err));
    TRY(put(ld, NAME("self_attn.v_proj.weight"), kd, H, ly->qkv + (qd + kd) * H, err));
    if (c->attention_bias) {
        TRY(dev_alloc(ld, &ly->qkv_bias, (size_t)(qd + 2 * kd), err));
        TRY(put(ld, NAME("self_attn.q_proj.bias"), qd, 0, ly->qkv_bias, err));
        TRY(put(ld, NAME("self_attn.k_proj.bias"), kd, 0, ly->qkv_bias + qd, err));
        TRY(put(ld, NAME("self_attn.v_proj.bias"), kd, 0, ly->qkv_bias + qd + kd, err));
    }
    if (c->qk_norm) {
        TRY(dev_alloc(ld, &ly->q_norm, (size_t)hd, err));
        TRY(dev_alloc(ld, &ly->k_norm, (size_t)hd, err));
        TRY(put(ld, NAME("self_attn.q_norm.weight"), hd, 0, ly->q_norm, err));
        TRY(put(ld, NAME("self_attn.k_norm.weight"), hd, 0, ly->k_norm, err));
    }
    TRY(dev_alloc(ld, &ly->o, (size_t)H * qd, err));
    TRY(put(ld, NAME("self_attn.o_proj.weight"), H, qd, ly->o, err));
    TRY(dev_alloc(ld, &ly->gate_up, (size_t)2 * I * H, err));
    TRY(put(ld, NAME("mlp.gate_proj.weight"), I, H, ly->gate_up, err));
    TRY(put(ld, NAME("mlp.up_proj.weight"), I, H, ly->gate_up + I * H, err));
    TRY(dev_alloc(ld, &ly->down, (size_t)H * I, err));
    TRY(put(ld, NAME("mlp.down_proj.weight"), H, I, ly->down, err));
    TRY(dev_alloc(ld, &ly->ln_attn, (size_t)H, err));
    TRY(put(ld, NAME("input_layernorm.weight"), H, 0, ly->ln_attn, err));
    TRY(dev_alloc(ld, &ly->ln_mlp, (size_t)H, err));
    TRY(put(ld, NAME("post_attention_layernorm.weight"), H, 0, ly->ln_mlp, err));
#undef NAME
err:
    return st;
}

enum es_status cbw_load(const struct model_config *c, const char *dir, struct cuda_weights *w,
                        struct es_err *err)
{
    enum es_status st = ES_OK;
    struct st_model *m = NULL;
    struct loader ld = {.w = w};
    memset(w, 0, sizeof(*w));
    TRY(st_open_dir(dir, &m, err));
    ld.m = m;
    CU(cudaMallocHost((void **)&ld.stage, STAGE_BYTES));
    int64_t V = c->vocab_size, H = c->hidden_size;
    w->num_layers = c->num_layers;
    w->layers = calloc((size_t)c->num_layers, sizeof(*w->layers));
    if (!w->layers) {
        st = es_fail(err, ES_ENOMEM, "weights: out of host memory");
        goto err;
    }
    TRY(dev_alloc(&ld, &w->embed, (size_t)V * H, err));
    TRY(put(&ld, "model.embed_tokens.weight", V, H, w->embed, err));
    TRY(dev_alloc(&ld, &w->final_norm, (size_t)H, err));
    TRY(put(&ld, "model.norm.weight", H, 0, w->final_norm, err));
    if (c->tie_word_embeddings && !st_find(m, "lm_head.weight")) {
        w->lm_head = w->embed;
    } else {
        TRY(dev_alloc(&ld, &w->lm_head, (size_t)V * H, err));
        TRY(put(&ld, "lm_head.weight", V, H, w->lm_head, err));
    }
    for (int l = 0; l < c->num_layers; l++)
        TRY(load_layer(&ld, c, l, &w->layers[l], err));
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
