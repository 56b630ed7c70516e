/*
 * embedding.cu - token embedding gather into the fp32 residual stream,
 * from a table that may hold only a slice of the vocabulary (tensor
 * parallelism: ids outside the slice embed as zeros, and the ranks'
 * all-reduce fills them in). Owns nothing; reads the bf16 table, writes
 * resid [T][H].
 */
#include "kernels.h"
#include "kern_util.cuh"

__global__ void embedding_kernel(const uint16_t *__restrict__ table,
                                 const int32_t *__restrict__ ids, int H, int vocab0, int vocab_n,
                                 float *__restrict__ resid)
{
    int t = blockIdx.x;
    int row = ids[t] - vocab0;
    float *dst = resid + (size_t)t * H;
    if (row < 0 || row >= vocab_n) {
        for (int i = threadIdx.x; i < H; i += blockDim.x)
            dst[i] = 0.0f;
        return;
    }
    const uint16_t *src = table + (size_t)row * H;
    if ((H & 7) == 0) {
        for (int i = threadIdx.x * 8; i < H; i += blockDim.x * 8) {
            uint4 v = *(const uint4 *)(src + i);
            const uint16_t *e = (const uint16_t *)&v;
            float4 a = make_float4(bf2f(e[0]), bf2f(e[1]), bf2f(e[2]), bf2f(e[3]));
            float4 b = make_float4(bf2f(e[4]), bf2f(e[5]), bf2f(e[6]), bf2f(e[7]));
            *(float4 *)(dst + i) = a;
            *(float4 *)(dst + i + 4) = b;
        }
    } else {
        for (int i = threadIdx.x; i < H; i += blockDim.x)
            dst[i] = bf2f(src[i]);
    }
}

extern "C" cudaError_t kern_embedding(const uint16_t *table, const int32_t *ids, int T, int H,
                                      int vocab0, int vocab_n, float *resid, cudaStream_t stream)
{
    if (T <= 0) return cudaSuccess;
    embedding_kernel<<<T, 256, 0, stream>>>(table, ids, H, vocab0, vocab_n, resid);
    return cudaGetLastError();
}
