/*
 * test_gpu.h - what the files of the test_gpu program share: test_gpu.c
 * (the modes, the kernel and model checks, the decode benchmark),
 * test_gpu_sample.c (the GPU sampler check) and test_gpu_attn_bench.c (the
 * decode attention benchmark). test_gpu.c owns the one random stream, so
 * a mode's cases draw the same numbers whichever file they live in. Test
 * code: a failed CUDA call ends the program (CK).
 */
#ifndef ES_TEST_GPU_H
#define ES_TEST_GPU_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <cuda_runtime.h>

#include "kernels.h"
#include "safetensors.h"

#define CK(call)                                                                                   \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess) {                                                                   \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
            exit(2);                                                                               \
        }                                                                                          \
    } while (0)

/* The program's random stream (an LCG from a fixed seed): 31 bits. */
uint32_t tg_rnd(void);
/* Uniform in [-1, 1) from tg_rnd. */
float tg_rndf(void);
/* CLOCK_MONOTONIC in milliseconds. */
double tg_now_ms(void);
/* A device copy of `bytes` host bytes (cudaFree it). */
void *tg_dup_to_dev(const void *host, size_t bytes);

static inline uint16_t tg_f2bf(float f)
{
    return st_f32_to_bf16(f);
}
static inline float tg_bf2f(uint16_t v)
{
    return st_bf16_to_f32(v);
}

/* The name of an enum kern_attn_variant, for the reports. */
static inline const char *tg_attn_variant_name(int variant)
{
    static const char *const names[KERN_ATTN_N_VARIANTS] = {
        [KERN_ATTN_AUTO] = "auto",           [KERN_ATTN_SIMT] = "simt",
        [KERN_ATTN_MMA_TILES] = "mma-tiles", [KERN_ATTN_ROWS_SIMT] = "rows-simt",
        [KERN_ATTN_ROWS_MMA] = "rows-mma",
    };
    return names[variant];
}

/* test_gpu_sample.c: kern_sample against smp_row on random rows, then its
 * time per launch on a 128256 vocabulary. Returns the checks that failed
 * (testing.h's counter is per file: the caller adds them to its own). */
int tg_check_sampling(void);

/* test_gpu_attn_bench.c: the `attn-bench` mode; exit status 0 = pass. */
int tg_attn_bench(void);

#endif
