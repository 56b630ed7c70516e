/*
 * backend_cuda.c - the CUDA backend of one GPU: backend_cuda_ops.
 *
 * load() binds the device, uploads the weights (backend_cuda_weights.c),
 * allocates the activation workspace for max_num_batched_tokens, the
 * per-step pinned metadata and result buffers, then sizes the paged KV
 * cache from what is left: gpu_memory_utilization x total memory minus
 * what the process already holds (or exactly opts->num_kv_blocks). It
 * logs the peak memory and the KV capacity in tokens. forward() is in
 * backend_cuda_step.c.
 *
 * Tensor parallelism (opts->tp_size > 1; backend_tp.c calls load, forward
 * and destroy of each rank on that rank's thread): the instance is one
 * rank on device opts->device_id with its shard (backend_cuda_tp.c). load()
 * then also joins the NCCL communicator before the weights, meets the
 * other ranks after each fallible phase (so that one rank's failure fails
 * all of them), warms NCCL up before sizing the KV cache, and takes the
 * smallest KV block count of all ranks, so that every rank validates a
 * batch alike. Only rank 0 allocates the buffers of sampling. With
 * tp_size <= 1 none of this runs and the backend is the single-GPU one.
 *
 * Pipeline parallelism (opts->pp_size > 1; backend_pp.c runs one instance,
 * or one TP group of them, per stage): the instance holds the stage's
 * layers (struct cuda_shard) and only their KV cache; only the last stage
 * allocates the LM-head and sampling buffers.
 *
 * Owns every device and pinned buffer of the replica and its stream.
 * Never allocates on the step path (the metadata buffer grows only when a
 * batch exceeds what load() planned for), never exits: every CUDA call is
 * checked and reported through es_status.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend_cuda.h"
#include "backend_pp.h"
#include "log.h"
#include "sampling.h"

#define LOG_CUDA(...) LOG_I("cuda", __VA_ARGS__)

enum es_status cuda_status(cudaError_t e, const char *what, const char *file, int line,
                           struct es_err *err)
{
    if (e == cudaSuccess) return ES_OK;
    return es_fail(err, ES_EDEVICE, "%s:%d: %s: %s (%s)", file, line, what, cudaGetErrorName(e),
                   cudaGetErrorString(e));
}

/* The rotary frequencies of transformers' rope init functions, computed in
 * double and rounded once to fp32. */
static void rope_inv_freq(const struct model_config *c, float *out)
{
    int hd = c->head_dim;
    for (int i = 0; i < hd / 2; i++) {
        double f = 1.0 / pow(c->rope_theta, (double)(2 * i) / (double)hd);
        if (c->rope_scaling == ROPE_LINEAR) {
            f /= c->rope_factor;
        } else if (c->rope_scaling == ROPE_LLAMA3) {
            double orig = (double)c->rope_original_max_position_embeddings;
            double low_wl = orig / c->rope_low_freq_factor;
            double high_wl = orig / c->rope_high_freq_factor;
            double wl = 2.0 * M_PI / f;
            if (wl > low_wl) {
                f /= c->rope_factor;
            } else if (wl >= high_wl) {
                double smooth = (orig / wl - c->rope_low_freq_factor) /
                                (c->rope_high_freq_factor - c->rope_low_freq_factor);
                f = (1.0 - smooth) * f / c->rope_factor + smooth * f;
            }
        }
        out[i] = (float)f;
    }
}

static void cuda_free_all(struct cuda_backend *cb)
{
    cbt_free(cb); /* before the buffers its operations may use */
    cgr_reset(cb, true);
    void *dev[] = {cb->inv_freq,
                   cb->resid,
                   cb->normed,
                   cb->qkv,
                   cb->q,
                   cb->attn,
                   cb->gate_up,
                   cb->act,
                   cb->part_acc,
                   cb->part_ml,
                   cb->normed_rows,
                   cb->logits,
                   cb->d_lse,
                   cb->d_top_ids,
                   cb->d_top_lp,
                   cb->d_target_lp,
                   cb->d_target_rank,
                   cb->d_token,
                   cb->d_logprob,
                   cb->k_cache,
                   cb->v_cache,
                   cb->d_meta,
                   cb->logits_part,
                   cb->d_sample,
                   cb->d_sample_w,
                   cb->normed_lo,
                   cb->attn_lo,
                   cb->act_lo,
                   cb->normed_rows_lo,
                   cb->q_lo,
                   cb->k_cache_lo,
                   cb->v_cache_lo};
    for (size_t i = 0; i < sizeof(dev) / sizeof(dev[0]); i++)
        if (dev[i]) cudaFree(dev[i]);
    void *host[] = {cb->h_top_ids, cb->h_top_lp, cb->h_target_lp, cb->h_target_rank, cb->h_token,
                    cb->h_logprob, cb->h_logits, cb->h_meta,      cb->h_sample};
    for (size_t i = 0; i < sizeof(host) / sizeof(host[0]); i++)
        if (host[i]) cudaFreeHost(host[i]);
    if (cb->prof) {
        for (int i = 0; i < cb->prof->cap; i++)
            if (cb->prof->ev[i]) cudaEventDestroy(cb->prof->ev[i]);
        free(cb->prof->ev);
        free(cb->prof->cat);
        free(cb->prof);
    }
    cbg_free(&cb->gemm);
    cbw_free(&cb->w);
    if (cb->stream) cudaStreamDestroy(cb->stream);
    for (int i = 0; i < cb->n_smp; i++)
        smp_scratch_destroy(cb->smp[i]);
    free(cb->smp);
    if (cb->sample_pool) cpool_destroy(cb->sample_pool);
    free(cb->edit_slot);
    free(cb->edit_seen);
}

static void cuda_destroy(struct backend *be)
{
    struct cuda_backend *cb = be->impl;
    if (!cb) return;
    cudaSetDevice(cb->device);
    /* a stream stuck in a collective that a failed peer never joined would
     * not drain: abort the communicator first */
    if (cb->nccl_failed) cbt_free(cb);
    cbp_free(cb); /* a send the next stage never received would not drain */
    if (cb->stream) cudaStreamSynchronize(cb->stream);
    cbs_prof_report(cb);
    if (cb->graphs.captures)
        LOG_CUDA("CUDA graphs: %ld captured, %ld decode steps replayed", cb->graphs.captures,
                 cb->graphs.replays);
    cuda_free_all(cb);
    free(cb);
    be->impl = NULL;
}

/* Configuration checks that need no device; identical on every rank. */
static enum es_status check_model(struct cuda_backend *cb, const struct backend_opts *opts,
                                  struct es_err *err)
{
    const struct model_config *cfg = &cb->cfg;
    if (cfg->sliding_window > 0)
        return es_fail(err, ES_EUNSUPPORTED, "cuda: sliding-window attention is not supported");
    if (opts->block_size <= 0 || opts->max_num_batched_tokens <= 0 || opts->max_num_seqs <= 0 ||
        opts->max_model_len <= 0)
        return es_fail(err, ES_EINVAL, "cuda: block size, batch and length limits must be > 0");
    enum es_status st = cbt_plan(cb, opts, err);
    if (st != ES_OK) return st;
    struct cuda_shard *sh = &cb->shard;
    sh->pp_size = opts->pp_size > 1 ? opts->pp_size : 1;
    sh->pp_stage = sh->pp_size > 1 ? opts->pp_stage : 0;
    if (sh->pp_stage < 0 || sh->pp_stage >= sh->pp_size || sh->pp_size > cfg->num_layers)
        return es_fail(err, ES_EINVAL, "cuda: pipeline stage %d of %d over %d layers", sh->pp_stage,
                       sh->pp_size, cfg->num_layers);
    int layer1;
    pp_layer_range(cfg->num_layers, sh->pp_stage, sh->pp_size, &sh->layer0, &layer1);
    sh->n_layers = layer1 - sh->layer0;
    cb->H = cfg->hidden_size;
    cb->I = cb->shard.inter;
    cb->nq = cb->shard.nq;
    cb->nkv = cb->shard.nkv;
    cb->hd = cfg->head_dim;
    cb->V = cfg->vocab_size;
    cb->L = sh->n_layers;
    cb->qkv_dim = (cb->nq + 2 * cb->nkv) * cb->hd;
    cb->block_size = opts->block_size;
    int G = cb->nkv > 0 ? cb->nq / cb->nkv : 0;
    if (cb->nkv <= 0 || cb->nq % cb->nkv || (G != 1 && G != 2 && G != 4 && G != 8) ||
        (cb->hd != 16 && cb->hd != 32 && cb->hd != 64 && cb->hd != 128 && cb->hd != 256))
        return es_fail(
            err, ES_EUNSUPPORTED,
            "cuda: attention supports head_dim 16/32/64/128/256 and 1/2/4/8 query heads per "
            "kv head (model: head_dim %d, %d / %d heads)",
            cb->hd, cfg->num_heads, cfg->num_kv_heads);
    return ES_OK;
}

static enum es_status setup_device(struct cuda_backend *cb, struct cudaDeviceProp *prop,
                                   struct es_err *err)
{
    enum es_status st = ES_OK;
    CU(cudaSetDevice(cb->device));
    CU(cudaGetDeviceProperties(prop, cb->device));
    cb->num_sms = prop->multiProcessorCount;
    CU(cudaStreamCreateWithFlags(&cb->stream, cudaStreamNonBlocking));
err:
    return st;
}

#define DALLOC(ptr, bytes)                                                                         \
    do {                                                                                           \
        CU(cudaMalloc((void **)&(ptr), (bytes)));                                                  \
        CU(cudaMemset((ptr), 0, (bytes)));                                                         \
        *workspace += (bytes);                                                                     \
    } while (0)
#define HALLOC(ptr, bytes) CU(cudaMallocHost((void **)&(ptr), (bytes)))

/* The sampling rank's buffers: logits [CUDA_LOGIT_CHUNK][V], per-row
 * results and their host mirrors, the GPU sampler's, the host sampler. */
static enum es_status alloc_sampling(struct cuda_backend *cb, size_t *workspace, struct es_err *err)
{
    enum es_status st = ES_OK;
    size_t C = CUDA_LOGIT_CHUNK, V = (size_t)cb->V;
    DALLOC(cb->logits, 4 * C * V);
    DALLOC(cb->d_lse, 8 * C);
    DALLOC(cb->d_top_ids, 4 * C * KERN_MAX_TOP);
    DALLOC(cb->d_top_lp, 4 * C * KERN_MAX_TOP);
    DALLOC(cb->d_target_lp, 4 * C);
    DALLOC(cb->d_target_rank, 4 * C);
    DALLOC(cb->d_token, 4 * C);
    DALLOC(cb->d_logprob, 4 * C);
    HALLOC(cb->h_top_ids, 4 * C * KERN_MAX_TOP);
    HALLOC(cb->h_top_lp, 4 * C * KERN_MAX_TOP);
    HALLOC(cb->h_target_lp, 4 * C);
    HALLOC(cb->h_target_rank, 4 * C);
    HALLOC(cb->h_token, 4 * C);
    HALLOC(cb->h_logprob, 4 * C);
    HALLOC(cb->h_logits, 4 * (size_t)CUDA_HOST_ROWS * V);
    cb->sample_cap = cbsm_initial_cap();
    HALLOC(cb->h_sample, cb->sample_cap);
    DALLOC(cb->d_sample, cb->sample_cap);
    DALLOC(cb->d_sample_w, 4 * (size_t)CUDA_SAMPLE_ROWS * V);
    cb->edit_slot = calloc(V, sizeof(int32_t));
    cb->edit_seen = calloc(V, sizeof(int32_t));
    if (!cb->edit_slot || !cb->edit_seen) {
        st = es_fail(err, ES_ENOMEM, "cuda backend: out of host memory for the sampler");
        goto err;
    }
    st = cpool_create(CUDA_SAMPLE_THREADS, &cb->sample_pool, err);
    if (st != ES_OK) goto err;
    cb->smp = calloc((size_t)cpool_size(cb->sample_pool), sizeof(*cb->smp));
    if (!cb->smp) {
        st = es_fail(err, ES_ENOMEM, "cuda backend: out of host memory for samplers");
        goto err;
    }
    for (; cb->n_smp < cpool_size(cb->sample_pool); cb->n_smp++)
        if ((st = smp_scratch_create(cb->V, &cb->smp[cb->n_smp], err)) != ES_OK) goto err;
err:
    return st;
}

/* The activations of max_num_batched_tokens tokens, the LM-head buffers
 * and the step metadata. */
static enum es_status alloc_workspace(struct cuda_backend *cb, const struct backend_opts *opts,
                                      size_t *workspace, struct es_err *err)
{
    enum es_status st = ES_OK;
    int T = opts->max_num_batched_tokens;
    if (T < opts->max_num_seqs) T = opts->max_num_seqs;
    cb->max_tokens = T;
    cb->max_seqs = opts->max_num_seqs;
    size_t H = (size_t)cb->H, I = (size_t)cb->I, Tz = (size_t)T;
    DALLOC(cb->resid, 4 * Tz * H);
    DALLOC(cb->normed, 2 * Tz * H);
    DALLOC(cb->qkv, 4 * Tz * (size_t)cb->qkv_dim);
    DALLOC(cb->q, 2 * Tz * (size_t)(cb->nq * cb->hd));
    DALLOC(cb->attn, 2 * Tz * (size_t)(cb->nq * cb->hd));
    DALLOC(cb->gate_up, 4 * Tz * 2 * I);
    DALLOC(cb->act, 2 * Tz * I);
    cb->split_tokens = (2 * cb->num_sms + cb->nkv - 1) / cb->nkv;
    size_t parts = (size_t)cb->split_tokens * (size_t)cb->nq * CUDA_MAX_SPLITS;
    DALLOC(cb->part_acc, 4 * parts * (size_t)cb->hd);
    DALLOC(cb->part_ml, 4 * parts * 2);
    size_t C = CUDA_LOGIT_CHUNK;
    DALLOC(cb->normed_rows, 2 * C * H);
    cb->high_precision = opts->high_precision;
    if (cb->high_precision) {
        DALLOC(cb->q_lo, 2 * Tz * (size_t)(cb->nq * cb->hd));
        DALLOC(cb->normed_lo, 2 * Tz * H);
        DALLOC(cb->attn_lo, 2 * Tz * (size_t)(cb->nq * cb->hd));
        DALLOC(cb->act_lo, 2 * Tz * I);
        DALLOC(cb->normed_rows_lo, 2 * C * H);
        LOG_CUDA("precision high: activations enter each matrix product as two bf16 terms; q "
                 "and the KV cache keep their remainders (twice the KV memory); attention on the "
                 "fp32 SIMT kernels alone");
    }
    bool last = cuda_last_stage(&cb->shard); /* only the last stage has logits */
    if (last && cb->shard.tp_rank == 0) {
        st = alloc_sampling(cb, workspace, err);
        if (st != ES_OK) goto err;
    }
    if (last && cb->shard.tp_size > 1) {
        size_t slots = cb->shard.tp_rank == 0 ? (size_t)cb->shard.tp_size : 1;
        DALLOC(cb->logits_part, 4 * slots * C * (size_t)cb->shard.vocab_max);
    }
    cb->max_bt_stride = (opts->max_model_len + cb->block_size - 1) / cb->block_size;
    cb->meta_cap = 5 * Tz + (size_t)cb->max_seqs * (size_t)cb->max_bt_stride + 8 * Tz + 64;
    HALLOC(cb->h_meta, 4 * cb->meta_cap);
    DALLOC(cb->d_meta, 4 * cb->meta_cap);
err:
    return st;
}

/* Whether environment variable name is set to on, failing when it is
 * set to anything but on or off. */
static enum es_status env_choice(const char *name, const char *on, const char *off, bool *is_on,
                                 struct es_err *err)
{
    const char *v = getenv(name);
    *is_on = v && strcmp(v, on) == 0;
    if (v && !*is_on && strcmp(v, off) != 0)
        return es_fail(err, ES_EINVAL, "cuda: %s must be %s or %s, got '%s'", name, off, on, v);
    return ES_OK;
}

/* EVAL_CUDA_DECODE_MMA, EVAL_CUDA_DECODE_KERNEL, EVAL_CUDA_SAMPLER,
 * EVAL_CUDA_PROFILE, EVAL_CUDA_PP_TRANSPORT and EVAL_CUDA_GRAPHS. */
static enum es_status read_env(struct cuda_backend *cb, struct es_err *err)
{
    enum es_status st = ES_OK;
    /* measured on an H200 (8B shape, batch 256, 512-token contexts): the
     * SIMT flash-decoding kernel 15.9 ms/step, the tensor-core one 25.3 */
    const char *mma_env = getenv("EVAL_CUDA_DECODE_MMA");
    cb->decode_mma = mma_env && mma_env[0] && strcmp(mma_env, "0") != 0;
    /* a decode-attention variant by name (kernels.h), for test_gpu
     * attn-bench's candidates under a real workload; default: AUTO */
    static const char *const kernel_names[KERN_ATTN_N_VARIANTS] = {"auto", "simt", "mma-tiles",
                                                                   "rows-simt", "rows-mma"};
    const char *kernel_env = getenv("EVAL_CUDA_DECODE_KERNEL");
    cb->decode_variant = KERN_ATTN_AUTO;
    bool known = !kernel_env;
    for (int v = 0; kernel_env && v < KERN_ATTN_N_VARIANTS; v++)
        if (strcmp(kernel_env, kernel_names[v]) == 0) cb->decode_variant = v, known = true;
    if (!known)
        LOG_W("cuda",
              "EVAL_CUDA_DECODE_KERNEL=%s unknown (auto, simt, mma-tiles, rows-simt, "
              "rows-mma): auto",
              kernel_env);
    /* rows with non-greedy settings: kern_sample on the GPU (checked token
     * for token against sampling.c on an H200, 2026-12-05); with
     * EVAL_CUDA_SAMPLER=host their logits go to sampling.c on host threads */
    st = env_choice("EVAL_CUDA_SAMPLER", "host", "gpu", &cb->host_sampling, err);
    if (st != ES_OK) return st;
    const char *prof_env = getenv("EVAL_CUDA_PROFILE");
    if (prof_env && prof_env[0] && strcmp(prof_env, "0") != 0) {
        cb->prof = calloc(1, sizeof(*cb->prof));
        /* per layer up to 14 marks (12, and tp's two all-reduces) */
        int cap = 14 * cb->L + 16 * (cb->max_tokens / CUDA_LOGIT_CHUNK + 1) + 64;
        if (cb->prof) {
            cb->prof->ev = calloc((size_t)cap, sizeof(cudaEvent_t));
            cb->prof->cat = calloc((size_t)cap, sizeof(int));
        }
        if (!cb->prof || !cb->prof->ev || !cb->prof->cat)
            return es_fail(err, ES_ENOMEM, "cuda: out of host memory");
        cb->prof->cap = cap;
        cb->prof->sync = strcmp(prof_env, "2") != 0;
        for (int i = 0; i < cap; i++)
            CU(cudaEventCreate(&cb->prof->ev[i]));
    }
    st = env_choice("EVAL_CUDA_PP_TRANSPORT", "nccl", "host", &cb->pp_nccl_wanted, err);
    if (st != ES_OK) return st;
    /* decode steps from CUDA graphs (checked against the CPU backend on
     * an H200, 2026-12-05) unless EVAL_CUDA_GRAPHS=0. Under --tp the
     * graphs hold NCCL's all-reduces, so far checked only on the
     * emulation: there they wait for EVAL_CUDA_GRAPHS=1 until a two-GPU
     * run has compared them. Graphs would hide the profile's events. */
    const char *graphs_env = getenv("EVAL_CUDA_GRAPHS");
    bool graphs_on = graphs_env ? strcmp(graphs_env, "0") != 0 : cb->shard.tp_size == 1;
    cb->graphs.off = !graphs_on || cb->prof;
err:
    return st;
}

/* --batch-invariant: what a token's numbers go through must not depend on
 * the step. Attention: the flash-decoding kernel for every token (never
 * the prefill tiles, which a prompt gets or not by how it is chunked) in
 * one partition longer than any context (splits follow the batch). GEMMs:
 * one algorithm per shape (backend_cuda_gemm.c). Per-row kernels (norms,
 * RoPE, logprobs, sampling) are so already. NCCL's all-reduce is not: its
 * algorithm and order follow the message size, so --tp ranks stay out. */
static void set_batch_invariant(struct cuda_backend *cb, const struct backend_opts *opts)
{
    cb->invariant_partition = (opts->max_model_len + 255) / 256 * 256;
    cbg_set_invariant(&cb->gemm, cb->max_tokens);
    LOG_CUDA("batch-invariant: one attention kernel, unsplit (partition %d), one GEMM algorithm "
             "per shape (chosen for %d rows, no split-K)",
             cb->invariant_partition, cb->max_tokens);
    if (cb->shard.tp_size > 1 && cb->shard.tp_rank == 0)
        LOG_W("cuda",
              "batch-invariant with --tp %d: NCCL's all-reduce may still round "
              "differently with the step's size",
              cb->shard.tp_size);
}

/* Everything but the KV cache: GEMM handle, weights, rotary table,
 * workspace, options from the environment. */
static enum es_status load_model(struct cuda_backend *cb, const char *dir,
                                 const struct backend_opts *opts, const struct cudaDeviceProp *prop,
                                 size_t *workspace, struct es_err *err)
{
    enum es_status st = ES_OK;
    const struct model_config *cfg = &cb->cfg;
    /* tuning covers M <= 512 rows: the biggest output is the LM head's or gate/up's */
    size_t tune_rows = 512, tune_cols = (size_t)cb->shard.vocab_max;
    if ((size_t)(2 * cb->I) > tune_cols) tune_cols = 2 * (size_t)cb->I;
    st = cbg_init(&cb->gemm, 4 * tune_rows * tune_cols, err);
    if (st != ES_OK) return st;
    st = cbw_load(cfg, &cb->shard, dir, &cb->w, err);
    if (st != ES_OK) return st;
    LOG_CUDA("weights: %.2f GiB on %s (device %d, %d SMs)", (double)cb->w.bytes / (1 << 30),
             prop->name, cb->device, cb->num_sms);

    float inv_freq[512];
    rope_inv_freq(cfg, inv_freq);
    DALLOC(cb->inv_freq, sizeof(float) * (size_t)(cb->hd / 2));
    CU(cudaMemcpy(cb->inv_freq, inv_freq, sizeof(float) * (size_t)(cb->hd / 2),
                  cudaMemcpyHostToDevice));
    st = alloc_workspace(cb, opts, workspace, err);
    if (st != ES_OK) return st;
    st = read_env(cb, err);
    if (st == ES_OK && opts->batch_invariant) set_batch_invariant(cb, opts);
err:
    return st;
}

/* Bytes of one KV block over the stage's layers: K and V in bf16, and
 * their remainders under --precision high. */
static size_t kv_block_bytes(const struct cuda_backend *cb)
{
    size_t one = 2 * (size_t)cb->L * (size_t)cb->nkv * (size_t)cb->block_size * (size_t)cb->hd * 2;
    return cb->high_precision ? 2 * one : one;
}

/* KV blocks that fit: gpu_memory_utilization x total minus what the
 * process already holds, or exactly opts->num_kv_blocks. */
static enum es_status kv_budget(struct cuda_backend *cb, const struct backend_opts *opts,
                                size_t *n_blocks, struct es_err *err)
{
    enum es_status st = ES_OK;
    size_t free_b = 0, total_b = 0;
    CU(cudaMemGetInfo(&free_b, &total_b));
    size_t per_block = kv_block_bytes(cb);
    if (opts->num_kv_blocks > 0) {
        *n_blocks = (size_t)opts->num_kv_blocks;
        return ES_OK;
    }
    double util = opts->gpu_memory_utilization > 0 ? opts->gpu_memory_utilization : 0.9;
    double budget = util * (double)total_b - (double)(total_b - free_b);
    if (budget < (double)per_block)
        return es_fail(err, ES_ENOMEM,
                       "cuda: no memory left for the KV cache (utilization %.2f, %.2f GiB "
                       "total, %.2f GiB used by weights and workspace%s)",
                       util, (double)total_b / (1 << 30), (double)(total_b - free_b) / (1 << 30),
                       cb->high_precision ? "; --precision high adds a remainder to each bf16 "
                                            "activation and doubles each KV block"
                                          : "");
    *n_blocks = (size_t)(budget / (double)per_block);
    if (*n_blocks > INT32_MAX / (size_t)cb->block_size)
        *n_blocks = INT32_MAX / (size_t)cb->block_size;
err:
    return st;
}

static enum es_status kv_alloc(struct cuda_backend *cb, size_t n_blocks, struct es_err *err)
{
    enum es_status st = ES_OK;
    cb->kv_layer_elems = n_blocks * (size_t)cb->nkv * (size_t)cb->block_size * (size_t)cb->hd;
    CU(cudaMalloc((void **)&cb->k_cache, 2 * cb->kv_layer_elems * (size_t)cb->L));
    CU(cudaMalloc((void **)&cb->v_cache, 2 * cb->kv_layer_elems * (size_t)cb->L));
    CU(cudaMemset(cb->k_cache, 0, 2 * cb->kv_layer_elems * (size_t)cb->L));
    CU(cudaMemset(cb->v_cache, 0, 2 * cb->kv_layer_elems * (size_t)cb->L));
    if (cb->high_precision) {
        CU(cudaMalloc((void **)&cb->k_cache_lo, 2 * cb->kv_layer_elems * (size_t)cb->L));
        CU(cudaMalloc((void **)&cb->v_cache_lo, 2 * cb->kv_layer_elems * (size_t)cb->L));
        CU(cudaMemset(cb->k_cache_lo, 0, 2 * cb->kv_layer_elems * (size_t)cb->L));
        CU(cudaMemset(cb->v_cache_lo, 0, 2 * cb->kv_layer_elems * (size_t)cb->L));
    }
    cb->num_kv_blocks = (int)n_blocks;
err:
    return st;
}

static enum es_status cuda_load(struct backend *be, const struct model_config *cfg, const char *dir,
                                const struct backend_opts *opts, struct es_err *err)
{
    enum es_status st = ES_OK;
    size_t workspace = 0, n_blocks = 0;
    struct cudaDeviceProp prop;
    struct cuda_backend *cb = calloc(1, sizeof(*cb));
    if (!cb) return es_fail(err, ES_ENOMEM, "cuda: out of host memory");
    be->impl = cb;
    cb->cfg = *cfg;
    be->cfg = cfg;
    cb->device = opts->device_id;
    /* Configuration errors hit every rank alike, before any collective.
     * From cbt_start on, every rank meets the others after each fallible
     * phase even when it failed (cbt_start, cbt_agree), so that a failure
     * on one rank ends the load on all of them. */
    if ((st = check_model(cb, opts, err)) != ES_OK) goto err;
    st = setup_device(cb, &prop, err);
    if ((st = cbt_start(cb, st, err)) != ES_OK) goto err;
    st = load_model(cb, dir, opts, &prop, &workspace, err);
    if ((st = cbt_agree(cb, st, 0, &n_blocks, err)) != ES_OK) goto err;
    /* NCCL connects and allocates on first use: before the KV cache takes what is left */
    st = cbt_warm_up(cb, err);
    if (st == ES_OK) st = kv_budget(cb, opts, &n_blocks, err);
    if ((st = cbt_agree(cb, st, n_blocks, &n_blocks, err)) != ES_OK) goto err;
    /* the last fallible phase is agreed too: a rank that alone failed here
     * would leave the others loaded, and their ncclCommDestroy waiting for it */
    size_t free_b = 0, total_b = 0, unused = 0;
    st = kv_alloc(cb, n_blocks, err);
    if (st == ES_OK)
        st = cuda_status(cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo", __FILE__, __LINE__,
                         err);
    if ((st = cbt_agree(cb, st, 0, &unused, err)) != ES_OK) goto err;
    be->num_kv_blocks = cb->num_kv_blocks;
    be->block_size = cb->block_size;

    size_t per_block = kv_block_bytes(cb);
    LOG_CUDA("workspace %.2f GiB (%d tokens/step), KV cache %.2f GiB = %zu blocks = %zu tokens; "
             "peak GPU memory %.2f of %.2f GiB",
             (double)workspace / (1 << 30), cb->max_tokens,
             (double)(per_block * n_blocks) / (1 << 30), n_blocks,
             n_blocks * (size_t)cb->block_size, (double)(total_b - free_b) / (1 << 30),
             (double)total_b / (1 << 30));
    return ES_OK;
err:
    cb->nccl_failed = true; /* leave the communicator without waiting for the peers */
    cuda_free_all(cb);
    free(cb);
    be->impl = NULL;
    return es_wrap(err, st, "cuda load: ");
}

static enum es_status cuda_forward(struct backend *be, const struct batch *b,
                                   struct batch_result *res, struct es_err *err)
{
    struct cuda_backend *cb = be->impl;
    if (!cb) return es_fail(err, ES_EINVAL, "cuda: backend not loaded");
    enum es_status st = cbs_forward(cb, b, res, err);
    /* tp: the peers may be waiting in a collective this rank never joined */
    if (st != ES_OK && cb->shard.tp_size > 1) cb->nccl_failed = true;
    return st;
}

static enum es_status cuda_copy_blocks(struct backend *be, const int32_t *src, const int32_t *dst,
                                       int n, struct es_err *err)
{
    enum es_status st = ES_OK;
    struct cuda_backend *cb = be->impl;
    size_t blk = (size_t)cb->nkv * (size_t)cb->block_size * (size_t)cb->hd; /* elements */
    uint16_t *caches[4] = {cb->k_cache, cb->v_cache, cb->k_cache_lo, cb->v_cache_lo};
    CU(cudaSetDevice(cb->device)); /* the engine's thread, or a tp rank's */
    for (int i = 0; i < n; i++) {
        if (src[i] < 0 || src[i] >= cb->num_kv_blocks || dst[i] < 0 || dst[i] >= cb->num_kv_blocks)
            return es_fail(err, ES_EINVAL, "cuda: copy_blocks: block %d -> %d out of range", src[i],
                           dst[i]);
        for (int l = 0; l < cb->L; l++) {
            size_t base = (size_t)l * cb->kv_layer_elems;
            for (int c = 0; c < 4; c++)
                if (caches[c])
                    CU(cudaMemcpyAsync(caches[c] + base + (size_t)dst[i] * blk,
                                       caches[c] + base + (size_t)src[i] * blk, 2 * blk,
                                       cudaMemcpyDeviceToDevice, cb->stream));
        }
    }
err:
    return st;
}

static enum es_status cuda_pp_connect(struct backend *be, struct pp_link *link, struct es_err *err)
{
    return cbp_connect(be->impl, link, err);
}

const struct backend_ops backend_cuda_ops = {
    .name = "cuda",
    .load = cuda_load,
    .forward = cuda_forward,
    .copy_blocks = cuda_copy_blocks,
    .pp_connect = cuda_pp_connect,
    .destroy = cuda_destroy,
};
