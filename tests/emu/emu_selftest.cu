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
 * shared memory starts as garbage (0xff bytes) in every block, template
 * kernels' included; and the warp-level instructions: mma.sync m16n8k16
 * from inline asm (rewritten by cu_to_cpp.py) against a host matrix
 * product, its refusal in a warp with exited lanes, ex2.approx's special
 * values and bound, __byte_perm.
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

/* A template kernel's statics escape the shared section: garbage anyway. */
template <int N> __global__ void shared_template_kernel(int *garbage)
{
    __shared__ int v[N];
    if (threadIdx.x == 0) garbage[blockIdx.x] = v[N - 1];
    __syncthreads();
    v[threadIdx.x % N] = 7;
}

static void test_shared_template(void)
{
    int garbage[3] = {0, 0, 0};
    shared_template_kernel<8><<<3, 32>>>(garbage);
    CHECK(cudaGetLastError() == cudaSuccess);
    CHECK(garbage[0] == -1 && garbage[1] == -1 && garbage[2] == -1);
}

/* ---- warp-level instructions ---- */

/* D = A B + C on one tile: each lane loads its fragments by the PTX ISA's
 * tables for m16n8k16 .bf16 (g = lane / 4, t = lane % 4).
 * A bf16 [16][16], B bf16 [16][8] row-major; C, D fp32 [16][8]. */
__global__ void mma_kernel(const uint16_t *A, const uint16_t *B, const float *C, float *D)
{
    int lane = threadIdx.x & 31, g = lane / 4, t = lane % 4;
    uint32_t a[4], b[2];
    float c[4];
    for (int i = 0; i < 4; i++) { /* a_i: rows g / g + 8, cols 2t / 2t + 8, pairs */
        int row = g + 8 * (i & 1), col = 2 * t + 8 * (i >> 1);
        a[i] = A[row * 16 + col] | (uint32_t)A[row * 16 + col + 1] << 16;
    }
    for (int i = 0; i < 2; i++) { /* b_i: rows k 2t / 2t + 8, pairs; col g */
        int k = 2 * t + 8 * i;
        b[i] = B[k * 8 + g] | (uint32_t)B[(k + 1) * 8 + g] << 16;
    }
    for (int i = 0; i < 4; i++) /* c_i: rows g / g + 8, cols 2t, 2t + 1 */
        c[i] = C[(g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1)];
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    for (int i = 0; i < 4; i++)
        D[(g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1)] = c[i];
}

/* the same with half of each warp gone */
__global__ void mma_exited_kernel(const uint16_t *A, const uint16_t *B, const float *C, float *D)
{
    if ((threadIdx.x & 31) >= 16) return;
    mma_kernel(A, B, C, D);
}

static uint16_t bf16_bits(float f) /* f has at most 8 significant bits */
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return (uint16_t)(u >> 16);
}

static void test_mma(void)
{
    static uint16_t A[16 * 16], B[16 * 8];
    static float Af[16 * 16], Bf[16 * 8], C[16 * 8], D[16 * 8];
    for (int i = 0; i < 16 * 16; i++)
        A[i] = bf16_bits(Af[i] = (float)((i * 37) % 29 - 14) / 16.0f);
    for (int i = 0; i < 16 * 8; i++) {
        B[i] = bf16_bits(Bf[i] = (float)((i * 11) % 23 - 11) / 8.0f);
        C[i] = (float)(i % 9) * 0.375f - 1.0f;
    }
    mma_kernel<<<2, 64>>>(A, B, C, D); /* every warp computes the same tile */
    CHECK(cudaGetLastError() == cudaSuccess);
    int bad = 0; /* small exact values: the product is exact */
    for (int r = 0; r < 16; r++)
        for (int n = 0; n < 8; n++) {
            double want = C[r * 8 + n];
            for (int k = 0; k < 16; k++)
                want += (double)Af[r * 16 + k] * Bf[k * 8 + n];
            bad += D[r * 8 + n] != (float)want;
        }
    CHECK(bad == 0);
    mma_exited_kernel<<<1, 32>>>(A, B, C, D);
    CHECK_LAUNCH_FAILS(cudaErrorLaunchFailure, "not all live");
}

__global__ void ex2_kernel(const float *in, float *out)
{
    float x = in[threadIdx.x], y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    out[threadIdx.x] = y;
}

static void test_ex2(void)
{
    float in[5] = {0.0f, 3.0f, -130.0f, 1e-40f, -INFINITY}, out[5];
    ex2_kernel<<<1, 5>>>(in, out);
    CHECK(cudaGetLastError() == cudaSuccess);
    CHECK(out[0] == 1.0f);
    CHECK(fabsf(out[1] - 8.0f) <= 2.0f * 8.0f * FLT_EPSILON / 2.0f); /* 2 ulp */
    CHECK(out[2] == 0.0f);                                           /* result flushed */
    CHECK(out[3] == 1.0f);                                           /* input flushed */
    CHECK(out[4] == 0.0f);
}

__global__ void byte_perm_kernel(unsigned *out, unsigned selector)
{
    out[0] = __byte_perm(0x33221100u, 0x77665544u, 0x5410);
    out[1] = __byte_perm(0x33221100u, 0x77665544u, 0x7632);
    out[2] = __byte_perm(0x33221100u, 0x77665544u, selector);
}

static void test_byte_perm(void)
{
    unsigned out[3];
    byte_perm_kernel<<<1, 1>>>(out, 0x0123);
    CHECK(cudaGetLastError() == cudaSuccess);
    CHECK(out[0] == 0x55441100u && out[1] == 0x77663322u && out[2] == 0x00112233u);
    byte_perm_kernel<<<1, 1>>>(out, 0x8000); /* prmt's sign replication */
    CHECK_LAUNCH_FAILS(cudaErrorLaunchFailure, "not modeled");
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
    test_shared_template();
    test_early_exit();
    test_schedules();
    test_rounding();
    test_refusals();
    test_mma();
    test_ex2();
    test_byte_perm();
    return test_result("cuda_emu");
}
