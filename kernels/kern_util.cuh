/*
 * kern_util.cuh - device helpers shared by the kernel files: bf16 bit
 * conversions, warp and block reductions. Header-only, device code only.
 */
#ifndef ES_KERN_UTIL_CUH
#define ES_KERN_UTIL_CUH

#include <cuda_bf16.h>
#include <stdint.h>

__device__ __forceinline__ float bf2f(uint16_t v)
{
    return __uint_as_float((uint32_t)v << 16);
}

/* round to nearest even, NaN kept quiet */
__device__ __forceinline__ uint16_t f2bf(float f)
{
    return __bfloat16_as_ushort(__float2bfloat16_rn(f));
}

/* v rounded to bf16 into hi[i] and, unless lo is NULL, what that rounding
 * lost into lo[i], itself rounded: hi + lo holds v to about 16 significant
 * bits (--precision high feeds both to the next matrix product). */
__device__ __forceinline__ void st_bf16_split(uint16_t *hi, uint16_t *lo, size_t i, float v)
{
    uint16_t h = f2bf(v);
    hi[i] = h;
    if (lo) lo[i] = f2bf(v - bf2f(h));
}

__device__ __forceinline__ float warp_sum(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Block-wide sum; every thread gets the result. scratch: >= 32 floats.
 * Callers must not reuse scratch before a __syncthreads after the call. */
__device__ __forceinline__ float block_sum(float v, float *scratch)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < nw ? scratch[lane] : 0.0f;
    return warp_sum(v);
}

__device__ __forceinline__ float block_max(float v, float *scratch)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < nw ? scratch[lane] : -INFINITY;
    return warp_max(v);
}

#endif
