/*
 * logits.cu - per-row log-softmax statistics of the raw logits (logsumexp,
 * top-n logprobs, a scoring target's logprob and rank) and the greedy draw.
 * Semantics are those of server/backend/sampling.c (see sampling.h): the
 * canonical order is (logit descending, id ascending); sums are double.
 * One block per row. Owns nothing.
 */
#include <math.h>

#include "kernels.h"
#include "kern_util.cuh"

#define LOGITS_THREADS 1024

/* a comes before b in the canonical order */
__device__ __forceinline__ bool canon_before(float va, int ia, float vb, int ib)
{
    return va > vb || (va == vb && ia < ib);
}

__device__ __forceinline__ double block_sum_d(double v, double *scratch)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < nw ? scratch[lane] : 0.0;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Block-wide "first in canonical order" of (v, id); id < 0 = none. */
__device__ __forceinline__ void block_best(float *v, int *id, float *sv, int *si)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, *v, o);
        int oi = __shfl_xor_sync(0xffffffffu, *id, o);
        if (oi >= 0 && (*id < 0 || canon_before(ov, oi, *v, *id))) {
            *v = ov;
            *id = oi;
        }
    }
    __syncthreads();
    if (lane == 0) {
        sv[warp] = *v;
        si[warp] = *id;
    }
    __syncthreads();
    *v = lane < nw ? sv[lane] : -INFINITY;
    *id = lane < nw ? si[lane] : -1;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, *v, o);
        int oi = __shfl_xor_sync(0xffffffffu, *id, o);
        if (oi >= 0 && (*id < 0 || canon_before(ov, oi, *v, *id))) {
            *v = ov;
            *id = oi;
        }
    }
}

__global__ void __launch_bounds__(LOGITS_THREADS)
    logprobs_kernel(const float *__restrict__ logits, int V, const int32_t *__restrict__ n_top,
                    const int32_t *__restrict__ target, double *lse_out, int32_t *top_ids,
                    float *top_lp, float *target_lp, int32_t *target_rank)
{
    __shared__ float sf[32];
    __shared__ int si[32];
    __shared__ double sd[32];
    int r = blockIdx.x;
    const float *x = logits + (size_t)r * V;

    float m = -INFINITY;
    for (int i = threadIdx.x; i < V; i += blockDim.x)
        m = fmaxf(m, x[i]); /* fmaxf drops NaN */
    m = block_max(m, sf);
    double sum = 0.0;
    if (m != -INFINITY)
        for (int i = threadIdx.x; i < V; i += blockDim.x)
            sum += (double)expf(x[i] - m);
    sum = block_sum_d(sum, sd);
    double lse = m == -INFINITY ? -INFINITY : (double)m + log(sum);
    if (threadIdx.x == 0) lse_out[r] = lse;

    int tg = target[r];
    if (tg >= 0 && tg < V) {
        float lt = x[tg];
        float cnt = 0.0f;
        for (int i = threadIdx.x; i < V; i += blockDim.x)
            cnt += canon_before(x[i], i, lt, tg);
        cnt = block_sum(cnt, sf); /* exact: counts stay far below 2^24 */
        if (threadIdx.x == 0) {
            target_lp[r] = (float)((double)lt - lse);
            target_rank[r] = 1 + (int32_t)cnt;
        }
    } else if (threadIdx.x == 0) {
        target_lp[r] = 0.0f;
        target_rank[r] = 0;
    }

    int k = n_top[r];
    if (k > KERN_MAX_TOP) k = KERN_MAX_TOP;
    if (k > V) k = V;
    float pv = INFINITY;
    int pid = -1;
    for (int j = 0; j < k; j++) {
        float bv = -INFINITY;
        int bid = -1;
        for (int i = threadIdx.x; i < V; i += blockDim.x) {
            float v = x[i];
            if (v != v) continue; /* NaN */
            bool after = pid < 0 || canon_before(pv, pid, v, i);
            if (after && (bid < 0 || canon_before(v, i, bv, bid))) {
                bv = v;
                bid = i;
            }
        }
        block_best(&bv, &bid, sf, si);
        if (bid < 0) break;
        if (threadIdx.x == 0) {
            top_ids[(size_t)r * KERN_MAX_TOP + j] = bid;
            top_lp[(size_t)r * KERN_MAX_TOP + j] = (float)((double)bv - lse);
        }
        pv = bv;
        pid = bid;
        __syncthreads();
    }
}

__global__ void __launch_bounds__(LOGITS_THREADS)
    greedy_kernel(const float *__restrict__ logits, const int32_t *__restrict__ rows, int V,
                  const double *__restrict__ lse, int32_t *token, float *logprob)
{
    __shared__ float sf[32];
    __shared__ int si[32];
    int r = rows[blockIdx.x];
    const float *x = logits + (size_t)r * V;
    float bv = -INFINITY;
    int bid = -1;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        float v = x[i];
        if (v != v) v = -INFINITY;
        if (bid < 0 || canon_before(v, i, bv, bid)) {
            bv = v;
            bid = i;
        }
    }
    block_best(&bv, &bid, sf, si);
    if (threadIdx.x == 0) {
        if (bid < 0) bid = 0;
        token[r] = bid;
        logprob[r] = (float)((double)x[bid] - lse[r]);
    }
}

extern "C" cudaError_t kern_logprobs(const float *logits, int R, int V, const int32_t *n_top,
                                     const int32_t *target, int max_top, double *lse,
                                     int32_t *top_ids, float *top_lp, float *target_lp,
                                     int32_t *target_rank, cudaStream_t stream)
{
    (void)max_top;
    if (R <= 0) return cudaSuccess;
    logprobs_kernel<<<R, LOGITS_THREADS, 0, stream>>>(logits, V, n_top, target, lse, top_ids,
                                                      top_lp, target_lp, target_rank);
    return cudaGetLastError();
}

extern "C" cudaError_t kern_greedy(const float *logits, const int32_t *rows, int n, int V,
                                   const double *lse, int32_t *token, float *logprob,
                                   cudaStream_t stream)
{
    if (n <= 0) return cudaSuccess;
    greedy_kernel<<<n, LOGITS_THREADS, 0, stream>>>(logits, rows, V, lse, token, logprob);
    return cudaGetLastError();
}
