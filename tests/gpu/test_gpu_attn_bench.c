/*
 * test_gpu_attn_bench.c - test_gpu's `attn-bench` mode: decode attention
 * (kern_paged_attention, one query token per sequence) through every
 * variant (SIMT, tensor-core tiles, the ROWS kernels). First each variant
 * against a plain fp32 host reference on small cases with splits, then
 * each timed (cudaEvent) on the decode shapes of issue 5 (8B, 1B, long
 * split contexts, group 2) with random bf16 caches in shuffled blocks,
 * its output compared with the SIMT kernel's; splits as run_layers
 * (backend_cuda_step.c) picks them for the device's SMs. Draws from
 * test_gpu.c's random stream (test_gpu.h); owns only the device buffers
 * of the case it runs.
 */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <cuda_runtime.h>

#include "backend_cuda.h"
#include "kernels.h"
#include "test_gpu.h"

/* One decode-attention problem on the device: `batch` sequences of one query
 * token each, contexts ctx - (7 s) % 16 (ragged last blocks), K/V random
 * bf16 in blocks of 16 whose block table is a shuffled permutation (no two
 * neighbours contiguous by design). Host copies are kept for the fp32
 * reference. */
struct attn_bench {
    struct kern_attn_args a; /* device buffers */
    uint16_t *q, *kc, *vc;   /* host copies: [batch][nq hd], caches */
    int32_t *bt, *ctx;       /* [batch][bt_stride], [batch] */
    double kv_bytes;         /* K + V bytes one call must read */
};

/* partition / max_splits as run_layers (backend_cuda_step.c) chooses them */
static void attn_bench_splits(struct kern_attn_args *a, int max_ctx, int num_sms)
{
    int bs = a->block_size, work = a->n_list * a->nkv;
    int split_tokens = (2 * num_sms + a->nkv - 1) / a->nkv;
    a->partition = (max_ctx + bs - 1) / bs * bs;
    a->max_splits = 1;
    if (a->n_list > split_tokens || work >= 2 * num_sms) return;
    int want = (2 * num_sms + work - 1) / work;
    if (want > CUDA_MAX_SPLITS) want = CUDA_MAX_SPLITS;
    int part = (max_ctx + want - 1) / want;
    if (part < 256) part = 256;
    a->partition = (part + bs - 1) / bs * bs;
    a->max_splits = (max_ctx + a->partition - 1) / a->partition;
}

static void attn_bench_setup(struct attn_bench *b, int hd, int nq, int nkv, int batch, int ctx,
                             int num_sms)
{
    enum { bs = 16 };
    int stride = (ctx + bs - 1) / bs, n_blocks = batch * stride;
    size_t cache = (size_t)n_blocks * nkv * bs * hd, nqe = (size_t)batch * nq * hd;
    *b = (struct attn_bench){.q = malloc(2 * nqe),
                             .kc = malloc(2 * cache),
                             .vc = malloc(2 * cache),
                             .bt = malloc(4 * (size_t)n_blocks),
                             .ctx = malloc(4 * (size_t)batch)};
    int32_t *seq = malloc(4 * (size_t)batch);
    for (size_t i = 0; i < cache; i++)
        b->kc[i] = tg_f2bf(tg_rndf()), b->vc[i] = tg_f2bf(tg_rndf());
    for (size_t i = 0; i < nqe; i++)
        b->q[i] = tg_f2bf(tg_rndf() * 3);
    for (int i = 0; i < n_blocks; i++)
        b->bt[i] = i;
    for (int i = n_blocks - 1; i > 0; i--) {
        int j = (int)(tg_rnd() % (uint32_t)(i + 1)), x = b->bt[i];
        b->bt[i] = b->bt[j], b->bt[j] = x;
    }
    for (int s = 0; s < batch; s++) {
        b->ctx[s] = ctx - (7 * s) % 16 > 0 ? ctx - (7 * s) % 16 : 1;
        seq[s] = s;
        b->kv_bytes += (double)b->ctx[s] * nkv * hd * 2 * 2;
    }
    b->a = (struct kern_attn_args){.q = tg_dup_to_dev(b->q, 2 * nqe),
                                   .q_stride = nq * hd,
                                   .k_cache = tg_dup_to_dev(b->kc, 2 * cache),
                                   .v_cache = tg_dup_to_dev(b->vc, 2 * cache),
                                   .block_tables = tg_dup_to_dev(b->bt, 4 * (size_t)n_blocks),
                                   .bt_stride = stride,
                                   .tok_seq = tg_dup_to_dev(seq, 4 * (size_t)batch),
                                   .tok_ctx = tg_dup_to_dev(b->ctx, 4 * (size_t)batch),
                                   .tok_list = tg_dup_to_dev(seq, 4 * (size_t)batch),
                                   .n_list = batch,
                                   .T = batch,
                                   .nq = nq,
                                   .nkv = nkv,
                                   .hd = hd,
                                   .block_size = bs,
                                   .scale = 1.0f / sqrtf((float)hd)};
    attn_bench_splits(&b->a, ctx, num_sms);
    size_t parts = (size_t)batch * nq * b->a.max_splits;
    CK(cudaMalloc((void **)&b->a.part_acc, 4 * parts * hd));
    CK(cudaMalloc((void **)&b->a.part_ml, 4 * parts * 2));
    CK(cudaMalloc((void **)&b->a.out, 2 * nqe));
    free(seq);
}

static void attn_bench_free(struct attn_bench *b)
{
    struct kern_attn_args *a = &b->a;
    cudaFree((void *)a->q), cudaFree((void *)a->k_cache), cudaFree((void *)a->v_cache);
    cudaFree((void *)a->block_tables), cudaFree((void *)a->tok_seq);
    cudaFree((void *)a->tok_ctx), cudaFree((void *)a->tok_list);
    cudaFree(a->part_acc), cudaFree(a->part_ml), cudaFree(a->out);
    free(b->q), free(b->kc), free(b->vc), free(b->bt), free(b->ctx);
}

/* one call of `variant`; out: bf16 [batch][nq hd] */
static void attn_bench_run(struct attn_bench *b, int variant, uint16_t *out)
{
    size_t n = (size_t)b->a.n_list * b->a.nq * b->a.hd;
    b->a.variant = variant;
    CK(cudaMemset(b->a.out, 0xff, 2 * n)); /* NaN until written */
    CK(kern_paged_attention(&b->a, 0));
    CK(cudaDeviceSynchronize());
    CK(cudaMemcpy(out, b->a.out, 2 * n, cudaMemcpyDeviceToHost));
}

/* ms per call: 5 warm-up calls, then `iters` between two events */
static double attn_bench_time(struct attn_bench *b, int variant, int iters)
{
    cudaEvent_t e0, e1;
    float ms = 0;
    b->a.variant = variant;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    for (int i = 0; i < 5; i++)
        CK(kern_paged_attention(&b->a, 0));
    CK(cudaEventRecord(e0, 0));
    for (int i = 0; i < iters; i++)
        CK(kern_paged_attention(&b->a, 0));
    CK(cudaEventRecord(e1, 0));
    CK(cudaEventSynchronize(e1));
    CK(cudaEventElapsedTime(&ms, e0, e1));
    cudaEventDestroy(e0), cudaEventDestroy(e1);
    return ms / iters;
}

/* plain fp32 attention on the host copies: ref [batch][nq hd] */
static void attn_bench_reference(const struct attn_bench *b, float *ref)
{
    const struct kern_attn_args *a = &b->a;
    int hd = a->hd, G = a->nq / a->nkv, bs = a->block_size;
    float *p = malloc(sizeof(float) * (size_t)a->bt_stride * bs);
    for (int s = 0; s < a->n_list; s++)
        for (int h = 0; h < a->nq; h++) {
            const uint16_t *qv = b->q + ((size_t)s * a->nq + h) * hd;
            const int32_t *bt = b->bt + (size_t)s * a->bt_stride;
            float mx = -INFINITY, z = 0;
            for (int j = 0; j < b->ctx[s]; j++) {
                size_t row = (((size_t)bt[j / bs] * a->nkv + h / G) * bs + j % bs) * hd;
                float d = 0;
                for (int e = 0; e < hd; e++)
                    d += tg_bf2f(qv[e]) * tg_bf2f(b->kc[row + e]);
                p[j] = d * a->scale;
                mx = fmaxf(mx, p[j]);
            }
            for (int j = 0; j < b->ctx[s]; j++)
                z += p[j] = expf(p[j] - mx);
            float *o = ref + ((size_t)s * a->nq + h) * hd;
            for (int e = 0; e < hd; e++)
                o[e] = 0;
            for (int j = 0; j < b->ctx[s]; j++) {
                size_t row = (((size_t)bt[j / bs] * a->nkv + h / G) * bs + j % bs) * hd;
                for (int e = 0; e < hd; e++)
                    o[e] += p[j] / z * tg_bf2f(b->vc[row + e]);
            }
        }
    free(p);
}

/* max |x - y| over n values, x bf16, y bf16 or fp32; NaN counts as infinite */
static double attn_max_diff(const uint16_t *x, const uint16_t *y_bf16, const float *y_f32, size_t n)
{
    double mx = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)tg_bf2f(x[i]) - (y_bf16 ? tg_bf2f(y_bf16[i]) : y_f32[i]));
        if (!(d <= mx)) mx = isnan(d) ? INFINITY : d;
    }
    return mx;
}

static const int attn_bench_variants[] = {KERN_ATTN_SIMT, KERN_ATTN_MMA_TILES, KERN_ATTN_ROWS_SIMT,
                                          KERN_ATTN_ROWS_MMA};
#define ATTN_BENCH_N_VARIANTS ((int)(sizeof attn_bench_variants / sizeof attn_bench_variants[0]))

/* Every variant against the fp32 reference on a small case with splits.
 * Returns the failures (max |diff| > 1e-2: bf16 rounding of outputs < 1 is
 * below 4e-3). */
static int attn_bench_check_small(int hd, int num_sms)
{
    struct attn_bench b;
    attn_bench_setup(&b, hd, 32, 8, 6, 700, num_sms);
    size_t n = (size_t)b.a.n_list * b.a.nq * hd;
    float *ref = malloc(sizeof(float) * n);
    uint16_t *out = malloc(2 * n);
    attn_bench_reference(&b, ref);
    int bad = 0;
    for (int i = 0; i < ATTN_BENCH_N_VARIANTS; i++) {
        int v = attn_bench_variants[i];
        b.a.variant = v;
        if (kern_paged_attention_variant(&b.a) != (enum kern_attn_variant)v) continue;
        attn_bench_run(&b, v, out);
        double d = attn_max_diff(out, NULL, ref, n);
        bool ok = d <= 1e-2;
        bad += !ok;
        fprintf(stderr,
                "attn-bench check: hd %d nq 32 nkv 8 batch 6 ctx 685..700, %d splits of %d: %-9s "
                "max |diff| vs fp32 host %.2e %s\n",
                hd, b.a.max_splits, b.a.partition, tg_attn_variant_name(v), d, ok ? "ok" : "FAIL");
    }
    free(ref), free(out);
    attn_bench_free(&b);
    return bad;
}

/* Times every variant on one shape and compares its output with SIMT's.
 * Returns the failures (max |diff| > 2e-2). */
static int attn_bench_shape(int hd, int nq, int nkv, int batch, int ctx, int num_sms)
{
    struct attn_bench b;
    attn_bench_setup(&b, hd, nq, nkv, batch, ctx, num_sms);
    size_t n = (size_t)batch * nq * hd;
    uint16_t *base = malloc(2 * n), *out = malloc(2 * n);
    b.a.variant = KERN_ATTN_AUTO;
    enum kern_attn_variant dflt = kern_paged_attention_variant(&b.a);
    attn_bench_run(&b, KERN_ATTN_SIMT, base);
    fprintf(stderr,
            "\nhd %d nq %d nkv %d batch %d ctx %d..%d: partition %d, %d split(s); K+V %.1f MB per "
            "call; default (auto) = %s\n",
            hd, nq, nkv, batch, ctx - 15 > 0 ? ctx - 15 : 1, ctx, b.a.partition, b.a.max_splits,
            b.kv_bytes / 1e6, tg_attn_variant_name(dflt));
    int bad = 0;
    for (int i = 0; i < ATTN_BENCH_N_VARIANTS; i++) {
        int v = attn_bench_variants[i];
        b.a.variant = v;
        if (kern_paged_attention_variant(&b.a) != (enum kern_attn_variant)v) {
            fprintf(stderr, "  %-9s  does not cover this shape\n", tg_attn_variant_name(v));
            continue;
        }
        attn_bench_run(&b, v, out);
        double d = attn_max_diff(out, base, NULL, n);
        double ms = attn_bench_time(&b, v, 50);
        double gbs = b.kv_bytes / (ms * 1e-3) / 1e9;
        bool ok = d <= 2e-2;
        bad += !ok;
        fprintf(stderr, "  %-9s %8.3f ms %7.0f GB/s %5.1f%%   max |diff| vs simt %.2e %s\n",
                tg_attn_variant_name(v), ms, gbs, 100.0 * gbs / 4800.0, d, ok ? "" : "FAIL");
    }
    free(base), free(out);
    attn_bench_free(&b);
    return bad;
}

int tg_attn_bench(void)
{
    int dev;
    struct cudaDeviceProp prop;
    CK(cudaGetDevice(&dev));
    CK(cudaGetDeviceProperties(&prop, dev));
    int sms = prop.multiProcessorCount;
    fprintf(stderr,
            "attn-bench: kern_paged_attention, decode (one query token per sequence), %s, %d "
            "SMs.\nPer variant: ms per call (50 calls after 5 warm-up, cudaEvent), GB/s of K+V "
            "bytes read (each row once per kv head), %% of the H200's 4.8 TB/s, max |diff| of "
            "its bf16 output vs the SIMT kernel's (fails above 2e-2). Splits as run_layers "
            "picks them for %d SMs.\n",
            prop.name, sms, sms);
    int bad = attn_bench_check_small(128, sms) + attn_bench_check_small(64, sms);
    bad += attn_bench_shape(128, 32, 8, 256, 512, sms);
    bad += attn_bench_shape(64, 32, 8, 256, 640, sms);
    bad += attn_bench_shape(128, 32, 8, 32, 4096, sms);
    bad += attn_bench_shape(128, 16, 8, 64, 1024, sms);
    fprintf(stderr, "\nattn-bench: %s (%d failure(s))\n", bad ? "FAIL" : "ok", bad);
    return bad ? 1 : 0;
}
