/*
 * prefill_attention.cu - causal attention for prefill chunks on tensor
 * cores (mma.sync m16n8k16, bf16 in, fp32 accumulate), flash-attention 2
 * style: one block of 4 warps per (64-query tile of one sequence, query
 * head); each warp owns 16 query rows, keeps its Q fragments and O
 * accumulators in registers and runs an online softmax over 64-key tiles
 * of the sequence's context, read from the paged bf16 cache (K row-major,
 * V transposed in shared memory so both operands load as 32-bit words).
 * Owns nothing.
 *
 * V^T rows hold PF_BN keys = 32 words, with the word columns XOR-swizzled
 * by row (vt_word): a warp's transposing stores (16-bit, one row per value
 * of the thread's 8-column chunk) then spread over the banks instead of
 * all landing in one, and the fragment loads of P.V stay conflict-free.
 */
#include <math.h>

#include "kernels.h"
#include "kern_util.cuh"
#include "kern_mma.cuh"

#define PF_BM 64 /* queries per tile (4 warps x 16 rows) */

/* word index of V^T row d (a head dimension), word column w (keys 2w, 2w + 1) */
__device__ __forceinline__ int vt_word(int d, int w)
{
    return d * (PF_BN / 2) + (w ^ (((d ^ (d >> 3)) & 7) << 2));
}

template <int HD>
__global__ void __launch_bounds__(128)
    prefill_attn_kernel(struct kern_attn_args a, const int32_t *__restrict__ tile_seq,
                        const int32_t *__restrict__ tile_q0, const int32_t *__restrict__ tile_qn)
{
    constexpr int KP = HD + 8;    /* padded K row, bf16 elements */
    constexpr int NK = HD / 16;   /* k-steps of Q.K^T */
    constexpr int ND = HD / 8;    /* n-tiles of O */
    constexpr int NT = PF_BN / 8; /* n-tiles of S */
    __shared__ __align__(16) uint16_t sK[PF_BN * KP];
    __shared__ __align__(16) uint16_t sVt[HD * PF_BN];
    static_assert(PF_BN == 64, "vt_word swizzles rows of 32 words");

    const int tile = blockIdx.x, h = blockIdx.y;
    const int G = a.nq / a.nkv, kvh = h / G, nkv = a.nkv, bs = a.block_size;
    const int seq = tile_seq[tile], q0 = tile_q0[tile], qn = tile_qn[tile];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
    const int32_t *bt = a.block_tables + (size_t)seq * a.bt_stride;
    const int ctx_max = a.tok_ctx[q0 + qn - 1];
    const int r0 = warp * 16 + g, r1 = r0 + 8;
    const int ctx0 = r0 < qn ? a.tok_ctx[q0 + r0] : ctx_max;
    const int ctx1 = r1 < qn ? a.tok_ctx[q0 + r1] : ctx_max;

    uint32_t qf[NK][4];
    {
        const uint32_t *q_r0 =
            r0 < qn ? (const uint32_t *)(a.q + (size_t)(q0 + r0) * a.q_stride + (size_t)h * HD)
                    : nullptr;
        const uint32_t *q_r1 =
            r1 < qn ? (const uint32_t *)(a.q + (size_t)(q0 + r1) * a.q_stride + (size_t)h * HD)
                    : nullptr;
#pragma unroll
        for (int kk = 0; kk < NK; kk++) {
            int c = (kk * 16 + tq * 2) / 2;
            qf[kk][0] = q_r0 ? q_r0[c] : 0u;
            qf[kk][1] = q_r1 ? q_r1[c] : 0u;
            qf[kk][2] = q_r0 ? q_r0[c + 4] : 0u;
            qf[kk][3] = q_r1 ? q_r1[c + 4] : 0u;
        }
    }
    float o[ND][4];
#pragma unroll
    for (int n = 0; n < ND; n++)
        o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;
    const float sl2 = a.scale * 1.4426950408889634f; /* scores in the log2 domain */

    for (int k0 = 0; k0 < ctx_max; k0 += PF_BN) {
        __syncthreads(); /* the previous tile is consumed */
        for (int c = threadIdx.x; c < PF_BN * (HD / 8); c += blockDim.x) {
            int key = c / (HD / 8), ch = c % (HD / 8), kpos = k0 + key;
            uint4 kv = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0);
            if (kpos < ctx_max) {
                size_t off = (((size_t)bt[kpos / bs] * nkv + kvh) * bs + kpos % bs) * HD + ch * 8;
                kv = *(const uint4 *)(a.k_cache + off);
                vv = *(const uint4 *)(a.v_cache + off);
            }
            *(uint4 *)&sK[key * KP + ch * 8] = kv;
            const uint16_t *ve = (const uint16_t *)&vv;
#pragma unroll
            for (int i = 0; i < 8; i++)
                sVt[vt_word(ch * 8 + i, key >> 1) * 2 + (key & 1)] = ve[i];
        }
        __syncthreads();

        float s[NT][4];
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
            const uint16_t *kr = &sK[(nt * 8 + g) * KP + tq * 2];
#pragma unroll
            for (int kk = 0; kk < NK; kk++)
                mma_bf16_16816(s[nt], qf[kk], *(const uint32_t *)(kr + kk * 16),
                               *(const uint32_t *)(kr + kk * 16 + 8));
        }
        float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
#pragma unroll
            for (int j = 0; j < 2; j++) {
                int kpos = k0 + nt * 8 + tq * 2 + j;
                s[nt][j] = kpos < ctx0 ? s[nt][j] * sl2 : -INFINITY;
                s[nt][2 + j] = kpos < ctx1 ? s[nt][2 + j] * sl2 : -INFINITY;
                mx0 = fmaxf(mx0, s[nt][j]);
                mx1 = fmaxf(mx1, s[nt][2 + j]);
            }
        }
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
        /* key 0 is visible to every row, so m is finite from the first tile on */
        float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
        float c0 = exp2f(m0 - mn0), c1 = exp2f(m1 - mn1);
        m0 = mn0;
        m1 = mn1;
        l0 *= c0;
        l1 *= c1;
#pragma unroll
        for (int n = 0; n < ND; n++) {
            o[n][0] *= c0;
            o[n][1] *= c0;
            o[n][2] *= c1;
            o[n][3] *= c1;
        }
        /* P in two bf16 parts (hi + lo) so that P.V keeps ~16 mantissa bits */
        uint32_t pf[PF_BN / 16][4], pl[PF_BN / 16][4];
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            float p0 = exp2f(s[nt][0] - m0), p1 = exp2f(s[nt][1] - m0);
            float p2 = exp2f(s[nt][2] - m1), p3 = exp2f(s[nt][3] - m1);
            l0 += p0 + p1;
            l1 += p2 + p3;
            split_bf16(p0, p1, &pf[nt / 2][(nt & 1) * 2 + 0], &pl[nt / 2][(nt & 1) * 2 + 0]);
            split_bf16(p2, p3, &pf[nt / 2][(nt & 1) * 2 + 1], &pl[nt / 2][(nt & 1) * 2 + 1]);
        }
#pragma unroll
        for (int dn = 0; dn < ND; dn++) {
            const uint32_t *vw = (const uint32_t *)sVt;
            const int d = dn * 8 + g;
#pragma unroll
            for (int kk = 0; kk < PF_BN / 16; kk++) {
                uint32_t b0 = vw[vt_word(d, kk * 8 + tq)];
                uint32_t b1 = vw[vt_word(d, kk * 8 + tq + 4)];
                mma_bf16_16816(o[dn], pf[kk], b0, b1);
                mma_bf16_16816(o[dn], pl[kk], b0, b1);
            }
        }
    }

    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    float i0 = 1.0f / l0, i1 = 1.0f / l1;
    size_t ostride = (size_t)a.nq * HD;
#pragma unroll
    for (int dn = 0; dn < ND; dn++) {
        int col = h * HD + dn * 8 + tq * 2;
        if (r0 < qn) {
            size_t at = (size_t)(q0 + r0) * ostride + col;
            st_bf16_split(a.out, a.out_lo, at, o[dn][0] * i0);
            st_bf16_split(a.out, a.out_lo, at + 1, o[dn][1] * i0);
        }
        if (r1 < qn) {
            size_t at = (size_t)(q0 + r1) * ostride + col;
            st_bf16_split(a.out, a.out_lo, at, o[dn][2] * i1);
            st_bf16_split(a.out, a.out_lo, at + 1, o[dn][3] * i1);
        }
    }
}

extern "C" cudaError_t kern_prefill_attention(const struct kern_attn_args *a,
                                              const int32_t *tile_seq, const int32_t *tile_q0,
                                              const int32_t *tile_qn, int n_tiles,
                                              cudaStream_t stream)
{
    if (n_tiles <= 0) return cudaSuccess;
    if (a->nkv <= 0 || a->nq % a->nkv) return cudaErrorInvalidValue;
    dim3 grid(n_tiles, a->nq);
    switch (a->hd) {
    case 64:
        prefill_attn_kernel<64><<<grid, 128, 0, stream>>>(*a, tile_seq, tile_q0, tile_qn);
        break;
    case 128:
        prefill_attn_kernel<128><<<grid, 128, 0, stream>>>(*a, tile_seq, tile_q0, tile_qn);
        break;
    default:
        return cudaErrorInvalidValue;
    }
    return cudaGetLastError();
}
