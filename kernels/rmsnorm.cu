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
                                   uint16_t *__restrict__ out)
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
    for (int j = threadIdx.x; j < H; j += blockDim.x) {
        float v = x[j];
        if (a && !store) v += bf2f(a[j]);
        o[j] = f2bf(v * inv * bf2f(w[j]));
    }
}

extern "C" cudaError_t kern_add_rmsnorm(float *resid, const uint16_t *add, const uint16_t *w,
                                        float eps, const int32_t *rows, int n, int H,
                                        uint16_t *out, cudaStream_t stream)
{
    if (n <= 0) return cudaSuccess;
    add_rmsnorm_kernel<<<n, RMS_THREADS, 0, stream>>>(resid, add, w, eps, rows, H, out);
    return cudaGetLastError();
}
