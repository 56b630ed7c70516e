/*
 * attention.cu - paged causal attention over the bf16 KV cache, for decode
 * and prefill tokens alike (flash-decoding). One block of ATT_WARPS warps
 * per (query token, kv head, split): it serves the whole GQA group of query
 * heads sharing that kv head, so each K/V row is read once per group. Each
 * warp streams 32-token tiles of the split with an online softmax: lane j
 * computes the scores of token j against the group's queries (kept in
 * shared memory), then the warp accumulates P.V with lane l owning output
 * dims [l*EPL, (l+1)*EPL); the warps are merged in shared memory. Contexts longer than one
 * partition are split over gridDim.z and merged by attn_combine_kernel. Owns nothing.
 */
#include <math.h>

#include "kernels.h"
#include "kern_util.cuh"
#include "kern_mma.cuh"

#define ATT_WARPS 4

template <int EPL> struct vec_t;
template <> struct vec_t<1> {
    typedef uint16_t type;
};
template <> struct vec_t<2> {
    typedef uint32_t type;
};
template <> struct vec_t<4> {
    typedef uint2 type;
};
template <> struct vec_t<8> {
    typedef uint4 type;
};

template <int EPL> __device__ __forceinline__ void load_bf16(const uint16_t *p, float *out)
{
    typename vec_t<EPL>::type v = *(const typename vec_t<EPL>::type *)p;
    const uint16_t *e = (const uint16_t *)&v;
#pragma unroll
    for (int i = 0; i < EPL; i++)
        out[i] = bf2f(e[i]);
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
    for (int i = threadIdx.x; i < G * HD; i += blockDim.x)
        (&s_q[0][0])[i] = bf2f(qg[i]) * a.scale;
    __syncthreads();

    float m[G], l[G], acc[G][EPL];
#pragma unroll
    for (int g = 0; g < G; g++) {
        m[g] = -INFINITY;
        l[g] = 0.0f;
#pragma unroll
        for (int e = 0; e < EPL; e++)
            acc[g][e] = 0.0f;
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
        for (int g = 0; g < G; g++)
            sc[g] = 0.0f;
        if (valid) {
            int blk = bt[tok / bs];
            off = (((size_t)blk * nkv + kvh) * bs + tok % bs) * HD;
            const uint4 *kr = (const uint4 *)(a.k_cache + off);
            constexpr int KU = NV < 8 ? NV : 8; /* 16-byte K loads in flight per lane */
            uint4 kv[KU];
#pragma unroll
            for (int c0 = 0; c0 < NV; c0 += KU) {
#pragma unroll
                for (int c = 0; c < KU; c++)
                    kv[c] = kr[c0 + c];
#pragma unroll
                for (int c = 0; c < KU; c++) {
                    const uint16_t *e = (const uint16_t *)&kv[c];
                    float k8[8];
#pragma unroll
                    for (int i = 0; i < 8; i++)
                        k8[i] = bf2f(e[i]);
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
            for (int e = 0; e < EPL; e++)
                acc[g][e] *= c;
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
                    if (j0 + u < n)
                        load_bf16<EPL>(a.v_cache + s_off[warp][j0 + u] + lane * EPL, v[u]);
                    else
#pragma unroll
                        for (int e = 0; e < EPL; e++)
                            v[u][e] = 0.0f;
                }
#pragma unroll
                for (int u = 0; u < PU; u++) {
#pragma unroll
                    for (int g = 0; g < G; g++) {
                        float p = j0 + u < n ? s_p[warp][j0 + u][g] : 0.0f;
#pragma unroll
                        for (int e = 0; e < EPL; e++)
                            acc[g][e] += p * v[u][e];
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
            for (int e = 0; e < EPL; e++)
                s_acc[warp][g][lane * EPL + e] = acc[g][e];
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < G * HD; idx += blockDim.x) {
        int g = idx / HD, d = idx % HD;
        float M = -INFINITY;
#pragma unroll
        for (int w = 0; w < ATT_WARPS; w++)
            M = fmaxf(M, s_m[w][g]);
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

/* The same contract on tensor cores (hd 64 / 128, group <= 8): the block
 * (4 warps) stages 64-key tiles of K and V^T in shared memory with 16-byte
 * loads; warp w scores keys [16w, 16w + 16) of each tile for the group's
 * query heads (rows 0..G-1 of a 16-row mma tile; the rest are zero) and
 * accumulates P.V (P split in bf16 hi + lo) with its own online softmax;
 * the four warps are merged at the end. */
template <int HD> __global__ void __launch_bounds__(128) attn_mma_kernel(struct kern_attn_args a)
{
    constexpr int KP = HD + 8, VP = PF_BN + 8, NK = HD / 16, ND = HD / 8;
    constexpr int TILE_BYTES = (PF_BN * KP + HD * VP) * 2;
    constexpr int COMB_BYTES = (4 * 8 * 2 + 4 * 8 * HD) * 4;
    __shared__ __align__(16) unsigned char smem[TILE_BYTES > COMB_BYTES ? TILE_BYTES : COMB_BYTES];
    uint16_t *sK = (uint16_t *)smem;
    uint16_t *sVt = sK + PF_BN * KP;

    const int t = a.tok_list ? a.tok_list[blockIdx.x] : blockIdx.x;
    const int kvh = blockIdx.y, split = blockIdx.z;
    const int G = a.nq / a.nkv, nkv = a.nkv, bs = a.block_size;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
    const int ctx = a.tok_ctx[t];
    const int n_splits = (ctx + a.partition - 1) / a.partition;
    if (split >= n_splits) return;
    const int begin = split * a.partition, end = min(ctx, begin + a.partition);
    const int32_t *bt = a.block_tables + (size_t)a.tok_seq[t] * a.bt_stride;

    uint32_t qf[NK][4];
    const uint32_t *qr =
        g < G ? (const uint32_t *)(a.q + (size_t)t * a.q_stride + (size_t)(kvh * G + g) * HD)
              : nullptr;
#pragma unroll
    for (int kk = 0; kk < NK; kk++) {
        int c = (kk * 16 + tq * 2) / 2;
        qf[kk][0] = qr ? qr[c] : 0u;
        qf[kk][1] = 0u;
        qf[kk][2] = qr ? qr[c + 4] : 0u;
        qf[kk][3] = 0u;
    }
    float o[ND][4];
#pragma unroll
    for (int n = 0; n < ND; n++)
        o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float m0 = -INFINITY, l0 = 0.0f;
    const float sl2 = a.scale * 1.4426950408889634f;

    for (int k0 = begin; k0 < end; k0 += PF_BN) {
        __syncthreads();
        for (int c = threadIdx.x; c < PF_BN * (HD / 8); c += blockDim.x) {
            int key = c / (HD / 8), ch = c % (HD / 8), kpos = k0 + key;
            uint4 kv = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0);
            if (kpos < end) {
                size_t off = (((size_t)bt[kpos / bs] * nkv + kvh) * bs + kpos % bs) * HD + ch * 8;
                kv = *(const uint4 *)(a.k_cache + off);
                vv = *(const uint4 *)(a.v_cache + off);
            }
            *(uint4 *)&sK[key * KP + ch * 8] = kv;
            const uint16_t *ve = (const uint16_t *)&vv;
#pragma unroll
            for (int i = 0; i < 8; i++)
                sVt[(ch * 8 + i) * VP + key] = ve[i];
        }
        __syncthreads();
        if (k0 + warp * 16 >= end) continue; /* this warp's keys are all beyond the context */
        float sc[2][4];
#pragma unroll
        for (int j = 0; j < 2; j++) {
            int nt = warp * 2 + j;
            sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = 0.0f;
            const uint16_t *kr = &sK[(nt * 8 + g) * KP + tq * 2];
#pragma unroll
            for (int kk = 0; kk < NK; kk++)
                mma_bf16_16816(sc[j], qf[kk], *(const uint32_t *)(kr + kk * 16),
                               *(const uint32_t *)(kr + kk * 16 + 8));
        }
        float mx = -INFINITY;
#pragma unroll
        for (int j = 0; j < 2; j++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                int kpos = k0 + (warp * 2 + j) * 8 + tq * 2 + e;
                sc[j][e] = kpos < end ? sc[j][e] * sl2 : -INFINITY;
                mx = fmaxf(mx, sc[j][e]);
            }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        float mn = fmaxf(m0, mx); /* finite: key k0 + 16 warp is in range */
        float cr = exp2f(m0 - mn);
        m0 = mn;
        l0 *= cr;
#pragma unroll
        for (int n = 0; n < ND; n++) {
            o[n][0] *= cr;
            o[n][1] *= cr;
        }
        float p[2][2];
#pragma unroll
        for (int j = 0; j < 2; j++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                p[j][e] = exp2f(sc[j][e] - m0);
                l0 += p[j][e];
            }
        uint32_t ph[4] = {0u, 0u, 0u, 0u}, pl[4] = {0u, 0u, 0u, 0u};
        split_bf16(p[0][0], p[0][1], &ph[0], &pl[0]);
        split_bf16(p[1][0], p[1][1], &ph[2], &pl[2]);
#pragma unroll
        for (int dn = 0; dn < ND; dn++) {
            const uint16_t *vr = &sVt[(dn * 8 + g) * VP + warp * 16 + tq * 2];
            uint32_t b0 = *(const uint32_t *)vr, b1 = *(const uint32_t *)(vr + 8);
            mma_bf16_16816(o[dn], ph, b0, b1);
            mma_bf16_16816(o[dn], pl, b0, b1);
        }
    }

    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    __syncthreads();            /* the tiles are dead: reuse their memory */
    float *c_m = (float *)smem; /* [4][8] */
    float *c_l = c_m + 4 * 8;   /* [4][8] */
    float *c_o = c_l + 4 * 8;   /* [4][8][HD] */
    if (g < G) {
        if (tq == 0) {
            c_m[warp * 8 + g] = m0;
            c_l[warp * 8 + g] = l0;
        }
#pragma unroll
        for (int dn = 0; dn < ND; dn++) {
            c_o[(warp * 8 + g) * HD + dn * 8 + tq * 2] = o[dn][0];
            c_o[(warp * 8 + g) * HD + dn * 8 + tq * 2 + 1] = o[dn][1];
        }
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < G * HD; idx += blockDim.x) {
        int gg = idx / HD, d = idx % HD;
        float M = -INFINITY;
#pragma unroll
        for (int w = 0; w < 4; w++)
            M = fmaxf(M, c_m[w * 8 + gg]);
        float L = 0.0f, A = 0.0f;
#pragma unroll
        for (int w = 0; w < 4; w++) {
            float mw = c_m[w * 8 + gg];
            float f = mw == -INFINITY ? 0.0f : exp2f(mw - M);
            L += c_l[w * 8 + gg] * f;
            A += c_o[(w * 8 + gg) * HD + d] * f;
        }
        int qh = kvh * G + gg;
        if (n_splits == 1) {
            a.out[(size_t)t * a.nq * HD + (size_t)qh * HD + d] = f2bf(A / L);
        } else {
            /* partial states in the natural-log domain, as the combine kernel expects */
            size_t pi = ((size_t)blockIdx.x * a.nq + qh) * a.max_splits + split;
            a.part_acc[pi * HD + d] = A;
            if (d == 0) {
                a.part_ml[pi * 2] = M * 0.6931471805599453f;
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
    for (int s = 0; s < n_splits; s++)
        M = fmaxf(M, a.part_ml[(p0 + s) * 2]);
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
    case 1:
        attn_kernel<HD, 1><<<grid, ATT_WARPS * 32, 0, st>>>(*a);
        break;
    case 2:
        attn_kernel<HD, 2><<<grid, ATT_WARPS * 32, 0, st>>>(*a);
        break;
    case 4:
        attn_kernel<HD, 4><<<grid, ATT_WARPS * 32, 0, st>>>(*a);
        break;
    case 8:
        attn_kernel<HD, 8><<<grid, ATT_WARPS * 32, 0, st>>>(*a);
        break;
    default:
        return cudaErrorInvalidValue;
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
    int G = a->nq / a->nkv;
    if (a->use_mma && G <= 8 && (a->hd == 64 || a->hd == 128)) {
        dim3 grid(n, a->nkv, a->max_splits);
        if (a->hd == 64)
            attn_mma_kernel<64><<<grid, 128, 0, stream>>>(*a);
        else
            attn_mma_kernel<128><<<grid, 128, 0, stream>>>(*a);
        e = cudaGetLastError();
    } else
        switch (a->hd) {
        case 16:
            e = launch_hd<16>(a, stream);
            break;
        case 32:
            e = launch_hd<32>(a, stream);
            break;
        case 64:
            e = launch_hd<64>(a, stream);
            break;
        case 128:
            e = launch_hd<128>(a, stream);
            break;
        case 256:
            e = launch_hd<256>(a, stream);
            break;
        default:
            return cudaErrorInvalidValue;
        }
    if (e != cudaSuccess || a->max_splits == 1) return e;
    attn_combine_kernel<<<dim3(n, a->nq), a->hd, 0, stream>>>(*a);
    return cudaGetLastError();
}
