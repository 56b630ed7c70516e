/*
 * activation.cu - SiLU(gate) x up for the MLP. Owns nothing.
 *
 * The gate/up GEMM writes fp32 rows [gate I | up I]; the kernel reads
 * them and writes bf16 [I] (and, for --precision high, the rounding
 * remainder as a second bf16 [I]), so it is bound by memory bandwidth. When I is
 * a multiple of 4 each thread moves 16-byte gate and up vectors and one
 * 8-byte output, over a grid-stride loop that covers the whole batch.
 */
#include "kernels.h"
#include "kern_util.cuh"

__device__ __forceinline__ float silu_times(float g, float u)
{
    return g / (1.0f + __expf(-g)) * u;
}

__global__ void silu_mul_vec4_kernel(const float *__restrict__ gu, int T, int I,
                                     uint16_t *__restrict__ out, uint16_t *__restrict__ out_lo)
{
    int per_row = I / 4;
    size_t n = (size_t)T * per_row;
    for (size_t v = (size_t)blockIdx.x * blockDim.x + threadIdx.x; v < n;
         v += (size_t)gridDim.x * blockDim.x) {
        size_t t = v / per_row, i = (v - t * per_row) * 4;
        const float *g = gu + t * 2 * I + i;
        float4 gv = *(const float4 *)g;
        float4 uv = *(const float4 *)(g + I);
        float y[4] = {silu_times(gv.x, uv.x), silu_times(gv.y, uv.y), silu_times(gv.z, uv.z),
                      silu_times(gv.w, uv.w)};
        ushort4 o, lo;
        st_bf16_split(&o.x, out_lo ? &lo.x : nullptr, 0, y[0]);
        st_bf16_split(&o.y, out_lo ? &lo.y : nullptr, 0, y[1]);
        st_bf16_split(&o.z, out_lo ? &lo.z : nullptr, 0, y[2]);
        st_bf16_split(&o.w, out_lo ? &lo.w : nullptr, 0, y[3]);
        *(ushort4 *)(out + t * I + i) = o;
        if (out_lo) *(ushort4 *)(out_lo + t * I + i) = lo;
    }
}

/* any I (a tensor-parallel shard of an MLP that does not split by 4) */
__global__ void silu_mul_kernel(const float *__restrict__ gu, int I, uint16_t *__restrict__ out,
                                uint16_t *__restrict__ out_lo)
{
    int t = blockIdx.y;
    const float *g = gu + (size_t)t * 2 * I;
    const float *u = g + I;
    uint16_t *o = out + (size_t)t * I;
    uint16_t *o_lo = out_lo ? out_lo + (size_t)t * I : nullptr;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < I; i += gridDim.x * blockDim.x)
        st_bf16_split(o, o_lo, i, silu_times(g[i], u[i]));
}

extern "C" cudaError_t kern_silu_mul(const float *gu, int T, int I, uint16_t *out, uint16_t *out_lo,
                                     cudaStream_t stream)
{
    if (T <= 0) return cudaSuccess;
    if (I % 4 == 0) {
        size_t n = (size_t)T * (I / 4);
        size_t blocks = (n + 255) / 256;
        /* enough blocks to fill every SM several times; the loop does the rest */
        if (blocks > 4096) blocks = 4096;
        silu_mul_vec4_kernel<<<(unsigned)blocks, 256, 0, stream>>>(gu, T, I, out, out_lo);
    } else {
        int bx = (I + 255) / 256;
        if (bx > 64) bx = 64;
        silu_mul_kernel<<<dim3(bx, T), 256, 0, stream>>>(gu, I, out, out_lo);
    }
    return cudaGetLastError();
}
