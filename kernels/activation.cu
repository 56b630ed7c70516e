/*
 * activation.cu - SiLU(gate) x up for the MLP. Owns nothing.
 */
#include "kernels.h"
#include "kern_util.cuh"

__global__ void silu_mul_kernel(const float *__restrict__ gu, int I, uint16_t *__restrict__ out)
{
    int t = blockIdx.y;
    const float *g = gu + (size_t)t * 2 * I;
    const float *u = g + I;
    uint16_t *o = out + (size_t)t * I;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < I; i += gridDim.x * blockDim.x) {
        float x = g[i];
        float s = x / (1.0f + __expf(-x));
        o[i] = f2bf(s * u[i]);
    }
}

extern "C" cudaError_t kern_silu_mul(const float *gu, int T, int I, uint16_t *out,
                                     cudaStream_t stream)
{
    if (T <= 0) return cudaSuccess;
    int bx = (I + 255) / 256;
    if (bx > 64) bx = 64;
    silu_mul_kernel<<<dim3(bx, T), 256, 0, stream>>>(gu, I, out);
    return cudaGetLastError();
}
