/*
 * attention.cu - paged causal attention over the bf16 KV cache, for decode
 * and prefill tokens alike (flash-decoding). Every implementation runs one
 * block of ATT_WARPS warps per (query token, kv head, split): it serves the
 * whole GQA group of query heads sharing that kv head, so each K/V row is
 * read once per group. Contexts longer than one partition are split over
 * gridDim.z and merged by attn_combine_kernel. Owns nothing.
 *
 * Variants (enum kern_attn_variant, chosen per call; all must agree with
 * the double-precision reference of test_gpu kernels):
 *   SIMT       attn_kernel: each warp streams 32-token tiles with an online
 *              softmax; lane j scores token j against the group's queries
 *              (shared memory), then P.V with lane-owned output dims.
 *   MMA_TILES  attn_mma_kernel: 64-key tiles of K and V^T staged in shared
 *              memory, scores and P.V on tensor cores.
 *   ROWS_SIMT, ROWS_MMA  attn_rows_kernel: warp-owned token ranges read
 *              with coalesced 16-byte row loads, the next stage loaded while
 *              the current one is computed; SIMT math or tensor cores fed
 *              straight from registers (see the section's comment).
 * kern_paged_attention_variant() says which one a call runs. Under
 * --precision high (k_cache_lo set) only SIMT and ROWS_SIMT run: they also
 * read q's, K's and V's bf16 remainders and add them before any product,
 * fp32 math throughout.
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

/* LO: q, K and V each come with their rounding remainder (q_lo,
 * k_cache_lo, v_cache_lo; --precision high), added before any product. */
template <int HD, int G, bool LO>
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

    size_t q_at = (size_t)t * a.q_stride + (size_t)kvh * G * HD;
    for (int i = threadIdx.x; i < G * HD; i += blockDim.x)
        (&s_q[0][0])[i] = (bf2f(a.q[q_at + i]) + (LO ? bf2f(a.q_lo[q_at + i]) : 0.0f)) * a.scale;
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
            const uint4 *kr_lo = LO ? (const uint4 *)(a.k_cache_lo + off) : nullptr;
            constexpr int KU = NV < 8 ? NV : 8; /* 16-byte K loads in flight per lane */
            uint4 kv[KU], kv_lo[LO ? KU : 1];
#pragma unroll
            for (int c0 = 0; c0 < NV; c0 += KU) {
#pragma unroll
                for (int c = 0; c < KU; c++) {
                    kv[c] = kr[c0 + c];
                    if constexpr (LO) kv_lo[c] = kr_lo[c0 + c];
                }
#pragma unroll
                for (int c = 0; c < KU; c++) {
                    const uint16_t *e = (const uint16_t *)&kv[c];
                    float k8[8];
#pragma unroll
                    for (int i = 0; i < 8; i++)
                        k8[i] = bf2f(e[i]);
                    if constexpr (LO) {
                        const uint16_t *el = (const uint16_t *)&kv_lo[c];
#pragma unroll
                        for (int i = 0; i < 8; i++)
                            k8[i] += bf2f(el[i]);
                    }
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
                    if (j0 + u < n) {
                        size_t at = s_off[warp][j0 + u] + lane * EPL;
                        load_bf16<EPL>(a.v_cache + at, v[u]);
                        if constexpr (LO) {
                            float r[EPL];
                            load_bf16<EPL>(a.v_cache_lo + at, r);
#pragma unroll
                            for (int e = 0; e < EPL; e++)
                                v[u][e] += r[e];
                        }
                    } else
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
            st_bf16_split(a.out, a.out_lo, (size_t)t * a.nq * HD + (size_t)qh * HD + d, A / L);
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
            st_bf16_split(a.out, a.out_lo, (size_t)t * a.nq * HD + (size_t)qh * HD + d, A / L);
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

/* ---- ROWS kernels: warp-owned token ranges, 16-byte row loads ----
 *
 * One block of ATT_WARPS warps per (query token, kv head, split), as above,
 * but each warp owns a contiguous range of the split (whole ROWS_CHUNK
 * chunks; the last warps may get none) and streams it in stages of W::ROWS
 * tokens. block_size % ROWS_CHUNK == 0 and partition % ROWS_CHUNK == 0, so a
 * stage never straddles a KV block: its rows are one contiguous run of the
 * cache. Every global load is 16 bytes and the lanes of a warp cover whole
 * rows. The next stage's K is loaded as soon as the current scores are
 * computed and its V as soon as P.V is done, so each warp keeps about a
 * stage of K and V in flight while it computes. Block-table entries come
 * from a window that the lanes hold (bt_window), not from dependent loads.
 * A warp's online softmax runs in the log2 domain; at the end the block
 * merges its warps' states in shared memory. The warp worker W is
 * rows_simt (SIMT math, group <= 4) or rows_mma (tensor cores fed straight
 * from the loaded registers, group <= 8).
 */

#define ROWS_CHUNK 16 /* tokens; warp ranges are whole chunks */
#define BT_WINDOW 32  /* block-table entries a warp holds, one per lane */
#define LOG2E_F 1.4426950408889634f
#define LN2_F 0.6931471805599453f

/* 2^x with ex2.approx (relative error ~2^-22); 2^-inf = 0 */
__device__ __forceinline__ float fast_exp2(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

/* the 8 bf16 of a 16-byte load, in memory order */
__device__ __forceinline__ void unpack8(uint4 w, float f[8])
{
    const uint32_t u[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        f[2 * i] = __uint_as_float(u[i] << 16);
        f[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
    }
}

__device__ __forceinline__ uint32_t word_of(uint4 w, int i)
{
    return i == 0 ? w.x : i == 1 ? w.y : i == 2 ? w.z : w.w;
}

/* The block-table entries of a warp's range, BT_WINDOW at a time: lane j
 * holds entry first + j, so a stage's block id costs a shuffle. */
struct bt_window {
    const int32_t *bt; /* the sequence's block table */
    int n_valid;       /* entries that cover tokens of the warp's range */
    int first;         /* entry held by lane 0 */
    int entry;         /* this lane's entry */
};

/* Element offset of the cache row of token tok (kv head kvh) in the layer.
 * tok never decreases between calls; warp-uniform (all lanes call). */
__device__ __forceinline__ size_t rows_offset(struct bt_window *w, int tok, int kvh, int nkv,
                                              int bs, int hd, int lane)
{
    int bi = tok / bs;
    if (bi >= w->first + BT_WINDOW) {
        w->first = bi;
        w->entry = bi + lane < w->n_valid ? w->bt[bi + lane] : 0;
    }
    int blk = __shfl_sync(0xffffffffu, w->entry, bi - w->first);
    return (((size_t)blk * nkv + kvh) * bs + tok % bs) * hd;
}

/* SIMT worker: lane group grp = lane / LPR reads rows grp, grp + RPI, ... of
 * each stage, lane col of the group dims [8 col, 8 col + 8). Scores are
 * reduced with shuffles inside the group; each group keeps its own online
 * softmax and P.V over its rows; store() merges the groups. With LO
 * (--precision high) it also reads q's, K's and V's bf16 remainders
 * (init_lo, load_k_lo, load_v_lo) and adds them before any product. */
template <int HD, int G, bool LO_> struct rows_simt_t {
    static constexpr bool LO = LO_;
    static constexpr int LPR = HD / 8;   /* lanes per row, 16 bytes each */
    static constexpr int RPI = 32 / LPR; /* rows per warp-wide load */
    static constexpr int U = 4;          /* loads per lane per stage, K and V each */
    static constexpr int ROWS = RPI * U; /* tokens per stage: 8 (hd 128), 16 (hd 64) */
    int grp, col;
    float q[G][8];    /* query dims of the lane, times scale * log2(e) */
    float m[G], l[G]; /* running max (log2 domain) and sum of the lane group */
    float acc[G][8];  /* unnormalised output, the lane's dims */
    float p[U][G];    /* the stage's scores, then probabilities (row u RPI + grp) */
    uint4 k[U], v[U]; /* the stage's rows u RPI + grp, the lane's dims */
    uint4 k_lo[LO ? U : 1], v_lo[LO ? U : 1]; /* their remainders (LO) */

    __device__ __forceinline__ void init(const uint16_t *qg, float scale, int lane)
    {
        grp = lane / LPR;
        col = lane % LPR;
#pragma unroll
        for (int g = 0; g < G; g++) {
            unpack8(*(const uint4 *)(qg + g * HD + col * 8), q[g]);
#pragma unroll
            for (int e = 0; e < 8; e++) {
                q[g][e] *= scale * LOG2E_F;
                acc[g][e] = 0.0f;
            }
            m[g] = -INFINITY;
            l[g] = 0.0f;
        }
    }

    /* rows: the stage's first cache row; rows >= n_valid read as zeros */
    __device__ __forceinline__ void load_rows(uint4 *dst, const uint16_t *rows, int n_valid)
    {
#pragma unroll
        for (int u = 0; u < U; u++) {
            int r = u * RPI + grp;
            dst[u] =
                r < n_valid ? *(const uint4 *)(rows + r * HD + col * 8) : make_uint4(0, 0, 0, 0);
        }
    }
    __device__ __forceinline__ void load_k(const uint16_t *rows, int n_valid)
    {
        load_rows(k, rows, n_valid);
    }
    __device__ __forceinline__ void load_v(const uint16_t *rows, int n_valid)
    {
        load_rows(v, rows, n_valid);
    }
    /* LO: q's remainder (after init), the rows' remainders (after each load) */
    __device__ __forceinline__ void init_lo(const uint16_t *qg_lo, float scale)
    {
#pragma unroll
        for (int g = 0; g < G; g++) {
            float r[8];
            unpack8(*(const uint4 *)(qg_lo + g * HD + col * 8), r);
#pragma unroll
            for (int e = 0; e < 8; e++)
                q[g][e] += r[e] * (scale * LOG2E_F);
        }
    }
    __device__ __forceinline__ void load_k_lo(const uint16_t *rows, int n_valid)
    {
        load_rows(k_lo, rows, n_valid);
    }
    __device__ __forceinline__ void load_v_lo(const uint16_t *rows, int n_valid)
    {
        load_rows(v_lo, rows, n_valid);
    }
    /* the 8 values of a loaded row, plus its remainder under LO */
    __device__ __forceinline__ void row_values(const uint4 &hi, const uint4 &lo, float f[8])
    {
        unpack8(hi, f);
        if constexpr (LO) {
            float r[8];
            unpack8(lo, r);
#pragma unroll
            for (int e = 0; e < 8; e++)
                f[e] += r[e];
        }
    }

    /* scores of the loaded K rows, online-softmax update: p = probabilities */
    __device__ __forceinline__ void scores(int n_valid)
    {
#pragma unroll
        for (int u = 0; u < U; u++) {
            float kf[8];
            row_values(k[u], k_lo[LO ? u : 0], kf);
#pragma unroll
            for (int g = 0; g < G; g++) {
                float s = 0.0f;
#pragma unroll
                for (int e = 0; e < 8; e++)
                    s = fmaf(q[g][e], kf[e], s);
                p[u][g] = s;
            }
        }
#pragma unroll
        for (int o = LPR / 2; o > 0; o >>= 1)
#pragma unroll
            for (int u = 0; u < U; u++)
#pragma unroll
                for (int g = 0; g < G; g++)
                    p[u][g] += __shfl_xor_sync(0xffffffffu, p[u][g], o);
#pragma unroll
        for (int g = 0; g < G; g++) {
            float mx = -INFINITY;
#pragma unroll
            for (int u = 0; u < U; u++) {
                if (u * RPI + grp >= n_valid) p[u][g] = -INFINITY;
                mx = fmaxf(mx, p[u][g]);
            }
            float mn = fmaxf(m[g], mx);
            /* -inf only while none of the group's rows was valid (l, acc 0) */
            float base = mn == -INFINITY ? 0.0f : mn;
            float c = fast_exp2(m[g] - base);
            m[g] = mn;
            l[g] *= c;
#pragma unroll
            for (int e = 0; e < 8; e++)
                acc[g][e] *= c;
#pragma unroll
            for (int u = 0; u < U; u++) {
                p[u][g] = fast_exp2(p[u][g] - base);
                l[g] += p[u][g];
            }
        }
    }

    /* acc += P.V over the loaded V rows */
    __device__ __forceinline__ void accumulate()
    {
#pragma unroll
        for (int u = 0; u < U; u++) {
            float vf[8];
            row_values(v[u], v_lo[LO ? u : 0], vf);
#pragma unroll
            for (int g = 0; g < G; g++)
#pragma unroll
                for (int e = 0; e < 8; e++)
                    acc[g][e] = fmaf(p[u][g], vf[e], acc[g][e]);
        }
    }

    /* merges the lane groups; the warp's state to cm, cl [G], co [G][HD] */
    __device__ __forceinline__ void store(float *cm, float *cl, float *co, int lane)
    {
#pragma unroll
        for (int o = LPR; o < 32; o <<= 1)
#pragma unroll
            for (int g = 0; g < G; g++) {
                float mo = __shfl_xor_sync(0xffffffffu, m[g], o);
                float lo = __shfl_xor_sync(0xffffffffu, l[g], o);
                float mn = fmaxf(m[g], mo), base = mn == -INFINITY ? 0.0f : mn;
                float f = fast_exp2(m[g] - base), fo = fast_exp2(mo - base);
                l[g] = l[g] * f + lo * fo;
#pragma unroll
                for (int e = 0; e < 8; e++)
                    acc[g][e] = acc[g][e] * f + __shfl_xor_sync(0xffffffffu, acc[g][e], o) * fo;
                m[g] = mn;
            }
        if (lane < LPR)
#pragma unroll
            for (int g = 0; g < G; g++) {
#pragma unroll
                for (int e = 0; e < 8; e++)
                    co[g * HD + lane * 8 + e] = acc[g][e];
                if (lane == 0) {
                    cm[g] = m[g];
                    cl[g] = l[g];
                }
            }
    }
};

template <int HD, int G> using rows_simt = rows_simt_t<HD, G, false>;
template <int HD, int G> using rows_simt_lo = rows_simt_t<HD, G, true>;

/* Tensor-core worker (mma.sync m16n8k16, fp32 accumulate), g = lane / 4,
 * t = lane % 4. Scores S = Q K^T: A = Q (row g = head g, rows >= G and g + 8
 * zero), B = K^T with lane (g, t) holding key 8j + g. The dot product does
 * not care about the order of dims, so each lane loads 16 contiguous bytes
 * of a key row (dims [32c + 8t, +8)) and uses them as the B words of k-steps
 * 2c (.x .y) and 2c + 1 (.z .w); its query words are taken the same way, so
 * A and B agree on the order. Output O^T = V^T P^T: A = V^T (rows = dims,
 * k = the stage's 16 keys), B = P^T, which is the scores' C fragment of lane
 * (g, t) as it stands (head g; keys 2t, 2t + 1 and 2t + 8, 2t + 9). Lane
 * (g, t) loads value rows 2t, 2t + 1, 2t + 8, 2t + 9, dims [64c + 8g, +8), and
 * pairs them with byte permutes into the A fragment of O^T tile 4c + i, whose
 * rows g / g + 8 are dims 64c + 8g + 2i / + 1. P is split in bf16 hi + lo. */
template <int HD, int G> struct rows_mma {
    static constexpr bool LO = false;  /* reads no remainders */
    static constexpr int ROWS = 16;    /* tokens per stage: one k-step of P.V */
    static constexpr int KC = HD / 32; /* 16-byte K loads per key row and lane */
    static constexpr int VC = HD / 64; /* 16-byte V loads per value row and lane */
    static constexpr int MT = HD / 16; /* 16-dim tiles of O^T */
    int g, t;
    float sl2;      /* scale * log2(e) */
    uint4 q[KC];    /* head g, dims [32c + 8t, +8); 0 for g >= G */
    uint4 k[2][KC]; /* key 8j + g, dims [32c + 8t, +8) */
    uint4 v[4][VC]; /* values of keys 2t, 2t + 1, 2t + 8, 2t + 9, dims [64c + 8g, +8) */
    float o[MT][4]; /* O^T tile 4c + i: (dim 64c + 8g + 2i, heads 2t, 2t + 1), then dim + 1 */
    float m, l;     /* head g: running max (log2 domain), this lane's part of the sum */
    uint32_t ph[2], pl[2]; /* the stage's P^T B fragment, bf16 hi and lo parts */

    __device__ __forceinline__ void init(const uint16_t *qg, float scale, int lane)
    {
        g = lane >> 2;
        t = lane & 3;
        sl2 = scale * LOG2E_F;
#pragma unroll
        for (int c = 0; c < KC; c++)
            q[c] = g < G ? *(const uint4 *)(qg + g * HD + 32 * c + 8 * t) : make_uint4(0, 0, 0, 0);
#pragma unroll
        for (int i = 0; i < MT; i++)
            o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
        m = -INFINITY;
        l = 0.0f;
    }

    /* rows: the stage's first cache row; keys >= n_valid read as zeros */
    __device__ __forceinline__ void load_k(const uint16_t *rows, int n_valid)
    {
#pragma unroll
        for (int j = 0; j < 2; j++)
#pragma unroll
            for (int c = 0; c < KC; c++) {
                int key = 8 * j + g;
                k[j][c] = key < n_valid ? *(const uint4 *)(rows + key * HD + 32 * c + 8 * t)
                                        : make_uint4(0, 0, 0, 0);
            }
    }
    __device__ __forceinline__ void load_v(const uint16_t *rows, int n_valid)
    {
#pragma unroll
        for (int r = 0; r < 4; r++)
#pragma unroll
            for (int c = 0; c < VC; c++) {
                int key = 2 * t + (r & 1) + (r >> 1) * 8;
                v[r][c] = key < n_valid ? *(const uint4 *)(rows + key * HD + 64 * c + 8 * g)
                                        : make_uint4(0, 0, 0, 0);
            }
    }

    /* scores of the loaded keys, online-softmax update, P^T fragment */
    __device__ __forceinline__ void scores(int n_valid)
    {
        float sc[2][4];
#pragma unroll
        for (int j = 0; j < 2; j++) {
            sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = 0.0f;
#pragma unroll
            for (int c = 0; c < KC; c++) {
                const uint32_t a0[4] = {q[c].x, 0u, q[c].y, 0u};
                const uint32_t a1[4] = {q[c].z, 0u, q[c].w, 0u};
                mma_bf16_16816(sc[j], a0, k[j][c].x, k[j][c].y);
                mma_bf16_16816(sc[j], a1, k[j][c].z, k[j][c].w);
            }
        }
        float mx = -INFINITY;
#pragma unroll
        for (int j = 0; j < 2; j++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                int key = 8 * j + 2 * t + e;
                sc[j][e] = key < n_valid ? sc[j][e] * sl2 : -INFINITY;
                mx = fmaxf(mx, sc[j][e]);
            }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        float mn = fmaxf(m, mx); /* finite: key 0 of a stage is always valid */
        float cr = fast_exp2(m - mn);
        m = mn;
        l *= cr;
        float pr[2][2];
#pragma unroll
        for (int j = 0; j < 2; j++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                pr[j][e] = fast_exp2(sc[j][e] - mn);
                l += pr[j][e];
            }
        split_bf16(pr[0][0], pr[0][1], &ph[0], &pl[0]);
        split_bf16(pr[1][0], pr[1][1], &ph[1], &pl[1]);
        /* O^T columns 2t, 2t + 1 are heads whose factors lanes 8t, 8t + 4 hold */
        float ca = __shfl_sync(0xffffffffu, cr, 8 * t);
        float cb = __shfl_sync(0xffffffffu, cr, 8 * t + 4);
#pragma unroll
        for (int i = 0; i < MT; i++) {
            o[i][0] *= ca;
            o[i][1] *= cb;
            o[i][2] *= ca;
            o[i][3] *= cb;
        }
    }

    /* O^T += V^T P^T over the loaded values */
    __device__ __forceinline__ void accumulate()
    {
#pragma unroll
        for (int c = 0; c < VC; c++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                uint32_t w0 = word_of(v[0][c], i), w1 = word_of(v[1][c], i);
                uint32_t w2 = word_of(v[2][c], i), w3 = word_of(v[3][c], i);
                /* low half = the lower key, as mma expects */
                const uint32_t a[4] = {__byte_perm(w0, w1, 0x5410), __byte_perm(w0, w1, 0x7632),
                                       __byte_perm(w2, w3, 0x5410), __byte_perm(w2, w3, 0x7632)};
                mma_bf16_16816(o[4 * c + i], a, ph[0], ph[1]);
                mma_bf16_16816(o[4 * c + i], a, pl[0], pl[1]);
            }
    }

    /* the warp's state to cm, cl [G], co [G][HD] */
    __device__ __forceinline__ void store(float *cm, float *cl, float *co, int lane)
    {
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        if (g < G && t == 0) {
            cm[g] = m;
            cl[g] = l;
        }
#pragma unroll
        for (int c = 0; c < VC; c++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                int d = 64 * c + 8 * g + 2 * i, h = 2 * t;
                if (h < G) {
                    co[h * HD + d] = o[4 * c + i][0];
                    co[h * HD + d + 1] = o[4 * c + i][2];
                }
                if (h + 1 < G) {
                    co[(h + 1) * HD + d] = o[4 * c + i][1];
                    co[(h + 1) * HD + d + 1] = o[4 * c + i][3];
                }
            }
    }
};

/* at least 3 blocks (12 warps) per SM: rows_mma at hd 128 would take 178
 * registers (2 blocks) unbounded; 168 costs it a few spilled words */
template <int HD, int G, template <int, int> class W>
__global__ void __launch_bounds__(ATT_WARPS * 32, 3) attn_rows_kernel(struct kern_attn_args a)
{
    typedef W<HD, G> worker;
    constexpr int R = worker::ROWS;
    static_assert(ROWS_CHUNK % R == 0, "a stage must not straddle a chunk");
    __shared__ __align__(16) float c_o[ATT_WARPS][G][HD]; /* each warp's unnormalised output */
    __shared__ float c_m[ATT_WARPS][G], c_l[ATT_WARPS][G];

    const int t = a.tok_list ? a.tok_list[blockIdx.x] : blockIdx.x;
    const int kvh = blockIdx.y, split = blockIdx.z;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int ctx = a.tok_ctx[t];
    const int n_splits = (ctx + a.partition - 1) / a.partition;
    if (split >= n_splits) return;
    const int begin = split * a.partition, end = min(ctx, begin + a.partition);
    const int chunks = ((end - begin + ROWS_CHUNK - 1) / ROWS_CHUNK + ATT_WARPS - 1) / ATT_WARPS;
    const int wbeg = begin + warp * chunks * ROWS_CHUNK; /* this warp's range [wbeg, wend) */
    const int wend = min(end, wbeg + chunks * ROWS_CHUNK);
    const int n_stages = wbeg < wend ? (wend - wbeg + R - 1) / R : 0;
    const int bs = a.block_size;
    struct bt_window win = {a.block_tables + (size_t)a.tok_seq[t] * a.bt_stride,
                            (wend + bs - 1) / bs, -BT_WINDOW, 0};

    worker w;
    const size_t q_at = (size_t)t * a.q_stride + (size_t)kvh * G * HD;
    w.init(a.q + q_at, a.scale, lane);
    if constexpr (worker::LO) w.init_lo(a.q_lo + q_at, a.scale);
    size_t off = 0;
    if (n_stages > 0) {
        off = rows_offset(&win, wbeg, kvh, a.nkv, bs, HD, lane);
        w.load_k(a.k_cache + off, wend - wbeg);
        w.load_v(a.v_cache + off, wend - wbeg);
        if constexpr (worker::LO) {
            w.load_k_lo(a.k_cache_lo + off, wend - wbeg);
            w.load_v_lo(a.v_cache_lo + off, wend - wbeg);
        }
    }
#pragma unroll 1
    for (int s = 0; s < n_stages; s++) {
        const int tok0 = wbeg + s * R;
        const bool more = s + 1 < n_stages;
        w.scores(wend - tok0);
        if (more) {
            off = rows_offset(&win, tok0 + R, kvh, a.nkv, bs, HD, lane);
            w.load_k(a.k_cache + off, wend - tok0 - R);
            if constexpr (worker::LO) w.load_k_lo(a.k_cache_lo + off, wend - tok0 - R);
        }
        w.accumulate();
        if (more) {
            w.load_v(a.v_cache + off, wend - tok0 - R);
            if constexpr (worker::LO) w.load_v_lo(a.v_cache_lo + off, wend - tok0 - R);
        }
    }
    w.store(c_m[warp], c_l[warp], &c_o[warp][0][0], lane);
    __syncthreads();

    /* merge the warps; warp 0's range is never empty, so M is finite */
    for (int idx = threadIdx.x; idx < G * HD; idx += blockDim.x) {
        int g = idx / HD, d = idx % HD;
        float M = -INFINITY;
#pragma unroll
        for (int x = 0; x < ATT_WARPS; x++)
            M = fmaxf(M, c_m[x][g]);
        float L = 0.0f, A = 0.0f;
#pragma unroll
        for (int x = 0; x < ATT_WARPS; x++) {
            float f = fast_exp2(c_m[x][g] - M); /* 0 for an empty warp */
            L += c_l[x][g] * f;
            A += c_o[x][g][d] * f;
        }
        int qh = kvh * G + g;
        if (n_splits == 1) {
            st_bf16_split(a.out, a.out_lo, (size_t)t * a.nq * HD + (size_t)qh * HD + d, A / L);
        } else {
            /* partial states in the natural-log domain, as the combine kernel expects */
            size_t pi = ((size_t)blockIdx.x * a.nq + qh) * a.max_splits + split;
            a.part_acc[pi * HD + d] = A;
            if (d == 0) {
                a.part_ml[pi * 2] = M * LN2_F;
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
    st_bf16_split(a.out, a.out_lo, (size_t)t * a.nq * a.hd + (size_t)qh * a.hd + d, A / L);
}

template <int HD, bool LO>
static cudaError_t launch_simt(const struct kern_attn_args *a, cudaStream_t st)
{
    dim3 grid(a->tok_list ? a->n_list : a->T, a->nkv, a->max_splits);
    switch (a->nq / a->nkv) {
    case 1:
        attn_kernel<HD, 1, LO><<<grid, ATT_WARPS * 32, 0, st>>>(*a);
        break;
    case 2:
        attn_kernel<HD, 2, LO><<<grid, ATT_WARPS * 32, 0, st>>>(*a);
        break;
    case 4:
        attn_kernel<HD, 4, LO><<<grid, ATT_WARPS * 32, 0, st>>>(*a);
        break;
    case 8:
        attn_kernel<HD, 8, LO><<<grid, ATT_WARPS * 32, 0, st>>>(*a);
        break;
    default:
        return cudaErrorInvalidValue;
    }
    return cudaGetLastError();
}

template <int HD> static cudaError_t launch_hd(const struct kern_attn_args *a, cudaStream_t st)
{
    return a->k_cache_lo ? launch_simt<HD, true>(a, st) : launch_simt<HD, false>(a, st);
}

/* the ROWS kernel for one head dim and worker; groups above MAXG are not
 * instantiated (kern_paged_attention_variant never sends them here) */
template <int HD, template <int, int> class W, int MAXG>
static cudaError_t launch_rows(const struct kern_attn_args *a, dim3 grid, cudaStream_t st)
{
    switch (a->nq / a->nkv) {
    case 1:
        attn_rows_kernel<HD, 1, W><<<grid, ATT_WARPS * 32, 0, st>>>(*a);
        break;
    case 2:
        attn_rows_kernel<HD, 2, W><<<grid, ATT_WARPS * 32, 0, st>>>(*a);
        break;
    case 4:
        attn_rows_kernel<HD, 4, W><<<grid, ATT_WARPS * 32, 0, st>>>(*a);
        break;
    case 8:
        if constexpr (MAXG >= 8) {
            attn_rows_kernel<HD, 8, W><<<grid, ATT_WARPS * 32, 0, st>>>(*a);
            break;
        }
        return cudaErrorInvalidValue;
    default:
        return cudaErrorInvalidValue;
    }
    return cudaGetLastError();
}

/* The ROWS kernels need 16-byte aligned rows and query heads, and stages
 * that never straddle a KV block or a split. */
static bool rows_shape_ok(const struct kern_attn_args *a)
{
    return (a->hd == 64 || a->hd == 128) && a->block_size % ROWS_CHUNK == 0 &&
           a->partition % ROWS_CHUNK == 0 && a->q_stride % 8 == 0;
}

extern "C" enum kern_attn_variant kern_paged_attention_variant(const struct kern_attn_args *a)
{
    int G = a->nkv > 0 ? a->nq / a->nkv : 0;
    int v = a->variant;
    /* AUTO: the kernel measured fastest (test_gpu attn-bench on an H200,
     * 2026-12-05, batch 64-256, contexts 512-4096): ROWS_MMA at 70-77% of
     * the memory bandwidth with 4 query heads per KV head, where SIMT
     * reaches 50-54%; with 2 or fewer ROWS_SIMT (82% against ROWS_MMA's
     * 68%), whose lanes then waste less work than the 16-row MMA tiles */
    /* the remainders: the SIMT kernels alone read them (ROWS_SIMT where it
     * covers the shape: its 16-byte row loads go faster) */
    if (a->k_cache_lo) return G <= 4 && rows_shape_ok(a) ? KERN_ATTN_ROWS_SIMT : KERN_ATTN_SIMT;
    if (v == KERN_ATTN_AUTO)
        v = a->use_mma ? KERN_ATTN_MMA_TILES : G <= 2 ? KERN_ATTN_ROWS_SIMT : KERN_ATTN_ROWS_MMA;
    switch (v) {
    case KERN_ATTN_MMA_TILES:
        return G <= 8 && (a->hd == 64 || a->hd == 128) ? KERN_ATTN_MMA_TILES : KERN_ATTN_SIMT;
    case KERN_ATTN_ROWS_SIMT:
        return G <= 4 && rows_shape_ok(a) ? KERN_ATTN_ROWS_SIMT : KERN_ATTN_SIMT;
    case KERN_ATTN_ROWS_MMA:
        return G <= 8 && rows_shape_ok(a) ? KERN_ATTN_ROWS_MMA : KERN_ATTN_SIMT;
    default:
        return KERN_ATTN_SIMT;
    }
}

extern "C" cudaError_t kern_paged_attention(const struct kern_attn_args *a, cudaStream_t stream)
{
    int n = a->tok_list ? a->n_list : a->T;
    if (n <= 0) return cudaSuccess;
    if (a->nkv <= 0 || a->nq % a->nkv || a->max_splits < 1 || a->partition < 1)
        return cudaErrorInvalidValue;
    cudaError_t e;
    dim3 grid(n, a->nkv, a->max_splits);
    switch (kern_paged_attention_variant(a)) {
    case KERN_ATTN_MMA_TILES:
        if (a->hd == 64)
            attn_mma_kernel<64><<<grid, 128, 0, stream>>>(*a);
        else
            attn_mma_kernel<128><<<grid, 128, 0, stream>>>(*a);
        e = cudaGetLastError();
        break;
    case KERN_ATTN_ROWS_SIMT:
        if (a->k_cache_lo)
            e = a->hd == 64 ? launch_rows<64, rows_simt_lo, 4>(a, grid, stream)
                            : launch_rows<128, rows_simt_lo, 4>(a, grid, stream);
        else
            e = a->hd == 64 ? launch_rows<64, rows_simt, 4>(a, grid, stream)
                            : launch_rows<128, rows_simt, 4>(a, grid, stream);
        break;
    case KERN_ATTN_ROWS_MMA:
        e = a->hd == 64 ? launch_rows<64, rows_mma, 8>(a, grid, stream)
                        : launch_rows<128, rows_mma, 8>(a, grid, stream);
        break;
    default:
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
    }
    if (e != cudaSuccess || a->max_splits == 1) return e;
    attn_combine_kernel<<<dim3(n, a->nq), a->hd, 0, stream>>>(*a);
    return cudaGetLastError();
}
