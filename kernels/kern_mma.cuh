/*
 * kern_mma.cuh - tensor-core helpers shared by the attention kernels:
 * mma.sync m16n8k16 (bf16 in, fp32 accumulate) and bf16 packing.
 * Fragment layouts (g = lane / 4, t = lane % 4):
 *   A 16x16 row-major: a0 (g, 2t..2t+1), a1 (g+8, 2t..), a2 (g, 2t+8..), a3 (g+8, 2t+8..)
 *   B 16x8 col-major:  b0 (k 2t..2t+1, n g), b1 (k 2t+8.., n g)
 *   C 16x8:            c0,c1 (g, 2t..2t+1), c2,c3 (g+8, 2t..2t+1)
 * The lower column / k index sits in the low 16 bits of a packed pair.
 */
#ifndef ES_KERN_MMA_CUH
#define ES_KERN_MMA_CUH

#include "kern_util.cuh"

#define PF_BN 64 /* keys per shared-memory tile */

__device__ __forceinline__ void mma_bf16_16816(float c[4], const uint32_t a[4], uint32_t b0,
                                               uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi)
{
    return (uint32_t)f2bf(lo) | ((uint32_t)f2bf(hi) << 16);
}

/* hi = bf16(x), lo = bf16(x - hi), packed in pairs */
__device__ __forceinline__ void split_bf16(float a, float b, uint32_t *hi, uint32_t *lo)
{
    uint16_t ha = f2bf(a), hb = f2bf(b);
    *hi = (uint32_t)ha | ((uint32_t)hb << 16);
    *lo = pack_bf16(a - bf2f(ha), b - bf2f(hb));
}

#endif
