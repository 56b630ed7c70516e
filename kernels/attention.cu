/*
 * attention.cu - paged causal attention over the bf16 KV cache, for decode
 * and prefill tokens alike (flash-decoding). One block of ATT_WARPS warps
 * per (query token, kv head, split): it serves the whole GQA group of query
 * heads sharing that kv head, so each K/V row is read once per group. Each
 * warp streams its own subset of the split's tokens with an online softmax
 * (lane l holds dims [l*EPL, (l+1)*EPL) of every vector); the warps are
 * merged in shared memory. Contexts longer than one partition are split
 * over gridDim.z and merged by attn_combine_kernel. Owns nothing.
 */
#include <math.h>

#include "kernels.h"
#include "kern_util.cuh"

#define ATT_WARPS 4

template <int EPL> struct vec_t;
template <> struct vec_t<1> { typedef uint16_t type; };
template <> struct vec_t<2> { typedef uint32_t type; };
template <> struct vec_t<4> { typedef uint2 type; };
template <> struct vec_t<8> { typedef uint4 type; };

template <int EPL> __device__ __forceinline__ void load_bf16(const uint16_t *p, float *out)
{
    typename vec_t<EPL>::type v = *(const typename vec_t<EPL>::type *)p;
    const uint16_t *e = (const uint16_t *)&v;
#pragma unroll
    for (int i = 0; i < EPL; i++) out[i] = bf2f(e[i]);
}

__device__ __forceinline__ int lane_of(void)
{
    return threadIdx.x & 31;
}

template <int HD, int G>
__global__ void __launch_bounds__(ATT_WARPS * 32) attn_kernel(struct kern_attn_args a)
{
    constexpr int EPL = HD >= 32 ? HD / 32 : 1; /* dims per lane */
    const bool active = lane_of() * EPL < HD;    /* HD 16: half the lanes idle */
    __shared__ float s_m[ATT_WARPS][G], s_l[ATT_WARPS][G];
    __shared__ float s_acc[ATT_WARPS][G][HD];

    int t = blockIdx.x, kvh = blockIdx.y, split = blockIdx.z;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int ctx = a.tok_ctx[t];
    int n_splits = (ctx + a.partition - 1) / a.partition;
    if (split >= n_splits) return;
    int begin = split * a.partition;
    int end = min(ctx, begin + a.partition);
    const int32_t *bt = a.block_tables + (size_t)a.tok_seq[t] * a.bt_stride;
    const int bs = a.block_size, nkv = a.nkv;

    float q[G][EPL];
#pragma unroll
    for (int g = 0; g < G; g++) {
#pragma unroll
        for (int e = 0; e < EPL; e++) q[g][e] = 0.0f;
        if (active)
            load_bf16<EPL>(a.q + (size_t)t * a.q_stride + (size_t)(kvh * G + g) * HD + lane * EPL,
                           q[g]);
#pragma unroll
        for (int e = 0; e < EPL; e++) q[g][e] *= a.scale;
    }
    float m[G], l[G], acc[G][EPL];
#pragma unroll
    for (int g = 0; g < G; g++) {
        m[g] = -INFINITY;
        l[g] = 0.0f;
#pragma unroll
        for (int e = 0; e < EPL; e++) acc[g][e] = 0.0f;
    }

    constexpr int UNROLL = 2;
    for (int base = begin + warp; base < end; base += ATT_WARPS * UNROLL) {
        float k[UNROLL][EPL], v[UNROLL][EPL];
        bool ok[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            int tok = base + u * ATT_WARPS;
            ok[u] = tok < end;
#pragma unroll
            for (int e = 0; e < EPL; e++) k[u][e] = v[u][e] = 0.0f;
            if (ok[u] && active) {
                int blk = bt[tok / bs];
                size_t off = (((size_t)blk * nkv + kvh) * bs + tok % bs) * HD + lane * EPL;
                load_bf16<EPL>(a.k_cache + off, k[u]);
                load_bf16<EPL>(a.v_cache + off, v[u]);
            }
        }
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            if (!ok[u]) continue;
#pragma unroll
            for (int g = 0; g < G; g++) {
                float s = 0.0f;
#pragma unroll
                for (int e = 0; e < EPL; e++) s += q[g][e] * k[u][e];
                s = warp_sum(s);
                float mn = fmaxf(m[g], s);
                float c = __expf(m[g] - mn);
                float p = __expf(s - mn);
                l[g] = l[g] * c + p;
#pragma unroll
                for (int e = 0; e < EPL; e++) acc[g][e] = acc[g][e] * c + p * v[u][e];
                m[g] = mn;
            }
        }
    }

#pragma unroll
    for (int g = 0; g < G; g++) {
        if (lane == 0) {
            s_m[warp][g] = m[g];
            s_l[warp][g] = l[g];
        }
        if (active)
#pragma unroll
            for (int e = 0; e < EPL; e++) s_acc[warp][g][lane * EPL + e] = acc[g][e];
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < G * HD; idx += blockDim.x) {
        int g = idx / HD, d = idx % HD;
        float M = -INFINITY;
#pragma unroll
        for (int w = 0; w < ATT_WARPS; w++) M = fmaxf(M, s_m[w][g]);
        float L = 0.0f, A = 0.0f;
#pragma unroll
        for (int w = 0; w < ATT_WARPS; w++) {
            float f = s_m[w][g] == -INFINITY ? 0.0f : __expf(s_m[w][g] - M);
            L += s_l[w][g] * f;
            A += s_acc[w][g][d] * f;
        }
        int qh = kvh * G + g;
        if (n_splits == 1) {
            a.out[(size_t)t * a.nq * HD + (size_t)qh * HD + d] = f2bf(A / L);
        } else {
            size_t pi = ((size_t)t * a.nq + qh) * a.max_splits + split;
            a.part_acc[pi * HD + d] = A;
            if (d == 0) {
                a.part_ml[pi * 2] = M;
                a.part_ml[pi * 2 + 1] = L;
            }
        }
    }
}

/* Merges the splits of tokens whose context spans more than one partition.
 * One block per (token, query head), hd threads. */
__global__ void attn_combine_kernel(struct kern_attn_args a)
{
    int t = blockIdx.x, qh = blockIdx.y, d = threadIdx.x;
    int ctx = a.tok_ctx[t];
    int n_splits = (ctx + a.partition - 1) / a.partition;
    if (n_splits <= 1) return;
    size_t p0 = ((size_t)t * a.nq + qh) * a.max_splits;
    float M = -INFINITY;
    for (int s = 0; s < n_splits; s++) M = fmaxf(M, a.part_ml[(p0 + s) * 2]);
    float L = 0.0f, A = 0.0f;
    for (int s = 0; s < n_splits; s++) {
        float f = __expf(a.part_ml[(p0 + s) * 2] - M);
        L += a.part_ml[(p0 + s) * 2 + 1] * f;
        A += a.part_acc[(p0 + s) * a.hd + d] * f;
    }
    a.out[(size_t)t * a.nq * a.hd + (size_t)qh * a.hd + d] = f2bf(A / L);
}

template <int HD> static cudaError_t launch_hd(const struct kern_attn_args *a, cudaStream_t st)
{
    dim3 grid(a->T, a->nkv, a->max_splits);
    switch (a->nq / a->nkv) {
    case 1: attn_kernel<HD, 1><<<grid, ATT_WARPS * 32, 0, st>>>(*a); break;
    case 2: attn_kernel<HD, 2><<<grid, ATT_WARPS * 32, 0, st>>>(*a); break;
    case 4: attn_kernel<HD, 4><<<grid, ATT_WARPS * 32, 0, st>>>(*a); break;
    case 8: attn_kernel<HD, 8><<<grid, ATT_WARPS * 32, 0, st>>>(*a); break;
    default: return cudaErrorInvalidValue;
    }
    return cudaGetLastError();
}

extern "C" cudaError_t kern_paged_attention(const struct kern_attn_args *a, cudaStream_t stream)
{
    if (a->T <= 0) return cudaSuccess;
    if (a->nkv <= 0 || a->nq % a->nkv || a->max_splits < 1 || a->partition < 1)
        return cudaErrorInvalidValue;
    cudaError_t e;
    switch (a->hd) {
    case 16: e = launch_hd<16>(a, stream); break;
    case 32: e = launch_hd<32>(a, stream); break;
    case 64: e = launch_hd<64>(a, stream); break;
    case 128: e = launch_hd<128>(a, stream); break;
    case 256: e = launch_hd<256>(a, stream); break;
    default: return cudaErrorInvalidValue;
    }
    if (e != cudaSuccess || a->max_splits == 1) return e;
    attn_combine_kernel<<<dim3(a->T, a->nq), a->hd, 0, stream>>>(*a);
    return cudaGetLastError();
}
