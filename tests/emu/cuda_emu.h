/*
 * cuda_emu.h - a small emulation of the CUDA execution model on the CPU,
 * enough to compile an unmodified kernel file (.cu, turned into C++ by
 * cu_to_cpp.py, which rewrites only the <<<...>>> launches) with the host
 * C++ compiler and run it, one thread block at a time, on one OS thread.
 * It exists so that kernels whose results must equal a CPU reference bit
 * for bit (kernels/sampling.cu) are checked in CI, where there is no GPU.
 * It is NOT a GPU simulator: see "what it does not model" below.
 *
 * Reached through tests/emu/cuda_runtime.h, which stands in for the
 * toolkit's header (tests/emu/ must come first on the include path). The
 * first part (C and C++) is the runtime API subset the kernel files and
 * the tests use; the rest is C++ only (the device side).
 *
 * What it models
 *   - A launch runs its blocks one after another, synchronously, on the
 *     calling thread; the stream is ignored. Grid and block may be 3-D
 *     (threadIdx / blockIdx / blockDim / gridDim as in CUDA); threads are
 *     numbered x fastest, and warps are 32 consecutive thread numbers.
 *   - Each CUDA thread is a cooperative fiber with its own stack (x86-64:
 *     a hand-written register switch; elsewhere ucontext). A fiber runs
 *     until it reaches a barrier, then the next fiber runs: in thread
 *     order, or in a seeded random order (cuda_emu_set_schedule) to shake
 *     out races. No OS threads: nothing preempts a fiber between barriers.
 *   - __syncthreads is a block barrier; __syncwarp and every warp
 *     collective (__shfl*_sync, __ballot_sync, __any_sync, __all_sync,
 *     __match_any_sync, __match_all_sync, and __activemask) are warp
 *     barriers: all live lanes of the warp arrive before any lane reads a
 *     result, which is what the lanes posted and the lanes live at that
 *     moment, as if the warp ran in lockstep. All threads must reach the
 *     same barrier (same source line; for a warp, the same collective and
 *     mask): a mismatch, a barrier nobody can complete or a partial-warp
 *     mask fails the launch (cudaErrorLaunchFailure, the reason in
 *     cuda_emu_last_failure()) instead of hanging or guessing. A thread
 *     that returns stops counting towards barriers, as on the hardware.
 *   - __shared__ variables are one storage per block (static storage,
 *     blocks run one at a time), filled with 0xff bytes before every block
 *     so that reading shared memory before writing it shows as garbage
 *     (NaN, -1), as uninitialised shared memory would.
 *   - Atomics are plain read-modify-writes (fibers do not preempt).
 *   - The _rn float / double intrinsics are the host's IEEE operations in
 *     the default rounding mode; the file must be compiled with
 *     -ffp-contract=off (no FMA contraction) and FLT_EVAL_METHOD == 0 (no
 *     excess precision), which gives what nvcc's explicit _rn intrinsics
 *     give. Bit casts and the integer intrinsics (__clz, __ffs, __popc,
 *     ...) are exact.
 *
 * What it does NOT model
 *   - Memory ordering between threads outside barriers: fibers switch only
 *     at barriers and see each other's writes at once, so a missing
 *     __syncthreads / __syncwarp between a write and another thread's read
 *     shows only if the schedule happens to run the reader first (run
 *     under several schedules), and a data race is never reported as one.
 *     __threadfence* are no-ops.
 *   - Warp divergence and independent thread scheduling: lanes are never
 *     masked off; __activemask() returns every live lane; a collective
 *     with a mask that leaves out a live lane fails the launch, and one
 *     reached by only some lanes of a warp (divergent code) deadlocks,
 *     which fails the launch too.
 *   - Timing, occupancy, registers, __launch_bounds__, the 48 KB static
 *     shared-memory limit, dynamic shared memory (a launch asking for it
 *     fails), several blocks running at once, device memory (pointers are
 *     host pointers), streams and events.
 *   - The device math library: <math.h> functions are the host's. The
 *     correctly rounded ones (sqrtf, fmaxf, fabsf, floorf, ...) match;
 *     transcendental ones (expf, logf, ...) would not, so they are
 *     poisoned below: a kernel using them does not compile here.
 *   - Rounding modes other than _rn (no _rz / _ru / _rd intrinsics).
 *
 * Not reentrant: one launch at a time per process (the built-in
 * variables are process-wide).
 */
#ifndef CUDA_EMU_H
#define CUDA_EMU_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- runtime API subset (C and C++) ---- */

/* The toolkit's values for the codes used here. */
typedef enum cudaError {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorLaunchFailure = 719,
} cudaError_t;

typedef struct CUstream_st *cudaStream_t;

/* The error of the last failed launch, reset to cudaSuccess. */
cudaError_t cudaGetLastError(void);
/* The same, not reset. */
cudaError_t cudaPeekAtLastError(void);
const char *cudaGetErrorString(cudaError_t e);

/* Why the last failed launch failed, in words ("" when none has). */
const char *cuda_emu_last_failure(void);

/* The order fibers take turns in, for the launches from now on: seed 0
 * (the default) thread order; any other seed a permutation drawn from it,
 * new for every block. A race-free kernel gives the same results under
 * every order; one that reads what another thread writes without a
 * barrier in between is likely to differ under some. */
void cuda_emu_set_schedule(unsigned seed);

#ifdef __cplusplus
}
#endif

#ifdef __cplusplus

/* ---- device side (C++ only) ---- */

#include <float.h>
#include <math.h>
#include <string.h>

#include <tuple>
#include <type_traits>
#include <utility>

static_assert(FLT_EVAL_METHOD == 0, "cuda_emu: float arithmetic must round to float each step");

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
/* Per-block storage: static, in a section of its own so that the runtime
 * can fill it with garbage before each block (poison_shared, cuda_emu.cpp,
 * through the linker's __start_ / __stop_ symbols). */
#define __shared__ static __attribute__((section("cuda_emu_shared"), aligned(16)))

/* Results of these differ from the device library's in the last bits. */
#pragma GCC poison expf exp exp2f exp2 expm1f logf log log2f log2 log10f log1pf powf pow sinf cosf \
    tanf tanhf erff __expf __logf __powf __sinf __cosf

struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};

/* The built-in variables of the running fiber (read-only to kernels). */
extern const uint3 &threadIdx;
extern const uint3 &blockIdx;
extern const dim3 &blockDim;
extern const dim3 &gridDim;
constexpr int warpSize = 32;

namespace cuda_emu
{

/* Where a barrier is in the source: every lane must reach the same one. */
struct site {
    const char *file;
    int line;
};

enum collective_kind { COLL_SYNCWARP, COLL_SHFL, COLL_VOTE, COLL_MATCH, COLL_ACTIVEMASK };

/* What a warp collective hands every lane: the values the lanes posted
 * (lane[l] = lane l's; stale for lanes that are not live) and the lanes
 * live when it completed. Valid until the lane's next collective. */
struct warp_values {
    const uint64_t *lane;
    unsigned live;
};

void syncthreads(site at);
/* Every live lane of the warp posts a value and arrives (mask must cover
 * them all); then each gets what all posted. */
warp_values warp_exchange(unsigned mask, uint64_t value, collective_kind kind, site at);
unsigned lane_id();

/* Runs thread_main(ctx) on every thread of every block; the launch's
 * error, also kept for cudaGetLastError. */
cudaError_t run_grid(dim3 grid, dim3 block, size_t dynamic_shared, void (*thread_main)(void *),
                     void *ctx);

template <class T> inline uint64_t to_bits(T v)
{
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a T");
    uint64_t b = 0;
    memcpy(&b, &v, sizeof v);
    return b;
}

template <class T> inline T from_bits(uint64_t b)
{
    T v;
    memcpy(&v, &b, sizeof v);
    return v;
}

/* The value lane src posted to this collective (each shuffle variant
 * picks src by CUDA's rule for it). */
template <class T> inline T shfl_from(unsigned mask, T v, int src, collective_kind kind, site at)
{
    return from_bits<T>(warp_exchange(mask, to_bits(v), kind, at).lane[src]);
}

/* A kernel launch: kernel<<<grid, block, shared, stream>>>(args) is
 * written launch(kernel, grid, block, shared, stream)(args) by
 * cu_to_cpp.py. The arguments convert to the kernel's parameter types
 * once, as CUDA copies them; every thread gets its own copy. */
template <class... P> struct launch_config {
    void (*kernel)(P...);
    dim3 grid, block;
    size_t shared;

    template <class... A> void operator()(A &&...a) const
    {
        static_assert(sizeof...(A) == sizeof...(P), "kernel argument count");
        struct call {
            void (*kernel)(P...);
            std::tuple<typename std::decay<P>::type...> args;
        } c{kernel, {std::forward<A>(a)...}};
        run_grid(
            grid, block, shared,
            [](void *p) {
                call *k = static_cast<call *>(p);
                std::apply(k->kernel, k->args); /* copies into the parameters */
            },
            &c);
    }
};

template <class... P>
launch_config<P...> launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t shared = 0,
                           cudaStream_t stream = nullptr)
{
    (void)stream; /* launches are synchronous */
    return launch_config<P...>{kernel, grid, block, shared};
}

} // namespace cuda_emu

/* ---- barriers and warp collectives ---- */

inline void __syncthreads(const char *file = __builtin_FILE(), int line = __builtin_LINE())
{
    cuda_emu::syncthreads({file, line});
}

inline void __syncwarp(unsigned mask = 0xffffffffu, const char *file = __builtin_FILE(),
                       int line = __builtin_LINE())
{
    cuda_emu::warp_exchange(mask, 0, cuda_emu::COLL_SYNCWARP, {file, line});
}

inline void __threadfence() {}
inline void __threadfence_block() {}

/* A warp barrier here too (lanes run in lockstep): the lanes still live. */
inline unsigned __activemask(const char *file = __builtin_FILE(), int line = __builtin_LINE())
{
    return cuda_emu::warp_exchange(0xffffffffu, 0, cuda_emu::COLL_ACTIVEMASK, {file, line}).live;
}

template <class T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32,
                     const char *file = __builtin_FILE(), int line = __builtin_LINE())
{
    int lane = (int)cuda_emu::lane_id();
    int from = (lane & ~(width - 1)) + (src & (width - 1));
    return cuda_emu::shfl_from(mask, v, from, cuda_emu::COLL_SHFL, {file, line});
}

template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32,
                        const char *file = __builtin_FILE(), int line = __builtin_LINE())
{
    int lane = (int)cuda_emu::lane_id();
    int from = (lane & (width - 1)) >= (int)delta ? lane - (int)delta : lane;
    return cuda_emu::shfl_from(mask, v, from, cuda_emu::COLL_SHFL, {file, line});
}

template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32,
                          const char *file = __builtin_FILE(), int line = __builtin_LINE())
{
    int lane = (int)cuda_emu::lane_id();
    int from = (lane & (width - 1)) + (int)delta < width ? lane + (int)delta : lane;
    return cuda_emu::shfl_from(mask, v, from, cuda_emu::COLL_SHFL, {file, line});
}

template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32,
                         const char *file = __builtin_FILE(), int line = __builtin_LINE())
{
    int lane = (int)cuda_emu::lane_id();
    int from = lane ^ lane_mask;
    if (from >= ((lane + width) & ~(width - 1))) from = lane;
    return cuda_emu::shfl_from(mask, v, from, cuda_emu::COLL_SHFL, {file, line});
}

inline unsigned __ballot_sync(unsigned mask, int pred, const char *file = __builtin_FILE(),
                              int line = __builtin_LINE())
{
    cuda_emu::warp_values all =
        cuda_emu::warp_exchange(mask, pred != 0, cuda_emu::COLL_VOTE, {file, line});
    unsigned bits = 0;
    for (int l = 0; l < 32; l++)
        if (((all.live >> l) & 1u) && all.lane[l]) bits |= 1u << l;
    return bits;
}

inline int __any_sync(unsigned mask, int pred, const char *file = __builtin_FILE(),
                      int line = __builtin_LINE())
{
    return __ballot_sync(mask, pred, file, line) != 0;
}

inline int __all_sync(unsigned mask, int pred, const char *file = __builtin_FILE(),
                      int line = __builtin_LINE())
{
    return __ballot_sync(mask, !pred, file, line) == 0;
}

template <class T>
inline unsigned __match_any_sync(unsigned mask, T v, const char *file = __builtin_FILE(),
                                 int line = __builtin_LINE())
{
    uint64_t mine = cuda_emu::to_bits(v);
    cuda_emu::warp_values all =
        cuda_emu::warp_exchange(mask, mine, cuda_emu::COLL_MATCH, {file, line});
    unsigned peers = 0;
    for (int l = 0; l < 32; l++)
        if (((all.live >> l) & 1u) && all.lane[l] == mine) peers |= 1u << l;
    return peers;
}

template <class T>
inline unsigned __match_all_sync(unsigned mask, T v, int *pred, const char *file = __builtin_FILE(),
                                 int line = __builtin_LINE())
{
    uint64_t mine = cuda_emu::to_bits(v);
    cuda_emu::warp_values all =
        cuda_emu::warp_exchange(mask, mine, cuda_emu::COLL_MATCH, {file, line});
    *pred = 1;
    for (int l = 0; l < 32; l++)
        if (((all.live >> l) & 1u) && all.lane[l] != mine) *pred = 0;
    return *pred ? all.live : 0u;
}

/* ---- atomics: plain, since no fiber runs between the read and the write ---- */

#define CUDA_EMU_ATOMICS(T)                                                                        \
    inline T atomicAdd(T *p, T v)                                                                  \
    {                                                                                              \
        T old = *p;                                                                                \
        *p = old + v;                                                                              \
        return old;                                                                                \
    }                                                                                              \
    inline T atomicExch(T *p, T v)                                                                 \
    {                                                                                              \
        T old = *p;                                                                                \
        *p = v;                                                                                    \
        return old;                                                                                \
    }
#define CUDA_EMU_INT_ATOMICS(T)                                                                    \
    CUDA_EMU_ATOMICS(T)                                                                            \
    inline T atomicSub(T *p, T v)                                                                  \
    {                                                                                              \
        T old = *p;                                                                                \
        *p = old - v;                                                                              \
        return old;                                                                                \
    }                                                                                              \
    inline T atomicMin(T *p, T v)                                                                  \
    {                                                                                              \
        T old = *p;                                                                                \
        *p = v < old ? v : old;                                                                    \
        return old;                                                                                \
    }                                                                                              \
    inline T atomicMax(T *p, T v)                                                                  \
    {                                                                                              \
        T old = *p;                                                                                \
        *p = v > old ? v : old;                                                                    \
        return old;                                                                                \
    }                                                                                              \
    inline T atomicCAS(T *p, T compare, T v)                                                       \
    {                                                                                              \
        T old = *p;                                                                                \
        if (old == compare) *p = v;                                                                \
        return old;                                                                                \
    }                                                                                              \
    inline T atomicAnd(T *p, T v)                                                                  \
    {                                                                                              \
        T old = *p;                                                                                \
        *p = old & v;                                                                              \
        return old;                                                                                \
    }                                                                                              \
    inline T atomicOr(T *p, T v)                                                                   \
    {                                                                                              \
        T old = *p;                                                                                \
        *p = old | v;                                                                              \
        return old;                                                                                \
    }
CUDA_EMU_INT_ATOMICS(int)
CUDA_EMU_INT_ATOMICS(unsigned)
CUDA_EMU_INT_ATOMICS(unsigned long long)
CUDA_EMU_ATOMICS(float)
CUDA_EMU_ATOMICS(double)
#undef CUDA_EMU_INT_ATOMICS
#undef CUDA_EMU_ATOMICS

/* ---- arithmetic intrinsics: one IEEE operation each, round to nearest ---- */

inline float __fadd_rn(float a, float b)
{
    return a + b;
}
inline float __fsub_rn(float a, float b)
{
    return a - b;
}
inline float __fmul_rn(float a, float b)
{
    return a * b;
}
inline float __fdiv_rn(float a, float b)
{
    return a / b;
}
inline float __fmaf_rn(float a, float b, float c)
{
    return fmaf(a, b, c);
}
inline double __dadd_rn(double a, double b)
{
    return a + b;
}
inline double __dsub_rn(double a, double b)
{
    return a - b;
}
inline double __dmul_rn(double a, double b)
{
    return a * b;
}
inline double __ddiv_rn(double a, double b)
{
    return a / b;
}
inline double __fma_rn(double a, double b, double c)
{
    return fma(a, b, c);
}

/* ---- bit casts and integer intrinsics (exact) ---- */

inline unsigned __float_as_uint(float f)
{
    return cuda_emu::from_bits<unsigned>(cuda_emu::to_bits(f));
}
inline int __float_as_int(float f)
{
    return cuda_emu::from_bits<int>(cuda_emu::to_bits(f));
}
inline float __uint_as_float(unsigned u)
{
    return cuda_emu::from_bits<float>(u);
}
inline float __int_as_float(int i)
{
    return cuda_emu::from_bits<float>(cuda_emu::to_bits(i));
}
inline long long __double_as_longlong(double d)
{
    return cuda_emu::from_bits<long long>(cuda_emu::to_bits(d));
}
inline double __longlong_as_double(long long i)
{
    return cuda_emu::from_bits<double>((uint64_t)i);
}

inline int __clz(int x)
{
    return x ? __builtin_clz((unsigned)x) : 32;
}
inline int __clzll(long long x)
{
    return x ? __builtin_clzll((unsigned long long)x) : 64;
}
inline int __ffs(int x)
{
    return __builtin_ffs(x);
}
inline int __ffsll(long long x)
{
    return __builtin_ffsll(x);
}
inline int __popc(unsigned x)
{
    return __builtin_popcount(x);
}
inline int __popcll(unsigned long long x)
{
    return __builtin_popcountll(x);
}
inline unsigned __brev(unsigned x)
{
    unsigned r = 0;
    for (int i = 0; i < 32; i++, x >>= 1)
        r = (r << 1) | (x & 1u);
    return r;
}

#endif /* __cplusplus */

#endif
