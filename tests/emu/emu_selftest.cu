/*
 * emu_selftest.cu - tests of the CUDA emulation itself (cuda_emu.h), as a
 * .cu file with real <<<...>>> launches, converted by cu_to_cpp.py like
 * the kernels it runs: the built-in variables of 3-D grids, the warp
 * collectives lane by lane against their CUDA definitions, block barriers
 * around shared memory, atomics, per-thread copies of the arguments,
 * threads that return early, exact _rn arithmetic (no FMA contraction),
 * the same results under another fiber order (and a race showing);
 * and that what it cannot run faithfully fails the launch with a reason
 * instead of computing something: divergent barriers, deadlocks,
 * partial-warp masks, unsupported launch configurations. Also that
 * shared memory starts as garbage (0xff bytes) in every block.
 */
#include <cuda_runtime.h>

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "testing.h"

#define CHECK_LAUNCH_FAILS(code, words)                                                            \
    do {                                                                                           \
        cudaError_t e_ = cudaGetLastError();                                                       \
        CHECK(e_ == (code));                                                                       \
        CHECK(strstr(cuda_emu_last_failure(), (words)) != NULL);                                   \
        if (e_ != (code) || !strstr(cuda_emu_last_failure(), (words)))                             \
            fprintf(stderr, "  got %s: %s\n", cudaGetErrorString(e_), cuda_emu_last_failure());    \
    } while (0)

/* ---- built-in variables ---- */

__global__ void ids_kernel(unsigned *out)
{
    unsigned t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    unsigned b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    unsigned n = blockDim.x * blockDim.y * blockDim.z;
    out[b * n + t] = (b << 16) | t;
}

static void test_ids(void)
{
    dim3 grid(3, 2, 2), block(8, 4, 2);
    static unsigned out[12 * 64];
    memset(out, 0, sizeof out);
    ids_kernel<<<grid, block>>>(out);
    CHECK(cudaGetLastError() == cudaSuccess);
    int bad = 0;
    for (unsigned i = 0; i < 12 * 64; i++)
        bad += out[i] != (((i / 64) << 16) | (i % 64));
    CHECK(bad == 0);
}

/* ---- warp collectives: each lane's result ---- */

enum { N_COLL = 10 };

__global__ void collectives_kernel(int *out, int width)
{
    int lane = threadIdx.x & 31, t = threadIdx.x;
    int v = 100 * t + 7;
    int *o = out + t * N_COLL;
    o[0] = __shfl_sync(0xffffffffu, v, (lane * 5 + 3) & 31);
    o[1] = __shfl_xor_sync(0xffffffffu, v, 6, width);
    o[2] = __shfl_up_sync(0xffffffffu, v, 3, width);
    o[3] = __shfl_down_sync(0xffffffffu, v, 5, width);
    o[4] = (int)__ballot_sync(0xffffffffu, lane % 3 == 0);
    o[5] = __any_sync(0xffffffffu, t == 40);
    o[6] = __all_sync(0xffffffffu, lane < 31);
    o[7] = (int)__match_any_sync(0xffffffffu, lane / 4);
    int all_same;
    o[8] = (int)__match_all_sync(0xffffffffu, t / 32, &all_same) ^ all_same;
    double d = __shfl_xor_sync(0xffffffffu, 0.25 * t, 1); /* 8-byte values */
    o[9] = (int)(4.0 * d);
}

static int expect_collective(int k, int t, int width)
{
    int lane = t & 31, base = t - lane, seg = lane & ~(width - 1);
    int v = 100 * t + 7;
    switch (k) {
    case 0:
        return 100 * (base + ((lane * 5 + 3) & 31)) + 7;
    case 1:
        return (lane ^ 6) < seg + width ? 100 * (base + (lane ^ 6)) + 7 : v;
    case 2:
        return (lane & (width - 1)) >= 3 ? v - 300 : v;
    case 3:
        return (lane & (width - 1)) + 5 < width ? v + 500 : v;
    case 4:
        return (int)0x49249249u;
    case 5:
        return t >= 32 && t < 64;
    case 6:
        return 0;
    case 7:
        return (int)(0xfu << (lane / 4 * 4));
    case 8:
        return (int)0xffffffffu ^ 1;
    case 9:
        return t ^ 1;
    }
    return -1;
}

static void test_collectives(void)
{
    static const int widths[3] = {32, 16, 8};
    static int out[96 * N_COLL];
    for (int w = 0; w < 3; w++) {
        memset(out, 0, sizeof out);
        collectives_kernel<<<1, 96>>>(out, widths[w]);
        CHECK(cudaGetLastError() == cudaSuccess);
        int bad = 0;
        for (int t = 0; t < 96; t++)
            for (int k = 0; k < N_COLL; k++)
                if (out[t * N_COLL + k] != expect_collective(k, t, widths[w])) {
                    if (bad++ < 5)
                        fprintf(stderr, "  width %d thread %d collective %d: %d, expected %d\n",
                                widths[w], t, k, out[t * N_COLL + k],
                                expect_collective(k, t, widths[w]));
                }
        CHECK(bad == 0);
    }
}

/* ---- shared memory, barriers, atomics, argument copies ---- */

/* Block sum of t + k through shared memory; what shared memory held
 * before the block wrote it; an atomic count of the threads whose own
 * copy of k (changed by each) still starts from k_again. */
__global__ void shared_kernel(int *sums, int *garbage, int *count, int k, int k_again)
{
    __shared__ int part[256];
    __shared__ int hits;
    int t = threadIdx.x;
    if (t == 0) garbage[blockIdx.x] = part[5];
    __syncthreads();
    if (t == 0) hits = 0;
    part[t] = t + k;
    k += t; /* this thread's copy only */
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s) part[t] += part[t + s];
        __syncthreads();
    }
    atomicAdd(&hits, k == t + k_again ? 1 : 0);
    __syncthreads();
    if (t == 0) {
        sums[blockIdx.x] = part[0];
        atomicAdd(count, hits);
        part[5] = 12345; /* the next block must not see it */
    }
}

static void test_shared(void)
{
    int sums[4], garbage[4], count = 0;
    for (int b = 0; b < 4; b++) {
        shared_kernel<<<1, 256>>>(sums + b, garbage + b, &count, b, b);
        CHECK(cudaGetLastError() == cudaSuccess);
    }
    int bad = 0;
    for (int b = 0; b < 4; b++)
        bad += sums[b] != 255 * 256 / 2 + 256 * b || garbage[b] != -1;
    CHECK(bad == 0);
    CHECK(count == 4 * 256);
}

/* ---- threads that return early stop counting at barriers ---- */

__global__ void early_exit_kernel(int *out)
{
    __shared__ int v[64];
    int t = threadIdx.x;
    if (t >= 40) return; /* warp 1 keeps lanes 0..7 */
    v[t] = t;
    __syncthreads();
    int s = __shfl_xor_sync(__activemask(), v[39 - t], 1);
    out[t] = s + (int)__activemask();
}

static void test_early_exit(void)
{
    int out[40];
    early_exit_kernel<<<1, 64>>>(out);
    CHECK(cudaGetLastError() == cudaSuccess);
    int bad = 0;
    for (int t = 0; t < 40; t++) {
        unsigned live = t < 32 ? 0xffffffffu : 0xffu;
        bad += out[t] != 39 - (t ^ 1) + (int)live;
    }
    CHECK(bad == 0);
}

/* ---- schedules: same results without races, not with one ---- */

/* Reads a neighbour's shared slot with no barrier after the writes. */
__global__ void racy_kernel(int *out)
{
    __shared__ int v[64];
    int t = threadIdx.x;
    v[t] = t;
    out[t] = v[(t + 1) % 64];
}

static void test_schedules(void)
{
    int sums[2], garbage[2], count = 0, out[64];
    for (int i = 0; i < 2; i++) {
        cuda_emu_set_schedule(i ? 12345u : 0u);
        shared_kernel<<<1, 256>>>(sums + i, garbage + i, &count, 3, 3);
        CHECK(cudaGetLastError() == cudaSuccess);
    }
    CHECK(sums[0] == sums[1] && count == 2 * 256);
    int stale = 0; /* neighbours read before they wrote, over a few orders */
    for (unsigned seed = 0; seed < 4; seed++) {
        cuda_emu_set_schedule(seed);
        racy_kernel<<<1, 64>>>(out);
        CHECK(cudaGetLastError() == cudaSuccess);
        for (int t = 0; t < 64; t++)
            stale += out[t] != (t + 1) % 64;
    }
    CHECK(stale > 0);
    cuda_emu_set_schedule(0);
}

/* ---- _rn arithmetic is one rounding per operation ---- */

__global__ void rounding_kernel(const float *in, float *out)
{
    out[0] = __fadd_rn(__fmul_rn(in[0], in[1]), in[2]);
    out[1] = __fmaf_rn(in[0], in[1], in[2]);
}

static void test_rounding(void)
{
    /* a * b = 1 + 2^-11 + 2^-24 exactly: rounds to 1 + 2^-11 */
    float in[3] = {1.0f + 0x1p-12f, 1.0f + 0x1p-12f, -(1.0f + 0x1p-11f)}, out[2];
    rounding_kernel<<<1, 1>>>(in, out);
    CHECK(cudaGetLastError() == cudaSuccess);
    CHECK(out[0] == 0.0f);
    CHECK(out[1] == 0x1p-24f);
}

/* ---- what it must refuse ---- */

__global__ void divergent_barrier_kernel(int *out)
{
    if (threadIdx.x < 32) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    out[threadIdx.x] = 1;
}

__global__ void deadlock_kernel(int *out)
{
    if (threadIdx.x == 1)
        __syncwarp(); /* lane 1 waits for its warp, the warp for the block */
    else
        __syncthreads();
    out[threadIdx.x] = 1;
}

__global__ void partial_mask_kernel(int *out)
{
    out[threadIdx.x] = __shfl_sync(0xffffu, (int)threadIdx.x, 0);
}

__global__ void mixed_collectives_kernel(int *out)
{
    int lane = threadIdx.x & 31;
    out[threadIdx.x] =
        lane < 16 ? __shfl_sync(0xffffffffu, lane, 0) : (int)__ballot_sync(0xffffffffu, lane);
}

static void test_refusals(void)
{
    static int out[2048];
    divergent_barrier_kernel<<<2, 64>>>(out);
    CHECK_LAUNCH_FAILS(cudaErrorLaunchFailure, "__syncthreads at");
    deadlock_kernel<<<1, 64>>>(out);
    CHECK_LAUNCH_FAILS(cudaErrorLaunchFailure, "deadlock");
    partial_mask_kernel<<<1, 32>>>(out);
    CHECK_LAUNCH_FAILS(cudaErrorLaunchFailure, "partial-warp");
    mixed_collectives_kernel<<<1, 32>>>(out);
    CHECK_LAUNCH_FAILS(cudaErrorLaunchFailure, "while its warp waits");
    ids_kernel<<<1, 2048>>>((unsigned *)out);
    CHECK_LAUNCH_FAILS(cudaErrorInvalidConfiguration, "configuration");
    ids_kernel<<<1, 32, 1024>>>((unsigned *)out);
    CHECK_LAUNCH_FAILS(cudaErrorInvalidValue, "dynamic shared");
    CHECK(cudaGetLastError() == cudaSuccess); /* read once, then reset */
    test_ids();                               /* and the next launch runs normally */
}

int main(void)
{
    test_ids();
    test_collectives();
    test_shared();
    test_early_exit();
    test_schedules();
    test_rounding();
    test_refusals();
    return test_result("cuda_emu");
}
