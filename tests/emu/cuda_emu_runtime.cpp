/*
 * cuda_emu_runtime.cpp - the host runtime API of cuda_emu_runtime.h: the
 * fake devices, their memory (host memory, accounted per device and
 * range-checked), synchronous streams, host-clock events, and stream
 * capture into graphs that replay the recorded work
 * (cuda_emu::stream_capturing / stream_record, which cuda_emu::launch and
 * cublasLtMatmul call; the runtime's own asynchronous calls go through
 * stream_enqueue, which also runs first what the stream defers).
 *
 * Owns the table of live allocations (device and pinned), and per host
 * thread its current device and capture state. Never prints or exits:
 * every failure is a cudaError_t.
 */
#define CUDA_EMU_IMPLEMENTATION
#include "cuda_emu_runtime.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <map>
#include <mutex>
#include <vector>

namespace
{

const size_t DEVICE_BYTES = (size_t)8 << 30;
const size_t ALIGN = 256; /* cudaMalloc's alignment */
const int MAX_DEVICES = 16;

using op_list = std::vector<std::function<cudaError_t()>>;

/* CUDA_EMU_DEVICES, once: 1 to MAX_DEVICES, else 1. */
int device_count()
{
    static const int count = [] {
        const char *env = getenv("CUDA_EMU_DEVICES");
        char *end = nullptr;
        long n = env && *env ? strtol(env, &end, 10) : 1;
        return env && *env && (*end || n < 1 || n > MAX_DEVICES) ? 1 : (int)n;
    }();
    return count;
}

/* One live allocation: its bytes (rounded up) and, for device memory, the
 * device it counts against. */
struct allocation {
    size_t bytes;
    int device;
};

/* Live allocations by start address, one map per memory kind. */
struct memory {
    std::mutex lock;
    std::map<uintptr_t, allocation> device, pinned;
    size_t device_used[MAX_DEVICES] = {0};
};
memory mem;

/* This thread's current device (cudaSetDevice). */
thread_local int current_device = 0;

/* The stream this thread is capturing (NULL: none) and whether a call
 * forbidden during capture has broken it. */
thread_local cudaStream_t capturing = nullptr;
thread_local bool capture_broken = false;

/* The allocation of m holding [p, p + bytes), or NULL; mem.lock held. */
const allocation *holding(const std::map<uintptr_t, allocation> &m, const void *p, size_t bytes)
{
    uintptr_t a = (uintptr_t)p;
    auto it = m.upper_bound(a);
    if (it == m.begin()) return nullptr;
    --it;
    bool in = a >= it->first && a - it->first + bytes <= it->second.bytes;
    return in ? &it->second : nullptr;
}

bool in_device(const void *p, size_t bytes)
{
    std::lock_guard<std::mutex> g(mem.lock);
    return holding(mem.device, p, bytes) != nullptr;
}

/* A call CUDA refuses while this thread captures: breaks the capture. */
bool refused_in_capture()
{
    if (!capturing) return false;
    capture_broken = true;
    return true;
}

double now_ms()
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

cudaError_t check_copy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind)
{
    if (bytes == 0) return cudaSuccess;
    if (!dst || !src) return cudaErrorInvalidValue;
    bool dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
    bool src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    if (kind == cudaMemcpyDefault) {
        dst_dev = in_device(dst, 1);
        src_dev = in_device(src, 1);
    }
    if ((dst_dev && !in_device(dst, bytes)) || (src_dev && !in_device(src, bytes)))
        return cudaErrorInvalidValue;
    return cudaSuccess;
}

/* device: the current device's memory; else pinned host memory. */
cudaError_t alloc(std::map<uintptr_t, allocation> &m, void **ptr, size_t bytes, bool device)
{
    if (!ptr) return cudaErrorInvalidValue;
    *ptr = nullptr;
    size_t rounded = (bytes + ALIGN - 1) / ALIGN * ALIGN;
    if (rounded == 0) rounded = ALIGN;
    int dev = current_device;
    std::lock_guard<std::mutex> g(mem.lock);
    if (device && rounded > DEVICE_BYTES - mem.device_used[dev]) return cudaErrorMemoryAllocation;
    void *p = aligned_alloc(ALIGN, rounded);
    if (!p) return cudaErrorMemoryAllocation;
    /* fresh device memory holds garbage, never zeros to rely on */
    memset(p, 0xa5, rounded);
    m[(uintptr_t)p] = allocation{rounded, device ? dev : -1};
    if (device) mem.device_used[dev] += rounded;
    *ptr = p;
    return cudaSuccess;
}

/* Any device's allocation, whichever device is current. */
cudaError_t release(std::map<uintptr_t, allocation> &m, void *p, bool device)
{
    if (!p) return cudaSuccess;
    std::lock_guard<std::mutex> g(mem.lock);
    auto it = m.find((uintptr_t)p);
    if (it == m.end()) return cudaErrorInvalidValue;
    if (device) mem.device_used[it->second.device] -= it->second.bytes;
    m.erase(it);
    free(p);
    return cudaSuccess;
}

} // namespace

struct CUstream_st {
    op_list *capture; /* the graph being recorded; NULL when not capturing */
    int device;
    /* work that blocks the stream until it completes (an NCCL send whose
     * receiver has not come yet): the stream's next operation waits */
    std::vector<std::function<cudaError_t()>> deferred;
};

struct CUevent_st {
    bool recorded;
    double ms;
    int device;
};

struct CUgraph_st {
    op_list ops;
};

struct CUgraphExec_st {
    op_list ops;
};

namespace cuda_emu
{

bool stream_capturing(cudaStream_t s)
{
    return s && s->capture;
}

void stream_record(cudaStream_t s, std::function<cudaError_t()> op)
{
    s->capture->push_back(std::move(op));
}

int stream_device(cudaStream_t s)
{
    return s ? s->device : current_device;
}

void stream_defer(cudaStream_t s, std::function<cudaError_t()> wait)
{
    s->deferred.push_back(std::move(wait));
}

cudaError_t stream_drain(cudaStream_t s)
{
    if (!s || s->deferred.empty()) return cudaSuccess;
    std::vector<std::function<cudaError_t()>> waits;
    waits.swap(s->deferred);
    cudaError_t first = cudaSuccess;
    for (auto &w : waits) {
        cudaError_t e = w();
        if (first == cudaSuccess) first = e;
    }
    return first;
}

cudaError_t stream_enqueue(cudaStream_t s, std::function<cudaError_t()> op)
{
    if (stream_capturing(s)) {
        stream_record(s, std::move(op));
        return cudaSuccess;
    }
    cudaError_t drained = stream_drain(s);
    if (drained != cudaSuccess) return drained;
    return op();
}

bool stream_launch_ok(cudaStream_t s)
{
    cudaError_t drained = stream_drain(s);
    if (drained != cudaSuccess) {
        refuse_launch(drained, "work deferred on the stream (an NCCL send) failed");
        return false;
    }
    if (stream_device(s) == current_device) return true;
    char why[128];
    snprintf(why, sizeof why, "a launch into a stream of device %d while device %d is current",
             stream_device(s), current_device);
    refuse_launch(cudaErrorInvalidResourceHandle, why);
    return false;
}

bool pointer_arg_ok(const void *p, cudaStream_t s)
{
    int dev = p ? device_of(p, 1) : -1;
    if (dev < 0 || dev == stream_device(s)) return true;
    char why[128];
    snprintf(why, sizeof why,
             "a kernel argument points into device %d's memory, the launch is "
             "on device %d",
             dev, stream_device(s));
    refuse_launch(cudaErrorIllegalAddress, why);
    return false;
}

int device_of(const void *p, size_t bytes)
{
    std::lock_guard<std::mutex> g(mem.lock);
    const allocation *a = holding(mem.device, p, bytes ? bytes : 1);
    return a ? a->device : -1;
}

} // namespace cuda_emu

extern "C" {

cudaError_t cudaGetDeviceCount(int *count)
{
    if (!count) return cudaErrorInvalidValue;
    *count = device_count();
    return cudaSuccess;
}

cudaError_t cudaGetDevice(int *device)
{
    if (!device) return cudaErrorInvalidValue;
    *device = current_device;
    return cudaSuccess;
}

cudaError_t cudaSetDevice(int device)
{
    if (device < 0 || device >= device_count()) return cudaErrorInvalidDevice;
    current_device = device;
    return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *prop, int device)
{
    if (!prop) return cudaErrorInvalidValue;
    if (device < 0 || device >= device_count()) return cudaErrorInvalidDevice;
    memset(prop, 0, sizeof(*prop));
    snprintf(prop->name, sizeof prop->name, "cuda_emu sm_90 (CPU emulation)");
    prop->totalGlobalMem = DEVICE_BYTES;
    prop->sharedMemPerBlock = 48 << 10;
    prop->sharedMemPerBlockOptin = 227 << 10;
    prop->warpSize = 32;
    prop->maxThreadsPerBlock = 1024;
    prop->major = 9;
    prop->minor = 0;
    prop->multiProcessorCount = 132;
    prop->l2CacheSize = 50 << 20;
    return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void)
{
    if (refused_in_capture()) return cudaErrorStreamCaptureUnsupported;
    return cudaPeekAtLastError();
}

cudaError_t cudaMalloc(void **ptr, size_t bytes)
{
    if (refused_in_capture()) return cudaErrorStreamCaptureUnsupported;
    return alloc(mem.device, ptr, bytes, true);
}

cudaError_t cudaFree(void *ptr)
{
    if (refused_in_capture()) return cudaErrorStreamCaptureUnsupported;
    return release(mem.device, ptr, true);
}

cudaError_t cudaMallocHost(void **ptr, size_t bytes)
{
    return alloc(mem.pinned, ptr, bytes, false);
}

cudaError_t cudaFreeHost(void *ptr)
{
    return release(mem.pinned, ptr, false);
}

cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes)
{
    if (!free_bytes || !total_bytes) return cudaErrorInvalidValue;
    std::lock_guard<std::mutex> g(mem.lock);
    *total_bytes = DEVICE_BYTES;
    *free_bytes = DEVICE_BYTES - mem.device_used[current_device];
    return cudaSuccess;
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind)
{
    if (refused_in_capture()) return cudaErrorStreamCaptureUnsupported;
    cudaError_t e = check_copy(dst, src, bytes, kind);
    if (e == cudaSuccess && bytes) memmove(dst, src, bytes);
    return e;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind,
                            cudaStream_t stream)
{
    cudaError_t e = check_copy(dst, src, bytes, kind);
    if (e != cudaSuccess || !bytes) return e;
    return cuda_emu::stream_enqueue(stream, [dst, src, bytes]() {
        memmove(dst, src, bytes);
        return cudaSuccess;
    });
}

/* The span [p, p + pitch (height - 1) + width) of a 2-D copy's side. */
static size_t span_2d(size_t pitch, size_t width, size_t height)
{
    return pitch * (height - 1) + width;
}

cudaError_t cudaMemcpy2DAsync(void *dst, size_t dpitch, const void *src, size_t spitch,
                              size_t width, size_t height, enum cudaMemcpyKind kind,
                              cudaStream_t stream)
{
    if (width > dpitch || width > spitch) return cudaErrorInvalidPitchValue;
    if (!width || !height) return cudaSuccess;
    if (!dst || !src) return cudaErrorInvalidValue;
    /* each side whole, as one span: a copy whose rows leave their allocation fails */
    bool dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
    bool src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    if (kind == cudaMemcpyDefault) {
        dst_dev = in_device(dst, 1);
        src_dev = in_device(src, 1);
    }
    if ((dst_dev && !in_device(dst, span_2d(dpitch, width, height))) ||
        (src_dev && !in_device(src, span_2d(spitch, width, height))))
        return cudaErrorInvalidValue;
    auto copy = [dst, dpitch, src, spitch, width, height]() {
        for (size_t r = 0; r < height; r++)
            memmove((char *)dst + r * dpitch, (const char *)src + r * spitch, width);
        return cudaSuccess;
    };
    return cuda_emu::stream_enqueue(stream, copy);
}

cudaError_t cudaMemset(void *ptr, int value, size_t bytes)
{
    if (refused_in_capture()) return cudaErrorStreamCaptureUnsupported;
    if (bytes && !in_device(ptr, bytes)) return cudaErrorInvalidValue;
    if (bytes) memset(ptr, value, bytes);
    return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void *ptr, int value, size_t bytes, cudaStream_t stream)
{
    if (bytes && !in_device(ptr, bytes)) return cudaErrorInvalidValue;
    if (!bytes) return cudaSuccess;
    return cuda_emu::stream_enqueue(stream, [ptr, value, bytes]() {
        memset(ptr, value, bytes);
        return cudaSuccess;
    });
}

cudaError_t cudaStreamCreate(cudaStream_t *stream)
{
    return cudaStreamCreateWithFlags(stream, cudaStreamDefault);
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned flags)
{
    if (!stream || flags > cudaStreamNonBlocking) return cudaErrorInvalidValue;
    *stream = new CUstream_st{nullptr, current_device, {}};
    return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t stream)
{
    if (!stream) return cudaErrorInvalidResourceHandle;
    if (stream->capture) return cudaErrorStreamCaptureUnsupported;
    (void)cuda_emu::stream_drain(stream); /* a device finishes the work after the call */
    delete stream;
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream)
{
    if (refused_in_capture()) return cudaErrorStreamCaptureUnsupported;
    cudaError_t drained = cuda_emu::stream_drain(stream);
    if (drained != cudaSuccess) return drained;
    return cudaPeekAtLastError();
}

cudaError_t cudaEventCreate(cudaEvent_t *event)
{
    if (!event) return cudaErrorInvalidValue;
    *event = new CUevent_st{false, 0.0, current_device};
    return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t event)
{
    if (!event) return cudaErrorInvalidResourceHandle;
    delete event;
    return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream)
{
    if (!event) return cudaErrorInvalidResourceHandle;
    if (event->device != cuda_emu::stream_device(stream)) return cudaErrorInvalidResourceHandle;
    return cuda_emu::stream_enqueue(stream, [event]() {
        event->recorded = true;
        event->ms = now_ms();
        return cudaSuccess;
    });
}

cudaError_t cudaEventSynchronize(cudaEvent_t event)
{
    if (!event) return cudaErrorInvalidResourceHandle;
    if (refused_in_capture()) return cudaErrorStreamCaptureUnsupported;
    return cudaSuccess;
}

cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end)
{
    if (!ms) return cudaErrorInvalidValue;
    if (!start || !end) return cudaErrorInvalidResourceHandle;
    if (!start->recorded || !end->recorded) return cudaErrorInvalidResourceHandle;
    if (start->device != end->device) return cudaErrorInvalidResourceHandle;
    *ms = (float)(end->ms - start->ms);
    return cudaSuccess;
}

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, enum cudaStreamCaptureMode mode)
{
    (void)mode;
    if (!stream) return cudaErrorStreamCaptureUnsupported; /* the legacy stream */
    if (capturing) {
        capture_broken = true;
        return cudaErrorStreamCaptureUnsupported;
    }
    stream->capture = new op_list;
    capturing = stream;
    capture_broken = false;
    return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t *graph)
{
    if (!stream || !graph) return cudaErrorInvalidValue;
    *graph = nullptr;
    if (!stream->capture || capturing != stream) return cudaErrorInvalidResourceHandle;
    op_list *ops = stream->capture;
    stream->capture = nullptr;
    capturing = nullptr;
    if (capture_broken) {
        capture_broken = false;
        delete ops;
        return cudaErrorStreamCaptureInvalidated;
    }
    *graph = new CUgraph_st{std::move(*ops)};
    delete ops;
    return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t *exec, cudaGraph_t graph, unsigned long long flags)
{
    if (!exec || !graph || flags) return cudaErrorInvalidValue;
    *exec = new CUgraphExec_st{graph->ops};
    return cudaSuccess;
}

/* Runs the recorded work in order; the first failure ends the launch and
 * is returned (the device would report it at the next synchronisation). */
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream)
{
    if (!exec) return cudaErrorInvalidResourceHandle;
    return cuda_emu::stream_enqueue(stream, [exec]() {
        for (const auto &op : exec->ops) {
            cudaError_t e = op();
            if (e != cudaSuccess) return e;
        }
        return cudaSuccess;
    });
}

cudaError_t cudaGraphDestroy(cudaGraph_t graph)
{
    delete graph;
    return cudaSuccess;
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec)
{
    delete exec;
    return cudaSuccess;
}
}
