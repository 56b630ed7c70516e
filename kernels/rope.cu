/*
 * rope.cu - per-head bias / q-k norm, rotary embedding (HF rotate_half
 * convention) and the paged KV-cache store, fused in one pass over the
 * fp32 QKV projection output (each stored value's bf16 rounding remainder
 * too, where --precision high asks for it). One block per token: its threads first
 * compute the token's cos / sin pairs into shared memory, then each warp
 * takes heads of the token in turn. Owns nothing.
 *
 * The rotation angle is the fp32 product position * inv_freq (as
 * transformers computes it), its sine and cosine taken in double so that
 * --use_fast_math cannot degrade them for large positions; once per token
 * and pair, shared by all the token's heads.
 */
#include "kernels.h"
#include "kern_util.cuh"

#define ROPE_WARPS 8
#define ROPE_MAX_PAIRS 4 /* hd <= 256 */

/* one (token, head): x1 / x2 hold pairs (i, i + hd/2) for i = lane + 32 p */
__device__ void rope_head(const struct kern_rope_args &a, int t, int h, int lane, const float *cs,
                          const float *sn)
{
    int nh = a.nq + 2 * a.nkv;
    int hd = a.hd, half = hd / 2;
    size_t row = (size_t)t * nh * hd;
    const float *x = a.qkv + row + (size_t)h * hd;
    const uint16_t *b = a.qkv_bias ? a.qkv_bias + (size_t)h * hd : nullptr;
    bool is_q = h < a.nq, is_k = !is_q && h < a.nq + a.nkv;
    const uint16_t *nw = is_q ? a.q_norm : (is_k ? a.k_norm : nullptr);

    float x1[ROPE_MAX_PAIRS], x2[ROPE_MAX_PAIRS];
#pragma unroll
    for (int p = 0; p < ROPE_MAX_PAIRS; p++) {
        int i = lane + 32 * p;
        x1[p] = x2[p] = 0.0f;
        if (i < half) {
            x1[p] = x[i];
            x2[p] = x[i + half];
            if (b) {
                x1[p] += bf2f(b[i]);
                x2[p] += bf2f(b[i + half]);
            }
        }
    }
    if (nw) {
        float ss = 0.0f;
#pragma unroll
        for (int p = 0; p < ROPE_MAX_PAIRS; p++)
            ss += x1[p] * x1[p] + x2[p] * x2[p];
        ss = warp_sum(ss);
        float inv = rsqrtf(ss / (float)hd + a.norm_eps);
#pragma unroll
        for (int p = 0; p < ROPE_MAX_PAIRS; p++) {
            int i = lane + 32 * p;
            if (i < half) {
                x1[p] = x1[p] * inv * bf2f(nw[i]);
                x2[p] = x2[p] * inv * bf2f(nw[i + half]);
            }
        }
    }
    if (is_q || is_k) {
#pragma unroll
        for (int p = 0; p < ROPE_MAX_PAIRS; p++) {
            int i = lane + 32 * p;
            if (i < half) {
                float cf = cs[i], sf = sn[i];
                float y1 = x1[p] * cf - x2[p] * sf;
                float y2 = x2[p] * cf + x1[p] * sf;
                x1[p] = y1;
                x2[p] = y2;
            }
        }
    }
    if (is_q) {
        size_t q_at = ((size_t)t * a.nq + h) * hd;
        uint16_t *q_lo = a.q_out_lo ? a.q_out_lo + q_at : nullptr;
#pragma unroll
        for (int p = 0; p < ROPE_MAX_PAIRS; p++) {
            int i = lane + 32 * p;
            if (i < half) {
                st_bf16_split(a.q_out + q_at, q_lo, i, x1[p]);
                st_bf16_split(a.q_out + q_at, q_lo, i + half, x2[p]);
            }
        }
        return;
    }
    int slot = a.slot_mapping[t];
    if (slot < 0) return;
    int kvh = is_k ? h - a.nq : h - a.nq - a.nkv;
    size_t blk = (size_t)(slot / a.block_size), off = (size_t)(slot % a.block_size);
    size_t at = ((blk * a.nkv + kvh) * a.block_size + off) * hd;
    uint16_t *dst = (is_k ? a.k_cache : a.v_cache) + at;
    uint16_t *lo = is_k ? a.k_cache_lo : a.v_cache_lo;
    if (lo) lo += at;
#pragma unroll
    for (int p = 0; p < ROPE_MAX_PAIRS; p++) {
        int i = lane + 32 * p;
        if (i < half) {
            st_bf16_split(dst, lo, i, x1[p]);
            st_bf16_split(dst, lo, i + half, x2[p]);
        }
    }
}

__global__ void rope_kv_kernel(struct kern_rope_args a)
{
    __shared__ float cs[32 * ROPE_MAX_PAIRS], sn[32 * ROPE_MAX_PAIRS];
    int t = blockIdx.x;
    float pos = (float)a.positions[t];
    for (int i = threadIdx.x; i < a.hd / 2; i += blockDim.x) {
        float ang = pos * a.inv_freq[i];
        double s, c;
        sincos((double)ang, &s, &c);
        cs[i] = (float)c;
        sn[i] = (float)s;
    }
    __syncthreads();
    int nh = a.nq + 2 * a.nkv;
    for (int h = threadIdx.x >> 5; h < nh; h += ROPE_WARPS)
        rope_head(a, t, h, threadIdx.x & 31, cs, sn);
}

extern "C" cudaError_t kern_rope_kv_write(const struct kern_rope_args *a, cudaStream_t stream)
{
    if (a->T <= 0) return cudaSuccess;
    if (a->hd > 2 * 32 * ROPE_MAX_PAIRS || (a->hd & 1)) return cudaErrorInvalidValue;
    rope_kv_kernel<<<a->T, ROPE_WARPS * 32, 0, stream>>>(*a);
    return cudaGetLastError();
}
