/*
 * attention.cu - paged causal attention over the bf16 KV cache, for decode
 * and prefill tokens alike (flash-decoding). One block of ATT_WARPS warps
 * per (query token, kv head, split): it serves the whole GQA group of query
 * heads sharing that kv head, so each K/V row is read once per group. Each
 * warp streams 32-token tiles of the split with an online softmax: lane j
 * computes the scores of token j against the group's queries (kept in
 * shared memory), then the warp accumulates P.V with lane l owning output
 * dims [l*EPL, (l+1)*EPL); the warps are merged in shared memory. Contexts longer than one partition are split
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

template <int HD, int G>
__global__ void __launch_bounds__(ATT_WARPS * 32) attn_kernel(struct kern_attn_args a)
{
    constexpr int EPL = HD >= 32 ? HD / 32 : 1; /* dims per lane in the PV phase */
    constexpr int NV = HD / 8;                  /* 16-byte chunks per K row */
    __shared__ __align__(16) float s_q[G][HD];  /* scaled queries of the group */
    __shared__ __align__(16) float s_p[ATT_WARPS][32][G];
    __shared__ size_t s_off[ATT_WARPS][32];
    __shared__ float s_m[ATT_WARPS][G], s_l[ATT_WARPS][G];
    __shared__ float s_acc[ATT_WARPS][G][HD];

    int t = a.tok_list ? a.tok_list[blockIdx.x] : blockIdx.x;
    int kvh = blockIdx.y, split = blockIdx.z;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const bool active = lane * EPL < HD; /* HD 16: half the lanes idle in PV */
    int ctx = a.tok_ctx[t];
    int n_splits = (ctx + a.partition - 1) / a.partition;
    if (split >= n_splits) return;
    int begin = split * a.partition;
    int end = min(ctx, begin + a.partition);
    const int32_t *bt = a.block_tables + (size_t)a.tok_seq[t] * a.bt_stride;
    const int bs = a.block_size, nkv = a.nkv;

    const uint16_t *qg = a.q + (size_t)t * a.q_stride + (size_t)kvh * G * HD;
    for (int i = threadIdx.x; i < G * HD; i += blockDim.x) (&s_q[0][0])[i] = bf2f(qg[i]) * a.scale;
    __syncthreads();

    float m[G], l[G], acc[G][EPL];
#pragma unroll
    for (int g = 0; g < G; g++) {
        m[g] = -INFINITY;
        l[g] = 0.0f;
#pragma unroll
        for (int e = 0; e < EPL; e++) acc[g][e] = 0.0f;
    }

    /* each warp takes 32-token tiles: lane j scores token j of the tile
     * (whole dot products, no shuffles), then the warp accumulates P.V with
     * lane-owned output dims */
    for (int tok0 = begin + warp * 32; tok0 < end; tok0 += ATT_WARPS * 32) {
        int tok = tok0 + lane;
        bool valid = tok < end;
        size_t off = 0;
        float sc[G];
#pragma unroll
        for (int g = 0; g < G; g++) sc[g] = 0.0f;
        if (valid) {
            int blk = bt[tok / bs];
            off = (((size_t)blk * nkv + kvh) * bs + tok % bs) * HD;
            const uint4 *kr = (const uint4 *)(a.k_cache + off);
            constexpr int KU = NV < 8 ? NV : 8; /* 16-byte K loads in flight per lane */
            uint4 kv[KU];
#pragma unroll
            for (int c0 = 0; c0 < NV; c0 += KU) {
#pragma unroll
                for (int c = 0; c < KU; c++) kv[c] = kr[c0 + c];
#pragma unroll
                for (int c = 0; c < KU; c++) {
                    const uint16_t *e = (const uint16_t *)&kv[c];
                    float k8[8];
#pragma unroll
                    for (int i = 0; i < 8; i++) k8[i] = bf2f(e[i]);
#pragma unroll
                    for (int g = 0; g < G; g++) {
                        const float4 *qv = (const float4 *)&s_q[g][(c0 + c) * 8];
                        float4 q0 = qv[0], q1 = qv[1];
                        sc[g] += q0.x * k8[0] + q0.y * k8[1] + q0.z * k8[2] + q0.w * k8[3] +
                                 q1.x * k8[4] + q1.y * k8[5] + q1.z * k8[6] + q1.w * k8[7];
                    }
                }
            }
        }
        s_off[warp][lane] = off;
#pragma unroll
        for (int g = 0; g < G; g++) {
            float tm = warp_max(valid ? sc[g] : -INFINITY);
            float mn = fmaxf(m[g], tm);
            float c = __expf(m[g] - mn); /* 0 on the first tile */
            float p = valid ? __expf(sc[g] - mn) : 0.0f;
            l[g] = l[g] * c + p;
#pragma unroll
            for (int e = 0; e < EPL; e++) acc[g][e] *= c;
            m[g] = mn;
            s_p[warp][lane][g] = p;
        }
        __syncwarp();
        int n = min(32, end - tok0);
        if (active) {
            constexpr int PU = 8; /* V rows in flight per lane */
            for (int j0 = 0; j0 < n; j0 += PU) {
                float v[PU][EPL];
#pragma unroll
                for (int u = 0; u < PU; u++) {
                    if (j0 + u < n) load_bf16<EPL>(a.v_cache + s_off[warp][j0 + u] + lane * EPL, v[u]);
                    else
#pragma unroll
                        for (int e = 0; e < EPL; e++) v[u][e] = 0.0f;
                }
#pragma unroll
                for (int u = 0; u < PU; u++) {
#pragma unroll
                    for (int g = 0; g < G; g++) {
                        float p = j0 + u < n ? s_p[warp][j0 + u][g] : 0.0f;
#pragma unroll
                        for (int e = 0; e < EPL; e++) acc[g][e] += p * v[u][e];
                    }
                }
            }
        }
        __syncwarp();
    }

#pragma unroll
    for (int g = 0; g < G; g++) {
        float lt = warp_sum(l[g]);
        if (lane == 0) {
            s_m[warp][g] = m[g];
            s_l[warp][g] = lt;
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
            size_t pi = ((size_t)blockIdx.x * a.nq + qh) * a.max_splits + split; /* list row */
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
    int t = a.tok_list ? a.tok_list[blockIdx.x] : blockIdx.x;
    int qh = blockIdx.y, d = threadIdx.x;
    int ctx = a.tok_ctx[t];
    int n_splits = (ctx + a.partition - 1) / a.partition;
    if (n_splits <= 1) return;
    size_t p0 = ((size_t)blockIdx.x * a.nq + qh) * a.max_splits;
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
    dim3 grid(a->tok_list ? a->n_list : a->T, a->nkv, a->max_splits);
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
    int n = a->tok_list ? a->n_list : a->T;
    if (n <= 0) return cudaSuccess;
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
    attn_combine_kernel<<<dim3(n, a->nq), a->hd, 0, stream>>>(*a);
    return cudaGetLastError();
}
