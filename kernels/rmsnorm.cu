/*
 * rmsnorm.cu - fused residual-add + RMSNorm. The residual stream stays in
 * fp32 for the whole forward; the normalised output is bf16, ready for
 * the next GEMM. Owns nothing.
 */
#include "kernels.h"
#include "kern_util.cuh"

#define RMS_THREADS 256

__global__ void add_rmsnorm_kernel(float *__restrict__ resid, const uint16_t *__restrict__ add,
                                   const uint16_t *__restrict__ w, float eps,
                                   const int32_t *__restrict__ rows, int H,
                                   uint16_t *__restrict__ out, uint16_t *__restrict__ out_lo)
{
    __shared__ float scratch[32];
    int i = blockIdx.x;
    int r = rows ? rows[i] : i;
    float *x = resid + (size_t)r * H;
    const uint16_t *a = add ? add + (size_t)r * H : nullptr;
    bool store = a && !rows;
    float ss = 0.0f;
    for (int j = threadIdx.x; j < H; j += blockDim.x) {
        float v = x[j];
        if (a) v += bf2f(a[j]);
        if (store) x[j] = v;
        ss += v * v;
    }
    ss = block_sum(ss, scratch);
    float inv = rsqrtf(ss / (float)H + eps);
    uint16_t *o = out + (size_t)i * H;
    uint16_t *o_lo = out_lo ? out_lo + (size_t)i * H : nullptr;
    for (int j = threadIdx.x; j < H; j += blockDim.x) {
        float v = x[j];
        if (a && !store) v += bf2f(a[j]);
        st_bf16_split(o, o_lo, j, v * inv * bf2f(w[j]));
    }
}

/* The common case: H a multiple of 4 * RMS_THREADS and at most 8192; the
 * row stays in registers between the two passes, loads are 16 bytes. */
#define RMS_MAX_VEC 8
__global__ void __launch_bounds__(RMS_THREADS)
    add_rmsnorm_vec_kernel(float *__restrict__ resid, const uint16_t *__restrict__ add,
                           const uint16_t *__restrict__ w, float eps,
                           const int32_t *__restrict__ rows, int H, uint16_t *__restrict__ out,
                           uint16_t *__restrict__ out_lo)
{
    __shared__ float scratch[32];
    int i = blockIdx.x;
    int r = rows ? rows[i] : i;
    float *x = resid + (size_t)r * H;
    const uint16_t *a = add ? add + (size_t)r * H : nullptr;
    bool store = a && !rows;
    int nv = H / (4 * RMS_THREADS);
    float4 v[RMS_MAX_VEC];
    float ss = 0.0f;
#pragma unroll
    for (int k = 0; k < RMS_MAX_VEC; k++) {
        if (k >= nv) break;
        int j = (k * RMS_THREADS + threadIdx.x) * 4;
        v[k] = *(const float4 *)(x + j);
        if (a) {
            uint2 b = *(const uint2 *)(a + j);
            const uint16_t *e = (const uint16_t *)&b;
            v[k].x += bf2f(e[0]);
            v[k].y += bf2f(e[1]);
            v[k].z += bf2f(e[2]);
            v[k].w += bf2f(e[3]);
            if (store) *(float4 *)(x + j) = v[k];
        }
        ss += v[k].x * v[k].x + v[k].y * v[k].y + v[k].z * v[k].z + v[k].w * v[k].w;
    }
    ss = block_sum(ss, scratch);
    float inv = rsqrtf(ss / (float)H + eps);
    uint16_t *o = out + (size_t)i * H;
#pragma unroll
    for (int k = 0; k < RMS_MAX_VEC; k++) {
        if (k >= nv) break;
        int j = (k * RMS_THREADS + threadIdx.x) * 4;
        uint2 wb = *(const uint2 *)(w + j);
        const uint16_t *we = (const uint16_t *)&wb;
        uint2 ob;
        uint16_t *oe = (uint16_t *)&ob;
        float y[4] = {v[k].x * inv * bf2f(we[0]), v[k].y * inv * bf2f(we[1]),
                      v[k].z * inv * bf2f(we[2]), v[k].w * inv * bf2f(we[3])};
        if (out_lo) {
            uint2 lb;
            uint16_t *le = (uint16_t *)&lb;
#pragma unroll
            for (int e = 0; e < 4; e++)
                st_bf16_split(oe, le, e, y[e]);
            *(uint2 *)(out_lo + (size_t)i * H + j) = lb;
        } else {
#pragma unroll
            for (int e = 0; e < 4; e++)
                oe[e] = f2bf(y[e]);
        }
        *(uint2 *)(o + j) = ob;
    }
}

extern "C" cudaError_t kern_add_rmsnorm(float *resid, const uint16_t *add, const uint16_t *w,
                                        float eps, const int32_t *rows, int n, int H, uint16_t *out,
                                        uint16_t *out_lo, cudaStream_t stream)
{
    if (n <= 0) return cudaSuccess;
    if (H % (4 * RMS_THREADS) == 0 && H <= 4 * RMS_THREADS * RMS_MAX_VEC)
        add_rmsnorm_vec_kernel<<<n, RMS_THREADS, 0, stream>>>(resid, add, w, eps, rows, H, out,
                                                              out_lo);
    else
        add_rmsnorm_kernel<<<n, RMS_THREADS, 0, stream>>>(resid, add, w, eps, rows, H, out, out_lo);
    return cudaGetLastError();
}
