/*
 * cuda_bf16.h - stands in for the CUDA toolkit's header when a kernel file
 * is compiled for the emulator (tests/emu/ first on the include path): the
 * bf16 type and the conversions kernels/ uses, exact. Device side, C++
 * only.
 */
#ifndef CUDA_EMU_BF16_H
#define CUDA_EMU_BF16_H

#include "cuda_emu.h"

#ifdef __cplusplus

struct __nv_bfloat16 {
    unsigned short __x;
};

/* cvt.rn.bf16.f32: round to nearest even; NaN becomes the canonical 0x7fff */
inline __nv_bfloat16 __float2bfloat16_rn(float f)
{
    uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return {0x7fff};
    return {(unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
}

inline float __bfloat162float(__nv_bfloat16 h)
{
    return __uint_as_float((uint32_t)h.__x << 16);
}

inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h)
{
    return h.__x;
}

inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u)
{
    return {u};
}

#endif /* __cplusplus */

#endif
