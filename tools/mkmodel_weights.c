/*
 * mkmodel_weights.c - the tensor plan of a random-weight model and the
 * parallel safetensors writer.
 *
 * Values come from a counter-based generator: element i of tensor t is a
 * pure function of (seed, t, i), so any thread can produce any chunk and the
 * bytes do not depend on the thread count. Each value is std * z with z the
 * normalised sum of four 16-bit uniforms (mean 0, variance 1, range +-3.5),
 * converted straight to the output dtype. Chunks are generated into a
 * per-thread buffer and written with pwrite at their final offset.
 *
 * Scales (why the model is useful for tests): projections use
 * 1/sqrt(fan_in) so every sublayer's output has about unit RMS; norms are
 * 1.0; the output embedding has std LOGIT_STD/sqrt(hidden) so logits have
 * std ~LOGIT_STD after the final RMSNorm: the next-token distribution is
 * neither uniform nor one-hot, and top-2 logit margins are mostly well above
 * bf16 noise.
 *
 * Owns the output files while writing; never leaves a half-written header
 * claiming success (errors are returned, the caller reports them).
 */
#include "mkmodel.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "strbuf.h"

#define LOGIT_STD 3.0
#define BIAS_STD 0.05
#define CHUNK_ELEMS (8u << 20) /* elements per work item: 16 MB of bf16 */

/* ---- the plan ---- */

static void add(struct mk_tensor *t, int *n, const char *name, int64_t rows, int64_t cols,
                double std, float fill)
{
    struct mk_tensor *x = &t[(*n)++];
    memset(x, 0, sizeof *x);
    snprintf(x->name, sizeof x->name, "%s", name);
    x->ndim = cols ? 2 : 1;
    x->shape[0] = rows;
    x->shape[1] = cols;
    x->numel = (uint64_t)rows * (uint64_t)(cols ? cols : 1);
    x->std = std;
    x->fill = fill;
}

enum es_status mk_plan(const struct mk_shape *s, struct mk_tensor **out, int *n_out,
                       struct es_err *err)
{
    int per_layer = 13;
    int cap = 3 + s->num_layers * per_layer;
    struct mk_tensor *t = calloc((size_t)cap, sizeof *t);
    if (!t) return es_fail(err, ES_ENOMEM, "out of memory");
    int n = 0;
    int64_t h = s->hidden_size, q = (int64_t)s->num_heads * s->head_dim;
    int64_t kv = (int64_t)s->num_kv_heads * s->head_dim, inter = s->intermediate_size;
    double out_std = LOGIT_STD / sqrt((double)h);
    char name[96];

    add(t, &n, "model.embed_tokens.weight", s->vocab_size, h, out_std, 0);
    for (int l = 0; l < s->num_layers; l++) {
#define L(suffix) (snprintf(name, sizeof name, "model.layers.%d.%s", l, suffix), name)
        add(t, &n, L("input_layernorm.weight"), h, 0, 0, 1.0f);
        add(t, &n, L("self_attn.q_proj.weight"), q, h, 1 / sqrt((double)h), 0);
        add(t, &n, L("self_attn.k_proj.weight"), kv, h, 1 / sqrt((double)h), 0);
        add(t, &n, L("self_attn.v_proj.weight"), kv, h, 1 / sqrt((double)h), 0);
        if (s->arch == ARCH_QWEN2) {
            add(t, &n, L("self_attn.q_proj.bias"), q, 0, BIAS_STD, 0);
            add(t, &n, L("self_attn.k_proj.bias"), kv, 0, BIAS_STD, 0);
            add(t, &n, L("self_attn.v_proj.bias"), kv, 0, BIAS_STD, 0);
        }
        if (s->arch == ARCH_QWEN3) {
            add(t, &n, L("self_attn.q_norm.weight"), s->head_dim, 0, 0, 1.0f);
            add(t, &n, L("self_attn.k_norm.weight"), s->head_dim, 0, 0, 1.0f);
        }
        add(t, &n, L("self_attn.o_proj.weight"), h, q, 1 / sqrt((double)q), 0);
        add(t, &n, L("post_attention_layernorm.weight"), h, 0, 0, 1.0f);
        add(t, &n, L("mlp.gate_proj.weight"), inter, h, 1 / sqrt((double)h), 0);
        add(t, &n, L("mlp.up_proj.weight"), inter, h, 1 / sqrt((double)h), 0);
        add(t, &n, L("mlp.down_proj.weight"), h, inter, 1 / sqrt((double)inter), 0);
#undef L
    }
    add(t, &n, "model.norm.weight", h, 0, 0, 1.0f);
    if (!s->tie_word_embeddings) add(t, &n, "lm_head.weight", s->vocab_size, h, out_std, 0);
    *out = t;
    *n_out = n;
    return ES_OK;
}

/* ---- the generator ---- */

static inline uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t tensor_key(uint64_t seed, int index)
{
    return mix64(seed * 0x9e3779b97f4a7c15ull + (uint64_t)index * 0xd1b54a32d192ed03ull + 1);
}

static inline float gauss_at(uint64_t key, uint64_t i)
{
    uint64_t r = mix64(key + (i + 1) * 0x9e3779b97f4a7c15ull);
    uint32_t sum = (uint32_t)(r & 0xffff) + (uint32_t)((r >> 16) & 0xffff) +
                   (uint32_t)((r >> 32) & 0xffff) + (uint32_t)(r >> 48);
    /* four U[0, 65535]: mean 131070, std 65536 / sqrt(3) */
    return ((float)sum - 131070.0f) * (float)(1.7320508075688772 / 65536.0);
}

/* Fills buf with elements [first, first + count) of tensor t in dtype. */
static void generate(const struct mk_tensor *t, uint64_t key, enum st_dtype dtype, uint64_t first,
                     uint64_t count, void *buf)
{
    float scale = (float)t->std;
    if (dtype == ST_F32) {
        float *o = buf;
        for (uint64_t i = 0; i < count; i++)
            o[i] = t->std == 0 ? t->fill : scale * gauss_at(key, first + i);
    } else if (dtype == ST_F16) {
        uint16_t *o = buf;
        for (uint64_t i = 0; i < count; i++)
            o[i] = st_f32_to_f16(t->std == 0 ? t->fill : scale * gauss_at(key, first + i));
    } else {
        uint16_t *o = buf;
        if (t->std == 0) {
            uint16_t v = st_f32_to_bf16(t->fill);
            for (uint64_t i = 0; i < count; i++)
                o[i] = v;
            return;
        }
        for (uint64_t i = 0; i < count; i++)
            o[i] = st_f32_to_bf16(scale * gauss_at(key, first + i));
    }
}

/* ---- layout: shards and headers ---- */

struct shard {
    char file[64];
    int first, end; /* tensor range [first, end) */
    uint64_t data_bytes;
    struct strbuf header; /* padded JSON header */
    int fd;
};

struct work {
    int tensor;
    int shard;
    uint64_t first, count; /* element range */
    uint64_t file_offset;  /* where element `first` goes */
};

struct writer {
    const struct mk_shape *shape;
    const struct mk_tensor *plan;
    struct shard *shards;
    struct work *items;
    size_t n_items;
    atomic_size_t next;
    atomic_int failed;
    pthread_mutex_t lock;
    struct es_err *err;
};

static enum es_status pwrite_all(int fd, const void *buf, size_t len, uint64_t off)
{
    const char *p = buf;
    while (len) {
        ssize_t w = pwrite(fd, p, len, (off_t)off);
        if (w < 0) {
            if (errno == EINTR) continue;
            return ES_EIO;
        }
        p += w;
        len -= (size_t)w;
        off += (uint64_t)w;
    }
    return ES_OK;
}

static void *worker(void *arg)
{
    struct writer *w = arg;
    size_t esize = st_dtype_size(w->shape->dtype);
    void *buf = malloc((size_t)CHUNK_ELEMS * esize);
    if (!buf) {
        pthread_mutex_lock(&w->lock);
        es_fail(w->err, ES_ENOMEM, "out of memory for a write buffer");
        pthread_mutex_unlock(&w->lock);
        atomic_store(&w->failed, 1);
        return NULL;
    }
    for (;;) {
        if (atomic_load(&w->failed)) break;
        size_t i = atomic_fetch_add(&w->next, 1);
        if (i >= w->n_items) break;
        const struct work *it = &w->items[i];
        const struct mk_tensor *t = &w->plan[it->tensor];
        generate(t, tensor_key(w->shape->seed, it->tensor), w->shape->dtype, it->first, it->count,
                 buf);
        struct shard *sh = &w->shards[it->shard];
        if (pwrite_all(sh->fd, buf, (size_t)(it->count * esize), it->file_offset) != ES_OK) {
            int e = errno;
            pthread_mutex_lock(&w->lock);
            es_fail(w->err, ES_EIO, "%s: write: %s", sh->file, strerror(e));
            pthread_mutex_unlock(&w->lock);
            atomic_store(&w->failed, 1);
        }
    }
    free(buf);
    return NULL;
}

static enum es_status build_header(struct shard *sh, const struct mk_tensor *plan,
                                   enum st_dtype dtype)
{
    struct strbuf *sb = &sh->header;
    size_t esize = st_dtype_size(dtype);
    uint64_t off = 0;
    enum es_status st = sb_puts(sb, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (int i = sh->first; i < sh->end && st == ES_OK; i++) {
        const struct mk_tensor *t = &plan[i];
        uint64_t bytes = t->numel * esize;
        st = sb_printf(sb, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[%lld", t->name,
                       st_dtype_name(dtype), (long long)t->shape[0]);
        if (st == ES_OK && t->ndim == 2) st = sb_printf(sb, ",%lld", (long long)t->shape[1]);
        if (st == ES_OK)
            st = sb_printf(sb, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
                           (unsigned long long)(off + bytes));
        off += bytes;
    }
    if (st == ES_OK) st = sb_putc(sb, '}');
    /* Pad with spaces so the data section starts 8-byte aligned. */
    while (st == ES_OK && (sb->len % 8) != 0)
        st = sb_putc(sb, ' ');
    sh->data_bytes = off;
    return st;
}

static enum es_status write_index(const char *dir, const struct shard *shards, int n_shards,
                                  const struct mk_tensor *plan, uint64_t total, struct es_err *err)
{
    struct strbuf sb = {0};
    enum es_status st = sb_printf(&sb,
                                  "{\n  \"metadata\": {\n    \"total_size\": %llu\n  },\n"
                                  "  \"weight_map\": {",
                                  (unsigned long long)total);
    bool first = true;
    for (int s = 0; s < n_shards && st == ES_OK; s++)
        for (int i = shards[s].first; i < shards[s].end && st == ES_OK; i++) {
            st = sb_printf(&sb, "%s\n    \"%s\": \"%s\"", first ? "" : ",", plan[i].name,
                           shards[s].file);
            first = false;
        }
    if (st == ES_OK) st = sb_puts(&sb, "\n  }\n}\n");
    if (st != ES_OK) {
        sb_free(&sb);
        return es_fail(err, ES_ENOMEM, "out of memory");
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    FILE *f = fopen(path, "wb");
    if (!f) {
        sb_free(&sb);
        return es_fail(err, ES_EIO, "%s: %s", path, strerror(errno));
    }
    bool ok = fwrite(sb.s, 1, sb.len, f) == sb.len;
    ok = (fclose(f) == 0) && ok;
    sb_free(&sb);
    return ok ? ES_OK : es_fail(err, ES_EIO, "%s: write failed", path);
}

enum es_status mk_write_weights(const char *dir, const struct mk_shape *s,
                                const struct mk_tensor *plan, int n_tensors, uint64_t shard_bytes,
                                int n_threads, struct es_err *err)
{
    enum es_status st = ES_OK;
    size_t esize = st_dtype_size(s->dtype);
    struct shard *shards = calloc((size_t)n_tensors, sizeof *shards);
    struct writer w = {.shape = s, .plan = plan, .shards = shards, .err = err};
    pthread_t *threads = NULL;
    int n_shards = 0, n_started = 0;
    uint64_t total = 0;
    pthread_mutex_init(&w.lock, NULL);
    if (!shards) {
        st = es_fail(err, ES_ENOMEM, "out of memory");
        goto err;
    }
    /* Greedy sharding in plan order, as transformers' max_shard_size does. */
    for (int i = 0; i < n_tensors; i++) {
        uint64_t bytes = plan[i].numel * esize;
        struct shard *cur = n_shards ? &shards[n_shards - 1] : NULL;
        if (!cur || (cur->data_bytes + bytes > shard_bytes && cur->end > cur->first)) {
            cur = &shards[n_shards++];
            cur->first = cur->end = i;
            cur->fd = -1;
        }
        cur->end = i + 1;
        cur->data_bytes += bytes;
        total += bytes;
    }
    size_t n_items = 0;
    for (int i = 0; i < n_tensors; i++)
        n_items += (size_t)((plan[i].numel + CHUNK_ELEMS - 1) / CHUNK_ELEMS);
    w.items = calloc(n_items ? n_items : 1, sizeof *w.items);
    if (!w.items) {
        st = es_fail(err, ES_ENOMEM, "out of memory");
        goto err;
    }
    for (int sidx = 0; sidx < n_shards; sidx++) {
        struct shard *sh = &shards[sidx];
        if (n_shards == 1)
            snprintf(sh->file, sizeof sh->file, "model.safetensors");
        else
            snprintf(sh->file, sizeof sh->file, "model-%05d-of-%05d.safetensors", sidx + 1,
                     n_shards);
        if (build_header(sh, plan, s->dtype) != ES_OK) {
            st = es_fail(err, ES_ENOMEM, "out of memory");
            goto err;
        }
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, sh->file);
        sh->fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (sh->fd < 0) {
            st = es_fail(err, ES_EIO, "%s: %s", path, strerror(errno));
            goto err;
        }
        uint8_t len8[8];
        for (int b = 0; b < 8; b++)
            len8[b] = (uint8_t)((uint64_t)sh->header.len >> (8 * b));
        uint64_t file_size = 8 + sh->header.len + sh->data_bytes;
        if (pwrite_all(sh->fd, len8, 8, 0) != ES_OK ||
            pwrite_all(sh->fd, sh->header.s, sh->header.len, 8) != ES_OK ||
            ftruncate(sh->fd, (off_t)file_size) != 0) {
            st = es_fail(err, ES_EIO, "%s: %s", path, strerror(errno));
            goto err;
        }
        uint64_t off = 8 + sh->header.len;
        for (int i = sh->first; i < sh->end; i++) {
            for (uint64_t e = 0; e < plan[i].numel; e += CHUNK_ELEMS) {
                struct work *it = &w.items[w.n_items++];
                it->tensor = i;
                it->shard = sidx;
                it->first = e;
                it->count = plan[i].numel - e < CHUNK_ELEMS ? plan[i].numel - e : CHUNK_ELEMS;
                it->file_offset = off + e * esize;
            }
            off += plan[i].numel * esize;
        }
    }
    if (n_threads < 1) n_threads = 1;
    threads = calloc((size_t)n_threads, sizeof *threads);
    if (!threads) {
        st = es_fail(err, ES_ENOMEM, "out of memory");
        goto err;
    }
    for (; n_started < n_threads; n_started++)
        if (pthread_create(&threads[n_started], NULL, worker, &w) != 0) break;
    if (n_started == 0) {
        st = es_fail(err, ES_ERR, "cannot start writer threads");
        goto err;
    }
    for (int i = 0; i < n_started; i++)
        pthread_join(threads[i], NULL);
    if (atomic_load(&w.failed)) {
        st = ES_EIO;
        goto err;
    }
    for (int sidx = 0; sidx < n_shards; sidx++) {
        int rc = close(shards[sidx].fd);
        shards[sidx].fd = -1;
        if (rc != 0) {
            st = es_fail(err, ES_EIO, "%s: close: %s", shards[sidx].file, strerror(errno));
            goto err;
        }
    }
    if (n_shards > 1) st = write_index(dir, shards, n_shards, plan, total, err);
err:
    for (int sidx = 0; shards && sidx < n_shards; sidx++) {
        if (shards[sidx].fd >= 0) close(shards[sidx].fd);
        sb_free(&shards[sidx].header);
    }
    free(threads);
    free(shards);
    free(w.items);
    pthread_mutex_destroy(&w.lock);
    return st;
}
