/*
 * cuda_emu.h - a small emulation of the CUDA execution model on the CPU,
 * enough to compile an unmodified kernel file (.cu, turned into C++ by
 * cu_to_cpp.py, which rewrites only the <<<...>>> launches and the inline
 * PTX asm statements) with the host C++ compiler and run it, one thread
 * block at a time, on one OS thread. It exists so that the kernels of
 * kernels/ are checked in CI, where there is no GPU: sampling.cu, whose
 * results must equal a CPU reference bit for bit (test_sample_emu.c), and
 * the others against host references within the device's documented
 * error bounds (test_kernels_emu.c). It is NOT a GPU simulator: see "what
 * it does not model" below.
 *
 * Reached through tests/emu/cuda_runtime.h and cuda_bf16.h, which stand in
 * for the toolkit's headers (tests/emu/ must come first on the include
 * path). The first part (C and C++) is the runtime API subset the kernel
 * files and the tests use; the rest is C++ only (the device side).
 *
 * What it models
 *   - A launch runs its blocks one after another, synchronously, on the
 *     calling thread, unless its stream is capturing a graph
 *     (cuda_emu_runtime.h), which records it to run at each graph launch
 *     instead. Grid and block may be 3-D
 *     (threadIdx / blockIdx / blockDim / gridDim as in CUDA); threads are
 *     numbered x fastest, and warps are 32 consecutive thread numbers.
 *   - Each CUDA thread is a cooperative fiber with its own stack (x86-64:
 *     a hand-written register switch; elsewhere ucontext). A fiber runs
 *     until it reaches a barrier, then the next fiber runs: in thread
 *     order, or in a seeded random order (cuda_emu_set_schedule) to shake
 *     out races. No OS threads: nothing preempts a fiber between barriers.
 *   - __syncthreads is a block barrier; __syncwarp and every warp
 *     collective (__shfl*_sync, __ballot_sync, __any_sync, __all_sync,
 *     __match_any_sync, __match_all_sync, __activemask, and mma.sync) are
 *     warp barriers: all live lanes of the warp arrive before any lane
 *     reads a result, which is what the lanes posted and the lanes live at
 *     that moment, as if the warp ran in lockstep. All threads must reach
 *     the same barrier (same source line; for a warp, the same collective
 *     and mask): a mismatch, a barrier nobody can complete or a
 *     partial-warp mask fails the launch (cudaErrorLaunchFailure, the
 *     reason in cuda_emu_last_failure()) instead of hanging or guessing. A
 *     thread that returns stops counting towards barriers, as on the
 *     hardware.
 *   - __shared__ variables are one storage per block (static storage,
 *     blocks run one at a time), filled with 0xff bytes in every block
 *     before any thread uses them, so that reading shared memory before
 *     writing it shows as garbage (NaN, -1), as uninitialised shared
 *     memory would: before the block for those in their own section (GCC
 *     ignores the section of a template's statics), and when the first
 *     thread of the block passes its declaration for every function-local
 *     one of a converted file (cu_to_cpp.py adds a shared_touch after it).
 *   - Atomics are plain read-modify-writes (fibers do not preempt).
 *   - The _rn float / double intrinsics are the host's IEEE operations in
 *     the default rounding mode; the file must be compiled with
 *     -ffp-contract=off (no FMA contraction) and FLT_EVAL_METHOD == 0 (no
 *     excess precision), which gives what nvcc's explicit _rn intrinsics
 *     give. Bit casts, the integer intrinsics (__clz, __ffs, __popc,
 *     __byte_perm, ...), min / max and the bf16 conversions of
 *     cuda_bf16.h are exact.
 *   - The vector types (uint2, uint4, float2, float4, int2, int4, ushort4) with
 *     CUDA's alignment; compile kernel files with -fno-strict-aliasing, as
 *     they reinterpret memory through them.
 *   - Inline PTX, one instruction per asm statement, rewritten by
 *     cu_to_cpp.py into a call of cuda_emu::ptx::<opcode, dots as
 *     underscores>(operands in template order, outputs by reference); an
 *     instruction without a function below does not compile. There are:
 *     mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32, a warp
 *     collective: every lane posts its A and B fragments (the PTX ISA's
 *     layout for m16n8k16 .bf16, g = lane / 4, t = lane % 4: A a0 (row g,
 *     cols 2t, 2t+1), a1 (row g+8), a2 (row g, cols 2t+8, 2t+9), a3 (row
 *     g+8, cols 2t+8..); B b0 (rows k 2t, 2t+1, col n g), b1 (k 2t+8..);
 *     C / D c0, c1 (row g, cols 2t, 2t+1), c2, c3 (row g+8); the lower
 *     index in the low 16 bits), and each lane gets its D: the products
 *     (exact in fp32) summed with C in double and rounded once to fp32. A
 *     warp with exited lanes fails the launch. ex2.approx.ftz.f32: see the
 *     device math below.
 *   - Device math. By default the functions whose device results differ
 *     from the host's in the last bits (expf, exp2f, __expf, rsqrtf, log,
 *     sincos, ...) are poisoned: a kernel using them does not compile
 *     here, so a kernel that must match a host reference bit for bit
 *     cannot depend on them unnoticed. Compiled with
 *     -DCUDA_EMU_INEXACT_MATH, the ones kernels/ uses are provided as the
 *     host's result moved by a pseudo-random number of ulps (drawn from the
 *     argument's bits, so runs repeat) within the CUDA Programming Guide's
 *     maximum error: expf, exp2f, rsqrtf 2 ulp; __expf 2 + floor(|1.173
 *     x|) ulp, subnormal results flushed to 0; ex2.approx.ftz.f32 2 ulp
 *     (PTX ISA), subnormal input and result flushed to 0; double log 1
 *     ulp; double sincos 2 ulp. Exp functions of 0 are exactly 1. Tests of
 *     such kernels compare with tolerances, never bits.
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
 *     host pointers), streams and events: see cuda_emu_runtime.h for the
 *     host API (memory, streams, events, graphs) the backend uses.
 *   - The device's rounding where it is not IEEE or not specified: nvcc
 *     contracts a * b + c into an FMA by default (here: two roundings);
 *     the tensor cores align and truncate their products internally (here:
 *     an exact sum, one rounding); the approximate functions above have
 *     their own errors, not these. Results agree with the device to
 *     within those errors, not bit for bit.
 *   - Rounding modes other than _rn (no _rz / _ru / _rd intrinsics); PTX
 *     other than the instructions listed above (no ldmatrix, cp.async).
 *
 * One launch at a time per process (the built-in variables and the
 * __shared__ storage are process-wide): launches from several host
 * threads (tensor-parallel ranks, each on its own emulated device) wait
 * for each other, and a launch from inside a launch fails. The last error
 * is per host thread, as CUDA's is.
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
    cudaErrorInvalidPitchValue = 12,
    cudaErrorInvalidDevice = 101,
    cudaErrorInvalidResourceHandle = 400,
    cudaErrorNotReady = 600,
    cudaErrorIllegalAddress = 700,
    cudaErrorLaunchFailure = 719,
    cudaErrorStreamCaptureUnsupported = 900,
    cudaErrorStreamCaptureInvalidated = 901,
    cudaErrorStreamCaptureImplicit = 906,
} cudaError_t;

typedef struct CUstream_st *cudaStream_t;

/* The error of the calling thread's last failed launch, reset to
 * cudaSuccess. */
cudaError_t cudaGetLastError(void);
/* The same, not reset. */
cudaError_t cudaPeekAtLastError(void);
const char *cudaGetErrorString(cudaError_t e);
const char *cudaGetErrorName(cudaError_t e);

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

#include <functional>
#include <memory>
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
#define __align__(n) __attribute__((aligned(n)))
/* Per-block storage: static, in a section of its own so that the runtime
 * can fill it with garbage before each block (poison_shared, cuda_emu.cpp,
 * through the linker's __start_ / __stop_ symbols); template kernels'
 * escape it, which cuda_emu::shared_touch makes up for. */
#define __shared__ static __attribute__((section("cuda_emu_shared"), aligned(16)))

/* Results of these differ from the device library's in the last bits:
 * poisoned, except that CUDA_EMU_INEXACT_MATH provides the ones kernels/
 * uses with the device's error bounds (see "Device math" above; the
 * runtime itself, CUDA_EMU_IMPLEMENTATION, uses the host's). */
#ifndef CUDA_EMU_IMPLEMENTATION
#ifdef CUDA_EMU_INEXACT_MATH
#define expf(x) cuda_emu::device_expf(x)
#define exp2f(x) cuda_emu::device_exp2f(x)
#define log(x) cuda_emu::device_log(x)
#define sincos(x, s, c) cuda_emu::device_sincos(x, s, c)
#pragma GCC poison exp exp2 expm1f logf log2f log2 log10f log1pf powf pow sinf cosf sin cos        \
    sincosf tanf tanhf erff __logf __powf __sinf __cosf
#else
#pragma GCC poison expf exp exp2f exp2 expm1f logf log log2f log2 log10f log1pf powf pow sinf cosf \
    sin cos sincos sincosf tanf tanhf erff __expf __logf __powf __sinf __cosf rsqrtf
#endif
#endif

struct uint3 {
    unsigned x, y, z;
};

/* The vector types, with CUDA's alignment; may_alias since kernels load
 * and store other types' memory through them. */
#define CUDA_EMU_VECTOR(NAME, T, ALIGN, ...)                                                       \
    struct __attribute__((aligned(ALIGN), may_alias)) NAME {                                       \
        T __VA_ARGS__;                                                                             \
    }
CUDA_EMU_VECTOR(uint2, unsigned, 8, x, y);
CUDA_EMU_VECTOR(uint4, unsigned, 16, x, y, z, w);
CUDA_EMU_VECTOR(int2, int, 8, x, y);
CUDA_EMU_VECTOR(int4, int, 16, x, y, z, w);
CUDA_EMU_VECTOR(float2, float, 8, x, y);
CUDA_EMU_VECTOR(float4, float, 16, x, y, z, w);
CUDA_EMU_VECTOR(ushort4, unsigned short, 8, x, y, z, w);
#undef CUDA_EMU_VECTOR
inline uint2 make_uint2(unsigned x, unsigned y)
{
    return {x, y};
}
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w)
{
    return {x, y, z, w};
}
inline int2 make_int2(int x, int y)
{
    return {x, y};
}
inline int4 make_int4(int x, int y, int z, int w)
{
    return {x, y, z, w};
}
inline float2 make_float2(float x, float y)
{
    return {x, y};
}
inline float4 make_float4(float x, float y, float z, float w)
{
    return {x, y, z, w};
}
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

enum collective_kind { COLL_SYNCWARP, COLL_SHFL, COLL_VOTE, COLL_MATCH, COLL_ACTIVEMASK, COLL_MMA };

/* Most words one lane posts to a collective (mma: its A and B fragments). */
enum { WARP_WORDS = 6 };

/* What a warp collective hands every lane: the words the lanes posted
 * (lane[l][i] = lane l's word i; stale for lanes that are not live) and
 * the lanes live when it completed. Valid until the lane's next
 * collective. */
struct warp_values {
    const uint64_t (*lane)[WARP_WORDS];
    unsigned live;
};

void syncthreads(site at);
/* Every live lane of the warp posts n_words (<= WARP_WORDS) words and
 * arrives (mask must cover them all); then each gets what all posted. */
warp_values warp_exchange(unsigned mask, const uint64_t *words, int n_words, collective_kind kind,
                          site at);
inline warp_values warp_exchange(unsigned mask, uint64_t value, collective_kind kind, site at)
{
    return warp_exchange(mask, &value, 1, kind, at);
}
unsigned lane_id();

/* Fills v with 0xff bytes the first time a thread of the running block
 * gets here (no-op outside a launch); cu_to_cpp.py declares one after each
 * function-local __shared__ declaration. */
void shared_first_touch(void *p, size_t bytes);
struct shared_touch {
    template <class T> explicit shared_touch(T &v)
    {
        shared_first_touch(&v, sizeof v);
    }
};

/* Ends the running block's launch with cudaErrorLaunchFailure: the kernel
 * did something the emulation does not model. */
[[noreturn]] void unsupported(const char *what, site at);

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
    return from_bits<T>(warp_exchange(mask, to_bits(v), kind, at).lane[src][0]);
}

/* Stream capture (cuda_emu_runtime.cpp): whether work enqueued on s is
 * being recorded into a graph instead of run, and recording one piece of
 * it (run by cudaGraphLaunch, its error the launch's). */
bool stream_capturing(cudaStream_t s);
void stream_record(cudaStream_t s, std::function<cudaError_t()> op);
/* Whether a kernel may be launched into s: CUDA refuses a launch into a
 * stream of a device other than the calling thread's current one
 * (cudaErrorInvalidResourceHandle, kept for cudaGetLastError). */
bool stream_launch_ok(cudaStream_t s);
/* Work that blocks stream s until it completes, as an NCCL send does
 * until its receiver comes: the stream's next operation (a launch, an
 * asynchronous copy, a synchronisation) first runs `wait` (on the calling
 * thread) and fails with its error. stream_drain runs what is deferred. */
void stream_defer(cudaStream_t s, std::function<cudaError_t()> wait);
cudaError_t stream_drain(cudaStream_t s);
/* One piece of work on s: recorded into the graph s captures, else run at
 * once after what s defers (its error, or op's). */
cudaError_t stream_enqueue(cudaStream_t s, std::function<cudaError_t()> op);
/* Fails a launch before it starts: e for cudaGetLastError, why for
 * cuda_emu_last_failure; returns e. */
cudaError_t refuse_launch(cudaError_t e, const char *why);
/* Whether a kernel's pointer argument may be used on s's device: one into
 * another device's memory fails the launch (cudaErrorIllegalAddress, what
 * a device reports when a kernel touches a peer's memory without peer
 * access, which nothing here enables). Host pointers pass (not modeled). */
bool pointer_arg_ok(const void *p, cudaStream_t s);
template <class T> bool arg_ok(const T &v, cudaStream_t s)
{
    if constexpr (std::is_pointer<T>::value)
        return pointer_arg_ok((const void *)v, s);
    else
        return true;
}

/* A kernel launch: kernel<<<grid, block, shared, stream>>>(args) is
 * written launch(kernel, grid, block, shared, stream)(args) by
 * cu_to_cpp.py. The arguments convert to the kernel's parameter types
 * once, as CUDA copies them; every thread gets its own copy. On a
 * capturing stream the converted arguments are kept, by value, in the
 * graph: a replay runs the kernel on what they were at capture. */
template <class... P> struct launch_config {
    void (*kernel)(P...);
    dim3 grid, block;
    size_t shared;
    cudaStream_t stream;

    struct call {
        void (*kernel)(P...);
        std::tuple<typename std::decay<P>::type...> args;
    };
    static void thread_main(void *p)
    {
        call *k = static_cast<call *>(p);
        std::apply(k->kernel, k->args); /* copies into the parameters */
    }

    template <class... A> void operator()(A &&...a) const
    {
        static_assert(sizeof...(A) == sizeof...(P), "kernel argument count");
        if (!stream_launch_ok(stream)) return;
        auto args_ok = [this](const auto &...x) { return (arg_ok(x, stream) && ...); };
        if (stream_capturing(stream)) {
            auto c = std::make_shared<call>(call{kernel, {std::forward<A>(a)...}});
            if (!std::apply(args_ok, c->args)) return;
            dim3 g = grid, b = block;
            size_t sh = shared;
            stream_record(stream,
                          [c, g, b, sh]() { return run_grid(g, b, sh, thread_main, c.get()); });
            return;
        }
        call c{kernel, {std::forward<A>(a)...}};
        if (!std::apply(args_ok, c.args)) return;
        run_grid(grid, block, shared, thread_main, &c);
    }
};

template <class... P>
launch_config<P...> launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t shared = 0,
                           cudaStream_t stream = nullptr)
{
    /* launches are synchronous, or recorded while the stream captures */
    return launch_config<P...>{kernel, grid, block, shared, stream};
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
        if (((all.live >> l) & 1u) && all.lane[l][0]) bits |= 1u << l;
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
        if (((all.live >> l) & 1u) && all.lane[l][0] == mine) peers |= 1u << l;
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
        if (((all.live >> l) & 1u) && all.lane[l][0] != mine) *pred = 0;
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

/* Byte i of the result is byte (s >> 4 i) & 7 of the pair (x: bytes 0-3,
 * y: 4-7). A selector with bit 3 set (prmt's sign replication) is not
 * modeled: it fails the launch. */
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s, const char *file = __builtin_FILE(),
                            int line = __builtin_LINE())
{
    if (s & 0x8888u)
        cuda_emu::unsupported("__byte_perm with a sign-replicating selector", {file, line});
    uint64_t pair = ((uint64_t)y << 32) | x;
    unsigned r = 0;
    for (int i = 0; i < 4; i++)
        r |= (unsigned)((pair >> (8 * ((s >> (4 * i)) & 7u))) & 0xffu) << (8 * i);
    return r;
}

/* CUDA's integer and floating-point min / max overloads */
#define CUDA_EMU_MINMAX(T)                                                                         \
    inline T min(T a, T b)                                                                         \
    {                                                                                              \
        return a < b ? a : b;                                                                      \
    }                                                                                              \
    inline T max(T a, T b)                                                                         \
    {                                                                                              \
        return a > b ? a : b;                                                                      \
    }
CUDA_EMU_MINMAX(int)
CUDA_EMU_MINMAX(unsigned)
CUDA_EMU_MINMAX(long long)
CUDA_EMU_MINMAX(unsigned long long)
#undef CUDA_EMU_MINMAX
inline float min(float a, float b)
{
    return fminf(a, b);
}
inline float max(float a, float b)
{
    return fmaxf(a, b);
}
inline double min(double a, double b)
{
    return fmin(a, b);
}
inline double max(double a, double b)
{
    return fmax(a, b);
}

/* ---- inline PTX (cu_to_cpp.py rewrites asm statements into these) ---- */

namespace cuda_emu
{
namespace ptx
{

/* D = A B + C on one 16x8x16 tile, a warp collective (layouts above). */
void mma_sync_aligned_m16n8k16_row_col_f32_bf16_bf16_f32(float &d0, float &d1, float &d2, float &d3,
                                                         uint32_t a0, uint32_t a1, uint32_t a2,
                                                         uint32_t a3, uint32_t b0, uint32_t b1,
                                                         float c0, float c1, float c2, float c3,
                                                         const char *file = __builtin_FILE(),
                                                         int line = __builtin_LINE());

/* d = 2^a within 2 ulp, subnormal input and result flushed to 0 */
void ex2_approx_ftz_f32(float &d, float a);

} // namespace ptx

/* ---- device math (see "Device math" above) ---- */

float device_expf(float x);
float device_exp2f(float x);
float device_fast_expf(float x); /* __expf */
float device_rsqrtf(float x);
double device_log(double x);
void device_sincos(double x, double *s, double *c);

} // namespace cuda_emu

#ifdef CUDA_EMU_INEXACT_MATH
inline float __expf(float x)
{
    return cuda_emu::device_fast_expf(x);
}
inline float rsqrtf(float x)
{
    return cuda_emu::device_rsqrtf(x);
}
#endif

#endif /* __cplusplus */

#endif
