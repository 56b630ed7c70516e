/*
 * cuda_emu_runtime.h - the host half of the CUDA runtime API that the CUDA
 * backend (server/backend/backend_cuda*.c) and tests/gpu/test_gpu.c call,
 * for running them on the CPU under the emulation (cuda_emu.h runs the
 * kernels). Reached through tests/emu/cuda_runtime.h; C and C++. The
 * toolkit's names, signatures and error codes, so the backend compiles
 * unmodified; implemented in cuda_emu_runtime.cpp.
 *
 * What it models
 *   - CUDA_EMU_DEVICES devices (1 when unset; 1 to 16, any other value
 *     counts as 1), read once at the first call, each "cuda_emu sm_90",
 *     compute capability 9.0, 132 SMs, 8 GiB. The current device is per
 *     host thread (cudaSetDevice / cudaGetDevice, 0 in a new thread).
 *     Device memory is host memory: cudaMalloc allocations are counted
 *     against the current device's 8 GiB (cudaMemGetInfo reports what is
 *     left on the current device; beyond it cudaErrorMemoryAllocation),
 *     and a copy or memset whose device side is not inside one live
 *     allocation (of any device) fails with cudaErrorInvalidValue, as
 *     does freeing a pointer that is not one. Pinned host memory
 *     (cudaMallocHost) is plain host memory, tracked for cudaFreeHost the
 *     same way.
 *   - Streams and events belong to the device current at their creation
 *     (the legacy stream, NULL, to the caller's current device). As in
 *     CUDA: a kernel launch (or cublasLtMatmul) into a stream of another
 *     device than the current one fails with
 *     cudaErrorInvalidResourceHandle, as do cudaEventRecord of an event
 *     into another device's stream and cudaEventElapsedTime of two
 *     devices' events; copies, synchronisation and destruction accept any
 *     device's stream. A kernel (or cublasLtMatmul) whose pointer
 *     argument points into another device's memory than its stream's
 *     fails with cudaErrorIllegalAddress (no peer access here; pointers
 *     inside structures passed by value are not looked at).
 *   - Streams run their work synchronously, at the call; events take the
 *     host's monotonic clock when they run.
 *   - Stream capture: between cudaStreamBeginCapture and
 *     cudaStreamEndCapture the stream records kernel launches
 *     (cuda_emu::launch), cudaMemcpyAsync, cudaMemsetAsync,
 *     cudaEventRecord and cublasLtMatmul (cublasLt.h here) with their
 *     arguments by value, instead of running them; cudaGraphInstantiate
 *     keeps the list and cudaGraphLaunch runs it in order, again and
 *     again. While a capture
 *     is open, the calls CUDA forbids then (synchronisation: of a device,
 *     stream or event; synchronous copies and memsets; cudaMalloc /
 *     cudaFree; capturing a second stream) fail with
 *     cudaErrorStreamCaptureUnsupported and invalidate the capture, whose
 *     end then fails with cudaErrorStreamCaptureInvalidated.
 *
 * What it does NOT model
 *   - Asynchrony: nothing overlaps, so a missing synchronisation between
 *     the host and a stream, or between two streams, never shows (an
 *     async copy reads its source at the call: a pinned buffer the host
 *     rewrites before the stream reaches the copy is a bug on the device,
 *     not here); events time the host. Kernel pointer arguments are
 *     checked only for their device (a host pointer, or one past its
 *     allocation, passed to a kernel works).
 *   - Peer access (a copy between two devices' memory just works),
 *     unified memory, memory pools, stream priorities and callbacks,
 *     graph nodes added by hand, graph updates; which device's memory a
 *     kernel or a memset touches (any live allocation will do).
 *   - The capture mode (every open capture is treated as thread-local;
 *     work enqueued on another stream, the legacy one included, while a
 *     capture is open runs at once instead of failing) and
 *     capture dependencies across streams (events recorded in one stream
 *     and waited for in another).
 */
#ifndef CUDA_EMU_RUNTIME_H_HOST
#define CUDA_EMU_RUNTIME_H_HOST

#include <stddef.h>

#include "cuda_emu.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct CUevent_st *cudaEvent_t;
typedef struct CUgraph_st *cudaGraph_t;
typedef struct CUgraphExec_st *cudaGraphExec_t;

enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4,
};

enum cudaStreamCaptureMode {
    cudaStreamCaptureModeGlobal = 0,
    cudaStreamCaptureModeThreadLocal = 1,
    cudaStreamCaptureModeRelaxed = 2,
};

#define cudaStreamDefault 0x00
#define cudaStreamNonBlocking 0x01

/* The fields the toolkit's struct has that anyone here reads. */
struct cudaDeviceProp {
    char name[256];
    size_t totalGlobalMem;
    size_t sharedMemPerBlock;
    size_t sharedMemPerBlockOptin;
    int warpSize;
    int maxThreadsPerBlock;
    int major, minor;
    int multiProcessorCount;
    int l2CacheSize;
};
typedef struct cudaDeviceProp cudaDeviceProp;

cudaError_t cudaGetDeviceCount(int *count);
cudaError_t cudaGetDevice(int *device);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *prop, int device);
cudaError_t cudaDeviceSynchronize(void);

cudaError_t cudaMalloc(void **ptr, size_t bytes);
cudaError_t cudaFree(void *ptr);
cudaError_t cudaMallocHost(void **ptr, size_t bytes);
cudaError_t cudaFreeHost(void *ptr);
cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes);
cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind,
                            cudaStream_t stream);
/* height rows of width bytes; the rows start pitch bytes apart on each
 * side (width > a pitch: cudaErrorInvalidPitchValue) */
cudaError_t cudaMemcpy2DAsync(void *dst, size_t dpitch, const void *src, size_t spitch,
                              size_t width, size_t height, enum cudaMemcpyKind kind,
                              cudaStream_t stream);
cudaError_t cudaMemset(void *ptr, int value, size_t bytes);
cudaError_t cudaMemsetAsync(void *ptr, int value, size_t bytes, cudaStream_t stream);

cudaError_t cudaStreamCreate(cudaStream_t *stream);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);

cudaError_t cudaEventCreate(cudaEvent_t *event);
cudaError_t cudaEventDestroy(cudaEvent_t event);
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream);
cudaError_t cudaEventSynchronize(cudaEvent_t event);
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end);

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, enum cudaStreamCaptureMode mode);
cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t *graph);
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *exec, cudaGraph_t graph,
                                 unsigned long long flags);
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream);
cudaError_t cudaGraphDestroy(cudaGraph_t graph);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec);

#ifdef __cplusplus
}

/* For the other stand-ins (nccl_emu.cpp): not CUDA API. */
namespace cuda_emu
{
/* The device of the live device allocation holding [p, p + bytes), or -1. */
int device_of(const void *p, size_t bytes);
/* The device a stream belongs to (NULL: the caller's current device). */
int stream_device(cudaStream_t s);
} // namespace cuda_emu
#endif

#endif
